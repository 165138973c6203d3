//! The kernel's `tools/testing/selftests/net/io_uring_zerocopy_tx.sh`,
//! with its two C programs, from the tree under test (so with the
//! per-iovec mode the series adds to it), judged by its exit status.
//!
//! Its receiver stops after two seconds of wall time, and a sender that
//! TCG emulates slowly can still be sending then (`send failed:
//! Connection refused`, twice in a row in one CI run): the staged copy
//! gives the receiver [`RECEIVER_SECONDS`] instead, the only change to
//! the script. It also runs a second time when the first fails; the
//! summary names the retry and the first run's last words.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
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
    let text = fs::read_to_string(net.join(script))?;
    fs::write(dir.join(script), with_receiver_time(&text)?)?;
    // Executable like the original: it runs itself ("$0") once per case.
    let mode = fs::metadata(net.join(script))?.permissions();
    fs::set_permissions(dir.join(script), mode)?;
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

/// Seconds the staged selftest's receiver runs (upstream: 2; the sender
/// sends for 1).
const RECEIVER_SECONDS: u32 = 8;

/// The receiver's run time in io_uring_zerocopy_tx.sh, as upstream writes it.
const RECEIVER_TIME: &str = "-t 2 -C 2";

/// The selftest script with its receiver running [`RECEIVER_SECONDS`].
fn with_receiver_time(script: &str) -> Result<String> {
    if script.matches(RECEIVER_TIME).count() != 1 {
        bail!("io_uring_zerocopy_tx.sh no longer starts its receiver with `{RECEIVER_TIME}`");
    }
    Ok(script.replace(RECEIVER_TIME, &format!("-t {RECEIVER_SECONDS} -C 2")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_runs_longer_and_nothing_else_changes() {
        let script = "rx=( \"${BIN_RX}\" \"-${IP}\" -t 2 -C 2 -S \"${SADDR}\" )\n\
                      ip netns exec \"${NS1}\" \"${BIN_TX}\" -t 1 -D \"${DADDR}\"\n";
        let staged = with_receiver_time(script).unwrap();
        assert_eq!(staged, script.replace("-t 2 -C 2", "-t 8 -C 2"));
        assert!(staged.contains("\"${BIN_TX}\" -t 1"));
        assert!(with_receiver_time("rx=( -t 3 -C 2 )").is_err());
    }
}
