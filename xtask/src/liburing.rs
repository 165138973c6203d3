//! liburing's test suite, from Debian's liburing source package: built as
//! released for the base kernel, and with kernel-patches/liburing/ applied
//! for the patched kernel, then run in the guest by its own runtests.sh.
//!
//! The gate: every test that passes on the base kernel passes on the
//! patched one. The base kernel's results depend only on the base versions,
//! the kernel config and the runner settings, so they are kept in the cache
//! under a key made of those, and computed once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;
use crate::peers::{Judge, PeerSuite};
use crate::source::{self, Base, PrivateApt};

/// Seconds each test may run (runtests.sh's TIMEOUT, guest seconds). Under
/// TCG with KASAN a few stress tests need more than liburing's default of
/// 60: they are reported as timed out, on both kernels alike.
pub const TEST_TIMEOUT: u32 = 60;

/// Which liburing: as released, or with our series applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Released,
    Patched,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Released => "released",
            Flavour::Patched => "patched",
        }
    }

    /// The peer suite's name in the guest's `peer-result:` lines.
    pub fn suite_name(self) -> String {
        format!("liburing-{}", self.name())
    }
}

fn dir(layout: &Layout) -> PathBuf {
    layout.patches().join("liburing")
}

pub fn base(layout: &Layout) -> Result<Base> {
    Base::load_from(&dir(layout).join("BASE"))
}

/// The patch files named by `kernel-patches/liburing/series`, in order;
/// none if there is no series file.
pub fn series(layout: &Layout) -> Result<Vec<PathBuf>> {
    let list = dir(layout).join("series");
    let Ok(text) = fs::read_to_string(&list) else {
        return Ok(Vec::new());
    };
    let mut patches = Vec::new();
    for name in text.lines().map(str::trim) {
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let path = dir(layout).join(name);
        if !path.is_file() {
            bail!("kernel-patches/liburing/series names {name}, which does not exist");
        }
        patches.push(path);
    }
    Ok(patches)
}

/// The orig tarball of BASE, downloaded once and checked against its sha256.
fn tarball(layout: &Layout, base: &Base) -> Result<PathBuf> {
    let sh = Shell::new()?;
    let path = layout.apt().join("src").join(&base.tarball);
    if !path.is_file() {
        eprintln!(
            "  downloading source package {}={}",
            base.package, base.version
        );
        let apt = PrivateApt::new(layout)?;
        apt.update(&sh)?;
        apt.download_source(&sh, &base.package, &base.version)?;
    }
    let sum = source::sha256(&sh, &path)?;
    if sum != base.sha256 {
        bail!(
            "{} has sha256 {sum}, kernel-patches/liburing/BASE says {}",
            path.display(),
            base.sha256
        );
    }
    Ok(path)
}

/// What a built tree was built from: tarball and patch contents.
fn fingerprint(sh: &Shell, base: &Base, patches: &[PathBuf]) -> Result<String> {
    let mut ids = format!("{} {}\n", base.tarball, base.sha256);
    for patch in patches {
        ids.push_str(&cmd!(sh, "git hash-object {patch}").quiet().read()?);
        ids.push('\n');
    }
    Ok(ids)
}

/// Extracts, patches and builds liburing and its tests in the cache, unless
/// that tree is already built from the same inputs; returns the tree.
pub fn build(layout: &Layout, flavour: Flavour) -> Result<PathBuf> {
    let base = base(layout)?;
    let patches = match flavour {
        Flavour::Released => Vec::new(),
        Flavour::Patched => series(layout)?,
    };
    let sh = Shell::new()?;
    let tree = layout.cache.join("liburing").join(flavour.name());
    let stamp = tree.join(".sendzc-built");
    let want = fingerprint(&sh, &base, &patches)?;
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        eprintln!(
            "  liburing {} ({}, {} patches): built",
            base.version,
            flavour.name(),
            patches.len()
        );
        return Ok(tree);
    }
    let tarball = tarball(layout, &base)?;
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    cmd!(sh, "tar -xzf {tarball} -C {tree} --strip-components=1").run()?;
    let _cd = sh.push_dir(&tree);
    for patch in &patches {
        let name = patch.file_name().unwrap_or_default().to_string_lossy();
        cmd!(sh, "git apply {patch}")
            .quiet()
            .run()
            .with_context(|| format!("liburing patch {name} does not apply"))?;
        eprintln!("  applied {name}");
    }
    configure(&sh)?;
    make(&sh).with_context(|| format!("building liburing ({}) failed", flavour.name()))?;
    fs::write(&stamp, want)?;
    eprintln!(
        "  liburing {} ({}, {} patches) built in {}",
        base.version,
        flavour.name(),
        patches.len(),
        tree.display()
    );
    Ok(tree)
}

/// `kernel-patches/liburing/series` patch by patch on a scratch tree: each
/// applies without whitespace errors, and the library, its tests and its
/// examples build without a warning after each one.
pub fn check_series(layout: &Layout) -> Result<()> {
    let patches = series(layout)?;
    if patches.is_empty() {
        eprintln!("  kernel-patches/liburing/series is empty or missing: nothing to check");
        return Ok(());
    }
    let base = base(layout)?;
    let tarball = tarball(layout, &base)?;
    let sh = Shell::new()?;
    let tree = layout.cache.join("liburing/check");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    cmd!(sh, "tar -xzf {tarball} -C {tree} --strip-components=1").run()?;
    let _cd = sh.push_dir(&tree);
    configure(&sh)?;
    for (n, patch) in patches.iter().enumerate() {
        let name = patch.file_name().unwrap_or_default().to_string_lossy();
        cmd!(sh, "git apply --whitespace=error-all {patch}")
            .quiet()
            .run()
            .with_context(|| format!("liburing patch {name} does not apply cleanly"))?;
        make(&sh).with_context(|| format!("liburing does not build after {name}"))?;
        eprintln!("  {}/{} {name}: applies, builds", n + 1, patches.len());
    }
    Ok(())
}

fn configure(sh: &Shell) -> Result<()> {
    cmd!(sh, "./configure --cc=gcc --cxx=g++")
        .quiet()
        .ignore_stdout()
        .run()
        .context("liburing's configure failed")
}

/// The library, the tests and the examples (liburing's `all`); a compiler
/// warning is an error (the release builds without any with gcc 12).
fn make(sh: &Shell) -> Result<()> {
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let out = cmd!(sh, "make -s -j{jobs}")
        .quiet()
        .ignore_status()
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning:")).collect();
    if !out.status.success() || !warnings.is_empty() {
        for line in stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  | {line}");
        }
        bail!(
            "make failed ({}) or warned ({} warning(s))",
            out.status,
            warnings.len()
        );
    }
    Ok(())
}

/// A test that runs alone, with its own limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub test: String,
    /// RLIMIT_AS in MiB (`as_mib=`), e.g. to make a test take its own
    /// fallback for when a large allocation fails.
    pub address_space_mib: Option<u64>,
    /// Its own runtests.sh TIMEOUT (`timeout=`), in guest seconds.
    pub timeout: Option<u32>,
}

/// `qemu/liburing-tests.txt`: the tests vm-test runs by default, and the
/// limits some of them run under whatever the scope.
pub struct Selection {
    pub tests: Vec<String>,
    pub limits: Vec<Limits>,
}

pub fn selection(layout: &Layout) -> Result<Selection> {
    let path = layout.qemu().join("liburing-tests.txt");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_selection(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_selection(text: &str) -> Result<Selection> {
    let mut selection = Selection {
        tests: Vec::new(),
        limits: Vec::new(),
    };
    for line in text.lines() {
        let mut words = line
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace();
        let Some(test) = words.next() else {
            continue;
        };
        selection.tests.push(test.to_string());
        let mut limits = Limits {
            test: test.to_string(),
            address_space_mib: None,
            timeout: None,
        };
        for word in words {
            match word.split_once('=') {
                Some(("as_mib", v)) => limits.address_space_mib = Some(v.parse()?),
                Some(("timeout", v)) => limits.timeout = Some(v.parse()?),
                _ => bail!("{test}: unknown setting '{word}' (as_mib=, timeout=)"),
            }
        }
        if limits.address_space_mib.is_some() || limits.timeout.is_some() {
            selection.limits.push(limits);
        }
    }
    if selection.tests.is_empty() {
        bail!("no test named");
    }
    Ok(selection)
}

/// The results of `tests` out of `all`, if `all` has every one of them.
pub fn subset(all: &Results, tests: &[String]) -> Option<Results> {
    tests
        .iter()
        .map(|t| Some((t.clone(), *all.get(t)?)))
        .collect()
}

/// The suite's test programs: the `*.t` files the build produced.
fn test_programs(test_dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(test_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".t"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no test programs (*.t) in {}", test_dir.display());
    }
    Ok(names)
}

/// Copies the built test directory into `run_dir` (the guest can write
/// there: the tests create files in their working directory) and returns
/// the peer suites that run its programs with runtests.sh: all of them, or
/// those named in `only`; one suite for the tests without `limits`, one
/// for each test with.
pub fn stage(
    tree: &Path,
    run_dir: &Path,
    flavour: Flavour,
    only: Option<&[String]>,
    limits: &[Limits],
) -> Result<Vec<PeerSuite>> {
    let sh = Shell::new()?;
    let dest = run_dir.join(flavour.suite_name());
    let _ = fs::remove_dir_all(&dest);
    let test_dir = tree.join("test");
    cmd!(sh, "cp -a {test_dir} {dest}").run()?;
    let mut programs = test_programs(&dest)?;
    if let Some(only) = only {
        if let Some(missing) = only.iter().find(|t| !programs.contains(t)) {
            bail!(
                "{missing} is to run, but liburing {} built no such test program",
                flavour.name()
            );
        }
        programs.retain(|p| only.contains(p));
    }
    eprintln!(
        "  liburing {}: {} test programs staged in {}",
        flavour.name(),
        programs.len(),
        dest.display()
    );
    let suite = |name: String, command: String| PeerSuite {
        name,
        dir: dest.clone(),
        // runtests.sh fails on the base kernel too: the host compares.
        judge: Judge::Host,
        command,
    };
    let alone: Vec<&Limits> = limits
        .iter()
        .filter(|l| programs.contains(&l.test))
        .collect();
    let together: Vec<&str> = programs
        .iter()
        .filter(|p| !alone.iter().any(|l| l.test == **p))
        .map(String::as_str)
        .collect();
    let mut suites = Vec::new();
    if !together.is_empty() {
        suites.push(suite(
            flavour.suite_name(),
            format!(
                "env TIMEOUT={TEST_TIMEOUT} ./runtests.sh {}",
                together.join(" ")
            ),
        ));
    }
    for (n, l) in alone.iter().enumerate() {
        let rlimit = l
            .address_space_mib
            .map(|mib| format!("prlimit --as={} ", mib << 20))
            .unwrap_or_default();
        let timeout = l.timeout.unwrap_or(TEST_TIMEOUT);
        suites.push(suite(
            format!("{}-{}", flavour.suite_name(), n + 2),
            format!("{rlimit}env TIMEOUT={timeout} ./runtests.sh {}", l.test),
        ));
    }
    Ok(suites)
}

/// The merged results of `suites` (the host-judged ones) from their logs
/// in `out`.
pub fn results_of(out: &Path, suites: &[PeerSuite]) -> Result<Results> {
    let mut results = Results::new();
    for suite in suites.iter().filter(|s| s.judge == Judge::Host) {
        results.extend(parse_log(&crate::peers::log(out, &suite.name)?));
    }
    Ok(results)
}

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
fn serialize(results: &Results) -> String {
    results
        .iter()
        .map(|(name, v)| format!("{name} {}\n", v.word()))
        .collect()
}

fn deserialize(text: &str) -> Option<Results> {
    text.lines()
        .map(|line| {
            let (name, word) = line.split_once(' ')?;
            Some((name.to_string(), Verdict::parse(word)?))
        })
        .collect()
}

/// The cache file for the base kernel's results under `key`.
fn base_results_path(layout: &Layout, key: &str) -> PathBuf {
    layout
        .cache
        .join("liburing/base-results")
        .join(format!("{key}.txt"))
}

pub fn load_base_results(layout: &Layout, key: &str) -> Option<Results> {
    let text = fs::read_to_string(base_results_path(layout, key)).ok()?;
    deserialize(&text).filter(|r| !r.is_empty())
}

pub fn store_base_results(layout: &Layout, key: &str, results: &Results) -> Result<()> {
    let path = base_results_path(layout, key);
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    fs::write(&path, serialize(results))?;
    eprintln!("  base results kept in {}", path.display());
    Ok(())
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
    fn parses_the_selection() {
        let s = parse_selection("# c\na.t\n\nb.t  as_mib=64 timeout=300 # why\n").unwrap();
        assert_eq!(s.tests, ["a.t", "b.t"]);
        assert_eq!(
            s.limits,
            [Limits {
                test: "b.t".into(),
                address_space_mib: Some(64),
                timeout: Some(300)
            }]
        );
        assert!(parse_selection("a.t as=1\n").is_err());
        assert!(parse_selection("# nothing\n").is_err());
    }

    #[test]
    fn counts_verdicts() {
        assert_eq!(
            count_line(&parse_log(LOG)),
            "2 passed, 2 failed, 2 skipped, 1 timed out"
        );
    }
}
