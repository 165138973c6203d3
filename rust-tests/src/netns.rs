//! Network namespaces of a test's own, a veth pair between two of them,
//! netem on its ends, a dummy device, and AF_PACKET taps: the paths where
//! the stack clones, copies, splits and retransmits skbs.
//!
//! A [`Netns`] is a file descriptor, not a place a thread lives in:
//! [`Netns::run`] enters it on a thread of its own for one closure, and a
//! socket created there stays in that namespace whichever thread uses it.
//! Nothing is named in /run/netns and nothing outlives the test: closing
//! the last descriptor and socket of a namespace takes it and its links
//! away. The links are configured with `ip` and `tc` (iproute2) and
//! `ethtool`.

use std::ffi::CString;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use crate::net::{Family, TcpPair, UdpPair};
use crate::CQE_TIMEOUT;

/// A network namespace, held open by a descriptor.
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// A new namespace, with `lo` up and nothing else.
    pub fn new() -> io::Result<Netns> {
        let ns = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            let file = std::fs::File::open("/proc/thread-self/ns/net")?;
            Ok::<_, io::Error>(Netns { fd: file.into() })
        })
        .join()
        .expect("the thread creating a namespace panicked")?;
        ns.ip(&["link set dev lo up".to_string()])?;
        Ok(ns)
    }

    /// Runs `f` on a thread that has entered this namespace; what `f`
    /// creates (sockets, processes) belongs to it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                nix::sched::setns(&self.fd, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `cmd` with `args` in this namespace; fails with its stderr.
    pub fn cmd(&self, cmd: &str, args: &[&str]) -> io::Result<()> {
        let out = self.run(|| Command::new(cmd).args(args).output())?;
        check(out, &format!("{cmd} {}", args.join(" ")))
    }

    /// Runs `ip` commands (one a line, without `ip`) in one process here.
    pub fn ip(&self, commands: &[String]) -> io::Result<()> {
        let script = commands.join("\n") + "\n";
        let out = self.run(|| {
            let mut child = Command::new("ip")
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let written = child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(script.as_bytes());
            let out = child.wait_with_output()?;
            written.map(|()| out)
        })?;
        check(out, &format!("ip -batch:\n{script}"))
    }

    /// Writes `value` to the sysctl `key` (a path under /proc/sys, such as
    /// `net/ipv4/tcp_sack`) of this namespace, and reads it back.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{key}");
        let now = self.run(|| {
            std::fs::write(&path, value)?;
            std::fs::read_to_string(&path)
        })?;
        if now.trim() == value {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "{path} is {now:?} after writing {value:?}"
        )))
    }

    /// The counter `name` of `group` (e.g. "Tcp" "RetransSegs", or
    /// "TcpExt" "TCPSackRecovery") in this namespace's /proc/net/snmp or
    /// /proc/net/netstat.
    pub fn counter(&self, group: &str, name: &str) -> io::Result<u64> {
        let text = self.run(|| {
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
            let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
            Ok::<_, io::Error>(snmp + &netstat)
        })?;
        let prefix = format!("{group}:");
        let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
        let missing = || io::Error::other(format!("no counter {group} {name}"));
        let (names, values) = (
            lines.next().ok_or_else(missing)?,
            lines.next().ok_or_else(missing)?,
        );
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .ok_or_else(missing)?;
        let value = values.split_whitespace().nth(at).ok_or_else(missing)?;
        value.parse().map_err(io::Error::other)
    }

    /// A path to this namespace that `ip ... netns PATH` can open.
    fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }
}

/// Ok if `out` says success, else an error naming `what` with its stderr.
fn check(out: std::process::Output, what: &str) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// One end of a [`VethPair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The sender's end.
    A,
    /// The receiver's end.
    B,
}

impl Side {
    pub fn ifname(self) -> &'static str {
        match self {
            Side::A => "szv0",
            Side::B => "szv1",
        }
    }

    fn mac(self) -> &'static str {
        match self {
            Side::A => "02:5a:00:00:00:01",
            Side::B => "02:5a:00:00:00:02",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// This end's address (198.18.1.0/24 and fd00:5a::/64, private to the
    /// pair's namespaces).
    pub fn addr(self, family: Family) -> IpAddr {
        let host = match self {
            Side::A => 1,
            Side::B => 2,
        };
        match family {
            Family::V4 => Ipv4Addr::new(198, 18, 1, host as u8).into(),
            Family::V6 => Ipv6Addr::new(0xfd00, 0x5a, 0, 0, 0, 0, 0, host).into(),
        }
    }
}

/// Two namespaces joined by a veth pair: `a` holds [`Side::A`]'s end,
/// `b` the other. Both have IPv4 and IPv6 addresses (no DAD) and
/// permanent neighbour entries for each other, so that netem loss never
/// hits ARP or neighbour discovery.
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
}

impl VethPair {
    /// The pair with both ends at `mtu`, up, and passing packets both ways.
    pub fn new(mtu: u32) -> io::Result<VethPair> {
        let pair = VethPair {
            a: Netns::new()?,
            b: Netns::new()?,
        };
        let (a, b) = (Side::A, Side::B);
        pair.a.ip(&[format!(
            "link add {} address {} mtu {mtu} type veth peer name {} address {} mtu {mtu} netns {}",
            a.ifname(),
            a.mac(),
            b.ifname(),
            b.mac(),
            pair.b.path()
        )])?;
        for side in [a, b] {
            pair.ns(side).ip(&configure(side))?;
        }
        pair.wait_until_passing()?;
        Ok(pair)
    }

    pub fn ns(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Puts netem with `spec` (e.g. "loss 5% delay 1ms") at the root of
    /// `side`'s end.
    pub fn netem(&self, side: Side, spec: &str) -> io::Result<()> {
        let mut args = vec!["qdisc", "add", "dev", side.ifname(), "root", "netem"];
        args.extend(spec.split_whitespace());
        self.ns(side).cmd("tc", &args)
    }

    /// Turns an offload (an `ethtool -K` feature, e.g. "tso") of `side`'s
    /// end on or off.
    pub fn offload(&self, side: Side, feature: &str, on: bool) -> io::Result<()> {
        let state = if on { "on" } else { "off" };
        self.ns(side)
            .cmd("ethtool", &["-K", side.ifname(), feature, state])
    }

    /// Sets the MTU of `side`'s end.
    pub fn set_mtu(&self, side: Side, mtu: u32) -> io::Result<()> {
        self.ns(side)
            .ip(&[format!("link set dev {} mtu {mtu}", side.ifname())])
    }

    /// A TCP connection: `tx` in `a`, `rx` (with the read timeout) in `b`.
    pub fn tcp(&self, family: Family) -> io::Result<TcpPair> {
        let listener = self
            .b
            .run(|| TcpListener::bind((Side::B.addr(family), 0)))?;
        let dest = listener.local_addr()?;
        let tx = self
            .a
            .run(|| TcpStream::connect_timeout(&dest, CQE_TIMEOUT))?;
        let (rx, _) = listener.accept()?;
        rx.set_read_timeout(Some(CQE_TIMEOUT))?;
        Ok(TcpPair { tx, rx })
    }

    /// A UDP pair: `tx` in `a` connected to `rx` in `b`.
    pub fn udp(&self, family: Family) -> io::Result<UdpPair> {
        let rx = self.b.run(|| UdpSocket::bind((Side::B.addr(family), 0)))?;
        let rx_addr = rx.local_addr()?;
        let tx = self.a.run(|| UdpSocket::bind((Side::A.addr(family), 0)))?;
        tx.connect(rx_addr)?;
        rx.set_read_timeout(Some(CQE_TIMEOUT))?;
        Ok(UdpPair { tx, rx, rx_addr })
    }

    /// Returns once a datagram has gone each way over each family: a
    /// link's qdisc is attached asynchronously after it comes up.
    fn wait_until_passing(&self) -> io::Result<()> {
        for family in [Family::V4, Family::V6] {
            for from in [Side::A, Side::B] {
                self.probe(from, family)?;
            }
        }
        Ok(())
    }

    fn probe(&self, from: Side, family: Family) -> io::Result<()> {
        let to = from.other();
        let rx = self.ns(to).run(|| UdpSocket::bind((to.addr(family), 0)))?;
        let tx = self
            .ns(from)
            .run(|| UdpSocket::bind((from.addr(family), 0)))?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let deadline = Instant::now() + CQE_TIMEOUT;
        let mut byte = [0u8; 1];
        while Instant::now() < deadline {
            tx.send_to(b"p", rx.local_addr()?)?;
            if rx.recv(&mut byte).is_ok() {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no {family:?} datagram from {from:?} to {to:?} within {CQE_TIMEOUT:?}"),
        ))
    }
}

/// The `ip` commands that give `side`'s end its addresses and neighbour.
fn configure(side: Side) -> Vec<String> {
    let (dev, peer) = (side.ifname(), side.other());
    let mut commands = vec![format!("link set dev {dev} up")];
    for (family, len) in [(Family::V4, 24), (Family::V6, 64)] {
        let nodad = if family == Family::V6 { " nodad" } else { "" };
        commands.push(format!(
            "addr add {}/{len} dev {dev}{nodad}",
            side.addr(family)
        ));
        commands.push(format!(
            "neigh replace {} lladdr {} dev {dev} nud permanent",
            peer.addr(family),
            peer.mac()
        ));
    }
    commands
}

/// A namespace whose only device (besides `lo`) is a dummy one, which
/// frees what it is sent without copying it: zero-copy really happens,
/// and whatever copies is something else on the path.
pub struct DummyLink {
    pub ns: Netns,
}

impl DummyLink {
    pub const IFNAME: &'static str = "szdummy0";

    pub fn new() -> io::Result<DummyLink> {
        let ns = Netns::new()?;
        let dev = DummyLink::IFNAME;
        ns.ip(&[
            format!("link add {dev} type dummy"),
            format!("link set dev {dev} up"),
            format!("addr add 198.18.0.1/24 dev {dev}"),
            format!("addr add fd00:5b::1/64 dev {dev} nodad"),
        ])?;
        Ok(DummyLink { ns })
    }

    /// A UDP socket connected, through the dummy device, to an address
    /// nobody has.
    pub fn udp(&self, family: Family) -> io::Result<UdpSocket> {
        let (local, remote): (IpAddr, IpAddr) = match family {
            Family::V4 => (
                Ipv4Addr::new(198, 18, 0, 1).into(),
                Ipv4Addr::new(198, 18, 0, 2).into(),
            ),
            Family::V6 => (
                Ipv6Addr::new(0xfd00, 0x5b, 0, 0, 0, 0, 0, 1).into(),
                Ipv6Addr::new(0xfd00, 0x5b, 0, 0, 0, 0, 0, 2).into(),
            ),
        };
        let sock = self.ns.run(|| UdpSocket::bind((local, 0)))?;
        sock.connect(SocketAddr::new(remote, 9))?;
        Ok(sock)
    }
}

/// sll_pkttype of a frame the host sent.
const PACKET_OUTGOING: u8 = 4;

/// An AF_PACKET socket that sees every frame one device sends and
/// receives: the stack hands it a clone of each, as tcpdump gets them.
pub struct Tap {
    fd: OwnedFd,
}

/// One frame a [`Tap`] saw, from the Ethernet header on.
pub struct Frame {
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

impl Tap {
    /// Opens a tap on `ifname` of the calling thread's namespace (call it
    /// inside [`Netns::run`]).
    pub fn open(ifname: &str) -> io::Result<Tap> {
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: a plain socket(2) call; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) returned a new descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a sockaddr_ll of the length passed, on our socket.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let timeout = nix::sys::time::TimeVal::new(1, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        Ok(Tap { fd })
    }

    /// The next frame (waits at most a second).
    pub fn next_frame(&self) -> io::Result<Frame> {
        let mut buf = vec![0u8; 256 * 1024];
        // SAFETY: as in Tap::open; overwritten by recvfrom below.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are writable for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(Frame {
            outgoing: from.sll_pkttype == PACKET_OUTGOING,
            bytes: buf,
        })
    }
}

/// The IP protocol number and payload of an Ethernet frame that carries
/// IPv4 or IPv6 (no extension headers) with TCP or UDP in it.
pub fn l4_payload(frame: &[u8]) -> Option<(u8, &[u8])> {
    let ip = frame.get(14..)?;
    let (proto, l4) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let header = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            (*ip.get(9)?, ip.get(header..total.min(ip.len()))?)
        }
        0x86dd => {
            let payload = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            (*ip.get(6)?, ip.get(40..(40 + payload).min(ip.len()))?)
        }
        _ => return None,
    };
    let header = match proto {
        6 => usize::from(l4.get(12)? >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    Some((proto, l4.get(header..)?))
}
