//! Feature detection: the `features` word that `io_uring_setup(2)` returns.
//!
//! The `io-uring` crate keeps that word private, so this sets up a tiny ring
//! of its own, reads it and closes the ring.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::sys;

/// `struct io_uring_params`, only as far as `io_uring_setup` needs it.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    pub(crate) features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    // struct io_sqring_offsets and struct io_cqring_offsets, 40 bytes each.
    offsets: [u64; 10],
}

const _: () = assert!(std::mem::size_of::<Params>() == 120);

/// The `IORING_FEAT_*` bits of the running kernel.
pub fn features() -> io::Result<u32> {
    let mut params = Params::default();
    // SAFETY: io_uring_setup(2) writes at most sizeof(struct io_uring_params)
    // (120 bytes, asserted above) into `params`, which lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut params as *mut Params) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(params.features)
}

/// True if the kernel honours per-iovec attributes
/// ([`sys::IORING_SEND_ZC_IOV_ATTR`]).
pub fn has_iov_attr() -> io::Result<bool> {
    Ok(features()? & sys::IORING_FEAT_SEND_ZC_IOV_ATTR != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_kernel_reports_features() {
        // Every kernel with SENDMSG_ZC has IORING_FEAT_NODROP (5.5+).
        const IORING_FEAT_NODROP: u32 = 1 << 1;
        assert_ne!(features().unwrap() & IORING_FEAT_NODROP, 0);
    }
}
