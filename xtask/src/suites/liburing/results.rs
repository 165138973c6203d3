//! runtests.sh's output as per-test verdicts, and what the gate asks of
//! two sets of them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::suites::{self, Judge, PeerSuite};

/// How one test program ended, as runtests.sh reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    Skipped,
    TimedOut,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Passed => "pass",
            Verdict::Failed => "FAIL",
            Verdict::Skipped => "skip",
            Verdict::TimedOut => "timeout",
        }
    }

    fn parse(word: &str) -> Option<Verdict> {
        [
            Verdict::Passed,
            Verdict::Failed,
            Verdict::Skipped,
            Verdict::TimedOut,
        ]
        .into_iter()
        .find(|v| v.word() == word)
    }
}

/// Test name to verdict.
pub type Results = BTreeMap<String, Verdict>;

/// The merged results of `suites` (the host-judged ones) from their logs
/// in `out`.
pub fn results_of(out: &Path, suites: &[PeerSuite]) -> Result<Results> {
    let mut results = Results::new();
    for suite in suites.iter().filter(|s| s.judge == Judge::Host) {
        results.extend(parse_log(&suites::log(out, &suite.name)?));
    }
    Ok(results)
}

/// The verdict of one test from what runtests.sh printed after
/// `Running test NAME` (the test's own output, then runtests.sh's line).
fn verdict_of(output: &str) -> Verdict {
    let last = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if last.contains("timed out") {
        Verdict::TimedOut
    } else if last.ends_with("Skipped") || last.ends_with("Test skipped") {
        Verdict::Skipped
    } else if last.contains("failed") || last.contains("expected fail") {
        Verdict::Failed
    } else if is_time(last) {
        Verdict::Passed
    } else {
        // Killed mid-way or garbled: not a pass.
        Verdict::Failed
    }
}

/// runtests.sh's pass line ends with `N sec` or `N sec [M]`.
fn is_time(line: &str) -> bool {
    let line = line.trim_end();
    let line = match line.rsplit_once(" [") {
        Some((head, tail)) if tail.ends_with(']') => head,
        _ => line,
    };
    line.strip_suffix(" sec")
        .and_then(|l| l.rsplit(' ').next())
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses runtests.sh's output into per-test verdicts.
pub fn parse_log(log: &str) -> Results {
    let mut results = Results::new();
    for chunk in log.split("Running test ").skip(1) {
        let name = chunk.split_whitespace().next().unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let after_name = &chunk[chunk.find(name).unwrap_or(0) + name.len()..];
        // runtests.sh's summary after the last test is not its output.
        let output = after_name
            .split("\nTests timed out")
            .next()
            .and_then(|s| s.split("\nTest run complete").next())
            .and_then(|s| s.split("\nFound dmesg file").next())
            .unwrap_or_default();
        results.insert(name.to_string(), verdict_of(output));
    }
    results
}

/// Results as stored in the cache: `name verdict` lines.
pub(super) fn serialize(results: &Results) -> String {
    results
        .iter()
        .map(|(name, v)| format!("{name} {}\n", v.word()))
        .collect()
}

pub(super) fn deserialize(text: &str) -> Option<Results> {
    text.lines()
        .map(|line| {
            let (name, word) = line.split_once(' ')?;
            Some((name.to_string(), Verdict::parse(word)?))
        })
        .collect()
}

/// The results of `tests` out of `all`, if `all` has every one of them.
pub fn subset(all: &Results, tests: &[String]) -> Option<Results> {
    tests
        .iter()
        .map(|t| Some((t.clone(), *all.get(t)?)))
        .collect()
}

/// Counts per verdict, in the order pass, fail, skip, timeout.
fn counts(results: &Results) -> [usize; 4] {
    let mut c = [0; 4];
    for v in results.values() {
        c[match v {
            Verdict::Passed => 0,
            Verdict::Failed => 1,
            Verdict::Skipped => 2,
            Verdict::TimedOut => 3,
        }] += 1;
    }
    c
}

pub fn count_line(results: &Results) -> String {
    let [p, f, s, t] = counts(results);
    format!("{p} passed, {f} failed, {s} skipped, {t} timed out")
}

/// The tests that pass on the base kernel and do not on the patched one.
pub fn regressions(base: &Results, patched: &Results) -> Vec<String> {
    base.iter()
        .filter(|(_, v)| **v == Verdict::Passed)
        .filter(|(name, _)| patched.get(*name) != Some(&Verdict::Passed))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The tests of `tests` that did not fail in `results`: a test without a
/// result there proves nothing, so it stays.
pub fn not_failed_in(tests: &[String], results: &Results) -> Vec<String> {
    tests
        .iter()
        .filter(|t| results.get(*t).is_none_or(|v| *v == Verdict::Passed))
        .cloned()
        .collect()
}

/// Both result lists side by side, one line per test: tests whose verdicts
/// differ are marked.
pub fn side_by_side(base: &Results, patched: &Results) -> String {
    let mut names: Vec<&String> = base.keys().chain(patched.keys()).collect();
    names.sort();
    names.dedup();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    let mut out = format!("  {:width$}  {:8} {:8}\n", "test", "base", "patched");
    for name in names {
        let word = |r: &Results| r.get(name).map_or("-", |v| v.word());
        let (b, p) = (word(base), word(patched));
        let mark = if b != p { "  <-" } else { "" };
        out.push_str(&format!("  {name:width$}  {b:8} {p:8}{mark}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
Running test accept.t                                               4 sec
Running test buf-ring-stress.t                                      Test buf-ring-stress.t timed out (may not be a failure)
Running test 500f9fbadef8.t                                         Polling not supported in current dir, test skipped
Skipped
Running test cmd-discard.t                                          Skipped
Running test send-zerocopy.t                                        some output
Test send-zerocopy.t failed with ret 1
Running test xfail_prep_link_timeout_out_of_scope.t                 0 sec [0]
Running test statx.t                                                Test statx.t failed dmesg check
Tests timed out (1): <buf-ring-stress.t>
Test run complete, kernel: 7.3.4 #1
Tests failed (2): <send-zerocopy.t> <statx.t>
";

    #[test]
    fn parses_runtests_output() {
        let r = parse_log(LOG);
        let get = |n: &str| r.get(n).copied();
        assert_eq!(get("accept.t"), Some(Verdict::Passed));
        assert_eq!(get("buf-ring-stress.t"), Some(Verdict::TimedOut));
        assert_eq!(get("500f9fbadef8.t"), Some(Verdict::Skipped));
        assert_eq!(get("cmd-discard.t"), Some(Verdict::Skipped));
        assert_eq!(get("send-zerocopy.t"), Some(Verdict::Failed));
        assert_eq!(
            get("xfail_prep_link_timeout_out_of_scope.t"),
            Some(Verdict::Passed)
        );
        assert_eq!(get("statx.t"), Some(Verdict::Failed));
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn a_test_cut_short_is_not_a_pass() {
        let r = parse_log("Running test a.t      1 sec\nRunning test b.t     ");
        assert_eq!(r.get("b.t"), Some(&Verdict::Failed));
    }

    #[test]
    fn cache_round_trip() {
        let r = parse_log(LOG);
        assert_eq!(deserialize(&serialize(&r)), Some(r));
        assert_eq!(deserialize("a.t maybe\n"), None);
    }

    #[test]
    fn regressions_are_base_passes_that_do_not_pass() {
        let base =
            parse_log("Running test a.t 1 sec\nRunning test b.t 1 sec\nRunning test c.t Skipped\n");
        let patched = parse_log(
            "Running test a.t 1 sec\nRunning test b.t Test b.t timed out\nRunning test c.t 2 sec\n",
        );
        assert_eq!(regressions(&base, &patched), ["b.t"]);
        assert_eq!(
            regressions(&base, &Results::new()),
            ["a.t", "b.t"],
            "a test missing on the patched side is a regression"
        );
    }

    #[test]
    fn only_a_failure_on_the_base_kernel_clears_a_regression() {
        let lost = ["a.t".to_string(), "b.t".to_string(), "c.t".to_string()];
        let again =
            parse_log("Running test a.t 1 sec\nRunning test b.t Test b.t failed with ret 1\n");
        assert_eq!(
            not_failed_in(&lost, &again),
            ["a.t", "c.t"],
            "a test without a result on the base kernel stays a regression"
        );
    }

    #[test]
    fn side_by_side_marks_differences() {
        let base = parse_log("Running test a.t 1 sec\nRunning test b.t Skipped\n");
        let patched = parse_log("Running test a.t 1 sec\nRunning test b.t 1 sec\n");
        let table = side_by_side(&base, &patched);
        assert!(table.contains("a.t   pass     pass    \n"), "{table}");
        assert!(table.contains("b.t   skip     pass      <-"), "{table}");
    }

    #[test]
    fn subsets_need_every_test() {
        let all = parse_log(LOG);
        let some = subset(&all, &["accept.t".into(), "statx.t".into()]).unwrap();
        assert_eq!(some.len(), 2);
        assert_eq!(subset(&all, &["accept.t".into(), "nope.t".into()]), None);
    }

    #[test]
    fn counts_verdicts() {
        assert_eq!(
            count_line(&parse_log(LOG)),
            "2 passed, 2 failed, 2 skipped, 1 timed out"
        );
    }
}
