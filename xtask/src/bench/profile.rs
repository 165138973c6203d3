//! `cargo xtask bench-profile`: where the guest instructions of a bench
//! mode go, per kernel function, counted exactly rather than sampled.
//!
//! The bench kernel boots under TCG with `-icount shift=0` and the plugin
//! qemu/tcg-insn-profile.c, which counts every translation block's
//! instructions and writes all counts each time the guest enters
//! getppid(2). sendzc-bench `--profile` runs each mode's requests between
//! two such marks, over UDP through the dummy device (deterministic: the
//! whole send runs in the sender's context). A window's counts, mapped to
//! functions with the build's System.map, are what the mode costs; the
//! sender thread's CPU time over the same window is printed beside them as
//! a check. perf in the guest samples only at HZ under TCG, which is why
//! this exists.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{build_bench, UNIT_NOTE};
use crate::guest::{Accel, Boot};
use crate::kernel;
use crate::layout::{Layout, Profile};
use crate::options::Options;
use crate::phase::Phases;

/// The syscall whose entry the plugin writes its counts at.
const MARK_SYMBOL: &str = "__x64_sys_getppid";
/// Rows of the table: the functions that differ most (or cost most).
const ROWS: usize = 40;

/// What to profile: one shape, one or more modes.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub pairs: usize,
    pub payload: usize,
    pub count: usize,
    pub modes: Vec<String>,
}

/// `MODE... --pairs N --payload BYTES [--count N]`, then the options the
/// other kernel commands take.
pub fn parse(args: &[String]) -> Result<(Request, Vec<String>)> {
    let mut request = Request {
        pairs: 1,
        payload: 0,
        count: 20000,
        modes: Vec::new(),
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<usize> {
            let value = it.next().with_context(|| format!("{name} needs a value"))?;
            value
                .parse()
                .with_context(|| format!("{name} takes a number, not '{value}'"))
        };
        match arg.as_str() {
            "--pairs" => request.pairs = number("--pairs")?,
            "--payload" => request.payload = number("--payload")?,
            "--count" => request.count = number("--count")?,
            flag if flag.starts_with('-') => {
                rest.push(arg.clone());
                rest.extend(it.next().cloned());
            }
            mode => request.modes.push(mode.to_string()),
        }
    }
    if request.modes.is_empty() {
        bail!("bench-profile needs at least one mode (e.g. a_sendmsg f_iov_copy)");
    }
    if request.pairs == 0 || request.count == 0 {
        bail!("--pairs and --count must be above 0");
    }
    Ok((request, rest))
}

/// Kernel text symbols by address, from System.map.
pub struct Symbols {
    by_addr: Vec<(u64, String)>,
}

impl Symbols {
    pub fn parse(system_map: &str) -> Symbols {
        let mut by_addr: Vec<(u64, String)> = system_map
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                matches!(kind, "t" | "T" | "w" | "W").then(|| (addr, name.to_string()))
            })
            .collect();
        by_addr.sort();
        Symbols { by_addr }
    }

    /// Where function `name` starts.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.by_addr
            .iter()
            .find(|(_, n)| n == name)
            .map(|(a, _)| *a)
    }

    /// The function `addr` is in; user space is one bucket.
    pub fn name(&self, addr: u64) -> &str {
        if addr < 0xffff_8000_0000_0000 {
            return "[user]";
        }
        match self.by_addr.partition_point(|(a, _)| *a <= addr) {
            0 => "[kernel, no symbol]",
            i => &self.by_addr[i - 1].1,
        }
    }
}

/// One write of the plugin: cumulative instructions per block address (a
/// block translated twice appears twice).
pub fn parse_counts(text: &str) -> Result<BTreeMap<u64, u64>> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let (addr, n) = line
            .split_once(' ')
            .with_context(|| format!("bad count line '{line}'"))?;
        let addr =
            u64::from_str_radix(addr, 16).with_context(|| format!("bad address '{addr}'"))?;
        let n: u64 = n.parse().with_context(|| format!("bad count '{n}'"))?;
        *counts.entry(addr).or_default() += n;
    }
    Ok(counts)
}

/// Instructions per function between two writes.
pub fn window(
    before: &BTreeMap<u64, u64>,
    after: &BTreeMap<u64, u64>,
    symbols: &Symbols,
) -> BTreeMap<String, u64> {
    let mut per_function = BTreeMap::new();
    for (addr, n) in after {
        let delta = n - before.get(addr).copied().unwrap_or(0).min(*n);
        if delta > 0 {
            *per_function
                .entry(symbols.name(*addr).to_string())
                .or_default() += delta;
        }
    }
    per_function
}

/// The writes that bound the modes' windows: the bench's marks are the
/// last `modes + 1` writes before the one at exit; earlier writes come
/// from getppid calls made while the guest booted.
pub fn window_writes(writes: usize, modes: usize) -> Result<std::ops::Range<usize>> {
    let needed = modes + 2;
    if writes < needed {
        bail!("the plugin wrote {writes} times, {needed} needed for {modes} mode(s)");
    }
    Ok(writes - needed..writes - 1)
}

/// One mode's window, per request.
pub struct ModeCost {
    pub mode: String,
    pub requests: u64,
    /// Sender thread CPU per request (guest instructions), from the bench.
    pub sender_cpu: f64,
    pub per_function: BTreeMap<String, u64>,
}

impl ModeCost {
    fn per_request(&self, function: &str) -> f64 {
        self.per_function.get(function).copied().unwrap_or(0) as f64 / self.requests as f64
    }

    fn total(&self) -> f64 {
        self.per_function.values().sum::<u64>() as f64 / self.requests as f64
    }
}

/// The table: per function, instructions per request of each mode, and
/// with two or more modes the last minus the first, largest first.
pub fn table(request: &Request, costs: &[ModeCost]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Instructions per request, {} x (24 B + {} B) over UDP, {} requests a mode\n",
        request.pairs, request.payload, request.count
    );
    let _ = writeln!(
        out,
        "All counts: {UNIT_NOTE}; every vCPU, kernel and user.\n"
    );
    let mut functions: Vec<&str> = costs
        .iter()
        .flat_map(|c| c.per_function.keys().map(String::as_str))
        .collect();
    functions.sort();
    functions.dedup();
    let (first, last) = (&costs[0], &costs[costs.len() - 1]);
    let delta = |f: &str| last.per_request(f) - first.per_request(f);
    if costs.len() > 1 {
        functions.sort_by(|a, b| delta(b).abs().total_cmp(&delta(a).abs()));
    } else {
        functions.sort_by(|a, b| first.per_request(b).total_cmp(&first.per_request(a)));
    }
    let modes: Vec<&str> = costs.iter().map(|c| c.mode.as_str()).collect();
    let delta_head = if costs.len() > 1 {
        " | last - first"
    } else {
        ""
    };
    let _ = writeln!(out, "| function | {}{delta_head} |", modes.join(" | "));
    let _ = writeln!(
        out,
        "|---{}{}|",
        "|---:".repeat(costs.len()),
        if costs.len() > 1 { "|---:" } else { "" }
    );
    let row = |name: &str, values: Vec<f64>, delta: Option<f64>| {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
        let delta = delta.map(|d| format!(" | {d:+.1}")).unwrap_or_default();
        format!("| {name} | {}{delta} |\n", cells.join(" | "))
    };
    let has_delta = costs.len() > 1;
    out += &row(
        "**all**",
        costs.iter().map(ModeCost::total).collect(),
        has_delta.then(|| last.total() - first.total()),
    );
    out += &row(
        "sender thread CPU (bench)",
        costs.iter().map(|c| c.sender_cpu).collect(),
        has_delta.then_some(last.sender_cpu - first.sender_cpu),
    );
    for f in functions.into_iter().take(ROWS) {
        out += &row(
            f,
            costs.iter().map(|c| c.per_request(f)).collect(),
            has_delta.then(|| delta(f)),
        );
    }
    out
}

/// `mode,requests,cpu_ns` lines from sendzc-bench --profile.
fn parse_sender_cpu(csv: &str) -> Result<Vec<(String, u64, u64)>> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let [mode, requests, cpu] = f[..] else {
                bail!("bad line '{line}' from sendzc-bench --profile");
            };
            Ok((mode.to_string(), requests.parse()?, cpu.parse()?))
        })
        .collect()
}

fn build_plugin(layout: &Layout, out: &Path) -> Result<PathBuf> {
    let sh = Shell::new()?;
    let src = layout.qemu().join("tcg-insn-profile.c");
    let lib = out.join("libtcg-insn-profile.so");
    cmd!(sh, "gcc -O2 -Wall -Werror -shared -fPIC -o {lib} {src}").run()?;
    Ok(lib)
}

/// The plugin's writes, in the order it made them.
fn read_writes(out: &Path) -> Result<Vec<BTreeMap<u64, u64>>> {
    let mut writes = Vec::new();
    while let Ok(text) = fs::read_to_string(out.join(format!("counts.{}", writes.len()))) {
        writes.push(parse_counts(&text)?);
    }
    Ok(writes)
}

pub fn run(layout: &Layout, args: &[String], phases: &mut Phases) -> Result<()> {
    let (request, rest) = parse(args)?;
    let options = crate::options::parse(&rest)?;
    let options = Options {
        profile: Some(Profile::Bench),
        ..options
    };
    let kernel = kernel::build(layout, &options, phases)?;
    let bin = phases.run("bench build", || build_bench(layout))?;
    let out = layout.root.join("target/bench/profile");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let plugin = phases.run("plugin build", || build_plugin(layout, &out))?;
    let system_map = fs::read_to_string(kernel.build.join("System.map"))
        .with_context(|| format!("System.map in {}", kernel.build.display()))?;
    let symbols = Symbols::parse(&system_map);
    let mark = symbols
        .address(MARK_SYMBOL)
        .with_context(|| format!("{MARK_SYMBOL} is not in System.map"))?;
    let (b, o) = (bin.display(), out.display());
    let exec = format!(
        "{b} {o}/cpu.csv udp-dummy --profile {} {} {} {}; echo $? > {o}/status",
        request.pairs,
        request.payload,
        request.count,
        request.modes.join(" ")
    );
    let outcome = phases.run("profile run", || {
        Boot {
            kernel: &kernel.bzimage,
            accel: Accel::Tcg,
            exec,
            out_dir: &out,
            console_log: out.join("console.log"),
            timeout: options.timeout.unwrap_or(Duration::from_secs(1800)),
            vng_args: vec![format!(
                "--qemu-opts=-icount shift=0 -plugin {},snap={mark:x},out={o}/counts",
                plugin.display()
            )],
            netns: None,
        }
        .run(layout)
    })?;
    if outcome.status != Some(0) {
        bail!(
            "sendzc-bench --profile failed ({:?}); see {}",
            outcome.status,
            out.join("console.log").display()
        );
    }
    let sender = parse_sender_cpu(&fs::read_to_string(out.join("cpu.csv"))?)?;
    let writes = read_writes(&out)?;
    let range = window_writes(writes.len(), request.modes.len())?;
    let costs: Vec<ModeCost> = sender
        .into_iter()
        .zip(range)
        .map(|((mode, requests, cpu_ns), i)| ModeCost {
            mode,
            requests,
            sender_cpu: cpu_ns as f64 / requests as f64,
            per_function: window(&writes[i], &writes[i + 1], &symbols),
        })
        .collect();
    let table = table(&request, &costs);
    fs::write(out.join("profile.md"), &table)?;
    println!("{table}");
    eprintln!("bench-profile: wrote {}", out.join("profile.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _stext
ffffffff81000100 t io_send_zc_prep
ffffffff81000200 T io_sendmsg_zc
ffffffff81000300 D some_data
ffffffff81000400 W weak_fn
";

    #[test]
    fn symbols_name_the_function_an_address_is_in() {
        let symbols = Symbols::parse(MAP);
        assert_eq!(symbols.name(0xffffffff81000100), "io_send_zc_prep");
        assert_eq!(symbols.name(0xffffffff812001ff), "weak_fn");
        assert_eq!(symbols.name(0xffffffff810002ff), "io_sendmsg_zc");
        // Data symbols do not end a function.
        assert_eq!(symbols.name(0xffffffff81000350), "io_sendmsg_zc");
        assert_eq!(symbols.name(0xffffffff80000000), "[kernel, no symbol]");
        assert_eq!(symbols.name(0x5555_5555_0000), "[user]");
        assert_eq!(symbols.address("io_sendmsg_zc"), Some(0xffffffff81000200));
        assert_eq!(symbols.address("some_data"), None);
    }

    #[test]
    fn a_window_is_the_difference_per_function() {
        let symbols = Symbols::parse(MAP);
        // Two blocks of io_send_zc_prep, one translated twice.
        let before = parse_counts("ffffffff81000100 10\nffffffff81000180 5\n").unwrap();
        let after = parse_counts(
            "ffffffff81000100 30\nffffffff81000180 5\nffffffff81000180 7\nffffffff81000210 4\n400000 9\n",
        )
        .unwrap();
        let w = window(&before, &after, &symbols);
        assert_eq!(w.get("io_send_zc_prep"), Some(&27));
        assert_eq!(w.get("io_sendmsg_zc"), Some(&4));
        assert_eq!(w.get("[user]"), Some(&9));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn bad_count_lines_are_errors() {
        assert!(parse_counts("ffff 12\nnot-a-line\n").is_err());
        assert!(parse_counts("xyz 12\n").is_err());
    }

    #[test]
    fn the_windows_are_the_last_marks_before_exit() {
        // A boot-time mark, 3 marks for 2 modes, the write at exit.
        assert_eq!(window_writes(5, 2).unwrap(), 1..4);
        assert_eq!(window_writes(4, 2).unwrap(), 0..3);
        assert!(window_writes(3, 2).is_err());
    }

    #[test]
    fn the_table_sorts_by_the_difference() {
        let cost = |mode: &str, f: &[(&str, u64)]| ModeCost {
            mode: mode.into(),
            requests: 10,
            sender_cpu: 0.0,
            per_function: f.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        };
        let request = Request {
            pairs: 1,
            payload: 0,
            count: 10,
            modes: vec!["a".into(), "f".into()],
        };
        let costs = [
            cost("a", &[("big_same", 1000), ("gone", 50)]),
            cost("f", &[("big_same", 1000), ("new", 200)]),
        ];
        let t = table(&request, &costs);
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows[1], "| **all** | 105.0 | 120.0 | +15.0 |");
        assert_eq!(rows[3], "| new | 0.0 | 20.0 | +20.0 |");
        assert_eq!(rows[4], "| gone | 5.0 | 0.0 | -5.0 |");
        assert_eq!(rows[5], "| big_same | 100.0 | 100.0 | +0.0 |");
    }

    #[test]
    fn the_plugin_builds_without_warnings() {
        let layout = Layout::detect().unwrap();
        let out = std::env::temp_dir().join(format!("tcg-insn-profile-{}", std::process::id()));
        fs::create_dir_all(&out).unwrap();
        let lib = build_plugin(&layout, &out).unwrap();
        assert!(lib.is_file());
        fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn arguments_take_modes_and_pass_options_on() {
        let args: Vec<String> = "a_sendmsg --payload 16384 f_iov_copy --kernel-src /k --count 5"
            .split(' ')
            .map(String::from)
            .collect();
        let (request, rest) = parse(&args).unwrap();
        assert_eq!(request.modes, ["a_sendmsg", "f_iov_copy"]);
        assert_eq!(
            (request.pairs, request.payload, request.count),
            (1, 16384, 5)
        );
        assert_eq!(rest, ["--kernel-src", "/k"]);
        assert!(parse(&["--pairs".into(), "2".into()]).is_err());
    }
}
