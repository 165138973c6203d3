//! The Rust side of the bindings' layout, named as a C program against the
//! patched `<linux/io_uring.h>` prints it (`tests/c_header.rs` compares
//! the two). Not API.

use std::mem::{align_of, offset_of, size_of};

use crate::probe::Params;
use crate::sqe::SendSqe;
use crate::sys::{self, io_uring_zc_iov_attr};

/// `(C expression, value)` for every constant, size, alignment and field
/// offset the crate relies on.
pub fn facts() -> Vec<(&'static str, u64)> {
    let mut f: Vec<(&'static str, u64)> = vec![
        ("IORING_OP_SENDMSG", sys::IORING_OP_SENDMSG.into()),
        ("IORING_OP_SEND_ZC", sys::IORING_OP_SEND_ZC.into()),
        ("IORING_OP_SENDMSG_ZC", sys::IORING_OP_SENDMSG_ZC.into()),
        (
            "IORING_RECVSEND_POLL_FIRST",
            sys::IORING_RECVSEND_POLL_FIRST.into(),
        ),
        (
            "IORING_RECVSEND_FIXED_BUF",
            sys::IORING_RECVSEND_FIXED_BUF.into(),
        ),
        (
            "IORING_SEND_ZC_REPORT_USAGE",
            sys::IORING_SEND_ZC_REPORT_USAGE.into(),
        ),
        ("IORING_SEND_VECTORIZED", sys::IORING_SEND_VECTORIZED.into()),
        (
            "IORING_SEND_ZC_IOV_ATTR",
            sys::IORING_SEND_ZC_IOV_ATTR.into(),
        ),
        (
            "IORING_NOTIF_USAGE_ZC_COPIED",
            sys::IORING_NOTIF_USAGE_ZC_COPIED.into(),
        ),
        ("IORING_CQE_F_MORE", sys::IORING_CQE_F_MORE.into()),
        ("IORING_CQE_F_NOTIF", sys::IORING_CQE_F_NOTIF.into()),
        ("IORING_ZC_IOV_USER", sys::IORING_ZC_IOV_USER.into()),
        ("IORING_ZC_IOV_COPY", sys::IORING_ZC_IOV_COPY.into()),
        ("IORING_ZC_IOV_FIXED", sys::IORING_ZC_IOV_FIXED.into()),
        ("IORING_ZC_IOV_COPY_MAX", sys::IORING_ZC_IOV_COPY_MAX.into()),
        (
            "IORING_FEAT_SEND_ZC_IOV_ATTR",
            sys::IORING_FEAT_SEND_ZC_IOV_ATTR.into(),
        ),
    ];
    let attr = [
        (
            "sizeof(struct io_uring_zc_iov_attr)",
            size_of::<io_uring_zc_iov_attr>(),
        ),
        (
            "_Alignof(struct io_uring_zc_iov_attr)",
            align_of::<io_uring_zc_iov_attr>(),
        ),
        (
            "offsetof(struct io_uring_zc_iov_attr, mode)",
            offset_of!(io_uring_zc_iov_attr, mode),
        ),
        (
            "offsetof(struct io_uring_zc_iov_attr, flags)",
            offset_of!(io_uring_zc_iov_attr, flags),
        ),
        (
            "offsetof(struct io_uring_zc_iov_attr, buf_index)",
            offset_of!(io_uring_zc_iov_attr, buf_index),
        ),
        (
            "offsetof(struct io_uring_zc_iov_attr, resv)",
            offset_of!(io_uring_zc_iov_attr, resv),
        ),
        ("sizeof(struct io_uring_sqe)", size_of::<SendSqe>()),
        ("_Alignof(struct io_uring_sqe)", align_of::<SendSqe>()),
        (
            "offsetof(struct io_uring_sqe, opcode)",
            offset_of!(SendSqe, opcode),
        ),
        (
            "offsetof(struct io_uring_sqe, flags)",
            offset_of!(SendSqe, flags),
        ),
        (
            "offsetof(struct io_uring_sqe, ioprio)",
            offset_of!(SendSqe, ioprio),
        ),
        ("offsetof(struct io_uring_sqe, fd)", offset_of!(SendSqe, fd)),
        (
            "offsetof(struct io_uring_sqe, addr2)",
            offset_of!(SendSqe, addr2),
        ),
        (
            "offsetof(struct io_uring_sqe, addr)",
            offset_of!(SendSqe, addr),
        ),
        (
            "offsetof(struct io_uring_sqe, len)",
            offset_of!(SendSqe, len),
        ),
        (
            "offsetof(struct io_uring_sqe, msg_flags)",
            offset_of!(SendSqe, msg_flags),
        ),
        (
            "offsetof(struct io_uring_sqe, user_data)",
            offset_of!(SendSqe, user_data),
        ),
        (
            "offsetof(struct io_uring_sqe, buf_index)",
            offset_of!(SendSqe, buf_index),
        ),
        (
            "offsetof(struct io_uring_sqe, personality)",
            offset_of!(SendSqe, personality),
        ),
        (
            "offsetof(struct io_uring_sqe, addr_len)",
            offset_of!(SendSqe, addr_len),
        ),
        (
            "offsetof(struct io_uring_sqe, __pad3)",
            offset_of!(SendSqe, pad3),
        ),
        (
            "offsetof(struct io_uring_sqe, addr3)",
            offset_of!(SendSqe, addr3),
        ),
        (
            "offsetof(struct io_uring_sqe, zc_iov_attr)",
            offset_of!(SendSqe, zc_iov_attr),
        ),
        ("sizeof(struct io_uring_params)", size_of::<Params>()),
        (
            "offsetof(struct io_uring_params, features)",
            offset_of!(Params, features),
        ),
    ];
    f.extend(attr.iter().map(|&(name, v)| (name, v as u64)));
    f
}
