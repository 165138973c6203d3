//! A minimal ublk server with zero copy: the one way user space gets a
//! kernel-owned bvec into its ring's buffer table.
//!
//! With `UBLK_F_SUPPORT_ZERO_COPY`, the server never sees a block request's
//! data; `UBLK_U_IO_REGISTER_IO_BUF` instead installs the request's pages as
//! registered buffer `index` of the ring that issues the command, flagged as
//! a kernel buffer (`IO_REGBUF_F_KBUF`). Its "addresses" are offsets from 0,
//! and its direction is the request's: a WRITE's pages may only be sent
//! from, a READ's only received into.
//!
//! One queue, a few tags, no partition scan. The server's io commands go
//! through the caller's [`Ring`], so that the same ring can register a
//! request's buffer and send from it; the control commands need 128-byte
//! SQEs and get a ring of their own.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::ring::{Cqe, Ring};
use crate::CQE_TIMEOUT;

/// Mirrors `struct ublksrv_ctrl_cmd` of `<linux/ublk_cmd.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CtrlCmd {
    dev_id: u32,
    queue_id: u16,
    len: u16,
    addr: u64,
    data: [u64; 1],
    dev_path_len: u16,
    pad: u16,
    reserved: u32,
}

/// Mirrors `struct ublksrv_ctrl_dev_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DevInfo {
    nr_hw_queues: u16,
    queue_depth: u16,
    state: u16,
    io_desc_size: u16,
    max_io_buf_bytes: u32,
    dev_id: u32,
    ublksrv_pid: i32,
    pad1: u32,
    flags: u64,
    ublksrv_flags: u64,
    owner_uid: u32,
    owner_gid: u32,
    reserved1: u64,
    reserved2: u64,
}

/// Mirrors the head of `struct ublk_params`: its length and types, and
/// `struct ublk_param_basic`, the one parameter set the driver requires.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BasicParams {
    len: u32,
    types: u32,
    attrs: u32,
    logical_bs_shift: u8,
    physical_bs_shift: u8,
    io_opt_shift: u8,
    io_min_shift: u8,
    max_sectors: u32,
    chunk_sectors: u32,
    dev_sectors: u64,
    virt_boundary_mask: u64,
}

/// Mirrors `struct ublksrv_io_cmd`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoCmd {
    q_id: u16,
    tag: u16,
    result: i32,
    addr: u64,
}

/// Mirrors `struct ublksrv_io_desc`: what the driver tells the server
/// about the request behind a tag.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IoDesc {
    pub op_flags: u32,
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

impl IoDesc {
    pub fn op(&self) -> u8 {
        self.op_flags as u8
    }

    pub fn len(&self) -> usize {
        self.nr_sectors as usize * 512
    }

    pub fn is_empty(&self) -> bool {
        self.nr_sectors == 0
    }
}

pub const UBLK_IO_OP_READ: u8 = 0;
pub const UBLK_IO_OP_WRITE: u8 = 1;

const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
const UBLK_F_NO_AUTO_PART_SCAN: u64 = 1 << 18;
const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;

/// `_IOWR('u', nr, T)`: every ublk command this server sends is encoded so.
const fn iowr<T>(nr: u32) -> u32 {
    (3 << 30) | ((std::mem::size_of::<T>() as u32) << 16) | ((b'u' as u32) << 8) | nr
}

const UBLK_U_CMD_ADD_DEV: u32 = iowr::<CtrlCmd>(0x04);
const UBLK_U_CMD_DEL_DEV: u32 = iowr::<CtrlCmd>(0x05);
const UBLK_U_CMD_START_DEV: u32 = iowr::<CtrlCmd>(0x06);
const UBLK_U_CMD_STOP_DEV: u32 = iowr::<CtrlCmd>(0x07);
const UBLK_U_CMD_SET_PARAMS: u32 = iowr::<CtrlCmd>(0x08);
const UBLK_U_IO_FETCH_REQ: u32 = iowr::<IoCmd>(0x20);
const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 = iowr::<IoCmd>(0x21);
const UBLK_U_IO_REGISTER_IO_BUF: u32 = iowr::<IoCmd>(0x23);
const UBLK_U_IO_UNREGISTER_IO_BUF: u32 = iowr::<IoCmd>(0x24);

/// user_data of the FETCH (and COMMIT_AND_FETCH) command of tag `t` is
/// `FETCH_USER_DATA + t`; the other io commands use `BUF_CMD_USER_DATA`.
const FETCH_USER_DATA: u64 = 0x0b1c_0000;
const BUF_CMD_USER_DATA: u64 = 0x0b1c_1000;

/// Largest request the device accepts; also its size.
const MAX_IO_BYTES: u32 = 64 * 1024;
const DEV_BYTES: u64 = 1 << 20;

fn as_bytes<T: Copy, const N: usize>(value: &T) -> [u8; N] {
    assert!(std::mem::size_of::<T>() <= N);
    let mut out = [0u8; N];
    // SAFETY: T is a plain repr(C) struct of integers, at most N bytes;
    // copying its bytes reads only initialised memory of `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            out.as_mut_ptr(),
            std::mem::size_of::<T>(),
        )
    };
    out
}

/// A ublk device with one queue, served by the thread that created it.
pub struct UblkDevice {
    control: File,
    control_ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev_id: u32,
    depth: u16,
    /// `/dev/ublkc<id>`, where io commands go.
    char_dev: Option<File>,
    descs: *const IoDesc,
    descs_len: usize,
    started: bool,
}

impl UblkDevice {
    /// Adds a zero-copy device of `depth` tags, opens its char device,
    /// and maps the io descriptors; [`UblkDevice::start`] makes it a disk.
    pub fn add(depth: u16) -> io::Result<UblkDevice> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ublk-control")?;
        let mut dev = UblkDevice {
            control,
            control_ring: IoUring::builder().build(4)?,
            dev_id: u32::MAX,
            depth,
            char_dev: None,
            descs: std::ptr::null(),
            descs_len: 0,
            started: false,
        };
        let mut info = DevInfo {
            nr_hw_queues: 1,
            queue_depth: depth,
            max_io_buf_bytes: MAX_IO_BYTES,
            dev_id: u32::MAX,
            flags: UBLK_F_SUPPORT_ZERO_COPY | UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_NO_AUTO_PART_SCAN,
            ..DevInfo::default()
        };
        let addr = &mut info as *mut DevInfo as u64;
        dev.control_cmd(UBLK_U_CMD_ADD_DEV, addr, size_of_u16::<DevInfo>(), 0)?;
        dev.dev_id = info.dev_id;
        let params = BasicParams {
            len: std::mem::size_of::<BasicParams>() as u32,
            types: UBLK_PARAM_TYPE_BASIC,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 9,
            max_sectors: MAX_IO_BYTES >> 9,
            dev_sectors: DEV_BYTES >> 9,
            ..BasicParams::default()
        };
        let addr = &params as *const BasicParams as u64;
        dev.control_cmd(UBLK_U_CMD_SET_PARAMS, addr, size_of_u16::<BasicParams>(), 0)?;
        dev.open_char_dev()?;
        Ok(dev)
    }

    fn open_char_dev(&mut self) -> io::Result<()> {
        let path = format!("/dev/ublkc{}", self.dev_id);
        let file = wait_for_node(&path, OpenOptions::new().read(true).write(true))?;
        let page = 4096;
        let len = (self.depth as usize * std::mem::size_of::<IoDesc>()).div_ceil(page) * page;
        // SAFETY: maps the driver's read-only descriptor area of queue 0
        // (offset UBLKSRV_CMD_BUF_OFFSET = 0); Drop unmaps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.descs = ptr.cast();
        self.descs_len = len;
        self.char_dev = Some(file);
        Ok(())
    }

    /// Queues FETCH_REQ for every tag on `ring`, then starts the device:
    /// START_DEV waits until every tag has been fetched.
    pub fn start(&mut self, ring: &mut Ring) -> io::Result<()> {
        for tag in 0..self.depth {
            self.push_io_cmd(
                ring,
                UBLK_U_IO_FETCH_REQ,
                tag,
                0,
                FETCH_USER_DATA + tag as u64,
            )?;
        }
        ring.ring.submit()?;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        self.control_cmd(UBLK_U_CMD_START_DEV, 0, 0, pid)?;
        self.started = true;
        Ok(())
    }

    /// `/dev/ublkb<id>`, opened for O_DIRECT: each read or write becomes
    /// one block request with the caller's pages.
    pub fn open_disk(&self) -> io::Result<File> {
        let mut direct = OpenOptions::new();
        direct.read(true).write(true).custom_flags(libc::O_DIRECT);
        wait_for_node(&format!("/dev/ublkb{}", self.dev_id), &direct)
    }

    /// Waits for a block request; returns its tag and descriptor.
    pub fn next_request(&self, ring: &mut Ring) -> io::Result<(u16, IoDesc)> {
        let cqe = reap_one(ring, |c| {
            (FETCH_USER_DATA..FETCH_USER_DATA + self.depth as u64).contains(&c.user_data)
        })?;
        if cqe.res != 0 {
            return Err(io::Error::other(format!(
                "FETCH_REQ completed with {cqe:?}"
            )));
        }
        let tag = (cqe.user_data - FETCH_USER_DATA) as u16;
        // SAFETY: tag < depth, inside the mapping; the driver wrote this
        // descriptor before completing the fetch, and does not change it
        // until the tag is committed.
        let desc = unsafe { self.descs.add(tag as usize).read_volatile() };
        Ok((tag, desc))
    }

    /// Installs the pages of the request behind `tag` as registered buffer
    /// `index` of `ring` (which must have a sparse buffer table).
    pub fn register_io_buf(&self, ring: &mut Ring, tag: u16, index: u16) -> io::Result<()> {
        self.buf_cmd(ring, UBLK_U_IO_REGISTER_IO_BUF, tag, index)
    }

    /// Removes buffer `index` from the table; the driver completes the
    /// request only once every reference to it, a send's included, is gone.
    pub fn unregister_io_buf(&self, ring: &mut Ring, tag: u16, index: u16) -> io::Result<()> {
        self.buf_cmd(ring, UBLK_U_IO_UNREGISTER_IO_BUF, tag, index)
    }

    /// Completes the request behind `tag` with `result` and fetches the
    /// tag's next request (no CQE until one arrives, or the device stops).
    pub fn commit(&self, ring: &mut Ring, tag: u16, result: i32) -> io::Result<()> {
        let user_data = FETCH_USER_DATA + tag as u64;
        self.push_io_cmd(ring, UBLK_U_IO_COMMIT_AND_FETCH_REQ, tag, result, user_data)?;
        ring.ring.submit()?;
        Ok(())
    }

    fn buf_cmd(&self, ring: &mut Ring, op: u32, tag: u16, index: u16) -> io::Result<()> {
        self.push_io_cmd(ring, op, tag, index as i32, BUF_CMD_USER_DATA)?;
        let cqe = reap_one(ring, |c| c.user_data == BUF_CMD_USER_DATA)?;
        if cqe.res < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.res));
        }
        Ok(())
    }

    /// Queues io command `op` for `tag`. For the buffer commands the
    /// buffer index travels in `addr`, which is what `arg` becomes then.
    fn push_io_cmd(
        &self,
        ring: &mut Ring,
        op: u32,
        tag: u16,
        arg: i32,
        user_data: u64,
    ) -> io::Result<()> {
        let is_buf_cmd = matches!(op, UBLK_U_IO_REGISTER_IO_BUF | UBLK_U_IO_UNREGISTER_IO_BUF);
        let cmd = IoCmd {
            q_id: 0,
            tag,
            result: if is_buf_cmd { 0 } else { arg },
            addr: if is_buf_cmd { arg as u64 } else { 0 },
        };
        let fd = self
            .char_dev
            .as_ref()
            .expect("char device open")
            .as_raw_fd();
        let entry = opcode::UringCmd16::new(types::Fd(fd), op)
            .cmd(as_bytes(&cmd))
            .build()
            .user_data(user_data);
        // SAFETY: the command's bytes are inline in the SQE; nothing it
        // points to has to outlive the call.
        unsafe { ring.push(&entry) }
    }

    /// Issues a control command and waits for its result.
    fn control_cmd(&mut self, op: u32, addr: u64, len: u16, data: u64) -> io::Result<()> {
        let cmd = CtrlCmd {
            dev_id: self.dev_id,
            queue_id: u16::MAX,
            len,
            addr,
            data: [data],
            ..CtrlCmd::default()
        };
        let entry = opcode::UringCmd80::new(types::Fd(self.control.as_raw_fd()), op)
            .cmd(as_bytes(&cmd))
            .build();
        // SAFETY: `addr` points at a value of the caller's that lives until
        // this function returns; it returns only once the command has
        // completed, and aborts the process otherwise.
        unsafe { self.control_ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("control ring full"))?;
        let ts = types::Timespec::from(CQE_TIMEOUT);
        let args = types::SubmitArgs::new().timespec(&ts);
        let submitted = self.control_ring.submitter().submit_with_args(1, &args);
        let Some(cqe) = self.control_ring.completion().next() else {
            // The command may still write through `addr`, into memory the
            // caller is about to release: no way out but to stop here.
            eprintln!("ublk control command {op:#x} not completed: {submitted:?}");
            std::process::abort();
        };
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(())
    }

    /// Stops and deletes the device. The caller drops the server ring
    /// first: that cancels the outstanding fetches.
    pub fn remove(mut self) -> io::Result<()> {
        let stopped = if self.started {
            self.control_cmd(UBLK_U_CMD_STOP_DEV, 0, 0, 0)
        } else {
            Ok(())
        };
        self.unmap();
        self.char_dev = None;
        let deleted = self.control_cmd(UBLK_U_CMD_DEL_DEV, 0, 0, 0);
        self.dev_id = u32::MAX;
        stopped.and(deleted)
    }

    fn unmap(&mut self) {
        if !self.descs.is_null() {
            // SAFETY: unmaps exactly the mapping made in open_char_dev().
            unsafe { libc::munmap(self.descs as *mut libc::c_void, self.descs_len) };
            self.descs = std::ptr::null();
        }
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        self.unmap();
        self.char_dev = None;
        if self.dev_id != u32::MAX {
            // A test that failed half-way: best effort, so that the next
            // test does not find a half-served disk.
            let _ = self.control_cmd(UBLK_U_CMD_STOP_DEV, 0, 0, 0);
            let _ = self.control_cmd(UBLK_U_CMD_DEL_DEV, 0, 0, 0);
        }
    }
}

fn size_of_u16<T>() -> u16 {
    std::mem::size_of::<T>() as u16
}

/// Opens a device node with `options`, waiting for devtmpfs to create it.
fn wait_for_node(path: &str, options: &OpenOptions) -> io::Result<File> {
    let deadline = std::time::Instant::now() + CQE_TIMEOUT;
    loop {
        match options.open(path) {
            Err(e)
                if e.kind() == io::ErrorKind::NotFound && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// Reaps CQEs until one matches `wanted`; fails on any other CQE.
fn reap_one(ring: &mut Ring, wanted: impl Fn(&Cqe) -> bool) -> io::Result<Cqe> {
    let got = ring.reap_until(|c| c.iter().any(&wanted))?;
    match got.as_slice() {
        [one] => Ok(*one),
        _ => Err(io::Error::other(format!("unexpected CQEs: {got:?}"))),
    }
}

/// Runs `io` on its own thread, so that the block request it issues can
/// be served by the calling thread; [`BlockIo::wait`] bounds the wait.
pub struct BlockIo {
    done: mpsc::Receiver<io::Result<usize>>,
}

impl BlockIo {
    pub fn spawn(io: impl FnOnce() -> io::Result<usize> + Send + 'static) -> BlockIo {
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(io());
        });
        BlockIo { done }
    }

    /// The result of the read or write; fails if it takes longer than
    /// [`CQE_TIMEOUT`] (a request whose buffer is never released).
    pub fn wait(self) -> io::Result<usize> {
        self.done.recv_timeout(CQE_TIMEOUT).map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("block request not completed after {CQE_TIMEOUT:?}"),
            )
        })?
    }
}

/// Keeps the compiler honest about the mirrored layouts.
const _: () = {
    assert!(std::mem::size_of::<CtrlCmd>() == 32);
    assert!(std::mem::size_of::<DevInfo>() == 64);
    assert!(std::mem::size_of::<BasicParams>() == 40);
    assert!(std::mem::size_of::<IoCmd>() == 16);
    assert!(std::mem::size_of::<IoDesc>() == 24);
};
