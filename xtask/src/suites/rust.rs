//! Our own suites: the test binaries of the crates in [`GUEST_PACKAGES`],
//! built on the host, run in the guest by guest-run.sh.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;

/// The Rust crates whose tests run inside the guest.
const GUEST_PACKAGES: &[&str] = &["sendzc-iov", "sendzc-iov-vm-tests"];

/// Builds the guest test binaries on the host; returns their paths.
pub fn build_test_binaries(layout: &Layout) -> Result<Vec<PathBuf>> {
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
