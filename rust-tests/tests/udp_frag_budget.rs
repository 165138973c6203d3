//! A datagram is one skb, and a mixed request's pieces are its frags: a
//! UDP_SEGMENT train of 16 pairs of a COPY header and a FIXED payload has
//! 32 pieces, more than MAX_SKB_FRAGS (17 here). The kernel then copies the
//! whole request into its bounce cache, where the copies merge into a few
//! frags, and sends it as it would have: 16 datagrams with the right bytes.
//! REPORT_USAGE says so (IORING_NOTIF_USAGE_ZC_COPIED). Trains of 16 to 40
//! segments are what QUIC stacks send.

use std::os::fd::AsRawFd;

use rstest::rstest;
use sendzc_iov::sqe::SendSqe;
use sendzc_iov::sys::{IORING_NOTIF_USAGE_ZC_COPIED, IORING_SEND_ZC_REPORT_USAGE};
use sendzc_iov_vm_tests::net::{udp_through_dummy, Peer};
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, Op, RegBufs, Request, Ring, Seg, Transport,
    ZcCompletion,
};

const HEADER: usize = 24;
const PAYLOAD: usize = 1000;
/// One pair a segment.
const GSO: usize = HEADER + PAYLOAD;
const BUF_SIZES: [usize; 2] = [64 * 1024, 48 * 1024];

fn set_udp_segment(fd: i32, gso: usize) {
    let gso = gso as libc::c_int;
    // SAFETY: a valid int option value for a socket the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&gso as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}

/// `pairs` pairs of a COPY header and a FIXED payload from alternating
/// buffers, each payload within a page: one frag.
fn train(pairs: usize, bufs: &RegBufs) -> Request {
    train_over(pairs, 2, bufs)
}

/// [`train`] with its payloads over `nr_bufs` buffers.
fn train_over(pairs: usize, nr_bufs: usize, bufs: &RegBufs) -> Request {
    let mut segs = Vec::new();
    for i in 0..pairs {
        segs.push(Seg::Copy(pattern(HEADER, i as u8)));
        segs.push(Seg::Fixed {
            buf: (i % nr_bufs) as u16,
            off: 4096 * i % (40 * 1024) + 100,
            len: PAYLOAD,
        });
    }
    Request::new(segs, bufs)
}

fn send(ring: &mut Ring, req: &Request, op: Op, fd: i32, report: bool) -> ZcCompletion {
    send_sqe(ring, req.sqe(op, fd), report)
}

/// Sends `sqe`, whose request outlives the call.
fn send_sqe(ring: &mut Ring, mut sqe: SendSqe, report: bool) -> ZcCompletion {
    if report {
        sqe.ioprio |= IORING_SEND_ZC_REPORT_USAGE;
    }
    let entry = sqe.user_data(1).into_entry();
    // SAFETY: `req` and the buffers outlive the reap, which waits for the
    // notification.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(1).unwrap();
    zc_completion(&cqes, 1).unwrap()
}

#[rstest]
fn a_udp_segment_train_goes_out_whole(
    #[values(8, 16, 40)] pairs: usize,
    #[values(Family::V4, Family::V6)] family: Family,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    check_train(pairs, family, op, false);
}

/// The same trains with their payloads in one buffer, sent as a copy mask
/// (at most 64 iovecs: 32 pairs).
#[rstest]
fn a_copy_mask_train_goes_out_whole(
    #[values(8, 16, 32)] pairs: usize,
    #[values(Family::V4, Family::V6)] family: Family,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    check_train(pairs, family, op, true);
}

/// Sends a train of `pairs` with attributes over two buffers, or as a
/// copy mask over one if `masked`, and checks its datagrams one by one.
fn check_train(pairs: usize, family: Family, op: Op, masked: bool) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let peer = Peer::new(Transport::UdpConnected, family).unwrap();
    let Peer::Udp(udp) = &peer else {
        unreachable!()
    };
    set_udp_segment(udp.tx.as_raw_fd(), GSO);
    let fd = udp.tx.as_raw_fd();
    let (req, sqe) = if masked {
        let req = train_over(pairs, 1, &bufs);
        let sqe = req.sqe_masked(op, fd).expect("one buffer");
        (req, sqe)
    } else {
        let req = train(pairs, &bufs);
        let sqe = req.sqe(op, fd);
        (req, sqe)
    };
    let done = send_sqe(&mut ring, sqe, false);
    assert_eq!(done.result.res, req.len() as i32, "{pairs} pairs: {done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    for (i, segment) in req.expected().chunks(GSO).enumerate() {
        assert!(
            udp.receive().unwrap() == segment,
            "{pairs} pairs: datagram {i} differs"
        );
    }
    assert!(!udp.pending().unwrap(), "{pairs} pairs: more datagrams");
}

/// Through a dummy device nothing else copies: a train that fits its frags
/// is zero-copy, one that does not is reported copied.
#[rstest]
#[case::fits(8, 0)]
#[case::copied_to_fit(16, IORING_NOTIF_USAGE_ZC_COPIED)]
#[case::forty_copied_to_fit(40, IORING_NOTIF_USAGE_ZC_COPIED)]
fn report_usage_says_whether_the_train_was_copied(#[case] pairs: usize, #[case] usage: u32) {
    require_feature();
    // A thread of its own: the namespace change is per thread.
    std::thread::spawn(move || {
        let tx = udp_through_dummy(true).expect("dummy device namespace");
        set_udp_segment(tx.as_raw_fd(), GSO);
        let mut ring = Ring::new(8).unwrap();
        let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
        for masked in [false, true] {
            let req = train_over(pairs, if masked { 1 } else { 2 }, &bufs);
            let sqe = match masked {
                // 40 pairs are more iovecs than a mask has bits
                true if pairs <= 32 => req.sqe_masked(Op::SendMsgZc, tx.as_raw_fd()).unwrap(),
                true => continue,
                false => req.sqe(Op::SendMsgZc, tx.as_raw_fd()),
            };
            let done = send_sqe(&mut ring, sqe, true);
            assert_eq!(done.result.res, req.len() as i32, "{done:?}");
            let notif = done.notif.expect("a mixed request has a notification");
            assert_eq!(
                notif.res as u32, usage,
                "{pairs} pairs, masked {masked}: {notif:?}"
            );
        }
    })
    .join()
    .unwrap();
}

/// What the single-datagram tests start from: a ring with BUF_SIZES
/// registered, and a connected UDP peer.
fn setup() -> (Ring, RegBufs, Peer) {
    require_feature();
    let ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let peer = Peer::new(Transport::UdpConnected, Family::V4).unwrap();
    (ring, bufs, peer)
}

/// Forty payloads of 10 bytes, none next to the one before it in memory:
/// one datagram of 41 frags, copied to fit.
#[test]
fn a_datagram_of_many_pieces_is_copied_to_fit() {
    let (mut ring, bufs, peer) = setup();
    let Peer::Udp(udp) = &peer else {
        unreachable!()
    };
    let mut segs = vec![Seg::Copy(pattern(HEADER, 7))];
    segs.extend((0..40).map(|i| Seg::Fixed {
        buf: (i % 2) as u16,
        // The smaller buffer has 12 pages.
        off: 4096 * (i / 2 % 12),
        len: 10,
    }));
    let req = Request::new(segs, &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, udp.tx.as_raw_fd(), false);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(udp.receive().unwrap() == req.expected());
    assert!(!udp.pending().unwrap());
}

/// Forty FIXED pieces of one buffer, none next to the one before it: with
/// attributes, which send all FIXED in one buffer as a copy mask, the
/// datagram is copied to fit; the same request as a FIXED_BUF send
/// without attributes fails with -EMSGSIZE, as it did before the series.
#[test]
fn an_all_fixed_datagram_of_many_pieces_is_copied_to_fit() {
    let (mut ring, bufs, peer) = setup();
    let Peer::Udp(udp) = &peer else {
        unreachable!()
    };
    let segs = (0..40)
        .map(|i| Seg::Fixed {
            buf: 0,
            off: 1500 * i,
            len: 10,
        })
        .collect();
    let req = Request::new(segs, &bufs);
    let fd = udp.tx.as_raw_fd();
    let done = send(&mut ring, &req, Op::SendMsgZc, fd, false);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(udp.receive().unwrap() == req.expected());

    let fixed_buf = req.sqe_fixed_buf(Op::SendMsgZc, fd).unwrap();
    let done = send_sqe(&mut ring, fixed_buf, false);
    assert_eq!(done.result.res, -libc::EMSGSIZE, "{done:?}");
    assert!(!udp.pending().unwrap());
}
