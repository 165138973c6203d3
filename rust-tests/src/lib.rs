//! Helpers for the tests that run inside the guest: sockets over loopback,
//! a ring whose waits can time out, registered buffers, and requests with
//! per-iovec attributes together with the bytes they must put on the wire.
//!
//! Every wait is bounded: a kernel that loses a CQE fails the test with a
//! message instead of hanging the VM until the host kills it.

use std::time::Duration;

pub mod net;
pub mod netns;
pub mod process;
pub mod request;
pub mod ring;
pub mod ublk;

pub use net::{CSockAddr, Family, Peer, TcpPair, Transport, UdpPair};
pub use request::{seal_write, MmapBuf, Op, RegBufs, Request, Seg};
pub use ring::{zc_completion, Cqe, Ring, Setup, ZcCompletion};

/// Holds the tests of one test binary that take it to one at a time, for
/// as long as the guard lives, and a failed one does not fail the others:
/// they use or read system-wide state, but a poisoned lock says nothing
/// about it.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Fails the calling test (never skips it) on a kernel without the
/// per-iovec feature: the tests that need it run on the kernel that
/// `cargo xtask vm-test` builds.
pub fn require_feature() {
    assert!(
        sendzc_iov::probe::has_iov_attr().expect("io_uring_setup"),
        "the kernel does not advertise IORING_FEAT_SEND_ZC_IOV_ATTR: \
         these tests need the kernel built by `cargo xtask vm-test`"
    );
}

/// Appends `property cases` to the file `$SENDZC_CASE_LOG` names, if any:
/// `cargo xtask vm-test` sets it and sums the lines in its final summary,
/// as libtest shows nothing of a passing test's output.
pub fn record_cases(property: &str, cases: u64) {
    use std::io::Write;
    let Some(path) = std::env::var_os("SENDZC_CASE_LOG") else {
        return;
    };
    let line = format!("{property} {cases}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot append to SENDZC_CASE_LOG {path:?}: {e}");
    }
}

/// How long any single wait (CQEs, received bytes) may take.
pub const CQE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes with a recognisable pattern: each position tells where it came from.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
