//! A mixed request from a 32-bit process. io_uring serves compat tasks
//! through other code than native ones: `struct compat_msghdr`, compat
//! iovecs, and a 32-bit pointer widened into `sqe->zc_iov_attr`. The C
//! sender in `rust-tests/c/` sets up its ring with raw syscalls, sends
//! COPY, FIXED (two buffers) and USER iovecs over TCP, and checks the bytes
//! and both CQEs. xtask builds it on the host against the patched uapi
//! headers twice, `-m32 -static` (gcc-multilib) and native, into
//! `$SENDZC_C_SENDERS`; both runs must report the same.

use std::path::PathBuf;
use std::process::Command;

use sendzc_iov_vm_tests::require_feature;

/// Runs the sender built as `name`; returns its report line.
fn run(name: &str) -> String {
    let dir = std::env::var_os("SENDZC_C_SENDERS")
        .expect("SENDZC_C_SENDERS must name the C senders xtask built");
    let exe = PathBuf::from(dir).join(name);
    let out = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{}: {stdout}", exe.display());
    stdout
}

#[test]
fn mixed_sendmsg_zc_from_a_32_bit_process_matches_64_bit() {
    require_feature();
    let (line32, line64) = (run("compat32_mixed_send-32"), run("compat32_mixed_send-64"));
    assert!(
        line32.ends_with("pointer size 4"),
        "not a 32-bit run: {line32}"
    );
    assert!(
        line64.ends_with("pointer size 8"),
        "not a 64-bit run: {line64}"
    );
    let common = |line: &str| {
        line.rsplit_once(", pointer size")
            .map(|(a, _)| a.to_string())
    };
    assert_eq!(common(&line32), common(&line64));
    assert!(line32.starts_with("compat32: ok"), "{line32}");
}
