//! Memory held per request in flight, for mode (e): a plug qdisc on the
//! dummy device holds every datagram, and with it every notification,
//! while HELD requests post their results; the kernel's own counters are
//! read before and after. sk_wmem_alloc (SO_MEMINFO) is what the socket
//! is charged for the queued skbs, their frags included as
//! io_sg_from_iter() charges them; VmPin is what io_uring charges to the
//! ring's pinned memory (RLIMIT_MEMLOCK). The COPY bytes are what the
//! bounce cache holds (fragments are cut to the byte), and node references
//! cost no memory: their count per request, the distinct buffers it names,
//! is printed beside. MemFree is no use here: after the first shape the
//! slab caches hand back freed skbs without touching it.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;

use nix::sys::socket::{setsockopt, sockopt};
use sendzc_iov::sys;
use sendzc_iov_vm_tests::net::socket_meminfo;
use sendzc_iov_vm_tests::{RegBufs, Request, Ring, Seg};

use super::{segments, Mode};

/// Requests held in flight at once.
const HELD: usize = 2048;
const DEVICE: &str = "szdummy0";

fn tc(action: &str, extra: &[&str]) -> Result<(), String> {
    let mut args = vec!["qdisc", action, "dev", DEVICE, "root"];
    args.extend_from_slice(extra);
    let status = Command::new("tc")
        .args(&args)
        .status()
        .map_err(|e| format!("tc: {e}"))?;
    if !status.success() {
        return Err(format!("tc {} failed ({status})", args.join(" ")));
    }
    Ok(())
}

/// A field of a /proc file in kB, as bytes.
fn proc_kib(path: &str, field: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or(format!("no {field} in {path}"))
}

struct Held {
    wmem_rise: u64,
    vmpin_rise: u64,
}

fn wmem_alloc(sock: &UdpSocket) -> Result<u64, String> {
    let info = socket_meminfo(sock).map_err(|e| format!("SO_MEMINFO: {e}"))?;
    Ok(info[libc::SK_MEMINFO_WMEM_ALLOC as usize].into())
}

/// CQEs posted so far.
#[derive(Default)]
struct Posted {
    results: usize,
    notifs: usize,
}

impl Posted {
    /// Reaps what is there (waiting for one CQE at least); while the plug
    /// holds, a notification is an error: the measurement would be wrong.
    fn reap(&mut self, ring: &mut Ring, plugged: bool) -> Result<(), String> {
        let cqes = ring
            .reap_until(|c| !c.is_empty())
            .map_err(|e| format!("memory: {e}"))?;
        for c in cqes {
            if c.is_notif() {
                self.notifs += 1;
            } else if c.res < 0 || !c.has_more() {
                return Err(format!("memory: a held request failed: {c:?}"));
            } else {
                self.results += 1;
            }
        }
        if plugged && self.notifs > 0 {
            return Err("memory: a notification came while the plug held".into());
        }
        Ok(())
    }
}

/// Submits every request, waits for all results while the plug holds the
/// datagrams, reads the counters, then releases and drains.
fn hold(ring: &mut Ring, requests: &[Request], sock: &UdpSocket) -> Result<Held, String> {
    let fd = sock.as_raw_fd();
    let wmem0 = wmem_alloc(sock)?;
    let pin0 = proc_kib("/proc/self/status", "VmPin:")?;
    let mut posted = Posted::default();
    for (i, req) in requests.iter().enumerate() {
        let mut sqe = req.sqe(sendzc_iov_vm_tests::Op::SendMsgZc, fd);
        sqe.ioprio |= sys::IORING_SEND_ZC_REPORT_USAGE;
        let entry = sqe.user_data(i as u64).into_entry();
        // SAFETY: the kernel reads the msghdr and iovecs at issue, and
        // (e) has no USER iovecs: COPY bytes are copied then, FIXED ones
        // are the registered buffers, which outlive the ring's use here.
        while unsafe { ring.push(&entry) }.is_err() {
            posted.reap(ring, true)?;
        }
    }
    while posted.results < requests.len() {
        posted.reap(ring, true)?;
    }
    let wmem1 = wmem_alloc(sock)?;
    let pin1 = proc_kib("/proc/self/status", "VmPin:")?;
    tc("change", &["plug", "release_indefinite"])?;
    while posted.notifs < requests.len() {
        posted.reap(ring, false)?;
    }
    tc("change", &["plug", "block"])?;
    Ok(Held {
        wmem_rise: wmem1.saturating_sub(wmem0),
        vmpin_rise: pin1.saturating_sub(pin0),
    })
}

/// One CSV row per (e) shape on UDP, into `out`.
pub fn measure(
    ring: &mut Ring,
    bufs: &RegBufs,
    sock: &UdpSocket,
    shapes: &[(usize, usize)],
    out: &str,
) -> Result<(), String> {
    let mut csv = std::fs::File::create(out).map_err(|e| format!("{out}: {e}"))?;
    writeln!(
        csv,
        "transport,mode,payload,batch,held,wmem_alloc_per_req,vmpin_per_req,copy_bytes_per_req,node_refs_per_req"
    )
    .map_err(|e| e.to_string())?;
    // Room for every held datagram in the socket's send buffer.
    setsockopt(sock, sockopt::SndBufForce, &(1 << 30)).map_err(|e| e.to_string())?;
    tc("add", &["plug", "limit", "2000000000"])?;
    tc("change", &["plug", "block"])?;
    // A header-only request copies everything: no notification, nothing
    // held after its result.
    for &(payload, batch) in shapes.iter().filter(|s| s.0 > 0) {
        let segs = segments(Mode::IovMixed, payload, batch);
        let copy_bytes: usize = segs
            .iter()
            .map(|s| match s {
                Seg::Copy(data) => data.len(),
                _ => 0,
            })
            .sum();
        let buffers: BTreeSet<u16> = segs
            .iter()
            .filter_map(|s| match s {
                Seg::Fixed { buf, .. } => Some(*buf),
                _ => None,
            })
            .collect();
        let requests: Vec<Request> = (0..HELD)
            .map(|_| Request::new(segs.clone(), bufs))
            .collect();
        let held = hold(ring, &requests, sock)?;
        writeln!(
            csv,
            "udp-dummy,{},{payload},{batch},{HELD},{},{},{copy_bytes},{}",
            Mode::IovMixed.label(),
            held.wmem_rise / HELD as u64,
            held.vmpin_rise / HELD as u64,
            buffers.len()
        )
        .map_err(|e| e.to_string())?;
        eprintln!("bench: memory in flight, payload {payload} x{batch} done");
    }
    tc("del", &[])
}
