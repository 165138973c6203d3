//! The kernel's `tools/testing/selftests/net/io_uring_zerocopy_tx.sh`,
//! with its two C programs, from the tree under test (so with the
//! per-iovec mode the series adds to it), judged by its exit status.
//!
//! It runs a second time when the first fails: its receiver stops after
//! two seconds of wall time, and a sender that TCG emulates slowly can
//! still be sending then (`send failed: Connection refused`). The summary
//! names the retry and the first run's last words.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use super::{Judge, PeerSuite};
use crate::layout::Layout;

/// Builds the kernel's io_uring zero-copy selftest against the patched
/// uapi headers in `build`.
pub fn build(layout: &Layout, src: &Path, build: &Path) -> Result<PeerSuite> {
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
        command: format!(
            "{} bash ./{script}",
            layout.qemu().join("rerun-once.sh").display()
        ),
    })
}
