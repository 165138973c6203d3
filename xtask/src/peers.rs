//! Suites written by others that run in the guest next to ours: we build
//! and run them, we do not edit them.
//!
//! - the kernel's `tools/testing/selftests/net/io_uring_zerocopy_tx.sh`,
//!   with its two C programs, from the tree under test.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;

/// A suite the guest runs with `command` from `dir`.
pub struct PeerSuite {
    pub name: &'static str,
    pub dir: PathBuf,
    pub command: String,
}

/// Builds the kernel's io_uring zero-copy selftest against the patched
/// uapi headers in `build`.
pub fn kernel_zerocopy_selftest(layout: &Layout, src: &Path, build: &Path) -> Result<PeerSuite> {
    let dir = layout.vm_out().join("peers/selftests-net");
    fs::create_dir_all(&dir)?;
    let net = src.join("tools/testing/selftests/net");
    let headers = build.join("usr/include");
    let tools_include = src.join("tools/include");
    let sh = Shell::new()?;
    for prog in ["io_uring_zerocopy_tx", "msg_zerocopy"] {
        let source = net.join(format!("{prog}.c"));
        let out = dir.join(prog);
        cmd!(
            sh,
            "gcc -O2 -Wall -I{headers} -I{tools_include} -o {out} {source}"
        )
        .quiet()
        .run()
        .with_context(|| format!("building the selftest program {prog}"))?;
    }
    let script = "io_uring_zerocopy_tx.sh";
    fs::copy(net.join(script), dir.join(script))?;
    Ok(PeerSuite {
        name: "kernel-selftest-io_uring_zerocopy_tx",
        dir,
        command: format!("bash ./{script}"),
    })
}

/// The plan line guest-run.sh reads: name, directory, command.
pub fn plan_line(suite: &PeerSuite) -> String {
    format!(
        "{}\t{}\t{}\n",
        suite.name,
        suite.dir.display(),
        suite.command
    )
}

/// `(suite, passed)` from the guest's `peer-result:` lines.
pub fn results(console: &str) -> Vec<(String, bool)> {
    console
        .lines()
        .filter_map(|l| l.split("peer-result: ").nth(1))
        .filter_map(|r| r.trim().rsplit_once(' '))
        .map(|(name, verdict)| (name.to_string(), verdict == "ok"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peer_results() {
        let console =
            "  | peer-result: kernel-selftest ok\n[ 1.0] x\npeer-result: liburing FAILED\n";
        assert_eq!(
            results(console),
            [
                ("kernel-selftest".to_string(), true),
                ("liburing".to_string(), false)
            ]
        );
    }
}
