//! Sockets over loopback for the tests: TCP and UDP, IPv4 and IPv6.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::JoinHandle;

use crate::CQE_TIMEOUT;

/// IPv4 or IPv6 loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn loopback(self) -> SocketAddr {
        match self {
            Family::V4 => (Ipv4Addr::LOCALHOST, 0).into(),
            Family::V6 => (Ipv6Addr::LOCALHOST, 0).into(),
        }
    }
}

/// A connected TCP pair on loopback: `tx` sends, `rx` receives.
pub struct TcpPair {
    pub tx: TcpStream,
    pub rx: TcpStream,
}

impl TcpPair {
    pub fn new(family: Family) -> io::Result<TcpPair> {
        let listener = TcpListener::bind(family.loopback())?;
        let tx = TcpStream::connect(listener.local_addr()?)?;
        let (rx, _) = listener.accept()?;
        rx.set_read_timeout(Some(CQE_TIMEOUT))?;
        Ok(TcpPair { tx, rx })
    }

    /// Reads exactly `len` bytes from `rx` (bounded by the read timeout).
    pub fn receive(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.rx.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads exactly `len` bytes from `rx` in a thread of its own, for
    /// sends that need the receiver to make room while the ring runs.
    pub fn receive_in_background(&self, len: usize) -> JoinHandle<io::Result<Vec<u8>>> {
        let rx = self.rx.try_clone();
        std::thread::spawn(move || {
            let mut rx = rx?;
            let mut buf = vec![0; len];
            rx.read_exact(&mut buf)?;
            Ok(buf)
        })
    }
}

/// A UDP pair on loopback. When `connected`, `tx` is connected to `rx`;
/// otherwise each send must name `rx_addr`.
pub struct UdpPair {
    pub tx: UdpSocket,
    pub rx: UdpSocket,
    pub rx_addr: SocketAddr,
}

impl UdpPair {
    pub fn new(family: Family, connected: bool) -> io::Result<UdpPair> {
        let rx = UdpSocket::bind(family.loopback())?;
        let tx = UdpSocket::bind(family.loopback())?;
        let rx_addr = rx.local_addr()?;
        if connected {
            tx.connect(rx_addr)?;
        }
        rx.set_read_timeout(Some(CQE_TIMEOUT))?;
        Ok(UdpPair { tx, rx, rx_addr })
    }

    /// The next datagram (bounded by the read timeout).
    pub fn receive(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; 70000];
        let n = self.rx.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// True if a datagram is waiting.
    pub fn pending(&self) -> io::Result<bool> {
        pending(&self.rx)
    }
}

impl TcpPair {
    /// True if bytes are waiting on `rx`.
    pub fn pending(&self) -> io::Result<bool> {
        pending(&self.rx)
    }
}

/// True if `sock` has something to read, without waiting or consuming it.
fn pending(sock: &impl std::os::fd::AsFd) -> io::Result<bool> {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock.as_fd());
    match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `SO_MEMINFO` of asm-generic/socket.h (x86 uses the generic numbers);
/// libc does not export it for this target.
const SO_MEMINFO: libc::c_int = 55;

/// The socket's memory counters (SO_MEMINFO), indexed by libc's
/// `SK_MEMINFO_*`: what the kernel charges the socket for, e.g.
/// sk_wmem_alloc and sk_wmem_queued.
pub fn socket_meminfo(sock: &impl std::os::fd::AsRawFd) -> io::Result<[u32; 9]> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// A socket address in the C layout, for msg_name and SEND_ZC's addr2.
pub struct CSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl CSockAddr {
    pub fn new(addr: SocketAddr) -> CSockAddr {
        let (storage, len) = sendzc_iov::sys::sockaddr(addr);
        CSockAddr { storage, len }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub fn len(&self) -> libc::socklen_t {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How a test reaches its receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    /// UDP on a connected socket.
    UdpConnected,
    /// UDP on an unconnected socket, with a destination per request.
    UdpTo,
}

/// The two ends of a test connection.
pub enum Peer {
    Tcp(TcpPair),
    Udp(UdpPair),
}

impl Peer {
    pub fn new(transport: Transport, family: Family) -> io::Result<Peer> {
        Ok(match transport {
            Transport::Tcp => Peer::Tcp(TcpPair::new(family)?),
            Transport::UdpConnected => Peer::Udp(UdpPair::new(family, true)?),
            Transport::UdpTo => Peer::Udp(UdpPair::new(family, false)?),
        })
    }

    /// The sending socket.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        match self {
            Peer::Tcp(p) => p.tx.as_raw_fd(),
            Peer::Udp(p) => p.tx.as_raw_fd(),
        }
    }

    /// Where each request must be addressed, for unconnected UDP.
    pub fn dest(&self) -> Option<SocketAddr> {
        match self {
            Peer::Udp(p) if p.tx.peer_addr().is_err() => Some(p.rx_addr),
            _ => None,
        }
    }

    /// What one request of `len` bytes delivered: exactly `len` stream
    /// bytes for TCP, the next datagram for UDP.
    pub fn receive(&mut self, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Peer::Tcp(p) => p.receive(len),
            Peer::Udp(p) => p.receive(),
        }
    }

    /// True if anything at all is waiting at the receiver.
    pub fn pending(&self) -> io::Result<bool> {
        match self {
            Peer::Tcp(p) => p.pending(),
            Peer::Udp(p) => p.pending(),
        }
    }
}

/// Runs `cmd` with `args`; fails with its stderr.
fn run(cmd: &str, args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new(cmd).args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// Moves the calling thread (namespaces are per thread) into a new network
/// namespace whose only device is a dummy one, and returns a UDP socket
/// connected through it. The dummy device frees what it is given without
/// copying, so zero-copy really happens; its addresses (198.18.0.0/24)
/// exist only in that namespace. `sg` off makes the stack copy instead.
pub fn udp_through_dummy(sg: bool) -> io::Result<UdpSocket> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    run("ip", &["link", "add", "szdummy0", "type", "dummy"])?;
    // UDP zero-copy needs a datagram that fits the MTU unfragmented.
    run("ip", &["link", "set", "szdummy0", "mtu", "65535", "up"])?;
    run("ip", &["addr", "add", "198.18.0.1/24", "dev", "szdummy0"])?;
    if !sg {
        run("ethtool", &["-K", "szdummy0", "sg", "off"])?;
    }
    let sock = UdpSocket::bind("198.18.0.1:0")?;
    sock.connect("198.18.0.2:9")?;
    Ok(sock)
}
