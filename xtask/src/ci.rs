//! `cargo xtask ci`: what `.ci/run` runs, everything in one command.

use anyhow::Result;

use crate::checks::{check_patches, host_checks};
use crate::layout::Layout;
use crate::options::Options;
use crate::phase::Phases;
use crate::report::Tally;
use crate::vm_test;

/// `cargo xtask ci`: what `.ci/run` runs. Returns host and guest totals.
pub fn run(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Tally> {
    let host = phases.run("host checks", || host_checks(layout))?;
    check_patches(layout, phases)?;
    let guest = vm_test::run(layout, options, phases)?;
    eprintln!("{}", host.closing_line("host"));
    Ok(host.add(guest))
}
