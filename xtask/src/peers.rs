//! Suites written by others that run in the guest next to ours: we build
//! and run them, we do not edit them.
//!
//! - the kernel's `tools/testing/selftests/net/io_uring_zerocopy_tx.sh`,
//!   with its two C programs, from the tree under test;
//! - liburing's test suite (see liburing.rs).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;

/// A suite the guest runs with `command` from `dir`.
pub struct PeerSuite {
    pub name: String,
    pub dir: PathBuf,
    pub judge: Judge,
    pub command: String,
}

/// Who decides whether a suite passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// Its exit status.
    Exit,
    /// The host, from the suite's log (OUTDIR/peer-NAME.log).
    Host,
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
        name: "kernel-selftest-io_uring_zerocopy_tx".to_string(),
        dir,
        judge: Judge::Exit,
        command: format!("bash ./{script}"),
    })
}

/// The plan line guest-run.sh reads: name, directory, judge, command.
pub fn plan_line(suite: &PeerSuite) -> String {
    let judge = match suite.judge {
        Judge::Exit => "exit",
        Judge::Host => "host",
    };
    format!(
        "{}\t{}\t{judge}\t{}\n",
        suite.name,
        suite.dir.display(),
        suite.command
    )
}

/// `(suite, exited 0)` from the guest's `peer-result:` lines.
pub fn results(console: &str) -> Vec<(String, bool)> {
    console
        .lines()
        .filter_map(|l| l.split("peer-result: ").nth(1))
        .filter_map(|r| {
            let mut words = r.split_whitespace();
            Some((words.next()?.to_string(), words.next()? == "ok"))
        })
        .collect()
}

/// The output of suite `name` in the guest's output directory.
pub fn log(out: &Path, name: &str) -> Result<String> {
    let path = out.join(format!("peer-{name}.log"));
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peer_results() {
        let console =
            "  | peer-result: kernel-selftest ok\n[ 1.0] x\npeer-result: liburing FAILED (exit 1)\n";
        assert_eq!(
            results(console),
            [
                ("kernel-selftest".to_string(), true),
                ("liburing".to_string(), false)
            ]
        );
    }
}
