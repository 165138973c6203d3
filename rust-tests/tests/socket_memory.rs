//! What a zero-copy send from a registered buffer costs the socket.
//!
//! io_sg_from_iter() adds to skb->truesize, and so to the socket's
//! sk_wmem_queued, for each frag it attaches. It used to charge
//! PAGE_ALIGN(bv_offset + bv_len), as if the offset were within a page;
//! but a registered buffer backed by huge pages is one multi-page bvec per
//! folio, so a frag 1.5 MiB into a 2 MiB buffer was charged 1.5 MiB, and a
//! small SO_SNDBUF stalled the stream. The fix is a patch at the front of
//! the series; on the base kernel these tests fail.
//!
//! The sender's queue is watched with SO_MEMINFO while the receiver's
//! window is closed, so that the skbs stay queued and nothing is freed
//! between the send and the look.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, types};
use nix::sys::socket::{setsockopt, sockopt};
use rstest::rstest;
use sendzc_iov_vm_tests::net::socket_meminfo;
use sendzc_iov_vm_tests::process::unacknowledged;
use sendzc_iov_vm_tests::{pattern, zc_completion, Cqe, Family, MmapBuf, RegBufs, Ring};

const HUGE_PAGE: usize = 2 << 20;
/// What one send attaches: a page of the registered buffer.
const SEND: usize = 4096;
/// What the sender may queue: enough that no send here waits for space,
/// even one overcharged by a megabyte and a half.
const SEND_BUFFER: usize = 8 << 20;
/// Receiver's buffer from the handshake on: its window closes early.
const RECEIVE_BUFFER: usize = 32 * 1024;

/// A pair whose receiver does not read: after [`fill_window`] every byte
/// sent stays in the sender's write queue.
fn stalled_pair(family: Family) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(family.loopback()).unwrap();
    setsockopt(&listener, sockopt::RcvBuf, &RECEIVE_BUFFER).unwrap();
    let tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (rx, _) = listener.accept().unwrap();
    // SO_SNDBUFFORCE: above net.core.wmem_max, which the guest runs as root.
    setsockopt(&tx, sockopt::SndBufForce, &SEND_BUFFER).unwrap();
    (tx, rx)
}

/// Sends more than the receiver's window with write(2) and waits until the
/// unacknowledged count stops moving: the window is closed.
fn fill_window(tx: &mut TcpStream) -> usize {
    let filler = pattern(256 * 1024, 1);
    tx.write_all(&filler).unwrap();
    let mut last = usize::MAX;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = unacknowledged(tx).unwrap();
        if now == last {
            return filler.len();
        }
        last = now;
    }
    panic!("the receiver's window never closed ({last} bytes unacknowledged)");
}

/// The socket's sk_wmem_queued, from SO_MEMINFO.
fn wmem_queued(sock: &TcpStream) -> usize {
    let info = socket_meminfo(sock).expect("SO_MEMINFO");
    info[libc::SK_MEMINFO_WMEM_QUEUED as usize] as usize
}

/// A SEND_ZC of [`SEND`] bytes at `offset` in a registered 2 MiB hugetlb
/// buffer, with IORING_RECVSEND_FIXED_BUF, adds about those bytes to
/// sk_wmem_queued: a page, plus at most a new skb's head.
#[rstest]
#[case::start_of_the_folio(0)]
#[case::one_and_a_half_mib_in(3 * HUGE_PAGE / 4)]
#[case::last_page(HUGE_PAGE - SEND)]
fn fixed_buf_frag_is_charged_its_pages_not_its_offset(#[case] offset: usize) {
    let (mut tx, mut rx) = stalled_pair(Family::V4);
    let mut ring = Ring::new(8).unwrap();
    let bufs = RegBufs::register_bufs(&ring, vec![MmapBuf::hugetlb(HUGE_PAGE).unwrap()]).unwrap();
    let filler = fill_window(&mut tx);
    let (before, unacked) = (wmem_queued(&tx), unacknowledged(&tx).unwrap());

    let data = bufs.bytes(0, offset, SEND);
    let sqe = opcode::SendZc::new(types::Fd(tx.as_raw_fd()), data.as_ptr(), SEND as u32)
        .buf_index(Some(0))
        .build()
        .user_data(5);
    // SAFETY: the registered buffer outlives the request: the ring and
    // `bufs` are dropped after its notification is reaped below.
    unsafe { ring.push(&sqe) }.unwrap();
    let result = ring
        .reap_until(|c| c.iter().any(|c| !c.is_notif()))
        .unwrap();
    assert_eq!(result[0].res, SEND as i32, "{result:?}");
    let charged = wmem_queued(&tx) as i64 - before as i64;
    // Nothing was acknowledged (or freed) meanwhile: the difference is
    // exactly what the send queued.
    assert_eq!(unacknowledged(&tx).unwrap(), unacked + SEND);

    assert!(
        charged <= 2 * SEND as i64,
        "a {SEND}-byte frag at offset {offset} added {charged} bytes to sk_wmem_queued"
    );

    // Let everything through, then check the bytes and the CQE protocol.
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; filler + SEND];
        std::io::Read::read_exact(&mut rx, &mut got).map(|_| got)
    });
    let mut cqes = result;
    cqes.extend(ring.reap_until(|c| c.iter().any(Cqe::is_notif)).unwrap());
    ring.expect_no_more_cqes().unwrap();
    zc_completion(&cqes, 5).unwrap();
    let got = reader.join().unwrap().unwrap();
    assert_eq!(&got[filler..], data);
}
