//! `cargo xtask bench-profile`: where the guest instructions of a bench
//! mode go, per kernel function, counted exactly rather than sampled.
//!
//! The bench kernel boots under TCG with `-icount shift=0` and the plugin
//! qemu/tcg-insn-profile.c, which counts the instructions of every
//! translation block and writes all counts each time the guest enters
//! getppid(2). sendzc-bench `--profile` runs each mode's requests between
//! two such marks, pinned to vCPU 0. A window's counts, mapped to functions
//! with the build's System.map, are what the mode costs; the sender
//! thread's CPU time over the same window is printed beside them as a
//! check. perf in the guest samples only at HZ under TCG, which is why
//! this exists.
//!
//! What is counted is the send path: vCPU 0's instructions outside the
//! calls of SEND_PATH_SKIPS, whose instructions are listed apart. By
//! default the requests go over UDP through the dummy device, where the
//! whole send runs in the sender's context. With `--tcp` they go over TCP
//! on loopback to a reader on the other vCPU, with `--tcp-virtio` over
//! virtio-net to the host's sink as in `cargo xtask bench`. Over
//! virtio-net even the send path moves by several percent from run to
//! run, because the host's timing decides how many requests share an skb;
//! over loopback every transmission completes at once and two runs agree
//! within 1%.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::plugin;
use super::tap::{TapNet, HOST_ADDR};
use super::{build_bench, UNIT_NOTE};
use crate::guest::{Accel, Boot};
use crate::kernel;
use crate::layout::{Layout, Profile};
use crate::options::Options;
use crate::phase::Phases;

/// The syscall whose entry the plugin writes its counts at.
const MARK_SYMBOL: &str = "__x64_sys_getppid";
/// Functions whose calls the count leaves out (`*`: a prefix): interrupts
/// and the receive side, which land on the sender's CPU whenever packets
/// and timers do, and TCP's transmission, which the send path starts, but
/// whose skbs carry one request or several, as the device's completions
/// allow (autocorking); and the page allocator's drain of a CPU's free
/// page list into the buddy allocator, which comes in batches of
/// thousands of pages once that list passes a high mark: none or one in
/// a run of 4000 TCP requests, worth 40 to 530 instructions a request of
/// that run. What they run is listed beside the count. The bench's sender
/// CPU time leaves out interrupts and softirqs too.
const SEND_PATH_SKIPS: &[&str] = &[
    "common_interrupt",
    "sysvec_*",
    "handle_softirqs",
    "__do_softirq",
    "__release_sock",
    "tcp_write_xmit",
    "tcp_push_one",
    "tcp_tsq_write*",
    "free_pcppages_bulk",
];
/// The vCPU sendzc-bench --profile pins the sender to.
const SENDER_VCPU: u32 = 0;
/// Rows of the table: the functions that differ most (or cost most).
const ROWS: usize = 40;

/// Where the requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP through the dummy device: the whole send in the sender's context.
    Udp,
    /// TCP over loopback to a reader on another vCPU; the send path is
    /// counted.
    TcpLoopback,
    /// TCP over virtio-net to the host's sink, as in `cargo xtask bench`;
    /// the send path is counted.
    TcpVirtio,
}

impl Transport {
    /// As the tables say it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::TcpLoopback => "TCP (loopback)",
            Transport::TcpVirtio => "TCP (virtio-net)",
        }
    }
}

/// What to profile: one shape, one or more modes.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub transport: Transport,
    pub pairs: usize,
    pub payload: usize,
    pub count: usize,
    /// Runs of all modes, one after the other in one boot.
    pub runs: usize,
    pub modes: Vec<String>,
}

/// `MODE... [--tcp] --pairs N --payload BYTES [--count N] [--runs N]`,
/// then the options the other kernel commands take.
pub fn parse(args: &[String]) -> Result<(Request, Vec<String>)> {
    let mut request = Request {
        transport: Transport::Udp,
        pairs: 1,
        payload: 0,
        count: 20000,
        runs: 1,
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
            "--runs" => request.runs = number("--runs")?,
            "--tcp" => request.transport = Transport::TcpLoopback,
            "--tcp-virtio" => request.transport = Transport::TcpVirtio,
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
    if request.pairs == 0 || request.count == 0 || request.runs == 0 {
        bail!("--pairs, --count and --runs must be above 0");
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
        // Stable: names that share an address stay in System.map's order.
        by_addr.sort_by_key(|(addr, _)| *addr);
        Symbols { by_addr }
    }

    /// Where function `name` starts.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.by_addr
            .iter()
            .find(|(_, n)| n == name)
            .map(|(a, _)| *a)
    }

    /// Where the functions `patterns` name start: a name, or a prefix
    /// followed by `*`.
    pub fn addresses(&self, patterns: &[&str]) -> Vec<u64> {
        let matches = |name: &str| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == *p,
            })
        };
        self.by_addr
            .iter()
            .filter(|(_, n)| matches(n))
            .map(|(a, _)| *a)
            .collect()
    }

    /// The function `addr` is in; user space is one bucket.
    pub fn name(&self, addr: u64) -> &str {
        if addr < 0xffff_8000_0000_0000 {
            return "[user]";
        }
        // Where several names share an address, the first in System.map
        // names it: the function before section marks such as
        // __softirqentry_text_start, which sort after it.
        match self.by_addr.partition_point(|(a, _)| *a <= addr) {
            0 => "[kernel, no symbol]",
            i => {
                let start = self.by_addr[i - 1].0;
                let first = self.by_addr.partition_point(|(a, _)| *a < start);
                &self.by_addr[first].1
            }
        }
    }
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

/// The first mark of each run: a run of the bench writes `modes + 1`
/// marks, the runs follow each other, and after the last comes the write
/// at exit; earlier writes come from getppid calls made while the guest
/// booted.
pub fn run_marks(writes: usize, modes: usize, runs: usize) -> Result<Vec<usize>> {
    let needed = runs * (modes + 1) + 1;
    if writes < needed {
        bail!(
            "the plugin wrote {writes} times, {needed} needed for {runs} run(s) of {modes} mode(s)"
        );
    }
    let first = writes - needed;
    Ok((0..runs).map(|run| first + run * (modes + 1)).collect())
}

/// One mode's window, per request.
#[derive(Clone)]
pub struct ModeCost {
    pub mode: String,
    pub requests: u64,
    /// Sender thread CPU per request (guest instructions), from the bench.
    pub sender_cpu: f64,
    pub per_function: BTreeMap<String, u64>,
    /// Per skip function, what its calls ran (not in `per_function`).
    pub left_out: BTreeMap<String, u64>,
}

impl ModeCost {
    fn per_request(&self, function: &str) -> f64 {
        self.per_function.get(function).copied().unwrap_or(0) as f64 / self.requests as f64
    }

    /// All instructions a request.
    pub fn total(&self) -> f64 {
        self.per_function.values().sum::<u64>() as f64 / self.requests as f64
    }
}

/// The table: per function, instructions per request of each mode, and
/// with two or more modes the last minus the first, largest first.
pub fn table(request: &Request, costs: &[ModeCost]) -> String {
    let mut out = String::new();
    let over = request.transport.name();
    let counted = "the send path: the sender's vCPU, kernel and user, without \
                   interrupt handlers, softirqs, the socket backlog and TCP's \
                   transmission (listed apart)";
    let _ = writeln!(
        out,
        "# Instructions per request, {} x (24 B + {} B) over {over}, {} requests a mode\n",
        request.pairs, request.payload, request.count
    );
    let _ = writeln!(out, "All counts: {UNIT_NOTE}; {counted}.\n");
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
    let mut skips: Vec<&str> = costs
        .iter()
        .flat_map(|c| c.left_out.keys().map(String::as_str))
        .collect();
    skips.sort();
    skips.dedup();
    if !skips.is_empty() {
        let _ = writeln!(
            out,
            "\nLeft out of **all**: calls to these functions, with everything they ran\n"
        );
        let _ = writeln!(out, "| called function | {} |", modes.join(" | "));
        let _ = writeln!(out, "|---{}|", "|---:".repeat(costs.len()));
        for f in skips {
            let values = costs
                .iter()
                .map(|c| c.left_out.get(f).copied().unwrap_or(0) as f64 / c.requests as f64)
                .collect();
            out += &row(f, values, None);
        }
    }
    if has_delta {
        let ratio = last.total() / first.total();
        let _ = writeln!(out, "\nAll, {} / {}: {ratio:.3}", last.mode, first.mode);
        if let Some(verdict) = target(request, &first.mode, &last.mode, ratio) {
            let _ = writeln!(out, "\n{verdict}");
        }
    }
    out
}

/// One of the targets, as a bound on `last / first` of two modes.
pub struct Target {
    what: &'static str,
    bound: Bound,
}

enum Bound {
    /// The ratio at most this.
    AtMost(f64),
    /// The ratio this far from 1 at most.
    Within(f64),
    /// The inverse of the ratio at least this (messages a second of a
    /// sender bound by its CPU).
    InverseAtLeast(f64),
}

impl Target {
    /// The target that `last / first` of this shape judges, if any: the
    /// same bounds as `cargo xtask bench` applies.
    pub fn of(request: &Request, first: &str, last: &str) -> Option<Target> {
        let (what, bound) = match (first, last) {
            ("a_sendmsg", "f_iov_copy") if request.payload == 0 => (
                "header only, all COPY: (f) <= (a) + 3%",
                Bound::AtMost(1.03),
            ),
            ("a_sendmsg", "i_iov_mask") if request.payload == 0 => (
                "header only, all COPY, as a copy mask: (i) <= (a) + 3%",
                Bound::AtMost(1.03),
            ),
            ("c_zc_fixed1", "e_iov_mixed4") => ("(e) <= (c) + 3%", Bound::AtMost(1.03)),
            ("c_zc_fixed1", "i_iov_mask") => {
                ("(e) as a copy mask: (i) <= (c) + 3%", Bound::AtMost(1.03))
            }
            ("e_iov_mixed1", "e_iov_mixed4") => (
                "payloads over 4 buffers within 3% of one buffer",
                Bound::Within(0.03),
            ),
            // A sender bound by its CPU sends requests in inverse
            // proportion to their cost: (d) costing 3x (e) is (e) sending
            // 3x the msgs/s.
            ("d_linked", "e_iov_mixed4") if request.pairs > 1 => (
                "(e) >= 3x the msgs/s of (d), as (d) / (e) instructions a request",
                Bound::InverseAtLeast(3.0),
            ),
            _ => return None,
        };
        Some(Target { what, bound })
    }

    pub fn met(&self, ratio: f64) -> bool {
        match self.bound {
            Bound::AtMost(max) => ratio <= max,
            Bound::Within(d) => (ratio - 1.0).abs() <= d,
            Bound::InverseAtLeast(min) => ratio * min <= 1.0,
        }
    }

    /// What the target asks, as the verdict says it.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The ratio the bound applies to, as it is printed.
    pub fn shown(&self, ratio: f64) -> f64 {
        match self.bound {
            Bound::InverseAtLeast(_) => 1.0 / ratio,
            _ => ratio,
        }
    }

    pub fn verdict(&self, request: &Request, ratio: f64) -> String {
        format!(
            "Target, {} x (24 B + {} B): {}: {} ({:.3})",
            request.pairs,
            request.payload,
            self.what,
            if self.met(ratio) { "met" } else { "MISSED" },
            self.shown(ratio)
        )
    }
}

/// The verdict of the target that `last / first` of this shape judges, if
/// any.
pub fn target(request: &Request, first: &str, last: &str, ratio: f64) -> Option<String> {
    Target::of(request, first, last).map(|t| t.verdict(request, ratio))
}

/// The median of `totals`, as the index of the value (the lower of the two
/// middle ones for an even count).
fn median_index(totals: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..totals.len()).collect();
    order.sort_by(|&a, &b| totals[a].total_cmp(&totals[b]));
    order[(order.len() - 1) / 2]
}

/// Of several runs (`runs[run][mode]`), each mode's run of median total:
/// what the main table shows for it.
pub fn median_runs(runs: &[Vec<ModeCost>]) -> Vec<ModeCost> {
    let modes = runs[0].len();
    (0..modes)
        .map(|mode| {
            let totals: Vec<f64> = runs.iter().map(|run| run[mode].total()).collect();
            runs[median_index(&totals)][mode].clone()
        })
        .collect()
}

/// Every run's total per mode and `last / first`, and in how many runs
/// the target, if any, was met: whether the median's verdict is decided
/// or sits inside the runs' spread.
pub fn runs_table(request: &Request, runs: &[Vec<ModeCost>]) -> String {
    let mut out = String::new();
    let modes: Vec<&str> = runs[0].iter().map(|c| c.mode.as_str()).collect();
    let (first, last) = (modes[0], modes[modes.len() - 1]);
    let _ = writeln!(
        out,
        "\n## {} runs in one boot: all, instructions per request\n",
        runs.len()
    );
    let ratio_head = if modes.len() > 1 {
        format!(" | {last} / {first}")
    } else {
        String::new()
    };
    let _ = writeln!(out, "| run | {}{ratio_head} |", modes.join(" | "));
    let columns = modes.len() + usize::from(modes.len() > 1);
    let _ = writeln!(out, "|---{}|", "|---:".repeat(columns));
    for (i, run) in runs.iter().enumerate() {
        let totals: Vec<String> = run.iter().map(|c| format!("{:.1}", c.total())).collect();
        let ratio = if modes.len() > 1 {
            format!(" | {:.3}", ratio(run))
        } else {
            String::new()
        };
        let _ = writeln!(out, "| {} | {}{ratio} |", i + 1, totals.join(" | "));
    }
    let _ = writeln!(
        out,
        "\nThe tables above show each mode's run of median total."
    );
    if let Some(target) = Target::of(request, first, last) {
        let met = runs.iter().filter(|run| target.met(ratio(run))).count();
        let decided = if met == 0 || met == runs.len() {
            "all runs agree"
        } else {
            "the runs disagree: not decided at this bound"
        };
        let _ = writeln!(
            out,
            "Target met in {met} of {} runs: {decided}.",
            runs.len()
        );
    }
    out
}

/// A run's last mode against its first, `runs[run]` of [`Profiler::runs`].
pub fn ratio(run: &[ModeCost]) -> f64 {
    run[run.len() - 1].total() / run[0].total()
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

/// What every boot of the bench kernel under the plugin needs, built once:
/// `bench-targets` boots it once a target.
pub struct Profiler {
    bzimage: PathBuf,
    bin: PathBuf,
    plugin: PathBuf,
    symbols: Symbols,
    mark: u64,
    timeout: Option<Duration>,
}

impl Profiler {
    /// Builds the bench kernel, sendzc-bench and the plugin (into `out`).
    pub fn prepare(
        layout: &Layout,
        options: Options,
        phases: &mut Phases,
        out: &Path,
    ) -> Result<Profiler> {
        let options = Options {
            profile: Some(Profile::Bench),
            ..options
        };
        let kernel = kernel::build(layout, &options, phases)?;
        let bin = phases.run("bench build", || build_bench(layout))?;
        let plugin = phases.run("plugin build", || plugin::build(layout, out))?;
        let system_map = fs::read_to_string(kernel.build.join("System.map"))
            .with_context(|| format!("System.map in {}", kernel.build.display()))?;
        let symbols = Symbols::parse(&system_map);
        let mark = symbols
            .address(MARK_SYMBOL)
            .with_context(|| format!("{MARK_SYMBOL} is not in System.map"))?;
        Ok(Profiler {
            bzimage: kernel.bzimage,
            bin,
            plugin,
            symbols,
            mark,
            timeout: options.timeout,
        })
    }

    /// Boots once and runs the modes of `request` `request.runs` times,
    /// its files in `out`, as the phase `phase`: each mode's cost,
    /// `runs[run][mode]`.
    pub fn runs(
        &self,
        layout: &Layout,
        request: &Request,
        out: &Path,
        phases: &mut Phases,
        phase: &str,
    ) -> Result<Vec<Vec<ModeCost>>> {
        let mut plugin_args = format!(
            "{},snap={:x},out={}/counts",
            self.plugin.display(),
            self.mark,
            out.display()
        );
        let (net, target) = match request.transport {
            Transport::Udp => (None, "udp-dummy".to_string()),
            Transport::TcpLoopback => (None, "tcp-loopback".to_string()),
            Transport::TcpVirtio => {
                let net = TapNet::create()?;
                let port = net.start_sink()?;
                (Some(net), format!("tcp={HOST_ADDR}:{port}"))
            }
        };
        let _ = write!(plugin_args, ",vcpu={SENDER_VCPU}");
        for addr in self.symbols.addresses(SEND_PATH_SKIPS) {
            let _ = write!(plugin_args, ",skip={addr:x}");
        }
        let (b, o) = (self.bin.display(), out.display());
        let profile: Vec<String> = (1..=request.runs)
            .map(|run| {
                format!(
                    "{b} {o}/cpu-{run}.csv {target} --profile {} {} {} {}",
                    request.pairs,
                    request.payload,
                    request.count,
                    request.modes.join(" ")
                )
            })
            .collect();
        let mut exec = format!("{}; echo $? > {o}/status", profile.join(" && "));
        let mut qemu_opts = format!("-icount shift=0 -plugin {plugin_args}");
        if let Some(net) = &net {
            exec = format!("{} && {exec}", TapNet::guest_setup());
            qemu_opts = format!("{qemu_opts} {}", net.qemu_opts());
        }
        let outcome = phases.run(phase, || {
            Boot {
                kernel: &self.bzimage,
                accel: Accel::Tcg,
                exec,
                out_dir: out,
                console_log: out.join("console.log"),
                timeout: self.timeout.unwrap_or(Duration::from_secs(1800)),
                vng_args: vec![format!("--qemu-opts={qemu_opts}")],
                netns: net.as_ref().map(|n| n.netns.clone()),
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
        let writes = plugin::read_writes(&out.join("counts"))?;
        let marks = run_marks(writes.len(), request.modes.len(), request.runs)?;
        let mut runs = Vec::new();
        for (run, first_mark) in marks.into_iter().enumerate() {
            let csv = out.join(format!("cpu-{}.csv", run + 1));
            let sender = parse_sender_cpu(
                &fs::read_to_string(&csv).with_context(|| csv.display().to_string())?,
            )?;
            let costs: Vec<ModeCost> = sender
                .into_iter()
                .zip(first_mark..)
                .map(|((mode, requests, cpu_ns), i)| ModeCost {
                    mode,
                    requests,
                    sender_cpu: cpu_ns as f64 / requests as f64,
                    per_function: window(&writes[i].blocks, &writes[i + 1].blocks, &self.symbols),
                    left_out: window(&writes[i].skipped, &writes[i + 1].skipped, &self.symbols),
                })
                .collect();
            runs.push(costs);
        }
        Ok(runs)
    }
}

/// The per-function table of `runs`, with every run's totals when there
/// are several.
pub fn report(request: &Request, runs: &[Vec<ModeCost>]) -> String {
    let mut out = table(request, &median_runs(runs));
    if runs.len() > 1 {
        out += &runs_table(request, runs);
    }
    out
}

pub fn run(layout: &Layout, args: &[String], phases: &mut Phases) -> Result<()> {
    let (request, rest) = parse(args)?;
    let options = crate::options::parse(&rest)?;
    let out = layout.root.join("target/bench/profile");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let profiler = Profiler::prepare(layout, options, phases, &out)?;
    let runs = profiler.runs(layout, &request, &out, phases, "profile run")?;
    let table = report(&request, &runs);
    fs::write(out.join("profile.md"), &table)?;
    println!("{table}");
    eprintln!("bench-profile: wrote {}", out.join("profile.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plugin::parse_counts;
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _stext
ffffffff81000100 t io_send_zc_prep
ffffffff81000200 T io_sendmsg_zc
ffffffff81000300 D some_data
ffffffff81000400 W weak_fn
ffffffff81000500 T __do_softirq
ffffffff81000500 T __softirqentry_text_start
";

    #[test]
    fn symbols_name_the_function_an_address_is_in() {
        let symbols = Symbols::parse(MAP);
        assert_eq!(symbols.name(0xffffffff81000100), "io_send_zc_prep");
        assert_eq!(symbols.name(0xffffffff810004ff), "weak_fn");
        assert_eq!(symbols.name(0xffffffff81000510), "__do_softirq");
        // Every name stays findable, the second at an address too.
        assert_eq!(
            symbols.address("__softirqentry_text_start"),
            Some(0xffffffff81000500)
        );
        assert_eq!(symbols.name(0xffffffff810002ff), "io_sendmsg_zc");
        // Data symbols do not end a function.
        assert_eq!(symbols.name(0xffffffff81000350), "io_sendmsg_zc");
        assert_eq!(symbols.name(0xffffffff80000000), "[kernel, no symbol]");
        assert_eq!(symbols.name(0x5555_5555_0000), "[user]");
        assert_eq!(symbols.address("io_sendmsg_zc"), Some(0xffffffff81000200));
        assert_eq!(symbols.address("some_data"), None);
        assert_eq!(
            symbols.addresses(&["weak_fn", "io_send_*", "some_data"]),
            [0xffffffff81000100, 0xffffffff81000400]
        );
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
        let w = window(&before.blocks, &after.blocks, &symbols);
        assert_eq!(w.get("io_send_zc_prep"), Some(&27));
        assert_eq!(w.get("io_sendmsg_zc"), Some(&4));
        assert_eq!(w.get("[user]"), Some(&9));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn the_windows_are_the_last_marks_before_exit() {
        // A boot-time mark, 3 marks for 2 modes, the write at exit.
        assert_eq!(run_marks(5, 2, 1).unwrap(), [1]);
        assert_eq!(run_marks(4, 2, 1).unwrap(), [0]);
        assert!(run_marks(3, 2, 1).is_err());
        // Two boot-time marks, then 3 runs of 3 marks each, then exit.
        assert_eq!(run_marks(12, 2, 3).unwrap(), [2, 5, 8]);
        assert!(run_marks(9, 2, 3).is_err());
    }

    fn totals(mode: &str, all: &[u64]) -> Vec<ModeCost> {
        all.iter()
            .map(|&n| ModeCost {
                mode: mode.into(),
                requests: 10,
                sender_cpu: 0.0,
                per_function: [("f".to_string(), n)].into(),
                left_out: BTreeMap::new(),
            })
            .collect()
    }

    /// `runs[run][mode]` from each mode's totals over the runs.
    fn runs_of(modes: &[(&str, &[u64])]) -> Vec<Vec<ModeCost>> {
        let per_mode: Vec<Vec<ModeCost>> = modes.iter().map(|(m, t)| totals(m, t)).collect();
        (0..per_mode[0].len())
            .map(|run| per_mode.iter().map(|runs| runs[run].clone()).collect())
            .collect()
    }

    #[test]
    fn each_mode_is_shown_by_its_median_run() {
        let runs = runs_of(&[
            ("a_sendmsg", &[19200, 19100, 19300]),
            ("i_iov_mask", &[19900, 20100, 19700]),
        ]);
        let median = median_runs(&runs);
        assert_eq!(median[0].total(), 1920.0);
        assert_eq!(median[1].total(), 1990.0);
        assert_eq!(median[1].mode, "i_iov_mask");
        // An even count takes the lower middle.
        let even = runs_of(&[("a_sendmsg", &[40, 10, 30, 20])]);
        assert_eq!(median_runs(&even)[0].total(), 2.0);
    }

    #[test]
    fn the_runs_table_says_whether_the_runs_agree() {
        let request = Request {
            transport: Transport::TcpLoopback,
            pairs: 1,
            payload: 0,
            count: 10,
            runs: 3,
            modes: Vec::new(),
        };
        // 1.025, 1.035, 1.030: two runs meet the 3% bound, one does not.
        let split = runs_of(&[
            ("a_sendmsg", &[20000, 20000, 20000]),
            ("i_iov_mask", &[20500, 20700, 20600]),
        ]);
        let t = runs_table(&request, &split);
        assert!(t.contains("| run | a_sendmsg | i_iov_mask | i_iov_mask / a_sendmsg |"));
        assert!(t.contains("| 2 | 2000.0 | 2070.0 | 1.035 |"));
        assert!(t.contains("Target met in 2 of 3 runs: the runs disagree"));
        let missed = runs_of(&[
            ("a_sendmsg", &[20000, 20000, 20000]),
            ("i_iov_mask", &[20700, 20800, 20900]),
        ]);
        assert!(runs_table(&request, &missed).contains("met in 0 of 3 runs: all runs agree"));
        let met = runs_of(&[
            ("a_sendmsg", &[20000, 20000, 20000]),
            ("i_iov_mask", &[20100, 20200, 20300]),
        ]);
        assert!(runs_table(&request, &met).contains("met in 3 of 3 runs: all runs agree"));
        // No target for this pair: the totals, no verdict.
        let other = runs_of(&[("b_send", &[1, 2, 3]), ("i_iov_mask", &[1, 2, 3])]);
        assert!(!runs_table(&request, &other).contains("Target"));
    }

    #[test]
    fn the_table_sorts_by_the_difference() {
        let cost = |mode: &str, f: &[(&str, u64)]| ModeCost {
            mode: mode.into(),
            requests: 10,
            sender_cpu: 0.0,
            per_function: f.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            left_out: BTreeMap::new(),
        };
        let request = Request {
            transport: Transport::Udp,
            pairs: 1,
            payload: 0,
            count: 10,
            runs: 1,
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
    fn targets_are_judged_for_their_modes_only() {
        let request = |payload| Request {
            transport: Transport::TcpLoopback,
            pairs: 1,
            payload,
            count: 10,
            runs: 1,
            modes: Vec::new(),
        };
        let verdict = |payload, first, last, ratio| target(&request(payload), first, last, ratio);
        assert!(verdict(0, "a_sendmsg", "f_iov_copy", 1.03)
            .unwrap()
            .contains(": met (1.030)"));
        assert!(verdict(0, "a_sendmsg", "f_iov_copy", 1.031)
            .unwrap()
            .contains("MISSED"));
        // Header only is judged without a payload alone.
        assert_eq!(verdict(16384, "a_sendmsg", "f_iov_copy", 1.0), None);
        assert!(verdict(65536, "c_zc_fixed1", "e_iov_mixed4", 1.13)
            .unwrap()
            .contains("MISSED"));
        assert!(verdict(4096, "e_iov_mixed1", "e_iov_mixed4", 0.975)
            .unwrap()
            .contains("met"));
        assert!(verdict(4096, "e_iov_mixed1", "e_iov_mixed4", 1.031)
            .unwrap()
            .contains("MISSED"));
        assert_eq!(verdict(4096, "e_iov_mixed4", "e_iov_mixed1", 1.0), None);
        // (e) sending 3x the messages of (d) is (e) costing a third of (d).
        let pairs = |pairs, ratio| {
            let request = Request {
                pairs,
                ..request(4096)
            };
            target(&request, "d_linked", "e_iov_mixed4", ratio)
        };
        assert!(pairs(16, 0.25).unwrap().contains(": met (4.000)"));
        assert!(pairs(16, 0.34).unwrap().contains(": MISSED (2.941)"));
        assert_eq!(pairs(1, 0.25), None);
    }

    #[test]
    fn the_left_out_calls_have_a_table_of_their_own() {
        let cost = |mode: &str, skipped: u64| ModeCost {
            mode: mode.into(),
            requests: 10,
            sender_cpu: 0.0,
            per_function: [("tcp_sendmsg_locked".to_string(), 100)].into(),
            left_out: [("tcp_write_xmit".to_string(), skipped)].into(),
        };
        let request = Request {
            transport: Transport::TcpLoopback,
            pairs: 1,
            payload: 0,
            count: 10,
            runs: 1,
            modes: Vec::new(),
        };
        let t = table(&request, &[cost("a_sendmsg", 30), cost("f_iov_copy", 50)]);
        assert!(t.contains("over TCP (loopback)"));
        let (counted, left_out) = t.split_once("Left out").unwrap();
        assert!(counted.contains("| **all** | 10.0 | 10.0 | +0.0 |"));
        assert!(!counted.contains("tcp_write_xmit"));
        assert!(left_out.contains("| tcp_write_xmit | 3.0 | 5.0 |"));
        assert!(t.contains("header only, all COPY: (f) <= (a) + 3%: met (1.000)"));
    }

    #[test]
    fn arguments_take_modes_and_pass_options_on() {
        let args: Vec<String> =
            "a_sendmsg --payload 16384 f_iov_copy --kernel-src /k --count 5 --runs 3"
                .split(' ')
                .map(String::from)
                .collect();
        let (request, rest) = parse(&args).unwrap();
        assert_eq!(request.modes, ["a_sendmsg", "f_iov_copy"]);
        assert_eq!(
            (request.pairs, request.payload, request.count),
            (1, 16384, 5)
        );
        assert_eq!(request.runs, 3);
        assert_eq!(rest, ["--kernel-src", "/k"]);
        assert_eq!(request.transport, Transport::Udp);
        let (tcp, _) = parse(&["--tcp".into(), "a_sendmsg".into()]).unwrap();
        assert_eq!(tcp.transport, Transport::TcpLoopback);
        let (virtio, _) = parse(&["--tcp-virtio".into(), "a_sendmsg".into()]).unwrap();
        assert_eq!(virtio.transport, Transport::TcpVirtio);
        assert!(parse(&["--pairs".into(), "2".into()]).is_err());
        let zero_runs: Vec<String> = ["a_sendmsg", "--runs", "0"].map(String::from).into();
        assert!(parse(&zero_runs).is_err());
    }
}
