//! The header+payload API against the running kernel, over loopback.
//!
//! On a kernel without the series (the host) this exercises the fallbacks
//! for real; in the VM on the patched kernel, the per-iovec path as well.

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};
use sendzc_iov::frame::{
    Batch, Event, FrameError, FrameSender, Offers, Path, Payload, Policy, RequestId, SendCore,
    Target, TxPool,
};

const BUFFERS: u16 = 3;
const BUFFER_LEN: usize = 256 * 1024;
const WAIT: Duration = Duration::from_secs(10);

fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (rx, _) = listener.accept().unwrap();
    rx.set_read_timeout(Some(WAIT)).unwrap();
    (tx, rx)
}

/// The paths a FrameSender can take on this kernel, best first.
fn sender_paths() -> Vec<Path> {
    let best = Offers::probe().unwrap();
    let best = if best.per_iovec {
        Path::PerIovec
    } else if best.fixed_buf {
        Path::FixedBuf
    } else {
        Path::Copy
    };
    [Path::PerIovec, Path::FixedBuf, Path::Copy]
        .into_iter()
        .skip_while(|p| *p != best)
        .collect()
}

fn sender(path: Path) -> FrameSender {
    FrameSender::with_policy(64, BUFFERS, BUFFER_LEN, Policy::always(path)).unwrap()
}

/// A header that names its frame: sequence number and payload length.
fn header(seq: u32, len: usize) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..4].copy_from_slice(&seq.to_le_bytes());
    h[4..12].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

fn pattern(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 ^ seq.wrapping_mul(31)) as u8)
        .collect()
}

/// A lease of `len` bytes in buffer `buf`, filled with `pattern(seq, len)`.
fn filled(sender: &FrameSender, buf: u16, seq: u32, len: usize) -> Payload {
    let mut lease = sender.pool().lease_in(buf, len).expect("room in the pool");
    lease.copy_from_slice(&pattern(seq, len));
    Payload::Fixed(lease)
}

/// Polls until every request of `ids` is released, resuming anything cut
/// short; returns their events.
fn until_released(sender: &mut FrameSender, ids: &[RequestId]) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut events = Vec::new();
    let released = |events: &[Event], id: &RequestId| {
        events
            .iter()
            .any(|e| matches!(e, Event::Released { id: r, .. } if r == id))
    };
    while !ids.iter().all(|id| released(&events, id)) {
        assert!(
            Instant::now() < deadline,
            "requests {ids:?} not all released"
        );
        for event in sender.poll(Duration::from_millis(100)).unwrap() {
            match event {
                Event::Sent {
                    remainder: Some(r), ..
                }
                | Event::Failed {
                    remainder: Some(r), ..
                } => sender.resume(r).unwrap(),
                other => events.push(other),
            }
        }
    }
    events
}

/// A batch's frames before they are pushed: (header, payload).
type Frames = Vec<([u8; 24], Payload)>;

/// Frames of each shape the API takes, for `sender`, by name.
fn shapes(sender: &FrameSender) -> Vec<(&'static str, Frames)> {
    vec![
        (
            "one pair",
            vec![(header(0, 65536), filled(sender, 0, 0, 65536))],
        ),
        (
            "four pairs over three buffers",
            (0..4)
                .map(|i| (header(i, 5000), filled(sender, (i % 3) as u16, i, 5000)))
                .collect(),
        ),
        (
            "two pairs in one buffer",
            (0..2)
                .map(|i| (header(i, 8192), filled(sender, 1, i, 8192)))
                .collect(),
        ),
        (
            "owned payloads",
            (0..3)
                .map(|i| (header(i, 7000), Payload::Owned(pattern(i, 7000))))
                .collect(),
        ),
        (
            "headers alone and a payload",
            vec![
                (header(0, 0), Payload::None),
                (header(1, 9000), filled(sender, 2, 1, 9000)),
                (header(2, 0), Payload::None),
            ],
        ),
    ]
}

#[test]
fn every_shape_arrives_intact_on_every_path() {
    for path in sender_paths() {
        let mut sender = sender(path);
        for (name, frames) in shapes(&sender) {
            let (tx, mut rx) = connected();
            let mut expected = Vec::new();
            let mut lens = Vec::new();
            let mut batch = Batch::new();
            for (h, p) in frames {
                expected.extend_from_slice(&h);
                expected.extend_from_slice(p.bytes());
                lens.push(p.len());
                batch.push(&h, p).unwrap();
            }
            let predicted = sender.core().path_for(Target::from(tx.as_fd()), &batch);
            let id = sender.submit(tx.as_fd(), batch).unwrap();
            let mut got = vec![0; expected.len()];
            rx.read_exact(&mut got).unwrap();
            assert!(got == expected, "{path:?}, {name}: bytes differ");
            let events = until_released(&mut sender, &[id]);
            let sent: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Sent {
                        path, sent, total, ..
                    } => Some((*path, *sent, *total)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                sent,
                [(predicted, expected.len(), expected.len())],
                "{path:?}, {name}"
            );
            let Some(Event::Released { payloads, .. }) = events.last() else {
                panic!("{path:?}, {name}: no release last: {events:?}");
            };
            let back: Vec<usize> = payloads.iter().map(Payload::len).collect();
            assert_eq!(
                back, lens,
                "{path:?}, {name}: payloads handed back in order"
            );
        }
    }
}

/// A genuine CQE of a NOP on a ring of its own, to forge others from.
fn nop_cqe() -> io_uring::cqueue::Entry {
    let mut ring = IoUring::new(2).unwrap();
    // SAFETY: a NOP points to nothing.
    unsafe {
        ring.submission()
            .push(&opcode::Nop::new().build().user_data(7))
    }
    .unwrap();
    ring.submit_and_wait(1).unwrap();
    let cqe = ring.completion().next().unwrap();
    cqe
}

/// A ring with a pool registered at index 0 and a core on `policy`.
fn core_ring(policy: Policy) -> (IoUring, TxPool, SendCore) {
    let ring = IoUring::new(16).unwrap();
    ring.submitter().register_buffers_sparse(4).unwrap();
    let pool = TxPool::new(2, BUFFER_LEN).unwrap();
    pool.register(&ring, 0).unwrap();
    let core = SendCore::new(&ring, policy, 0xc0).unwrap();
    (ring, pool, core)
}

/// One frame: header `seq`, then 64 KiB of pattern `seq` leased from `pool`.
fn one_frame(pool: &TxPool, seq: u32) -> Batch {
    let mut lease = pool.lease(65536).unwrap();
    lease.copy_from_slice(&pattern(seq, 65536));
    let mut batch = Batch::new();
    batch
        .push(&header(seq, 65536), Payload::Fixed(lease))
        .unwrap();
    batch
}

fn reap(ring: &mut IoUring) -> Vec<io_uring::cqueue::Entry> {
    ring.submit_and_wait(1).unwrap();
    ring.completion().collect()
}

#[test]
fn forged_foreign_and_duplicate_cqes_change_nothing() {
    let (mut ring, pool, mut core) = core_ring(Policy::always(Path::detect().unwrap()));
    let (tx, mut rx) = connected();
    let batch = one_frame(&pool, 1);
    let id = core.submit(&mut ring, tx.as_fd(), batch).unwrap();
    // Not submitted yet: every CQE the core could see now is a forgery.
    let free = pool.free_bytes(0);
    let mut forged = nop_cqe();
    for user_data in [
        id.0,
        0,
        1,
        7,
        0xc0 << 56,
        (0xc0 << 56) | 1,
        (0xc0 << 56) | id.0,
        u64::MAX,
    ] {
        forged.set_user_data(user_data);
        assert!(core.complete(&forged).is_empty(), "forged {user_data:#x}");
    }
    assert_eq!(core.in_flight(), 1);
    assert_eq!(pool.free_bytes(0), free, "the lease is still out");
    let mut got = vec![0; 24 + 65536];
    let mut real = Vec::new();
    let mut events = Vec::new();
    ring.submit().unwrap();
    rx.read_exact(&mut got).unwrap();
    while !events.iter().any(|e| matches!(e, Event::Released { .. })) {
        for cqe in reap(&mut ring) {
            events.extend(core.complete(&cqe));
            real.push(cqe);
        }
    }
    assert!(
        matches!(events[0], Event::Sent { sent: 65560, .. }),
        "{events:?}"
    );
    for cqe in &real {
        assert!(
            core.complete(cqe).is_empty(),
            "a duplicate CQE changed something"
        );
    }
    assert_eq!(core.in_flight(), 0);
}

/// Bytes sent ahead of the request by [`held_back`].
const FILLER: usize = 256 * 1024;

/// A TCP pair whose receiver has a tiny window, already full, and whose
/// sender has queued FILLER bytes behind it: what is sent next waits in the
/// send queue until the receiver reads.
fn held_back() -> (TcpStream, TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    setsockopt(&listener, sockopt::RcvBuf, &4096).unwrap();
    let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    setsockopt(&tx, sockopt::SndBuf, &(4 << 20)).unwrap();
    let (rx, _) = listener.accept().unwrap();
    rx.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut tx, &vec![0x11; FILLER]).unwrap();
    (tx, rx)
}

#[test]
fn a_notification_cannot_be_forged_after_the_result() {
    let path = Path::detect().unwrap();
    if path == Path::Copy {
        // Here notifications share the result's user_data: the core must
        // refuse zero-copy, so that no notification can be forged.
        let ring = IoUring::new(4).unwrap();
        let err = SendCore::new(&ring, Policy::always(Path::FixedBuf), 1).err();
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::Unsupported));
        return;
    }
    let (mut ring, pool, mut core) = core_ring(Policy::always(path));
    let (tx, mut rx) = held_back();
    let mut batch = Batch::new();
    let mut lease = pool.lease(65536).unwrap();
    lease.copy_from_slice(&pattern(2, 65536));
    batch
        .push(&header(2, 65536), Payload::Fixed(lease))
        .unwrap();
    core.submit(&mut ring, tx.as_fd(), batch).unwrap();
    // The request's bytes wait in the send queue behind the filler, the
    // peer's window closed: its result comes, its notification cannot.
    let result = loop {
        let cqes = reap(&mut ring);
        let mut events = Vec::new();
        for cqe in &cqes {
            events.extend(core.complete(cqe));
        }
        if !events.is_empty() {
            assert!(matches!(events[0], Event::Sent { .. }), "{events:?}");
            assert_eq!(
                events.len(),
                1,
                "released before the receiver read: {events:?}"
            );
            break cqes[0].clone();
        }
    };
    // The result's token is known now: forge a notification from it.
    let mut forged = nop_cqe();
    for user_data in [
        result.user_data(),
        result.user_data() + 1,
        result.user_data() ^ 1,
    ] {
        forged.set_user_data(user_data);
        assert!(core.complete(&forged).is_empty());
    }
    assert!(core.complete(&result).is_empty(), "duplicate result");
    assert_eq!(
        core.in_flight(),
        1,
        "still waiting for the real notification"
    );
    let mut got = vec![0; FILLER + 24 + 65536];
    rx.read_exact(&mut got).unwrap();
    assert!(got[FILLER + 24..] == pattern(2, 65536)[..]);
    let released = loop {
        let events: Vec<Event> = reap(&mut ring)
            .iter()
            .flat_map(|c| core.complete(c))
            .collect();
        if !events.is_empty() {
            break events;
        }
    };
    assert!(
        matches!(released[..], [Event::Released { .. }]),
        "{released:?}"
    );
}

#[test]
fn dropping_the_pool_frees_nothing_in_flight() {
    let (mut ring, pool, mut core) = core_ring(Policy::always(Path::detect().unwrap()));
    let (tx, mut rx) = connected();
    let batch = one_frame(&pool, 3);
    core.submit(&mut ring, tx.as_fd(), batch).unwrap();
    // The pool goes before the kernel has even seen the request, and the
    // allocator is given every chance to hand its memory out again.
    drop(pool);
    let junk: Vec<Vec<u8>> = (0..64).map(|_| vec![0xee; 65536]).collect();
    ring.submit().unwrap();
    let mut got = vec![0; 24 + 65536];
    rx.read_exact(&mut got).unwrap();
    assert!(
        got[24..] == pattern(3, 65536)[..],
        "the payload changed in flight"
    );
    drop(junk);
    let mut payloads = None;
    while payloads.is_none() {
        for event in reap(&mut ring).iter().flat_map(|c| core.complete(c)) {
            if let Event::Released { payloads: p, .. } = event {
                payloads = Some(p);
            }
        }
    }
    let payloads = payloads.unwrap();
    assert!(
        *payloads[0].bytes() == pattern(3, 65536)[..],
        "handed back as sent"
    );
}

#[test]
fn tcp_requests_stay_in_order_on_a_full_socket() {
    const REQUESTS: u32 = 50;
    const LEN: usize = 8192;
    let mut sender = FrameSender::new(64, BUFFERS, BUFFER_LEN).unwrap();
    let (tx, rx) = connected();
    nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let mut ids = Vec::new();
    for seq in 0..REQUESTS {
        let mut batch = Batch::new();
        let payload = filled(&sender, (seq % 3) as u16, seq, LEN);
        batch.push(&header(seq, LEN), payload).unwrap();
        ids.push(sender.submit(tx.as_fd(), batch).unwrap());
    }
    let reader = std::thread::spawn(move || {
        let mut rx = rx;
        let mut all = vec![0; REQUESTS as usize * (24 + LEN)];
        rx.read_exact(&mut all).unwrap();
        all
    });
    until_released(&mut sender, &ids);
    let all = reader.join().unwrap();
    for (seq, frame) in all.chunks(24 + LEN).enumerate() {
        let got = u32::from_le_bytes(frame[..4].try_into().unwrap());
        assert_eq!(got, seq as u32, "frame {seq} arrived as {got}");
        assert!(
            frame[24..] == pattern(seq as u32, LEN)[..],
            "frame {seq}'s payload"
        );
    }
}

#[test]
fn udp_datagrams_and_trains_of_many_pairs() {
    const PAYLOAD: usize = 948;
    for path in sender_paths() {
        let mut sender = sender(path);
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(WAIT)).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // One datagram of 9 pairs, then GSO trains of 8, 16 and 40.
        for (pairs, train) in [(9, false), (8, true), (16, true), (40, true)] {
            let len = if train { PAYLOAD } else { 84 };
            let mut batch = Batch::new();
            for seq in 0..pairs {
                let payload = filled(&sender, 0, seq, len);
                batch.push(&header(seq, len), payload).unwrap();
            }
            batch.to(rx.local_addr().unwrap());
            if train {
                batch.segment_size((24 + len) as u16);
            }
            let id = sender.submit(tx.as_fd(), batch).unwrap();
            let events = until_released(&mut sender, &[id]);
            assert!(
                matches!(events[0], Event::Sent { sent, total, .. } if sent == total),
                "{path:?}, {pairs} pairs: {events:?}"
            );
            let datagrams = if train { pairs } else { 1 };
            let mut seq = 0;
            for _ in 0..datagrams {
                let mut buf = [0u8; 65536];
                let n = rx.recv(&mut buf).unwrap();
                for frame in buf[..n].chunks(24 + len) {
                    assert_eq!(u32::from_le_bytes(frame[..4].try_into().unwrap()), seq);
                    assert!(frame[24..] == pattern(seq, len)[..]);
                    seq += 1;
                }
            }
            assert_eq!(seq, pairs, "{path:?}: every pair arrived");
        }
    }
}

#[test]
fn a_short_send_pauses_the_stream_until_resumed() {
    const LEN: usize = 200 * 1024;
    let mut sender = FrameSender::new(64, BUFFERS, BUFFER_LEN).unwrap();
    let (tx, rx) = connected();
    nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let mut first = Batch::new();
    first
        .push(&header(0, LEN), filled(&sender, 0, 0, LEN))
        .unwrap()
        .msg_flags(libc::MSG_DONTWAIT as u32);
    let mut second = Batch::new();
    second
        .push(&header(1, 100), Payload::Owned(pattern(1, 100)))
        .unwrap();
    let a = sender.submit(tx.as_fd(), first).unwrap();
    let b = sender.submit(tx.as_fd(), second).unwrap();
    let events = sender.wait_for(a, WAIT).unwrap();
    let cut = events.iter().any(|e| match e {
        Event::Sent {
            remainder,
            sent,
            total,
            ..
        } => remainder.is_some() && sent < total,
        Event::Failed {
            remainder, error, ..
        } => remainder.is_some() && error.raw_os_error() == Some(libc::EAGAIN),
        _ => false,
    });
    assert!(
        cut,
        "a non-blocking send into a full socket is cut short: {events:?}"
    );
    let reader = std::thread::spawn(move || {
        let mut rx = rx;
        let mut all = vec![0; 24 + LEN + 24 + 100];
        rx.read_exact(&mut all).unwrap();
        all
    });
    for event in events {
        if let Event::Sent {
            remainder: Some(r), ..
        }
        | Event::Failed {
            remainder: Some(r), ..
        } = event
        {
            sender.resume(r).unwrap();
        }
    }
    until_released(&mut sender, &[a, b]);
    let all = reader.join().unwrap();
    assert!(
        all[24..24 + LEN] == pattern(0, LEN)[..],
        "the cut request, whole"
    );
    assert_eq!(
        u32::from_le_bytes(all[24 + LEN..][..4].try_into().unwrap()),
        1
    );
}

#[test]
fn a_reset_peer_fails_the_request_and_abandon_releases_it() {
    let mut sender = FrameSender::new(64, BUFFERS, BUFFER_LEN).unwrap();
    let (tx, rx) = connected();
    nix::sys::socket::setsockopt(
        &rx,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(rx); // RST
    std::thread::sleep(Duration::from_millis(50));
    let mut batch = Batch::new();
    batch
        .push(&header(0, 65536), filled(&sender, 0, 0, 65536))
        .unwrap();
    let id = sender.submit(tx.as_fd(), batch).unwrap();
    let events = sender.wait_for(id, WAIT).unwrap();
    let remainder = events.into_iter().find_map(|e| match e {
        Event::Failed {
            error, remainder, ..
        } => {
            let errno = error.raw_os_error();
            assert!(
                matches!(errno, Some(libc::ECONNRESET | libc::EPIPE)),
                "{error}"
            );
            remainder
        }
        _ => None,
    });
    let remainder = remainder.expect("the failure pauses the stream");
    assert_eq!(remainder.len(), 24 + 65536);
    let mut events = sender.abandon(remainder).unwrap();
    while !events.iter().any(|e| matches!(e, Event::Released { .. })) {
        events.extend(sender.poll(Duration::from_millis(100)).unwrap());
    }
}

#[test]
fn a_disabled_ring_reports_its_error() {
    let ring = IoUring::builder().setup_r_disabled().build(8).unwrap();
    let mut sender = FrameSender::with_ring(ring, 1, 4096, Policy::always(Path::Copy)).unwrap();
    let (tx, _rx) = connected();
    let mut batch = Batch::new();
    batch.push(b"header", Payload::None).unwrap();
    match sender.submit(tx.as_fd(), batch) {
        Err(FrameError::Ring { id: Some(_), errno }) => assert_eq!(errno, libc::EBADFD),
        other => panic!("expected the ring's EBADFD, got {other:?}"),
    }
}

#[test]
fn wait_for_gives_up_at_the_callers_timeout() {
    let mut sender = FrameSender::new(64, BUFFERS, BUFFER_LEN).unwrap();
    let (tx, rx) = connected();
    nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let mut batch = Batch::new();
    batch
        .push(&header(0, 200_000), filled(&sender, 0, 0, 200_000))
        .unwrap();
    let id = sender.submit(tx.as_fd(), batch).unwrap();
    let start = Instant::now();
    let err = sender.wait_for(id, Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(rx);
}

#[test]
fn bad_batches_are_refused_before_anything_is_sent() {
    let (mut ring, pool, mut core) = core_ring(Policy::always(Path::Copy));
    let (tx, _rx) = connected();
    assert_eq!(
        core.submit(&mut ring, tx.as_fd(), Batch::new()).err(),
        Some(FrameError::Empty)
    );
    let stray = TxPool::new(1, 4096).unwrap();
    let mut batch = Batch::new();
    batch
        .push(b"h", Payload::Fixed(stray.lease(4).unwrap()))
        .unwrap();
    assert_eq!(
        core.submit(&mut ring, tx.as_fd(), batch).err(),
        Some(FrameError::NotRegistered { frame: 0 })
    );
    let mut other = IoUring::new(4).unwrap();
    let mut batch = Batch::new();
    batch
        .push(b"h", Payload::Fixed(pool.lease(4).unwrap()))
        .unwrap();
    assert_eq!(
        core.submit(&mut other, tx.as_fd(), batch).err(),
        Some(FrameError::WrongRing)
    );
    assert_eq!(core.in_flight(), 0);
}

#[test]
fn the_api_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<SendCore>();
    send::<FrameSender>();
    send::<TxPool>();
    send::<sendzc_iov::frame::Lease>();
    send::<Batch>();
    send::<Event>();
}

#[test]
fn a_registered_file_is_a_target() {
    let (mut ring, pool, mut core) = core_ring(Policy::always(Path::detect().unwrap()));
    let (tx, mut rx) = connected();
    ring.submitter()
        .register_files(&[std::os::fd::AsRawFd::as_raw_fd(&tx)])
        .unwrap();
    let batch = one_frame(&pool, 4);
    let target = Target::fixed(
        io_uring::types::Fixed(0),
        sendzc_iov::frame::SocketKind::Stream,
    );
    core.submit(&mut ring, target, batch).unwrap();
    ring.submit().unwrap();
    let mut got = vec![0; 24 + 65536];
    rx.read_exact(&mut got).unwrap();
    assert!(got[24..] == pattern(4, 65536)[..]);
    let mut released = false;
    while !released {
        for event in reap(&mut ring).iter().flat_map(|c| core.complete(c)) {
            assert!(!matches!(event, Event::Failed { .. }), "{event:?}");
            released |= matches!(event, Event::Released { .. });
        }
    }
}

#[test]
fn control_messages_reach_the_socket() {
    // IP_TOS as a control message of the send, read back with IP_RECVTOS.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(WAIT)).unwrap();
    nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::IpRecvTos, &true).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sender = FrameSender::new(8, 1, 4096).unwrap();
    let mut batch = Batch::new();
    batch.push(b"tos", Payload::None).unwrap();
    batch
        .to(rx.local_addr().unwrap())
        .control(libc::SOL_IP, libc::IP_TOS, &0x28i32.to_ne_bytes());
    let id = sender.submit(tx.as_fd(), batch).unwrap();
    until_released(&mut sender, &[id]);
    let mut buf = [0u8; 16];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(u8);
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&rx),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let tos: Vec<u8> = msg
        .cmsgs()
        .unwrap()
        .filter_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::Ipv4Tos(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(tos, [0x28]);
}

#[test]
fn the_release_waits_for_the_bytes_to_leave() {
    let mut sender = FrameSender::new(16, BUFFERS, BUFFER_LEN).unwrap();
    let (tx, mut rx) = held_back();
    let mut batch = Batch::new();
    batch
        .push(&header(5, 65536), filled(&sender, 0, 5, 65536))
        .unwrap();
    let path = sender.core().path_for(Target::from(tx.as_fd()), &batch);
    let id = sender.submit(tx.as_fd(), batch).unwrap();
    let mut events = Vec::new();
    for _ in 0..5 {
        events.extend(sender.poll(Duration::from_millis(100)).unwrap());
    }
    assert!(matches!(events[..], [Event::Sent { .. }]), "{events:?}");
    if path.zero_copy() {
        assert_eq!(
            sender.core().in_flight(),
            1,
            "released while its bytes wait to be sent"
        );
    }
    let mut got = vec![0; FILLER + 24 + 65536];
    rx.read_exact(&mut got).unwrap();
    until_released(&mut sender, &[id]);
    assert!(got[FILLER + 24..] == pattern(5, 65536)[..]);
}
