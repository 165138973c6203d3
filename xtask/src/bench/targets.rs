//! `cargo xtask bench-targets`: every target of issue 13, decided by the
//! exact instruction count of the send path (see `profile`), in several
//! runs a target.
//!
//! `cargo xtask bench` judges the targets by the sender thread's CPU over
//! whole runs. Over UDP its runs agree within 1%; over TCP the ACKs the
//! sender processes and how many requests share an skb move it by more
//! than the 3% that a target allows, so `bench` leaves those undecided.
//! This command boots the bench kernel under the counting plugin once a
//! target, runs both modes `--runs` times (5 by default) and prints one
//! table: the counts of each mode's median run, the ratio with its range
//! over the runs, and in how many runs the target was met.

use std::fmt::Write as _;
use std::fs;

use anyhow::{bail, Context, Result};

use super::profile::{self, median_runs, ratio, ModeCost, Profiler, Request, Target, Transport};
use crate::layout::Layout;
use crate::phase::Phases;

/// One target's measurement: a shape and the two modes whose ratio the
/// target bounds (see `profile::Target::of`).
struct Row {
    /// The directory of its files.
    name: &'static str,
    transport: Transport,
    pairs: usize,
    payload: usize,
    /// Requests a mode and run: enough for a count stable to 0.1%.
    count: usize,
    first: &'static str,
    last: &'static str,
}

const fn row(
    name: &'static str,
    transport: Transport,
    (pairs, payload, count): (usize, usize, usize),
    first: &'static str,
    last: &'static str,
) -> Row {
    Row {
        name,
        transport,
        pairs,
        payload,
        count,
        first,
        last,
    }
}

use Transport::{TcpLoopback as Tcp, Udp};

/// The targets, as the issue lists them. UDP's shapes are the nearest
/// that fit one datagram; TCP goes over loopback, where the send path's
/// count repeats within 1% (over virtio-net it moves by 8%). At one pair
/// `e_iov_mixed4` is the request `e_iov_mixed1` is: one payload, one
/// buffer.
#[rustfmt::skip]
const ROWS: &[Row] = &[
    row("udp-header-f", Udp, (1, 0, 20000), "a_sendmsg", "f_iov_copy"),
    row("udp-header-i", Udp, (1, 0, 20000), "a_sendmsg", "i_iov_mask"),
    row("tcp-header-f", Tcp, (1, 0, 20000), "a_sendmsg", "f_iov_copy"),
    row("tcp-header-i", Tcp, (1, 0, 20000), "a_sendmsg", "i_iov_mask"),
    row("udp-e", Udp, (1, 16384, 5000), "c_zc_fixed1", "e_iov_mixed4"),
    row("udp-i", Udp, (1, 16384, 5000), "c_zc_fixed1", "i_iov_mask"),
    row("tcp-e", Tcp, (1, 65536, 4000), "c_zc_fixed1", "e_iov_mixed4"),
    row("tcp-i", Tcp, (1, 65536, 4000), "c_zc_fixed1", "i_iov_mask"),
    row("udp-4-buffers", Udp, (4, 4096, 5000), "e_iov_mixed1", "e_iov_mixed4"),
    row("tcp-4-buffers", Tcp, (16, 4096, 2000), "e_iov_mixed1", "e_iov_mixed4"),
    row("tcp-linked", Tcp, (16, 4096, 2000), "d_linked", "e_iov_mixed4"),
];

impl Row {
    fn request(&self, runs: usize) -> Request {
        Request {
            transport: self.transport,
            pairs: self.pairs,
            payload: self.payload,
            count: self.count,
            runs,
            modes: vec![self.first.to_string(), self.last.to_string()],
        }
    }

    fn target(&self) -> Target {
        Target::of(&self.request(1), self.first, self.last)
            .expect("every row of ROWS has a target (see the test)")
    }

    fn shape(&self) -> String {
        let piece = match self.payload {
            0 => "24 B".to_string(),
            p if p % 1024 == 0 => format!("24 B + {} KiB", p / 1024),
            p => format!("24 B + {p} B"),
        };
        match self.pairs {
            1 => piece,
            n => format!("{n} x ({piece})"),
        }
    }
}

/// A row's runs, `runs[run][mode]`, as one line of the table.
fn line(row: &Row, runs: &[Vec<ModeCost>]) -> String {
    let target = row.target();
    let median = median_runs(runs);
    let (first, last) = (&median[0], &median[median.len() - 1]);
    let median_ratio = last.total() / first.total();
    let shown: Vec<f64> = runs.iter().map(|run| target.shown(ratio(run))).collect();
    let lo = shown.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = shown.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let met = runs.iter().filter(|run| target.met(ratio(run))).count();
    let verdict = if target.met(median_ratio) {
        "met"
    } else {
        "MISSED"
    };
    let agree = if met == 0 || met == runs.len() {
        ""
    } else {
        ", the runs disagree"
    };
    format!(
        "| {} | {} | {} | {}, {} | {:.1}, {:.1} | {:.3} ({lo:.3}-{hi:.3}) | {verdict} (met in {met} of {}{agree}) |",
        target.what(),
        row.transport.name(),
        row.shape(),
        first.mode,
        last.mode,
        first.total(),
        last.total(),
        target.shown(median_ratio),
        runs.len()
    )
}

/// The table of all rows' lines.
fn table(lines: &[String], runs: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The targets, on the send path\n\n\
         Guest instructions a request under QEMU TCG -icount shift=0, not \
         time: the send path as `cargo xtask bench-profile` counts it, each \
         mode's median run of {runs}, the ratio's range over the runs beside \
         it (for (d) against (e), (d) / (e)).\n"
    );
    let _ = writeln!(
        out,
        "| target | transport | shape | modes | instructions a request | ratio (range) | verdict |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---|---|");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// `--runs N` (5 by default) anywhere among the options the other kernel
/// commands take, which are returned.
fn parse(args: &[String]) -> Result<(usize, Vec<String>)> {
    let mut runs = 5;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg != "--runs" {
            rest.push(arg.clone());
            continue;
        }
        let n = it.next().context("--runs needs a value")?;
        runs = n
            .parse()
            .with_context(|| format!("--runs takes a number, not '{n}'"))?;
        if runs == 0 {
            bail!("--runs must be above 0");
        }
    }
    Ok((runs, rest))
}

pub fn run(layout: &Layout, args: &[String], phases: &mut Phases) -> Result<()> {
    let (runs, rest) = parse(args)?;
    let options = crate::options::parse(&rest)?;
    let out = layout.root.join("target/bench/targets");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let profiler = Profiler::prepare(layout, options, phases, &out)?;
    let mut lines = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        eprintln!(
            "bench-targets: {} of {}: {} over {}, {}, {} runs",
            i + 1,
            ROWS.len(),
            row.target().what(),
            row.transport.name(),
            row.shape(),
            runs
        );
        let dir = out.join(row.name);
        fs::create_dir_all(&dir)?;
        let request = row.request(runs);
        let result = profiler.runs(layout, &request, &dir, phases, row.name)?;
        fs::write(dir.join("profile.md"), profile::report(&request, &result))?;
        lines.push(line(row, &result));
        eprintln!("{}", lines[lines.len() - 1]);
    }
    let table = table(&lines, runs);
    fs::write(out.join("targets.md"), &table)?;
    println!("{table}");
    eprintln!(
        "bench-targets: wrote {} (and each target's profile.md beside it)",
        out.join("targets.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// `runs[run][mode]` of two modes whose totals a request are `first`
    /// and `last`, run by run.
    fn runs(first: &[u64], last: &[u64]) -> Vec<Vec<ModeCost>> {
        let cost = |mode: &str, n: u64| ModeCost {
            mode: mode.into(),
            requests: 10,
            sender_cpu: 0.0,
            per_function: [("f".to_string(), n * 10)].into(),
            left_out: BTreeMap::new(),
        };
        first
            .iter()
            .zip(last)
            .map(|(&f, &l)| vec![cost("first", f), cost("last", l)])
            .collect()
    }

    fn named(name: &str) -> &'static Row {
        ROWS.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn every_row_has_a_target() {
        for row in ROWS {
            assert!(
                Target::of(&row.request(1), row.first, row.last).is_some(),
                "{}",
                row.name
            );
        }
    }

    #[test]
    fn a_line_gives_the_median_run_the_range_and_the_runs_that_met() {
        let l = line(
            named("tcp-e"),
            &runs(&[1000, 1000, 1000], &[1020, 1036, 1035]),
        );
        assert_eq!(
            l,
            "| (e) <= (c) + 3% | TCP (loopback) | 24 B + 64 KiB | first, last | \
             1000.0, 1035.0 | 1.035 (1.020-1.036) | MISSED (met in 1 of 3, the runs disagree) |"
        );
        let met = line(named("udp-header-f"), &runs(&[3677, 3677], &[3732, 3732]));
        assert!(met.contains("| UDP | 24 B |"), "{met}");
        assert!(
            met.ends_with("| 1.015 (1.015-1.015) | met (met in 2 of 2) |"),
            "{met}"
        );
    }

    #[test]
    fn a_line_of_linked_sends_shows_what_d_costs_over_e() {
        let l = line(named("tcp-linked"), &runs(&[6000, 6100], &[1000, 1000]));
        assert!(l.contains("| 16 x (24 B + 4 KiB) |"), "{l}");
        assert!(
            l.contains("| 6.000 (6.000-6.100) | met (met in 2 of 2) |"),
            "{l}"
        );
        let missed = line(named("tcp-linked"), &runs(&[2900], &[1000]));
        assert!(missed.contains("MISSED (met in 0 of 1)"), "{missed}");
    }

    #[test]
    fn runs_is_an_option_with_a_default() {
        let args = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
        assert_eq!(parse(&args("")).unwrap(), (5, vec![]));
        assert_eq!(
            parse(&args("--runs 3 --kernel-src /k")).unwrap(),
            (3, args("--kernel-src /k"))
        );
        assert_eq!(
            parse(&args("--kernel-src /k --runs 2")).unwrap(),
            (2, args("--kernel-src /k"))
        );
        assert!(parse(&args("--runs 0")).is_err());
        assert!(parse(&args("--runs x")).is_err());
        assert!(parse(&args("--runs")).is_err());
    }
}
