//! What runs in a guest and how it boots: the plan guest-run.sh reads,
//! the boot itself (vng.rs), the accelerator (accel.rs), the status the
//! guest leaves, and the kernel-log checks (kernel_log.rs).

mod accel;
mod kernel_log;
mod vng;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::kernel::Kernel;
use crate::layout::{Layout, Profile};
use crate::options::Options;
use crate::phase::Phases;
use crate::suites::PeerSuite;

pub use accel::{choose as choose_accel, Accel};
pub use kernel_log::{check_kernel_logs, problem_count, ProblemCount};
pub use vng::Boot;

/// What one guest boot is asked to run.
pub struct GuestPlan<'a> {
    /// Names the output directory and the console log.
    pub label: &'a str,
    pub kernel: &'a Kernel,
    pub binaries: &'a [PathBuf],
    pub peers: &'a [PeerSuite],
}

/// What a guest boot left behind.
pub struct GuestRun {
    pub out: PathBuf,
    pub console_log: PathBuf,
    pub outcome: vng::Outcome,
    pub accel: Accel,
    pub timeout: Duration,
}

/// The guest's output directory for `label`: shared read-write with it.
fn guest_out(layout: &Layout, label: &str) -> PathBuf {
    layout.vm_out().join(label)
}

/// [`guest_out`], emptied of an earlier run's files.
pub fn fresh_out(layout: &Layout, label: &str) -> Result<PathBuf> {
    let out = guest_out(layout, label);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    Ok(out)
}

/// Boots `plan.kernel` and runs the plan in it through guest-run.sh; boots
/// once more if the kernel reported a problem before the tests started.
pub fn boot(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    plan: &GuestPlan,
) -> Result<GuestRun> {
    let accel = phases.run("accel", || {
        choose_accel(layout, &plan.kernel.bzimage, options.accel)
    })?;
    let out = guest_out(layout, plan.label);
    fs::create_dir_all(&out)?;
    write_guest_plan(layout, &out, plan.binaries, plan.kernel, options)?;
    let peer_plan: String = plan.peers.iter().map(crate::suites::plan_line).collect();
    fs::write(out.join("peers"), peer_plan)?;
    let timeout = options.timeout.unwrap_or(match accel {
        Accel::Kvm => Duration::from_secs(1200),
        Accel::Tcg => Duration::from_secs(4800),
    });
    eprintln!(
        "  accelerator: {}; guest time limit {}s",
        accel.name(),
        timeout.as_secs()
    );
    let script = layout.qemu().join("guest-run.sh");
    let mut exec = format!("sh {} {}", script.display(), out.display());
    for arg in &options.test_args {
        exec.push(' ');
        exec.push_str(&shell_quote(arg));
    }
    let console_log = layout.vm_out().join(format!("console-{}.log", plan.label));
    let boot = Boot {
        kernel: &plan.kernel.bzimage,
        accel,
        exec,
        out_dir: &out,
        console_log: console_log.clone(),
        timeout,
        vng_args: vec![format!("--rwdir={}", regressions_dir(layout).display())],
        netns: None,
    };
    let mut outcome = phases.run(&format!("boot+test ({})", plan.label), || boot.run(layout))?;
    // A report logged at boot, before any test ran, is not about the code
    // under test, but it taints the kernel (lockdep turns itself off): say
    // so and boot once more. A second one fails the run.
    let early = kernel_log::boot_problems(&out);
    if !early.is_empty() {
        eprintln!("  kernel problem at boot, before the tests (retrying the boot once):");
        for line in &early {
            eprintln!("  ! {line}");
        }
        let saved = layout
            .vm_out()
            .join(format!("console-{}-boot-problem.log", plan.label));
        fs::copy(&console_log, &saved)?;
        eprintln!("  first console log kept as {}", saved.display());
        outcome = phases.run(&format!("boot+test again ({})", plan.label), || {
            boot.run(layout)
        })?;
    }
    Ok(GuestRun {
        out,
        console_log,
        outcome,
        accel,
        timeout,
    })
}

impl GuestRun {
    /// Fails unless the guest wrote a status (no crash, no hang).
    pub fn require_status(&self) -> Result<i32> {
        match self.outcome.status {
            Some(status) => Ok(status),
            None if self.outcome.timed_out => bail!(
                "the guest did not finish within {}s (hang?); see {}",
                self.timeout.as_secs(),
                self.console_log.display()
            ),
            None => bail!(
                "the guest ended without a status (crash or panic?); see {}",
                self.console_log.display()
            ),
        }
    }
}

/// Where the property tests record shrunk failures (writable in the guest).
fn regressions_dir(layout: &Layout) -> PathBuf {
    layout.root.join("rust-tests/proptest-regressions")
}

fn write_guest_plan(
    layout: &Layout,
    out: &Path,
    binaries: &[PathBuf],
    kernel: &Kernel,
    options: &Options,
) -> Result<()> {
    let mut env = String::from("RUST_BACKTRACE=1\n");
    env.push_str(&format!(
        "SENDZC_EXPECT_FEATURE={}\n",
        u8::from(kernel.expect_feature)
    ));
    env.push_str(&format!("SENDZC_KERNEL_BUILD={}\n", kernel.build.display()));
    env.push_str(&format!(
        "SENDZC_UAPI_INCLUDE={}\n",
        kernel.headers().display()
    ));
    env.push_str(&format!(
        "SENDZC_C_SENDERS={}\n",
        layout.c_senders().display()
    ));
    env.push_str(&format!(
        "SENDZC_CASE_LOG={}\n",
        out.join("cases.txt").display()
    ));
    env.push_str(&format!(
        "SENDZC_PROPTEST_REGRESSIONS={}\n",
        regressions_dir(layout).display()
    ));
    if options.profile == Some(Profile::Bench) {
        env.push_str("SENDZC_PROFILE=bench\n");
    }
    fs::write(out.join("env"), env)?;
    let list: String = binaries
        .iter()
        .map(|b| format!("{}\n", b.display()))
        .collect();
    fs::write(out.join("tests"), list)?;
    Ok(())
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_guest_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
