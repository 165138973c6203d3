//! Checks outside the guest: fmt, clippy, rustdoc and the host tests; the
//! Rust bindings against the patched headers; the series (checkpatch,
//! every prefix builds, W=1, mail-ready).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kernel::{self, Kernel};
use crate::layout::{Layout, Profile};
use crate::phase::Phases;
use crate::report::{tally, Tally};
use crate::suites::liburing;
use crate::{io_uring_crate, source};

/// fmt, clippy -D warnings, rustdoc -D warnings, the crate's package, and
/// the host unit tests.
pub fn host_checks(layout: &Layout) -> Result<Tally> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(&layout.root);
    cmd!(sh, "cargo fmt --all -- --check")
        .run()
        .context("cargo fmt --check: run 'cargo fmt --all'")?;
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()
    .context("cargo clippy found problems")?;
    {
        let _doc = sh.push_env("RUSTDOCFLAGS", "-D warnings");
        cmd!(sh, "cargo doc --workspace --no-deps --quiet")
            .run()
            .context("cargo doc has warnings")?;
    }
    // What crates.io would take: metadata, README, a build from the package.
    cmd!(
        sh,
        "cargo publish --dry-run --quiet --allow-dirty -p sendzc-iov"
    )
    .run()
    .context("cargo publish --dry-run -p sendzc-iov failed")?;
    // The VM suites run in the guest (vm-test); on the host they only build.
    // c_header needs the patched kernel's headers: it is ignored here, and
    // check-uapi runs it.
    let t = cargo_test(cmd!(
        sh,
        "cargo test --workspace --exclude sendzc-iov-vm-tests --quiet"
    ))
    .with_context(|| "host tests failed")?;
    eprintln!(
        "  host tests: {} passed in {} binaries",
        t.passed, t.binaries
    );
    Ok(t)
}

/// Runs a `cargo test` command, shows its output, and returns libtest's
/// totals; an error if it failed or counted a failed test.
fn cargo_test(command: xshell::Cmd<'_>) -> Result<Tally> {
    let out = command.ignore_status().output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let t = tally(&stdout);
    if !out.status.success() || t.failed > 0 {
        bail!("{} test(s) failed ({})", t.failed, out.status);
    }
    Ok(t)
}

/// The Rust bindings against the patched C header (uapi/tests/c_header.rs).
pub fn check_uapi(layout: &Layout, kernel: &Kernel) -> Result<()> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(&layout.root);
    let _env = sh.push_env("SENDZC_UAPI_INCLUDE", kernel.headers());
    let t = cargo_test(cmd!(
        sh,
        "cargo test --quiet -p sendzc-iov --test c_header -- --ignored"
    ))
    .context("the Rust bindings differ from the patched <linux/io_uring.h>")?;
    if t.passed == 0 {
        bail!("the C header test did not run (0 passed): is it still in uapi/tests/c_header.rs?");
    }
    Ok(())
}

/// `checkpatch: <patch file>: <message substring>` lines of
/// kernel-patches/README: reviewed exceptions, each with its reason there.
fn checkpatch_exceptions(layout: &Layout) -> Vec<(String, String)> {
    let text = fs::read_to_string(layout.patches().join("README")).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("checkpatch: "))
        .filter_map(|rest| rest.split_once(": "))
        .map(|(patch, msg)| (patch.to_string(), msg.to_string()))
        .collect()
}

/// checkpatch --strict on each patch, then a build of every prefix of the
/// series, ending with the whole series applied.
pub fn check_patches(layout: &Layout, phases: &mut Phases) -> Result<()> {
    let base = source::Base::load(layout)?;
    let src = phases.run("source", || source::ensure(layout, &base))?;
    let patches = kernel::series(layout)?;
    if patches.is_empty() {
        eprintln!("check-patches: kernel-patches/series is empty, nothing to check");
        return Ok(());
    }
    let exceptions = checkpatch_exceptions(layout);
    phases.run("checkpatch", || {
        let sh = Shell::new()?;
        let _cd = sh.push_dir(&src);
        let mut bad = Vec::new();
        for patch in &patches {
            let name = patch
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let out = cmd!(
                sh,
                "perl scripts/checkpatch.pl --strict --terse --no-summary --show-types {patch}"
            )
            .ignore_status()
            .read()?;
            let findings: Vec<&str> = out
                .lines()
                .filter(|l| l.contains("ERROR:") || l.contains("WARNING:") || l.contains("CHECK:"))
                .filter(|l| {
                    !exceptions
                        .iter()
                        .any(|(p, m)| *p == name && l.contains(m.as_str()))
                })
                .collect();
            eprintln!("  {name}: {} finding(s)", findings.len());
            for f in &findings {
                eprintln!("  ! {f}");
            }
            if !findings.is_empty() {
                bad.push(name);
            }
        }
        if !bad.is_empty() {
            bail!("checkpatch --strict findings in {}", bad.join(", "));
        }
        Ok(())
    })?;
    let build = layout.build_dir("series", Profile::Debug);
    phases.run("config", || {
        kernel::configure(layout, &src, &build, Profile::Debug)
    })?;
    for n in 1..=patches.len() {
        let name = patches[n - 1]
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        phases.run(&format!("build {n}/{}", patches.len()), || {
            kernel::apply_series(&src, &patches[..n])?;
            let log = layout.vm_out().join(format!("bisect-{n:02}.log"));
            kernel::make(layout, &src, &build, &["bzImage"], &log)
                .with_context(|| format!("the series does not build after {name}"))
        })?;
    }
    phases.run("W=1", || w1_check(layout, &src, &build, &patches))?;
    phases.run("liburing series", || liburing::check_series(layout))?;
    phases.run("io-uring crate series", || {
        io_uring_crate::check_series(layout)
    })?;
    phases.run("send-email --dry-run", || {
        // The kernel series touches the networking path: netdev is Cc'd.
        mail_ready(&layout.patches(), patches.len(), &[NETDEV])?;
        let liburing = liburing::series(layout)?;
        if !liburing.is_empty() {
            let dir = layout.patches().join("liburing");
            mail_ready(&dir, liburing.len(), &[])?;
            has_base_commit(&dir.join("0000-cover-letter.patch"))?;
        }
        Ok(())
    })
}

/// The liburing series is based on a commit of liburing's git tree, which
/// its cover letter names (format-patch --base) so that the list can apply
/// it; the kernel series has none to name (a tarball, see its BASE).
fn has_base_commit(cover: &Path) -> Result<()> {
    if !names_base_commit(&fs::read_to_string(cover)?) {
        bail!(
            "{}: no 'base-commit: <40 hex digits>' line (format-patch --base)",
            cover.display()
        );
    }
    Ok(())
}

fn names_base_commit(cover: &str) -> bool {
    cover.lines().any(|line| {
        line.strip_prefix("base-commit: ")
            .is_some_and(|id| id.len() == 40 && id.chars().all(|c| c.is_ascii_hexdigit()))
    })
}

/// The list every mail of a series must be addressed to.
const LIST: &str = "io-uring@vger.kernel.org";
const NETDEV: &str = "netdev@vger.kernel.org";

/// `git send-email --dry-run` over the cover letter and the patches of
/// `dir`: every mail must parse, be addressed to the io-uring list in its
/// own headers (and Cc `cc`), and be numbered `n/total`.
fn mail_ready(dir: &Path, total: usize, cc: &[&str]) -> Result<()> {
    let mut mails: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    mails.sort();
    if mails.len() != total + 1 {
        bail!(
            "{}: {} .patch files, expected a cover letter and {total} patches",
            dir.display(),
            mails.len()
        );
    }
    for (n, mail) in mails.iter().enumerate() {
        let text = fs::read_to_string(mail)?;
        let headers = text.split("\n\n").next().unwrap_or_default();
        let name = mail.file_name().unwrap_or_default().to_string_lossy();
        if !headers
            .lines()
            .any(|l| l.starts_with("To: ") && l.contains(LIST))
        {
            bail!("{name}: no 'To: {LIST}' header (format-patch --to)");
        }
        for addr in cc {
            if !headers
                .lines()
                .any(|l| l.starts_with("Cc: ") && l.contains(addr))
            {
                bail!("{name}: no 'Cc: {addr}' header (format-patch --cc)");
            }
        }
        let numbered = format!("{n}/{total}]");
        if !headers.contains(&numbered) {
            bail!("{name}: the subject is not numbered {numbered}");
        }
    }
    let sh = Shell::new()?;
    // send-email wants a sender identity even for a dry run; a fresh
    // machine has none configured, and this one must not need one.
    let _ident: Vec<_> = [
        ("GIT_AUTHOR_NAME", "xtask"),
        ("GIT_AUTHOR_EMAIL", "xtask@localhost"),
        ("GIT_COMMITTER_NAME", "xtask"),
        ("GIT_COMMITTER_EMAIL", "xtask@localhost"),
    ]
    .into_iter()
    .map(|(k, v)| sh.push_env(k, v))
    .collect();
    let files = &mails;
    let out = cmd!(
        sh,
        "git send-email --dry-run --confirm=never --suppress-cc=all --smtp-server=/bin/true {files...}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        bail!(
            "git send-email --dry-run failed on {}: {}",
            dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    let out = String::from_utf8_lossy(&out.stdout);
    let sent = out.lines().filter(|l| l.starts_with("Dry-OK")).count();
    if sent != mails.len() {
        bail!(
            "git send-email --dry-run sent {sent} of {} mails from {}",
            mails.len(),
            dir.display()
        );
    }
    eprintln!("  {}: {sent} mails ready, To: {LIST}", dir.display());
    Ok(())
}

/// The kernel objects of the C files the series changes, from the patches'
/// `+++ b/` lines; files that are not built in our config (selftests, say)
/// have no object in `build` and are left out.
fn touched_objects(patches: &[PathBuf], build: &Path) -> Result<Vec<String>> {
    let mut objects = Vec::new();
    for patch in patches {
        let text = fs::read_to_string(patch)?;
        for file in text.lines().filter_map(|l| l.strip_prefix("+++ b/")) {
            let Some(stem) = file.strip_suffix(".c") else {
                continue;
            };
            let object = format!("{stem}.o");
            if build.join(&object).exists() && !objects.contains(&object) {
                objects.push(object);
            }
        }
    }
    Ok(objects)
}

/// Rebuilds the objects the series touches with W=1: any warning fails.
fn w1_check(layout: &Layout, src: &Path, build: &Path, patches: &[PathBuf]) -> Result<()> {
    let objects = touched_objects(patches, build)?;
    eprintln!("  W=1 on {}", objects.join(" "));
    let log = layout.vm_out().join("w1.log");
    let mut targets: Vec<&str> = vec!["W=1"];
    targets.extend(objects.iter().map(String::as_str));
    kernel::make(layout, src, build, &targets, &log)?;
    let warnings: Vec<String> = fs::read_to_string(&log)?
        .lines()
        .filter(|l| l.contains("warning:"))
        .map(str::to_string)
        .collect();
    if !warnings.is_empty() {
        bail!(
            "{} W=1 warning(s) in files the series touches; see {}",
            warnings.len(),
            log.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::names_base_commit;

    #[test]
    fn a_cover_letter_names_its_base_commit_in_full() {
        let full = "base-commit: 27255f4ceda937b3540e425ed58284f5c03c8ad4\n";
        assert!(names_base_commit(&format!("text\n\n{full}")));
        assert!(!names_base_commit("base-commit: 27255f4c\n"));
        assert!(!names_base_commit("Based on liburing 2.15.\n"));
    }
}
