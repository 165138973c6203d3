//! The gate: every liburing test that passes on the base kernel passes on
//! the patched one. The base kernel's results depend only on the base
//! versions, the kernel config and the runner settings, so they are kept in
//! the cache under a key made of those, and computed once.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::results::{self, Verdict};
use super::{Flavour, Results, Selection, RERUN_TIMEOUT, TEST_TIMEOUT};
use crate::guest::{self, GuestPlan, GuestRun};
use crate::kernel::{self, Kernel};
use crate::layout::{stable_hash, Layout, Profile};
use crate::options::{LiburingScope, Options};
use crate::phase::Phases;
use crate::report::Summary;

/// The key of the base kernel's liburing results: everything they depend
/// on (kernel and liburing versions, config fragments, runner settings,
/// the limits tests run under), and the tests run unless it is the whole
/// suite. The selection counts as parsed, so that a comment in
/// qemu/liburing-tests.txt does not throw away a cached run.
fn base_key(
    layout: &Layout,
    profile: Profile,
    selection: &Selection,
    tests: Option<&[String]>,
) -> Result<String> {
    let mut inputs = String::new();
    for file in [
        layout.patches().join("BASE"),
        layout.patches().join("liburing/BASE"),
        layout.qemu().join("vm.config"),
        layout.qemu().join(format!("{}.config", profile.name())),
        layout.qemu().join("guest-run.sh"),
        layout.qemu().join("logged-run.sh"),
    ] {
        inputs.push_str(
            &fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?,
        );
    }
    inputs.push_str(&format!("TIMEOUT={TEST_TIMEOUT}\n"));
    for limits in &selection.limits {
        inputs.push_str(&format!(
            "{} as_mib={:?} timeout={:?}\n",
            limits.test, limits.address_space_mib, limits.timeout
        ));
    }
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
        stable_hash(inputs.as_bytes())
    ))
}

/// Cached base results for `tests` (all when `None`): stored for exactly
/// that scope, or cut out of a whole-suite run with the same inputs.
fn cached_base_results(
    layout: &Layout,
    profile: Profile,
    selection: &Selection,
    tests: Option<&[String]>,
) -> Result<Option<(String, Results)>> {
    let key = base_key(layout, profile, selection, tests)?;
    if let Some(results) = load_base_results(layout, &key) {
        return Ok(Some((key, results)));
    }
    let Some(tests) = tests else {
        return Ok(None);
    };
    let all_key = base_key(layout, profile, selection, None)?;
    Ok(load_base_results(layout, &all_key)
        .and_then(|all| results::subset(&all, tests))
        .map(|subset| (all_key, subset)))
}

/// The liburing tests to run: those of the selection, or all (`None`).
pub fn scope<'a>(options: &Options, selection: &'a Selection) -> Option<&'a [String]> {
    match options.liburing {
        LiburingScope::Selection => Some(&selection.tests),
        LiburingScope::All => None,
    }
}

/// Boots `kernel` to run liburing's `tests` (all when `None`) from the
/// `flavour` build, each for at most `timeout` seconds (or its own longer
/// limit), and nothing else; returns the guest run and the tests' verdicts.
#[allow(clippy::too_many_arguments)]
fn boot_liburing(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    label: &str,
    kernel: &Kernel,
    flavour: Flavour,
    tests: Option<&[String]>,
    limits: &[super::selection::Limits],
    timeout: u32,
) -> Result<(GuestRun, Results)> {
    let tree = super::build(layout, flavour)?;
    let out = guest::fresh_out(layout, label)?;
    let suites = super::stage(&tree, &out, flavour, tests, limits, timeout)?;
    let run = guest::boot(
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
    let results = super::results_of(&run.out, &suites)?;
    Ok((run, results))
}

/// liburing's suite (as released) on the unpatched base kernel: from the
/// cache, or by building that kernel and booting it once.
fn on_base(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    selection: &Selection,
) -> Result<Results> {
    let tests = scope(options, selection);
    let profile = options.profile.unwrap_or(Profile::Debug);
    if let Some((key, results)) = cached_base_results(layout, profile, selection, tests)? {
        eprintln!(
            "  liburing on the base kernel (cached, {key}): {}",
            results::count_line(&results)
        );
        return Ok(results);
    }
    let key = base_key(layout, profile, selection, tests)?;
    eprintln!("  no cached liburing results for the base kernel ({key}): running them");
    let kernel = kernel::build_base(layout, phases, profile)?;
    let (run, results) = boot_liburing(
        layout,
        options,
        phases,
        "base",
        &kernel,
        Flavour::Released,
        tests,
        &selection.limits,
        TEST_TIMEOUT,
    )?;
    if results.is_empty() {
        bail!(
            "liburing's runtests.sh reported no test on the base kernel; see {}",
            run.console_log.display()
        );
    }
    // Upstream's problems are not ours to fix, but worth seeing: the
    // tests during which they happened already count as failed.
    if let Err(e) = guest::check_kernel_logs(&run.out) {
        eprintln!("  note: the base kernel logged problems ({e})");
    }
    eprintln!(
        "  liburing on the base kernel: {}",
        results::count_line(&results)
    );
    store_base_results(layout, &key, &results)?;
    Ok(results)
}

/// liburing's gate: every test that passes on the base kernel (results
/// from the cache, or from a run of it now) passes on the patched one. A
/// test that does not gets one more run on the patched kernel, then, if it
/// fails again, one on the base kernel, where it must still pass to count
/// against the series. Prints both lists side by side;
/// returns the tests that fail the gate.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    kernel: &Kernel,
    selection: &Selection,
    mut patched: Results,
    summary: &mut Summary,
) -> Result<Vec<String>> {
    let base = &on_base(layout, options, phases, selection)?;
    let first = results::regressions(base, &patched);
    if !first.is_empty() {
        let again = again(layout, options, phases, kernel, &first, &selection.limits)?;
        let flaky: Vec<&str> = first
            .iter()
            .filter(|t| again.get(*t) == Some(&Verdict::Passed))
            .map(String::as_str)
            .collect();
        if !flaky.is_empty() {
            eprintln!(
                "  flaky or slow: failed once, then passed on the patched kernel within {RERUN_TIMEOUT} s: {}",
                flaky.join(" ")
            );
        }
        patched.extend(again);
    }
    let mut lost = results::regressions(base, &patched);
    if !lost.is_empty() {
        let again = base_again(layout, options, phases, &lost, &selection.limits)?;
        let steady = results::not_failed_in(&lost, &again);
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
    eprint!("{}", results::side_by_side(base, &patched));
    // one row for both builds: released on the base kernel, patched here
    summary.peers.push((
        "liburing".to_string(),
        results::count_line(base),
        results::count_line(&patched),
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
/// the patched one gets a second chance, with RERUN_TIMEOUT, before it
/// fails the gate (under TCG a slow moment can time a test out), and is
/// then reported as flaky.
fn again(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    kernel: &Kernel,
    tests: &[String],
    limits: &[super::selection::Limits],
) -> Result<Results> {
    eprintln!(
        "  {} liburing test(s) passed on the base kernel but not here; running them again: {}",
        tests.len(),
        tests.join(" ")
    );
    let (run, results) = boot_liburing(
        layout,
        options,
        phases,
        "again",
        kernel,
        Flavour::Patched,
        Some(tests),
        limits,
        RERUN_TIMEOUT,
    )?;
    guest::check_kernel_logs(&run.out)?;
    Ok(results)
}

/// Runs the liburing tests in `tests` once more on the base kernel, as
/// released: a test that fails the gate twice on the patched kernel is a
/// regression only if it still passes there, given RERUN_TIMEOUT too.
/// Wall-clock tests
/// (min-timeout-wait's 9-12 ms window) pass or fail by chance under TCG.
fn base_again(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    tests: &[String],
    limits: &[super::selection::Limits],
) -> Result<Results> {
    eprintln!(
        "  {} liburing test(s) failed twice here; running them on the base kernel again: {}",
        tests.len(),
        tests.join(" ")
    );
    let profile = options.profile.unwrap_or(Profile::Debug);
    let kernel = kernel::build_base(layout, phases, profile)?;
    let (_, results) = boot_liburing(
        layout,
        options,
        phases,
        "base-again",
        &kernel,
        Flavour::Released,
        Some(tests),
        limits,
        RERUN_TIMEOUT,
    )?;
    Ok(results)
}

/// The cache file for the base kernel's results under `key`.
fn base_results_path(layout: &Layout, key: &str) -> PathBuf {
    layout
        .cache
        .join("liburing/base-results")
        .join(format!("{key}.txt"))
}

fn load_base_results(layout: &Layout, key: &str) -> Option<Results> {
    let text = fs::read_to_string(base_results_path(layout, key)).ok()?;
    results::deserialize(&text).filter(|r| !r.is_empty())
}

fn store_base_results(layout: &Layout, key: &str, results: &Results) -> Result<()> {
    let path = base_results_path(layout, key);
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    fs::write(&path, results::serialize(results))?;
    eprintln!("  base results kept in {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suites::liburing::selection::parse_selection;

    #[test]
    fn the_base_key_ignores_comments_but_not_limits() {
        let layout = Layout::detect().unwrap();
        let key = |text: &str| {
            let selection = parse_selection(text).unwrap();
            base_key(&layout, Profile::Debug, &selection, Some(&selection.tests)).unwrap()
        };
        let plain = key("a.t\nb.t as_mib=64\n");
        assert_eq!(
            plain,
            key("# why a\na.t   # and b\nb.t as_mib=64 # limits\n")
        );
        assert_ne!(plain, key("a.t\nb.t as_mib=32\n"));
        assert_ne!(plain, key("a.t\nc.t as_mib=64\n"));
    }
}
