//! FIXED iovecs whose registered buffer is a kernel bvec, not pinned user
//! pages: the pages of a ublk block request, installed in the server's ring
//! by UBLK_U_IO_REGISTER_IO_BUF (ublk zero copy). This is how a ublk server
//! sends what is written to its disk straight to a network peer, and the
//! only path from user space into the importer's IO_REGBUF_F_KBUF branch:
//! offsets instead of addresses, bvecs of whatever size the block layer
//! built, a direction taken from the request, and a buffer that the driver
//! completes only once the send's notification has let go of it. Each
//! request goes as its attribute array, and where it can be one, as a copy
//! mask, whose importer hands a kernel buffer to the attributes' own.

use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};

use rstest::rstest;
use sendzc_iov::sys::io_uring_zc_iov_attr;
use sendzc_iov_vm_tests::net::Peer;
use sendzc_iov_vm_tests::ublk::{BlockIo, IoDesc, UblkDevice, UBLK_IO_OP_READ, UBLK_IO_OP_WRITE};
use sendzc_iov_vm_tests::{
    pattern, require_feature, zc_completion, Family, MmapBuf, Op, Request, Ring, Seg, Transport,
};

/// Registered-buffer slot the request's pages go into.
const KBUF: u16 = 0;
const PAGE: usize = 4096;
/// Pages the writer sends from, each of its own mapping, so that the block
/// request (and the registered buffer) has several bvecs.
const WRITE_PAGES: usize = 3;
/// Where in its mapping each page's worth of written bytes starts: one
/// sector in, so that the request's bvecs start inside their pages and
/// cross into the next, unlike the page-sized bvecs of pinned user memory.
const WRITE_OFFSET: usize = 512;

/// What the writer puts on the disk: page `i` holds `pattern(PAGE, 40 + i)`.
fn written_bytes() -> Vec<u8> {
    (0..WRITE_PAGES)
        .flat_map(|i| pattern(PAGE, 40 + i as u8))
        .collect()
}

/// One O_DIRECT pwritev of [`written_bytes`] from separate mappings, each
/// page's worth [`WRITE_OFFSET`] bytes into a mapping of two pages.
fn write_disk(disk: std::fs::File) -> std::io::Result<usize> {
    let mut maps = Vec::new();
    for i in 0..WRITE_PAGES {
        let mut map = MmapBuf::new(2 * PAGE)?;
        map.as_mut_slice()[WRITE_OFFSET..WRITE_OFFSET + PAGE]
            .copy_from_slice(&pattern(PAGE, 40 + i as u8));
        maps.push(map);
    }
    let iov: Vec<libc::iovec> = maps
        .iter()
        .map(|map| libc::iovec {
            iov_base: map.as_slice()[WRITE_OFFSET..].as_ptr() as *mut libc::c_void,
            iov_len: PAGE,
        })
        .collect();
    // SAFETY: the iovecs describe PAGE bytes of each live mapping in `maps`.
    let n = unsafe { libc::pwritev(disk.as_raw_fd(), iov.as_ptr(), iov.len() as i32, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One O_DIRECT read of a page.
fn read_disk(disk: std::fs::File) -> std::io::Result<usize> {
    let page = MmapBuf::new(PAGE)?;
    // SAFETY: reads into the live, writable mapping `page`.
    let n = unsafe { libc::pread(disk.as_raw_fd(), page.iovec().iov_base, PAGE, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Serves one block request of `op`, issued by `io` on its own thread,
/// with its pages installed as buffer [`KBUF`] of a fresh ring; `body`
/// runs with that ring and the request's descriptor. Then the buffer
/// leaves the table and the request is completed: the block I/O returns
/// once every reference to its pages, a send's included, is gone. That
/// happens if `body` panics too, before the panic goes on: a device whose
/// request is never completed cannot be removed, and the test would hang
/// there instead of failing.
fn with_block_request(
    op: u8,
    io: fn(std::fs::File) -> std::io::Result<usize>,
    body: impl FnOnce(&mut Ring, &IoDesc),
) {
    let mut ring = Ring::new(16).unwrap();
    ring.ring.submitter().register_buffers_sparse(1).unwrap();
    let mut dev = UblkDevice::add(2).expect("ublk device (CONFIG_BLK_DEV_UBLK)");
    dev.start(&mut ring).unwrap();
    let disk = dev.open_disk().unwrap();
    let block_io = BlockIo::spawn(move || io(disk));
    let (tag, desc) = dev.next_request(&mut ring).unwrap();
    assert_eq!(desc.op(), op, "unexpected request {desc:?}");
    dev.register_io_buf(&mut ring, tag, KBUF).unwrap();

    let outcome = panic::catch_unwind(AssertUnwindSafe(|| body(&mut ring, &desc)));

    dev.unregister_io_buf(&mut ring, tag, KBUF).unwrap();
    dev.commit(&mut ring, tag, desc.len() as i32).unwrap();
    assert_eq!(block_io.wait().unwrap(), desc.len());
    drop(ring);
    dev.remove().unwrap();
    if let Err(failure) = outcome {
        panic::resume_unwind(failure);
    }
}

/// How a request names its iovecs' modes and buffer.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// sqe->zc_iov_attr: an attribute array.
    Attrs,
    /// sqe->zc_copy_mask with IORING_RECVSEND_FIXED_BUF: COPY or FIXED in
    /// [`KBUF`].
    Mask,
    /// IORING_RECVSEND_FIXED_BUF alone, every iovec in [`KBUF`]: the
    /// registered buffer send without attributes.
    FixedBuf,
}

/// A FIXED iovec of `len` bytes at `off` in the kernel buffer: its base is
/// the offset itself.
fn kbuf_iovec(off: usize, len: usize) -> (libc::iovec, io_uring_zc_iov_attr) {
    let iov = libc::iovec {
        iov_base: off as *mut libc::c_void,
        iov_len: len,
    };
    (iov, io_uring_zc_iov_attr::fixed(KBUF))
}

/// [COPY header, FIXED start of the buffer, COPY header, FIXED range across
/// a bvec boundary, USER tail, FIXED last byte], and the bytes it must put
/// on the wire. Without the USER tail if `form` is a mask, which has no
/// bit for one.
fn mixed_request(disk: &[u8], peer: &Peer, form: Form) -> Request {
    let mut segs = vec![
        Seg::Copy(pattern(24, 1)),
        Seg::Copy(pattern(24, 2)),
        Seg::User(pattern(333, 3)),
    ];
    let user_iovec = |i: usize| match &segs[i] {
        Seg::Copy(b) | Seg::User(b) => libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
        Seg::Fixed { .. } => unreachable!(),
    };
    let last = disk.len() - 1;
    let mut parts = vec![
        (user_iovec(0), io_uring_zc_iov_attr::copy()),
        kbuf_iovec(0, 100),
        (user_iovec(1), io_uring_zc_iov_attr::copy()),
        kbuf_iovec(PAGE - 96, PAGE + 1000),
        (user_iovec(2), io_uring_zc_iov_attr::user()),
        kbuf_iovec(last, 1),
    ];
    let mut expected = Vec::new();
    expected.extend_from_slice(&pattern(24, 1));
    expected.extend_from_slice(&disk[..100]);
    expected.extend_from_slice(&pattern(24, 2));
    expected.extend_from_slice(&disk[PAGE - 96..2 * PAGE + 904]);
    if let Form::Attrs = form {
        expected.extend_from_slice(&pattern(333, 3));
    } else {
        parts.remove(4);
        segs.pop();
    }
    expected.push(disk[last]);
    let (iov, attrs) = parts.into_iter().unzip();
    with_dest(Request::from_parts(segs, iov, attrs, expected), peer)
}

fn with_dest(req: Request, peer: &Peer) -> Request {
    match peer.dest() {
        Some(dest) => req.to(dest),
        None => req,
    }
}

/// Sends `req`, which must succeed, and checks the bytes the peer gets.
fn send_and_receive(ring: &mut Ring, req: &Request, op: Op, form: Form, peer: &mut Peer) {
    let done = send(ring, req, op, form, peer);
    assert_eq!(done.result.res, req.len() as i32, "{done:?}");
    assert!(done.notif.is_some(), "{done:?}");
    assert_eq!(peer.receive(req.len()).unwrap(), req.expected());
}

/// Sends `req` as `form` and returns its checked (result, notification)
/// CQEs.
fn send(
    ring: &mut Ring,
    req: &Request,
    op: Op,
    form: Form,
    peer: &Peer,
) -> sendzc_iov_vm_tests::ZcCompletion {
    let sqe = match form {
        Form::Attrs => req.sqe(op, peer.fd()),
        Form::Mask => {
            let (buf, _) = req.copy_mask().expect("COPY and FIXED in one buffer");
            assert_eq!(buf, KBUF);
            req.sqe_masked(op, peer.fd()).unwrap()
        }
        Form::FixedBuf => req
            .sqe_fixed_buf(op, peer.fd())
            .expect("FIXED in one buffer"),
    };
    let entry = sqe.user_data(7).into_entry();
    // SAFETY: `req` and the kernel buffer outlive the send: this returns
    // only after the notification, or fails the test.
    unsafe { ring.push(&entry) }.unwrap();
    let cqes = ring.reap_zc(7).unwrap();
    zc_completion(&cqes, 7).unwrap()
}

/// A request that must fail with -EFAULT: the CQE protocol holds (the
/// series posts the notification of a failed request, as SEND_ZC does)
/// and nothing reaches the receiver.
fn expect_efault(ring: &mut Ring, req: &Request, op: Op, form: Form, peer: &Peer) {
    let done = send(ring, req, op, form, peer);
    assert_eq!(done.result.res, -libc::EFAULT, "{done:?}");
    assert!(
        done.notif.is_some(),
        "an error must still post the notification"
    );
    assert!(
        !peer.pending().unwrap(),
        "a failed request put bytes on the wire"
    );
}

#[rstest]
#[case::tcp_v4_sendmsg(Transport::Tcp, Family::V4, Op::SendMsgZc)]
#[case::tcp_v6_send_vectored(Transport::Tcp, Family::V6, Op::SendZcVectored)]
#[case::udp_v4_send_vectored(Transport::UdpConnected, Family::V4, Op::SendZcVectored)]
#[case::udp_v6_sendmsg_to(Transport::UdpTo, Family::V6, Op::SendMsgZc)]
fn mixed_request_sends_a_block_write_from_its_kernel_buffer(
    #[case] transport: Transport,
    #[case] family: Family,
    #[case] op: Op,
) {
    require_feature();
    with_block_request(UBLK_IO_OP_WRITE, write_disk, |ring, desc| {
        assert_eq!(desc.len(), WRITE_PAGES * PAGE);
        let mut peer = Peer::new(transport, family).unwrap();
        let req = mixed_request(&written_bytes(), &peer, Form::Attrs);
        send_and_receive(ring, &req, op, Form::Attrs, &mut peer);
    });
}

/// The same request as a copy mask over the kernel buffer: the mask's
/// importer finds IO_REGBUF_F_KBUF and imports the iovecs as the
/// attributes the mask stands for.
#[rstest]
#[case::tcp_v6_sendmsg(Transport::Tcp, Family::V6, Op::SendMsgZc)]
#[case::tcp_v4_send_vectored(Transport::Tcp, Family::V4, Op::SendZcVectored)]
#[case::udp_v4_sendmsg_to(Transport::UdpTo, Family::V4, Op::SendMsgZc)]
#[case::udp_v6_send_vectored(Transport::UdpConnected, Family::V6, Op::SendZcVectored)]
fn a_copy_mask_sends_a_block_write_from_its_kernel_buffer(
    #[case] transport: Transport,
    #[case] family: Family,
    #[case] op: Op,
) {
    require_feature();
    with_block_request(UBLK_IO_OP_WRITE, write_disk, |ring, _| {
        let mut peer = Peer::new(transport, family).unwrap();
        let req = mixed_request(&written_bytes(), &peer, Form::Mask);
        send_and_receive(ring, &req, op, Form::Mask, &mut peer);
    });
}

/// A READ request's pages are registered for the kernel to write into
/// (ITER_DEST only): sending from them must fail before anything is
/// queued.
#[rstest]
fn a_block_read_buffer_cannot_be_sent_from(
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
    #[values(Form::Attrs, Form::Mask)] form: Form,
) {
    require_feature();
    with_block_request(UBLK_IO_OP_READ, read_disk, |ring, _| {
        let peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
        let hdr = pattern(24, 5);
        let (fixed, fixed_attr) = kbuf_iovec(0, 512);
        let iov = vec![
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            fixed,
        ];
        let attrs = vec![io_uring_zc_iov_attr::copy(), fixed_attr];
        let req = Request::from_parts(vec![Seg::Copy(hdr)], iov, attrs, Vec::new());
        expect_efault(ring, &req, op, form, &peer);
    });
}

/// Offsets are checked against the request's length, not the pages'.
#[rstest]
#[case::past_the_end(WRITE_PAGES * PAGE - 10, 11)]
#[case::offset_beyond(WRITE_PAGES * PAGE, 1)]
#[case::wrapping(usize::MAX - 5, 10)]
fn a_range_outside_the_kernel_buffer_fails(
    #[case] off: usize,
    #[case] len: usize,
    #[values(Form::Attrs, Form::Mask)] form: Form,
) {
    require_feature();
    with_block_request(UBLK_IO_OP_WRITE, write_disk, |ring, _| {
        let peer = Peer::new(Transport::UdpTo, Family::V4).unwrap();
        let (fixed, attr) = kbuf_iovec(off, len);
        let req = with_dest(
            Request::from_parts(Vec::new(), vec![fixed], vec![attr], Vec::new()),
            &peer,
        );
        expect_efault(ring, &req, Op::SendMsgZc, form, &peer);
    });
}

/// Every iovec FIXED from the one kernel buffer: with attributes, a copy
/// mask without COPY iovecs, which sends a kernel buffer the attributes'
/// way; without, a plain FIXED_BUF vectored send, whose importer has a
/// kernel-buffer branch of its own.
#[rstest]
fn uniform_fixed_request_sends_from_the_kernel_buffer(
    #[values(Op::SendMsgZc, Op::SendZcVectored)] op: Op,
    #[values(Form::Attrs, Form::FixedBuf)] form: Form,
) {
    require_feature();
    with_block_request(UBLK_IO_OP_WRITE, write_disk, |ring, _| {
        let mut peer = Peer::new(Transport::Tcp, Family::V4).unwrap();
        let disk = written_bytes();
        let ranges = [(10, 90), (PAGE - 1, 2), (2 * PAGE, PAGE)];
        let (iov, attrs) = ranges
            .iter()
            .map(|&(off, len)| kbuf_iovec(off, len))
            .unzip();
        let expected = ranges
            .iter()
            .flat_map(|&(off, len)| disk[off..off + len].to_vec())
            .collect();
        let req = Request::from_parts(Vec::new(), iov, attrs, expected);
        send_and_receive(ring, &req, op, form, &mut peer);
    });
}
