//! A copy mask instead of an attribute array: IORING_SEND_ZC_IOV_ATTR
//! with IORING_RECVSEND_FIXED_BUF reads sqe->zc_copy_mask, where iovec i
//! is COPY if bit i is set and FIXED in sqe->buf_index if not. What it
//! rejects, and the cases where it must behave as the attributes it
//! stands for. Generated requests: prop_per_iovec.rs (`*copy_mask*`);
//! UDP_SEGMENT trains: udp_frag_budget.rs.

use rstest::rstest;
use sendzc_iov::sys::IORING_ZC_IOV_COPY_MAX;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, Op, RegBufs, Request, Ring, Seg, Transport,
    ZcCompletion,
};

const BUF_SIZES: [usize; 2] = [64 * 1024, 16 * 1024];

fn hdr(seed: u8) -> Seg {
    Seg::Copy(pattern(24, seed))
}

fn fixed(buf: u16, off: usize, len: usize) -> Seg {
    Seg::Fixed { buf, off, len }
}

/// What every test here starts from: a ring with BUF_SIZES registered,
/// and a peer over `transport`.
fn setup(transport: Transport, family: Family) -> (Ring, RegBufs, Peer) {
    require_feature();
    let ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let peer = Peer::new(transport, family).unwrap();
    (ring, bufs, peer)
}

/// Sends `req` as mask `mask` over buffer `buf`, and returns its
/// completion, checked against the protocol (F_MORE if and only if a
/// notification follows).
fn send(
    ring: &mut Ring,
    req: &Request,
    op: Op,
    peer: &Peer,
    (buf, mask): (u16, u64),
) -> ZcCompletion {
    let entry = req
        .sqe(op, peer.fd())
        .copy_mask(buf, mask)
        .user_data(5)
        .into_entry();
    // SAFETY: `req` outlives this call, which returns only once every CQE
    // of the request is in (or fails the test).
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(5).unwrap();
    zc_completion(&cqes, 5).unwrap()
}

/// A rejected request: the error, no notification, nothing on the wire.
fn assert_rejected(done: &ZcCompletion, errno: i32, peer: &Peer) {
    assert_eq!(done.result.res, -errno, "{done:?}");
    assert!(done.notif.is_none(), "rejected at prep: {done:?}");
    assert!(!peer.pending().unwrap(), "bytes reached the receiver");
}

#[rstest]
fn a_bit_past_the_last_iovec_is_einval(
    #[values(0b100, 1 << 63, u64::MAX)] mask: u64,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    let (mut ring, bufs, peer) = setup(Transport::UdpConnected, Family::V4);
    let req = Request::new(vec![hdr(1), fixed(0, 100, 1000)], &bufs);
    let done = send(&mut ring, &req, op, &peer, (0, mask));
    assert_rejected(&done, libc::EINVAL, &peer);
}

/// 64 iovecs are what a mask has bits for; 65, whatever the mask, are
/// for an attribute array.
#[rstest]
#[case::sixty_four(64, true)]
#[case::sixty_five(65, false)]
fn a_mask_takes_at_most_64_iovecs(#[case] nr: usize, #[case] accepted: bool) {
    let (mut ring, bufs, mut peer) = setup(Transport::Tcp, Family::V4);
    let segs = (0..nr).map(|i| fixed(0, i * 7, 5)).collect();
    let req = Request::new(segs, &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer, (0, 1));
    if accepted {
        assert_eq!(done.result.res, req.len() as i32, "{done:?}");
        assert!(done.notif.is_some(), "{done:?}");
        assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
    } else {
        assert_rejected(&done, libc::EINVAL, &peer);
    }
}

/// Every iovec COPY: a copying send, no notification, and no buffer
/// looked up (nothing is registered at index 9).
#[rstest]
fn an_all_copy_mask_is_a_copying_send(
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    let (mut ring, bufs, mut peer) = setup(transport, Family::V6);
    let req = Request::new(vec![hdr(2), Seg::Copy(pattern(3000, 4))], &bufs);
    let done = send(&mut ring, &req, op, &peer, (9, 0b11));
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(done.notif.is_none(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// A zero-copied iovec's buffer is looked up at issue: an index nothing
/// is registered at fails the request then, with its notification, as a
/// FIXED_BUF send does.
#[test]
fn an_unregistered_buffer_is_efault_at_issue() {
    let (mut ring, bufs, peer) = setup(Transport::UdpConnected, Family::V4);
    let req = Request::new(vec![hdr(3), fixed(0, 0, 100)], &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer, (9, 0b01));
    assert_eq!(done.result.res, -libc::EFAULT, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert!(!peer.pending().unwrap());
}

/// Empty iovecs are skipped with their buffer: when they are all the
/// FIXED ones, the buffer is not looked up, and an index nothing is
/// registered at sends the headers, as with attributes (zero_length.rs).
#[rstest]
fn the_buffer_of_empty_iovecs_alone_is_not_looked_up(
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
) {
    let (mut ring, bufs, mut peer) = setup(transport, Family::V4);
    let req = Request::new(vec![hdr(7), fixed(0, 0, 0), hdr(8)], &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer, (9, 0b101));
    assert_eq!(done.result.res, 48, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert_eq!(peer.receive(48).unwrap(), req.expected());
    assert!(!peer.pending().unwrap());
}

/// A FIXED iovec that runs past the end of its buffer fails the request
/// at issue, with its notification, as with FIXED_BUF.
#[rstest]
fn a_range_past_its_buffer_is_efault(#[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op) {
    let (mut ring, bufs, peer) = setup(Transport::UdpConnected, Family::V4);
    let end = BUF_SIZES[1];
    let mut req = Request::new(vec![hdr(6), fixed(1, end - 10, 10)], &bufs);
    req.iov[1].iov_len = 20;
    req.sync_msg();
    let done = send(&mut ring, &req, op, &peer, (1, 0b01));
    assert_eq!(done.result.res, -libc::EFAULT, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert!(!peer.pending().unwrap());
}

/// Zero-length iovecs are skipped, a FIXED one whatever its address.
#[rstest]
fn empty_iovecs_are_skipped(
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
) {
    let (mut ring, bufs, mut peer) = setup(transport, Family::V4);
    let segs = vec![
        hdr(4),
        fixed(1, 0, 0),
        Seg::Copy(Vec::new()),
        fixed(1, 10, 2000),
        fixed(1, 0, 0),
    ];
    let mut req = Request::new(segs, &bufs);
    // outside every registered buffer: never looked at
    req.iov[4].iov_base = 8 as *mut libc::c_void;
    req.sync_msg();
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer, (1, 0b00101));
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
    assert!(!peer.pending().unwrap());
}

/// More than a page of COPY goes the attributes' way, with their cap:
/// IORING_ZC_IOV_COPY_MAX bytes, -E2BIG beyond.
#[rstest]
#[case::two_pages(8192, None)]
#[case::at_the_cap(IORING_ZC_IOV_COPY_MAX as usize, None)]
#[case::past_the_cap(IORING_ZC_IOV_COPY_MAX as usize + 1, Some(libc::E2BIG))]
fn copies_over_a_page_keep_the_cap(#[case] copied: usize, #[case] error: Option<i32>) {
    let (mut ring, bufs, peer) = setup(Transport::Tcp, Family::V4);
    let half = copied / 2;
    let segs = vec![
        Seg::Copy(pattern(half, 5)),
        fixed(0, 300, 5000),
        Seg::Copy(pattern(copied - half, 6)),
    ];
    let req = Request::new(segs, &bufs);
    let Peer::Tcp(pair) = &peer else {
        unreachable!("a TCP peer")
    };
    // more than the socket buffers hold: read while the ring runs
    let reader = error
        .is_none()
        .then(|| pair.receive_in_background(req.len()));
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer, (0, 0b101));
    match (error, reader) {
        (None, Some(reader)) => {
            assert_eq!(done.result.res, req.len() as i32, "{done:?}");
            assert!(done.notif.is_some(), "{done:?}");
            assert!(reader.join().unwrap().unwrap() == req.expected());
        }
        (Some(errno), _) => {
            assert_eq!(done.result.res, -errno, "{done:?}");
            assert!(!peer.pending().unwrap());
        }
        (None, None) => unreachable!(),
    }
}

/// COPY lengths whose sum wraps around: -EINVAL, as from the attributes
/// the mask stands for, and never a bounce fragment sized by the wrapped
/// sum. Each length is one iovec_from_user() accepts (at most SSIZE_MAX).
#[rstest]
fn copied_lengths_that_wrap_are_einval(#[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op) {
    let (mut ring, bufs, peer) = setup(Transport::UdpConnected, Family::V4);
    let mut req = Request::new(vec![hdr(1), hdr(2), hdr(3), fixed(0, 0, 100)], &bufs);
    // 2 * (2^63 - 1) + 2 = 2^64: the copied bytes sum to 0 in a u64
    req.iov[0].iov_len = isize::MAX as usize;
    req.iov[1].iov_len = isize::MAX as usize;
    req.iov[2].iov_len = 2;
    req.sync_msg();
    let done = send(&mut ring, &req, op, &peer, (0, 0b0111));
    assert_eq!(done.result.res, -libc::EINVAL, "{done:?}");
    assert!(!peer.pending().unwrap(), "bytes reached the receiver");
}
