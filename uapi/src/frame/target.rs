//! Where a request goes: a socket, or a registered file, and its kind.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use io_uring::types;

use super::attempt::Socket;

/// What a socket does with bytes: kept in order, or one datagram per send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// SOCK_STREAM: requests are sent one after the other, in order.
    Stream,
    /// SOCK_DGRAM: requests go out concurrently; zero-copy only within the
    /// frag budget of one skb.
    Datagram,
}

/// Where a request goes: a socket, or a registered file with its kind.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub(crate) socket: Socket,
    pub(crate) kind: SocketKind,
}

impl Target {
    /// Registered file `file` (`types::Fixed`), a socket of `kind`.
    pub fn fixed(file: types::Fixed, kind: SocketKind) -> Target {
        Target {
            socket: Socket::Fixed(file.0),
            kind,
        }
    }

    /// `fd`; its kind from `SO_TYPE` (a stream if it cannot be read).
    pub fn fd(fd: RawFd) -> Target {
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `kind`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        let kind = match (rc, kind) {
            (0, libc::SOCK_DGRAM) => SocketKind::Datagram,
            _ => SocketKind::Stream,
        };
        Target {
            socket: Socket::Fd(fd),
            kind,
        }
    }
}

impl From<BorrowedFd<'_>> for Target {
    fn from(fd: BorrowedFd<'_>) -> Target {
        Target::fd(fd.as_raw_fd())
    }
}

impl From<types::Fd> for Target {
    fn from(fd: types::Fd) -> Target {
        Target::fd(fd.0)
    }
}
