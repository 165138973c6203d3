//! Our own suites: the test binaries of the crates in [`GUEST_PACKAGES`],
//! built on the host, run in the guest by guest-run.sh.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kernel::Kernel;
use crate::layout::Layout;

/// The Rust crates whose tests run inside the guest.
const GUEST_PACKAGES: &[&str] = &["sendzc-iov", "sendzc-iov-vm-tests"];

/// The C programs in `rust-tests/c/` and the builds of each that the
/// guest tests run: (source, output name, gcc flags).
const C_SENDERS: &[(&str, &str, &[&str])] = &[
    (
        "compat32_mixed_send.c",
        "compat32_mixed_send-32",
        &["-m32", "-static"],
    ),
    ("compat32_mixed_send.c", "compat32_mixed_send-64", &[]),
];

/// Builds the guest test binaries on the host, and the C programs they
/// run (against `kernel`'s uapi headers); returns the test binaries.
pub fn build_test_binaries(layout: &Layout, kernel: &Kernel) -> Result<Vec<PathBuf>> {
    build_c_senders(layout, kernel)?;
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

/// Builds [`C_SENDERS`] into [`Layout::c_senders`]: on the host, since a
/// compiler under TCG takes a minute for what takes 0.2 s here. Warnings
/// fail the build.
fn build_c_senders(layout: &Layout, kernel: &Kernel) -> Result<()> {
    let sh = Shell::new()?;
    let out = layout.c_senders();
    sh.create_dir(&out)?;
    let include = kernel.headers();
    for &(source, name, flags) in C_SENDERS {
        let source = layout.root.join("rust-tests/c").join(source);
        let exe = out.join(name);
        cmd!(
            sh,
            "gcc {flags...} -O2 -Wall -Wextra -Werror -I {include} -o {exe} {source}"
        )
        .run()
        .with_context(|| format!("building {name} (a 32-bit build needs gcc-multilib)"))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
