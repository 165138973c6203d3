//! `cargo xtask vm-test`: kernel, test binaries, boot, verdict.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::{Layout, Profile};
use crate::phase::Phases;
use crate::vm::{self, Accel, Boot};
use crate::{kernel, liburing, peers, source, LiburingScope, Options};

/// A built kernel, ready to boot.
pub struct Kernel {
    pub bzimage: PathBuf,
    pub src: PathBuf,
    pub build: PathBuf,
    /// True when the tree carries the series, so the per-iovec feature must
    /// be there: tests that need it fail instead of skipping.
    pub expect_feature: bool,
}

/// The Rust crates whose tests run inside the guest.
const GUEST_PACKAGES: &[&str] = &["sendzc-iov", "sendzc-iov-vm-tests"];

/// A short stable name for a custom source tree's build directory.
fn tree_id(dir: &Path) -> String {
    format!("custom-{}", fnv1a(dir.as_os_str().as_encoded_bytes()))
}

/// FNV-1a, as hex: stable across runs and Rust versions, unlike
/// DefaultHasher.
fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    format!("{hash:016x}")
}

fn custom_tree(dir: &Path) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--kernel-src {}", dir.display()))?;
    if !dir.join("io_uring/net.c").is_file() {
        bail!(
            "--kernel-src {} is not a kernel tree (no io_uring/net.c)",
            dir.display()
        );
    }
    eprintln!(
        "  using {} as it is (kernel-patches/ not applied)",
        dir.display()
    );
    Ok(dir)
}

/// source, patch, config, build (setup has run before).
pub fn kernel(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Kernel> {
    let profile = options.profile.unwrap_or(Profile::Debug);
    let (src, tree, expect_feature) = match &options.kernel_src {
        Some(dir) => {
            let src = phases.run("source", || custom_tree(dir))?;
            let id = tree_id(&src);
            (src, id, true)
        }
        None => {
            let base = source::Base::load(layout)?;
            let src = phases.run("source", || source::ensure(layout, &base))?;
            let patches = kernel::series(layout)?;
            phases.run("patch", || kernel::apply_series(&src, &patches))?;
            (src, "series".to_string(), !patches.is_empty())
        }
    };
    build_tree(layout, phases, src, &tree, profile, expect_feature)
}

/// config and build of `src` in the build tree of `tree` ("series", "base"
/// or a custom tree's id); the phases of trees other than the series say
/// which tree they are for.
fn build_tree(
    layout: &Layout,
    phases: &mut Phases,
    src: PathBuf,
    tree: &str,
    profile: Profile,
    expect_feature: bool,
) -> Result<Kernel> {
    let build = layout.build_dir(tree, profile);
    let phase = |step: &str| match tree {
        "series" => step.to_string(),
        _ => format!("{tree} {step}"),
    };
    phases.run(&phase("config"), || {
        kernel::configure(layout, &src, &build, profile)
    })?;
    let log = layout
        .vm_out()
        .join(format!("kernel-build-{tree}-{}.log", profile.name()));
    phases.run(&phase("build"), || {
        kernel::make(layout, &src, &build, &["bzImage", "headers_install"], &log)
    })?;
    Ok(Kernel {
        bzimage: build.join("arch/x86/boot/bzImage"),
        src,
        build,
        expect_feature,
    })
}

impl Kernel {
    /// The uapi headers `make headers_install` put in the build tree.
    pub fn headers(&self) -> PathBuf {
        self.build.join("usr/include")
    }
}

/// The Rust bindings against the patched C header (uapi/tests/c_header.rs).
pub fn check_uapi(layout: &Layout, kernel: &Kernel) -> Result<()> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(&layout.root);
    let _env = sh.push_env("SENDZC_UAPI_INCLUDE", kernel.headers());
    let out = cmd!(
        sh,
        "cargo test --quiet -p sendzc-iov --test c_header -- --ignored"
    )
    .ignore_status()
    .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let t = tally(&stdout);
    if !out.status.success() || t.failed > 0 {
        bail!("the Rust bindings differ from the patched <linux/io_uring.h>");
    }
    if t.passed == 0 {
        bail!("the C header test did not run (0 passed): is it still in uapi/tests/c_header.rs?");
    }
    Ok(())
}

/// Builds the guest test binaries on the host; returns their paths.
fn build_test_binaries(layout: &Layout) -> Result<Vec<PathBuf>> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(&layout.root);
    let packages: Vec<String> = GUEST_PACKAGES
        .iter()
        .flat_map(|p| ["-p".to_string(), p.to_string()])
        .collect();
    // Library and integration tests only: bins (sendzc-bench) are no tests.
    let json = cmd!(
        sh,
        "cargo test --no-run --lib --tests --message-format=json {packages...}"
    )
    .read()
    .context("building the guest test binaries failed")?;
    let binaries = test_executables(&json);
    if binaries.is_empty() {
        bail!(
            "cargo built no test binaries for {}",
            GUEST_PACKAGES.join(", ")
        );
    }
    for bin in &binaries {
        eprintln!("  {}", bin.display());
    }
    Ok(binaries)
}

/// The `"executable"` paths of test artifacts in cargo's JSON messages:
/// those built with the test profile (`"profile":{..."test":true}`).
fn test_executables(json: &str) -> Vec<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    json.lines()
        .filter(|line| line.contains("\"reason\":\"compiler-artifact\""))
        .filter(|line| {
            line.split("\"profile\":{")
                .nth(1)
                .and_then(|p| p.split('}').next())
                .is_some_and(|profile| profile.contains("\"test\":true"))
        })
        .filter_map(|line| {
            let start = line.find(KEY)? + KEY.len();
            let end = start + line[start..].find('"')?;
            Some(PathBuf::from(&line[start..end]))
        })
        .collect()
}

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

/// What one guest boot is asked to run.
struct GuestPlan<'a> {
    /// Names the output directory and the console log.
    label: &'a str,
    kernel: &'a Kernel,
    binaries: &'a [PathBuf],
    peers: &'a [peers::PeerSuite],
}

/// What a guest boot left behind.
struct GuestRun {
    out: PathBuf,
    console_log: PathBuf,
    console: String,
    outcome: vm::Outcome,
    accel: Accel,
    timeout: Duration,
}

/// The guest's output directory for `label`: shared read-write with it.
fn guest_out(layout: &Layout, label: &str) -> PathBuf {
    layout.vm_out().join(label)
}

/// [`guest_out`], emptied of an earlier run's files.
fn fresh_guest_out(layout: &Layout, label: &str) -> Result<PathBuf> {
    let out = guest_out(layout, label);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    Ok(out)
}

/// Boots `kernel` to run liburing's `tests` (all when `None`) from the
/// `flavour` build, and nothing else; returns the guest run and the tests'
/// verdicts.
#[allow(clippy::too_many_arguments)]
fn liburing_guest(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    label: &str,
    kernel: &Kernel,
    flavour: liburing::Flavour,
    tests: Option<&[String]>,
    limits: &[liburing::Limits],
) -> Result<(GuestRun, liburing::Results)> {
    let tree = liburing::build(layout, flavour)?;
    let out = fresh_guest_out(layout, label)?;
    let suites = liburing::stage(&tree, &out, flavour, tests, limits)?;
    let run = boot_guest(
        layout,
        options,
        phases,
        &GuestPlan {
            label,
            kernel,
            binaries: &[],
            peers: &suites,
        },
    )?;
    run.require_status()?;
    let results = liburing::results_of(&run.out, &suites)?;
    Ok((run, results))
}

/// Boots `plan.kernel` and runs the plan in it through guest-run.sh; boots
/// once more if the kernel reported a problem before the tests started.
fn boot_guest(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    plan: &GuestPlan,
) -> Result<GuestRun> {
    let accel = phases.run("accel", || {
        vm::choose_accel(layout, &plan.kernel.bzimage, options.accel)
    })?;
    let out = guest_out(layout, plan.label);
    fs::create_dir_all(&out)?;
    write_guest_plan(layout, &out, plan.binaries, plan.kernel, options)?;
    let peer_plan: String = plan.peers.iter().map(peers::plan_line).collect();
    fs::write(out.join("peers"), peer_plan)?;
    let timeout = options.timeout.unwrap_or(match accel {
        Accel::Kvm => Duration::from_secs(1200),
        Accel::Tcg => Duration::from_secs(4800),
    });
    eprintln!(
        "  accelerator: {}; guest time limit {}s",
        accel.name(),
        timeout.as_secs()
    );
    let script = layout.qemu().join("guest-run.sh");
    let mut exec = format!("sh {} {}", script.display(), out.display());
    for arg in &options.test_args {
        exec.push(' ');
        exec.push_str(&shell_quote(arg));
    }
    let console_log = layout.vm_out().join(format!("console-{}.log", plan.label));
    let boot = Boot {
        kernel: &plan.kernel.bzimage,
        accel,
        exec,
        out_dir: &out,
        console_log: console_log.clone(),
        timeout,
        vng_args: vec![format!("--rwdir={}", regressions_dir(layout).display())],
        netns: None,
    };
    let mut outcome = phases.run(&format!("boot+test ({})", plan.label), || boot.run(layout))?;
    // A report logged at boot, before any test ran, is not about the code
    // under test, but it taints the kernel (lockdep turns itself off): say
    // so and boot once more. A second one fails the run.
    let early = vm::boot_problems(&out);
    if !early.is_empty() {
        eprintln!("  kernel problem at boot, before the tests (retrying the boot once):");
        for line in &early {
            eprintln!("  ! {line}");
        }
        let saved = layout
            .vm_out()
            .join(format!("console-{}-boot-problem.log", plan.label));
        fs::copy(&console_log, &saved)?;
        eprintln!("  first console log kept as {}", saved.display());
        outcome = phases.run(&format!("boot+test again ({})", plan.label), || {
            boot.run(layout)
        })?;
    }
    let console = fs::read_to_string(&console_log).unwrap_or_default();
    Ok(GuestRun {
        out,
        console_log,
        console,
        outcome,
        accel,
        timeout,
    })
}

impl GuestRun {
    /// Fails unless the guest wrote a status (no crash, no hang).
    fn require_status(&self) -> Result<i32> {
        match self.outcome.status {
            Some(status) => Ok(status),
            None if self.outcome.timed_out => bail!(
                "the guest did not finish within {}s (hang?); see {}",
                self.timeout.as_secs(),
                self.console_log.display()
            ),
            None => bail!(
                "the guest ended without a status (crash or panic?); see {}",
                self.console_log.display()
            ),
        }
    }
}

/// What the final summary reports besides the test totals.
#[derive(Default)]
struct Summary {
    /// (property, cases run) from the property tests.
    cases: Vec<(String, u64)>,
    /// (suite, base line, patched line) for the peer suites.
    peers: Vec<(String, String, String)>,
    kernel_problems: usize,
}

impl Summary {
    fn print(&self) {
        eprintln!("---- summary ----");
        let total: u64 = self.cases.iter().map(|(_, n)| n).sum();
        eprintln!("  generated cases: {total}");
        for (property, n) in &self.cases {
            eprintln!("    {property}: {n}");
        }
        eprintln!("  peer suites (base kernel | patched kernel):");
        for (name, base, patched) in &self.peers {
            eprintln!("    {name}: {base} | {patched}");
        }
        eprintln!(
            "  kernel problems in dmesg/kmemleak: {}",
            self.kernel_problems
        );
    }
}

/// Sums the `property cases` lines the property tests appended.
fn case_counts(path: &Path) -> Vec<(String, u64)> {
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

/// The key of the base kernel's liburing results: everything they depend
/// on (kernel and liburing versions, config fragments, runner settings),
/// and the tests run unless it is the whole suite.
fn liburing_base_key(
    layout: &Layout,
    profile: Profile,
    tests: Option<&[String]>,
) -> Result<String> {
    let mut inputs = String::new();
    for file in [
        layout.patches().join("BASE"),
        layout.patches().join("liburing/BASE"),
        layout.qemu().join("vm.config"),
        layout.qemu().join(format!("{}.config", profile.name())),
        layout.qemu().join("guest-run.sh"),
        // Also the limits some tests run under, whatever the scope.
        layout.qemu().join("liburing-tests.txt"),
    ] {
        inputs.push_str(
            &fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    inputs.push_str(&format!("TIMEOUT={}\n", liburing::TEST_TIMEOUT));
    let scope = match tests {
        None => "all".to_string(),
        Some(tests) => {
            inputs.push_str(&tests.join(" "));
            "selection".to_string()
        }
    };
    Ok(format!(
        "{}-{scope}-{}",
        profile.name(),
        fnv1a(inputs.as_bytes())
    ))
}

/// Cached base results for `tests` (all when `None`): stored for exactly
/// that scope, or cut out of a whole-suite run with the same inputs.
fn cached_base_results(
    layout: &Layout,
    profile: Profile,
    tests: Option<&[String]>,
) -> Result<Option<(String, liburing::Results)>> {
    let key = liburing_base_key(layout, profile, tests)?;
    if let Some(results) = liburing::load_base_results(layout, &key) {
        return Ok(Some((key, results)));
    }
    let Some(tests) = tests else {
        return Ok(None);
    };
    let all_key = liburing_base_key(layout, profile, None)?;
    Ok(liburing::load_base_results(layout, &all_key)
        .and_then(|all| liburing::subset(&all, tests))
        .map(|subset| (all_key, subset)))
}

/// The liburing tests to run: those of the selection, or all (`None`).
fn scope<'a>(options: &Options, selection: &'a liburing::Selection) -> Option<&'a [String]> {
    match options.liburing {
        LiburingScope::Selection => Some(&selection.tests),
        LiburingScope::All => None,
    }
}

/// The unpatched base kernel: the same tree at `base`, so that objects
/// ccache saw for the series hit again.
fn base_kernel(layout: &Layout, phases: &mut Phases, profile: Profile) -> Result<Kernel> {
    let base = source::Base::load(layout)?;
    let src = phases.run("source", || source::ensure(layout, &base))?;
    phases.run("base tree", || kernel::apply_series(&src, &[]))?;
    build_tree(layout, phases, src, "base", profile, false)
}

/// liburing's suite (as released) on the unpatched base kernel: from the
/// cache, or by building that kernel and booting it once.
fn liburing_on_base(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    selection: &liburing::Selection,
) -> Result<liburing::Results> {
    let tests = scope(options, selection);
    let profile = options.profile.unwrap_or(Profile::Debug);
    if let Some((key, results)) = cached_base_results(layout, profile, tests)? {
        eprintln!(
            "  liburing on the base kernel (cached, {key}): {}",
            liburing::count_line(&results)
        );
        return Ok(results);
    }
    let key = liburing_base_key(layout, profile, tests)?;
    eprintln!("  no cached liburing results for the base kernel ({key}): running them");
    let kernel = base_kernel(layout, phases, profile)?;
    let (run, results) = liburing_guest(
        layout,
        options,
        phases,
        "base",
        &kernel,
        liburing::Flavour::Released,
        tests,
        &selection.limits,
    )?;
    if results.is_empty() {
        bail!(
            "liburing's runtests.sh reported no test on the base kernel; see {}",
            run.console_log.display()
        );
    }
    // Upstream's problems are not ours to fix, but worth seeing: the
    // tests during which they happened already count as failed.
    if let Err(e) = vm::check_kernel_logs(&run.out) {
        eprintln!("  note: the base kernel logged problems ({e})");
    }
    eprintln!(
        "  liburing on the base kernel: {}",
        liburing::count_line(&results)
    );
    liburing::store_base_results(layout, &key, &results)?;
    Ok(results)
}

/// liburing's gate: every test that passes on the base kernel passes on
/// the patched one. A test that does not gets one more run on the patched
/// kernel, then, if it fails again, one on the base kernel, where it must
/// still pass to count against the series. Prints both lists side by side;
/// returns the tests that fail the gate.
#[allow(clippy::too_many_arguments)]
fn liburing_gate(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    kernel: &Kernel,
    selection: &liburing::Selection,
    base: &liburing::Results,
    mut patched: liburing::Results,
    summary: &mut Summary,
) -> Result<Vec<String>> {
    let first = liburing::regressions(base, &patched);
    if !first.is_empty() {
        let again = liburing_again(layout, options, phases, kernel, &first, &selection.limits)?;
        let flaky: Vec<&str> = first
            .iter()
            .filter(|t| again.get(*t) == Some(&liburing::Verdict::Passed))
            .map(String::as_str)
            .collect();
        if !flaky.is_empty() {
            eprintln!(
                "  flaky: failed once, then passed on the patched kernel: {}",
                flaky.join(" ")
            );
        }
        patched.extend(again);
    }
    let mut lost = liburing::regressions(base, &patched);
    if !lost.is_empty() {
        let again = liburing_base_again(layout, options, phases, &lost, &selection.limits)?;
        let steady = liburing::not_failed_in(&lost, &again);
        let unsteady: Vec<&str> = lost
            .iter()
            .filter(|t| !steady.contains(t))
            .map(String::as_str)
            .collect();
        if !unsteady.is_empty() {
            eprintln!(
                "  unsteady on the base kernel too: passed there before, failed there again now: {}",
                unsteady.join(" ")
            );
        }
        lost = steady;
    }
    eprintln!("  liburing's tests, base kernel vs patched kernel:");
    eprint!("{}", liburing::side_by_side(base, &patched));
    // one row for both builds: released on the base kernel, patched here
    summary.peers.push((
        "liburing".to_string(),
        liburing::count_line(base),
        liburing::count_line(&patched),
    ));
    eprintln!(
        "  peer suite liburing: {}",
        if lost.is_empty() {
            "passed (every test that passes on the base kernel passes)"
        } else {
            "FAILED"
        }
    );
    Ok(lost)
}

/// Runs the liburing tests in `tests` once more on the patched kernel, in a
/// guest of their own: a test that passed on the base kernel and failed on
/// the patched one gets a second chance before it fails the gate (under
/// TCG a slow moment can time a test out), and is then reported as flaky.
fn liburing_again(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    kernel: &Kernel,
    tests: &[String],
    limits: &[liburing::Limits],
) -> Result<liburing::Results> {
    eprintln!(
        "  {} liburing test(s) passed on the base kernel but not here; running them again: {}",
        tests.len(),
        tests.join(" ")
    );
    let (run, results) = liburing_guest(
        layout,
        options,
        phases,
        "again",
        kernel,
        liburing::Flavour::Patched,
        Some(tests),
        limits,
    )?;
    vm::check_kernel_logs(&run.out)?;
    Ok(results)
}

/// Runs the liburing tests in `tests` once more on the base kernel, as
/// released: a test that fails the gate twice on the patched kernel is a
/// regression only if it still passes on the base kernel. Wall-clock tests
/// (min-timeout-wait's 9-12 ms window) pass or fail by chance under TCG.
fn liburing_base_again(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    tests: &[String],
    limits: &[liburing::Limits],
) -> Result<liburing::Results> {
    eprintln!(
        "  {} liburing test(s) failed twice here; running them on the base kernel again: {}",
        tests.len(),
        tests.join(" ")
    );
    let profile = options.profile.unwrap_or(Profile::Debug);
    let kernel = base_kernel(layout, phases, profile)?;
    let (_, results) = liburing_guest(
        layout,
        options,
        phases,
        "base-again",
        &kernel,
        liburing::Flavour::Released,
        Some(tests),
        limits,
    )?;
    Ok(results)
}

/// The whole pipeline: liburing on the base kernel (cached), the patched
/// kernel, test binaries, boot, tests, peer suites, kernel log, summary.
/// Returns the guest's test totals.
pub fn run(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Tally> {
    let selection = liburing::selection(layout)?;
    let liburing_base = liburing_on_base(layout, options, phases, &selection)?;
    let kernel = kernel(layout, options, phases)?;
    phases.run("check-uapi", || check_uapi(layout, &kernel))?;
    let binaries = phases.run("test build", || build_test_binaries(layout))?;
    let label = "run";
    let out = fresh_guest_out(layout, label)?;
    let peer_suites = phases.run("peer build", || {
        let selftest = peers::kernel_zerocopy_selftest(layout, &kernel.src, &kernel.build)?;
        let tree = liburing::build(layout, liburing::Flavour::Patched)?;
        let mut suites = vec![selftest];
        suites.extend(liburing::stage(
            &tree,
            &out,
            liburing::Flavour::Patched,
            scope(options, &selection),
            &selection.limits,
        )?);
        Ok(suites)
    })?;
    let run = boot_guest(
        layout,
        options,
        phases,
        &GuestPlan {
            label,
            kernel: &kernel,
            binaries: &binaries,
            peers: &peer_suites,
        },
    )?;
    let mut tally = tally(&run.console);
    let mut summary = Summary {
        cases: case_counts(&run.out.join("cases.txt")),
        ..Summary::default()
    };
    let peer_results = peers::results(&run.console);
    let mut peer_failures = Vec::new();
    for suite in &peer_suites {
        let Some((_, exited_ok)) = peer_results.iter().find(|(n, _)| *n == suite.name) else {
            peer_failures.push(format!("{} reported no result", suite.name));
            continue;
        };
        if suite.judge == peers::Judge::Exit {
            let word = if *exited_ok { "passed" } else { "FAILED" };
            eprintln!("  peer suite {}: {word}", suite.name);
            summary
                .peers
                .push((suite.name.clone(), "not run".into(), word.into()));
            tally.count(*exited_ok);
            if !exited_ok {
                peer_failures.push(format!("{} failed", suite.name));
            }
        }
    }
    let liburing_reported = peer_suites
        .iter()
        .filter(|s| s.judge == peers::Judge::Host)
        .all(|s| peer_results.iter().any(|(n, _)| *n == s.name));
    if liburing_reported {
        let patched = liburing::results_of(&run.out, &peer_suites)?;
        let lost = liburing_gate(
            layout,
            options,
            phases,
            &kernel,
            &selection,
            &liburing_base,
            patched,
            &mut summary,
        )?;
        tally.count(lost.is_empty());
        if !lost.is_empty() {
            peer_failures.push(format!(
                "liburing tests that pass on the base kernel but not on the patched \
                 one: {}",
                lost.join(" ")
            ));
        }
    }
    let logs = phases.run("dmesg", || vm::check_kernel_logs(&run.out));
    summary.kernel_problems = vm::problem_count(&run.out);
    eprintln!(
        "vm-test: {} test binaries in the guest ({}), console log {}",
        tally.binaries,
        run.accel.name(),
        run.console_log.display()
    );
    summary.print();
    eprintln!("{}", tally.closing_line("guest"));
    let status = run.require_status()?;
    if !peer_failures.is_empty() {
        bail!("peer suites: {}", peer_failures.join("; "));
    }
    match status {
        0 if tally.passed == 0 => {
            bail!("the guest ran no test; see {}", run.console_log.display())
        }
        0 if tally.binaries == binaries.len() as u64 && tally.failed == 0 => logs.map(|()| tally),
        0 => bail!(
            "{} of {} test binaries reported a result; see {}",
            tally.binaries,
            binaries.len(),
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

/// Where the property tests record shrunk failures (writable in the guest).
fn regressions_dir(layout: &Layout) -> PathBuf {
    layout.root.join("rust-tests/proptest-regressions")
}

fn write_guest_plan(
    layout: &Layout,
    out: &Path,
    binaries: &[PathBuf],
    kernel: &Kernel,
    options: &Options,
) -> Result<()> {
    let mut env = String::from("RUST_BACKTRACE=1\n");
    env.push_str(&format!(
        "SENDZC_EXPECT_FEATURE={}\n",
        u8::from(kernel.expect_feature)
    ));
    env.push_str(&format!("SENDZC_KERNEL_BUILD={}\n", kernel.build.display()));
    env.push_str(&format!(
        "SENDZC_UAPI_INCLUDE={}\n",
        kernel.headers().display()
    ));
    env.push_str(&format!(
        "SENDZC_CASE_LOG={}\n",
        out.join("cases.txt").display()
    ));
    env.push_str(&format!(
        "SENDZC_PROPTEST_REGRESSIONS={}\n",
        regressions_dir(layout).display()
    ));
    if options.profile == Some(Profile::Bench) {
        env.push_str("SENDZC_PROFILE=bench\n");
    }
    fs::write(out.join("env"), env)?;
    let list: String = binaries
        .iter()
        .map(|b| format!("{}\n", b.display()))
        .collect();
    fs::write(out.join("tests"), list)?;
    Ok(())
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
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
    fn tallies_coloured_results() {
        let console =
            "test result: \u{1b}[32mok\u{1b}[m. 4 passed; 0 failed; 0 ignored; 0 measured\n";
        assert_eq!(tally(console).passed, 4);
    }

    #[test]
    fn finds_test_executables_only() {
        let json = concat!(
            r#"{"reason":"compiler-artifact","profile":{"test":false},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/debug/deps/cqe-1234"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"test":true},"profile":{"test":false},"executable":"/t/debug/bench"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#
        );
        assert_eq!(
            test_executables(json),
            [PathBuf::from("/t/debug/deps/cqe-1234")]
        );
    }

    #[test]
    fn tree_ids_differ_per_path() {
        assert_ne!(tree_id(Path::new("/a")), tree_id(Path::new("/b")));
        assert_eq!(tree_id(Path::new("/a")), tree_id(Path::new("/a")));
    }

    #[test]
    fn quotes_for_the_guest_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
