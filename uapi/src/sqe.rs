//! Submission entries for the zero-copy sends, with the fields the
//! `io-uring` crate has no setter for (`sqe->zc_iov_attr`, SENDMSG_ZC's
//! `buf_index`).
//!
//! [`SendSqe`] mirrors the 64-byte `struct io_uring_sqe` as the send opcodes
//! use it. The layout is checked against the C header of the patched kernel
//! (`cargo xtask check-uapi`) and, here, against the size of
//! [`io_uring::squeue::Entry`], which is a `#[repr(C)]` wrapper around the
//! same C struct.

use io_uring::squeue;

use crate::sys;

/// `struct io_uring_sqe` as SEND_ZC and SENDMSG_ZC read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendSqe {
    /// `IORING_OP_*`.
    pub opcode: u8,
    /// `IOSQE_*` flags.
    pub flags: u8,
    /// `IORING_RECVSEND_*` and `IORING_SEND_*` flags.
    pub ioprio: u16,
    /// The socket.
    pub fd: i32,
    /// SEND_ZC: destination `sockaddr`.
    pub addr2: u64,
    /// SENDMSG_ZC: the `msghdr`; vectorized SEND_ZC: the iovec array.
    pub addr: u64,
    /// Vectorized SEND_ZC: number of iovecs.
    pub len: u32,
    /// `MSG_*` flags.
    pub msg_flags: u32,
    /// Copied to the CQEs.
    pub user_data: u64,
    /// Registered buffer with `IORING_RECVSEND_FIXED_BUF`.
    pub buf_index: u16,
    /// Credentials registered with IORING_REGISTER_PERSONALITY.
    pub personality: u16,
    /// SEND_ZC: destination address length.
    pub addr_len: u16,
    /// `__pad3`: must be zero.
    pub pad3: u16,
    /// user_data of the notification CQE (0: the request's).
    pub addr3: u64,
    /// With [`sys::IORING_SEND_ZC_IOV_ATTR`]: the attribute array.
    pub zc_iov_attr: u64,
}

const _: () = assert!(std::mem::size_of::<SendSqe>() == 64);
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
const _: () = assert!(std::mem::align_of::<SendSqe>() == std::mem::align_of::<squeue::Entry>());

impl SendSqe {
    /// SENDMSG_ZC of `msg` on socket `fd`.
    pub fn sendmsg_zc(fd: i32, msg: *const libc::msghdr) -> SendSqe {
        SendSqe {
            opcode: sys::IORING_OP_SENDMSG_ZC,
            fd,
            addr: msg as u64,
            // What liburing's io_uring_prep_sendmsg_zc() sets; unused.
            len: 1,
            ..SendSqe::default()
        }
    }

    /// SEND_ZC with [`sys::IORING_SEND_VECTORIZED`] of `nr` iovecs at `iov`.
    pub fn send_zc_vectored(fd: i32, iov: *const libc::iovec, nr: u32) -> SendSqe {
        SendSqe {
            opcode: sys::IORING_OP_SEND_ZC,
            fd,
            ioprio: sys::IORING_SEND_VECTORIZED,
            addr: iov as u64,
            len: nr,
            ..SendSqe::default()
        }
    }

    /// Per-iovec attributes: one entry per iovec, at `attrs`.
    pub fn iov_attrs(mut self, attrs: *const sys::io_uring_zc_iov_attr) -> SendSqe {
        self.ioprio |= sys::IORING_SEND_ZC_IOV_ATTR;
        self.zc_iov_attr = attrs as u64;
        self
    }

    /// SEND_ZC: send to `addr` (unconnected sockets).
    pub fn dest(mut self, addr: *const libc::sockaddr, len: libc::socklen_t) -> SendSqe {
        self.addr2 = addr as u64;
        self.addr_len = len as u16;
        self
    }

    /// Sets the user_data of the request's CQEs.
    pub fn user_data(mut self, user_data: u64) -> SendSqe {
        self.user_data = user_data;
        self
    }

    /// The entry to push to an `io-uring` crate ring. Pushing it is unsafe
    /// there: everything the pointers refer to must outlive the request.
    pub fn into_entry(self) -> squeue::Entry {
        // SAFETY: both types are 64-byte #[repr(C)] images of struct
        // io_uring_sqe (sizes and alignment asserted above; field offsets
        // checked against the kernel header), made only of integers, so
        // every bit pattern of one is a valid value of the other.
        unsafe { std::mem::transmute::<SendSqe, squeue::Entry>(self) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn field_offsets_match_io_uring_sqe() {
        assert_eq!(offset_of!(SendSqe, ioprio), 2);
        assert_eq!(offset_of!(SendSqe, fd), 4);
        assert_eq!(offset_of!(SendSqe, addr2), 8);
        assert_eq!(offset_of!(SendSqe, addr), 16);
        assert_eq!(offset_of!(SendSqe, len), 24);
        assert_eq!(offset_of!(SendSqe, msg_flags), 28);
        assert_eq!(offset_of!(SendSqe, user_data), 32);
        assert_eq!(offset_of!(SendSqe, buf_index), 40);
        assert_eq!(offset_of!(SendSqe, addr_len), 44);
        assert_eq!(offset_of!(SendSqe, addr3), 48);
        assert_eq!(offset_of!(SendSqe, zc_iov_attr), 56);
    }

    #[test]
    fn entry_keeps_user_data() {
        let entry = SendSqe::sendmsg_zc(3, std::ptr::null())
            .user_data(77)
            .into_entry();
        assert_eq!(entry.get_user_data(), 77);
    }
}
