//! A request whose iovecs are all IORING_ZC_IOV_COPY zero-copies nothing,
//! so it has nothing to notify about: it completes with one CQE, without
//! IORING_CQE_F_MORE, whether it succeeds or fails, however it is issued.
//! This is what makes a header-only request cost what a SENDMSG costs
//! (liburing issue 1191). The rule applications rely on still holds: a
//! notification follows if and only if the result has F_MORE.

use io_uring::{opcode, squeue, types};
use rstest::rstest;
use sendzc_iov::sys;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, Op, RegBufs, Request, Ring, Seg, Transport,
    ZcCompletion,
};

const IOSQE_ASYNC: u8 = 1 << 4;
const IOSQE_IO_LINK: u8 = 1 << 2;

/// How the request reaches the socket.
#[derive(Clone, Copy, Debug)]
enum Issue {
    Inline,
    /// From an io-wq worker, whose completion path defers the notification.
    Async,
    /// Through poll first, completing from task work.
    PollFirst,
}

/// A header, and with `iovecs` 2 a short body after it: one attribute is
/// read on its own, more by the look at the whole array.
fn header_request(peer: &Peer, ring: &Ring, iovecs: usize) -> Request {
    let bufs = RegBufs::register(ring, &[4096]).unwrap();
    let mut segs = vec![Seg::Copy(pattern(24, 1)), Seg::Copy(pattern(1000, 2))];
    segs.truncate(iovecs);
    let req = Request::new(segs, &bufs);
    match peer.dest() {
        Some(dest) => req.to(dest),
        None => req,
    }
}

/// Submits `entry` and returns its CQEs, checked against the protocol.
fn complete(ring: &mut Ring, entry: squeue::Entry, user_data: u64) -> ZcCompletion {
    // SAFETY: the caller's request outlives this call, which returns only
    // once every CQE of the request is in (or fails the test).
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(user_data).unwrap();
    zc_completion(&cqes, user_data).unwrap()
}

/// Sends `req` by SENDMSG_ZC, which must fail with `errno` in one CQE and
/// send nothing.
fn failed_alone(ring: &mut Ring, req: &Request, user_data: u64, errno: i32, peer: &Peer) {
    let entry = req
        .sqe(Op::SendMsgZc, peer.fd())
        .user_data(user_data)
        .into_entry();
    let done = complete(ring, entry, user_data);
    assert_eq!(done.result.res, -errno, "{done:?}");
    assert!(done.notif.is_none(), "{done:?}");
    assert!(
        !peer.pending().unwrap(),
        "a failed request put bytes on the wire"
    );
}

#[rstest]
fn one_cqe_without_more(
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
    #[values(Transport::Tcp, Transport::UdpConnected, Transport::UdpTo)] transport: Transport,
    #[values(Issue::Inline, Issue::Async, Issue::PollFirst)] issue: Issue,
    #[values(1, 2)] iovecs: usize,
) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let mut peer = Peer::new(transport, Family::V6).unwrap();
    let req = header_request(&peer, &ring, iovecs);
    let mut sqe = req.sqe(op, peer.fd());
    match issue {
        Issue::Inline => {}
        Issue::Async => sqe.flags |= IOSQE_ASYNC,
        Issue::PollFirst => sqe.ioprio |= sys::IORING_RECVSEND_POLL_FIRST,
    }
    let done = complete(&mut ring, sqe.user_data(3).into_entry(), 3);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(!done.result.has_more(), "{issue:?}: {done:?}");
    assert!(done.notif.is_none(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// With nothing to notify, there is nothing to report.
#[test]
fn report_usage_has_no_notification_to_report_in() {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let mut peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
    let req = header_request(&peer, &ring, 2);
    let mut sqe = req.sqe(Op::SendMsgZc, peer.fd());
    sqe.ioprio |= sys::IORING_SEND_ZC_REPORT_USAGE;
    let done = complete(&mut ring, sqe.user_data(4).into_entry(), 4);
    assert_eq!(done.result.res, req.len() as i32);
    assert!(done.notif.is_none(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// Errors after the attributes are read keep the rule: no F_MORE, since
/// no notification follows.
#[test]
fn an_error_comes_without_more_either() {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
    let mut req = header_request(&peer, &ring, 2);
    req.iov[1].iov_base = 0x1000 as *mut libc::c_void;
    failed_alone(&mut ring, &req, 5, libc::EFAULT, &peer);
}

/// Cancelled by a failed link head: -ECANCELED, still one CQE.
#[test]
fn a_cancelled_request_comes_without_more() {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
    let req = header_request(&peer, &ring, 2);
    let head = opcode::PollAdd::new(types::Fd(-1), libc::POLLIN as u32)
        .build()
        .flags(squeue::Flags::from_bits_truncate(IOSQE_IO_LINK))
        .user_data(1);
    // SAFETY: a poll on no file points at no memory.
    unsafe { ring.push(&head) }.unwrap();
    failed_alone(&mut ring, &req, 6, libc::ECANCELED, &peer);
}

/// IORING_ZC_IOV_COPY_MAX holds for every request, all COPY included, so
/// that the cap does not depend on what else the request sends.
#[rstest]
#[case::at_the_cap(sys::IORING_ZC_IOV_COPY_MAX as usize, 0)]
#[case::over_the_cap(sys::IORING_ZC_IOV_COPY_MAX as usize + 1, libc::E2BIG)]
fn the_copy_cap_holds_here_too(#[case] copied: usize, #[case] errno: i32) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let mut peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
    let bufs = RegBufs::register(&ring, &[4096]).unwrap();
    let req = Request::new(
        vec![
            Seg::Copy(pattern(24, 1)),
            Seg::Copy(pattern(copied - 24, 2)),
        ],
        &bufs,
    );
    if errno != 0 {
        failed_alone(&mut ring, &req, 7, errno, &peer);
        return;
    }
    let entry = req.sqe(Op::SendMsgZc, peer.fd()).user_data(8).into_entry();
    let done = complete(&mut ring, entry, 8);
    assert_eq!(done.result.res, copied as i32, "{done:?}");
    assert!(done.notif.is_none(), "{done:?}");
    assert_eq!(peer.receive(copied).unwrap(), req.expected());
}

/// A field of a COPY attribute that must be zero.
#[derive(Clone, Copy, Debug)]
enum Field {
    Flags,
    Resv,
    BufIndex,
}

/// The kernel picks an all-COPY request out by a look at its attributes
/// before it reads them; what the look does not accept must still be
/// rejected by the full read: -EINVAL in one CQE, wherever the bad
/// attribute is (the look starts from the last), and for a header alone,
/// whose one attribute is read without the look.
#[rstest]
#[case::alone(1, 0)]
#[case::first_of_two(2, 0)]
#[case::last_of_two(2, 1)]
fn a_bad_copy_attribute_fails_the_request(
    #[case] iovecs: usize,
    #[case] at: usize,
    #[values(Field::Flags, Field::Resv, Field::BufIndex)] field: Field,
) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
    let mut req = header_request(&peer, &ring, iovecs);
    match field {
        Field::Flags => req.attrs[at].flags = 1,
        Field::Resv => req.attrs[at].resv = 1,
        Field::BufIndex => req.attrs[at].buf_index = 1,
    }
    failed_alone(&mut ring, &req, 9, libc::EINVAL, &peer);
}
