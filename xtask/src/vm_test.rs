//! `cargo xtask vm-test`: the pipeline, in the order README lists its
//! phases. Each step is one call into the module that owns it: the kernel,
//! the suites' builds, the guest, the suites' verdicts, the report.

use anyhow::Result;

use crate::checks;
use crate::coverage;
use crate::guest::{self, GuestPlan};
use crate::kernel;
use crate::layout::Layout;
use crate::options::Options;
use crate::phase::Phases;
use crate::report::{self, Tally};
use crate::suites;

/// The guest run of the patched kernel: names its output directory and
/// console log (`target/vm/run`, `console-run.log`).
const LABEL: &str = "run";

/// The patched kernel, its uapi check, the suites built and booted in one
/// guest, their verdicts (the liburing gate may boot the base kernel), the
/// kernel log, the summary. Returns the guest's test totals.
pub fn run(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Tally> {
    let kernel = kernel::build(layout, options, phases)?;
    phases.run("check-uapi", || checks::check_uapi(layout, &kernel))?;
    let binaries = phases.run("test build", || {
        suites::rust::build_test_binaries(layout, &kernel)
    })?;
    let peers = phases.run("peer build", || {
        suites::build_peers(layout, options, &kernel, LABEL)
    })?;
    let plan = GuestPlan {
        label: LABEL,
        kernel: &kernel,
        binaries: &binaries,
        peers: &peers.suites,
    };
    let run = guest::boot(layout, options, phases, &plan)?;
    // Before the judging: the liburing gate may check out the base tree.
    let uncovered = layout.vm_out().join("uncovered.txt");
    let coverage = phases.run("coverage", || {
        coverage::for_run(&kernel, options, &run.out, &uncovered)
    })?;
    let mut judged = suites::judge(layout, options, phases, &kernel, &run, &peers)?;
    judged.summary.coverage = coverage;
    let logs = phases.run("dmesg", || guest::check_kernel_logs(&run.out));
    report::verdict(&run, judged, binaries.len(), logs)
}
