//! SENDMSG_ZC as the unpatched kernel does it: these pass on plain 7.3 and
//! must keep passing with the series applied.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use io_uring::{opcode, types};
use rstest::rstest;
use sendzc_iov_vm_tests::{pattern, zc_completion, Family, Ring, TcpPair};

fn iovec(buf: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }
}

fn msghdr(iov: &[libc::iovec]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    msg
}

/// Sends `parts` as one SENDMSG_ZC and returns the CQEs of the request.
fn sendmsg_zc(
    ring: &mut Ring,
    fd: i32,
    parts: &[&[u8]],
    user_data: u64,
) -> Vec<sendzc_iov_vm_tests::Cqe> {
    let iov: Vec<libc::iovec> = parts.iter().map(|p| iovec(p)).collect();
    let msg = msghdr(&iov);
    let sqe = opcode::SendMsgZc::new(types::Fd(fd), &msg)
        .build()
        .user_data(user_data);
    // SAFETY: `parts`, `iov` and `msg` outlive the reap below, which waits
    // for the notification (or fails the test).
    unsafe { ring.push(&sqe) }.unwrap();
    ring.reap_zc(user_data).unwrap()
}

#[rstest]
fn tcp_loopback_delivers_bytes_in_order(#[values(Family::V4, Family::V6)] family: Family) {
    let mut pair = TcpPair::new(family).unwrap();
    let mut ring = Ring::new(8).unwrap();
    let header = pattern(24, 1);
    let payload = pattern(64 * 1024, 2);
    let trailer = pattern(3, 3);
    let cqes = sendmsg_zc(
        &mut ring,
        pair.tx.as_raw_fd(),
        &[&header, &payload, &trailer],
        42,
    );
    let done = zc_completion(&cqes, 42).unwrap();
    let total = header.len() + payload.len() + trailer.len();
    assert_eq!(done.result.res, total as i32);
    let got = pair.receive(total).unwrap();
    assert_eq!(&got[..24], &header[..]);
    assert_eq!(&got[24..24 + payload.len()], &payload[..]);
    assert_eq!(&got[24 + payload.len()..], &trailer[..]);
}

#[test]
fn result_has_more_then_exactly_one_notification() {
    let mut pair = TcpPair::new(Family::V4).unwrap();
    let mut ring = Ring::new(8).unwrap();
    let data = pattern(4096, 9);
    let cqes = sendmsg_zc(&mut ring, pair.tx.as_raw_fd(), &[&data], 7);
    assert_eq!(cqes.len(), 2, "{cqes:?}");
    assert!(cqes[0].has_more() && !cqes[0].is_notif(), "{cqes:?}");
    assert!(cqes[1].is_notif() && !cqes[1].has_more(), "{cqes:?}");
    assert_eq!(cqes[1].user_data, 7);
    let done = zc_completion(&cqes, 7).unwrap();
    assert_eq!(done.result.res, 4096);
    assert_eq!(pair.receive(4096).unwrap(), data);
}

#[test]
fn af_unix_is_eopnotsupp() {
    let (tx, _rx) = UnixStream::pair().unwrap();
    let mut ring = Ring::new(8).unwrap();
    let data = pattern(100, 5);
    let cqes = sendmsg_zc(&mut ring, tx.as_raw_fd(), &[&data], 3);
    let done = zc_completion(&cqes, 3).unwrap();
    assert_eq!(done.result.res, -libc::EOPNOTSUPP, "{cqes:?}");
}
