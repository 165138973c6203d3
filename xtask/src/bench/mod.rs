//! `cargo xtask bench`: the bench kernel (qemu/bench.config), the
//! sendzc-bench binary in the guest, and the table, targets and plot.
//!
//! Transports: UDP through a dummy device in a private namespace, and TCP
//! over virtio-net to a sink on the host, so that zero-copy is real on both
//! (no local delivery). For TCP, QEMU and the sink run in a network
//! namespace of their own on the host, joined by a tap device opened with
//! vnet_hdr: the guest's NIC then offers checksum offload and
//! scatter-gather, without which TCP copies every zero-copy send. QEMU runs with
//! `-icount shift=0`: guest clocks advance one nanosecond per guest
//! instruction, so every time below counts guest instructions under TCG
//! emulation, not host time.

mod plot;
mod plugin;
pub mod profile;
mod report;
mod tap;
pub mod targets;

use std::fs;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::guest::{Accel, Boot};
use crate::kernel;
use crate::layout::{Layout, Profile};
use crate::options::Options;
use crate::phase::Phases;
use tap::{TapNet, HOST_ADDR};

/// What every number is: said next to each of them.
const UNIT_NOTE: &str =
    "guest instructions under QEMU TCG -icount shift=0 (1 ns = 1 instruction), not host time";

/// Which shapes sendzc-bench measures: all of them, 1 and 16 pairs per
/// request (`--quick`), or only those the targets judge (`--targets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Full,
    Quick,
    Targets,
}

impl Scope {
    pub fn from_flag(flag: &str) -> Option<Scope> {
        match flag {
            "--quick" => Some(Scope::Quick),
            "--targets" => Some(Scope::Targets),
            _ => None,
        }
    }

    /// sendzc-bench's flag for it.
    fn flag(self) -> &'static str {
        match self {
            Scope::Full => "",
            Scope::Quick => " --quick",
            Scope::Targets => " --targets",
        }
    }
}

/// What a run of `cargo xtask bench` writes under target/bench.
const RUN_FILES: &[&str] = &[
    "console.log",
    "status",
    "udp.csv",
    "tcp.csv",
    "memory.csv",
    "results.csv",
    "summary.md",
    "cpu_per_byte.svg",
];

fn build_bench(layout: &Layout) -> Result<std::path::PathBuf> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(&layout.root);
    cmd!(
        sh,
        "cargo build --release --quiet -p sendzc-iov-vm-tests --bin sendzc-bench"
    )
    .run()?;
    Ok(layout.root.join("target/release/sendzc-bench"))
}

pub fn run(layout: &Layout, options: &Options, phases: &mut Phases, scope: Scope) -> Result<()> {
    let options = Options {
        liburing: options.liburing,
        profile: Some(Profile::Bench),
        kernel_src: options.kernel_src.clone(),
        accel: options.accel,
        timeout: options.timeout,
        test_args: Vec::new(),
    };
    let kernel = kernel::build(layout, &options, phases)?;
    let bin = phases.run("bench build", || build_bench(layout))?;
    let net = TapNet::create()?;
    let port = net.start_sink()?;
    let out = layout.root.join("target/bench");
    fs::create_dir_all(&out)?;
    // Only this command's files: bench-profile's and bench-targets' stay.
    for file in RUN_FILES {
        let _ = fs::remove_file(out.join(file));
    }
    let flag = scope.flag();
    let (b, o) = (bin.display(), out.display());
    let exec = format!(
        "{} && {b} {o}/udp.csv udp-dummy{flag} && {b} {o}/tcp.csv tcp={HOST_ADDR}:{port}{flag}; \
         echo $? > {o}/status",
        TapNet::guest_setup()
    );
    let outcome = phases.run("bench run", || {
        Boot {
            kernel: &kernel.bzimage,
            accel: options.accel.unwrap_or(Accel::Tcg),
            exec,
            out_dir: &out,
            console_log: out.join("console.log"),
            timeout: options.timeout.unwrap_or(Duration::from_secs(5400)),
            // One argument: vng's parser takes a separate value that starts
            // with '-' for an option of its own.
            vng_args: vec![format!("--qemu-opts=-icount shift=0 {}", net.qemu_opts())],
            netns: Some(net.netns.clone()),
        }
        .run(layout)
    })?;
    match outcome.status {
        Some(0) => {}
        Some(code) => bail!(
            "sendzc-bench failed ({code}); see {}",
            out.join("console.log").display()
        ),
        None => bail!(
            "the bench guest did not finish; see {}",
            out.join("console.log").display()
        ),
    }
    let udp = fs::read_to_string(out.join("udp.csv")).context("udp.csv")?;
    let tcp = fs::read_to_string(out.join("tcp.csv")).context("tcp.csv")?;
    let memory = fs::read_to_string(out.join("memory.csv")).context("memory.csv")?;
    let summary = report::report(&out, &[&udp, &tcp], &memory)?;
    println!("{summary}");
    eprintln!(
        "bench: results in {} (results.csv, summary.md, cpu_per_byte.svg)",
        out.display()
    );
    Ok(())
}
