//! Generated requests against the patched kernel (proptest).
//!
//! Each case is a whole request: 1 to 1024 iovecs over TCP, a few over UDP
//! (shrinking toward few), lengths from 0 and 1 byte up to 512 KiB,
//! unaligned and page-crossing offsets, each iovec COPY, USER or FIXED
//! from one of four registered buffers of different sizes (hugetlb-,
//! memfd- and anonymous-backed), sent with SENDMSG_ZC or vectorized SEND_ZC,
//! over IPv4 or IPv6, on a default, DEFER_TASKRUN or SQPOLL ring, issued
//! inline, with IOSQE_ASYNC or with POLL_FIRST. Properties:
//!
//! 1. the receiver gets exactly the iovecs' bytes, in order (TCP stream;
//!    one datagram per request for UDP);
//! 2. one result CQE with F_MORE, then exactly one notification with the
//!    same user_data, never before the result, and nothing else; a
//!    request whose iovecs are all COPY: one result CQE without F_MORE;
//! 3. COPY memory overwritten right after the result CQE does not change
//!    what the (not yet reading) receiver gets;
//! 4. with MSG_DONTWAIT and a small send buffer the result is a prefix
//!    length and exactly that prefix arrives; with MSG_WAITALL, all of it;
//! 5. garbage in the attribute array gives -EINVAL, nothing on the wire,
//!    and one CQE without F_MORE: no notification is allocated before the
//!    attributes are accepted.
//!
//! `PROPTEST_CASES` overrides the number of cases of every property.
//! Failures are shrunk; proptest prints the minimal case and its seed, and
//! records it in rust-tests/proptest-regressions/ (see its README), whose
//! cases every later run replays first.

use std::cell::{Cell, RefCell};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use sendzc_iov::sys::{IORING_RECVSEND_POLL_FIRST, IORING_ZC_IOV_COPY_MAX, IORING_ZC_IOV_FIXED};

/// sqe->flags: issue from an io-wq worker.
const IOSQE_ASYNC: u8 = 1 << 4;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::{
    pattern, record_cases, require_feature, zc_completion, Family, MmapBuf, Op, RegBufs, Request,
    Ring, Seg, Setup, Transport,
};

/// Four buffers of different sizes, so that indices and ranges matter:
/// 0 on 2 MiB huge pages, 1 a memfd mapping, 2 and 3 anonymous memory.
const BUF_SIZES: [usize; 4] = [2 << 20, 600 * 1024, 64 * 1024, 8 * 1024 + 17];

/// The buffers of one ring, backed as BUF_SIZES says.
fn buffers(ring: &Ring) -> RegBufs {
    let huge =
        MmapBuf::hugetlb(BUF_SIZES[0]).expect("MAP_HUGETLB (guest-run.sh reserves huge pages)");
    let (memfd, _fd) = MmapBuf::memfd(BUF_SIZES[1]).unwrap();
    let bufs = vec![
        huge,
        memfd,
        MmapBuf::new(BUF_SIZES[2]).unwrap(),
        MmapBuf::new(BUF_SIZES[3]).unwrap(),
    ];
    RegBufs::register_bufs(ring, bufs).unwrap()
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where shrunk failures are recorded and replayed from: the file
/// `$SENDZC_PROPTEST_REGRESSIONS/prop_per_iovec.txt` (vm-test makes
/// rust-tests/proptest-regressions/ writable in the guest), else next to
/// this source file.
fn persistence() -> Box<FileFailurePersistence> {
    Box::new(match std::env::var("SENDZC_PROPTEST_REGRESSIONS") {
        Ok(dir) => {
            let file = format!("{dir}/prop_per_iovec.txt");
            // Direct wants a &'static str; one small leak per runner.
            FileFailurePersistence::Direct(Box::leak(file.into_boxed_str()))
        }
        Err(_) => FileFailurePersistence::SourceParallel("proptest-regressions"),
    })
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: Some(persistence()),
        source_file: Some(file!()),
        ..Config::default()
    })
}

/// A length: mostly small, sometimes 0 or 1, now and then up to `max`
/// (rarely, as every byte costs under TCG with KASAN).
fn length(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 1usize..=64,
        3 => 0usize..=1,
        6 => 65usize..=9000,
        1 => 9000usize..=max.max(9000),
    ]
    .prop_map(move |len| len.min(max))
}

/// One iovec, within `max` bytes.
fn segment(max: usize) -> impl Strategy<Value = Seg> {
    prop_oneof![
        length(max).prop_map(|len| Seg::Copy(pattern(len, len as u8))),
        length(max).prop_map(|len| Seg::User(pattern(len, (len as u8).wrapping_add(3)))),
        (
            0..BUF_SIZES.len(),
            length(max),
            any::<prop::sample::Index>()
        )
            .prop_map(|(buf, len, at)| {
                // FIXED iovecs must not be empty; any offset that fits.
                let len = len.clamp(1, BUF_SIZES[buf]);
                let off = at.index(BUF_SIZES[buf] - len + 1);
                Seg::Fixed {
                    buf: buf as u16,
                    off,
                    len,
                }
            }),
    ]
}

/// TCP: mostly up to 32 iovecs of up to 512 KiB, now and then up to
/// UIO_MAXIOV (1024) short ones. UDP: one datagram within MAX_SKB_FRAGS
/// bvecs: a few iovecs of at most two pages each.
fn segments(transport: Transport) -> BoxedStrategy<Vec<Seg>> {
    match transport {
        Transport::Tcp => prop_oneof![
            9 => prop::collection::vec(segment(512 * 1024), 1..=32),
            1 => prop::collection::vec(segment(64), 33..=1024),
        ]
        .boxed(),
        _ => prop::collection::vec(segment(2000), 1..=6).boxed(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::SendMsgZc), Just(Op::SendZcVectored)]
}

/// How the request is issued.
#[derive(Clone, Copy, Debug)]
enum Issue {
    Inline,
    /// IOSQE_ASYNC: from an io-wq worker.
    Async,
    /// IORING_RECVSEND_POLL_FIRST: after a poll for socket space.
    PollFirst,
}

fn issue() -> impl Strategy<Value = Issue> {
    prop_oneof![
        Just(Issue::Inline),
        Just(Issue::Async),
        Just(Issue::PollFirst)
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    prop_oneof![
        Just(Setup::Default),
        Just(Setup::DeferTaskrun),
        Just(Setup::SqPoll)
    ]
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![Just(Family::V4), Just(Family::V6)]
}

/// Keeps a request's COPY bytes within IORING_ZC_IOV_COPY_MAX.
fn within_copy_cap(segs: &[Seg]) -> bool {
    let copied: usize = segs
        .iter()
        .map(|s| match s {
            Seg::Copy(d) => d.len(),
            _ => 0,
        })
        .sum();
    copied <= IORING_ZC_IOV_COPY_MAX as usize
}

/// One ring per setup, each with the four buffers registered, and a peer
/// per transport and family, reused by every case.
struct Fixture {
    rings: Vec<(Setup, Ring, RegBufs)>,
    peers: Vec<((Transport, Family), Peer)>,
}

impl Fixture {
    fn new(transports: &[Transport]) -> Fixture {
        let rings = [Setup::Default, Setup::DeferTaskrun, Setup::SqPoll]
            .into_iter()
            .map(|setup| {
                let ring = Ring::with_setup(64, setup).unwrap();
                let bufs = buffers(&ring);
                (setup, ring, bufs)
            })
            .collect();
        let mut peers = Vec::new();
        for &t in transports {
            for f in [Family::V4, Family::V6] {
                peers.push(((t, f), Peer::new(t, f).unwrap()));
            }
        }
        Fixture { rings, peers }
    }

    fn ring(&mut self, setup: Setup) -> (&mut Ring, &RegBufs) {
        let (_, ring, bufs) = self.rings.iter_mut().find(|(s, _, _)| *s == setup).unwrap();
        (ring, bufs)
    }

    fn peer(&mut self, transport: Transport, family: Family) -> &mut Peer {
        &mut self
            .peers
            .iter_mut()
            .find(|(k, _)| *k == (transport, family))
            .unwrap()
            .1
    }
}

/// One generated case of properties 1-3.
#[derive(Debug)]
struct Case {
    transport: Transport,
    family: Family,
    op: Op,
    setup: Setup,
    issue: Issue,
    segs: Vec<Seg>,
    /// Sent as a copy mask (IORING_RECVSEND_FIXED_BUF) rather than an
    /// attribute array.
    masked: bool,
}

fn case(
    transports: BoxedStrategy<Transport>,
    segs: BoxedStrategy<Vec<Seg>>,
) -> impl Strategy<Value = Case> {
    case_sent(transports, segs, false)
}

/// A case of properties 1-3, sent as a copy mask if `masked`.
fn case_sent(
    transports: BoxedStrategy<Transport>,
    segs: impl Strategy<Value = Vec<Seg>>,
    masked: bool,
) -> impl Strategy<Value = Case> {
    (transports, family(), op(), setup(), issue(), segs).prop_map(
        move |(transport, family, op, setup, issue, segs)| Case {
            transport,
            family,
            op,
            setup,
            issue,
            segs,
            masked,
        },
    )
}

/// The iovecs of a request a copy mask can express: COPY ones and FIXED
/// ones, empty ones included, all in one buffer; `max` bytes each, at
/// most `max_iovs` (64 at most).
fn one_buffer_segments(max: usize, max_iovs: usize) -> impl Strategy<Value = Vec<Seg>> {
    (0..BUF_SIZES.len()).prop_flat_map(move |buf| {
        let seg = prop_oneof![
            length(max).prop_map(|len| Seg::Copy(pattern(len, len as u8))),
            (length(max), any::<prop::sample::Index>()).prop_map(move |(len, at)| {
                let len = len.min(BUF_SIZES[buf]);
                let off = at.index(BUF_SIZES[buf] - len + 1);
                Seg::Fixed {
                    buf: buf as u16,
                    off,
                    len,
                }
            }),
        ];
        prop::collection::vec(seg, 1..=max_iovs)
    })
}

/// A case of properties 1-3 sent as a copy mask.
fn mask_case(
    transports: BoxedStrategy<Transport>,
    segs: impl Strategy<Value = Vec<Seg>>,
) -> impl Strategy<Value = Case> {
    case_sent(transports, segs, true)
}

/// Sends one generated request; checks properties 1, 2 and (if `overwrite`) 3.
fn check_request(fx: &mut Fixture, case: Case, overwrite: bool) -> Result<(), TestCaseError> {
    let Case {
        transport,
        family,
        op,
        setup,
        issue,
        segs,
        masked,
    } = case;
    let dest = fx.peer(transport, family).dest();
    let mut req = Request::new(segs, fx.ring(setup).1);
    if let Some(dest) = dest {
        req = req.to(dest);
    }
    let expected = req.expected().to_vec();
    let fd = fx.peer(transport, family).fd();
    let mut sqe = if masked {
        req.sqe_masked(op, fd)
            .ok_or_else(|| TestCaseError::fail("no copy mask for these iovecs"))?
    } else {
        req.sqe(op, fd)
    };
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    match issue {
        Issue::Inline => {}
        Issue::Async => sqe.flags |= IOSQE_ASYNC,
        Issue::PollFirst => sqe.ioprio |= IORING_RECVSEND_POLL_FIRST,
    }
    let entry = sqe.user_data(77).into_entry();

    // Large TCP requests need the receiver to read while the ring runs.
    let mut reader = None;
    if transport == Transport::Tcp && !overwrite {
        let Peer::Tcp(pair) = fx.peer(transport, family) else {
            unreachable!()
        };
        reader = Some(pair.receive_in_background(expected.len()));
    }
    let ring = fx.ring(setup).0;
    // SAFETY: req (iovecs, attributes, msghdr, data) outlives the reap below.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring
        .reap_zc(77)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let done = zc_completion(&cqes, 77).map_err(TestCaseError::fail)?;
    let copies_all = !req.segs.is_empty() && req.segs.iter().all(|s| matches!(s, Seg::Copy(_)));
    prop_assert_eq!(done.notif.is_some(), !copies_all, "CQEs: {:?}", cqes);
    prop_assert_eq!(done.result.res, expected.len() as i32, "result {:?}", cqes);

    if overwrite {
        for seg in &mut req.segs {
            if let Seg::Copy(data) = seg {
                data.fill(0x5a);
            }
        }
    }
    let got = match reader {
        Some(r) => r.join().unwrap(),
        None => fx.peer(transport, family).receive(expected.len()),
    }
    .map_err(|e| TestCaseError::fail(format!("receive: {e}")))?;
    prop_assert!(
        got == expected,
        "received bytes differ ({} vs {} bytes)",
        got.len(),
        expected.len()
    );
    if transport != Transport::Tcp {
        prop_assert!(
            !fx.peer(transport, family).pending().unwrap(),
            "more than one datagram"
        );
    }
    Ok(())
}

fn tcp() -> BoxedStrategy<Transport> {
    Just(Transport::Tcp).boxed()
}

fn udp() -> BoxedStrategy<Transport> {
    prop_oneof![Just(Transport::UdpConnected), Just(Transport::UdpTo)].boxed()
}

/// Checks `cases` generated cases of properties 1-3 (3 if `overwrite`)
/// against peers of `transports`.
fn check_property(
    property: &str,
    transports: &[Transport],
    strategy: impl Strategy<Value = Case>,
    cases: u32,
    overwrite: bool,
) {
    require_feature();
    let fx = RefCell::new(Fixture::new(transports));
    let ran = Cell::new(0);
    runner(cases)
        .run(&strategy, |c| {
            ran.set(ran.get() + 1);
            check_request(&mut fx.borrow_mut(), c, overwrite)
        })
        .unwrap();
    record_cases(property, ran.get());
}

#[test]
fn tcp_requests_arrive_whole_and_in_order() {
    let strategy =
        case(tcp(), segments(Transport::Tcp)).prop_filter("COPY cap", |c| within_copy_cap(&c.segs));
    check_property(
        "tcp_requests_arrive_whole_and_in_order",
        &[Transport::Tcp],
        strategy,
        400,
        false,
    );
}

#[test]
fn udp_requests_are_one_datagram_each() {
    let strategy = case(udp(), segments(Transport::UdpConnected));
    check_property(
        "udp_requests_are_one_datagram_each",
        &[Transport::UdpConnected, Transport::UdpTo],
        strategy,
        1000,
        false,
    );
}

#[test]
fn copy_memory_is_reusable_at_the_result() {
    // Small enough to sit in the receiver's socket buffer unread.
    let transports = prop_oneof![Just(Transport::Tcp), Just(Transport::UdpConnected)].boxed();
    let strategy = case(transports, segments(Transport::UdpConnected));
    check_property(
        "copy_memory_is_reusable_at_the_result",
        &[Transport::Tcp, Transport::UdpConnected],
        strategy,
        300,
        true,
    );
}

#[test]
fn tcp_copy_masks_arrive_whole_and_in_order() {
    let strategy = mask_case(tcp(), one_buffer_segments(512 * 1024, 64))
        .prop_filter("COPY cap", |c| within_copy_cap(&c.segs));
    check_property(
        "tcp_copy_masks_arrive_whole_and_in_order",
        &[Transport::Tcp],
        strategy,
        200,
        false,
    );
}

#[test]
fn udp_copy_masks_are_one_datagram_each() {
    // Up to 24 iovecs: more bvecs than an skb has frags, now and then.
    let strategy = mask_case(udp(), one_buffer_segments(2000, 24));
    check_property(
        "udp_copy_masks_are_one_datagram_each",
        &[Transport::UdpConnected, Transport::UdpTo],
        strategy,
        400,
        false,
    );
}

#[test]
fn copy_mask_memory_is_reusable_at_the_result() {
    let transports = prop_oneof![Just(Transport::Tcp), Just(Transport::UdpConnected)].boxed();
    let strategy = mask_case(transports, one_buffer_segments(2000, 6));
    check_property(
        "copy_mask_memory_is_reusable_at_the_result",
        &[Transport::Tcp, Transport::UdpConnected],
        strategy,
        150,
        true,
    );
}

/// Garbage in one attribute: a non-zero flags or resv byte, a mode past
/// FIXED, or a buffer index on a non-FIXED iovec.
fn garbage() -> impl Strategy<Value = (usize, u8, u8, u16, u32)> {
    (
        any::<prop::sample::Index>().prop_map(|i| i.index(64)),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
    )
        .prop_filter("must be invalid", |(_, mode, flags, idx, resv)| {
            *flags != 0
                || *resv != 0
                || *mode > IORING_ZC_IOV_FIXED
                || (*mode != IORING_ZC_IOV_FIXED && *idx != 0)
        })
}

#[test]
fn garbage_attributes_are_einval_and_send_nothing() {
    require_feature();
    let fx = RefCell::new(Fixture::new(&[Transport::Tcp, Transport::UdpConnected]));
    let strategy = (
        prop_oneof![Just(Transport::Tcp), Just(Transport::UdpConnected)],
        op(),
        segments(Transport::UdpConnected),
        garbage(),
    );
    let ran = Cell::new(0);
    runner(300)
        .run(&strategy, |(t, op, segs, (at, mode, flags, idx, resv))| {
            ran.set(ran.get() + 1);
            let fx = &mut *fx.borrow_mut();
            let mut req = Request::new(segs, fx.ring(Setup::Default).1);
            let at = at % req.attrs.len();
            req.attrs[at].mode = mode;
            req.attrs[at].flags = flags;
            req.attrs[at].buf_index = idx;
            req.attrs[at].resv = resv;
            let fd = fx.peer(t, Family::V4).fd();
            let entry = req.sqe(op, fd).user_data(78).into_entry();
            let ring = fx.ring(Setup::Default).0;
            // SAFETY: req outlives the reap below.
            unsafe { ring.push(&entry) }.unwrap();
            let cqes = ring
                .reap_zc(78)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let done = zc_completion(&cqes, 78).map_err(TestCaseError::fail)?;
            prop_assert_eq!(done.result.res, -libc::EINVAL);
            // rejected for its attributes, before a notification exists
            prop_assert!(done.notif.is_none());
            prop_assert!(
                !fx.peer(t, Family::V4).pending().unwrap(),
                "bytes reached the receiver"
            );
            Ok(())
        })
        .unwrap();
    record_cases("garbage_attributes_are_einval_and_send_nothing", ran.get());
}

/// Property 4: with MSG_DONTWAIT and a 4 KiB send buffer a request may
/// send part of its bytes: the result is a prefix length and exactly that
/// prefix arrives, nothing after it. With MSG_WAITALL (blocking, the
/// receiver reading as the bytes come) the result is the whole length.
#[test]
fn partial_sends_send_exactly_the_prefix() {
    require_feature();
    let ring = RefCell::new(Ring::new(8).unwrap());
    let bufs = RegBufs::register(&ring.borrow(), &BUF_SIZES).unwrap();
    let strategy = (
        op(),
        family(),
        any::<bool>(),
        prop::collection::vec(segment(256 * 1024), 1..=16),
    )
        .prop_filter("COPY cap", |(_, _, _, segs)| within_copy_cap(segs));
    let ran = Cell::new(0);
    runner(100)
        .run(&strategy, |(op, family, waitall, segs)| {
            ran.set(ran.get() + 1);
            let fail = |e: std::io::Error| TestCaseError::fail(e.to_string());
            let Peer::Tcp(mut pair) = Peer::new(Transport::Tcp, family).map_err(fail)? else {
                unreachable!("a TCP peer")
            };
            nix::sys::socket::setsockopt(&pair.tx, nix::sys::socket::sockopt::SndBuf, &4096)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let req = Request::new(segs, &bufs);
            let mut sqe = req.sqe(op, std::os::fd::AsRawFd::as_raw_fd(&pair.tx));
            sqe.msg_flags |= if waitall {
                libc::MSG_WAITALL
            } else {
                libc::MSG_DONTWAIT
            } as u32;
            let reader = waitall.then(|| pair.receive_in_background(req.len()));
            let entry = sqe.user_data(4).into_entry();
            let ring = &mut *ring.borrow_mut();
            // SAFETY: req outlives the reap below.
            unsafe { ring.push(&entry) }.map_err(fail)?;
            let cqes = ring.reap_zc(4).map_err(fail)?;
            let done = zc_completion(&cqes, 4).map_err(TestCaseError::fail)?;
            let sent = done.result.res;
            prop_assert!(
                sent >= 0 && sent as usize <= req.len(),
                "result {sent} for a request of {} bytes",
                req.len()
            );
            let sent = sent as usize;
            if let Some(reader) = reader {
                prop_assert_eq!(sent, req.len(), "MSG_WAITALL sent a part");
                let got = reader.join().expect("reader thread").map_err(fail)?;
                prop_assert!(got == req.expected(), "bytes differ");
            } else {
                let got = pair.receive(sent).map_err(fail)?;
                prop_assert!(got == req.expected()[..sent], "prefix differs");
                std::thread::sleep(std::time::Duration::from_millis(20));
                prop_assert!(
                    !pair.pending().map_err(fail)?,
                    "more than the reported prefix arrived"
                );
            }
            Ok(())
        })
        .unwrap();
    record_cases("partial_sends_send_exactly_the_prefix", ran.get());
}
