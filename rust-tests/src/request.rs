//! Registered buffers, and requests with per-iovec attributes together with
//! the bytes they must put on the wire.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sendzc_iov::sqe::SendSqe;
use sendzc_iov::sys::io_uring_zc_iov_attr;

use crate::net::CSockAddr;
use crate::pattern;
use crate::ring::Ring;

/// Anonymous memory of its own mapping, so that tests control exactly which
/// pages back a buffer and when they are unmapped.
pub struct MmapBuf {
    ptr: *mut u8,
    len: usize,
}

impl MmapBuf {
    pub fn new(len: usize) -> io::Result<MmapBuf> {
        MmapBuf::anonymous(len, 0)
    }

    /// Anonymous memory backed by 2 MiB huge pages (the guest reserves
    /// some, see qemu/guest-run.sh): registered, it has a large folio_shift.
    pub fn hugetlb(len: usize) -> io::Result<MmapBuf> {
        MmapBuf::anonymous(len, libc::MAP_HUGETLB)
    }

    fn anonymous(len: usize, flags: libc::c_int) -> io::Result<MmapBuf> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MmapBuf {
            ptr: ptr.cast(),
            len,
        })
    }

    /// A shared mapping of a new sealable memfd, and the memfd: a test can
    /// tell from `F_SEAL_WRITE` whether anything still holds its pages.
    pub fn memfd(len: usize) -> io::Result<(MmapBuf, OwnedFd)> {
        // SAFETY: the name is a NUL-terminated literal.
        let fd = unsafe { libc::memfd_create(c"sendzc-buffer".as_ptr(), libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a plain syscall on the descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: maps `len` bytes of our memfd; Drop unmaps them.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok((
            MmapBuf {
                ptr: ptr.cast(),
                len,
            },
            fd,
        ))
    }

    /// Keeps transparent huge pages out of the mapping (call it before the
    /// first touch): registration turns huge folios into larger bvecs, so
    /// buffers that THP backs unevenly cost differently to send.
    pub fn no_huge_pages(&self) -> io::Result<()> {
        // SAFETY: advice on our own mapping; no memory is read or written.
        let rc = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_NOHUGEPAGE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len,
        }
    }
}

impl Drop for MmapBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new().
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Tries F_SEAL_WRITE on `memfd` until it succeeds or `within` has passed.
pub fn seal_write(memfd: &OwnedFd, within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if Instant::now() > deadline {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Buffers registered with a ring: buffer `i` has index `i` and holds
/// `pattern(len, i)`.
pub struct RegBufs {
    pub bufs: Vec<MmapBuf>,
}

impl RegBufs {
    pub fn register(ring: &Ring, sizes: &[usize]) -> io::Result<RegBufs> {
        let bufs = sizes
            .iter()
            .map(|&len| MmapBuf::new(len))
            .collect::<io::Result<_>>()?;
        RegBufs::register_bufs(ring, bufs)
    }

    /// Fills each of `bufs` with its pattern and registers them, in order.
    pub fn register_bufs(ring: &Ring, mut bufs: Vec<MmapBuf>) -> io::Result<RegBufs> {
        for (i, buf) in bufs.iter_mut().enumerate() {
            let len = buf.as_slice().len();
            buf.as_mut_slice()
                .copy_from_slice(&pattern(len, i as u8 * 17 + 5));
        }
        let iovecs: Vec<libc::iovec> = bufs.iter().map(MmapBuf::iovec).collect();
        // SAFETY: the mappings stay alive in the returned RegBufs; after they
        // are unmapped the kernel keeps its own page references.
        unsafe { ring.ring.submitter().register_buffers(&iovecs)? };
        Ok(RegBufs { bufs })
    }

    pub fn bytes(&self, buf: u16, off: usize, len: usize) -> &[u8] {
        &self.bufs[buf as usize].as_slice()[off..off + len]
    }
}

/// One iovec of a request and how it is to be sent.
#[derive(Clone, Debug)]
pub enum Seg {
    /// Copied at issue.
    Copy(Vec<u8>),
    /// Zero-copy from user memory.
    User(Vec<u8>),
    /// Zero-copy from `len` bytes at `off` in registered buffer `buf`.
    Fixed { buf: u16, off: usize, len: usize },
}

/// Which opcode carries the iovecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    SendMsgZc,
    /// SEND_ZC with IORING_SEND_VECTORIZED.
    SendZcVectored,
}

/// A request with per-iovec attributes. The iovecs point into `segs` and
/// into the registered buffers, so neither may change while it is in flight.
pub struct Request {
    pub segs: Vec<Seg>,
    pub iov: Vec<libc::iovec>,
    pub attrs: Vec<io_uring_zc_iov_attr>,
    msg: Box<libc::msghdr>,
    dest: Option<Box<CSockAddr>>,
    expected: Vec<u8>,
}

impl Request {
    pub fn new(segs: Vec<Seg>, bufs: &RegBufs) -> Request {
        let mut iov = Vec::with_capacity(segs.len());
        let mut attrs = Vec::with_capacity(segs.len());
        let mut expected = Vec::new();
        for seg in &segs {
            let (base, len, attr) = match seg {
                Seg::Copy(data) => (data.as_ptr(), data.len(), io_uring_zc_iov_attr::copy()),
                Seg::User(data) => (data.as_ptr(), data.len(), io_uring_zc_iov_attr::user()),
                Seg::Fixed { buf, off, len } => {
                    let bytes = bufs.bytes(*buf, *off, *len);
                    (bytes.as_ptr(), *len, io_uring_zc_iov_attr::fixed(*buf))
                }
            };
            // SAFETY: base..base+len is one of the slices above.
            expected.extend_from_slice(unsafe { std::slice::from_raw_parts(base, len) });
            iov.push(libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: len,
            });
            attrs.push(attr);
        }
        Request::from_parts(segs, iov, attrs, expected)
    }

    /// A request of iovecs and attributes built by the caller, for buffers
    /// that [`RegBufs`] does not describe (a kernel-registered buffer,
    /// whose iovecs hold offsets rather than addresses); `segs` may be
    /// empty then.
    pub fn from_parts(
        segs: Vec<Seg>,
        iov: Vec<libc::iovec>,
        attrs: Vec<io_uring_zc_iov_attr>,
        expected: Vec<u8>,
    ) -> Request {
        // SAFETY: msghdr is plain data; all-zero is an empty message.
        let msg = Box::new(unsafe { std::mem::zeroed::<libc::msghdr>() });
        let mut request = Request {
            segs,
            iov,
            attrs,
            msg,
            dest: None,
            expected,
        };
        request.sync_msg();
        request
    }

    /// Sends to `addr` instead of the connected peer.
    pub fn to(mut self, addr: SocketAddr) -> Request {
        self.dest = Some(Box::new(CSockAddr::new(addr)));
        self.sync_msg();
        self
    }

    /// Points the msghdr at the iovecs and destination; call after
    /// changing `iov` by hand.
    pub fn sync_msg(&mut self) {
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        if let Some(dest) = &self.dest {
            self.msg.msg_name = dest.as_ptr() as *mut libc::c_void;
            self.msg.msg_namelen = dest.len();
        }
    }

    /// The msghdr pointing at the iovecs (and destination).
    pub fn msghdr(&self) -> *const libc::msghdr {
        &*self.msg
    }

    /// The bytes the receiver must see, in order.
    pub fn expected(&self) -> &[u8] {
        &self.expected
    }

    pub fn len(&self) -> usize {
        self.expected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expected.is_empty()
    }

    /// The request as a copy mask and the one buffer of its FIXED
    /// iovecs, if it can be one (see [`sendzc_iov::sqe::copy_mask_of`]).
    pub fn copy_mask(&self) -> Option<(u16, u64)> {
        sendzc_iov::sqe::copy_mask_of(&self.attrs)
    }

    /// The SQE for `op` with a copy mask instead of the attribute array,
    /// if [`Request::copy_mask`] can express the request.
    pub fn sqe_masked(&self, op: Op, fd: i32) -> Option<SendSqe> {
        let (buf, mask) = self.copy_mask()?;
        Some(self.sqe_plain(op, fd).copy_mask(buf, mask))
    }

    /// The SQE for `op` as a registered buffer send without attributes
    /// (IORING_RECVSEND_FIXED_BUF alone), if every iovec is FIXED in one
    /// buffer: the send that the kernel had before the series.
    pub fn sqe_fixed_buf(&self, op: Op, fd: i32) -> Option<SendSqe> {
        match self.copy_mask()? {
            (buf, 0) if !self.attrs.is_empty() => {
                let mut sqe = self.sqe_plain(op, fd);
                sqe.ioprio |= sendzc_iov::sys::IORING_RECVSEND_FIXED_BUF;
                sqe.buf_index = buf;
                Some(sqe)
            }
            _ => None,
        }
    }

    /// The SQE for `op`, with the attribute array, on socket `fd`.
    /// Inlined across crates: the benchmark builds one per request, and
    /// a call returning the 64-byte SQE through memory costs its sender
    /// about 20 instructions that (a) does not pay.
    #[inline]
    pub fn sqe(&self, op: Op, fd: i32) -> SendSqe {
        self.sqe_plain(op, fd).iov_attrs(self.attrs.as_ptr())
    }

    /// The SQE for `op` without attributes.
    #[inline]
    fn sqe_plain(&self, op: Op, fd: i32) -> SendSqe {
        match op {
            Op::SendMsgZc => SendSqe::sendmsg_zc(fd, &*self.msg),
            Op::SendZcVectored => {
                let sqe = SendSqe::send_zc_vectored(fd, self.iov.as_ptr(), self.iov.len() as u32);
                match &self.dest {
                    Some(dest) => sqe.dest(dest.as_ptr(), dest.len()),
                    None => sqe,
                }
            }
        }
    }
}
