//! `xtask setup`: install what the kernel build and the VM need.
//!
//! Debian packages go system-wide through apt (as root); virtme-ng goes into
//! a venv in the cache, pinned, so that the host Python stays untouched.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;

/// The virtme-ng release the harness is tested with.
const VIRTME_NG_VERSION: &str = "1.42";

/// How to tell that a requirement is met.
enum Probe {
    /// A command on PATH.
    Command(&'static str),
    /// A file, for libraries whose only trace is a header.
    File(&'static str),
    /// A Python module of the system python3.
    PythonModule(&'static str),
}

/// What must be on the host, and the Debian package that provides it.
const REQUIREMENTS: &[(Probe, &str)] = &[
    (Probe::Command("gcc"), "gcc"),
    (Probe::Command("make"), "make"),
    (Probe::Command("flex"), "flex"),
    (Probe::Command("bison"), "bison"),
    (Probe::Command("bc"), "bc"),
    (Probe::Command("perl"), "perl"),
    (Probe::Command("cpio"), "cpio"),
    (Probe::Command("xz"), "xz-utils"),
    (Probe::Command("ccache"), "ccache"),
    (Probe::File("/usr/include/gelf.h"), "libelf-dev"),
    (Probe::File("/usr/include/openssl/ssl.h"), "libssl-dev"),
    (Probe::Command("qemu-system-x86_64"), "qemu-system-x86"),
    (Probe::Command("busybox"), "busybox-static"),
    // check-patches: `git send-email --dry-run` on the mail-ready series.
    (Probe::File("/usr/lib/git-core/git-send-email"), "git-email"),
    // The guest runs on the host's root filesystem: its tools are these.
    (Probe::Command("ip"), "iproute2"),
    (Probe::Command("ethtool"), "ethtool"),
    (Probe::Command("python3"), "python3"),
    (Probe::PythonModule("ensurepip"), "python3-venv"),
];

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

fn met(sh: &Shell, probe: &Probe) -> bool {
    match probe {
        Probe::Command(c) => on_path(c),
        Probe::File(f) => Path::new(f).exists(),
        Probe::PythonModule(m) => cmd!(sh, "python3 -c 'import '{m}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok(),
    }
}

fn missing_packages(sh: &Shell) -> Vec<&'static str> {
    let mut packages: Vec<&str> = REQUIREMENTS
        .iter()
        .filter(|(probe, _)| !met(sh, probe))
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    packages
}

fn is_root() -> bool {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn install_packages(sh: &Shell, packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !is_root() || !on_path("apt-get") {
        bail!(
            "missing host packages: {list}\n  install them with: \
             sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("  installing: {list}");
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -qq")
        .run()
        .context("apt-get update failed")?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {packages...}"
    )
    .run()
    .with_context(|| format!("apt-get install {list} failed"))?;
    Ok(())
}

fn vng_version(sh: &Shell, vng: &Path) -> Option<String> {
    cmd!(sh, "{vng} --version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
}

fn install_virtme_ng(sh: &Shell, layout: &Layout) -> Result<()> {
    let vng = layout.vng();
    if vng_version(sh, &vng).is_some_and(|v| v.contains(VIRTME_NG_VERSION)) {
        return Ok(());
    }
    let venv = layout.venv();
    eprintln!(
        "  installing virtme-ng {VIRTME_NG_VERSION} into {}",
        venv.display()
    );
    cmd!(sh, "python3 -m venv {venv}")
        .run()
        .context("python3 -m venv failed")?;
    let pip = venv.join("bin/pip");
    let spec = format!("virtme-ng=={VIRTME_NG_VERSION}");
    cmd!(sh, "{pip} install -q {spec}")
        .run()
        .with_context(|| format!("pip install {spec} failed"))?;
    if vng_version(sh, &vng).is_none() {
        bail!("{} does not run after installing {spec}", vng.display());
    }
    Ok(())
}

/// Installs whatever is missing; cheap when nothing is.
pub fn ensure(layout: &Layout) -> Result<()> {
    let sh = Shell::new()?;
    let missing = missing_packages(&sh);
    if missing.is_empty() {
        eprintln!("  host packages: all present");
    } else {
        install_packages(&sh, &missing)?;
        let still = missing_packages(&sh);
        if !still.is_empty() {
            bail!("still missing after install: {}", still.join(" "));
        }
    }
    install_virtme_ng(&sh, layout)?;
    eprintln!(
        "  virtme-ng {VIRTME_NG_VERSION}: {}",
        layout.vng().display()
    );
    Ok(())
}
