//! Framed sends: any number of (header, payload) pairs in one request,
//! headers copied, payloads zero-copied from registered buffers or from
//! memory the request owns, on the caller's own ring.
//!
//! ```no_run
//! use io_uring::IoUring;
//! use sendzc_iov::frame::{Batch, Event, Payload, Policy, SendCore, TxPool};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let stream = std::net::TcpStream::connect("127.0.0.1:9")?;
//! use std::os::fd::AsFd;
//! let mut ring = IoUring::new(64)?;
//! ring.submitter().register_buffers_sparse(16)?; // the ring's table: ours
//! let pool = TxPool::new(4, 1 << 20)?;
//! pool.register(&ring, 8)?; // table indices 8..12
//! let mut core = SendCore::new(&ring, Policy::detect()?, 0xf0)?;
//!
//! let mut payload = pool.lease(5).expect("room");
//! payload.copy_from_slice(b"hello");
//! let mut batch = Batch::new();
//! batch.push(&[0u8; 24], Payload::Fixed(payload))?;
//! batch.push(&[1u8; 24], Payload::None)?; // a header alone
//! let id = core.submit(&mut ring, stream.as_fd(), batch)?;
//! ring.submit_and_wait(1)?;
//! loop {
//!     let cqes: Vec<_> = ring.completion().collect();
//!     for cqe in cqes.iter() {
//!         if !core.is_mine(cqe.user_data()) {
//!             continue; // the caller's own CQEs
//!         }
//!         for event in core.complete(cqe) {
//!             match event {
//!                 Event::Sent { sent, total, .. } => assert_eq!(sent, total),
//!                 Event::Failed { error, .. } => return Err(error.into()),
//!                 // The notification came: the lease is writable again.
//!                 Event::Released { .. } => return Ok(()),
//!             }
//!         }
//!     }
//!     core.flush(&mut ring)?;
//!     ring.submit_and_wait(1)?;
//! }
//! # }
//! ```
//!
//! [`FrameSender`] bundles a ring, a pool and a core for programs that have
//! no ring of their own.
//!
//! # Paths
//!
//! [`Policy::detect`] probes what the kernel offers (the FEAT bit of the
//! series, then a trial request; never the version string), and each
//! request gets its own [`RequestPath`], which [`SendCore::path_for`]
//! shows before it is submitted and every event carries:
//!
//! - [`Path::PerIovec`] (the series in `kernel-patches/`): headers copied,
//!   each payload zero-copied from its own place. When the payloads are
//!   all leases of one registered buffer (and the request has at most 64
//!   pieces), the request says so with a copy mask in the SQE instead of
//!   an attribute array, which the kernel then need not read.
//! - [`Path::FixedBuf`] (Linux 6.15+ without it): a request whose payloads
//!   are all leases of one buffer goes out as SENDMSG_ZC with
//!   `IORING_RECVSEND_FIXED_BUF`, its headers staged in the same buffer
//!   (a lease of their size, taken at submit).
//! - [`Path::Copy`]: plain SENDMSG.
//!
//! A request takes [`RequestPath::Copy`] instead when it carries fewer
//! payload bytes than [`Policy::copy_below`] (4096 by default: below that a
//! notification costs more than the copy), when FixedBuf cannot carry it
//! (payloads in two buffers or owned, no room for the headers), when its
//! headers exceed the series' COPY cap (`IORING_ZC_IOV_COPY_MAX`, 64 KiB),
//! or when a datagram would need more than [`MAX_SKB_FRAGS`] frags
//! zero-copied, which the kernel would copy anyway. A zero-copy attempt
//! that fails with EMSGSIZE, EINVAL or EOPNOTSUPP sent nothing, and is sent
//! again as a copy. The bytes on the wire are the same on every path.
//!
//! # Order
//!
//! Requests to a stream socket go out one after the other, in the order
//! they were submitted: a request waits in the core until the one before it
//! on the same socket has its result (its bytes are in the socket then),
//! and [`SendCore::flush`] pushes it. A request cut short (a signal, a
//! non-blocking socket, an error) pauses its stream: its event carries a
//! [`Remainder`], which the caller hands to [`SendCore::resume`] to send
//! the rest first, or to [`SendCore::abandon`] to move on. Requests to
//! datagram sockets go out concurrently.
//!
//! # Safety model
//!
//! The kernel reads payloads until the request's notification. Safe code
//! cannot change or free them before it:
//!
//! - A [`Lease`] is the only way to write pool memory, and it moves into the
//!   request; it comes back in [`Event::Released`], after the notification.
//!   The pool's memory lives as long as the pool or any lease does, so
//!   dropping or replacing a pool frees nothing in flight.
//! - Owned payloads move in and come back the same way.
//! - Events follow only from CQEs whose user_data is a secret token of the
//!   request's, each accepted once (see `token.rs`): forged, foreign and
//!   duplicate CQEs change nothing.
//! - Dropping a core with requests in flight leaks their memory.
//!
//! A lease moved into a batch cannot be written any more:
//!
//! ```compile_fail,E0382
//! # use sendzc_iov::frame::{Batch, Payload, TxPool};
//! let pool = TxPool::new(1, 4096).unwrap();
//! let mut lease = pool.lease(8).unwrap();
//! let mut batch = Batch::new();
//! batch.push(b"h", Payload::Fixed(lease)).unwrap();
//! lease[0] = 1; // error: use of moved value
//! ```
//!
//! nor through a borrow taken before:
//!
//! ```compile_fail,E0505
//! # use sendzc_iov::frame::{Batch, Payload, TxPool};
//! let pool = TxPool::new(1, 4096).unwrap();
//! let mut lease = pool.lease(8).unwrap();
//! let bytes: &mut [u8] = &mut lease;
//! let mut batch = Batch::new();
//! batch.push(b"h", Payload::Fixed(lease)).unwrap(); // error: lease is borrowed
//! bytes[0] = 1;
//! ```
//!
//! and a lease cannot be copied to keep a handle on its bytes:
//!
//! ```compile_fail,E0599
//! # use sendzc_iov::frame::TxPool;
//! let pool = TxPool::new(1, 4096).unwrap();
//! let lease = pool.lease(8).unwrap();
//! let other = lease.clone(); // error: Lease is not Clone
//! ```

mod attempt;
mod batch;
mod core;
mod path;
mod pool;
mod sender;
mod target;
mod token;

use std::fmt;
use std::io;

pub use self::batch::{Batch, Payload, Resume, MAX_BYTES, MAX_IOVECS};
pub use self::core::SendCore;
pub use self::path::MAX_SKB_FRAGS;
pub use self::path::{Offers, Path, Policy, RequestPath};
pub use self::pool::{Lease, TxPool};
pub use self::sender::FrameSender;
pub use self::target::{SocketKind, Target};

/// Why a request was refused before anything was submitted, or what the
/// ring said when it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The batch has no frames.
    Empty,
    /// A frame with neither header nor payload bytes.
    EmptyFrame {
        /// The frame's index in its batch.
        frame: usize,
    },
    /// More iovecs than one request can carry.
    TooManyIovecs {
        /// Iovecs allowed.
        max: usize,
    },
    /// More bytes than one request can carry.
    TooLarge {
        /// Bytes asked for.
        bytes: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// A payload's lease is of a pool not registered in this core's ring.
    NotRegistered {
        /// The frame.
        frame: usize,
    },
    /// The ring given is not the one the core was made for.
    WrongRing,
    /// The ring refused `io_uring_enter`: `errno`. With `id`, the request
    /// is queued in the ring and will go with its next submission.
    Ring {
        /// The request, if one was queued.
        id: Option<RequestId>,
        /// The error number.
        errno: i32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => write!(f, "the batch has no frames"),
            FrameError::EmptyFrame { frame } => write!(f, "frame {frame} has no bytes"),
            FrameError::TooManyIovecs { max } => write!(f, "more than {max} iovecs"),
            FrameError::TooLarge { bytes, max } => {
                write!(f, "{bytes} bytes, at most {max} fit one request")
            }
            FrameError::NotRegistered { frame } => {
                write!(f, "frame {frame}: its pool is not registered in this ring")
            }
            FrameError::WrongRing => write!(f, "not the ring this core was made for"),
            FrameError::Ring { errno, .. } => write!(
                f,
                "the ring refused the submission: {}",
                io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        match e {
            FrameError::Ring { errno, .. } => io::Error::from_raw_os_error(errno),
            other => io::Error::new(io::ErrorKind::InvalidInput, other),
        }
    }
}

/// Identifies a request in events. Not its CQEs' user_data (those are
/// secret tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The unsent rest of a request cut short on a stream: hand it to
/// [`SendCore::resume`] or [`SendCore::abandon`]. Until then the stream
/// sends nothing more, and the request is not released.
#[must_use = "the stream is paused until the remainder is resumed or abandoned"]
#[derive(Debug)]
pub struct Remainder {
    id: RequestId,
    resume: Resume,
    left: usize,
}

impl Remainder {
    /// The request.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Where its unsent part starts.
    pub fn position(&self) -> Resume {
        self.resume
    }

    /// Bytes left to send.
    pub fn len(&self) -> usize {
        self.left
    }

    /// True if nothing is left (never, for a remainder handed out).
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

/// What happened to a request: one [`Event::Sent`] or [`Event::Failed`] per
/// submission of it (more than one only after a resume), then exactly one
/// [`Event::Released`].
#[derive(Debug)]
pub enum Event {
    /// `sent` of the request's `total` bytes are on the wire.
    Sent {
        /// The request.
        id: RequestId,
        /// How it went out.
        path: RequestPath,
        /// Bytes on the wire so far.
        sent: usize,
        /// Bytes the request carries.
        total: usize,
        /// The rest, if it was cut short on a stream.
        remainder: Option<Remainder>,
    },
    /// The kernel's error; `sent` bytes had gone out before it.
    Failed {
        /// The request.
        id: RequestId,
        /// How it was to go out.
        path: RequestPath,
        /// Bytes on the wire before the error.
        sent: usize,
        /// The kernel's error.
        error: io::Error,
        /// The rest, on a stream (which is paused until it is dealt with).
        remainder: Option<Remainder>,
    },
    /// The kernel is done with the request's memory: its payloads are
    /// handed back, in frame order (leases writable again).
    Released {
        /// The request.
        id: RequestId,
        /// Its payloads.
        payloads: Vec<Payload>,
    },
}
