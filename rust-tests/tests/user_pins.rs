//! USER iovecs of a mixed request are pinned (FOLL_PIN), as mm expects of
//! pages a device may read long after the call, not merely referenced
//! (FOLL_GET): /proc/vmstat's nr_foll_pin_acquired and nr_foll_pin_released
//! count them. Every pin taken is released by the notification, whether the
//! request succeeds or fails after pinning.
//!
//! The counters are system-wide, so this file has one test, which runs its
//! cases one after another, and takes its readings only while nothing else
//! of its own pins or unpins (buffers are registered before and unregistered
//! after).

use sendzc_iov::sys::io_uring_zc_iov_attr;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, MmapBuf, Op, RegBufs, Request, Ring,
    Transport, ZcCompletion,
};

const PAGE: usize = 4096;
/// Pages of the USER iovec: page-aligned, so it spans exactly these; few
/// enough for one datagram's frags.
const USER_PAGES: usize = 8;

/// nr_foll_pin_acquired and nr_foll_pin_released, exact: the per-CPU
/// differences are folded in first, which /proc/vmstat alone does not do.
fn pin_counters() -> (u64, u64) {
    std::fs::write("/proc/sys/vm/stat_refresh", "1").unwrap();
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap();
    let get = |name: &str| -> u64 {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/vmstat"))
    };
    (get("nr_foll_pin_acquired"), get("nr_foll_pin_released"))
}

/// [COPY header, FIXED payload, USER pages], and a second USER iovec
/// that, if `fail`, is unreadable: the request then fails with -EFAULT
/// after the first one's pages are pinned.
fn request(bufs: &RegBufs, user: &MmapBuf, fail: bool) -> Request {
    let header = pattern(24, 1);
    let tail = pattern(100, 2);
    let fixed = bufs.bytes(0, 10, 3000);
    let mut iov = vec![
        iovec(header.as_ptr(), header.len()),
        iovec(fixed.as_ptr(), fixed.len()),
        iovec(user.as_slice().as_ptr(), user.as_slice().len()),
        iovec(tail.as_ptr(), tail.len()),
    ];
    if fail {
        iov[3].iov_base = 0x1000 as *mut libc::c_void;
    }
    let expected = [&header[..], fixed, user.as_slice(), &tail[..]].concat();
    let attrs = vec![
        io_uring_zc_iov_attr::copy(),
        io_uring_zc_iov_attr::fixed(0),
        io_uring_zc_iov_attr::user(),
        io_uring_zc_iov_attr::user(),
    ];
    let segs = vec![
        sendzc_iov_vm_tests::Seg::Copy(header),
        sendzc_iov_vm_tests::Seg::Copy(tail),
    ];
    Request::from_parts(segs, iov, attrs, expected)
}

fn iovec(base: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: base as *mut libc::c_void,
        iov_len: len,
    }
}

fn send(ring: &mut Ring, req: &Request, op: Op, peer: &Peer) -> ZcCompletion {
    let entry = req.sqe(op, peer.fd()).user_data(1).into_entry();
    // SAFETY: `req` and the memory it points at outlive the reap, which
    // waits for the notification.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(1).unwrap();
    zc_completion(&cqes, 1).unwrap()
}

#[test]
fn user_pages_are_pinned_until_the_notification() {
    require_feature();
    let cases = [
        (Op::SendMsgZc, Transport::Tcp, false),
        (Op::SendZcVectored, Transport::UdpConnected, false),
        (Op::SendMsgZc, Transport::Tcp, true),
    ];
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register(&ring, &[8 * PAGE]).unwrap();
    for (op, transport, fail) in cases {
        let what = format!("{op:?} over {transport:?}, failing: {fail}");
        let mut peer = Peer::new(transport, Family::V4).unwrap();
        let mut user = MmapBuf::new(USER_PAGES * PAGE).unwrap();
        user.no_huge_pages().unwrap();
        user.as_mut_slice()
            .copy_from_slice(&pattern(USER_PAGES * PAGE, 3));
        let req = request(&bufs, &user, fail);

        let (acquired, released) = pin_counters();
        let done = send(&mut ring, &req, op, &peer);
        let (acquired_after, released_after) = pin_counters();
        let pinned = acquired_after - acquired;
        assert!(
            pinned >= USER_PAGES as u64,
            "{what}: {pinned} pins taken for {USER_PAGES} USER pages: they \
             were not pinned with FOLL_PIN"
        );
        assert_eq!(
            released_after - released,
            pinned,
            "{what}: pins taken and released differ after the notification"
        );
        assert!(done.notif.is_some(), "{what}: {done:?}");
        if fail {
            assert_eq!(done.result.res, -libc::EFAULT, "{what}: {done:?}");
            assert!(!peer.pending().unwrap(), "{what}: bytes were sent");
        } else {
            assert_eq!(done.result.res, req.len() as i32, "{what}: {done:?}");
            assert!(
                peer.receive(req.len()).unwrap() == req.expected(),
                "{what}: wrong bytes"
            );
        }
    }
}
