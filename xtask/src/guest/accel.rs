//! KVM or TCG: KVM only where a short probe boot shows that it works.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use super::vng::{Boot, STATUS_FILE};
use crate::layout::Layout;
use crate::phase::human;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        }
    }
}

/// KVM if /dev/kvm works with this QEMU, found by one short probe boot whose
/// result is kept in the cache (nested KVM here can hang in early boot).
pub fn choose(layout: &Layout, kernel: &Path, forced: Option<Accel>) -> Result<Accel> {
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match (forced, kvm) {
        (Some(Accel::Kvm), Err(e)) => {
            bail!("--accel kvm: /dev/kvm is not usable here ({e}); use --accel tcg, or leave --accel out")
        }
        (Some(accel), _) => return Ok(accel),
        (None, Err(_)) => {
            eprintln!("  /dev/kvm not usable: TCG");
            return Ok(Accel::Tcg);
        }
        (None, Ok(_)) => {}
    }
    let sh = Shell::new()?;
    let qemu = cmd!(sh, "qemu-system-x86_64 --version").quiet().read()?;
    let qemu = qemu.lines().next().unwrap_or_default().to_string();
    let record = layout.cache.join("kvm-probe");
    if let Some(verdict) = fs::read_to_string(&record)
        .ok()
        .and_then(|text| text.strip_prefix(&format!("{qemu}: ")).map(str::to_string))
    {
        let accel = if verdict.trim() == "ok" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        eprintln!(
            "  KVM probe (cached in {}): {}",
            record.display(),
            accel.name()
        );
        return Ok(accel);
    }
    eprintln!("  probing KVM with a 60 s boot");
    let probe_dir = layout.vm_out().join("kvm-probe");
    let outcome = Boot {
        kernel,
        accel: Accel::Kvm,
        exec: format!("echo 0 > {}/{STATUS_FILE}", probe_dir.display()),
        out_dir: &probe_dir,
        console_log: layout.vm_out().join("kvm-probe.log"),
        timeout: Duration::from_secs(60),
        vng_args: Vec::new(),
        netns: None,
    }
    .run(layout)?;
    let ok = outcome.status == Some(0);
    fs::write(
        &record,
        format!("{qemu}: {}\n", if ok { "ok" } else { "hang" }),
    )?;
    let accel = if ok { Accel::Kvm } else { Accel::Tcg };
    eprintln!("  KVM probe: {} ({})", accel.name(), human(outcome.took));
    Ok(accel)
}
