//! One submission of a request to the kernel: its iovecs, attributes and
//! msghdr (the memory the SQE points to), built from the unsent part of the
//! batch, and the SQE itself.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::batch::{Batch, Payload};
use super::path::RequestPath;
use super::pool::Lease;
use crate::sqe::{self, SendMsgZc};
use crate::sys::{self, io_uring_zc_iov_attr};

/// The socket a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Socket {
    Fd(RawFd),
    Fixed(u32),
}

/// Memory an SQE points to. The vectors' heap memory does not move when an
/// `Attempt` does, so the pointers stay valid for as long as it lives.
pub(crate) struct Attempt {
    /// What `msg` points to; read by the kernel only.
    _iov: Vec<libc::iovec>,
    attrs: Vec<io_uring_zc_iov_attr>,
    msg: Box<libc::msghdr>,
    _name: Box<libc::sockaddr_storage>,
    _control: Vec<u64>,
    /// Token of the result CQE, until it arrives.
    pub(crate) result: Option<u64>,
    /// Token of the notification CQE, until it arrives (or is known not to).
    pub(crate) notif: Option<u64>,
}

// SAFETY: the raw pointers inside refer only to heap memory owned by this
// attempt or by the request it belongs to, which moves with it.
unsafe impl Send for Attempt {}

/// One piece of the wire: its address, length and attribute.
fn piece(
    ptr: *const u8,
    len: usize,
    attr: io_uring_zc_iov_attr,
) -> (libc::iovec, io_uring_zc_iov_attr) {
    (
        libc::iovec {
            iov_base: ptr.cast_mut().cast(),
            iov_len: len,
        },
        attr,
    )
}

/// The control messages, laid out as CMSG_* would, in u64s for the
/// alignment of cmsghdr.
fn control_buffer(messages: &[(i32, i32, Vec<u8>)]) -> Vec<u64> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = |len: usize| unsafe { libc::CMSG_SPACE(len as u32) } as usize;
    let total: usize = messages.iter().map(|(_, _, d)| space(d.len())).sum();
    let mut buf = vec![0u64; total.div_ceil(8)];
    let base: *mut u8 = buf.as_mut_ptr().cast();
    let mut at = 0;
    for (level, ty, data) in messages {
        let cmsg = libc::cmsghdr {
            // SAFETY: CMSG_LEN only computes a size.
            cmsg_len: unsafe { libc::CMSG_LEN(data.len() as u32) } as usize,
            cmsg_level: *level,
            cmsg_type: *ty,
        };
        // SAFETY: buf holds the CMSG_SPACE of every message; each header goes
        // at an offset CMSG_SPACE keeps aligned for cmsghdr (u64-aligned
        // base), and its data right after it, as CMSG_DATA places it.
        unsafe {
            std::ptr::write(base.add(at).cast::<libc::cmsghdr>(), cmsg);
            let payload = base.add(at + std::mem::size_of::<libc::cmsghdr>());
            std::ptr::copy_nonoverlapping(data.as_ptr(), payload, data.len());
        }
        at += space(data.len());
    }
    buf
}

impl Attempt {
    /// The unsent part of `batch` (after `sent` bytes), for `path`.
    /// `staged` holds the headers for [`RequestPath::FixedBuf`].
    pub(crate) fn build(
        batch: &Batch,
        sent: usize,
        path: RequestPath,
        staged: Option<&Lease>,
    ) -> Attempt {
        let mut skip = sent;
        let mut header_at = 0;
        let mut pieces = Vec::with_capacity(batch.iovecs());
        for (bytes, payload) in batch.pieces() {
            let ptr = match (payload, staged) {
                // SAFETY: the staged lease holds a copy of all headers, and
                // header pieces come in the order they were copied in.
                (None, Some(stage)) => unsafe { stage.as_ptr().add(header_at) },
                _ => bytes.as_ptr(),
            };
            if payload.is_none() {
                header_at += bytes.len();
            }
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            let attr = match (payload, path) {
                (_, RequestPath::Copy | RequestPath::FixedBuf { .. }) => {
                    io_uring_zc_iov_attr::copy()
                }
                (None, _) => io_uring_zc_iov_attr::copy(),
                (Some(Payload::Fixed(lease)), _) => {
                    io_uring_zc_iov_attr::fixed(lease.registration().map_or(0, |(_, i)| i))
                }
                (Some(_), _) => io_uring_zc_iov_attr::user(),
            };
            // SAFETY: skip < bytes.len(), so the result is inside the piece.
            pieces.push(piece(unsafe { ptr.add(skip) }, bytes.len() - skip, attr));
            skip = 0;
        }
        let (iov, attrs): (Vec<_>, Vec<_>) = pieces.into_iter().unzip();
        let (name, name_len) = match batch.dest {
            Some(addr) => sys::sockaddr(addr),
            // SAFETY: sockaddr_storage is plain data.
            None => (unsafe { std::mem::zeroed() }, 0),
        };
        let name = Box::new(name);
        let control = control_buffer(&batch.control);
        // SAFETY: msghdr is plain data; all-zero is an empty message.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len();
        if name_len > 0 {
            msg.msg_name = (&*name as *const libc::sockaddr_storage).cast_mut().cast();
            msg.msg_namelen = name_len;
        }
        if !control.is_empty() {
            msg.msg_control = control.as_ptr().cast_mut().cast();
            msg.msg_controllen = control.len() * 8;
        }
        Attempt {
            _iov: iov,
            attrs,
            msg,
            _name: name,
            _control: control,
            result: None,
            notif: None,
        }
    }

    /// The SQE: plain SENDMSG, or SENDMSG_ZC whose notification posts with
    /// its own token. `buf_index` is the ring index for FixedBuf.
    pub(crate) fn sqe(
        &mut self,
        socket: Socket,
        path: RequestPath,
        buf_index: u16,
        flags: u32,
        result: u64,
        notif: u64,
    ) -> squeue::Entry {
        self.result = Some(result);
        let msg: *const libc::msghdr = &*self.msg;
        if path == RequestPath::Copy {
            let op = match socket {
                Socket::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg),
                Socket::Fixed(i) => opcode::SendMsg::new(types::Fixed(i), msg),
            };
            return op.flags(flags).build().user_data(result);
        }
        self.notif = Some(notif);
        let socket: sqe::Socket = match socket {
            Socket::Fd(fd) => types::Fd(fd).into(),
            Socket::Fixed(i) => types::Fixed(i).into(),
        };
        let op = SendMsgZc::new(socket, msg)
            .msg_flags(flags)
            .notif_user_data(notif);
        let op = match (path, sqe::copy_mask_of(&self.attrs)) {
            (RequestPath::FixedBuf { .. }, _) => op.buf_index(buf_index),
            // One buffer: the same request, without an array to read.
            (_, Some((index, mask))) => op.buf_index(index).copy_mask(mask),
            _ => op.iov_attrs(self.attrs.as_ptr()),
        };
        op.build().user_data(result)
    }

    /// True once neither of its CQEs is outstanding.
    pub(crate) fn done(&self) -> bool {
        self.result.is_none() && self.notif.is_none()
    }
}

/// Pages a piece of `len` bytes at `addr` spans: the skb frags it needs
/// when zero-copied.
pub(crate) fn pages_spanned(addr: usize, len: usize) -> usize {
    const PAGE: usize = 4096;
    if len == 0 {
        return 0;
    }
    (addr + len - 1) / PAGE - addr / PAGE + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_unsent_part() {
        let mut batch = Batch::new();
        batch.push(b"head", Payload::Owned(vec![7; 10])).unwrap();
        batch.push(b"h2", Payload::None).unwrap();
        let all = Attempt::build(&batch, 0, RequestPath::PerIovec, None);
        assert_eq!(
            all._iov.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            [4, 10, 2]
        );
        let rest = Attempt::build(&batch, 6, RequestPath::PerIovec, None);
        assert_eq!(
            rest._iov.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            [8, 2]
        );
        assert_eq!(rest.attrs[0], io_uring_zc_iov_attr::user());
        assert_eq!(rest.attrs[1], io_uring_zc_iov_attr::copy());
        assert_eq!(rest.msg.msg_iovlen, 2);
    }

    #[test]
    fn lays_out_control_messages() {
        let buf = control_buffer(&[(1, 2, vec![0xaa; 2]), (3, 4, vec![0xbb; 8])]);
        // SAFETY: CMSG_SPACE only computes a size.
        let space = |n| unsafe { libc::CMSG_SPACE(n) } as usize;
        assert_eq!(buf.len() * 8, space(2) + space(8));
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len() * 8) };
        let hdr = std::mem::size_of::<libc::cmsghdr>();
        assert_eq!(&bytes[hdr..hdr + 2], [0xaa; 2]);
        assert_eq!(&bytes[space(2) + hdr..space(2) + hdr + 8], [0xbb; 8]);
        assert!(control_buffer(&[]).is_empty());
    }

    #[test]
    fn counts_pages() {
        assert_eq!(pages_spanned(0, 4096), 1);
        assert_eq!(pages_spanned(4095, 2), 2);
        assert_eq!(pages_spanned(100, 0), 0);
        assert_eq!(pages_spanned(4096, 8193), 3);
    }
}
