//! `--profile`: the windows `cargo xtask bench-profile` counts instructions
//! in. Each mode runs its requests between two marks, calls to getppid(2),
//! where the host's TCG plugin writes its counts; OUT gets one line per
//! mode with the sender thread's CPU time, which xtask checks each window
//! against.

use std::io::Write;

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

/// The mark the plugin snapshots at. getppid(2): a syscall that nothing
/// else in the bench guest makes while the bench runs, and that costs a
/// few dozen instructions.
fn mark() {
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::getppid() };
}

/// Runs `plan`: for each mode a warm-up, then its requests between marks
/// (one mark more than modes), and writes `mode,requests,cpu_ns` lines.
pub fn run_plan(
    ring: &mut Ring,
    bufs: &RegBufs,
    fd: i32,
    plan: &Plan,
    out: &str,
) -> Result<(), String> {
    let mut csv = std::fs::File::create(out).map_err(|e| format!("{out}: {e}"))?;
    writeln!(csv, "mode,requests,cpu_ns").map_err(|e| e.to_string())?;
    let requests: Vec<Request> = plan
        .modes
        .iter()
        .map(|&mode| Request::new(segments(mode, plan.payload, plan.pairs), bufs))
        .collect();
    for (&mode, req) in plan.modes.iter().zip(&requests) {
        run(ring, mode, req, fd, 64).map_err(|e| format!("warm-up: {e}"))?;
    }
    mark();
    for (&mode, req) in plan.modes.iter().zip(&requests) {
        let sample = run(ring, mode, req, fd, plan.count)?;
        mark();
        writeln!(
            csv,
            "{},{},{}",
            mode.label(),
            sample.requests,
            sample.cpu_ns
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
