//! `--profile`: the windows `cargo xtask bench-profile` counts instructions
//! in. Each mode runs its requests between two marks, calls to getppid(2),
//! where the host's TCG plugin writes its counts; OUT gets one line per
//! mode with the sender thread's CPU time, which xtask checks each window
//! against. The sender runs on CPU 0 only, the vCPU whose instructions
//! xtask counts when it counts one (TCP).

use std::io::{Read, Write};
use std::net::TcpStream;

use sendzc_iov_vm_tests::net::{Family, TcpPair};
use sendzc_iov_vm_tests::{RegBufs, Request, Ring};

use super::{run, segments, Mode, MODES};

/// What `--profile` was asked to run.
pub struct Plan {
    pub pairs: usize,
    pub payload: usize,
    pub count: usize,
    pub modes: Vec<Mode>,
}

impl Plan {
    /// From the arguments after `--profile`: PAIRS PAYLOAD COUNT MODE...
    pub fn parse(args: &[String]) -> Result<Plan, String> {
        let number = |i: usize, what: &str| -> Result<usize, String> {
            let arg = args.get(i).ok_or(format!("--profile needs {what}"))?;
            arg.parse()
                .map_err(|_| format!("{what} '{arg}' is not a number"))
        };
        let plan = Plan {
            pairs: number(0, "PAIRS")?,
            payload: number(1, "PAYLOAD")?,
            count: number(2, "COUNT")?,
            modes: args
                .get(3..)
                .unwrap_or_default()
                .iter()
                .map(|label| {
                    MODES
                        .into_iter()
                        .find(|m| m.label() == label)
                        .ok_or(format!("unknown mode '{label}'"))
                })
                .collect::<Result<_, _>>()?,
        };
        if plan.pairs == 0 || plan.count == 0 || plan.modes.is_empty() {
            return Err("--profile needs PAIRS and COUNT above 0 and a mode".into());
        }
        if plan.modes.contains(&Mode::Writev) {
            return Err("--profile measures ring modes, not h_writev".into());
        }
        Ok(plan)
    }
}

/// The CPU the sender runs on while profiled.
const SENDER_CPU: usize = 0;
/// The CPU of the loopback receiver, away from the sender's.
const SINK_CPU: usize = 1;

/// Runs the calling thread on `cpu` only.
fn pin_to(cpu: usize) -> Result<(), String> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut cpus = CpuSet::new();
    cpus.set(cpu).map_err(|e| e.to_string())?;
    sched_setaffinity(Pid::from_raw(0), &cpus).map_err(|e| format!("pin to CPU {cpu}: {e}"))
}

/// A TCP connection over loopback whose receiving end a thread on
/// SINK_CPU reads and discards until the sender closes it. Every
/// transmission completes at once there, so no two runs differ in how
/// requests share skbs, as they do over virtio-net with the host's timing.
pub fn loopback_with_sink() -> Result<TcpStream, String> {
    let pair = TcpPair::new(Family::V4).map_err(|e| e.to_string())?;
    pair.tx.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut rx = pair.rx;
    std::thread::spawn(move || {
        pin_to(SINK_CPU)?;
        rx.set_read_timeout(None).map_err(|e| e.to_string())?;
        let mut buf = vec![0; 256 << 10];
        while rx.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
        Ok::<(), String>(())
    });
    Ok(pair.tx)
}

/// The mark the plugin snapshots at. getppid(2): a syscall that nothing
/// else in the bench guest makes while the bench runs, and that costs a
/// few dozen instructions.
fn mark() {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() };
}

/// Maps every page the bench has mapped, so that no window takes a page
/// fault: a page of the binary that no warm-up touched would otherwise be
/// read through the guest's 9p root in whichever window first runs it
/// (12 instructions a request of UDP's (i) over 5000 requests, charged to
/// the mode that came after (c) and to none after (e)).
fn fault_in_everything() -> Result<(), String> {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    mlockall(MlockAllFlags::MCL_CURRENT).map_err(|e| format!("mlockall: {e}"))
}

/// Runs `plan`: for each mode a warm-up, then its requests between marks
/// (one mark more than modes), and writes `mode,requests,cpu_ns` lines
/// once the last window is closed, so that no window pays for the writes.
pub fn run_plan(
    ring: &mut Ring,
    bufs: &RegBufs,
    fd: i32,
    plan: &Plan,
    out: &str,
) -> Result<(), String> {
    pin_to(SENDER_CPU)?;
    let requests: Vec<Request> = plan
        .modes
        .iter()
        .map(|&mode| Request::new(segments(mode, plan.payload, plan.pairs), bufs))
        .collect();
    for (&mode, req) in plan.modes.iter().zip(&requests) {
        run(ring, mode, req, fd, 64).map_err(|e| format!("warm-up: {e}"))?;
    }
    fault_in_everything()?;
    let mut lines = vec!["mode,requests,cpu_ns".to_string()];
    mark();
    for (&mode, req) in plan.modes.iter().zip(&requests) {
        let sample = run(ring, mode, req, fd, plan.count)?;
        mark();
        lines.push(format!(
            "{},{},{}",
            mode.label(),
            sample.requests,
            sample.cpu_ns
        ));
    }
    let mut csv = std::fs::File::create(out).map_err(|e| format!("{out}: {e}"))?;
    writeln!(csv, "{}", lines.join("\n")).map_err(|e| format!("{out}: {e}"))
}
