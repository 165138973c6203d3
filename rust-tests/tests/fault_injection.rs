//! Every allocation failure on the way of a send ends cleanly.
//!
//! Systematic fault injection: writing N to a task's `fail-nth` makes its
//! N-th fault-injectable call fail (slab and page allocations, with the
//! debugfs knobs below opened up to GFP_KERNEL and order-0 pages). For each
//! request shape, transport and issue mode, N goes 1, 2, 3, ... until a run
//! sees no injection. Each run must end with a result CQE that is a
//! success or a clean errno, the CQE protocol intact (F_MORE if and only if
//! a notification follows), on the wire nothing for a failed request and
//! exactly what it reports for one that succeeded (UDP over loopback may
//! drop a datagram whose receive path failed: that is counted apart), and
//! every page released (a memfd-backed buffer takes F_SEAL_WRITE after the
//! ring is gone). Leaks and splats are vm-test's check of the kernel log.
//!
//! Inline runs arm the submitting thread across io_uring_enter(2); async
//! runs (IOSQE_ASYNC) arm the io-wq worker that issues the request; the
//! notification runs, on a DEFER_TASKRUN ring, take the result without
//! entering the kernel, let the receiver read (which frees the skbs), and
//! arm the thread while it waits for the notification, whose completion
//! task_work runs in that wait. Faults are never armed across
//! user-space code: a failed page fault there would kill the test.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use sendzc_iov::sqe::SendSqe;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::{
    pattern, record_cases, require_feature, seal_write, zc_completion, Cqe, Family, MmapBuf, Op,
    RegBufs, Request, Ring, Seg, Setup, Transport,
};

/// A run that still injects past this many points is a loop, not a sweep.
const MAX_POINTS: u32 = 600;
const MEMFD: usize = 64 * 1024;

/// Opens the fault attributes up to what a send allocates, and keeps each
/// injection from printing a stack trace.
fn open_up_fault_injection() {
    let debugfs = "/sys/kernel/debug";
    for (attr, value) in [
        ("failslab/ignore-gfp-wait", "N"),
        ("failslab/verbose", "0"),
        ("fail_page_alloc/ignore-gfp-wait", "N"),
        ("fail_page_alloc/ignore-gfp-highmem", "N"),
        ("fail_page_alloc/min-order", "0"),
        ("fail_page_alloc/verbose", "0"),
    ] {
        let path = format!("{debugfs}/{attr}");
        fs::write(&path, value).unwrap_or_else(|e| {
            panic!("{path}: {e}: the debug kernel has CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC and debugfs")
        });
    }
}

/// A task's `fail-nth`, opened beforehand: opening it while a fault is
/// armed would itself allocate, and fail.
struct FailNth(fs::File);

impl FailNth {
    fn open(path: &str) -> FailNth {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{path}: {e}: the debug kernel has CONFIG_FAULT_INJECTION"));
        FailNth(file)
    }

    fn this_thread() -> FailNth {
        FailNth::open("/proc/thread-self/fail-nth")
    }

    fn arm(&self, nth: u32) {
        self.0
            .write_at(nth.to_string().as_bytes(), 0)
            .expect("fail-nth");
    }

    /// True if the armed fault was injected; disarms it either way.
    ///
    /// With fail_usercopy, reading and writing `fail-nth` are fault points
    /// of their own: a read that the count reaches fails with EFAULT, which
    /// means nothing before it fired; a write it reaches fails the same
    /// way, and leaves the count at zero, as writing "0" would.
    fn fired(&self) -> bool {
        let mut left = [0u8; 16];
        let fired = match self.0.read_at(&mut left, 0) {
            Ok(n) => left[..n].trim_ascii() == b"0",
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => false,
            Err(e) => panic!("fail-nth: {e}"),
        };
        match self.0.write_at(b"0", 0) {
            Err(e) if e.raw_os_error() != Some(libc::EFAULT) => panic!("fail-nth: {e}"),
            _ => fired,
        }
    }
}

/// The io-wq workers of this process (threads named iou-wrk-*).
fn workers() -> Vec<FailNth> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("iou-wrk"))
        })
        .map(|t| FailNth::open(&t.path().join("fail-nth").display().to_string()))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// COPY headers, FIXED payloads over three buffers, a USER payload.
    Mixed,
    AllCopy,
    /// FIXED from two buffers: a copy mask over both, whose second buffer
    /// the notification holds in a struct of its own.
    AllFixed,
    /// FIXED from one buffer: sent as a copy mask without COPY iovecs.
    UniformFixed,
    /// The same iovecs as a registered buffer send without attributes,
    /// whose importer the series reshaped (io_import_reg_vec()).
    FixedBuf,
    /// As Mixed, through SEND_ZC with IORING_SEND_VECTORIZED.
    VectorizedMixed,
    /// Five COPY headers and FIXED payloads, and a USER tail: more
    /// attributes than the kernel reads onto its stack (UIO_FASTIOV), so it
    /// allocates them.
    ManyPairs,
    /// Ten COPY headers and FIXED payloads of one buffer as a copy mask:
    /// more bvecs than the iovec array holds, and over UDP more than an
    /// skb's frags, so the datagram is copied to fit.
    MaskedPairs,
}

impl Shape {
    fn segs(self) -> (Vec<Seg>, Op) {
        let fixed = |buf, off, len| Seg::Fixed { buf, off, len };
        let mixed = vec![
            Seg::Copy(pattern(24, 1)),
            fixed(0, 3, 9000),
            Seg::Copy(pattern(24, 2)),
            fixed(1, 0, 4000),
            Seg::Copy(pattern(24, 3)),
            fixed(2, 100, 2000),
            Seg::User(pattern(3000, 4)),
        ];
        match self {
            Shape::Mixed => (mixed, Op::SendMsgZc),
            Shape::VectorizedMixed => (mixed, Op::SendZcVectored),
            Shape::AllCopy => (
                vec![Seg::Copy(pattern(24, 5)), Seg::Copy(pattern(6000, 6))],
                Op::SendMsgZc,
            ),
            Shape::AllFixed => (vec![fixed(0, 0, 8000), fixed(1, 7, 5000)], Op::SendMsgZc),
            Shape::UniformFixed | Shape::FixedBuf => {
                (vec![fixed(0, 0, 8000), fixed(0, 9000, 5000)], Op::SendMsgZc)
            }
            Shape::ManyPairs => (
                (0..5u8)
                    .flat_map(|i| {
                        let off = usize::from(i) * 1000;
                        [
                            Seg::Copy(pattern(24, 10 + i)),
                            fixed(u16::from(i % 2), off, 1000),
                        ]
                    })
                    .chain([Seg::User(pattern(500, 30))])
                    .collect(),
                Op::SendMsgZc,
            ),
            Shape::MaskedPairs => (
                (0..10u8)
                    .flat_map(|i| {
                        let off = usize::from(i) * 3000;
                        [Seg::Copy(pattern(24, 20 + i)), fixed(0, off, 1000)]
                    })
                    .collect(),
                Op::SendMsgZc,
            ),
        }
    }

    /// The SQE that sends the shape's request: attributes, unless the
    /// shape says otherwise.
    fn sqe(self, req: &Request, op: Op, fd: i32) -> SendSqe {
        match self {
            Shape::MaskedPairs => req.sqe_masked(op, fd).expect("one buffer"),
            Shape::FixedBuf => req.sqe_fixed_buf(op, fd).expect("FIXED in one buffer"),
            _ => req.sqe(op, fd),
        }
    }
}

/// Where the fault is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Inline,
    Async,
    Notification,
}

#[derive(Default, Debug)]
struct Tally {
    injected: u64,
    clean_errors: u64,
    dropped: u64,
}

fn buffers(ring: &Ring) -> (RegBufs, OwnedFd) {
    let (mem, fd) = MmapBuf::memfd(MEMFD).unwrap();
    let bufs = vec![
        mem,
        MmapBuf::new(32 * 1024).unwrap(),
        MmapBuf::new(16 * 1024).unwrap(),
    ];
    (RegBufs::register_bufs(ring, bufs).unwrap(), fd)
}

/// Errors a send may report when an allocation on its way fails.
fn clean(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOMEM | libc::ENOBUFS | libc::EAGAIN | libc::EFAULT | libc::EINTR
    )
}

/// Submits what is queued with the fault armed in the calling thread;
/// returns whether it fired. A submission the fault refused (nothing
/// consumed) is made again, unarmed.
fn submit_armed(ring: &mut Ring, me: &FailNth, nth: u32) -> bool {
    me.arm(nth);
    let submitted = ring.ring.submit();
    let fired = me.fired();
    match submitted {
        Ok(_) => {}
        Err(e) if clean(e.raw_os_error().unwrap_or(0)) => {
            assert!(fired, "io_uring_enter failed without an injection: {e}");
            ring.ring
                .submit()
                .expect("the same submission, without a fault");
        }
        Err(e) => panic!("io_uring_enter: {e}"),
    }
    fired
}

/// One send of `shape` over `transport` with fault `nth` armed as `mode`
/// says; returns whether a fault was injected.
fn run(shape: Shape, transport: Transport, mode: Mode, nth: u32, tally: &mut Tally) -> bool {
    let what = format!("{shape:?} over {transport:?}, {mode:?}, fault {nth}");
    let mut ring = match mode {
        // Deferred task work runs only in this thread's waits, so the
        // notification's completion runs in the armed one.
        Mode::Notification => Ring::with_setup(8, Setup::DeferTaskrun).unwrap(),
        _ => Ring::new(8).unwrap(),
    };
    let (bufs, memfd) = buffers(&ring);
    let mut peer = Peer::new(transport, Family::V4).unwrap();
    let (segs, op) = shape.segs();
    let mut req = Request::new(segs, &bufs);
    if let Some(dest) = peer.dest() {
        req = req.to(dest);
    }
    let mut sqe = shape.sqe(&req, op, peer.fd());
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    if mode == Mode::Async {
        sqe.flags |= io_uring::squeue::Flags::ASYNC.bits();
    }
    // SAFETY: req and the buffers outlive the reap below.
    unsafe { ring.push(&sqe.user_data(1).into_entry()) }.unwrap();
    // Async: the worker issues the request after the submission returns,
    // so its fault is read once the request's CQEs are in.
    let workers = match mode {
        Mode::Async => workers(),
        _ => Vec::new(),
    };
    assert!(
        !workers.is_empty() || mode != Mode::Async,
        "{what}: no io-wq worker"
    );
    for worker in &workers {
        worker.arm(nth);
    }
    let mut fired = match mode {
        Mode::Inline => submit_armed(&mut ring, &FailNth::this_thread(), nth),
        _ => {
            ring.ring.submit().unwrap();
            false
        }
    };
    let mut cqes = Vec::new();
    let mut received = None;
    if mode == Mode::Notification {
        cqes = result_unarmed(&mut ring, &what);
    }
    // Nothing to arm for if no notification is announced (a request that
    // copies everything has none) or it is already in.
    let notif_pending =
        cqes.iter().any(|c| !c.is_notif() && c.has_more()) && !cqes.iter().any(Cqe::is_notif);
    if mode == Mode::Notification && notif_pending {
        // On TCP over loopback the receiver's skbs hold the notification:
        // read them first, so that only its completion is left.
        let res = cqes.iter().find(|c| !c.is_notif()).map_or(0, |c| c.res);
        if res > 0 {
            received = Some(
                peer.receive(res as usize)
                    .unwrap_or_else(|e| panic!("{what}: {e}")),
            );
        }
        let me = FailNth::this_thread();
        let ts = io_uring::types::Timespec::new().sec(5);
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        me.arm(nth);
        let _ = ring.ring.submitter().submit_with_args(1, &args);
        fired |= me.fired();
    }
    cqes.extend(
        ring.reap_until(|got| {
            let all: Vec<_> = cqes.iter().chain(got).copied().collect();
            zc_completion(&all, 1).is_ok_and(|z| z.notif.is_some() || !z.result.has_more())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}")),
    );
    ring.expect_no_more_cqes()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    for worker in &workers {
        fired |= worker.fired();
    }
    let done = zc_completion(&cqes, 1).unwrap_or_else(|e| panic!("{what}: {e}"));
    let res = done.result.res;
    if res < 0 {
        assert!(fired, "{what}: failed ({res}) without an injection");
        assert!(clean(-res), "{what}: errno {} is not a clean failure", -res);
        assert!(
            !peer.pending().unwrap(),
            "{what}: a failed request put bytes on the wire"
        );
        tally.clean_errors += 1;
    } else {
        let udp = transport != Transport::Tcp;
        let got = match (received, udp, peer.pending().unwrap()) {
            (Some(got), _, _) => Some(got),
            (None, true, false) if fired => {
                tally.dropped += 1;
                None
            }
            _ => Some(
                peer.receive(res as usize)
                    .unwrap_or_else(|e| panic!("{what}: {e}")),
            ),
        };
        if let Some(got) = got {
            assert!(
                got == req.expected()[..res as usize],
                "{what}: wrong bytes on the wire"
            );
            assert!(
                !peer.pending().unwrap(),
                "{what}: more on the wire than reported"
            );
        }
    }
    drop(ring);
    drop(req);
    drop(bufs);
    seal_write(&memfd, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: the memfd's pages are still held: {e}"));
    tally.injected += u64::from(fired);
    fired
}

/// The result CQE of a notification run, unarmed. An inline send posts
/// it during the submission: it is taken from the ring without entering
/// the kernel, which would run the notification's task work here. A send
/// that went to poll is waited for (its notification may then complete
/// unarmed, and the run injects nothing there).
fn result_unarmed(ring: &mut Ring, what: &str) -> Vec<Cqe> {
    let posted: Vec<Cqe> = ring.ring.completion().map(|e| Cqe::from(&e)).collect();
    if posted.iter().any(|c| !c.is_notif()) {
        return posted;
    }
    let mut cqes = posted;
    cqes.extend(
        ring.reap_until(|c| c.iter().any(|c| !c.is_notif()))
            .unwrap_or_else(|e| panic!("{what}: {e}")),
    );
    cqes
}

/// A line in the kernel log (the guest's console shows it as it comes).
fn progress(line: &str) {
    let _ = fs::write("/dev/kmsg", format!("sendzc-fault: {line}\n"));
}

/// Fault 1, 2, 3, ... until a run sees none.
fn sweep(shape: Shape, transport: Transport, mode: Mode, tally: &mut Tally) -> u32 {
    for nth in 1..=MAX_POINTS {
        if nth % 20 == 1 {
            progress(&format!("{shape:?}/{transport:?}/{mode:?}: fault {nth}"));
        }
        if !run(shape, transport, mode, nth, tally) {
            progress(&format!(
                "{shape:?}/{transport:?}/{mode:?}: {} points",
                nth - 1
            ));
            return nth - 1;
        }
    }
    panic!("{shape:?} over {transport:?}, {mode:?}: still injecting after {MAX_POINTS} faults");
}

/// Makes sure an unbound io-wq worker exists, as a socket send forced
/// async is issued by one (a NOP would get a bound worker, which never
/// issues sends): one byte to a UDP socket of its own.
fn spawn_worker(ring: &mut Ring) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(sock.local_addr().unwrap()).unwrap();
    let byte = [0u8; 1];
    let send = io_uring::opcode::Send::new(
        io_uring::types::Fd(std::os::fd::AsRawFd::as_raw_fd(&sock)),
        byte.as_ptr(),
        1,
    )
    .build()
    .flags(io_uring::squeue::Flags::ASYNC)
    .user_data(9);
    // SAFETY: `byte` and the socket outlive the reap below.
    unsafe { ring.push(&send) }.unwrap();
    let cqes = ring.reap(1).unwrap();
    assert_eq!(cqes[0].res, 1, "the worker's send: {cqes:?}");
}

#[test]
fn every_allocation_failure_of_a_send_ends_cleanly() {
    require_feature();
    open_up_fault_injection();
    let mut keep_workers = Ring::new(4).unwrap();
    let mut tally = Tally::default();
    let mut points = Vec::new();
    for mode in [Mode::Inline, Mode::Async, Mode::Notification] {
        for transport in [Transport::Tcp, Transport::UdpConnected] {
            for shape in [
                Shape::Mixed,
                Shape::AllCopy,
                Shape::AllFixed,
                Shape::UniformFixed,
                Shape::FixedBuf,
                Shape::VectorizedMixed,
                Shape::ManyPairs,
                Shape::MaskedPairs,
            ] {
                if mode == Mode::Async {
                    spawn_worker(&mut keep_workers);
                }
                let n = sweep(shape, transport, mode, &mut tally);
                points.push(format!("{shape:?}/{transport:?}/{mode:?}={n}"));
            }
        }
    }
    eprintln!("fault points per run: {}", points.join(" "));
    eprintln!("{tally:?}");
    assert!(
        tally.injected > 0,
        "no fault was injected at all: is fail-nth working?"
    );
    record_cases("fault-injection-points", tally.injected);
    record_cases("fault-injection-clean-errors", tally.clean_errors);
}
