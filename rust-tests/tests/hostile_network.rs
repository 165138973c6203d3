//! Mixed requests on the network paths where skbs are cloned, copied,
//! split and retransmitted.
//!
//! A mixed request's skbs carry managed frags of three origins at once
//! (COPY bounce fragments, pinned USER pages, FIXED pages of several
//! registered buffers), all released by one notification. A plain send
//! over loopback never takes them anywhere but to the receiver. These
//! tests take them where a real network does:
//!
//! - an AF_PACKET tap: each frame it sees is a clone whose frags go
//!   through skb_copy_ubufs(), and the clone then lives on in the tap's
//!   queue after the request has completed;
//! - netem loss, reordering, duplication and delay on a veth pair between
//!   two namespaces: TCP retransmits clones of skbs still queued, SACK
//!   splits and collapses them, netem clones duplicates and holds skbs;
//! - GSO in software (skb_segment()) or TSO, and MTU changes while a
//!   stream is in flight, which make TCP split skbs already queued.
//!
//! Every test checks the bytes where they arrive (at the receiver, and
//! in the tap's copies), that every request completes with its full
//! length and then exactly one notification (every wait bounded: a lost
//! notification fails the test, it does not hang it), that the
//! notification's res has no bits but IORING_NOTIF_USAGE_ZC_COPIED, and
//! last that nothing holds the pages of the memfd behind registered
//! buffer 0 any more (F_SEAL_WRITE succeeds after unregister and unmap):
//! a frag left behind in a clone, a retransmit or a duplicate keeps them.
//! KASAN, lockdep and kmemleak findings are the kernel log's to report.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use io_uring::squeue;
use rstest::rstest;
use sendzc_iov::sys::{IORING_NOTIF_USAGE_ZC_COPIED, IORING_SEND_ZC_REPORT_USAGE};
use sendzc_iov_vm_tests::net::{TcpPair, UdpPair};
use sendzc_iov_vm_tests::netns::{l4_payload, DummyLink, Frame, Side, Tap, VethPair};
use sendzc_iov_vm_tests::{
    pattern, require_feature, seal_write, zc_completion, Cqe, Family, MmapBuf, Op, RegBufs,
    Request, Ring, Seg, CQE_TIMEOUT,
};

/// Registered buffer 0 is a memfd of this size; 1 and 2 are anonymous.
const MEMFD_LEN: usize = 256 * 1024;
const ANON_LENS: [usize; 2] = [128 * 1024, 32 * 1024];

/// What netem does to every packet a veth end sends.
const NETEM: &str = "loss 5% reorder 25% duplicate 2% delay 1ms";

const TCP: u8 = 6;
const UDP: u8 = 17;

fn buffers(ring: &Ring) -> (RegBufs, OwnedFd) {
    let (memfd_buf, memfd) = MmapBuf::memfd(MEMFD_LEN).unwrap();
    let mut bufs = vec![memfd_buf];
    bufs.extend(ANON_LENS.iter().map(|&len| MmapBuf::new(len).unwrap()));
    (RegBufs::register_bufs(ring, bufs).unwrap(), memfd)
}

/// Unregisters and unmaps the buffers; then the memfd must take
/// F_SEAL_WRITE, which it refuses while anything holds its pages.
fn release_and_seal(ring: &Ring, bufs: RegBufs, memfd: &OwnedFd) {
    ring.ring.submitter().unregister_buffers().unwrap();
    drop(bufs);
    seal_write(memfd, Duration::from_secs(5))
        .expect("F_SEAL_WRITE: something still holds the pages of registered buffer 0");
}

/// A 24-byte COPY header naming its request (first 4 bytes) and part.
fn header(seq: u32, part: u8) -> Seg {
    let mut bytes = pattern(24, (seq as u8).wrapping_add(part.wrapping_mul(50)));
    bytes[..4].copy_from_slice(&seq.to_le_bytes());
    bytes[4] = part;
    Seg::Copy(bytes)
}

fn fixed(buf: u16, off: usize, len: usize) -> Seg {
    Seg::Fixed { buf, off, len }
}

/// One UDP datagram: COPY headers, FIXED payloads from the three buffers,
/// a USER payload. At most 1320 bytes: a 1500-byte MTU carries it
/// unfragmented over IPv4 and IPv6, which UDP zero-copy needs.
fn datagram(seq: u32) -> Vec<Seg> {
    let s = seq as usize;
    vec![
        header(seq, 0),
        fixed(0, s * 4099 % (MEMFD_LEN - 1000), 400 + s % 200),
        header(seq, 1),
        fixed(1, s * 7 % 100_000, 300),
        header(seq, 2),
        fixed(2, s * 13 % 30_000, 100 + s % 50),
        Seg::User(pattern(200, seq as u8)),
    ]
}

/// A few KiB of a TCP stream, made as a datagram is.
fn chunk(seq: u32) -> Vec<Seg> {
    let s = seq as usize;
    vec![
        header(seq, 0),
        fixed(0, s * 4099 % (MEMFD_LEN - 4000), 1500 + s * 11 % 2000),
        header(seq, 1),
        fixed(1, s * 7 % 100_000, 1200),
        header(seq, 2),
        fixed(2, s * 13 % 30_000, 1 + s % 64),
        Seg::User(pattern(600, seq as u8)),
    ]
}

/// About 84 KiB: GSO cuts its 64 KiB FIXED payload into many segments.
fn large(seq: u32) -> Vec<Seg> {
    let s = seq as usize;
    vec![
        header(seq, 0),
        fixed(0, s * 4099 % (MEMFD_LEN - 65536), 64 * 1024),
        header(seq, 1),
        fixed(1, 1 + s, 16 * 1024),
        Seg::User(pattern(3000 + s, seq as u8)),
    ]
}

fn requests(n: u32, shape: fn(u32) -> Vec<Seg>, bufs: &RegBufs) -> Vec<Request> {
    (0..n).map(|seq| Request::new(shape(seq), bufs)).collect()
}

/// Queues request `seq` (user_data `seq`): both opcodes take turns, every
/// one asks for REPORT_USAGE and waits for all its bytes (MSG_WAITALL),
/// and with `link` the next request starts only after this one.
fn push(ring: &mut Ring, req: &Request, fd: i32, seq: usize, link: bool) {
    let op = [Op::SendMsgZc, Op::SendZcVectored][seq % 2];
    let mut sqe = req.sqe(op, fd);
    sqe.ioprio |= IORING_SEND_ZC_REPORT_USAGE;
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    if link {
        sqe.flags |= squeue::Flags::IO_LINK.bits();
    }
    // SAFETY: the entry points into `req` and the registered buffers, which
    // send_all()'s callers keep alive until it returns, and it returns only
    // once every notification is in. A test that fails earlier panics; the
    // kernel then reads at worst stale memory of this process, and holds
    // its own references to the pages it sends from.
    unsafe { ring.push(&sqe.user_data(seq as u64).into_entry()) }.unwrap();
}

/// Collects CQEs into `cqes` until it holds `want` results (or
/// notifications); fails the test after CQE_TIMEOUT without progress.
fn wait_for(ring: &mut Ring, cqes: &mut Vec<Cqe>, notifs: bool, want: usize) {
    let count = |c: &[Cqe]| c.iter().filter(|c| c.is_notif() == notifs).count();
    let had = count(cqes);
    let what = if notifs { "notifications" } else { "results" };
    let new = ring
        .reap_until(|new| had + count(new) >= want)
        .unwrap_or_else(|e| panic!("waiting for {want} {what} (had {had}): {e}"));
    cqes.extend(new);
}

/// Fails unless every result in `cqes` is its request's full length.
fn check_results(cqes: &[Cqe], reqs: &[Request]) {
    for cqe in cqes.iter().filter(|c| !c.is_notif()) {
        let len = reqs[cqe.user_data as usize].len();
        assert_eq!(
            cqe.res, len as i32,
            "request {}: result {cqe:?}, its length is {len}",
            cqe.user_data
        );
    }
}

/// Sends `reqs` on `fd`, `window` at a time: the requests of a window are
/// linked (a stream keeps their order even when one waits for room), and
/// a window goes once the results of the one before are in, after
/// `between` has run. Returns every CQE once every request has its
/// notification.
fn send_all(
    ring: &mut Ring,
    reqs: &[Request],
    fd: i32,
    window: usize,
    mut between: impl FnMut(),
) -> Vec<Cqe> {
    let mut cqes = Vec::new();
    for (w, batch) in reqs.chunks(window).enumerate() {
        if w > 0 {
            between();
        }
        let first = w * window;
        for (i, req) in batch.iter().enumerate() {
            push(ring, req, fd, first + i, i + 1 < batch.len());
        }
        wait_for(ring, &mut cqes, false, first + batch.len());
        check_results(&cqes, reqs);
    }
    wait_for(ring, &mut cqes, true, reqs.len());
    ring.expect_no_more_cqes().unwrap();
    cqes
}

/// Checks each request's CQE protocol (result of full length, then
/// exactly one notification) and returns its notification's res.
fn check_completions(cqes: &[Cqe], reqs: &[Request]) -> Vec<u32> {
    let mut by_request = vec![Vec::new(); reqs.len()];
    for cqe in cqes {
        by_request[cqe.user_data as usize].push(*cqe);
    }
    by_request
        .iter()
        .enumerate()
        .map(|(seq, mine)| {
            let done = zc_completion(mine, seq as u64).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(done.result.res, reqs[seq].len() as i32, "request {seq}");
            let notif = done
                .notif
                .unwrap_or_else(|| panic!("request {seq}: no notification: {mine:?}"));
            let usage = notif.res as u32;
            assert_eq!(
                usage & !IORING_NOTIF_USAGE_ZC_COPIED,
                0,
                "request {seq}: stray bits in the notification's res: {notif:?}"
            );
            usage
        })
        .collect()
}

fn stream(reqs: &[Request]) -> Vec<u8> {
    reqs.iter().flat_map(|r| r.expected()).copied().collect()
}

/// Fails, naming the first wrong byte and its request, unless `got` is
/// `reqs` back to back.
fn assert_same_stream(got: &[u8], reqs: &[Request]) {
    let want = stream(reqs);
    if got == want {
        return;
    }
    let Some(at) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) else {
        return;
    };
    let mut start = 0;
    let seq = reqs
        .iter()
        .position(|r| {
            start += r.len();
            at < start
        })
        .unwrap_or(reqs.len());
    panic!(
        "the stream differs from what was sent at byte {at} of {} (in request {seq}); \
         {} bytes were received",
        want.len(),
        got.len()
    );
}

/// The stream check fails on a stream that lost one byte, and names where:
/// what the stream tests would report if the kernel dropped a byte (the
/// reader stops short after its read timeout) or skipped one (every byte
/// after it is shifted).
#[test]
#[should_panic(expected = "differs from what was sent at byte 3000 of 4000 (in request 1)")]
fn stream_check_catches_a_lost_byte() {
    let bufs = RegBufs { bufs: Vec::new() };
    let reqs: Vec<Request> = (0..2)
        .map(|seq| Request::new(vec![Seg::Copy(pattern(2000, seq))], &bufs))
        .collect();
    let mut got = stream(&reqs);
    got.remove(3000);
    assert_same_stream(&got, &reqs);
}

/// Sends `reqs` as one TCP stream (see send_all) while a thread reads it
/// at the receiver, and checks that the stream arrived intact and in order.
fn send_stream(
    ring: &mut Ring,
    tcp: &TcpPair,
    reqs: &[Request],
    window: usize,
    between: impl FnMut(),
) -> Vec<Cqe> {
    let rx = tcp.rx.try_clone().unwrap();
    let len = stream(reqs).len();
    let reader = std::thread::spawn(move || read_up_to(rx, len));
    let cqes = send_all(ring, reqs, tcp.tx.as_raw_fd(), window, between);
    assert_same_stream(&reader.join().unwrap(), reqs);
    cqes
}

/// Up to `len` bytes from `rx`: fewer if nothing comes for its read
/// timeout, so that a short stream is reported as such, not as an error.
fn read_up_to(mut rx: std::net::TcpStream, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut got = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match rx.read(&mut got[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
    got.truncate(filled);
    got
}

/// Sends `reqs` as datagrams (see send_all) while a thread collects what
/// reaches the receiver; returns the CQEs and the datagrams received.
fn send_datagrams(
    ring: &mut Ring,
    udp: &UdpPair,
    reqs: &[Request],
    window: usize,
) -> (Vec<Cqe>, Vec<Vec<u8>>) {
    let rx = udp.rx.try_clone().unwrap();
    nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20)).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| receive_until(&rx, &done));
        let stop = SetOnDrop(&done);
        let cqes = send_all(ring, reqs, udp.tx.as_raw_fd(), window, || {});
        drop(stop);
        (cqes, receiver.join().unwrap())
    })
}

/// Sets its flag when dropped, even by a panic's unwinding: a thread that
/// loops until the flag is set then ends, and so does the scope waiting
/// for it.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Datagrams from `rx` until `done` is set and a read has timed out.
fn receive_until(rx: &std::net::UdpSocket, done: &AtomicBool) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match rx.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if done.load(Ordering::SeqCst) {
                    return got;
                }
            }
            Err(e) => panic!("receiving datagrams: {e}"),
        }
    }
}

/// Fails unless every datagram is byte for byte one of `reqs` (named by
/// its header); returns how many times each request arrived.
fn count_datagrams(got: &[Vec<u8>], reqs: &[Request]) -> Vec<usize> {
    let mut times = vec![0; reqs.len()];
    for dgram in got {
        let seq = dgram
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            .filter(|&seq| seq < reqs.len())
            .unwrap_or_else(|| panic!("a datagram of no request: {} bytes", dgram.len()));
        assert!(
            dgram[..] == *reqs[seq].expected(),
            "datagram {seq} arrived with different bytes ({} bytes, sent {})",
            dgram.len(),
            reqs[seq].len()
        );
        times[seq] += 1;
    }
    times
}

/// Every frame the tap holds, oldest first.
fn drain(tap: &Tap) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        match tap.next_frame() {
            Ok(frame) => frames.push(frame),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return frames,
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
}

/// The non-empty `proto` payloads of the frames the host sent.
fn sent_payloads(frames: &[Frame], proto: u8) -> Vec<&[u8]> {
    frames
        .iter()
        .filter(|f| f.outgoing)
        .filter_map(|f| l4_payload(&f.bytes))
        .filter(|&(p, payload)| p == proto && !payload.is_empty())
        .map(|(_, payload)| payload)
        .collect()
}

/// Fails unless the tap saw data go out and every piece of it is `ok`.
fn assert_tap_copies(tap: &Tap, proto: u8, ok: impl Fn(&[u8]) -> bool) {
    let frames = drain(tap);
    let payloads = sent_payloads(&frames, proto);
    assert!(
        !payloads.is_empty(),
        "the tap saw {} frames, none of them data the host sent",
        frames.len()
    );
    for (i, payload) in payloads.iter().enumerate() {
        assert!(
            ok(payload),
            "the tap's copy of data frame {i} ({} bytes) is not what was sent",
            payload.len()
        );
    }
}

fn is_part_of(part: &[u8], whole: &[u8]) -> bool {
    whole.windows(part.len()).any(|w| w == part)
}

/// An AF_PACKET tap on the sender's veth end takes a clone of every frame:
/// skb_copy_ubufs() copies the clone's frags, the stack reports the
/// request as copied, the receiver gets the right bytes, the tap's copies
/// are right too, and with those copies still queued in the tap nothing
/// holds the registered buffer's pages once the notifications are in.
#[rstest]
#[case::tcp_v4(true, Family::V4)]
#[case::tcp_v6(true, Family::V6)]
#[case::udp_v4(false, Family::V4)]
#[case::udp_v6(false, Family::V6)]
fn packet_tap_gets_copies_and_leaves_the_buffers_free(#[case] tcp: bool, #[case] family: Family) {
    require_feature();
    let pair = VethPair::new(1500).unwrap();
    let tap = pair.a.run(|| Tap::open(Side::A.ifname())).unwrap();
    let mut ring = Ring::new(64).unwrap();
    let (bufs, memfd) = buffers(&ring);
    let (reqs, cqes, proto) = if tcp {
        let reqs = requests(8, chunk, &bufs);
        let cqes = send_stream(&mut ring, &pair.tcp(family).unwrap(), &reqs, 4, || {});
        (reqs, cqes, TCP)
    } else {
        let reqs = requests(8, datagram, &bufs);
        let (cqes, got) = send_datagrams(&mut ring, &pair.udp(family).unwrap(), &reqs, 4);
        let times = count_datagrams(&got, &reqs);
        assert!(
            times.iter().all(|&n| n == 1),
            "arrivals per datagram: {times:?}"
        );
        (reqs, cqes, UDP)
    };
    let usage = check_completions(&cqes, &reqs);
    assert!(
        usage.iter().all(|&u| u == IORING_NOTIF_USAGE_ZC_COPIED),
        "REPORT_USAGE per request: {usage:?}"
    );
    release_and_seal(&ring, bufs, &memfd);
    let sent = stream(&reqs);
    assert_tap_copies(&tap, proto, |p| match proto {
        TCP => is_part_of(p, &sent),
        _ => reqs.iter().any(|r| r.expected() == p),
    });
}

/// Through a dummy device nothing copies a datagram's frags, and
/// REPORT_USAGE says zero-copy; with a tap on the device, its clone's copy
/// is the only one: the requests must now be reported as copied, the tap
/// must hold exactly the bytes sent, and the buffer's pages must be free
/// while it holds them.
#[rstest]
fn packet_tap_alone_makes_zero_copy_datagrams_copied(
    #[values(Family::V4, Family::V6)] family: Family,
) {
    require_feature();
    let link = DummyLink::new().unwrap();
    let sock = link.udp(family).unwrap();
    let mut ring = Ring::new(64).unwrap();
    let (bufs, memfd) = buffers(&ring);
    let reqs = requests(8, datagram, &bufs);
    let (untapped, tapped) = reqs.split_at(4);
    let cqes = send_all(&mut ring, untapped, sock.as_raw_fd(), 4, || {});
    let usage = check_completions(&cqes, untapped);
    assert_eq!(usage, [0; 4], "REPORT_USAGE without a tap");

    let tap = link.ns.run(|| Tap::open(DummyLink::IFNAME)).unwrap();
    let cqes = send_all(&mut ring, tapped, sock.as_raw_fd(), 4, || {});
    let usage = check_completions(&cqes, tapped);
    assert_eq!(
        usage, [IORING_NOTIF_USAGE_ZC_COPIED; 4],
        "REPORT_USAGE with a tap"
    );
    release_and_seal(&ring, bufs, &memfd);
    let frames = drain(&tap);
    let payloads = sent_payloads(&frames, UDP);
    let want: Vec<&[u8]> = tapped.iter().map(Request::expected).collect();
    assert!(
        payloads == want,
        "the tap's {} datagrams are not the {} sent",
        payloads.len(),
        want.len()
    );
}

/// 200 mixed requests of a few KiB each, four in flight at a time, as one
/// TCP stream through netem (both ways: data and ACKs are lost, reordered,
/// duplicated and delayed): the receiver reads exactly that stream and
/// nothing more, and every request completes with its full length and one
/// notification.
#[rstest]
#[case::v4(Family::V4)]
#[case::v6(Family::V6)]
fn tcp_stream_through_netem_arrives_intact_and_in_order(#[case] family: Family) {
    require_feature();
    let pair = VethPair::new(1500).unwrap();
    let tcp = pair.tcp(family).unwrap();
    pair.netem(Side::A, NETEM).unwrap();
    pair.netem(Side::B, NETEM).unwrap();
    let mut ring = Ring::new(64).unwrap();
    let (bufs, memfd) = buffers(&ring);
    let reqs = requests(200, chunk, &bufs);
    let cqes = send_stream(&mut ring, &tcp, &reqs, 4, || {});
    check_completions(&cqes, &reqs);
    assert!(!tcp.pending().unwrap(), "bytes beyond the stream arrived");
    assert!(
        pair.a.counter("Tcp", "RetransSegs").unwrap() > 0,
        "netem lost nothing: no segment was retransmitted"
    );
    release_and_seal(&ring, bufs, &memfd);
}

/// 240 mixed datagrams through netem: whatever arrives, once or twice,
/// is byte for byte a datagram that was sent; most arrive; every request
/// completes with its full length and one notification.
#[rstest]
#[case::v4(Family::V4)]
#[case::v6(Family::V6)]
fn udp_datagrams_through_netem_arrive_as_exact_copies(#[case] family: Family) {
    require_feature();
    let pair = VethPair::new(1500).unwrap();
    let udp = pair.udp(family).unwrap();
    pair.netem(Side::A, NETEM).unwrap();
    let mut ring = Ring::new(64).unwrap();
    let (bufs, memfd) = buffers(&ring);
    let reqs = requests(240, datagram, &bufs);
    let (cqes, got) = send_datagrams(&mut ring, &udp, &reqs, 16);
    check_completions(&cqes, &reqs);
    let times = count_datagrams(&got, &reqs);
    assert!(
        times.iter().any(|&n| n != 1),
        "netem neither lost nor duplicated a datagram"
    );
    let arrived = times.iter().filter(|&&n| n > 0).count();
    assert!(
        arrived >= reqs.len() * 3 / 4,
        "only {arrived} of {} datagrams arrived through 5% loss",
        reqs.len()
    );
    release_and_seal(&ring, bufs, &memfd);
}

/// How long the MTUs stay as they are after each change.
const MTU_GAP: Duration = Duration::from_millis(200);

/// The MTU changes, over and over, from both ends at 9000. After every
/// other one the receiver's end is smaller than the segments the sender
/// makes: software GSO's segments are dropped (a GSO skb handed over whole
/// is not), and go again once the sender has shrunk too, re-split.
const MTU_STEPS: [(Side, u32); 8] = [
    (Side::B, 1280),
    (Side::A, 1280),
    (Side::A, 9000),
    (Side::B, 9000),
    (Side::B, 1500),
    (Side::A, 1500),
    (Side::A, 9000),
    (Side::B, 9000),
];

/// Makes the MTU changes, counting them in `changes`, until `stop` is set.
fn change_mtu_until(pair: &VethPair, stop: &AtomicBool, changes: &AtomicUsize) {
    for &(side, mtu) in MTU_STEPS.iter().cycle() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        pair.set_mtu(side, mtu).expect("ip link set mtu");
        changes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(MTU_GAP);
    }
}

/// Waits until `changes` has gone past `seen`, and records where it is.
fn wait_for_mtu_change(changes: &AtomicUsize, seen: &mut usize) {
    let deadline = Instant::now() + CQE_TIMEOUT;
    while changes.load(Ordering::SeqCst) <= *seen {
        assert!(
            Instant::now() < deadline,
            "the MTU has not changed for {CQE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    *seen = changes.load(Ordering::SeqCst);
}

/// 20 requests of about 84 KiB (64 KiB from one registered buffer) as one
/// TCP stream with SACK on, cut into MSS-sized segments in software
/// (skb_segment()) or handed to the veth whole (TSO), while another thread
/// changes the ends' MTUs between 1280, 1500 and 9000 (see MTU_STEPS):
/// every window of two requests goes out right after a change, so TCP
/// re-splits queued skbs to a new MSS and, with software GSO, segments
/// the receiver's end drops are retransmitted, re-split. The stream must
/// arrive intact, and every notification.
#[rstest]
#[case::v4_gso_in_software(Family::V4, false)]
#[case::v6_gso_in_software(Family::V6, false)]
#[case::v4_tso(Family::V4, true)]
fn tcp_stream_survives_gso_splits_and_mtu_changes(#[case] family: Family, #[case] tso: bool) {
    require_feature();
    let pair = VethPair::new(9000).unwrap();
    for side in [Side::A, Side::B] {
        pair.ns(side).sysctl("net/ipv4/tcp_sack", "1").unwrap();
    }
    pair.offload(Side::A, "tso", tso).unwrap();
    let tcp = pair.tcp(family).unwrap();
    let mut ring = Ring::new(64).unwrap();
    let (bufs, memfd) = buffers(&ring);
    let reqs = requests(20, large, &bufs);
    let stop = AtomicBool::new(false);
    let changes = AtomicUsize::new(0);
    let cqes = std::thread::scope(|scope| {
        scope.spawn(|| change_mtu_until(&pair, &stop, &changes));
        let _stop = SetOnDrop(&stop);
        let mut seen = 0;
        send_stream(&mut ring, &tcp, &reqs, 2, || {
            wait_for_mtu_change(&changes, &mut seen)
        })
    });
    check_completions(&cqes, &reqs);
    assert!(!tcp.pending().unwrap(), "bytes beyond the stream arrived");
    let retransmitted = pair.a.counter("Tcp", "RetransSegs").unwrap();
    assert!(
        tso || retransmitted > 0,
        "the receiver's smaller MTU made no segment be retransmitted"
    );
    release_and_seal(&ring, bufs, &memfd);
}
