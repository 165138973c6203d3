//! Process events around requests in flight: a TCP pair whose receiver does
//! not read, so that sends stay in flight; child processes re-executed from
//! the running test binary, with descriptors passed between the processes;
//! a forked child that does nothing but exit; and the capability and limit
//! a child drops for itself.
//!
//! Every wait is bounded, as in the rest of this crate.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recv, recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};

use crate::net::Family;

/// SO_RCVBUF of a [`ZeroWindow`] receiver (the kernel doubles it): small,
/// but a few segments large. With a window of a segment or two, loopback
/// TCP falls back to window probes and delivers a few KiB a second under
/// TCG; a receive buffer enlarged mid-connection gets its segments dropped.
const RECEIVE_BUFFER: usize = 32 * 1024;
/// SO_SNDBUF of a [`ZeroWindow`] sender, the smallest there is.
const SEND_BUFFER: usize = 4096;

/// How long one read of a receiver waits before its caller looks around.
const READ_POLL: Duration = Duration::from_millis(100);

/// A TCP pair on loopback whose receiver `rx` reads only when told to: its
/// receive buffer is small from the handshake on, so the window it offers
/// closes after some 64 KiB, and the sender's send buffer is tiny. A send
/// larger than that stays in flight: short and waiting in poll, or queued
/// with its notification pending.
pub struct ZeroWindow {
    pub tx: TcpStream,
    pub rx: TcpStream,
}

impl ZeroWindow {
    pub fn new(family: Family) -> io::Result<ZeroWindow> {
        let listener = TcpListener::bind(family.loopback())?;
        // Before the handshake: the SYN-ACK's window and the window clamp
        // come from the listener, and the accepted socket inherits it.
        setsockopt(&listener, sockopt::RcvBuf, &RECEIVE_BUFFER)?;
        let tx = TcpStream::connect(listener.local_addr()?)?;
        let (rx, _) = listener.accept()?;
        setsockopt(&tx, sockopt::SndBuf, &SEND_BUFFER)?;
        rx.set_read_timeout(Some(READ_POLL))?;
        Ok(ZeroWindow { tx, rx })
    }

    /// Reads until the sender has nothing left unacknowledged and nothing
    /// is waiting at the receiver; fails if that takes longer than `within`.
    pub fn drain(&mut self, within: Duration) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let read = read_some(&mut self.rx, &mut got)?;
            if read == Some(0) || (read.is_none() && unacknowledged(&self.tx)? == 0) {
                return Ok(got);
            }
            if Instant::now() > deadline {
                return Err(timed_out(format!(
                    "{} bytes still unacknowledged after {within:?} (read {})",
                    unacknowledged(&self.tx)?,
                    got.len()
                )));
            }
        }
    }
}

/// Bytes `sock` has sent or queued that its peer has not acknowledged
/// (SIOCOUTQ).
pub fn unacknowledged(sock: &TcpStream) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int, into `bytes`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut bytes) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes as usize)
}

/// True if `sock` has something to read, without waiting or consuming it.
pub fn pending(sock: &TcpStream) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    match recv(
        sock.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One read of at most [`READ_POLL`]: Some(n) bytes appended (0 at EOF),
/// None if nothing came.
fn read_some(rx: &mut TcpStream, got: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut buf = [0u8; 64 * 1024];
    rx.set_read_timeout(Some(READ_POLL))?;
    match rx.read(&mut buf) {
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            Ok(Some(n))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `rx` until EOF; fails on a reset or if that takes over `within`.
pub fn read_to_eof(rx: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while read_some(rx, &mut got)? != Some(0) {
        if Instant::now() > deadline {
            return Err(timed_out(format!(
                "no EOF after {within:?} ({} bytes read)",
                got.len()
            )));
        }
    }
    Ok(got)
}

/// Reads exactly `len` bytes from `rx`; fails at EOF or after `within`.
pub fn read_exact_within(rx: &mut TcpStream, len: usize, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        if read_some(rx, &mut got)? == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {} of {len} bytes", got.len()),
            ));
        }
        if Instant::now() > deadline {
            return Err(timed_out(format!(
                "{} of {len} bytes after {within:?}",
                got.len()
            )));
        }
    }
    if got.len() > len {
        return Err(io::Error::other(format!(
            "{} bytes arrived, {len} expected",
            got.len()
        )));
    }
    Ok(got)
}

fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// The variable that tells a hidden test which child role to play.
pub const ROLE_ENV: &str = "SENDZC_CHILD_ROLE";
/// The descriptor number of the child's end of its socket to the parent.
const SOCKET_ENV: &str = "SENDZC_CHILD_SOCKET";

/// The role this process was started for by [`Child::spawn`], if any: a
/// hidden test returns at once without one.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A child process running one hidden (`#[ignore]`d) test of this test
/// binary, re-executed rather than forked: a fork of the multi-threaded
/// harness could only call async-signal-safe functions, not run a test.
/// Killed and reaped when dropped.
pub struct Child {
    process: std::process::Child,
    /// The parent's end of a unix stream socket to the child.
    pub socket: UnixStream,
    output: Option<JoinHandle<String>>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Runs the test `test` of the current binary alone, with `role` in
    /// [`ROLE_ENV`] and the other end of [`Child::socket`] inherited (see
    /// [`parent_socket`]). Its output is collected for [`Child::output`].
    pub fn spawn(test: &str, role: &str) -> io::Result<Child> {
        let (socket, theirs) = UnixStream::pair()?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(SOCKET_ENV, fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // SAFETY: between fork and exec the closure only calls fcntl, which
        // is async-signal-safe, on the child's copy of `theirs`: it alone
        // loses FD_CLOEXEC.
        unsafe {
            cmd.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            });
        }
        let mut process = cmd.spawn()?;
        drop(theirs);
        let output = Some(collect_output(&mut process));
        Ok(Child {
            process,
            socket,
            output,
            status: None,
        })
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) -> io::Result<()> {
        self.process.kill()
    }

    /// Waits for the child to exit, at most `within`; past that it is
    /// killed and the wait fails.
    pub fn wait(&mut self, within: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait()? {
                self.status = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.process.kill();
                self.status = Some(self.process.wait()?);
                return Err(timed_out(format!(
                    "the child did not exit within {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the child wrote to stdout and stderr; waits for it to
    /// close them (kill or wait first).
    pub fn output(&mut self) -> String {
        match self.output.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| "<output lost>".into()),
            None => String::new(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Reads the child's stdout and stderr to their ends, in threads.
fn collect_output(process: &mut std::process::Child) -> JoinHandle<String> {
    fn slurp(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = from.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    }
    let out = process.stdout.take().map(slurp);
    let err = process.stderr.take().map(slurp);
    std::thread::spawn(move || {
        let mut text = String::new();
        for thread in [out, err].into_iter().flatten() {
            text += &thread.join().unwrap_or_default();
        }
        text
    })
}

/// In a child started by [`Child::spawn`]: its socket to the parent.
pub fn parent_socket() -> io::Result<UnixStream> {
    let fd: RawFd = std::env::var(SOCKET_ENV)
        .map_err(io::Error::other)?
        .parse()
        .map_err(io::Error::other)?;
    // SAFETY: the parent left this descriptor open in this process, for it
    // to own; nothing else here uses it.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

/// Sends `text`, with a copy of each of `fds`, over `socket`.
pub fn send_fds(socket: &UnixStream, text: &str, fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one message sent by [`send_fds`], and the descriptors it
/// carries (close-on-exec here), waiting at most `within`.
pub fn recv_fds(socket: &UnixStream, within: Duration) -> io::Result<(String, Vec<OwnedFd>)> {
    socket.set_read_timeout(Some(within))?;
    let mut text = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(&mut text)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| match e {
        nix::errno::Errno::EAGAIN => timed_out(format!("no message within {within:?}")),
        e => e.into(),
    })?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS installed these descriptors in this
            // process; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed its socket without a message",
        ));
    }
    text.truncate(len);
    Ok((String::from_utf8_lossy(&text).into_owned(), fds))
}

/// A child forked from this (multi-threaded) process. Between fork and its
/// exit it calls only async-signal-safe functions (close, read, _exit):
/// another thread may have held any lock at the fork. Released (if it
/// waits), then reaped, when dropped.
pub struct Forked {
    pid: libc::pid_t,
    /// Closing it lets a waiting child exit.
    release: Option<OwnedFd>,
    reaped: bool,
}

impl Forked {
    /// A child that exits at once.
    pub fn exit_at_once() -> io::Result<Forked> {
        // SAFETY: see fork(); the child only calls _exit.
        unsafe { Forked::fork(None) }
    }

    /// A child that lives until [`Forked::release`].
    pub fn live_until_released() -> io::Result<Forked> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two new descriptors, now owned here.
        let pipe = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: see fork(); the child only calls close, read and _exit.
        unsafe { Forked::fork(Some(pipe)) }
    }

    /// A child that writes `byte` over its copy of `mem`, then exits.
    pub fn fill_and_exit(mem: &mut [u8], byte: u8) -> io::Result<Forked> {
        let fill = Fill {
            at: mem.as_mut_ptr(),
            len: mem.len(),
            byte,
        };
        // SAFETY: see fork(); the child writes memory it maps (its copy of
        // `mem`, borrowed mutably here) and calls _exit.
        unsafe { Forked::fork_with(None, Some(fill)) }
    }

    /// # Safety
    /// The child runs only [`child_body`], which never returns.
    unsafe fn fork(pipe: Option<(OwnedFd, OwnedFd)>) -> io::Result<Forked> {
        // SAFETY: as for this function.
        unsafe { Forked::fork_with(pipe, None) }
    }

    /// # Safety
    /// The child runs only [`child_body`], which never returns; `fill`, if
    /// any, is memory this process may write.
    unsafe fn fork_with(
        pipe: Option<(OwnedFd, OwnedFd)>,
        fill: Option<Fill>,
    ) -> io::Result<Forked> {
        let (wait_fd, close_fd) = match &pipe {
            Some((r, w)) => (r.as_raw_fd(), w.as_raw_fd()),
            None => (-1, -1),
        };
        // SAFETY: the child goes straight to child_body, which calls only
        // async-signal-safe functions and _exit.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => child_body(close_fd, wait_fd, fill),
            pid => Ok(Forked {
                pid,
                release: pipe.map(|(_, w)| w),
                reaped: false,
            }),
        }
    }

    /// True while the child has not exited.
    pub fn is_alive(&self) -> io::Result<bool> {
        let mut info: libc::siginfo_t = zeroed_siginfo();
        // SAFETY: waitid writes into `info`; WNOWAIT leaves the child to reap.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled in si_pid (0 if no child has changed state).
        Ok(unsafe { info.si_pid() } == 0)
    }

    /// Lets a child of [`Forked::live_until_released`] exit.
    pub fn release(&mut self) {
        self.release = None;
    }

    /// Waits for the child to exit, at most `within`; returns its wait status.
    pub fn reap(&mut self, within: Duration) -> io::Result<libc::c_int> {
        let deadline = Instant::now() + within;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into `status`.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                -1 => return Err(io::Error::last_os_error()),
                0 if Instant::now() > deadline => {
                    return Err(timed_out(format!(
                        "forked child {} alive after {within:?}",
                        self.pid
                    )))
                }
                0 => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    self.reaped = true;
                    return Ok(status);
                }
            }
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        self.release();
        if self.reaped {
            return;
        }
        let reaped = self.reap(Duration::from_secs(5));
        if reaped.is_err_and(|e| e.kind() == io::ErrorKind::TimedOut) {
            // SAFETY: signals and reaps our own child, still unreaped.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn zeroed_siginfo() -> libc::siginfo_t {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Memory a forked child writes before it exits.
struct Fill {
    at: *mut u8,
    len: usize,
    byte: u8,
}

/// The forked child: writes `fill` (if any), closes its copy of the release
/// end, waits for EOF on `wait_fd` (if any), and exits. Only
/// async-signal-safe calls.
fn child_body(close_fd: RawFd, wait_fd: RawFd, fill: Option<Fill>) -> ! {
    // SAFETY: plain stores into memory the caller of fork_with() vouched
    // for, then close, read and _exit on descriptors this process holds; no
    // allocation, no lock, no Rust runtime.
    unsafe {
        if let Some(f) = fill {
            for i in 0..f.len {
                f.at.add(i).write_volatile(f.byte);
            }
        }
        if close_fd >= 0 {
            libc::close(close_fd);
        }
        if wait_fd >= 0 {
            let mut byte = 0u8;
            loop {
                let n = libc::read(wait_fd, (&mut byte as *mut u8).cast(), 1);
                if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                    break;
                }
            }
        }
        libc::_exit(0)
    }
}

/// Drops CAP_IPC_LOCK from the calling thread (capabilities are per
/// thread): rings it creates from then on account pinned memory against
/// RLIMIT_MEMLOCK, as an unprivileged user's rings do.
pub fn drop_cap_ipc_lock() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two Data structs for version 3, which we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    data[0].permitted &= !(1 << CAP_IPC_LOCK);
    // SAFETY: capset reads the header and two Data structs we pass.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the soft RLIMIT_MEMLOCK of this process, keeping the hard one.
/// Limits are per process: only a child process should lower it.
pub fn set_memlock_limit(bytes: u64) -> io::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
    setrlimit(Resource::RLIMIT_MEMLOCK, bytes, hard)?;
    Ok(())
}
