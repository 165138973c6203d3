//! Framed sends: any number of (header, payload) pairs in one request,
//! headers copied, payloads zero-copied from registered buffers or from
//! memory the request owns.
//!
//! ```no_run
//! use sendzc_iov::frame::{Batch, BufferPool, Event, FrameSender, Payload};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let stream = std::net::TcpStream::connect("127.0.0.1:9")?;
//! use std::os::fd::AsFd;
//! let ring = io_uring::IoUring::new(64)?;
//! let mut sender = FrameSender::new(ring, BufferPool::new(&[1 << 20, 1 << 20])?)?;
//! sender.pool_mut().buffer_mut(0)?[..5].copy_from_slice(b"hello");
//!
//! let mut batch = Batch::new();
//! batch.push(&[0u8; 24], Payload::Fixed { buf: 0, range: 0..5 })?;
//! batch.push(&[1u8; 24], Payload::Owned(b"world".to_vec()))?;
//! let id = sender.submit(stream.as_fd(), batch)?;
//! for event in sender.wait_for(id)? {
//!     match event {
//!         Event::Sent { sent, total, .. } => assert_eq!(sent, total),
//!         Event::Failed { error, .. } => return Err(error.into()),
//!         Event::Released { .. } => {} // buffer 0 may be written again
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Paths
//!
//! [`FrameSender::new`] picks how requests are sent, once, from what the
//! kernel supports; [`FrameSender::path`] tells which:
//!
//! - [`Path::PerIovec`]: `IORING_SEND_ZC_IOV_ATTR` (the series in
//!   `kernel-patches/`): headers copied, each payload zero-copied from its
//!   own buffer.
//! - [`Path::FixedBuf`]: Linux 6.15+ without the series. A request whose
//!   payloads all live in one registered buffer goes out as SENDMSG_ZC with
//!   `IORING_RECVSEND_FIXED_BUF`; its headers are staged in a small area
//!   that the pool keeps at the end of every buffer for this. Other
//!   requests are copied, as in [`Path::Copy`].
//! - [`Path::Copy`]: plain SENDMSG.
//!
//! The bytes on the wire are the same on every path.
//!
//! # Safety model
//!
//! The kernel reads payloads after [`FrameSender::submit`] returns. Safe
//! code cannot change them meanwhile: registered buffers belong to the
//! [`BufferPool`], which refuses [`BufferPool::buffer_mut`] while a request
//! holds a lease on the buffer, and owned payloads are moved into the
//! request and handed back in [`Event::Released`]. Headers are copied into
//! the request when pushed, so the caller's header memory is free at once.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::sqe::SendSqe;
use crate::sys::{self, io_uring_zc_iov_attr};

/// Most iovecs a request may have (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;
/// Most bytes one request may carry (the kernel's `MAX_RW_COUNT`).
pub const MAX_BYTES: usize = 0x7fff_f000;
/// Bytes of header staging kept after each registered buffer for
/// [`Path::FixedBuf`]; a request's headers must fit one slot.
pub const HEADER_SLOT: usize = 1024;
/// Header staging slots per registered buffer.
pub const HEADER_SLOTS: usize = 16;

/// Why a request was refused before anything was submitted. `frame` is
/// the index of the offending frame in its batch, `buf` a buffer index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The batch has no frames.
    Empty,
    /// A header of zero bytes.
    EmptyHeader {
        /// The frame.
        frame: usize,
    },
    /// A payload of zero bytes.
    EmptyPayload {
        /// The frame.
        frame: usize,
    },
    /// More frames than one request can carry (two iovecs per frame).
    TooManyFrames {
        /// Frames asked for.
        frames: usize,
        /// Frames allowed.
        max: usize,
    },
    /// More bytes than one request can carry.
    TooLarge {
        /// Bytes asked for.
        bytes: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// No registered buffer with this index.
    UnknownBuffer {
        /// The frame.
        frame: usize,
        /// The index it named.
        buf: u16,
    },
    /// The payload's range is not inside its buffer.
    OutOfRange {
        /// The frame.
        frame: usize,
        /// The buffer.
        buf: u16,
        /// The range asked for.
        range: Range<usize>,
        /// The buffer's length.
        len: usize,
    },
    /// The buffer is used by a request in flight.
    Busy {
        /// The buffer.
        buf: u16,
    },
    /// The ring's submission queue is full.
    QueueFull,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => write!(f, "the batch has no frames"),
            FrameError::EmptyHeader { frame } => write!(f, "frame {frame}: empty header"),
            FrameError::EmptyPayload { frame } => write!(f, "frame {frame}: empty payload"),
            FrameError::TooManyFrames { frames, max } => {
                write!(f, "{frames} frames, at most {max} fit one request")
            }
            FrameError::TooLarge { bytes, max } => {
                write!(f, "{bytes} bytes, at most {max} fit one request")
            }
            FrameError::UnknownBuffer { frame, buf } => {
                write!(f, "frame {frame}: no registered buffer {buf}")
            }
            FrameError::OutOfRange {
                frame,
                buf,
                range,
                len,
            } => write!(
                f,
                "frame {frame}: range {range:?} is outside buffer {buf} ({len} bytes)"
            ),
            FrameError::Busy { buf } => write!(f, "buffer {buf} is in use by a request in flight"),
            FrameError::QueueFull => write!(f, "the submission queue is full"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Where a payload's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `range` of registered buffer `buf` of the sender's [`BufferPool`].
    Fixed {
        /// The buffer's index in the pool.
        buf: u16,
        /// The bytes of the buffer to send.
        range: Range<usize>,
    },
    /// Memory the request owns until [`Event::Released`] returns it.
    Owned(Vec<u8>),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Fixed { range, .. } => range.len(),
            Payload::Owned(data) => data.len(),
        }
    }
}

struct Frame {
    header: Range<usize>,
    payload: Payload,
}

/// Frames for one request. Headers are copied in by [`Batch::push`].
#[derive(Default)]
pub struct Batch {
    headers: Vec<u8>,
    frames: Vec<Frame>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Appends a frame: `header`, then `payload`.
    pub fn push(&mut self, header: &[u8], payload: Payload) -> Result<&mut Batch, FrameError> {
        let frame = self.frames.len();
        if header.is_empty() {
            return Err(FrameError::EmptyHeader { frame });
        }
        if payload.len() == 0 {
            return Err(FrameError::EmptyPayload { frame });
        }
        if frame + 1 > MAX_IOVECS / 2 {
            return Err(FrameError::TooManyFrames {
                frames: frame + 1,
                max: MAX_IOVECS / 2,
            });
        }
        let start = self.headers.len();
        self.headers.extend_from_slice(header);
        self.frames.push(Frame {
            header: start..self.headers.len(),
            payload,
        });
        Ok(self)
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True if no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes the request puts on the wire.
    pub fn bytes(&self) -> usize {
        self.headers.len() + self.frames.iter().map(|f| f.payload.len()).sum::<usize>()
    }

    /// Where the first unsent byte is, after `sent` bytes went out.
    pub fn position(&self, sent: usize) -> Resume {
        let mut left = sent;
        for (frame, f) in self.frames.iter().enumerate() {
            let len = f.header.len() + f.payload.len();
            if left < len {
                return Resume {
                    frame,
                    offset: left,
                };
            }
            left -= len;
        }
        Resume {
            frame: self.frames.len(),
            offset: 0,
        }
    }
}

/// A position in a batch: byte `offset` of frame `frame` (header first,
/// then payload). After a partial send, the request is resumed by sending
/// the rest of that frame and the frames after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The first frame not sent completely.
    pub frame: usize,
    /// Its bytes already sent (header first, then payload).
    pub offset: usize,
}

struct Buffer {
    /// The user part, then HEADER_SLOTS * HEADER_SLOT bytes of staging.
    mem: Box<[u8]>,
    len: usize,
    leases: u32,
    /// Bit i set: header slot i is in use.
    slots: u32,
}

/// Buffers registered with the sender's ring, indexed from 0.
pub struct BufferPool {
    bufs: Vec<Buffer>,
}

impl BufferPool {
    /// Allocates one zeroed buffer per size.
    pub fn new(sizes: &[usize]) -> io::Result<BufferPool> {
        if sizes.len() > u16::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many buffers",
            ));
        }
        let bufs = sizes
            .iter()
            .map(|&len| Buffer {
                mem: vec![0u8; len + HEADER_SLOTS * HEADER_SLOT].into_boxed_slice(),
                len,
                leases: 0,
                slots: 0,
            })
            .collect();
        Ok(BufferPool { bufs })
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// True if the pool has no buffers.
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Buffer `buf`, for reading; always allowed.
    pub fn buffer(&self, buf: u16) -> Option<&[u8]> {
        self.bufs.get(buf as usize).map(|b| &b.mem[..b.len])
    }

    /// Buffer `buf`, for writing: refused while a request in flight uses it.
    pub fn buffer_mut(&mut self, buf: u16) -> Result<&mut [u8], FrameError> {
        match self.bufs.get_mut(buf as usize) {
            None => Err(FrameError::UnknownBuffer { frame: 0, buf }),
            Some(b) if b.leases > 0 => Err(FrameError::Busy { buf }),
            Some(b) => Ok(&mut b.mem[..b.len]),
        }
    }

    /// True while a request in flight uses buffer `buf`.
    pub fn is_busy(&self, buf: u16) -> bool {
        self.bufs.get(buf as usize).is_some_and(|b| b.leases > 0)
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        self.bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.mem.as_ptr() as *mut libc::c_void,
                iov_len: b.mem.len(),
            })
            .collect()
    }

    fn check(&self, frame: usize, payload: &Payload) -> Result<(), FrameError> {
        let Payload::Fixed { buf, range } = payload else {
            return Ok(());
        };
        let Some(b) = self.bufs.get(*buf as usize) else {
            return Err(FrameError::UnknownBuffer { frame, buf: *buf });
        };
        if range.start > range.end || range.end > b.len {
            return Err(FrameError::OutOfRange {
                frame,
                buf: *buf,
                range: range.clone(),
                len: b.len,
            });
        }
        Ok(())
    }

    fn addr(&self, buf: u16, offset: usize) -> *const u8 {
        self.bufs[buf as usize].mem[offset..].as_ptr()
    }

    /// Takes a free header slot of `buf`: its offset in the buffer.
    fn take_slot(&mut self, buf: u16) -> Option<usize> {
        let b = &mut self.bufs[buf as usize];
        let free = (!b.slots).trailing_zeros() as usize;
        if free >= HEADER_SLOTS {
            return None;
        }
        b.slots |= 1 << free;
        Some(b.len + free * HEADER_SLOT)
    }

    fn put_slot(&mut self, buf: u16, offset: usize) {
        let b = &mut self.bufs[buf as usize];
        b.slots &= !(1 << ((offset - b.len) / HEADER_SLOT));
    }

    fn stage(&mut self, offset_buf: u16, offset: usize, bytes: &[u8]) -> *const u8 {
        let b = &mut self.bufs[offset_buf as usize];
        b.mem[offset..offset + bytes.len()].copy_from_slice(bytes);
        b.mem[offset..].as_ptr()
    }
}

/// How the sender's requests go out; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `IORING_SEND_ZC_IOV_ATTR`: the kernel series is there.
    PerIovec,
    /// SENDMSG_ZC with `IORING_RECVSEND_FIXED_BUF` where payloads share a
    /// buffer, plain SENDMSG otherwise (Linux 6.15+ without the series).
    FixedBuf,
    /// Plain SENDMSG.
    Copy,
}

/// How one request went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPath {
    /// Headers copied, payloads zero-copied each from its own place.
    PerIovec,
    /// SENDMSG_ZC with IORING_RECVSEND_FIXED_BUF from one buffer.
    FixedBuf {
        /// The buffer every payload (and the staged headers) came from.
        buf: u16,
    },
    /// Plain SENDMSG.
    Copy,
}

/// Identifies a request; also its CQEs' user_data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What happened to a request. Each request gets exactly one
/// [`Event::Sent`] or [`Event::Failed`], then exactly one
/// [`Event::Released`].
#[derive(Debug)]
pub enum Event {
    /// The result: `sent` of `total` bytes went out. Less than `total`
    /// only if the send was cut short (a signal, a non-blocking socket, a
    /// datagram socket); `resume` says where the unsent part starts.
    Sent {
        /// The request.
        id: RequestId,
        /// How it went out.
        path: RequestPath,
        /// Bytes sent.
        sent: usize,
        /// Bytes the request carried.
        total: usize,
        /// Where the unsent part starts, if `sent < total`.
        resume: Option<Resume>,
    },
    /// The request failed and sent nothing.
    Failed {
        /// The request.
        id: RequestId,
        /// How it was to go out.
        path: RequestPath,
        /// The kernel's error.
        error: io::Error,
    },
    /// The kernel is done with the request's memory: its buffers are no
    /// longer busy, and its owned payloads are handed back, in order.
    Released {
        /// The request.
        id: RequestId,
        /// Its `Payload::Owned` payloads, in frame order.
        payloads: Vec<Vec<u8>>,
    },
}

/// Memory the kernel reads through a request's SQE, kept alive (never
/// read again by us) until the request is released. Moving it does not
/// move the heap memory the pointers refer to.
struct Pointees {
    _iov: Vec<libc::iovec>,
    _attrs: Vec<io_uring_zc_iov_attr>,
    _msg: Box<libc::msghdr>,
}

struct InFlight {
    batch: Batch,
    path: RequestPath,
    _pointees: Pointees,
    /// Header slot taken in the FIXED_BUF buffer.
    slot: Option<(u16, usize)>,
}

/// Sends batches of frames on sockets with one request each, and turns the
/// CQEs into [`Event`]s.
pub struct FrameSender {
    ring: IoUring,
    pool: BufferPool,
    path: Path,
    inflight: HashMap<u64, InFlight>,
    next_id: u64,
}

/// True if the running kernel is at least `major.minor` (from uname).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: uname only writes into the struct we pass.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let got_major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let got_minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (got_major, got_minor) >= (major, minor)
}

/// The best path the running kernel offers.
pub fn detect_path() -> io::Result<Path> {
    if crate::probe::has_iov_attr()? {
        Ok(Path::PerIovec)
    } else if kernel_at_least(6, 15) {
        // SENDMSG_ZC takes IORING_RECVSEND_FIXED_BUF since Linux 6.15.
        Ok(Path::FixedBuf)
    } else {
        Ok(Path::Copy)
    }
}

impl FrameSender {
    /// Registers `pool` with `ring` and picks the best path the kernel has.
    pub fn new(ring: IoUring, pool: BufferPool) -> io::Result<FrameSender> {
        let path = detect_path()?;
        FrameSender::with_path(ring, pool, path)
    }

    /// As [`FrameSender::new`], with the path chosen by the caller (to test
    /// a fallback on a kernel that has better). A path the kernel lacks
    /// fails each request with the kernel's error.
    pub fn with_path(ring: IoUring, pool: BufferPool, path: Path) -> io::Result<FrameSender> {
        if !pool.is_empty() {
            let iovecs = pool.iovecs();
            // SAFETY: the pool's memory lives in the sender with the ring;
            // Drop leaks it if requests are still in flight.
            unsafe { ring.submitter().register_buffers(&iovecs)? };
        }
        Ok(FrameSender {
            ring,
            pool,
            path,
            inflight: HashMap::new(),
            next_id: 1,
        })
    }

    /// The path this sender's requests take.
    pub fn path(&self) -> Path {
        self.path
    }

    /// The registered buffers.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// The registered buffers, to write payloads into.
    pub fn pool_mut(&mut self) -> &mut BufferPool {
        &mut self.pool
    }

    /// Requests not yet released.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn validate(&self, batch: &Batch) -> Result<(), FrameError> {
        if batch.is_empty() {
            return Err(FrameError::Empty);
        }
        let bytes = batch.bytes();
        if bytes > MAX_BYTES {
            return Err(FrameError::TooLarge {
                bytes,
                max: MAX_BYTES,
            });
        }
        for (i, frame) in batch.frames.iter().enumerate() {
            self.pool.check(i, &frame.payload)?;
        }
        Ok(())
    }

    /// The one buffer all payloads of `batch` come from, if there is one.
    fn single_buffer(batch: &Batch) -> Option<u16> {
        let mut bufs = batch.frames.iter().map(|f| match f.payload {
            Payload::Fixed { buf, .. } => Some(buf),
            Payload::Owned(_) => None,
        });
        let first = bufs.next()??;
        bufs.all(|b| b == Some(first)).then_some(first)
    }

    fn request_path(&mut self, batch: &Batch) -> (RequestPath, Option<(u16, usize)>) {
        match self.path {
            Path::PerIovec => (RequestPath::PerIovec, None),
            Path::Copy => (RequestPath::Copy, None),
            Path::FixedBuf => {
                let slot = Self::single_buffer(batch)
                    .filter(|_| batch.headers.len() <= HEADER_SLOT)
                    .and_then(|buf| self.pool.take_slot(buf).map(|off| (buf, off)));
                match slot {
                    Some((buf, off)) => (RequestPath::FixedBuf { buf }, Some((buf, off))),
                    None => (RequestPath::Copy, None),
                }
            }
        }
    }

    /// Builds the iovecs (and attributes) of `batch` for `path`.
    fn iovecs(
        &mut self,
        batch: &Batch,
        path: RequestPath,
        slot: Option<(u16, usize)>,
    ) -> (Vec<libc::iovec>, Vec<io_uring_zc_iov_attr>) {
        let staged = slot.map(|(buf, off)| self.pool.stage(buf, off, &batch.headers));
        let mut iov = Vec::with_capacity(batch.frames.len() * 2);
        let mut attrs = Vec::with_capacity(batch.frames.len() * 2);
        let vec = |ptr: *const u8, len: usize| libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        for frame in &batch.frames {
            let header = match staged {
                // SAFETY: the staged copy is batch.headers.len() bytes long.
                Some(base) => unsafe { base.add(frame.header.start) },
                None => batch.headers[frame.header.clone()].as_ptr(),
            };
            iov.push(vec(header, frame.header.len()));
            attrs.push(io_uring_zc_iov_attr::copy());
            match &frame.payload {
                Payload::Fixed { buf, range } => {
                    iov.push(vec(self.pool.addr(*buf, range.start), range.len()));
                    attrs.push(io_uring_zc_iov_attr::fixed(*buf));
                }
                Payload::Owned(data) => {
                    iov.push(vec(data.as_ptr(), data.len()));
                    attrs.push(io_uring_zc_iov_attr::user());
                }
            }
        }
        if path != RequestPath::PerIovec {
            attrs.clear();
        }
        (iov, attrs)
    }

    /// Queues and submits `batch` as one request on `fd`. Nothing is
    /// submitted if the batch is refused.
    pub fn submit(&mut self, fd: BorrowedFd<'_>, batch: Batch) -> Result<RequestId, FrameError> {
        self.validate(&batch)?;
        let (path, slot) = self.request_path(&batch);
        let (iov, attrs) = self.iovecs(&batch, path, slot);
        // SAFETY: msghdr is plain data; all-zero is an empty message.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        let id = self.next_id;
        let flags = libc::MSG_WAITALL as u32;
        let entry = match path {
            RequestPath::Copy => opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), &*msg)
                .flags(flags)
                .build()
                .user_data(id),
            RequestPath::FixedBuf { buf } => {
                let mut sqe = SendSqe::sendmsg_zc(fd.as_raw_fd(), &*msg).user_data(id);
                sqe.ioprio |= sys::IORING_RECVSEND_FIXED_BUF;
                sqe.buf_index = buf;
                sqe.msg_flags = flags;
                sqe.into_entry()
            }
            RequestPath::PerIovec => {
                let mut sqe = SendSqe::sendmsg_zc(fd.as_raw_fd(), &*msg)
                    .iov_attrs(attrs.as_ptr())
                    .user_data(id);
                sqe.msg_flags = flags;
                sqe.into_entry()
            }
        };
        if let Err(e) = self.push(&entry) {
            if let Some((buf, off)) = slot {
                self.pool.put_slot(buf, off);
            }
            return Err(e);
        }
        for frame in &batch.frames {
            if let Payload::Fixed { buf, .. } = frame.payload {
                self.pool.bufs[buf as usize].leases += 1;
            }
        }
        self.next_id += 1;
        self.inflight.insert(
            id,
            InFlight {
                batch,
                path,
                _pointees: Pointees {
                    _iov: iov,
                    _attrs: attrs,
                    _msg: msg,
                },
                slot,
            },
        );
        // An error here is the ring's, not the request's: the entry is
        // queued and goes with the next submission.
        let _ = self.ring.submit();
        Ok(RequestId(id))
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), FrameError> {
        // SAFETY: everything the entry points to (msghdr, iovecs,
        // attributes, headers, payloads) is kept in `self.inflight` until
        // the request's last CQE, and registered memory in `self.pool`.
        unsafe { self.ring.submission().push(entry) }.map_err(|_| FrameError::QueueFull)
    }

    /// The events of one CQE: none if it is not ours; the result, followed
    /// by the release if no notification is to come; or the release.
    pub fn handle(&mut self, cqe: &cqueue::Entry) -> Vec<Event> {
        let id = cqe.user_data();
        let Some(state) = self.inflight.get(&id) else {
            return Vec::new();
        };
        let flags = cqe.flags();
        if flags & sys::IORING_CQE_F_NOTIF != 0 {
            return self.release(id).into_iter().collect();
        }
        let path = state.path;
        let res = cqe.result();
        let result = if res < 0 {
            Event::Failed {
                id: RequestId(id),
                path,
                error: io::Error::from_raw_os_error(-res),
            }
        } else {
            let total = state.batch.bytes();
            let sent = res as usize;
            Event::Sent {
                id: RequestId(id),
                path,
                sent,
                total,
                resume: (sent < total).then(|| state.batch.position(sent)),
            }
        };
        let mut events = vec![result];
        if flags & sys::IORING_CQE_F_MORE == 0 {
            events.extend(self.release(id));
        }
        events
    }

    /// The request's last CQE arrived: drop its leases, return its payloads.
    fn release(&mut self, id: u64) -> Option<Event> {
        let state = self.inflight.remove(&id)?;
        if let Some((buf, off)) = state.slot {
            self.pool.put_slot(buf, off);
        }
        let mut payloads = Vec::new();
        for frame in state.batch.frames {
            match frame.payload {
                Payload::Fixed { buf, .. } => self.pool.bufs[buf as usize].leases -= 1,
                Payload::Owned(data) => payloads.push(data),
            }
        }
        Some(Event::Released {
            id: RequestId(id),
            payloads,
        })
    }

    /// Submits anything queued, waits up to `timeout` for at least one CQE,
    /// and returns the events of every CQE that arrived.
    pub fn poll(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        let cqes: Vec<cqueue::Entry> = self.ring.completion().collect();
        Ok(cqes.iter().flat_map(|cqe| self.handle(cqe)).collect())
    }

    /// Waits until request `id` is released (at most 10 s per wait) and
    /// returns every event that arrived meanwhile, `id`'s among them.
    pub fn wait_for(&mut self, id: RequestId) -> io::Result<Vec<Event>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = Vec::new();
        while self.inflight.contains_key(&id.0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request {} not released within 10 s", id.0),
                ));
            }
            events.extend(self.poll(left.min(Duration::from_millis(200)))?);
        }
        Ok(events)
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.inflight.is_empty() && Instant::now() < deadline {
            if self.poll(Duration::from_millis(50)).is_err() {
                break;
            }
        }
        if !self.inflight.is_empty() {
            // The kernel may still read this memory: never free it.
            std::mem::forget(std::mem::take(&mut self.inflight));
            std::mem::forget(std::mem::replace(
                &mut self.pool,
                BufferPool { bufs: Vec::new() },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(buf: u16, range: Range<usize>) -> Payload {
        Payload::Fixed { buf, range }
    }

    #[test]
    fn batch_refuses_empty_parts_and_too_many_frames() {
        let mut batch = Batch::new();
        assert_eq!(
            batch.push(&[], fixed(0, 0..1)).err(),
            Some(FrameError::EmptyHeader { frame: 0 })
        );
        assert_eq!(
            batch.push(b"h", Payload::Owned(vec![])).err(),
            Some(FrameError::EmptyPayload { frame: 0 })
        );
        for _ in 0..MAX_IOVECS / 2 {
            batch.push(b"h", fixed(0, 0..1)).unwrap();
        }
        assert_eq!(
            batch.push(b"h", fixed(0, 0..1)).err(),
            Some(FrameError::TooManyFrames {
                frames: MAX_IOVECS / 2 + 1,
                max: MAX_IOVECS / 2
            })
        );
    }

    #[test]
    fn position_after_partial_send() {
        let mut batch = Batch::new();
        batch.push(&[0; 24], fixed(0, 0..100)).unwrap();
        batch.push(&[0; 24], Payload::Owned(vec![1; 10])).unwrap();
        assert_eq!(batch.bytes(), 158);
        assert_eq!(
            batch.position(0),
            Resume {
                frame: 0,
                offset: 0
            }
        );
        assert_eq!(
            batch.position(123),
            Resume {
                frame: 0,
                offset: 123
            }
        );
        assert_eq!(
            batch.position(124),
            Resume {
                frame: 1,
                offset: 0
            }
        );
        assert_eq!(
            batch.position(130),
            Resume {
                frame: 1,
                offset: 6
            }
        );
        assert_eq!(
            batch.position(158),
            Resume {
                frame: 2,
                offset: 0
            }
        );
    }

    #[test]
    fn single_buffer_detection() {
        let mut one = Batch::new();
        one.push(b"h", fixed(2, 0..1)).unwrap();
        one.push(b"h", fixed(2, 5..9)).unwrap();
        assert_eq!(FrameSender::single_buffer(&one), Some(2));
        let mut two = Batch::new();
        two.push(b"h", fixed(2, 0..1)).unwrap();
        two.push(b"h", fixed(3, 0..1)).unwrap();
        assert_eq!(FrameSender::single_buffer(&two), None);
        let mut owned = Batch::new();
        owned.push(b"h", Payload::Owned(vec![1])).unwrap();
        assert_eq!(FrameSender::single_buffer(&owned), None);
    }

    #[test]
    fn header_slots_are_taken_and_returned() {
        let mut pool = BufferPool::new(&[100]).unwrap();
        let slots: Vec<usize> = (0..HEADER_SLOTS)
            .map(|_| pool.take_slot(0).unwrap())
            .collect();
        assert_eq!(slots[0], 100);
        assert_eq!(slots[1], 100 + HEADER_SLOT);
        assert_eq!(pool.take_slot(0), None);
        pool.put_slot(0, slots[3]);
        assert_eq!(pool.take_slot(0), Some(slots[3]));
    }

    #[test]
    fn pool_checks_ranges() {
        let pool = BufferPool::new(&[100]).unwrap();
        assert!(pool.check(0, &fixed(0, 0..100)).is_ok());
        assert_eq!(
            pool.check(1, &fixed(0, 90..101)),
            Err(FrameError::OutOfRange {
                frame: 1,
                buf: 0,
                range: 90..101,
                len: 100
            })
        );
        assert_eq!(
            pool.check(2, &fixed(1, 0..1)),
            Err(FrameError::UnknownBuffer { frame: 2, buf: 1 })
        );
    }
}
