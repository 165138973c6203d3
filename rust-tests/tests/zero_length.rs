//! Zero-length iovecs in a request with IORING_SEND_ZC_IOV_ATTR are
//! skipped, of any mode: "a header, optionally followed by data" is
//! [COPY header, FIXED of length 0] when there is no data, and that is a
//! normal request. A skipped FIXED iovec's buffer is not looked up, so its
//! index need not be registered. Only the new interface changes: without
//! attributes, IORING_RECVSEND_FIXED_BUF still fails a zero-length iovec
//! with -EFAULT, as the base kernel does.

use rstest::rstest;
use sendzc_iov::sys::io_uring_zc_iov_attr;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, Op, RegBufs, Request, Ring, Seg, Transport,
    ZcCompletion,
};

const BUF_SIZES: [usize; 2] = [64 * 1024, 16 * 1024];

fn hdr(seq: u8) -> Seg {
    Seg::Copy(pattern(24, 100 + seq))
}

fn fixed(buf: u16, off: usize, len: usize) -> Seg {
    Seg::Fixed { buf, off, len }
}

/// Sends `req` and returns its completion, checked against the protocol.
fn send(ring: &mut Ring, req: &Request, op: Op, peer: &Peer, user_data: u64) -> ZcCompletion {
    let entry = req.sqe(op, peer.fd()).user_data(user_data).into_entry();
    // SAFETY: `req` outlives this call, which returns only once every CQE
    // of the request is in (or fails the test).
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(user_data).unwrap();
    zc_completion(&cqes, user_data).unwrap()
}

/// The shapes a zero-length iovec comes in.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A header with no payload: [COPY, FIXED 0].
    HeaderOnly,
    /// A pair with data, then one without: [COPY, FIXED, COPY, FIXED 0].
    SecondPairEmpty,
    /// Every iovec FIXED in one buffer, one of them empty: the mixed path,
    /// as the registered buffer send fails a zero-length iovec.
    UniformFixed,
    /// Zero-length iovecs of every mode between data.
    EveryMode,
}

impl Shape {
    fn segs(self) -> Vec<Seg> {
        match self {
            Shape::HeaderOnly => vec![hdr(0), fixed(0, 0, 0)],
            Shape::SecondPairEmpty => vec![hdr(0), fixed(0, 100, 3000), hdr(1), fixed(1, 0, 0)],
            Shape::UniformFixed => vec![fixed(0, 0, 500), fixed(0, 600, 0), fixed(0, 700, 800)],
            Shape::EveryMode => vec![
                hdr(0),
                Seg::Copy(Vec::new()),
                fixed(1, 5, 0),
                Seg::User(Vec::new()),
                fixed(0, 7, 1000),
                Seg::User(pattern(300, 9)),
            ],
        }
    }
}

#[rstest]
fn zero_length_iovecs_are_skipped(
    #[values(
        Shape::HeaderOnly,
        Shape::SecondPairEmpty,
        Shape::UniformFixed,
        Shape::EveryMode
    )]
    shape: Shape,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let mut peer = Peer::new(transport, Family::V6).unwrap();
    let req = Request::new(shape.segs(), &bufs);
    let done = send(&mut ring, &req, op, &peer, 1);
    assert_eq!(done.result.res, req.len() as i32, "{shape:?}: {done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
    assert!(!peer.pending().unwrap(), "{shape:?}: more bytes than sent");
}

/// A skipped FIXED iovec names no buffer the kernel looks at: an index
/// nothing is registered at is not an error when the length is zero, as
/// the only buffer of a request or after a payload from another.
#[rstest]
fn an_empty_fixed_iovec_needs_no_registered_buffer(
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
    #[values(false, true)] after_a_payload: bool,
) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let mut peer = Peer::new(transport, Family::V4).unwrap();
    let mut segs = vec![hdr(3), fixed(0, 0, 0)];
    if after_a_payload {
        segs.splice(0..0, [hdr(4), fixed(1, 10, 1000)]);
    }
    let last = segs.len() - 1;
    let mut req = Request::new(segs, &bufs);
    req.attrs[last] = io_uring_zc_iov_attr::fixed(999);
    req.sync_msg();
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer, 2);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// The registered buffer send without attributes is unchanged.
#[test]
fn fixed_buf_without_attributes_still_fails_an_empty_iovec() {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
    let req = Request::new(vec![fixed(0, 0, 100), fixed(0, 200, 0)], &bufs);
    let sqe = req.sqe_fixed_buf(Op::SendMsgZc, peer.fd()).unwrap();
    let entry = sqe.user_data(3).into_entry();
    // SAFETY: `req` outlives the reap, which waits for every CQE.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(3).unwrap();
    let done = zc_completion(&cqes, 3).unwrap();
    assert_eq!(done.result.res, -libc::EFAULT, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert!(!peer.pending().unwrap());
}
