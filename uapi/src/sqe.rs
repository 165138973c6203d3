//! Submission entries for the zero-copy sends, with the fields the
//! `io-uring` crate has no setter for (`sqe->zc_iov_attr`, SENDMSG_ZC's
//! `buf_index`, the notification's own user_data in `sqe->addr3`).
//!
//! [`SendMsgZc`] and [`SendZc`] are builders in the style of the `io-uring`
//! crate's `opcode` module: required arguments in `new`, optional fields as
//! setters, `build()` gives an [`io_uring::squeue::Entry`]. Pushing it is
//! unsafe there, as for any entry: everything its pointers refer to must
//! outlive the request (until its notification).
//!
//! [`SendSqe`] mirrors the 64-byte `struct io_uring_sqe` as the send
//! opcodes use it, field by field: not API, but what the builders fill in,
//! and what the adversarial tests use to write bits no builder would. The
//! layout is checked against the C header of the patched kernel (`cargo
//! xtask check-uapi`) and, here, against the size of
//! [`io_uring::squeue::Entry`], which is a `#[repr(C)]` wrapper around the
//! same C struct.

use io_uring::{squeue, types};

use crate::sys;

/// The socket of a send: a file descriptor or a registered file.
#[derive(Debug, Clone, Copy)]
pub enum Socket {
    /// A file descriptor.
    Fd(types::Fd),
    /// A registered file (`IOSQE_FIXED_FILE`).
    Fixed(types::Fixed),
}

impl From<types::Fd> for Socket {
    fn from(fd: types::Fd) -> Socket {
        Socket::Fd(fd)
    }
}

impl From<types::Fixed> for Socket {
    fn from(file: types::Fixed) -> Socket {
        Socket::Fixed(file)
    }
}

/// The copy mask and buffer index that say what `attrs` say, if they can:
/// at most 64 iovecs, none USER, and every FIXED one in the same buffer
/// (buffer 0 if there is none). Such a request is cheaper to send as a
/// mask ([`SendMsgZc::copy_mask`]): the kernel reads no attribute array.
pub fn copy_mask_of(attrs: &[sys::io_uring_zc_iov_attr]) -> Option<(u16, u64)> {
    if attrs.len() > 64 {
        return None;
    }
    let mut buf = None;
    let mut mask = 0u64;
    for (i, attr) in attrs.iter().enumerate() {
        match attr.mode {
            sys::IORING_ZC_IOV_COPY => mask |= 1 << i,
            sys::IORING_ZC_IOV_FIXED if *buf.get_or_insert(attr.buf_index) == attr.buf_index => {}
            _ => return None,
        }
    }
    Some((buf.unwrap_or(0), mask))
}

/// The fields both builders share.
#[derive(Debug, Clone, Copy, Default)]
struct Common {
    ioprio: u16,
    msg_flags: u32,
    buf_index: Option<u16>,
    iov_attrs: Option<*const sys::io_uring_zc_iov_attr>,
    copy_mask: Option<u64>,
    notif_user_data: u64,
    personality: u16,
}

impl Common {
    /// Fills `sqe` with these fields and the socket.
    fn apply(self, mut sqe: SendSqe, socket: Socket) -> squeue::Entry {
        match socket {
            Socket::Fd(fd) => sqe.fd = fd.0,
            Socket::Fixed(file) => {
                sqe.fd = file.0 as i32;
                sqe.flags |= squeue::Flags::FIXED_FILE.bits();
            }
        }
        sqe.ioprio |= self.ioprio;
        sqe.msg_flags = self.msg_flags;
        if let Some(index) = self.buf_index {
            sqe.ioprio |= sys::IORING_RECVSEND_FIXED_BUF;
            sqe.buf_index = index;
        }
        if let Some(attrs) = self.iov_attrs {
            sqe = sqe.iov_attrs(attrs);
        }
        if let Some(mask) = self.copy_mask {
            sqe = sqe.copy_mask(self.buf_index.unwrap_or(0), mask);
        }
        sqe.addr3 = self.notif_user_data;
        sqe.personality = self.personality;
        sqe.into_entry()
    }
}

/// Setters both builders have, on `$t` with its `common` field.
macro_rules! common_setters {
    ($t:ty) => {
        impl $t {
            /// More `IORING_RECVSEND_*` / `IORING_SEND_*` flags in
            /// `sqe->ioprio` (e.g. `IORING_SEND_ZC_REPORT_USAGE`).
            pub fn ioprio(mut self, flags: u16) -> Self {
                self.common.ioprio |= flags;
                self
            }

            /// `MSG_*` flags.
            pub fn msg_flags(mut self, flags: u32) -> Self {
                self.common.msg_flags = flags;
                self
            }

            /// Zero-copy every iovec from registered buffer `index`
            /// (`IORING_RECVSEND_FIXED_BUF`).
            pub fn buf_index(mut self, index: u16) -> Self {
                self.common.buf_index = Some(index);
                self
            }

            /// Per-iovec attributes, one per iovec, at `attrs`
            /// (`IORING_SEND_ZC_IOV_ATTR`).
            pub fn iov_attrs(mut self, attrs: *const sys::io_uring_zc_iov_attr) -> Self {
                self.common.iov_attrs = Some(attrs);
                self.common.copy_mask = None;
                self
            }

            /// Copy the iovecs whose bit is set in `mask` and zero-copy
            /// the others from the registered buffer of
            /// [`buf_index`](Self::buf_index) (0 if not set): the
            /// attributes of a request whose zero-copied iovecs share one
            /// buffer, in the SQE (`sqe->zc_copy_mask`, with
            /// `IORING_SEND_ZC_IOV_ATTR | IORING_RECVSEND_FIXED_BUF`). At
            /// most 64 iovecs; replaces [`iov_attrs`](Self::iov_attrs).
            pub fn copy_mask(mut self, mask: u64) -> Self {
                self.common.copy_mask = Some(mask);
                self.common.iov_attrs = None;
                self
            }

            /// The user_data of the notification CQE (`sqe->addr3`; 0: the
            /// request's own).
            pub fn notif_user_data(mut self, user_data: u64) -> Self {
                self.common.notif_user_data = user_data;
                self
            }

            /// Credentials registered with IORING_REGISTER_PERSONALITY.
            pub fn personality(mut self, personality: u16) -> Self {
                self.common.personality = personality;
                self
            }
        }
    };
}

/// `IORING_OP_SENDMSG_ZC` of `msg`.
#[derive(Debug, Clone, Copy)]
pub struct SendMsgZc {
    socket: Socket,
    msg: *const libc::msghdr,
    common: Common,
}

impl SendMsgZc {
    /// The opcode.
    pub const CODE: u8 = sys::IORING_OP_SENDMSG_ZC;

    /// SENDMSG_ZC of `msg` on `socket`.
    pub fn new(socket: impl Into<Socket>, msg: *const libc::msghdr) -> SendMsgZc {
        SendMsgZc {
            socket: socket.into(),
            msg,
            common: Common::default(),
        }
    }

    /// The entry.
    pub fn build(self) -> squeue::Entry {
        self.common
            .apply(SendSqe::sendmsg_zc(0, self.msg), self.socket)
    }
}

common_setters!(SendMsgZc);

/// `IORING_OP_SEND_ZC` with `IORING_SEND_VECTORIZED`: `len` iovecs at `iov`.
#[derive(Debug, Clone, Copy)]
pub struct SendZc {
    socket: Socket,
    iov: *const libc::iovec,
    len: u32,
    dest: Option<(*const libc::sockaddr, libc::socklen_t)>,
    common: Common,
}

impl SendZc {
    /// The opcode.
    pub const CODE: u8 = sys::IORING_OP_SEND_ZC;

    /// Vectorized SEND_ZC of `len` iovecs at `iov` on `socket`.
    pub fn vectored(socket: impl Into<Socket>, iov: *const libc::iovec, len: u32) -> SendZc {
        SendZc {
            socket: socket.into(),
            iov,
            len,
            dest: None,
            common: Common::default(),
        }
    }

    /// Sends to `addr` (unconnected sockets).
    pub fn dest(mut self, addr: *const libc::sockaddr, len: libc::socklen_t) -> SendZc {
        self.dest = Some((addr, len));
        self
    }

    /// The entry.
    pub fn build(self) -> squeue::Entry {
        let mut sqe = SendSqe::send_zc_vectored(0, self.iov, self.len);
        if let Some((addr, len)) = self.dest {
            sqe = sqe.dest(addr, len);
        }
        self.common.apply(sqe, self.socket)
    }
}

common_setters!(SendZc);

/// `struct io_uring_sqe` as SEND_ZC and SENDMSG_ZC read it; not API (see
/// the module documentation).
#[doc(hidden)]
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
    /// With [`sys::IORING_SEND_ZC_IOV_ATTR`]: the attribute array; with
    /// [`sys::IORING_RECVSEND_FIXED_BUF`] too, the copy mask
    /// (`zc_copy_mask` in the C header).
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

    /// A copy mask instead of attributes: iovec `i` is copied if bit `i`
    /// of `mask` is set, and zero-copied from registered buffer
    /// `buf_index` if not (`IORING_SEND_ZC_IOV_ATTR` with
    /// `IORING_RECVSEND_FIXED_BUF`, where `sqe->zc_copy_mask` shares the
    /// attribute pointer's field). At most 64 iovecs.
    pub fn copy_mask(mut self, buf_index: u16, mask: u64) -> SendSqe {
        self.ioprio |= sys::IORING_SEND_ZC_IOV_ATTR | sys::IORING_RECVSEND_FIXED_BUF;
        self.buf_index = buf_index;
        self.zc_iov_attr = mask;
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
    fn builders_fill_the_fields() {
        let attrs = [sys::io_uring_zc_iov_attr::copy()];
        let msg = SendMsgZc::new(types::Fd(5), std::ptr::null())
            .buf_index(3)
            .ioprio(sys::IORING_SEND_ZC_REPORT_USAGE)
            .msg_flags(libc::MSG_WAITALL as u32)
            .notif_user_data(99)
            .build()
            .user_data(7);
        // SAFETY: both are 64-byte images of struct io_uring_sqe.
        let raw: SendSqe = unsafe { std::mem::transmute(msg) };
        assert_eq!(raw.opcode, sys::IORING_OP_SENDMSG_ZC);
        assert_eq!(raw.fd, 5);
        assert_eq!(
            raw.ioprio,
            sys::IORING_RECVSEND_FIXED_BUF | sys::IORING_SEND_ZC_REPORT_USAGE
        );
        assert_eq!((raw.buf_index, raw.addr3, raw.user_data), (3, 99, 7));
        let vec = SendZc::vectored(types::Fixed(2), std::ptr::null(), 4)
            .iov_attrs(attrs.as_ptr())
            .build();
        // SAFETY: as above.
        let raw: SendSqe = unsafe { std::mem::transmute(vec) };
        assert_eq!(raw.opcode, sys::IORING_OP_SEND_ZC);
        assert_eq!(raw.flags, squeue::Flags::FIXED_FILE.bits());
        assert_eq!(
            raw.ioprio,
            sys::IORING_SEND_VECTORIZED | sys::IORING_SEND_ZC_IOV_ATTR
        );
        assert_eq!((raw.fd, raw.len), (2, 4));
        assert_eq!(raw.zc_iov_attr, attrs.as_ptr() as u64);
    }

    #[test]
    fn copy_mask_takes_the_attribute_field_and_the_buffer() {
        let attrs = [sys::io_uring_zc_iov_attr::copy()];
        let masked = SendMsgZc::new(types::Fd(5), std::ptr::null())
            .iov_attrs(attrs.as_ptr())
            .buf_index(2)
            .copy_mask(0b101)
            .build();
        // SAFETY: both are 64-byte images of struct io_uring_sqe.
        let raw: SendSqe = unsafe { std::mem::transmute(masked) };
        assert_eq!(
            raw.ioprio,
            sys::IORING_SEND_ZC_IOV_ATTR | sys::IORING_RECVSEND_FIXED_BUF
        );
        assert_eq!((raw.buf_index, raw.zc_iov_attr), (2, 0b101));
        // the last of the two wins
        let attributed = SendZc::vectored(types::Fd(5), std::ptr::null(), 3)
            .copy_mask(0b1)
            .iov_attrs(attrs.as_ptr())
            .build();
        // SAFETY: as above.
        let raw: SendSqe = unsafe { std::mem::transmute(attributed) };
        assert_eq!(
            raw.ioprio,
            sys::IORING_SEND_VECTORIZED | sys::IORING_SEND_ZC_IOV_ATTR
        );
        assert_eq!((raw.buf_index, raw.zc_iov_attr), (0, attrs.as_ptr() as u64));
    }

    #[test]
    fn copy_mask_of_attributes() {
        use sys::io_uring_zc_iov_attr as A;
        assert_eq!(copy_mask_of(&[]), Some((0, 0)));
        assert_eq!(
            copy_mask_of(&[A::copy(), A::fixed(3), A::copy(), A::fixed(3)]),
            Some((3, 0b0101))
        );
        assert_eq!(copy_mask_of(&[A::copy(); 64]), Some((0, u64::MAX)));
        assert_eq!(copy_mask_of(&[A::copy(); 65]), None);
        assert_eq!(copy_mask_of(&[A::fixed(1), A::fixed(2)]), None);
        assert_eq!(copy_mask_of(&[A::copy(), A::user()]), None);
    }

    #[test]
    fn entry_keeps_user_data() {
        let entry = SendSqe::sendmsg_zc(3, std::ptr::null())
            .user_data(77)
            .into_entry();
        assert_eq!(entry.get_user_data(), 77);
    }
}
