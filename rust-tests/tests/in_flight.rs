//! Many requests at once, partial sends, and REPORT_USAGE where zero-copy
//! really happens.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use rstest::rstest;
use sendzc_iov::sys::{IORING_NOTIF_USAGE_ZC_COPIED, IORING_SEND_ZC_REPORT_USAGE};
use sendzc_iov_vm_tests::net::{udp_through_dummy, Peer, UdpPair};
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Cqe, Family, Op, RegBufs, Request, Ring, Seg,
    Transport,
};

const BUF_SIZES: [usize; 3] = [256 * 1024, 128 * 1024, 32 * 1024];

/// A datagram that names itself: sequence number in the COPY header.
fn numbered(seq: u32) -> Vec<Seg> {
    let mut header = pattern(24, seq as u8);
    header[..4].copy_from_slice(&seq.to_le_bytes());
    vec![
        Seg::Copy(header),
        Seg::Fixed {
            buf: (seq % 3) as u16,
            off: seq as usize * 7 % 20000,
            len: 300 + seq as usize % 700,
        },
        Seg::User(pattern(10 + seq as usize % 50, seq as u8)),
    ]
}

/// 2048 requests over 8 UDP sockets, all submitted before any CQE is
/// reaped: every request gets one result and then one notification, and
/// every datagram arrives intact.
#[test]
fn thousands_of_requests_in_flight_keep_the_protocol() {
    require_feature();
    const SOCKETS: usize = 8;
    const REQUESTS: u32 = 2048;
    let mut ring = Ring::new(4096).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let peers: Vec<UdpPair> = (0..SOCKETS)
        .map(|_| {
            let p = UdpPair::new(Family::V4, true).unwrap();
            nix::sys::socket::setsockopt(&p.rx, nix::sys::socket::sockopt::RcvBuf, &(4 << 20))
                .unwrap();
            p
        })
        .collect();
    let requests: Vec<Request> = (0..REQUESTS)
        .map(|seq| Request::new(numbered(seq), &bufs))
        .collect();
    for (seq, req) in requests.iter().enumerate() {
        let fd = peers[seq % SOCKETS].tx.as_raw_fd();
        let entry = req
            .sqe(Op::SendMsgZc, fd)
            .user_data(seq as u64)
            .into_entry();
        // SAFETY: `requests` outlives the reap below.
        unsafe { ring.push(&entry) }.unwrap_or_else(|_| {
            ring.ring.submit().unwrap();
            // SAFETY: as above.
            unsafe { ring.push(&entry) }.unwrap()
        });
    }
    let cqes = ring
        .reap_until(|cqes| cqes.iter().filter(|c| c.is_notif()).count() == REQUESTS as usize)
        .unwrap();
    ring.expect_no_more_cqes().unwrap();
    assert_eq!(cqes.len(), 2 * REQUESTS as usize);

    let mut by_request: HashMap<u64, Vec<Cqe>> = HashMap::new();
    for cqe in &cqes {
        by_request.entry(cqe.user_data).or_default().push(*cqe);
    }
    for (seq, req) in requests.iter().enumerate() {
        let mine = &by_request[&(seq as u64)];
        let done = zc_completion(mine, seq as u64).unwrap();
        assert_eq!(done.result.res, req.len() as i32, "request {seq}: {mine:?}");
    }
    let mut seen = vec![false; REQUESTS as usize];
    for peer in &peers {
        while peer.pending().unwrap() {
            let dgram = peer.receive().unwrap();
            let seq = u32::from_le_bytes(dgram[..4].try_into().unwrap()) as usize;
            assert_eq!(dgram, requests[seq].expected(), "datagram {seq}");
            assert!(!seen[seq], "datagram {seq} twice");
            seen[seq] = true;
        }
    }
    assert!(
        seen.iter().all(|s| *s),
        "{} datagrams missing",
        seen.iter().filter(|s| !**s).count()
    );
}

/// MSG_DONTWAIT on a full socket: the result is a prefix length and
/// exactly that prefix arrives.
#[rstest]
fn partial_send_sends_exactly_the_prefix(#[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let Peer::Tcp(mut pair) = Peer::new(Transport::Tcp, Family::V4).unwrap() else {
        unreachable!()
    };
    nix::sys::socket::setsockopt(&pair.tx, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let segs = vec![
        Seg::Copy(pattern(24, 1)),
        Seg::Fixed {
            buf: 0,
            off: 5,
            len: 200 * 1024,
        },
        Seg::Copy(pattern(24, 2)),
        Seg::Fixed {
            buf: 1,
            off: 9,
            len: 100 * 1024,
        },
    ];
    let req = Request::new(segs, &bufs);
    let mut sqe = req.sqe(op, pair.tx.as_raw_fd());
    sqe.msg_flags |= libc::MSG_DONTWAIT as u32;
    let entry = sqe.user_data(1).into_entry();
    // SAFETY: req outlives the reap below.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(1).unwrap();
    let done = zc_completion(&cqes, 1).unwrap();
    let sent = done.result.res;
    assert!(
        sent > 0 && (sent as usize) < req.len(),
        "expected a partial send, got {sent}"
    );
    assert_eq!(
        pair.receive(sent as usize).unwrap(),
        &req.expected()[..sent as usize]
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !pair.pending().unwrap(),
        "more than the reported prefix arrived"
    );
}

/// REPORT_USAGE through a dummy device: zero-copy for mixed requests,
/// "copied" once the device cannot take frags, and no report at all for a
/// request that copies everything, which has no notification.
#[rstest]
#[case::mixed_zero_copy(true, false, Some(0))]
#[case::all_copy_has_no_report(true, true, None)]
#[case::sg_off_copies(false, false, Some(IORING_NOTIF_USAGE_ZC_COPIED))]
fn report_usage_through_a_dummy_device(
    #[case] sg: bool,
    #[case] all_copy: bool,
    #[case] want: Option<u32>,
) {
    require_feature();
    // A thread of its own: the namespace change is per thread.
    std::thread::spawn(move || {
        let tx = udp_through_dummy(sg).expect("dummy device namespace");
        let mut ring = Ring::new(8).unwrap();
        let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
        let segs = if all_copy {
            vec![Seg::Copy(pattern(24, 1)), Seg::Copy(pattern(1000, 2))]
        } else {
            vec![
                Seg::Copy(pattern(24, 1)),
                Seg::Fixed {
                    buf: 0,
                    off: 0,
                    len: 1000,
                },
                Seg::Copy(pattern(24, 2)),
                Seg::Fixed {
                    buf: 1,
                    off: 100,
                    len: 1000,
                },
                Seg::User(pattern(500, 3)),
            ]
        };
        let req = Request::new(segs, &bufs);
        let mut sqe = req.sqe(Op::SendMsgZc, tx.as_raw_fd());
        sqe.ioprio |= IORING_SEND_ZC_REPORT_USAGE;
        let entry = sqe.user_data(5).into_entry();
        // SAFETY: req outlives the reap below.
        unsafe { ring.push(&entry) }.unwrap();
        let cqes = ring.reap_zc(5).unwrap();
        let done = zc_completion(&cqes, 5).unwrap();
        assert_eq!(done.result.res, req.len() as i32, "{cqes:?}");
        assert_eq!(done.notif.map(|n| n.res as u32), want, "{cqes:?}");
    })
    .join()
    .unwrap();
}
