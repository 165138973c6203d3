//! Process events while mixed requests are in flight: the ring, the sending
//! socket or the whole process goes away; the process forks; RLIMIT_MEMLOCK
//! runs out.
//!
//! The requests mix COPY headers, FIXED payloads from several registered
//! buffers and USER iovecs, and a receiver that does not read (a small
//! SO_RCVBUF from the handshake on, the smallest SO_SNDBUF at the sender,
//! TCP over loopback) keeps them in flight: short and waiting in poll, linked behind
//! another and not imported yet, or queued with their notification pending.
//! That is when a request holds the most (buffer nodes, user page pins,
//! bounce fragments, memlock accounting, the attribute array of a request not
//! imported yet), and the process events make the release paths run from
//! unusual places: ring exit work, task_work that falls back to a workqueue
//! once the task is gone, orphaned and reset sockets.
//!
//! - Teardown, IPv4 and IPv6: the ring is closed; or the socket, then the
//!   ring; or the process exits or is killed (a child re-executed from this
//!   binary) with requests in flight. Registered buffer 0 is a memfd that a
//!   process living on holds (this one, or the parent of the child):
//!   F_SEAL_WRITE must be refused while skbs still point into it, and granted
//!   within [`SEAL_BOUND`] once the receivers have drained or reset the
//!   connections. What each receiver got must be a prefix of its stream.
//! - fork(): the private anonymous page of a USER iovec becomes copy-on-write
//!   shared while a request holds it, and the parent then writes it. The
//!   series holds user pages by reference, as user memory zero-copy does, so
//!   the write breaks COW into a new page and the wire must carry the bytes
//!   of submit time (were the pages FOLL_PIN-ned, fork would copy for the
//!   child instead and the write would reach the wire). A control without
//!   fork shows that the page was still in use when it was written.
//! - RLIMIT_MEMLOCK, in a child process because limits are per process (the
//!   guest runs the tests with `ulimit -l unlimited`): without CAP_IPC_LOCK,
//!   requests are submitted until one fails with -ENOMEM, then smaller ones
//!   until one fails too, so that the limit is reached to the page. Drained,
//!   every request completes with its bytes; saturated again, the requests
//!   must hold exactly as many pages as the first time: the accounting came
//!   back to where it started.
//!
//! Kernel splats and leaks are the guest runner's check of the kernel log.

use std::io::Read;
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use io_uring::squeue::{self, Flags};
use rstest::rstest;
use sendzc_iov_vm_tests::process::{
    child_role, drop_cap_ipc_lock, parent_socket, pending, read_exact_within, read_to_eof,
    recv_fds, send_fds, set_memlock_limit, unacknowledged, Child, Forked, ZeroWindow,
};
use sendzc_iov_vm_tests::{
    pattern, require_feature, seal_write, zc_completion, Cqe, Family, MmapBuf, Op, RegBufs,
    Request, Ring, Seg, ZcCompletion, CQE_TIMEOUT,
};

/// Registered buffer 0 of the teardown tests, a memfd.
const MEMFD: usize = 512 * 1024;
const BUF_SIZES: [usize; 3] = [MEMFD, 256 * 1024, 64 * 1024];
/// How long released pages may take to become sealable.
const SEAL_BOUND: Duration = Duration::from_secs(20);
/// How long a receiver may take to read what is coming.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long a child process may take to report or to exit (TCG is slow).
const CHILD_BOUND: Duration = Duration::from_secs(60);
/// How long submitted requests get to reach their in-flight state.
const SETTLE: Duration = Duration::from_millis(300);
const PAGE: usize = 4096;

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;

fn hdr(seq: u8) -> Seg {
    Seg::Copy(pattern(24, 100 + seq))
}

fn fixed(buf: u16, off: usize, len: usize) -> Seg {
    Seg::Fixed { buf, off, len }
}

/// A line in the test's output and in the kernel log, for the record.
fn note(line: &str) {
    eprintln!("{line}");
    let _ = std::fs::write("/dev/kmsg", format!("sendzc-process: {line}\n"));
}

/// The SQE of `req`, with MSG_WAITALL (a short send waits for the rest).
fn send_entry(req: &Request, op: Op, fd: RawFd, flags: Flags, user_data: u64) -> squeue::Entry {
    let mut sqe = req.sqe(op, fd);
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    sqe.flags |= flags.bits();
    sqe.user_data(user_data).into_entry()
}

/// Points USER iovec `seg` of `req` at `mem`, which holds the same bytes as
/// the segment (so `req.expected()` stays right) in a mapping of its own.
fn point_at(req: &mut Request, seg: usize, mem: &MmapBuf) {
    assert!(matches!(&req.segs[seg], Seg::User(bytes) if bytes[..] == mem.as_slice()[..]));
    req.iov[seg].iov_base = mem.as_slice().as_ptr() as *mut libc::c_void;
    req.sync_msg();
}

/// A fresh private anonymous mapping holding `bytes`, without huge pages.
fn private_copy(bytes: &[u8]) -> MmapBuf {
    let mut mem = MmapBuf::new(bytes.len()).unwrap();
    mem.no_huge_pages().unwrap();
    mem.as_mut_slice().copy_from_slice(bytes);
    mem
}

/// The CQEs that are there, without waiting.
fn ready_cqes(ring: &mut Ring) -> Vec<Cqe> {
    ring.ring.submit().unwrap();
    ring.ring.completion().map(|e| Cqe::from(&e)).collect()
}

/// Collects CQEs into `cqes` until `done(cqes)`, for at most `within`.
fn reap_into(
    ring: &mut Ring,
    cqes: &mut Vec<Cqe>,
    within: Duration,
    done: impl Fn(&[Cqe]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        cqes.extend(ring.ring.completion().map(|e| Cqe::from(&e)));
        if done(cqes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CQEs missing after {within:?}; got {cqes:?}"
        );
        let ts = io_uring::types::Timespec::from(Duration::from_millis(100));
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        match ring.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => panic!("io_uring_enter: {e}"),
        }
    }
}

/// True once request `user_data` has all its CQEs: its result and, if that
/// has F_MORE, its notification.
fn complete(cqes: &[Cqe], user_data: u64) -> bool {
    zc_completion(cqes, user_data).is_ok_and(|z| z.notif.is_some() || !z.result.has_more())
}

/// Waits until data reached `rx`, gives the requests [`SETTLE`] more, and
/// returns the CQEs posted by then: none may be a notification or an error,
/// so every request is still in flight.
fn settle(ring: &mut Ring, rx: &TcpStream) -> Vec<Cqe> {
    let deadline = Instant::now() + CQE_TIMEOUT;
    while !pending(rx).unwrap() {
        assert!(Instant::now() < deadline, "nothing reached the receiver");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(SETTLE);
    let cqes = ready_cqes(ring);
    assert!(
        !cqes.iter().any(|c| c.is_notif() || c.res < 0),
        "a request completed or failed before the test could act: {cqes:?}"
    );
    cqes
}

// ---------------------------------------------------------------------------
// Teardown with requests in flight

/// A: long, short-sent and waiting in poll. B: linked behind A, prepped but
/// not imported. C: on a second connection, SEND_ZC vectored from io-wq.
fn planned_requests(bufs: &RegBufs) -> [Request; 3] {
    [
        Request::new(
            vec![
                hdr(0),
                fixed(0, 3, MEMFD - 3),
                hdr(1),
                fixed(1, 0, 256 * 1024),
                hdr(2),
                fixed(2, 100, 30000),
                Seg::User(pattern(20000, 7)),
            ],
            bufs,
        ),
        Request::new(
            vec![
                hdr(3),
                fixed(0, 0, 64 * 1024),
                Seg::User(pattern(5000, 8)),
                hdr(4),
                fixed(2, 0, 1000),
            ],
            bufs,
        ),
        Request::new(
            vec![
                hdr(5),
                fixed(1, 5, 200 * 1024),
                hdr(6),
                fixed(0, 4096, 256 * 1024),
                Seg::User(pattern(9000, 9)),
            ],
            bufs,
        ),
    ]
}

/// What each connection carries if everything is sent: A then B; C.
fn streams(reqs: &[Request; 3]) -> [Vec<u8>; 2] {
    [
        [reqs[0].expected(), reqs[1].expected()].concat(),
        reqs[2].expected().to_vec(),
    ]
}

/// The streams of [`planned_requests`], computed in a process that did not
/// send them: buffer contents depend on the index only, not on the backing.
fn expected_streams() -> [Vec<u8>; 2] {
    let ring = Ring::new(2).unwrap();
    let bufs = RegBufs::register(&ring, &BUF_SIZES).unwrap();
    streams(&planned_requests(&bufs))
}

/// A ring with [`planned_requests`] in flight over two zero-window
/// connections, buffer 0 a memfd.
struct InFlight {
    ring: Ring,
    bufs: RegBufs,
    memfd: OwnedFd,
    conns: [ZeroWindow; 2],
    /// Freed only once nothing in the kernel can read them (see free()).
    requests: ManuallyDrop<[Request; 3]>,
    /// Where each request stood when it was left in flight.
    state: String,
}

fn start_in_flight(family: Family) -> InFlight {
    let mut ring = Ring::new(8).unwrap();
    let (mem, memfd) = MmapBuf::memfd(MEMFD).unwrap();
    let mut mems = vec![mem];
    mems.extend(BUF_SIZES[1..].iter().map(|&len| MmapBuf::new(len).unwrap()));
    let bufs = RegBufs::register_bufs(&ring, mems).unwrap();
    let conns = [
        ZeroWindow::new(family).unwrap(),
        ZeroWindow::new(family).unwrap(),
    ];
    let requests = ManuallyDrop::new(planned_requests(&bufs));
    let (tx0, tx1) = (conns[0].tx.as_raw_fd(), conns[1].tx.as_raw_fd());
    let entries = [
        send_entry(&requests[0], Op::SendMsgZc, tx0, Flags::IO_LINK, A),
        send_entry(&requests[1], Op::SendMsgZc, tx0, Flags::empty(), B),
        send_entry(&requests[2], Op::SendZcVectored, tx1, Flags::ASYNC, C),
    ];
    for entry in &entries {
        // SAFETY: the requests are ManuallyDrop: freed only after the
        // memfd's pages are released, when nothing can read them any more,
        // or never.
        unsafe { ring.push(entry) }.unwrap();
    }
    ring.ring.submit().unwrap();
    let cqes = settle(&mut ring, &conns[0].rx);
    let state = describe(&cqes, &requests);
    InFlight {
        ring,
        bufs,
        memfd,
        conns,
        requests,
        state,
    }
}

/// Where each request stands, from the CQEs posted so far.
fn describe(cqes: &[Cqe], reqs: &[Request; 3]) -> String {
    let names = [("A", A), ("B", B), ("C", C)];
    names
        .iter()
        .zip(reqs)
        .map(
            |((name, ud), req)| match cqes.iter().find(|c| c.user_data == *ud) {
                Some(c) => {
                    assert_eq!(c.res, req.len() as i32, "{name}: {cqes:?}");
                    format!("{name} sent, notification pending")
                }
                None => format!("{name} waiting"),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// Frees the requests' memory, once the kernel holds nothing of theirs.
fn free(requests: ManuallyDrop<[Request; 3]>) {
    drop(ManuallyDrop::into_inner(requests));
}

/// F_SEAL_WRITE must be refused while skbs in a send queue point into the
/// memfd: releasing its pages then would leave them pointing at freed memory.
fn assert_pages_held(memfd: &OwnedFd, state: &str) {
    let refused = seal_write(memfd, Duration::ZERO)
        .expect_err("F_SEAL_WRITE succeeded while the stack still had data queued from the memfd");
    assert_eq!(refused.raw_os_error(), Some(libc::EBUSY), "{state}");
}

/// Each receiver got a prefix of its stream, and the first one something.
fn check_prefixes(got: &[Vec<u8>], streams: &[Vec<u8>; 2], state: &str) {
    for (i, (got, stream)) in got.iter().zip(streams).enumerate() {
        let differs = got.iter().zip(stream).position(|(a, b)| a != b);
        assert!(
            got.len() <= stream.len() && differs.is_none(),
            "{state}: connection {i} got {} bytes, not a prefix of its {} \
             (first difference at {differs:?})",
            got.len(),
            stream.len()
        );
    }
    assert!(!got[0].is_empty(), "{state}: nothing arrived");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// (a) the ring is closed; the sockets stay open and are drained.
    RingFirst,
    /// (b) the sending sockets are closed, then the ring; the receivers are
    /// closed unread, which resets the connections.
    SocketFirst,
    /// (c) a child process with everything in flight exits...
    ProcessExits,
    /// ...or is killed.
    ProcessKilled,
}

#[rstest]
fn closing_with_requests_in_flight_releases_every_page(
    #[values(
        Close::RingFirst,
        Close::SocketFirst,
        Close::ProcessExits,
        Close::ProcessKilled
    )]
    how: Close,
    #[values(Family::V4, Family::V6)] family: Family,
) {
    require_feature();
    let state = match how {
        Close::RingFirst => ring_closed_first(family),
        Close::SocketFirst => socket_closed_first(family),
        Close::ProcessExits | Close::ProcessKilled => process_ends(family, how),
    };
    note(&format!("{how:?}/{family:?}: {state}"));
}

fn ring_closed_first(family: Family) -> String {
    let InFlight {
        ring,
        bufs,
        memfd,
        mut conns,
        requests,
        state,
    } = start_in_flight(family);
    drop(ring);
    drop(bufs);
    assert_pages_held(&memfd, &state);
    let got = drain_until_released(&mut conns, &memfd, &state);
    check_prefixes(&got, &streams(&requests), &state);
    free(requests);
    state
}

/// Reads the receivers, the senders still open, until the memfd takes
/// F_SEAL_WRITE: nothing but the queued data may hold its pages. (Until the
/// ring's exit work has cancelled them, requests may still send more.)
fn drain_until_released(conns: &mut [ZeroWindow], memfd: &OwnedFd, state: &str) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + SEAL_BOUND;
    let mut got = vec![Vec::new(); conns.len()];
    loop {
        for (conn, got) in conns.iter_mut().zip(&mut got) {
            let more = conn
                .drain(DRAIN_BOUND)
                .unwrap_or_else(|e| panic!("{state}: {e}"));
            got.extend(more);
        }
        if seal_write(memfd, Duration::ZERO).is_ok() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{state}: pages still held {SEAL_BOUND:?} after the ring was closed, \
             with nothing left unacknowledged"
        );
    }
}

fn socket_closed_first(family: Family) -> String {
    let InFlight {
        ring,
        bufs,
        memfd,
        conns: [first, second],
        requests,
        state,
    } = start_in_flight(family);
    // The requests still hold the sockets: closing the descriptors does not
    // close them, the ring's cancellation does.
    drop((first.tx, second.tx));
    drop(ring);
    drop(bufs);
    assert_pages_held(&memfd, &state);
    // Unread data at close: the receivers reset their connections.
    drop((first.rx, second.rx));
    seal_write(&memfd, SEAL_BOUND).unwrap_or_else(|e| {
        panic!("{state}: pages still held after the connections were reset: {e}")
    });
    free(requests);
    state
}

/// The child runs [`child_with_requests_in_flight`] and hands over the
/// memfd and both receivers; this process outlives it and checks.
fn process_ends(family: Family, how: Close) -> String {
    let mut child = Child::spawn(
        "child_with_requests_in_flight",
        &format!("{how:?} {family:?}"),
    )
    .expect("re-executing the test binary");
    let (state, fds) = recv_fds(&child.socket, CHILD_BOUND).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("no report from the child: {e}\n{}", child.output())
    });
    let [memfd, rx0, rx1]: [OwnedFd; 3] = fds
        .try_into()
        .unwrap_or_else(|fds: Vec<_>| panic!("{} descriptors from the child", fds.len()));
    if how == Close::ProcessKilled {
        child.kill().unwrap();
    }
    let status = child
        .wait(CHILD_BOUND)
        .unwrap_or_else(|e| panic!("{e}\n{}", child.output()));
    match how {
        Close::ProcessKilled => assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}"),
        _ => assert_eq!(status.code(), Some(0), "{}", child.output()),
    }
    assert_pages_held(&memfd, &state);
    // Its sockets orphaned, the dead process's data still goes out, then FIN.
    let got: Vec<Vec<u8>> = [rx0, rx1]
        .map(TcpStream::from)
        .iter_mut()
        .map(|rx| read_to_eof(rx, DRAIN_BOUND).unwrap_or_else(|e| panic!("{state}: {e}")))
        .collect();
    seal_write(&memfd, SEAL_BOUND).unwrap_or_else(|e| {
        panic!("{state}: pages still held after the process ended and its data was read: {e}")
    });
    check_prefixes(&got, &expected_streams(), &state);
    state
}

#[test]
#[ignore = "the child process of closing_with_requests_in_flight_releases_every_page"]
fn child_with_requests_in_flight() {
    let Some(role) = child_role() else { return };
    let family = if role.ends_with("V6") {
        Family::V6
    } else {
        Family::V4
    };
    let flight = start_in_flight(family);
    let mut parent = parent_socket().unwrap();
    let fds = [
        flight.memfd.as_raw_fd(),
        flight.conns[0].rx.as_raw_fd(),
        flight.conns[1].rx.as_raw_fd(),
    ];
    send_fds(&parent, &flight.state, &fds).unwrap();
    if role.starts_with("ProcessKilled") {
        // SIGKILL comes; EOF or the timeout only if the parent went away.
        let _ = parent.set_read_timeout(Some(CHILD_BOUND));
        let _ = parent.read(&mut [0u8; 1]);
    }
    // SAFETY: ends the process on the spot, ring, sockets and requests in
    // flight, which is the point; no destructor runs, nothing is freed.
    unsafe { libc::_exit(0) }
}

// ---------------------------------------------------------------------------
// fork() while a USER iovec's page is held
//
// The series pins USER pages (FOLL_PIN), so fork() copies a pinned page for
// the child instead of sharing it copy-on-write: the parent's buffer stays
// the memory being sent, and nothing the child does reaches the wire.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fork {
    /// The child exits at once; then the parent writes the page.
    ChildExitsFirst,
    /// The parent writes the page while the child still maps it.
    ParentWritesWhileChildLives,
    /// The child writes its copy of the page, then exits.
    ChildWrites,
    /// No fork: the write lands in the page the request holds, and shows on
    /// the wire. Not a property of the series, a check of this test: the
    /// page is still in use, far from the wire, when it is written.
    NoForkControl,
}

impl Fork {
    /// Whether the write shows on the wire: wherever the parent writes,
    /// as without a fork.
    fn write_is_sent(self) -> bool {
        self != Fork::ChildWrites
    }
}

const FORK_BUFS: [usize; 3] = [256 * 1024, 128 * 1024, 64 * 1024];

/// A mixed request ending with a USER iovec on `page`, behind 440 KiB of
/// FIXED payload that a zero window keeps in front of it.
fn request_ending_on(page: &MmapBuf, bufs: &RegBufs) -> Request {
    let mut req = Request::new(
        vec![
            hdr(0),
            fixed(0, 1, FORK_BUFS[0] - 1),
            hdr(1),
            fixed(1, 0, FORK_BUFS[1]),
            hdr(2),
            fixed(2, 7, 60000),
            Seg::User(page.as_slice().to_vec()),
        ],
        bufs,
    );
    point_at(&mut req, 6, page);
    req
}

/// Forks as `fork` says, and writes `fresh` into `page` from the parent or
/// the child.
fn fork_and_write(fork: Fork, page: &mut MmapBuf, fresh: &[u8]) {
    match fork {
        Fork::NoForkControl => page.as_mut_slice().copy_from_slice(fresh),
        Fork::ChildExitsFirst => {
            let mut child = Forked::exit_at_once().unwrap();
            assert_eq!(child.reap(CHILD_BOUND).unwrap(), 0);
            page.as_mut_slice().copy_from_slice(fresh);
        }
        Fork::ParentWritesWhileChildLives => {
            let mut child = Forked::live_until_released().unwrap();
            page.as_mut_slice().copy_from_slice(fresh);
            assert!(child.is_alive().unwrap(), "the child exited too early");
            child.release();
            assert_eq!(child.reap(CHILD_BOUND).unwrap(), 0);
        }
        Fork::ChildWrites => {
            let mut child = Forked::fill_and_exit(page.as_mut_slice(), fresh[0]).unwrap();
            assert_eq!(child.reap(CHILD_BOUND).unwrap(), 0);
        }
    }
}

#[rstest]
fn user_page_stays_the_parents_memory_across_fork(
    #[values(
        Fork::ChildExitsFirst,
        Fork::ParentWritesWhileChildLives,
        Fork::ChildWrites,
        Fork::NoForkControl
    )]
    fork: Fork,
) {
    require_feature();
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &FORK_BUFS).unwrap();
    let mut conn = ZeroWindow::new(Family::V4).unwrap();
    let mut page = private_copy(&pattern(PAGE, 42));
    let req = request_ending_on(&page, &bufs);
    let entry = send_entry(&req, Op::SendMsgZc, conn.tx.as_raw_fd(), Flags::empty(), A);
    // SAFETY: req, the page and the buffers outlive the reap below.
    unsafe { ring.push(&entry) }.unwrap();
    ring.ring.submit().unwrap();
    let seen = settle(&mut ring, &conn.rx);

    let fresh = vec![0xee; PAGE];
    fork_and_write(fork, &mut page, &fresh);
    let len = req.len();
    // The retries run as task_work in this thread, between its reads.
    let got = read_exact_within(&mut conn.rx, len, DRAIN_BOUND).unwrap();
    let done = finish(&mut ring, seen, A);
    assert_eq!(done.result.res, len as i32, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");

    let want = match fork.write_is_sent() {
        true => [&req.expected()[..len - PAGE], &fresh[..]].concat(),
        false => req.expected().to_vec(),
    };
    let differs = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        differs.is_none(),
        "{fork:?}: the wire differs from the expected bytes at {differs:?} \
         (the USER page starts at {})",
        len - PAGE
    );
}

/// Collects the CQEs of request `user_data` after those already `seen`,
/// checks nothing else comes, and returns its completion.
fn finish(ring: &mut Ring, mut seen: Vec<Cqe>, user_data: u64) -> ZcCompletion {
    reap_into(ring, &mut seen, DRAIN_BOUND, |c| complete(c, user_data));
    ring.expect_no_more_cqes().unwrap();
    zc_completion(&seen, user_data).unwrap()
}

// ---------------------------------------------------------------------------
// RLIMIT_MEMLOCK runs out

const MEMLOCK_LIMIT: u64 = 1 << 20;
const MEMLOCK_BUFS: [usize; 2] = [64 * 1024, 32 * 1024];
/// This many requests in flight without -ENOMEM: nothing is charged.
const MAX_IN_FLIGHT: usize = 64;
/// Pages that may be charged besides the buffers and the requests: the
/// ring's own memory.
const SLACK_PAGES: usize = 16;
const USER_LEN: usize = 128 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Size {
    /// COPY headers, FIXED payloads from two buffers, 128 KiB USER.
    Big,
    /// A COPY header, FIXED payloads and one USER page.
    Probe,
    /// A COPY header and FIXED payloads: nothing pinned, nothing charged.
    Headers,
}

impl Size {
    /// The pages the series charges to RLIMIT_MEMLOCK until the
    /// notification: the USER pages spanned. COPY bytes go to the ring's
    /// bounce cache, charged to the memcg, not to RLIMIT_MEMLOCK.
    fn pages(self) -> usize {
        match self {
            Size::Big => USER_LEN / PAGE,
            Size::Probe => 1,
            Size::Headers => 0,
        }
    }
}

/// Requests of [`Size::Headers`] that must still go at the limit.
const HEADERS_AT_LIMIT: usize = 8;

/// One request on a zero-window connection of its own, with the memory
/// it points at.
struct Flight {
    user_data: u64,
    conn: ZeroWindow,
    req: Request,
    _user: Option<MmapBuf>,
}

fn flight(size: Size, user_data: u64, bufs: &RegBufs) -> Flight {
    let conn = ZeroWindow::new(Family::V4).unwrap();
    // Every size is more than a zero-window connection takes in (some
    // 70 KiB), so that every request stays in flight.
    let (mut segs, user_len) = match size {
        Size::Big => (
            vec![
                hdr(0),
                fixed(0, 0, 64 * 1024),
                hdr(1),
                fixed(1, 0, 32 * 1024),
            ],
            USER_LEN,
        ),
        Size::Probe | Size::Headers => (
            vec![
                hdr(2),
                fixed(0, 0, 64 * 1024),
                fixed(1, 0, 32 * 1024),
                fixed(0, 0, 64 * 1024),
            ],
            if size == Size::Probe { PAGE } else { 0 },
        ),
    };
    if user_len == 0 {
        let req = Request::new(segs, bufs);
        return Flight {
            user_data,
            conn,
            req,
            _user: None,
        };
    }
    let bytes = pattern(user_len, user_data as u8);
    // Page-aligned, so that it spans exactly user_len / PAGE pages.
    let user = private_copy(&bytes);
    segs.push(Seg::User(bytes));
    let at = segs.len() - 1;
    let mut req = Request::new(segs, bufs);
    point_at(&mut req, at, &user);
    Flight {
        user_data,
        conn,
        req,
        _user: Some(user),
    }
}

/// Requests submitted until a big one, then a probe, failed.
#[derive(Default)]
struct Saturation {
    /// In flight, until drained.
    flights: Vec<Flight>,
    /// The two that failed with -ENOMEM.
    failed: Vec<Flight>,
    big: usize,
    probes: usize,
    cqes: Vec<Cqe>,
}

impl Saturation {
    /// Pages the requests in flight hold.
    fn pages(&self) -> usize {
        self.big * Size::Big.pages() + self.probes * Size::Probe.pages()
    }
}

/// Submits `flight`'s request; its errno if it failed at submission (a
/// prep failure posts its result before io_uring_enter returns).
fn launch(ring: &mut Ring, flight: &Flight, cqes: &mut Vec<Cqe>) -> Option<i32> {
    let fd = flight.conn.tx.as_raw_fd();
    let entry = send_entry(
        &flight.req,
        Op::SendMsgZc,
        fd,
        Flags::empty(),
        flight.user_data,
    );
    // SAFETY: the flight is kept in a Saturation until drain() has reaped
    // its notification.
    unsafe { ring.push(&entry) }.unwrap();
    cqes.extend(ready_cqes(ring));
    let result = cqes
        .iter()
        .find(|c| c.user_data == flight.user_data && !c.is_notif())?;
    (result.res < 0).then_some(-result.res)
}

/// Big requests until one fails, then probes until one fails: the requests
/// in flight then hold the limit to the page. Then requests that pin
/// nothing, which must still go.
fn saturate(ring: &mut Ring, bufs: &RegBufs, next: &mut u64) -> Saturation {
    let mut s = Saturation::default();
    for size in [Size::Big, Size::Probe] {
        loop {
            assert!(
                s.flights.len() < MAX_IN_FLIGHT,
                "{MAX_IN_FLIGHT} requests in flight under a {MEMLOCK_LIMIT} B \
                 RLIMIT_MEMLOCK and none failed: nothing is charged"
            );
            *next += 1;
            let f = flight(size, *next, bufs);
            match launch(ring, &f, &mut s.cqes) {
                None if size == Size::Big => s.big += 1,
                None => s.probes += 1,
                Some(errno) => {
                    assert_eq!(errno, libc::ENOMEM, "{size:?} request {}", f.user_data);
                    s.failed.push(f);
                    break;
                }
            }
            s.flights.push(f);
        }
    }
    for _ in 0..HEADERS_AT_LIMIT {
        *next += 1;
        let f = flight(Size::Headers, *next, bufs);
        if let Some(errno) = launch(ring, &f, &mut s.cqes) {
            panic!(
                "a request that pins nothing failed at the limit with errno \
                 {errno}: its COPY header was charged to RLIMIT_MEMLOCK"
            );
        }
        s.flights.push(f);
    }
    s.cqes.extend(ready_cqes(ring));
    let early: Vec<&Cqe> = s.cqes.iter().filter(|c| c.is_notif()).collect();
    let failed: Vec<u64> = s.failed.iter().map(|f| f.user_data).collect();
    assert!(
        early.iter().all(|c| failed.contains(&c.user_data)),
        "a request in flight completed before the drain: {early:?}"
    );
    s
}

/// Lets every receiver read; checks that every request completed with all
/// its bytes, that the failed ones followed the CQE protocol and sent
/// nothing, and that nothing else is posted.
fn drain(ring: &mut Ring, s: Saturation) {
    let readers: Vec<_> = s
        .flights
        .iter()
        .map(|f| {
            let mut rx = f.conn.rx.try_clone().unwrap();
            let len = f.req.len();
            std::thread::spawn(move || read_exact_within(&mut rx, len, DRAIN_BOUND))
        })
        .collect();
    let all: Vec<u64> = s
        .flights
        .iter()
        .chain(&s.failed)
        .map(|f| f.user_data)
        .collect();
    let mut cqes = s.cqes;
    reap_into(ring, &mut cqes, DRAIN_BOUND, |c| {
        all.iter().all(|&ud| complete(c, ud))
    });
    ring.expect_no_more_cqes().unwrap();
    for (f, reader) in s.flights.iter().zip(readers) {
        let done = zc_completion(&cqes, f.user_data).unwrap();
        assert_eq!(done.result.res, f.req.len() as i32, "{done:?}");
        assert!(done.notif.is_some(), "{done:?}");
        let got = reader.join().unwrap().unwrap();
        assert!(
            got == f.req.expected(),
            "request {}: wrong bytes",
            f.user_data
        );
    }
    for f in &s.failed {
        check_failed(&cqes, f);
    }
}

/// -ENOMEM, as every error after the notification is allocated: with
/// F_MORE, and one notification; nothing on the wire.
fn check_failed(cqes: &[Cqe], f: &Flight) {
    let done = zc_completion(cqes, f.user_data).unwrap();
    assert_eq!(done.result.res, -libc::ENOMEM, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert!(!pending(&f.conn.rx).unwrap(), "a failed request sent bytes");
    assert_eq!(unacknowledged(&f.conn.tx).unwrap(), 0);
}

#[test]
fn memlock_runs_out_cleanly_and_the_accounting_comes_back() {
    require_feature();
    let mut child = Child::spawn("child_memlock", "memlock").expect("re-executing the test binary");
    let status = child.wait(CHILD_BOUND);
    let output = child.output();
    let status = status.unwrap_or_else(|e| panic!("{e}\n{output}"));
    assert!(
        status.success(),
        "the memlock child failed ({status}):\n{output}"
    );
    let summary = output
        .lines()
        .find_map(|l| l.split_once("memlock: limit").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no summary from the child:\n{output}"));
    note(&format!("RLIMIT_MEMLOCK{summary}"));
}

#[test]
#[ignore = "the child process of memlock_runs_out_cleanly_and_the_accounting_comes_back"]
fn child_memlock() {
    if child_role().is_none() {
        return;
    }
    drop_cap_ipc_lock().unwrap();
    set_memlock_limit(MEMLOCK_LIMIT).unwrap();
    let mut ring = Ring::new(64).unwrap();
    let mems = MEMLOCK_BUFS.map(|len| {
        let mem = MmapBuf::new(len).unwrap();
        mem.no_huge_pages().unwrap();
        mem
    });
    let bufs = RegBufs::register_bufs(&ring, mems.into()).unwrap();
    let mut next = 0;

    let first = saturate(&mut ring, &bufs, &mut next);
    let (big, probes, held) = (first.big, first.probes, first.pages());
    check_bounds(held);
    drain(&mut ring, first);
    // The same saturation again, first request of the size that failed
    // included: all that was charged was given back, to the page.
    let second = saturate(&mut ring, &bufs, &mut next);
    assert_eq!(
        (second.big, second.probes, second.pages()),
        (big, probes, held),
        "requests in flight at saturation, second time, vs first (big, probes, pages)"
    );
    drain(&mut ring, second);
    eprintln!(
        "memlock: limit {} KiB: -ENOMEM at big request {} ({} pages each), \
         then at probe {} (1 page); {held} pages held by requests in flight, \
         the same after draining; {HEADERS_AT_LIMIT} requests of COPY \
         headers and FIXED payloads went at the limit",
        MEMLOCK_LIMIT >> 10,
        big + 1,
        Size::Big.pages(),
        probes + 1
    );
}

/// The pages held at saturation: never more than the limit leaves after the
/// registered buffers, and short of it by no more than the ring's memory.
fn check_bounds(held: usize) {
    let limit = MEMLOCK_LIMIT as usize / PAGE;
    let registered: usize = MEMLOCK_BUFS.iter().map(|len| len / PAGE).sum();
    let room = limit - registered;
    assert!(
        held <= room && held + SLACK_PAGES >= room,
        "{held} pages held at saturation; {room} left by the limit after \
         the registered buffers"
    );
}
