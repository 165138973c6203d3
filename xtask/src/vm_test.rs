//! `cargo xtask vm-test`: kernel, test binaries, boot, verdict.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::{Layout, Profile};
use crate::phase::Phases;
use crate::vm::{self, Accel, Boot};
use crate::{kernel, peers, setup, source, Options};

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
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let hash = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
    format!("custom-{hash:016x}")
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

/// setup, source, patch, config, build.
pub fn kernel(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Kernel> {
    phases.run("setup", || setup::ensure(layout))?;
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
    let build = layout.build_dir(&tree, profile);
    phases.run("config", || {
        kernel::configure(layout, &src, &build, profile)
    })?;
    let log = layout
        .vm_out()
        .join(format!("kernel-build-{}.log", profile.name()));
    phases.run("build", || {
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
    cmd!(sh, "cargo test --quiet -p sendzc-iov --test c_header")
        .run()
        .context("the Rust bindings differ from the patched <linux/io_uring.h>")
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

/// The whole pipeline: kernel, test binaries, boot, tests, kernel log.
/// Returns the guest's test totals.
pub fn run(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Tally> {
    let kernel = kernel(layout, options, phases)?;
    phases.run("check-uapi", || check_uapi(layout, &kernel))?;
    let binaries = phases.run("test build", || build_test_binaries(layout))?;
    let peer_suites = phases.run("peer build", || {
        Ok(vec![peers::kernel_zerocopy_selftest(
            layout,
            &kernel.src,
            &kernel.build,
        )?])
    })?;
    let accel = phases.run("accel", || {
        vm::choose_accel(layout, &kernel.bzimage, options.accel)
    })?;
    let out = layout.vm_out().join("run");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    write_guest_plan(&out, &binaries, &kernel, options)?;
    let plan: String = peer_suites.iter().map(peers::plan_line).collect();
    fs::write(out.join("peers"), plan)?;
    let timeout = options.timeout.unwrap_or(match accel {
        Accel::Kvm => Duration::from_secs(600),
        Accel::Tcg => Duration::from_secs(2400),
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
    let console_log = layout.vm_out().join("console.log");
    let boot = Boot {
        kernel: &kernel.bzimage,
        accel,
        exec,
        out_dir: &out,
        console_log: console_log.clone(),
        timeout,
        vng_args: Vec::new(),
    };
    let mut outcome = phases.run("boot+test", || boot.run(layout))?;
    // A report logged at boot, before any test ran, is not about the code
    // under test, but it taints the kernel (lockdep turns itself off): say
    // so and boot once more. A second one fails the run below.
    let early = vm::boot_problems(&out);
    if !early.is_empty() {
        eprintln!("  kernel problem at boot, before the tests (retrying the boot once):");
        for line in &early {
            eprintln!("  ! {line}");
        }
        let saved = layout.vm_out().join("console-boot-problem.log");
        fs::copy(&console_log, &saved)?;
        eprintln!("  first console log kept as {}", saved.display());
        outcome = phases.run("boot+test (again)", || boot.run(layout))?;
    }
    let console = fs::read_to_string(&console_log).unwrap_or_default();
    let mut tally = tally(&console);
    let peer_results = peers::results(&console);
    for (name, ok) in &peer_results {
        eprintln!(
            "  peer suite {name}: {}",
            if *ok { "passed" } else { "FAILED" }
        );
        if *ok {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }
    if peer_results.len() != peer_suites.len() {
        bail!(
            "{} of {} peer suites reported a result; see {}",
            peer_results.len(),
            peer_suites.len(),
            console_log.display()
        );
    }
    let logs = phases.run("dmesg", || vm::check_kernel_logs(&out));
    eprintln!(
        "vm-test: {} test binaries in the guest ({}), console log {}",
        tally.binaries,
        accel.name(),
        console_log.display()
    );
    eprintln!("{}", tally.closing_line("guest"));
    match outcome.status {
        None if outcome.timed_out => bail!(
            "the guest did not finish within {}s (hang?); see {}",
            timeout.as_secs(),
            console_log.display()
        ),
        None => bail!(
            "the guest ended without a status (crash or panic?); see {}",
            console_log.display()
        ),
        Some(0) if tally.passed == 0 => {
            bail!("the guest ran no test; see {}", console_log.display())
        }
        Some(0) if tally.binaries == binaries.len() as u64 && tally.failed == 0 => {
            logs.map(|()| tally)
        }
        Some(0) => bail!(
            "{} of {} test binaries reported a result; see {}",
            tally.binaries,
            binaries.len(),
            console_log.display()
        ),
        Some(_) => {
            logs.ok();
            bail!(
                "the guest's tests failed ({} failed test(s) counted; a binary may \
                 also have exited with an error); see {}",
                tally.failed,
                console_log.display()
            )
        }
    }
}

fn write_guest_plan(
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
