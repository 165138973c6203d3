//! Results as the reader sees them: libtest tallies, the summary of cases,
//! peer suites and kernel problems, and the closing line CI reads.

use std::fs;
use std::path::Path;

use anyhow::{bail, Result};

use crate::coverage::Coverage;
use crate::guest::{self, GuestRun, ProblemCount};
use crate::suites::Judged;

/// Totals of libtest's `test result:` lines in the console log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub binaries: u64,
}

/// `text` without ANSI colour sequences (ESC `[` ... `m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

impl Tally {
    pub fn add(self, other: Tally) -> Tally {
        Tally {
            passed: self.passed + other.passed,
            failed: self.failed + other.failed,
            ignored: self.ignored + other.ignored,
            binaries: self.binaries + other.binaries,
        }
    }

    /// One more passed or failed test.
    pub fn count(&mut self, passed: bool) {
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// The closing line CI reads: `label: N passed, N failed, N skipped`.
    pub fn closing_line(&self, label: &str) -> String {
        format!(
            "{label}: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

pub fn tally(console: &str) -> Tally {
    let mut t = Tally::default();
    for line in strip_ansi(console).lines() {
        let Some(rest) = line.split("test result: ").nth(1) else {
            continue;
        };
        t.binaries += 1;
        let count = |what: &str| -> u64 {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                        .strip_suffix(what)
                })
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        t.passed += count("passed");
        t.failed += count("failed");
        t.ignored += count("ignored");
    }
    t
}

/// Totals of the test binaries' logs in `dir`, one file each (see
/// qemu/guest-run.sh): a binary whose log has no `test result:` line is
/// not counted, for the caller to compare with the binaries it ran.
pub fn tally_logs(dir: &Path) -> Tally {
    let Ok(entries) = fs::read_dir(dir) else {
        return Tally::default();
    };
    let mut logs: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|text| tally(&text))
        .fold(Tally::default(), Tally::add)
}

/// What the final summary reports besides the test totals.
#[derive(Default)]
pub struct Summary {
    /// (property, cases run) from the property tests.
    pub cases: Vec<(String, u64)>,
    /// (suite, base line, patched line) for the peer suites.
    pub peers: Vec<(String, String, String)>,
    pub kernel_problems: ProblemCount,
    /// The series' line coverage, when the kernel was built for it.
    pub coverage: Option<Coverage>,
}

/// The case-log entries of the fault-injection sweep, which are counts of
/// injected faults, not generated cases.
const FAULT_POINTS: &str = "fault-injection-points";
const FAULT_CLEAN_ERRORS: &str = "fault-injection-clean-errors";

impl Summary {
    pub fn print(&self) {
        eprintln!("---- summary ----");
        let (faults, cases): (Vec<_>, Vec<_>) = self
            .cases
            .iter()
            .partition(|(name, _)| name.starts_with("fault-injection-"));
        let total: u64 = cases.iter().map(|(_, n)| n).sum();
        eprintln!("  generated cases: {total}");
        for (property, n) in &cases {
            eprintln!("    {property}: {n}");
        }
        eprintln!("  peer suites (base kernel | patched kernel):");
        for (name, base, patched) in &self.peers {
            eprintln!("    {name}: {base} | {patched}");
        }
        if let Some(line) = fault_line(&faults, self.kernel_problems) {
            eprintln!("{line}");
        }
        if let Some(coverage) = &self.coverage {
            eprintln!("{}", coverage.summary_line());
        }
        eprintln!(
            "  kernel problems in dmesg/kmemleak: {}",
            self.kernel_problems.splats + self.kernel_problems.leaks
        );
    }
}

/// `fault injection: N points injected, N clean errors, N leaks, N splats`,
/// if the sweep ran.
fn fault_line(faults: &[&(String, u64)], problems: ProblemCount) -> Option<String> {
    let count = |name: &str| faults.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let points = count(FAULT_POINTS)?;
    let clean = count(FAULT_CLEAN_ERRORS).unwrap_or(0);
    Some(format!(
        "fault injection: {points} points injected, {clean} clean errors, {} leaks, {} splats",
        problems.leaks, problems.splats
    ))
}

/// Sums the `property cases` lines the property tests appended.
pub fn case_counts(path: &Path) -> Vec<(String, u64)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut counts: Vec<(String, u64)> = Vec::new();
    for (name, n) in text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, n)| Some((name.to_string(), n.trim().parse::<u64>().ok()?)))
    {
        match counts.iter_mut().find(|(p, _)| *p == name) {
            Some((_, total)) => *total += n,
            None => counts.push((name, n)),
        }
    }
    counts
}

/// Prints the run's summary and closing line, then decides: the guest
/// wrote a status, every peer suite passed, every test binary reported,
/// nothing failed, the kernel log (`logs`) is clean.
pub fn verdict(run: &GuestRun, judged: Judged, binaries: usize, logs: Result<()>) -> Result<Tally> {
    let Judged {
        tally,
        mut summary,
        failures,
    } = judged;
    summary.kernel_problems = guest::problem_count(&run.out);
    eprintln!(
        "vm-test: {} test binaries in the guest ({}), console log {}",
        tally.binaries,
        run.accel.name(),
        run.console_log.display()
    );
    summary.print();
    eprintln!("{}", tally.closing_line("guest"));
    let status = run.require_status()?;
    if !failures.is_empty() {
        bail!("peer suites: {}", failures.join("; "));
    }
    match status {
        0 if tally.passed == 0 => {
            bail!("the guest ran no test; see {}", run.console_log.display())
        }
        0 if tally.binaries == binaries as u64 && tally.failed == 0 => logs.map(|()| tally),
        0 => bail!(
            "{} of {} test binaries reported a result; see {}",
            tally.binaries,
            binaries,
            run.console_log.display()
        ),
        _ => {
            logs.ok();
            bail!(
                "the guest's tests failed ({} failed test(s) counted; a binary may \
                 also have exited with an error); see {}",
                tally.failed,
                run.console_log.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_libtest_results() {
        let console = "  | test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s\n\
                       [  5.0] random kernel line\n\
                       test result: FAILED. 2 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            tally(console),
            Tally {
                passed: 5,
                failed: 4,
                ignored: 1,
                binaries: 2
            }
        );
    }

    #[test]
    fn prints_the_fault_injection_line() {
        let faults = [
            ("fault-injection-points".to_string(), 120),
            ("fault-injection-clean-errors".to_string(), 37),
        ];
        let refs: Vec<&(String, u64)> = faults.iter().collect();
        let problems = ProblemCount {
            splats: 0,
            leaks: 2,
        };
        assert_eq!(
            fault_line(&refs, problems).unwrap(),
            "fault injection: 120 points injected, 37 clean errors, 2 leaks, 0 splats"
        );
        assert_eq!(fault_line(&[], problems), None);
    }

    /// Each binary's own log counts, whatever the console made of it: on
    /// the console a kernel message once split a result line, and that
    /// binary's 2 passed and 1 ignored went uncounted.
    #[test]
    fn tallies_each_binarys_log() {
        let dir = std::env::temp_dir().join(format!("sendzc-tally-logs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let result = "test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured\n";
        fs::write(
            dir.join("many_in_flight-1.log"),
            format!("running 3 tests\n{result}"),
        )
        .unwrap();
        fs::write(
            dir.join("all_copy-2.log"),
            "test result: FAILED. 4 passed; 1 failed;\n",
        )
        .unwrap();
        // crashed before its result: no binary counted, for the caller
        fs::write(dir.join("crashed-3.log"), "running 5 tests\n").unwrap();
        fs::write(dir.join("notes.txt"), result).unwrap();
        let garbled = "test result: [ 45.5] sendzc-many: in flight\nok. 2 passed;\n";
        let t = tally_logs(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            t,
            Tally {
                passed: 6,
                failed: 1,
                ignored: 1,
                binaries: 2
            }
        );
        // What the console-based count made of the split line.
        assert_eq!(tally(garbled).passed, 0);
        assert_eq!(tally_logs(Path::new("/nonexistent")), Tally::default());
    }

    #[test]
    fn tallies_coloured_results() {
        let console =
            "test result: \u{1b}[32mok\u{1b}[m. 4 passed; 0 failed; 0 ignored; 0 measured\n";
        assert_eq!(tally(console).passed, 4);
    }
}
