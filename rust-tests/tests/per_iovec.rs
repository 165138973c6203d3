//! IORING_SEND_ZC_IOV_ATTR on the patched kernel: per-iovec copy, zero-copy
//! from user memory, and zero-copy from any of several registered buffers.
//!
//! Every test checks the bytes at the receiver and the CQE protocol (one
//! result with F_MORE, then exactly one notification).

use rstest::rstest;
use sendzc_iov::sys::{self, io_uring_zc_iov_attr};
use sendzc_iov::{probe, sqe::SendSqe};
use sendzc_iov_vm_tests::net::{Peer, TcpPair};
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, Op, RegBufs, Request, Ring, Seg, Transport,
    ZcCompletion,
};

#[test]
fn feature_bit_matches_the_series() {
    let expect = match std::env::var("SENDZC_EXPECT_FEATURE").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        other => panic!("SENDZC_EXPECT_FEATURE must be 0 or 1 (set by xtask), got {other:?}"),
    };
    assert_eq!(probe::has_iov_attr().unwrap(), expect);
}

/// Submits `sqe` and returns its checked completion.
fn submit(ring: &mut Ring, sqe: SendSqe, user_data: u64) -> ZcCompletion {
    let entry = sqe.user_data(user_data).into_entry();
    // SAFETY: callers keep the request's memory alive until this returns,
    // and it returns only after the notification (or fails the test).
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(user_data).unwrap();
    zc_completion(&cqes, user_data).unwrap()
}

fn send(ring: &mut Ring, req: &Request, op: Op, peer: &Peer) -> ZcCompletion {
    submit(ring, req.sqe(op, peer.fd()), 1)
}

fn hdr(seq: u8) -> Seg {
    Seg::Copy(pattern(24, 200 + seq))
}

/// Header COPY iovecs, payloads from three registered buffers (unaligned,
/// page-crossing ranges) and from user memory.
fn mixed_segments(transport: Transport) -> Vec<Seg> {
    match transport {
        Transport::Tcp => vec![
            hdr(0),
            Seg::Fixed {
                buf: 0,
                off: 100,
                len: 64 * 1024,
            },
            hdr(1),
            Seg::Fixed {
                buf: 1,
                off: 4095,
                len: 20000,
            },
            hdr(2),
            Seg::Fixed {
                buf: 2,
                off: 0,
                len: 1,
            },
            Seg::User(pattern(10000, 9)),
            Seg::Copy(pattern(3, 10)),
        ],
        // One datagram: keep it within MAX_SKB_FRAGS bvecs.
        _ => vec![
            hdr(0),
            Seg::Fixed {
                buf: 0,
                off: 10,
                len: 3000,
            },
            hdr(1),
            Seg::Fixed {
                buf: 1,
                off: 4000,
                len: 1000,
            },
            hdr(2),
            Seg::Fixed {
                buf: 2,
                off: 0,
                len: 512,
            },
            Seg::User(pattern(700, 11)),
        ],
    }
}

const BUF_SIZES: [usize; 3] = [256 * 1024, 64 * 1024, 8 * 1024];

/// A ring with buffers of [`BUF_SIZES`] registered, and a peer to send to.
fn setup(transport: Transport, family: Family) -> (Ring, RegBufs, Peer) {
    let ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    (ring, bufs, Peer::new(transport, family).unwrap())
}

fn request_for(segs: Vec<Seg>, bufs: &RegBufs, peer: &Peer) -> Request {
    let req = Request::new(segs, bufs);
    match peer.dest() {
        Some(dest) => req.to(dest),
        None => req,
    }
}

#[rstest]
fn mixed_request_from_three_buffers(
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
    #[values(Transport::Tcp, Transport::UdpConnected, Transport::UdpTo)] transport: Transport,
    #[values(Family::V4, Family::V6)] family: Family,
) {
    require_feature();
    let (mut ring, bufs, mut peer) = setup(transport, family);
    let req = request_for(mixed_segments(transport), &bufs, &peer);

    let done = send(&mut ring, &req, op, &peer);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
    assert!(
        !peer.pending().unwrap(),
        "more than one datagram or extra bytes"
    );
}

/// Header and payload pairs, the payload of pair i in buffer `order[i]`.
fn pairs_in(order: &[u16]) -> Vec<Seg> {
    order
        .iter()
        .enumerate()
        .flat_map(|(i, &buf)| {
            let payload = Seg::Fixed {
                buf,
                off: 97 * i,
                len: 1000,
            };
            [hdr(i as u8), payload]
        })
        .collect()
}

/// Attributes whose FIXED iovecs are in up to four buffers are sent as a
/// copy mask over those buffers; in five, they are read as an array. Either
/// way every payload comes from its own buffer: in order, out of order,
/// back to a buffer seen before, and past the 32nd iovec.
#[rstest]
#[case::one_buffer(&[0])]
#[case::four_buffers(&[0, 1, 2, 3])]
#[case::four_out_of_order(&[2, 0, 2, 3, 1, 1, 0])]
#[case::four_past_32_iovecs(&[3, 1, 0, 2, 1, 3, 2, 0, 0, 1, 3, 2, 2, 1, 0, 3, 1, 2, 3, 0])]
#[case::five_buffers(&[0, 1, 2, 3, 4])]
fn pairs_over_several_buffers(
    #[case] order: &[u16],
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &[8 * 1024; 5]).unwrap();
    let mut peer = Peer::new(transport, Family::V4).unwrap();
    let req = request_for(pairs_in(order), &bufs, &peer);

    let done = send(&mut ring, &req, op, &peer);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
    assert!(!peer.pending().unwrap(), "more bytes than sent");
}

/// Every buffer of a request is looked up at issue, the one of its last
/// payload (which the kernel's look meets first) and the others: nothing
/// registered at either index fails the request with -EFAULT.
#[rstest]
fn an_unregistered_buffer_among_several_is_efault(
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
    #[values(1, 3)] unregistered: usize,
) {
    require_feature();
    let (mut ring, bufs, peer) = setup(transport, Family::V4);
    let mut req = request_for(pairs_in(&[0, 1]), &bufs, &peer);
    req.attrs[unregistered] = io_uring_zc_iov_attr::fixed(99);
    req.sync_msg();

    let done = send(&mut ring, &req, Op::SendMsgZc, &peer);
    assert_eq!(done.result.res, -libc::EFAULT, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert!(!peer.pending().unwrap(), "bytes reached the receiver");
}

/// Attributes are checked past a second buffer too: an invalid one in
/// front of a payload from another buffer fails the request at prep, with
/// no notification, as it does anywhere else.
#[rstest]
#[case::resv(|a: &mut io_uring_zc_iov_attr| a.resv = 1)]
#[case::mode(|a: &mut io_uring_zc_iov_attr| a.mode = 3)]
#[case::flags(|a: &mut io_uring_zc_iov_attr| a.flags = 1)]
fn an_invalid_attribute_before_a_second_buffer_is_einval(
    #[case] spoil: fn(&mut io_uring_zc_iov_attr),
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    require_feature();
    let (mut ring, bufs, peer) = setup(Transport::Tcp, Family::V4);
    let mut req = request_for(pairs_in(&[0, 1]), &bufs, &peer);
    spoil(&mut req.attrs[0]);
    req.sync_msg();

    let done = send(&mut ring, &req, op, &peer);
    assert_eq!(done.result.res, -libc::EINVAL, "{done:?}");
    assert!(done.notif.is_none(), "{done:?}");
    assert!(!peer.pending().unwrap(), "bytes reached the receiver");
}

/// `req` was sent whole: its length in the result, a notification unless
/// it copies everything (see all_copy.rs), and its bytes at `peer`.
fn sent_whole(done: &ZcCompletion, req: &Request, peer: &mut Peer) {
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    let copies_all = req.segs.iter().all(|s| matches!(s, Seg::Copy(_)));
    assert_eq!(done.notif.is_some(), !copies_all, "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// The two words of `attr` as it lies in memory (little-endian).
fn words_of(attr: &io_uring_zc_iov_attr) -> [u32; 2] {
    let word = u32::from(attr.mode) | u32::from(attr.flags) << 8 | u32::from(attr.buf_index) << 16;
    [word, attr.resv]
}

/// The kernel reads an attribute as one 8-byte word where it can, but the
/// struct's own alignment is 4: an array 4 bytes past an 8-byte boundary
/// is as valid, and is sent the same, whichever way the request goes (a
/// header alone, the look's all-COPY, a copy mask in one buffer and in
/// two, the array's USER).
#[rstest]
#[case::header_alone(vec![hdr(0)])]
#[case::headers(vec![hdr(0), hdr(1)])]
#[case::header_and_payload(vec![hdr(0), Seg::Fixed { buf: 1, off: 3, len: 5000 }])]
#[case::pairs_in_two_buffers(pairs_in(&[0, 1]))]
#[case::header_and_user(vec![hdr(0), Seg::User(pattern(5000, 2))])]
fn attributes_aligned_as_their_struct_are_read(
    #[case] segs: Vec<Seg>,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    require_feature();
    let (mut ring, bufs, mut peer) = setup(Transport::Tcp, Family::V4);
    let req = Request::new(segs, &bufs);
    let mut words = vec![0u32; 2 * req.attrs.len() + 1];
    let start = usize::from((words.as_ptr() as usize).is_multiple_of(8));
    for (i, attr) in req.attrs.iter().enumerate() {
        words[start + 2 * i..start + 2 * i + 2].copy_from_slice(&words_of(attr));
    }
    let attrs = words[start..].as_ptr() as *const io_uring_zc_iov_attr;
    assert_eq!(attrs as usize % 8, 4);

    let done = submit(&mut ring, req.sqe(op, peer.fd()).iov_attrs(attrs), 1);
    sent_whole(&done, &req, &mut peer);
}

/// 65 iovecs, one more than a copy mask holds: such attributes are read as
/// an array, not sent as a mask.
fn past_a_mask(seg: impl Fn(usize) -> Seg) -> Vec<Seg> {
    (0..65).map(seg).collect()
}

/// Requests whose iovecs share one attribute, including ones that map onto
/// today's paths (all user, all copy, all in one buffer), with few iovecs
/// and with more than a copy mask holds. Only a request that copies
/// everything has no notification (see all_copy.rs).
#[rstest]
#[case::all_copy(vec![Seg::Copy(pattern(24, 1)), Seg::Copy(pattern(5000, 2))])]
#[case::all_user(vec![Seg::User(pattern(24, 1)), Seg::User(pattern(5000, 2))])]
#[case::all_fixed_one_buffer(vec![
    Seg::Fixed { buf: 1, off: 0, len: 24 },
    Seg::Fixed { buf: 1, off: 5000, len: 30000 },
])]
#[case::all_fixed_two_buffers(vec![
    Seg::Fixed { buf: 0, off: 7, len: 24 },
    Seg::Fixed { buf: 2, off: 1, len: 8000 },
])]
#[case::all_copy_past_a_mask(past_a_mask(|i| Seg::Copy(pattern(3, i as u8))))]
#[case::all_fixed_past_a_mask(past_a_mask(|i| Seg::Fixed { buf: 1, off: 100 * i, len: 50 }))]
#[case::copy_and_user(vec![Seg::Copy(pattern(24, 1)), Seg::User(pattern(9000, 2))])]
#[case::empty_copy_and_user(vec![Seg::Copy(vec![]), Seg::User(vec![]), Seg::User(pattern(9, 2))])]
fn uniform_and_simple_requests(
    #[case] segs: Vec<Seg>,
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
) {
    require_feature();
    let (mut ring, bufs, mut peer) = setup(Transport::Tcp, Family::V4);
    let req = Request::new(segs, &bufs);

    let done = send(&mut ring, &req, op, &peer);
    sent_whole(&done, &req, &mut peer);
}

#[test]
fn empty_request_sends_nothing_and_notifies() {
    require_feature();
    let (mut ring, bufs, peer) = setup(Transport::Tcp, Family::V4);
    let req = Request::new(vec![], &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer);
    assert_eq!(done.result.res, 0);
    assert!(done.notif.is_some());
    assert!(!peer.pending().unwrap());
}

/// On loopback the stack copies zero-copy frags at local delivery, and says so.
#[test]
fn report_usage_reports_copied_on_loopback_for_mixed_requests() {
    require_feature();
    let (mut ring, bufs, mut peer) = setup(Transport::Tcp, Family::V4);
    let req = Request::new(mixed_segments(Transport::Tcp), &bufs);
    let mut sqe = req.sqe(Op::SendMsgZc, peer.fd());
    sqe.ioprio |= sys::IORING_SEND_ZC_REPORT_USAGE;
    let done = submit(&mut ring, sqe, 6);
    assert_eq!(done.result.res, req.len() as i32);
    assert_eq!(
        done.notif.unwrap().res as u32,
        sys::IORING_NOTIF_USAGE_ZC_COPIED
    );
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// Whether a failed request's result CQE is followed by a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notif {
    None,
    One,
}

/// A bad request: what to break, and the errno the result CQE must carry.
#[derive(Debug)]
enum Bad {
    Mode,
    AttrFlags,
    AttrResv,
    IndexOnCopy,
    AttrPointer,
    NullAttrPointer,
    KernelAttrPointer,
    UnregisteredIndex,
    OutsideBuffer,
    WithFixedBufFlag,
    WithSqeBufIndex,
    SendZcNotVectored,
    UnreadableCopy,
    UnreadableUser,
    LongerThanMaxRwCount,
}

/// MAX_RW_COUNT on 4 KiB pages: the most one read or write may move.
const MAX_RW_COUNT: usize = (i32::MAX as usize) & !4095;

fn break_request(bad: &Bad, req: &mut Request, bufs: &RegBufs, sqe: &mut SendSqe) {
    match bad {
        Bad::Mode => req.attrs[0].mode = 3,
        Bad::AttrFlags => req.attrs[1].flags = 1,
        Bad::AttrResv => req.attrs[1].resv = 1,
        Bad::IndexOnCopy => req.attrs[0].buf_index = 1,
        Bad::AttrPointer => sqe.zc_iov_attr = 0x10,
        Bad::NullAttrPointer => sqe.zc_iov_attr = 0,
        // Refused by access_ok() before any read, not by a fault.
        Bad::KernelAttrPointer => sqe.zc_iov_attr = 0xffff_8880_0000_0000,
        Bad::UnregisteredIndex => req.attrs[1] = io_uring_zc_iov_attr::fixed(99),
        Bad::OutsideBuffer => {
            let end = bufs.bufs[0].as_slice().as_ptr_range().end;
            req.iov[1].iov_base = end.wrapping_sub(10) as *mut libc::c_void;
            req.iov[1].iov_len = 20;
        }
        Bad::WithFixedBufFlag => sqe.ioprio |= sys::IORING_RECVSEND_FIXED_BUF,
        Bad::WithSqeBufIndex => sqe.buf_index = 1,
        Bad::SendZcNotVectored => sqe.ioprio &= !sys::IORING_SEND_VECTORIZED,
        Bad::UnreadableCopy => req.iov[0].iov_base = 0x1000 as *mut libc::c_void,
        Bad::UnreadableUser => req.iov[2].iov_base = 0x1000 as *mut libc::c_void,
        // The lengths are checked before any memory is: nothing is read.
        Bad::LongerThanMaxRwCount => req.iov[2].iov_len = MAX_RW_COUNT,
    }
    req.sync_msg();
}

/// Whether a request rejected with `bad` has a notification: none when it
/// is rejected for its flags or its attributes, before the kernel
/// allocates one; one when the attributes were accepted and the request
/// failed later.
#[rstest]
#[case::bad_mode(Bad::Mode, Op::SendMsgZc, libc::EINVAL, Notif::None)]
#[case::attr_flags(Bad::AttrFlags, Op::SendMsgZc, libc::EINVAL, Notif::None)]
#[case::attr_resv(Bad::AttrResv, Op::SendZcVectored, libc::EINVAL, Notif::None)]
#[case::index_on_copy(Bad::IndexOnCopy, Op::SendMsgZc, libc::EINVAL, Notif::None)]
#[case::attr_pointer(Bad::AttrPointer, Op::SendMsgZc, libc::EFAULT, Notif::None)]
#[case::null_attr_pointer(Bad::NullAttrPointer, Op::SendZcVectored, libc::EFAULT, Notif::None)]
#[case::kernel_attr_pointer(Bad::KernelAttrPointer, Op::SendMsgZc, libc::EFAULT, Notif::None)]
#[case::unregistered_index(Bad::UnregisteredIndex, Op::SendMsgZc, libc::EFAULT, Notif::One)]
#[case::outside_buffer(Bad::OutsideBuffer, Op::SendZcVectored, libc::EFAULT, Notif::One)]
#[case::with_fixed_buf_flag(Bad::WithFixedBufFlag, Op::SendMsgZc, libc::EINVAL, Notif::None)]
#[case::with_sqe_buf_index(Bad::WithSqeBufIndex, Op::SendZcVectored, libc::EINVAL, Notif::None)]
#[case::send_zc_not_vectored(Bad::SendZcNotVectored, Op::SendZcVectored, libc::EINVAL, Notif::None)]
#[case::unreadable_copy(Bad::UnreadableCopy, Op::SendMsgZc, libc::EFAULT, Notif::One)]
#[case::unreadable_user(Bad::UnreadableUser, Op::SendZcVectored, libc::EFAULT, Notif::One)]
#[case::longer_than_max_rw_count(
    Bad::LongerThanMaxRwCount,
    Op::SendMsgZc,
    libc::EINVAL,
    Notif::One
)]
fn errors_send_nothing_and_keep_the_protocol(
    #[case] bad: Bad,
    #[case] op: Op,
    #[case] errno: i32,
    #[case] notif: Notif,
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
) {
    require_feature();
    let (mut ring, bufs, peer) = setup(transport, Family::V4);
    let mut req = Request::new(
        vec![
            hdr(0),
            Seg::Fixed {
                buf: 0,
                off: 0,
                len: 2000,
            },
            Seg::User(pattern(500, 3)),
        ],
        &bufs,
    );
    let mut sqe = req.sqe(op, peer.fd());
    break_request(&bad, &mut req, &bufs, &mut sqe);

    let done = submit(&mut ring, sqe, 9);
    assert_eq!(done.result.res, -errno, "{bad:?}: {done:?}");
    // submit() has checked that F_MORE announced exactly this.
    assert_eq!(
        done.notif.is_some(),
        notif == Notif::One,
        "{bad:?}: {done:?}"
    );
    assert!(
        !peer.pending().unwrap(),
        "{bad:?}: bytes reached the receiver"
    );
}

#[test]
fn af_unix_is_eopnotsupp() {
    require_feature();
    let (tx, _rx) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let req = Request::new(
        vec![
            hdr(0),
            Seg::Fixed {
                buf: 0,
                off: 0,
                len: 100,
            },
        ],
        &bufs,
    );
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tx);
    let done = submit(&mut ring, req.sqe(Op::SendMsgZc, fd), 4);
    assert_eq!(done.result.res, -libc::EOPNOTSUPP);
}

/// COPY memory is free at the result CQE: overwriting it then must not
/// change what the receiver, who has not read yet, gets.
#[rstest]
fn copy_memory_is_reusable_at_the_result(
    #[values(Transport::Tcp, Transport::UdpConnected)] transport: Transport,
) {
    require_feature();
    let (mut ring, bufs, mut peer) = setup(transport, Family::V6);
    let mut req = Request::new(mixed_segments(transport), &bufs);
    let expected = req.expected().to_vec();

    let done = send(&mut ring, &req, Op::SendMsgZc, &peer);
    assert_eq!(done.result.res, expected.len() as i32);
    for seg in &mut req.segs {
        if let Seg::Copy(data) = seg {
            data.fill(0xee);
        }
    }
    assert_eq!(peer.receive(expected.len()).unwrap(), expected);
}

/// Unregistering the buffers, and unmapping them, while a request that uses
/// them is still waiting for socket space must not change the bytes sent.
#[rstest]
fn buffers_outlive_unregister_while_in_flight(#[values(false, true)] update_instead: bool) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    let Peer::Tcp(pair) = Peer::new(Transport::Tcp, Family::V4).unwrap() else {
        unreachable!()
    };
    // A small send buffer and an idle receiver keep the request waiting.
    nix::sys::socket::setsockopt(&pair.tx, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let segs = vec![
        hdr(0),
        Seg::Fixed {
            buf: 0,
            off: 0,
            len: 200 * 1024,
        },
        hdr(1),
        Seg::Fixed {
            buf: 1,
            off: 1,
            len: 60 * 1024,
        },
        hdr(2),
        Seg::Fixed {
            buf: 2,
            off: 2,
            len: 8000,
        },
    ];
    let req = Request::new(segs, &bufs);
    let expected = req.expected().to_vec();
    let mut sqe = req.sqe(Op::SendMsgZc, std::os::fd::AsRawFd::as_raw_fd(&pair.tx));
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    let entry = sqe.user_data(3).into_entry();
    // SAFETY: req lives until the notification is reaped below; the buffers'
    // pages are held by the kernel after unregistering (what is tested).
    unsafe { ring.push(&entry) }.unwrap();
    ring.ring.submit().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));

    if update_instead {
        let other = sendzc_iov_vm_tests::MmapBuf::new(BUF_SIZES[0]).unwrap();
        // SAFETY: `other` outlives the ring's use of slot 0 in this test.
        unsafe {
            ring.ring
                .submitter()
                .register_buffers_update(0, &[other.iovec()], None)
        }
        .unwrap();
        drop(bufs);
        let got = read_while_reaping(&mut ring, &pair, expected.len(), 3);
        assert_eq!(got, expected);
        drop(other);
    } else {
        ring.ring.submitter().unregister_buffers().unwrap();
        drop(bufs);
        let got = read_while_reaping(&mut ring, &pair, expected.len(), 3);
        assert_eq!(got, expected);
    }
}

/// Reads `len` bytes in a thread while this one drives the ring until the
/// request `user_data` has fully completed.
fn read_while_reaping(ring: &mut Ring, pair: &TcpPair, len: usize, user_data: u64) -> Vec<u8> {
    let reader = pair.receive_in_background(len);
    let cqes = ring.reap_zc(user_data).unwrap();
    let done = zc_completion(&cqes, user_data).unwrap();
    assert_eq!(done.result.res, len as i32, "{done:?}");
    reader.join().unwrap().unwrap()
}

/// With UDP_SEGMENT, one request is one GSO batch: pairs of exactly
/// gso_size bytes arrive as that many datagrams, in order.
#[rstest]
fn udp_segment_batch_of_pairs(#[values(Family::V4, Family::V6)] family: Family) {
    require_feature();
    const GSO: usize = 1000;
    let (mut ring, bufs, peer) = setup(Transport::UdpConnected, family);
    let Peer::Udp(udp) = &peer else {
        unreachable!()
    };
    let gso = GSO as libc::c_int;
    // SAFETY: a valid int option value for a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&udp.tx),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&gso as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());

    let mut segs = Vec::new();
    for i in 0..4u8 {
        segs.push(hdr(i));
        segs.push(Seg::Fixed {
            buf: (i % 3) as u16,
            off: 333 * i as usize,
            len: GSO - 24,
        });
    }
    let req = Request::new(segs, &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    for chunk in req.expected().chunks(GSO) {
        assert_eq!(udp.receive().unwrap(), chunk);
    }
    assert!(!udp.pending().unwrap());
}

/// COPY is for headers: a request may copy at most IORING_ZC_IOV_COPY_MAX.
#[rstest]
#[case::at_the_cap(sys::IORING_ZC_IOV_COPY_MAX as usize, 0)]
#[case::over_the_cap(sys::IORING_ZC_IOV_COPY_MAX as usize + 1, libc::E2BIG)]
fn copy_bytes_of_a_mixed_request_are_capped(#[case] copy: usize, #[case] errno: i32) {
    require_feature();
    let (mut ring, bufs, mut peer) = setup(Transport::Tcp, Family::V4);
    let half = copy / 2;
    let segs = vec![
        Seg::Copy(pattern(half, 1)),
        Seg::Fixed {
            buf: 0,
            off: 0,
            len: 100,
        },
        Seg::Copy(pattern(copy - half, 2)),
    ];
    let req = Request::new(segs, &bufs);
    let done = send(&mut ring, &req, Op::SendMsgZc, &peer);
    assert!(done.notif.is_some());
    if errno == 0 {
        assert_eq!(done.result.res, req.len() as i32);
        assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
    } else {
        assert_eq!(done.result.res, -errno);
        assert!(!peer.pending().unwrap());
    }
}
