//! sendzc-bench: what per-iovec send buys, measured side by side in one run.
//! Runs inside the guest (`cargo xtask bench`), on the bench kernel.
//!
//! usage: sendzc-bench OUT.csv udp-dummy|tcp=HOST:PORT [--quick|--targets]
//!        sendzc-bench OUT.csv udp-dummy|tcp=HOST:PORT|tcp-loopback --profile PAIRS PAYLOAD COUNT MODE...
//!
//! For every transport, shape (24-byte header + payload, pairs per
//! request) and mode, sends the same bytes several times and writes one
//! CSV row per repetition: wall time, sender thread CPU time, requests,
//! bytes, and whether REPORT_USAGE confirmed zero-copy. Under QEMU with
//! `-icount`, both clocks count guest instructions, not host time. On
//! udp-dummy it then writes memory.csv beside OUT.csv: what a request of
//! mode (e) holds while in flight (memory.rs). `--profile` runs only the
//! windows `cargo xtask bench-profile` counts (profile.rs).

mod memory;
mod profile;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use sendzc_iov::sqe::SendSqe;
use sendzc_iov::sys;
use sendzc_iov_vm_tests::net::udp_through_dummy;
use sendzc_iov_vm_tests::{Cqe, MmapBuf, RegBufs, Request, Ring, Seg};

const HEADER: usize = 24;
/// Registered payload buffers, indexes 0..BUFFERS.
const BUFFERS: usize = 4;
/// A small registered buffer of headers, index BUFFERS, for mode (g).
const HEADER_POOL: u16 = BUFFERS as u16;
const HEADER_POOL_LEN: usize = 4096;
/// Each registered buffer: payload area, then headers for one-buffer modes.
const PAYLOAD_AREA: usize = 8 << 20;
const HEADER_AREA: usize = 4096;
/// Requests in flight at once.
const WINDOW: usize = 8;

/// The modes of issues 6 and 13, each sending the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// (a) IORING_OP_SENDMSG, all copied.
    SendMsg,
    /// (b) SENDMSG_ZC, all zero-copy from user memory.
    ZcUser,
    /// (c) SENDMSG_ZC + FIXED_BUF, headers and payloads in one buffer.
    ZcFixedOne,
    /// (d) linked SEND (header, MSG_MORE) + SEND_ZC fixed (payload) per pair.
    Linked,
    /// (e) per-iovec: headers COPY, payloads FIXED over four buffers.
    IovMixed,
    /// (e') per-iovec: headers COPY, payloads FIXED in one buffer.
    IovMixedOneBuf,
    /// (f) per-iovec, every iovec COPY.
    IovAllCopy,
    /// (f) per-iovec, every iovec FIXED in one buffer.
    IovAllFixed,
    /// (g) per-iovec: headers FIXED from a small header pool, payloads
    /// FIXED over four buffers: what COPY headers are compared with.
    IovHeaderPool,
    /// (h) writev(2) on the socket, outside io_uring.
    Writev,
    /// (i) (e') as a copy mask in the SQE: no attribute array.
    IovMasked,
}

const MODES: [Mode; 11] = [
    Mode::SendMsg,
    Mode::ZcUser,
    Mode::ZcFixedOne,
    Mode::Linked,
    Mode::IovMixed,
    Mode::IovMixedOneBuf,
    Mode::IovAllCopy,
    Mode::IovAllFixed,
    Mode::IovHeaderPool,
    Mode::Writev,
    Mode::IovMasked,
];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::SendMsg => "a_sendmsg",
            Mode::ZcUser => "b_zc_user",
            Mode::ZcFixedOne => "c_zc_fixed1",
            Mode::Linked => "d_linked",
            Mode::IovMixed => "e_iov_mixed4",
            Mode::IovMixedOneBuf => "e_iov_mixed1",
            Mode::IovAllCopy => "f_iov_copy",
            Mode::IovAllFixed => "f_iov_fixed1",
            Mode::IovHeaderPool => "g_iov_hdr_pool",
            Mode::Writev => "h_writev",
            Mode::IovMasked => "i_iov_mask",
        }
    }

    fn zero_copy(self) -> bool {
        !matches!(self, Mode::SendMsg | Mode::IovAllCopy | Mode::Writev)
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    UdpDummy,
    Tcp,
}

/// The iovecs of one request of `batch` pairs for `mode`.
fn segments(mode: Mode, payload: usize, batch: usize) -> Vec<Seg> {
    let mut segs = Vec::with_capacity(batch * 2);
    for i in 0..batch {
        let one_buf_off = i * payload;
        let (buf, off) = match mode {
            Mode::IovMixed | Mode::IovHeaderPool => ((i % BUFFERS) as u16, (i / BUFFERS) * payload),
            _ => (0, one_buf_off),
        };
        let header_fixed = Seg::Fixed {
            buf: 0,
            off: PAYLOAD_AREA + i * HEADER,
            len: HEADER,
        };
        let header = match mode {
            Mode::ZcFixedOne | Mode::IovAllFixed => header_fixed,
            Mode::IovHeaderPool => Seg::Fixed {
                buf: HEADER_POOL,
                off: i * HEADER,
                len: HEADER,
            },
            Mode::ZcUser => Seg::User(vec![i as u8; HEADER]),
            _ => Seg::Copy(vec![i as u8; HEADER]),
        };
        segs.push(header);
        if payload == 0 {
            continue;
        }
        segs.push(match mode {
            Mode::SendMsg | Mode::IovAllCopy | Mode::Writev => Seg::Copy(vec![7; payload]),
            Mode::ZcUser => Seg::User(vec![7; payload]),
            _ => Seg::Fixed {
                buf,
                off,
                len: payload,
            },
        });
    }
    segs
}

/// The SQEs of one request; `id` (its in-flight slot) goes into the upper
/// bits of user_data.
/// `mask`: the request's copy mask and buffer, computed once per run as an
/// application that knows where its headers are would not compute it at
/// all (mode (i) only).
fn entries(
    mode: Mode,
    req: &Request,
    mask: Option<(u16, u64)>,
    fd: i32,
    id: u64,
) -> Vec<squeue::Entry> {
    let ud = id << 16;
    match mode {
        // Not a ring request: see writev_all().
        Mode::Writev => Vec::new(),
        Mode::SendMsg => vec![opcode::SendMsg::new(types::Fd(fd), req.msghdr())
            .flags(libc::MSG_WAITALL as u32)
            .build()
            .user_data(ud)],
        Mode::ZcUser | Mode::ZcFixedOne => {
            let mut sqe = SendSqe::sendmsg_zc(fd, req.msghdr());
            sqe.ioprio = sys::IORING_SEND_ZC_REPORT_USAGE;
            if mode == Mode::ZcFixedOne {
                sqe.ioprio |= sys::IORING_RECVSEND_FIXED_BUF;
                sqe.buf_index = 0;
            }
            sqe.msg_flags = libc::MSG_WAITALL as u32;
            vec![sqe.user_data(ud).into_entry()]
        }
        Mode::Linked => {
            let n = req.iov.len();
            req.iov
                .iter()
                .zip(&req.segs)
                .enumerate()
                .map(|(i, (iov, seg))| {
                    let last = i + 1 == n;
                    let e = match seg {
                        Seg::Fixed { buf, .. } => opcode::SendZc::new(
                            types::Fd(fd),
                            iov.iov_base as *const u8,
                            iov.iov_len as u32,
                        )
                        .buf_index(Some(*buf))
                        .flags(libc::MSG_WAITALL)
                        .zc_flags(sys::IORING_SEND_ZC_REPORT_USAGE)
                        .build(),
                        _ => opcode::Send::new(
                            types::Fd(fd),
                            iov.iov_base as *const u8,
                            iov.iov_len as u32,
                        )
                        .flags(libc::MSG_WAITALL | if last { 0 } else { libc::MSG_MORE })
                        .build(),
                    };
                    let e = e.user_data(ud | i as u64);
                    if last {
                        e
                    } else {
                        e.flags(squeue::Flags::IO_LINK)
                    }
                })
                .collect()
        }
        Mode::IovMasked => {
            let (buf, mask) = mask.expect("one buffer, no USER iovec");
            let mut sqe = SendSqe::sendmsg_zc(fd, req.msghdr()).copy_mask(buf, mask);
            sqe.ioprio |= sys::IORING_SEND_ZC_REPORT_USAGE;
            sqe.msg_flags = libc::MSG_WAITALL as u32;
            vec![sqe.user_data(ud).into_entry()]
        }
        _ => {
            let mut sqe = req.sqe(sendzc_iov_vm_tests::Op::SendMsgZc, fd);
            sqe.ioprio |= sys::IORING_SEND_ZC_REPORT_USAGE;
            sqe.msg_flags = libc::MSG_WAITALL as u32;
            vec![sqe.user_data(ud).into_entry()]
        }
    }
}

/// One measured repetition.
struct Sample {
    requests: usize,
    bytes: usize,
    wall_ns: u64,
    cpu_ns: u64,
    /// Some(true): every notification reported zero-copy.
    zero_copy: Option<bool>,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// writev(2) of all of `iov` on blocking socket `fd`, resumed after a
/// short write.
fn writev_all(fd: i32, iov: &[libc::iovec]) -> std::io::Result<()> {
    let mut iov = iov.to_vec();
    let mut next = 0;
    while next < iov.len() {
        let left = &iov[next..];
        // SAFETY: every iovec points into the Request, which outlives the
        // call; writev only reads them.
        let n = unsafe { libc::writev(fd, left.as_ptr(), left.len() as libc::c_int) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut n = n as usize;
        while next < iov.len() && n >= iov[next].iov_len {
            n -= iov[next].iov_len;
            next += 1;
        }
        if n > 0 {
            iov[next].iov_base = iov[next].iov_base.wrapping_byte_add(n);
            iov[next].iov_len -= n;
        }
    }
    Ok(())
}

/// Mode (h): `count` writev(2) calls, one request each.
fn run_writev(req: &Request, fd: i32, count: usize) -> Result<Sample, String> {
    let wall0 = clock_ns(libc::CLOCK_MONOTONIC);
    let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    for _ in 0..count {
        writev_all(fd, &req.iov).map_err(|e| format!("h_writev: {e}"))?;
    }
    Ok(Sample {
        requests: count,
        bytes: count * req.len(),
        wall_ns: clock_ns(libc::CLOCK_MONOTONIC) - wall0,
        cpu_ns: clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0,
        zero_copy: None,
    })
}

/// The requests in flight, by slot: how many CQEs each still expects (0:
/// free). A slot in user_data, not a hash map of ids: the bench counts the
/// sender thread's instructions, and hashing every CQE would be counted in
/// every mode.
#[derive(Default)]
struct InFlight {
    left: [usize; WINDOW],
}

impl InFlight {
    /// A free slot for a request of `cqes` CQEs, if fewer than WINDOW are
    /// in flight.
    fn take(&mut self, cqes: usize) -> Option<usize> {
        let slot = self.left.iter().position(|&left| left == 0)?;
        self.left[slot] = cqes;
        Some(slot)
    }

    /// Counts a CQE of `slot` (one more to come if it has F_MORE): true
    /// when that was the request's last, None for a slot not in flight.
    fn complete(&mut self, slot: usize, more: bool) -> Option<bool> {
        let left = self.left.get_mut(slot).filter(|left| **left > 0)?;
        *left = *left - 1 + usize::from(more);
        Some(*left == 0)
    }
}

/// Sends `count` requests, at most WINDOW in flight; each is done when all
/// its CQEs (results, and notifications announced by F_MORE) are in.
fn run(
    ring: &mut Ring,
    mode: Mode,
    req: &Request,
    fd: i32,
    count: usize,
) -> Result<Sample, String> {
    if mode == Mode::Writev {
        return run_writev(req, fd, count);
    }
    let wall0 = clock_ns(libc::CLOCK_MONOTONIC);
    let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    let mask = req.copy_mask();
    let per_request = entries(mode, req, mask, fd, 0).len();
    let mut in_flight = InFlight::default();
    let (mut submitted, mut done) = (0usize, 0usize);
    let (mut notifs, mut copied) = (0usize, 0usize);
    while done < count {
        while submitted < count {
            let Some(slot) = in_flight.take(per_request) else {
                break;
            };
            for e in entries(mode, req, mask, fd, slot as u64) {
                // SAFETY: `req` outlives every request; run() returns only
                // once all of them are complete.
                unsafe { ring.push(&e) }.map_err(|e| e.to_string())?;
            }
            submitted += 1;
        }
        let cqes: Vec<Cqe> = ring
            .reap_until(|c| !c.is_empty())
            .map_err(|e| format!("{}: {e}", mode.label()))?;
        for c in cqes {
            if c.res < 0 && !c.is_notif() {
                return Err(format!("{}: request failed: {c:?}", mode.label()));
            }
            if c.is_notif() {
                notifs += 1;
                if c.res as u32 & sys::IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                    copied += 1;
                }
            }
            let slot = (c.user_data >> 16) as usize;
            if in_flight
                .complete(slot, c.has_more())
                .ok_or_else(|| format!("stray CQE {c:?}"))?
            {
                done += 1;
            }
        }
    }
    Ok(Sample {
        requests: count,
        bytes: count * req.len(),
        wall_ns: clock_ns(libc::CLOCK_MONOTONIC) - wall0,
        cpu_ns: clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0,
        zero_copy: (mode.zero_copy() && notifs > 0).then_some(copied == 0),
    })
}

/// Which shapes a run measures, and how many times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// 1, 4 and 16 pairs per request, every payload.
    Full,
    /// 1 and 16 pairs per request, every payload.
    Quick,
    /// Only the shapes the targets judge (xtask's bench report), and TCP's
    /// 4 x 4 KiB for its 4-buffer comparison: a change to the series is
    /// measured in a fraction of a full run.
    Targets,
}

impl Scope {
    /// From the arguments after OUT.csv and the transport.
    fn parse(flags: &[String]) -> Result<Scope, String> {
        match flags {
            [] => Ok(Scope::Full),
            [flag] if flag == "--quick" => Ok(Scope::Quick),
            [flag] if flag == "--targets" => Ok(Scope::Targets),
            _ => Err(format!("unexpected arguments {flags:?}")),
        }
    }

    fn repetitions(self) -> usize {
        match self {
            Scope::Quick => 3,
            Scope::Full | Scope::Targets => 5,
        }
    }
}

/// (payload, pairs per request) of a run, in the order they are measured.
fn shapes(transport: Transport, scope: Scope) -> Vec<(usize, usize)> {
    if scope == Scope::Targets {
        return match transport {
            Transport::UdpDummy => vec![(0, 1), (16384, 1), (4096, 4)],
            Transport::Tcp => vec![(0, 1), (65536, 1), (4096, 4), (4096, 16)],
        };
    }
    let payloads: &[usize] = &[0, 64, 1024, 4096, 16384, 65536, 512 * 1024];
    let batches: &[usize] = if scope == Scope::Quick {
        &[1, 16]
    } else {
        &[1, 4, 16]
    };
    let mut out = Vec::new();
    for &batch in batches {
        for &payload in payloads {
            let bytes = batch * (HEADER + payload);
            // UDP: one datagram, within MAX_SKB_FRAGS frags.
            let fits = match transport {
                Transport::UdpDummy => bytes <= 60000 && batch * (2 + payload / 4096) <= 16,
                Transport::Tcp => true,
            };
            if fits {
                out.push((payload, batch));
            }
        }
    }
    out
}

/// What the command line asks for.
enum Action {
    /// Every mode over the shapes of a scope: the CSV of the table.
    Table(Scope),
    /// A few modes in one shape, between the plugin's marks.
    Profile(profile::Plan),
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sendzc-bench OUT.csv udp-dummy|tcp=HOST:PORT [--quick|--targets]\n   \
                 or: sendzc-bench OUT.csv udp-dummy|tcp=HOST:PORT|tcp-loopback --profile PAIRS PAYLOAD COUNT MODE...";
    let (Some(out), Some(target)) = (args.first(), args.get(1)) else {
        return Err(usage.into());
    };
    let action = match args.get(2).map(String::as_str) {
        Some("--profile") => {
            Action::Profile(profile::Plan::parse(&args[3..]).map_err(|e| format!("{e}; {usage}"))?)
        }
        _ => Action::Table(Scope::parse(&args[2..]).map_err(|e| format!("{e}; {usage}"))?),
    };
    let (transport, udp, tcp) = if target == "udp-dummy" {
        (
            Transport::UdpDummy,
            Some(udp_through_dummy(true).map_err(|e| e.to_string())?),
            None,
        )
    } else if let Some(addr) = target.strip_prefix("tcp=") {
        let stream =
            std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        (Transport::Tcp, None, Some(stream))
    } else if target == "tcp-loopback" && matches!(action, Action::Profile(_)) {
        let stream = profile::loopback_with_sink()?;
        (Transport::Tcp, None, Some(stream))
    } else {
        return Err(usage.into());
    };
    let fd = match (&udp, &tcp) {
        (Some(s), _) => s.as_raw_fd(),
        (_, Some(s)) => s.as_raw_fd(),
        _ => unreachable!(),
    };

    let mut ring = Ring::new(256).map_err(|e| e.to_string())?;
    // Same backing for every buffer: 4 KiB pages (THP is "always" in the
    // bench config and would back some buffers, or parts, with huge folios).
    let sizes = [PAYLOAD_AREA + HEADER_AREA; BUFFERS]
        .into_iter()
        .chain([HEADER_POOL_LEN]);
    let bufs: Vec<MmapBuf> = sizes
        .map(|len| {
            let buf = MmapBuf::new(len)?;
            buf.no_huge_pages()?;
            Ok(buf)
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;
    let bufs = RegBufs::register_bufs(&ring, bufs).map_err(|e| e.to_string())?;
    let scope = match action {
        Action::Profile(plan) => return profile::run_plan(&mut ring, &bufs, fd, &plan, out),
        Action::Table(scope) => scope,
    };
    let reps = scope.repetitions();
    let mut csv = std::fs::File::create(out).map_err(|e| format!("{out}: {e}"))?;
    writeln!(
        csv,
        "transport,mode,payload,batch,rep,requests,bytes,wall_ns,cpu_ns,zero_copy"
    )
    .map_err(|e| e.to_string())?;
    let transport_name = match transport {
        Transport::UdpDummy => "udp-dummy",
        Transport::Tcp => "tcp-virtio",
    };
    for (payload, batch) in shapes(transport, scope) {
        for mode in MODES {
            let req = Request::new(segments(mode, payload, batch), &bufs);
            // Series v2 copies at most IORING_ZC_IOV_COPY_MAX bytes per
            // request, all-COPY ones included (-E2BIG beyond).
            if mode == Mode::IovAllCopy && req.len() > sys::IORING_ZC_IOV_COPY_MAX as usize {
                continue;
            }
            // About 256 KiB per repetition, between 8 and 256 requests:
            // every byte costs under TCG.
            let count = (256 << 10) / req.len().max(1);
            let count = count.clamp(8, 256);
            run(&mut ring, mode, &req, fd, 4).map_err(|e| format!("warm-up: {e}"))?;
            for rep in 0..reps {
                let s = run(&mut ring, mode, &req, fd, count)?;
                let zc = match s.zero_copy {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "n/a",
                };
                writeln!(
                    csv,
                    "{transport_name},{},{payload},{batch},{rep},{},{},{},{},{zc}",
                    mode.label(),
                    s.requests,
                    s.bytes,
                    s.wall_ns,
                    s.cpu_ns
                )
                .map_err(|e| e.to_string())?;
            }
            eprintln!(
                "bench: {transport_name} {} payload {payload} x{batch} done",
                mode.label()
            );
        }
    }
    if let Some(sock) = &udp {
        let memory_csv = std::path::Path::new(out).with_file_name("memory.csv");
        let memory_csv = memory_csv.to_string_lossy();
        let shapes = shapes(transport, scope);
        memory::measure(&mut ring, &bufs, sock, &shapes, &memory_csv)?;
    }
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_slots_count_cqes_and_notifications() {
        let mut in_flight = InFlight::default();
        let slots: Vec<usize> = (0..WINDOW).map_while(|_| in_flight.take(1)).collect();
        assert_eq!(slots, (0..WINDOW).collect::<Vec<_>>());
        assert_eq!(in_flight.take(1), None, "WINDOW requests are in flight");
        // A result with F_MORE: its notification is still to come.
        assert_eq!(in_flight.complete(3, true), Some(false));
        assert_eq!(in_flight.complete(3, false), Some(true));
        assert_eq!(in_flight.complete(3, false), None, "slot 3 is free");
        assert_eq!(in_flight.complete(WINDOW, false), None);
        assert_eq!(in_flight.take(2), Some(3));
    }
}
