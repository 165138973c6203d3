//! Which way requests go out: what the kernel offers (probed, not read from
//! uname), and the policy that picks a path per request.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use io_uring::{types, IoUring};

use super::attempt::pages_spanned;
use super::batch::{Batch, Payload};
use super::pool::Lease;
use super::target::SocketKind;
use crate::sqe::SendMsgZc;
use crate::sys;

/// What the running kernel offers for zero-copy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `IORING_SEND_ZC_IOV_ATTR`: the kernel series is there. Headers are
    /// copied, each payload zero-copied from its own buffer.
    PerIovec,
    /// SENDMSG_ZC with `IORING_RECVSEND_FIXED_BUF` (Linux 6.15+) for
    /// requests whose payloads all lie in one registered buffer (their
    /// headers are staged next to them); plain SENDMSG otherwise.
    FixedBuf,
    /// Plain SENDMSG.
    Copy,
}

/// How one request goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPath {
    /// SENDMSG_ZC with per-iovec attributes.
    PerIovec,
    /// SENDMSG_ZC with `IORING_RECVSEND_FIXED_BUF`: every byte, headers
    /// included, from this registered buffer of the pool.
    FixedBuf {
        /// The pool buffer.
        buf: u16,
    },
    /// Plain SENDMSG: the kernel copies every byte at issue.
    Copy,
}

impl RequestPath {
    /// True if the kernel posts a notification after the result.
    pub fn zero_copy(self) -> bool {
        self != RequestPath::Copy
    }
}

/// How the path of each request is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The best path the kernel offers (see [`Path::detect`]).
    pub path: Path,
    /// Requests with fewer payload bytes than this are copied: below it a
    /// notification costs more than the copy it saves. The default, 4096,
    /// is where zero-copy starts to pay in `cargo xtask bench` (one pair of
    /// 24 B + 0 B: SENDMSG_ZC costs 1.5x a SENDMSG; 4 x 4 KiB: 0.57x).
    pub copy_below: usize,
}

impl Policy {
    /// The best path of the running kernel, and the measured threshold.
    pub fn detect() -> io::Result<Policy> {
        Ok(Policy::with_threshold(Path::detect()?))
    }

    /// `path`, with the measured threshold.
    pub fn with_threshold(path: Path) -> Policy {
        Policy {
            path,
            copy_below: 4096,
        }
    }

    /// The path of `batch` to a socket of `kind`, and for FixedBuf the
    /// lease its headers are staged in.
    pub(crate) fn choose(&self, kind: SocketKind, batch: &Batch) -> (RequestPath, Option<Lease>) {
        let payload: usize = batch.frames.iter().map(|f| f.payload.len()).sum();
        if payload < self.copy_below.max(1) {
            return (RequestPath::Copy, None);
        }
        let datagram = kind == SocketKind::Datagram;
        match self.path {
            Path::Copy => (RequestPath::Copy, None),
            Path::PerIovec => {
                let frags: usize = batch
                    .pieces()
                    .map(|(bytes, p)| match p {
                        None => 1,
                        Some(_) => pages_spanned(bytes.as_ptr() as usize, bytes.len()),
                    })
                    .sum();
                if batch.headers.len() > COPY_CAP || (datagram && frags > MAX_SKB_FRAGS) {
                    (RequestPath::Copy, None)
                } else {
                    (RequestPath::PerIovec, None)
                }
            }
            Path::FixedBuf => choose_fixed_buf(batch, datagram),
        }
    }

    /// `path`, and no threshold: every request that can zero-copy does.
    pub fn always(path: Path) -> Policy {
        Policy {
            path,
            copy_below: 0,
        }
    }
}

/// Frags one skb holds (`MAX_SKB_FRAGS` of a default kernel config): a
/// zero-copy datagram needs one per piece and page. With more, the kernel
/// copies the whole datagram (and FixedBuf fails with EMSGSIZE): a plain
/// SENDMSG then does the same work without a notification.
pub const MAX_SKB_FRAGS: usize = 17;
/// Most COPY bytes the per-iovec path takes in one request (`-E2BIG`
/// above it).
const COPY_CAP: usize = sys::IORING_ZC_IOV_COPY_MAX as usize;

/// FixedBuf for a batch whose payloads are all leases of one buffer,
/// with room in it for the headers and, on a datagram, few enough frags.
fn choose_fixed_buf(batch: &Batch, datagram: bool) -> (RequestPath, Option<Lease>) {
    let mut leases = batch.frames.iter().filter_map(|f| match &f.payload {
        Payload::Fixed(lease) => Some(lease),
        _ => None,
    });
    let Some(first) = leases.next() else {
        return (RequestPath::Copy, None);
    };
    let one_buffer = leases.all(|l| l.same_pool(first) && l.buf() == first.buf());
    let no_owned = batch
        .frames
        .iter()
        .all(|f| !matches!(f.payload, Payload::Owned(_)));
    if !one_buffer || !no_owned {
        return (RequestPath::Copy, None);
    }
    let staged = match batch.headers.len() {
        0 => None,
        n => match first.sibling(n) {
            Some(mut lease) => {
                lease.copy_from_slice(&batch.headers);
                Some(lease)
            }
            None => return (RequestPath::Copy, None),
        },
    };
    if datagram {
        let mut frags = 0;
        let mut header_at = staged.as_ref().map(|s| s.as_ptr() as usize);
        for (bytes, p) in batch.pieces() {
            let addr = match (p, header_at.as_mut()) {
                (None, Some(at)) => {
                    let a = *at;
                    *at += bytes.len();
                    a
                }
                _ => bytes.as_ptr() as usize,
            };
            frags += pages_spanned(addr, bytes.len());
        }
        if frags > MAX_SKB_FRAGS {
            return (RequestPath::Copy, None);
        }
    }
    (RequestPath::FixedBuf { buf: first.buf() }, staged)
}

/// What the running kernel offers, probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offers {
    /// `IORING_FEAT_SEND_ZC_IOV_ATTR`: the series.
    pub per_iovec: bool,
    /// SENDMSG_ZC takes `IORING_RECVSEND_FIXED_BUF` (Linux 6.15+).
    pub fixed_buf: bool,
    /// A zero-copy send's notification can have a user_data of its own
    /// (`sqe->addr3`), which a [`SendCore`](super::SendCore) needs to keep
    /// the notification's token secret until it arrives.
    pub notif_user_data: bool,
}

impl Offers {
    /// The FEAT bit of the series, and trial requests: SENDMSG_ZC with
    /// `IORING_RECVSEND_FIXED_BUF`, with and without `addr3`.
    pub fn probe() -> io::Result<Offers> {
        let per_iovec = crate::probe::has_iov_attr()?;
        let notif_user_data = trial_fixed_buf(true)?;
        let fixed_buf = notif_user_data || trial_fixed_buf(false)?;
        Ok(Offers {
            per_iovec,
            fixed_buf,
            notif_user_data,
        })
    }

    /// The best path for a core whose CQEs the caller reaps: zero-copy
    /// only where notifications have their own user_data.
    pub fn best(self) -> Path {
        self.best_with(self.notif_user_data)
    }

    /// The best path, where `secret_notif` says whether notifications can
    /// be told from forgeries (their own user_data, or CQEs nobody else
    /// sees, as in [`FrameSender`](super::FrameSender)).
    pub(crate) fn best_with(self, secret_notif: bool) -> Path {
        match (self.per_iovec, self.fixed_buf, secret_notif) {
            (_, _, false) => Path::Copy,
            (true, _, true) => Path::PerIovec,
            (false, true, true) => Path::FixedBuf,
            (false, false, true) => Path::Copy,
        }
    }
}

impl Path {
    /// The best path of the running kernel for a [`SendCore`](super::SendCore):
    /// [`Offers::probe`], then [`Offers::best`]. Never read from uname.
    pub fn detect() -> io::Result<Path> {
        Ok(Offers::probe()?.best())
    }
}

/// One byte from a registered buffer to a UDP socket of our own, on a ring
/// of our own, with or without a notification user_data of its own: true
/// if the result (1 byte) and the notification come back.
fn trial_fixed_buf(own_notif: bool) -> io::Result<bool> {
    const RESULT: u64 = 1;
    const NOTIF: u64 = 2;
    // Declared before the ring, so dropped after it: dropping the ring
    // cancels the request and waits for it.
    let mut byte = [0x5au8; 1];
    let iov = [libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }];
    // SAFETY: msghdr is plain data; all-zero is an empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = 1;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(sock.local_addr()?)?;
    let mut ring = IoUring::new(4)?;
    // SAFETY: `byte` outlives the ring (see above).
    unsafe { ring.submitter().register_buffers(&iov)? };
    let notif = if own_notif { NOTIF } else { RESULT };
    let entry = SendMsgZc::new(types::Fd(sock.as_raw_fd()), &msg)
        .buf_index(0)
        .notif_user_data(if own_notif { NOTIF } else { 0 })
        .build()
        .user_data(RESULT);
    // SAFETY: msg, iov and byte outlive the ring (see above).
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::other("trial ring is full"))?;
    let (mut result, mut notified) = (None, false);
    while !notified && !matches!(result, Some((_, false))) {
        let ts = types::Timespec::new().sec(1);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => break,
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            let is_notif = cqe.flags() & sys::IORING_CQE_F_NOTIF != 0;
            if is_notif && cqe.user_data() == notif {
                notified = true;
            } else if !is_notif && cqe.user_data() == RESULT {
                result = Some((cqe.result(), cqe.flags() & sys::IORING_CQE_F_MORE != 0));
            }
        }
    }
    Ok(result.is_some_and(|(res, _)| res == 1) && notified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_some_path() {
        let policy = Policy::detect().unwrap();
        assert_eq!(policy.copy_below, 4096);
        assert_eq!(Policy::always(Path::Copy).copy_below, 0);
    }
}
