//! Project automation: `cargo xtask <command>`.
//!
//! vm-test        fetch, patch, configure and build the kernel, boot it, run the suites
//! check-patches  checkpatch --strict on every patch, and build every prefix of the series
//! host           fmt, clippy, rustdoc and the host unit tests
//! check-uapi     the Rust bindings against the patched kernel's C header
//! bench          the benchmark of issue 6 on the bench kernel
//! bench-profile  guest instructions per kernel function of bench modes
//! bench-targets  every target decided by bench-profile's count, in several runs
//! ci             host checks (fmt, clippy, unit tests), check-patches, vm-test
//! setup          install the host packages and virtme-ng
//! fresh-check    the two README commands in a clean Debian 12 chroot
//! kernel         fetch, patch, configure and build only

mod bench;
mod checks;
mod ci;
mod coverage;
mod fresh;
mod guest;
mod io_uring_crate;
mod kernel;
mod layout;
mod options;
mod phase;
mod report;
mod setup;
mod source;
mod suites;
mod vm_test;

use anyhow::{bail, Result};

use layout::Layout;
use phase::Phases;

pub const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  vm-test        build the patched kernel, boot it, run the Rust suites in it
  ci             fmt + clippy + host tests, check-patches, vm-test (what .ci/run runs)
  check-patches  checkpatch.pl --strict on each patch; build each prefix of the series
  host           fmt, clippy -D warnings, rustdoc -D warnings, host unit tests
  check-uapi     build the kernel, compare the Rust bindings with its <linux/io_uring.h>
  bench [--quick|--targets]
                 bench kernel, sendzc-bench in the guest: table, targets, plot
                 (--targets: only the shapes the targets judge; a target
                 whose runs spread over its bound is left to bench-targets)
  bench-profile MODE... [--tcp|--tcp-virtio] [--pairs N] [--payload BYTES] [--count N]
                [--runs N]
                 guest instructions per request of each mode, per kernel
                 function, counted by a QEMU TCG plugin (UDP, or with
                 --tcp the send path of TCP over loopback, --tcp-virtio
                 over virtio-net; 1 pair of 24 B + 0 B, 20000 requests
                 by default); --runs N: N runs in one boot, each mode
                 shown by its median run, every run's totals beside
  bench-targets [--runs N]
                 every target of the benchmark decided by bench-profile's
                 count of the send path, N runs each (default 5): one table
  kernel         fetch, patch, configure and build the kernel only
  setup          install missing host packages and virtme-ng
  fresh-check    run vm-test and ci in a new Debian 12 chroot, empty cache

options (vm-test, kernel, ci):
  --profile debug|bench  config fragment on top of qemu/vm.config (default: debug)
  --kernel-src DIR       build this kernel tree as it is instead of Debian's
                         source with kernel-patches/ applied
  --liburing selection|all  liburing tests to run on the base and patched
                         kernel: qemu/liburing-tests.txt (default) or all
  --accel kvm|tcg        skip the KVM probe
  --timeout SECS         guest time limit (default: 1200 with KVM, 4800 with TCG)
  -- ARGS                passed to every test binary in the guest (e.g. a filter)

environment:
  SENDZC_CACHE           cache directory (default: $XDG_CACHE_HOME/sendzc-iov)
";

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let layout = Layout::detect()?;
    let mut phases = Phases::default();
    // Whatever builds or boots needs host tools: install them before any
    // other phase, so that a fresh machine fails nowhere for the lack of one.
    let needs_host_tools = matches!(
        command.as_str(),
        "vm-test"
            | "ci"
            | "kernel"
            | "check-patches"
            | "check-uapi"
            | "bench"
            | "bench-profile"
            | "bench-targets"
            | "setup"
    );
    if needs_host_tools {
        if let Err(err) = phases.run("setup", || setup::ensure(&layout)) {
            phases.summary();
            return Err(err);
        }
    }
    // Commands that run tests return their totals, printed last for CI.
    let result = match command.as_str() {
        "vm-test" => vm_test::run(&layout, &options::parse(rest)?, &mut phases).map(Some),
        "ci" => ci::run(&layout, &options::parse(rest)?, &mut phases).map(Some),
        "kernel" => kernel::build(&layout, &options::parse(rest)?, &mut phases).map(|_| None),
        "check-patches" => checks::check_patches(&layout, &mut phases).map(|()| None),
        "check-uapi" => kernel::build(&layout, &options::parse(rest)?, &mut phases)
            .and_then(|kernel| phases.run("check-uapi", || checks::check_uapi(&layout, &kernel)))
            .map(|()| None),
        "bench" => {
            let scope = rest.first().and_then(|a| bench::Scope::from_flag(a));
            let rest = if scope.is_some() { &rest[1..] } else { rest };
            let scope = scope.unwrap_or(bench::Scope::Full);
            bench::run(&layout, &options::parse(rest)?, &mut phases, scope).map(|()| None)
        }
        "bench-profile" => bench::profile::run(&layout, rest, &mut phases).map(|()| None),
        "bench-targets" => bench::targets::run(&layout, rest, &mut phases).map(|()| None),
        "host" => phases
            .run("host checks", || checks::host_checks(&layout))
            .map(Some),
        "setup" => Ok(None),
        "fresh-check" => fresh::run(&layout, &mut phases).map(|()| None),
        "help" | "--help" | "-h" => {
            eprint!("{USAGE}");
            return Ok(());
        }
        other => bail!("unknown command '{other}'\n{USAGE}"),
    };
    phases.summary();
    if let Ok(Some(totals)) = &result {
        eprintln!("{}", totals.closing_line(command));
    }
    result.map(|_| ())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(err) = run(&args) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
