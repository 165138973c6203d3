//! Ten thousand mixed requests in flight on one ring, under the default
//! RLIMIT_MEMLOCK of 8 MiB, without -ENOMEM, with attributes and as a copy
//! mask. An attribute request's COPY bytes go to fragments of the ring's
//! bounce cache, a copy mask's of up to 256 bytes to a slot of the ring,
//! both charged to the memcg: a 24-byte header holds 24 bytes of a shared
//! page, or a 256-byte slot, until its notification, and nothing against
//! RLIMIT_MEMLOCK (which a page per request would exhaust at about 2000
//! requests). Every datagram is checked once all are let go: a slot or
//! fragment given to another request before its notification would show
//! as another request's header.
//!
//! A plug qdisc on the loopback of a namespace of the test's own holds
//! every datagram, and with it every notification, until the test lets
//! them go: all the requests post their result CQEs while none has been
//! notified. The rlimit and CAP_IPC_LOCK are process-wide concerns, so the
//! work runs in a child process.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types;
use nix::sys::socket::{setsockopt, sockopt};
use rstest::rstest;
use sendzc_iov_vm_tests::netns::Netns;
use sendzc_iov_vm_tests::process::{child_role, drop_cap_ipc_lock, set_memlock_limit, Child};
use sendzc_iov_vm_tests::{pattern, require_feature, serial, Cqe, Op, RegBufs, Request, Ring, Seg};

const REQUESTS: usize = 10_000;
/// The kernel's default RLIMIT_MEMLOCK.
const DEFAULT_MEMLOCK: u64 = 8 << 20;
const HEADER: usize = 24;
const PAYLOAD: usize = 1000;
/// Submitting, then the drain.
const BOUND: Duration = Duration::from_secs(120);
/// How the requests say which iovec is copied.
#[derive(Clone, Copy, Debug)]
enum Form {
    Attrs,
    Mask,
}

impl Form {
    fn role(self) -> &'static str {
        match self {
            Form::Attrs => "attrs",
            Form::Mask => "mask",
        }
    }
}

#[rstest]
fn ten_thousand_mixed_requests_in_flight_under_the_default_memlock(
    #[values(Form::Attrs, Form::Mask)] form: Form,
) {
    require_feature();
    // run together, the two forms' 20,000 held datagrams lost one: UDP's
    // memory limit is shared by all namespaces
    let _serial = serial();
    let mut child =
        Child::spawn("child_many_in_flight", form.role()).expect("re-executing the test");
    let status = child.wait(BOUND + Duration::from_secs(30));
    let output = child.output();
    let status = status.unwrap_or_else(|e| panic!("{e}\n{output}"));
    assert!(status.success(), "the child failed ({status}):\n{output}");
    let summary = output
        .lines()
        .find_map(|l| l.split_once("many in flight:").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no summary from the child:\n{output}"));
    let summary = format!("many in flight:{summary}");
    eprintln!("{summary}");
    let _ = std::fs::write("/dev/kmsg", format!("sendzc-many: {summary}\n"));
}

/// The datagram socket pair, in a namespace whose loopback holds every
/// packet until [`release`].
fn held_udp(ns: &Netns) -> (UdpSocket, UdpSocket) {
    // A new plug qdisc holds what it is given; the limit is in bytes.
    ns.cmd(
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "plug",
            "limit",
            "100000000",
        ],
    )
    .unwrap();
    ns.run(|| {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        // Room for every datagram at both ends: none may be dropped.
        setsockopt(&tx, sockopt::SndBufForce, &(256 << 20)).unwrap();
        setsockopt(&rx, sockopt::RcvBufForce, &(256 << 20)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (tx, rx)
    })
}

/// Lets every held packet go, and those that come after.
fn release(ns: &Netns) {
    ns.cmd(
        "tc",
        &[
            "qdisc",
            "change",
            "dev",
            "lo",
            "root",
            "plug",
            "release_indefinite",
        ],
    )
    .unwrap();
}

fn mem_free() -> usize {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemFree in /proc/meminfo");
    kib * 1024
}

/// What MemFree says each request in flight held, if it fell: memory an
/// earlier test freed meanwhile can make it rise instead.
fn held_per_request(before: usize, after: usize) -> String {
    match before.checked_sub(after) {
        Some(fell) => format!(
            "{} B of memory per request in flight (MemFree; on the debug kernel, \
             with the skb, the notification and the debug allocators' own)",
            fell / REQUESTS
        ),
        None => format!(
            "memory per request in flight not measured (MemFree rose by {} B, \
             with what an earlier test freed)",
            after - before
        ),
    }
}

/// Request `seq`: a header carrying its number, and a payload from the
/// registered buffer at an offset of its own.
fn request(seq: usize, bufs: &RegBufs) -> Request {
    let mut header = pattern(HEADER, seq as u8);
    header[..8].copy_from_slice(&(seq as u64).to_le_bytes());
    let off = seq * 8 % (4096 - PAYLOAD);
    Request::new(
        vec![
            Seg::Copy(header),
            Seg::Fixed {
                buf: 0,
                off,
                len: PAYLOAD,
            },
        ],
        bufs,
    )
}

/// Counts of what the ring has posted.
#[derive(Default)]
struct Posted {
    results: usize,
    notifs: usize,
    /// Results without their notification yet, at most.
    peak: usize,
}

impl Posted {
    fn take(&mut self, cqes: impl Iterator<Item = Cqe>) {
        for c in cqes {
            if c.is_notif() {
                self.notifs += 1;
                continue;
            }
            assert_eq!(
                c.res,
                (HEADER + PAYLOAD) as i32,
                "request {} of {REQUESTS} failed or was short, with {} in flight",
                c.user_data,
                self.results - self.notifs
            );
            assert!(c.has_more(), "a mixed request without F_MORE: {c:?}");
            self.results += 1;
        }
        self.peak = self.peak.max(self.results - self.notifs);
    }
}

fn reap(ring: &mut Ring, posted: &mut Posted) {
    let cqes: Vec<Cqe> = ring.ring.completion().map(|e| Cqe::from(&e)).collect();
    posted.take(cqes.into_iter());
}

#[test]
#[ignore = "the child process of ten_thousand_mixed_requests_in_flight_under_the_default_memlock"]
fn child_many_in_flight() {
    let Some(role) = child_role() else {
        return;
    };
    let mask = role == Form::Mask.role();
    drop_cap_ipc_lock().unwrap();
    set_memlock_limit(DEFAULT_MEMLOCK).unwrap();
    let ns = Netns::new().unwrap();
    let (tx, rx) = held_udp(&ns);
    let mut ring = Ring::new(256).unwrap();
    let bufs = RegBufs::register(&ring, &[4096]).unwrap();
    let requests: Vec<Request> = (0..REQUESTS).map(|seq| request(seq, &bufs)).collect();
    let deadline = Instant::now() + BOUND;
    let mut posted = Posted::default();

    let before = mem_free();
    for (seq, req) in requests.iter().enumerate() {
        let sqe = if mask {
            req.sqe_masked(Op::SendMsgZc, tx.as_raw_fd()).unwrap()
        } else {
            req.sqe(Op::SendMsgZc, tx.as_raw_fd())
        };
        let entry = sqe.user_data(seq as u64).into_entry();
        // SAFETY: `requests` and `bufs` live until every notification is in.
        while unsafe { ring.push(&entry) }.is_err() {
            ring.ring.submit().unwrap();
            reap(&mut ring, &mut posted);
        }
    }
    while posted.results < REQUESTS {
        assert!(Instant::now() < deadline, "results missing after {BOUND:?}");
        let ts = types::Timespec::from(Duration::from_millis(100));
        let args = types::SubmitArgs::new().timespec(&ts);
        let _ = ring.ring.submitter().submit_with_args(1, &args);
        reap(&mut ring, &mut posted);
    }
    let held = held_per_request(before, mem_free());
    assert_eq!(
        posted.peak, REQUESTS,
        "notifications came while the loopback held every packet"
    );
    release(&ns);

    while posted.notifs < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "{} notifications missing after {BOUND:?}",
            REQUESTS - posted.notifs
        );
        let ts = types::Timespec::from(Duration::from_millis(500));
        let args = types::SubmitArgs::new().timespec(&ts);
        let _ = ring.ring.submitter().submit_with_args(1, &args);
        reap(&mut ring, &mut posted);
    }
    for (seq, req) in requests.iter().enumerate() {
        let mut got = vec![0u8; 2 * (HEADER + PAYLOAD)];
        let n = rx.recv(&mut got).unwrap();
        assert!(
            &got[..n] == req.expected(),
            "datagram {seq} is not request {seq}'s bytes"
        );
    }
    println!(
        "many in flight: {REQUESTS} requests of {HEADER} B COPY + {PAYLOAD} B FIXED \
         ({}) in flight at once under a {} MiB RLIMIT_MEMLOCK, none failed; \
         {held}, every datagram as sent, in order",
        if mask { "a copy mask" } else { "attributes" },
        DEFAULT_MEMLOCK >> 20
    );
}
