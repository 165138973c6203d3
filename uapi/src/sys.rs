//! Raw io_uring uapi constants for zero-copy sends, as in
//! `include/uapi/linux/io_uring.h`.
//!
//! Only what the send paths need; the `io-uring` crate keeps its own
//! bindings private.

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
