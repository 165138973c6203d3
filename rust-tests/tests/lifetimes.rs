//! What a request holds is released: after its notification and an
//! unregister, and after closing the ring and socket with it in flight.
//!
//! A memfd-backed registered buffer is the witness: `F_SEAL_WRITE` is
//! refused (-EBUSY) while anything still holds its pages. Socket memory is
//! checked by the kernel when the socket is destroyed (inet_sock_destruct()
//! warns on anything still charged, and the run fails on a warning) and by
//! kmemleak; not here through /proc/net/sockstat, whose TCP "mem" lags the
//! truth by up to net.core.mem_pcpu_rsv pages per CPU (and is clamped at 0).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::process::drop_cap_ipc_lock;
use sendzc_iov_vm_tests::{
    pattern, require_feature, seal_write, serial, zc_completion, Family, MmapBuf, Op, RegBufs,
    Request, Ring, Seg, Transport,
};

/// Buffer 0 backed by a memfd, then two anonymous buffers, registered.
fn buffers_with_memfd(ring: &Ring, memfd_len: usize) -> (RegBufs, OwnedFd) {
    let (mem, fd) = MmapBuf::memfd(memfd_len).unwrap();
    let bufs = vec![
        mem,
        MmapBuf::new(64 * 1024).unwrap(),
        MmapBuf::new(32 * 1024).unwrap(),
    ];
    (RegBufs::register_bufs(ring, bufs).unwrap(), fd)
}

fn mixed(memfd_len: usize) -> Vec<Seg> {
    vec![
        Seg::Copy(pattern(24, 1)),
        Seg::Fixed {
            buf: 0,
            off: 3,
            len: memfd_len - 3,
        },
        Seg::Copy(pattern(24, 2)),
        Seg::Fixed {
            buf: 1,
            off: 0,
            len: 1000,
        },
        Seg::User(pattern(3000, 4)),
    ]
}

#[test]
fn pages_are_released_after_the_notification_and_unregister() {
    require_feature();
    let _serial = serial();
    const MEMFD: usize = 256 * 1024;
    let mut ring = Ring::new(8).unwrap();
    let (bufs, memfd) = buffers_with_memfd(&ring, MEMFD);
    let Peer::Tcp(pair) = Peer::new(Transport::Tcp, Family::V4).unwrap() else {
        unreachable!()
    };
    let req = Request::new(mixed(MEMFD), &bufs);
    let len = req.len();
    let reader = pair.receive_in_background(len);
    let mut sqe = req.sqe(Op::SendMsgZc, pair.tx.as_raw_fd());
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    let entry = sqe.user_data(1).into_entry();
    // SAFETY: req and the buffers outlive the reap below.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(1).unwrap();
    assert_eq!(
        zc_completion(&cqes, 1).unwrap().result.res,
        req.len() as i32
    );
    assert_eq!(reader.join().unwrap().unwrap(), req.expected());

    ring.ring.submitter().unregister_buffers().unwrap();
    drop(bufs);
    seal_write(&memfd, Duration::from_secs(5))
        .expect("F_SEAL_WRITE: the memfd's pages are still held");
}

#[test]
fn closing_ring_and_socket_with_a_request_in_flight_releases_everything() {
    require_feature();
    let _serial = serial();
    const MEMFD: usize = 512 * 1024;
    let mut ring = Ring::new(8).unwrap();
    let (bufs, memfd) = buffers_with_memfd(&ring, MEMFD);
    let Peer::Tcp(pair) = Peer::new(Transport::Tcp, Family::V4).unwrap() else {
        unreachable!()
    };
    // A tiny send buffer and an idle receiver keep the request waiting;
    // linger 0 makes close() reset the connection at once.
    nix::sys::socket::setsockopt(&pair.tx, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&pair.tx, nix::sys::socket::sockopt::Linger, &linger).unwrap();
    let req = Request::new(mixed(MEMFD), &bufs);
    let mut sqe = req.sqe(Op::SendMsgZc, pair.tx.as_raw_fd());
    sqe.msg_flags |= libc::MSG_WAITALL as u32;
    let entry = sqe.user_data(1).into_entry();
    // SAFETY: the request may outlive the ring in the kernel; it reads only
    // pages the kernel holds and `req`'s memory, which is leaked below
    // rather than freed.
    unsafe { ring.push(&entry) }.unwrap();
    ring.ring.submit().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(pair);
    drop(ring);
    std::mem::forget(req);
    drop(bufs);

    seal_write(&memfd, Duration::from_secs(10))
        .expect("F_SEAL_WRITE: pages still held after ring and socket were closed");
}

/// Many rounds of mixed requests, each holding 256 KiB of user pages until
/// its notification, under a 2 MiB RLIMIT_MEMLOCK: if a round's pages were
/// not unaccounted, the limit would be hit (-ENOMEM) within a few rounds.
#[test]
fn memlock_accounting_does_not_creep() {
    require_feature();
    let _serial = serial();
    std::thread::spawn(|| {
        drop_cap_ipc_lock().expect("dropping CAP_IPC_LOCK");
        let limit = libc::rlimit {
            rlim_cur: 2 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) }, 0);
        let mut ring = Ring::new(8).unwrap();
        let bufs = RegBufs::register(&ring, &[64 * 1024]).unwrap();
        let Peer::Tcp(mut pair) = Peer::new(Transport::Tcp, Family::V4).unwrap() else {
            unreachable!()
        };
        // The limit is in force for this ring: 3 MiB of user pages at once
        // is refused.
        let big = Request::new(
            vec![Seg::Copy(pattern(24, 1)), Seg::User(pattern(3 << 20, 2))],
            &bufs,
        );
        let entry = big
            .sqe(Op::SendMsgZc, pair.tx.as_raw_fd())
            .user_data(999)
            .into_entry();
        // SAFETY: big outlives the reap below.
        unsafe { ring.push(&entry) }.unwrap();
        let cqes = ring.reap_zc(999).unwrap();
        assert_eq!(
            zc_completion(&cqes, 999).unwrap().result.res,
            -libc::ENOMEM,
            "{cqes:?}"
        );
        assert!(!pair.pending().unwrap());

        for round in 0..200u64 {
            let segs = vec![
                Seg::Copy(pattern(24, round as u8)),
                Seg::Fixed {
                    buf: 0,
                    off: 0,
                    len: 4096,
                },
                Seg::User(pattern(256 * 1024, round as u8)),
            ];
            let req = Request::new(segs, &bufs);
            let len = req.len();
            let reader = pair.receive_in_background(len);
            let mut sqe = req.sqe(Op::SendMsgZc, pair.tx.as_raw_fd());
            sqe.msg_flags |= libc::MSG_WAITALL as u32;
            let entry = sqe.user_data(round).into_entry();
            // SAFETY: req outlives the reap below.
            unsafe { ring.push(&entry) }.unwrap();
            let cqes = ring.reap_zc(round).unwrap();
            let done = zc_completion(&cqes, round).unwrap();
            assert_eq!(done.result.res, len as i32, "round {round}: {cqes:?}");
            assert_eq!(
                reader.join().unwrap().unwrap(),
                req.expected(),
                "round {round}"
            );
        }
        let _ = &mut pair;
    })
    .join()
    .unwrap();
}
