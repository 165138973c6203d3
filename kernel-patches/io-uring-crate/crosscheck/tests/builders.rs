//! The patched io-uring crate's builders against sendzc-iov's: for the
//! same arguments, the same 64 bytes of SQE. Built by `cargo xtask
//! check-patches` with the patched crate in place of the published one.

use io_uring::{opcode, squeue::Entry, types};
use sendzc_iov::sqe;
use sendzc_iov::sys::io_uring_zc_iov_attr;

fn bytes(entry: Entry) -> [u8; 64] {
    // SAFETY: Entry is a #[repr(C)] wrapper of the 64-byte io_uring_sqe,
    // made only of integers.
    unsafe { std::mem::transmute::<Entry, [u8; 64]>(entry) }
}

#[test]
fn sendmsg_zc_from_a_registered_buffer() {
    // SAFETY: msghdr is plain data; only its address goes into the SQE.
    let msg: libc::msghdr = unsafe { std::mem::zeroed() };
    let theirs = opcode::SendMsgZc::new(types::Fd(5), &msg)
        .buf_index(Some(3))
        .flags(libc::MSG_WAITALL as u32)
        .build()
        .user_data(9);
    let ours = sqe::SendMsgZc::new(types::Fd(5), &msg)
        .buf_index(3)
        .msg_flags(libc::MSG_WAITALL as u32)
        .build()
        .user_data(9);
    assert_eq!(bytes(theirs), bytes(ours));
}

#[test]
fn sendmsg_zc_with_per_iovec_attributes() {
    // SAFETY: as above.
    let msg: libc::msghdr = unsafe { std::mem::zeroed() };
    let attrs = [io_uring_zc_iov_attr::copy(), io_uring_zc_iov_attr::fixed(2)];
    let theirs = opcode::SendMsgZc::new(types::Fixed(1), &msg)
        .iov_attrs(attrs.as_ptr().cast())
        .build();
    let ours = sqe::SendMsgZc::new(types::Fixed(1), &msg)
        .iov_attrs(attrs.as_ptr())
        .build();
    assert_eq!(bytes(theirs), bytes(ours));
}

#[test]
fn vectored_send_zc() {
    let iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    // SAFETY: sockaddr is plain data; only its address goes into the SQE.
    let addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    let attrs = [io_uring_zc_iov_attr::user(); 2];
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    let theirs = opcode::SendZcVectored::new(types::Fd(4), iov.as_ptr(), 2)
        .dest_addr(&addr)
        .dest_addr_len(len)
        .iov_attrs(attrs.as_ptr().cast())
        .build();
    let ours = sqe::SendZc::vectored(types::Fd(4), iov.as_ptr(), 2)
        .dest(&addr, len)
        .iov_attrs(attrs.as_ptr())
        .build();
    assert_eq!(bytes(theirs), bytes(ours));
    let theirs = opcode::SendZcVectored::new(types::Fd(4), iov.as_ptr(), 2)
        .buf_index(Some(7))
        .build();
    let ours = sqe::SendZc::vectored(types::Fd(4), iov.as_ptr(), 2)
        .buf_index(7)
        .build();
    assert_eq!(bytes(theirs), bytes(ours));
}
