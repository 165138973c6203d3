//! Raw io_uring uapi constants for zero-copy sends, as in
//! `include/uapi/linux/io_uring.h`.
//!
//! Only what the send paths need; the `io-uring` crate keeps its own
//! bindings private.

use std::net::SocketAddr;

/// `IORING_OP_SENDMSG`: `sendmsg(2)`, copying.
pub const IORING_OP_SENDMSG: u8 = 9;
/// `IORING_OP_SEND_ZC`: zero-copy `send(2)`.
pub const IORING_OP_SEND_ZC: u8 = 47;
/// `IORING_OP_SENDMSG_ZC`: zero-copy `sendmsg(2)`.
pub const IORING_OP_SENDMSG_ZC: u8 = 48;

/// sqe->ioprio: try to send before arming poll.
pub const IORING_RECVSEND_POLL_FIRST: u16 = 1 << 0;
/// sqe->ioprio: the data is in the registered buffer `sqe->buf_index`.
pub const IORING_RECVSEND_FIXED_BUF: u16 = 1 << 2;
/// sqe->ioprio: the notification CQE reports whether data was copied.
pub const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// sqe->ioprio: `SEND[_ZC]` takes an iovec array (`addr`, `len` entries).
pub const IORING_SEND_VECTORIZED: u16 = 1 << 5;

/// Notification `res` bit with REPORT_USAGE: the kernel copied some data.
pub const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// cqe->flags: more CQEs follow for this request (the notification).
pub const IORING_CQE_F_MORE: u32 = 1 << 1;
/// cqe->flags: this CQE is a zero-copy notification.
pub const IORING_CQE_F_NOTIF: u32 = 1 << 3;

/// sqe->ioprio: `sqe->zc_iov_attr` points to one [`io_uring_zc_iov_attr`]
/// per iovec (SENDMSG_ZC, and SEND_ZC with [`IORING_SEND_VECTORIZED`]).
pub const IORING_SEND_ZC_IOV_ATTR: u16 = 1 << 6;

/// Zero-copy from user memory (what `SEND[MSG]_ZC` does without attributes).
pub const IORING_ZC_IOV_USER: u8 = 0;
/// Copied at issue; the memory may be reused at the result CQE. A request
/// whose iovecs are all COPY has no notification: its one CQE comes
/// without [`IORING_CQE_F_MORE`].
pub const IORING_ZC_IOV_COPY: u8 = 1;
/// Zero-copy from registered buffer `buf_index`; `iov_base` is an address
/// inside that buffer. The buffer is looked up at the request's first
/// issue (inline at submit, or later for a linked or POLL_FIRST request).
/// A zero-length iovec, of any mode, is skipped.
pub const IORING_ZC_IOV_FIXED: u8 = 2;
/// The most bytes one request may copy ([`IORING_ZC_IOV_COPY`] iovecs),
/// whether or not it also zero-copies; more fails with `-E2BIG`.
pub const IORING_ZC_IOV_COPY_MAX: u32 = 1 << 16;

/// io_uring_params->features: the kernel honours [`IORING_SEND_ZC_IOV_ATTR`].
pub const IORING_FEAT_SEND_ZC_IOV_ATTR: u32 = 1 << 18;

/// `struct io_uring_zc_iov_attr`: how one iovec of a zero-copy send is sent.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct io_uring_zc_iov_attr {
    /// One of the `IORING_ZC_IOV_*` modes.
    pub mode: u8,
    /// Must be zero.
    pub flags: u8,
    /// The registered buffer of an [`IORING_ZC_IOV_FIXED`] iovec, else zero.
    pub buf_index: u16,
    /// Must be zero.
    pub resv: u32,
}

impl io_uring_zc_iov_attr {
    /// Copied at issue.
    pub const fn copy() -> Self {
        Self::new(IORING_ZC_IOV_COPY, 0)
    }

    /// Zero-copy from user memory.
    pub const fn user() -> Self {
        Self::new(IORING_ZC_IOV_USER, 0)
    }

    /// Zero-copy from registered buffer `buf_index`.
    pub const fn fixed(buf_index: u16) -> Self {
        Self::new(IORING_ZC_IOV_FIXED, buf_index)
    }

    const fn new(mode: u8, buf_index: u16) -> Self {
        io_uring_zc_iov_attr {
            mode,
            flags: 0,
            buf_index,
            resv: 0,
        }
    }
}

/// `addr` in the C layout (`msg_name`, SEND_ZC's `addr2`), and its length.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is AF_UNSPEC.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_in_the_c_layout() {
        let (v4, len) = sockaddr("127.0.0.2:9".parse().unwrap());
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in>());
        // SAFETY: sockaddr() wrote a sockaddr_in at the start of the storage.
        let sin: libc::sockaddr_in =
            unsafe { std::ptr::read((&v4 as *const libc::sockaddr_storage).cast()) };
        assert_eq!(sin.sin_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(u16::from_be(sin.sin_port), 9);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [127, 0, 0, 2]);
        let (v6, len) = sockaddr("[::1]:80".parse().unwrap());
        assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_in6>());
        // SAFETY: as above, a sockaddr_in6.
        let sin6: libc::sockaddr_in6 =
            unsafe { std::ptr::read((&v6 as *const libc::sockaddr_storage).cast()) };
        assert_eq!(sin6.sin6_family, libc::AF_INET6 as libc::sa_family_t);
        assert_eq!(u16::from_be(sin6.sin6_port), 80);
        assert_eq!(sin6.sin6_addr.s6_addr[15], 1);
    }
}
