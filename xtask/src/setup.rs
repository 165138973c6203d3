//! `xtask setup`: install what the kernel build and the VM need.
//!
//! Debian packages go system-wide through apt (as root); virtme-ng goes into
//! a venv in the cache, pinned, so that the host Python stays untouched.
//! Every program xtask runs is provided by one of [`REQUIREMENTS`], or is
//! part of every Debian system; a unit test below keeps it so.

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

/// What must be on the host, the Debian package that provides it, and why.
const REQUIREMENTS: &[(Probe, &str, &str)] = &[
    (Probe::Command("gcc"), "gcc", "kernel, liburing, selftest"),
    (Probe::Command("g++"), "g++", "liburing's configure --cxx"),
    (Probe::Command("make"), "make", "kernel and liburing builds"),
    (Probe::Command("flex"), "flex", "kconfig's lexer"),
    (Probe::Command("bison"), "bison", "kconfig's parser"),
    (Probe::Command("bc"), "bc", "kernel/time/timeconst.bc"),
    (Probe::Command("perl"), "perl", "kernel scripts, checkpatch"),
    (Probe::Command("cpio"), "cpio", "kernel/gen_kheaders.sh"),
    (Probe::Command("rsync"), "rsync", "make headers_install"),
    (Probe::Command("xz"), "xz-utils", "the linux-source tarball"),
    (Probe::Command("ccache"), "ccache", "every kernel build"),
    (Probe::Command("git"), "git", "the kernel tree, git am"),
    (Probe::File("/usr/include/gelf.h"), "libelf-dev", "objtool"),
    (
        Probe::File("/usr/include/openssl/ssl.h"),
        "libssl-dev",
        "scripts/ (sign-file, extract-cert)",
    ),
    (
        Probe::Command("qemu-system-x86_64"),
        "qemu-system-x86",
        "vng",
    ),
    (
        Probe::Command("qemu-x86_64"),
        "qemu-user",
        "the profiling plugin's tests, on a program of known counts",
    ),
    (
        Probe::Command("nm"),
        "binutils",
        "the profiling plugin's tests: the program's symbols",
    ),
    (
        Probe::Command("busybox"),
        "busybox-static",
        "vng's guest init",
    ),
    (
        Probe::File("/usr/lib/git-core/git-send-email"),
        "git-email",
        "check-patches: git send-email --dry-run",
    ),
    (
        Probe::File("/usr/share/perl5/Mail/Address.pm"),
        "libmailtools-perl",
        "git send-email's Mail::Address (only a Recommends of git-email)",
    ),
    // The guest runs on the host's root filesystem: its tools are these.
    (Probe::Command("ip"), "iproute2", "guest tests, bench netns"),
    (
        Probe::Command("ethtool"),
        "ethtool",
        "guest tests: dummy offloads",
    ),
    (
        Probe::Command("sysctl"),
        "procps",
        "the kernel selftest's sysctls",
    ),
    (
        Probe::Command("tc"),
        "iproute2",
        "guest tests: netem on a veth pair",
    ),
    (
        Probe::Command("gcov"),
        "gcc",
        "series coverage from the guest's counts",
    ),
    (
        Probe::File("/usr/lib32/libc.a"),
        "gcc-multilib",
        "guest tests: a static 32-bit sender (gcc -m32 -static)",
    ),
    (
        Probe::Command("file"),
        "file",
        "vng reads the kernel's version",
    ),
    (Probe::Command("python3"), "python3", "vng"),
    (
        Probe::PythonModule("ensurepip"),
        "python3-venv",
        "vng's venv",
    ),
];

pub(crate) fn on_path(command: &str) -> bool {
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

/// The unmet requirements' packages, and what each is needed for.
fn missing(sh: &Shell) -> Vec<(&'static str, &'static str)> {
    REQUIREMENTS
        .iter()
        .filter(|(probe, _, _)| !met(sh, probe))
        .map(|(_, package, why)| (*package, *why))
        .collect()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The packages of `packages` that apt does not know, from its lists.
fn unknown_to_apt(sh: &Shell, packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            cmd!(sh, "apt-cache show {p}")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run()
                .is_err()
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs `packages` with apt as root; anything else is a one-line error
/// that names the packages and the command to run.
pub fn install_packages(sh: &Shell, packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    let line = format!("apt-get install -y --no-install-recommends {list}");
    if !is_root() {
        bail!("missing host packages: {list}; as root, run: {line}");
    }
    if !on_path("apt-get") {
        bail!("missing host packages: {list}; no apt-get here: install them with your package manager");
    }
    eprintln!("  installing: {list}");
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -qq")
        .run()
        .context("apt-get update failed: are the apt sources reachable?")?;
    let installed = cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {packages...}"
    )
    .run();
    if installed.is_err() {
        let unknown = unknown_to_apt(sh, packages);
        if !unknown.is_empty() {
            bail!(
                "apt cannot install {}: not in this machine's apt sources; \
                 add a source that has it, then run: {line}",
                unknown.join(" ")
            );
        }
        bail!("apt-get install failed (see its output above); to retry, run: {line}");
    }
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
        .context("python3 -m venv failed (is python3-venv installed?)")?;
    let pip = venv.join("bin/pip");
    let spec = format!("virtme-ng=={VIRTME_NG_VERSION}");
    cmd!(sh, "{pip} install -q {spec}")
        .run()
        .with_context(|| format!("pip install {spec} failed: is PyPI reachable?"))?;
    if vng_version(sh, &vng).is_none() {
        bail!("{} does not run after installing {spec}", vng.display());
    }
    Ok(())
}

/// Installs whatever is missing; cheap when nothing is.
pub fn ensure(layout: &Layout) -> Result<()> {
    let sh = Shell::new()?;
    let wanted = missing(&sh);
    if wanted.is_empty() {
        eprintln!("  host packages: all present");
    } else {
        for (package, why) in &wanted {
            eprintln!("  missing: {package} ({why})");
        }
        let mut packages: Vec<&str> = wanted.iter().map(|(p, _)| *p).collect();
        packages.dedup();
        install_packages(&sh, &packages)?;
        let still: Vec<&str> = missing(&sh).iter().map(|(p, _)| *p).collect();
        if !still.is_empty() {
            bail!("still missing after apt-get install: {}", still.join(" "));
        }
    }
    install_virtme_ng(&sh, layout)?;
    eprintln!(
        "  virtme-ng {VIRTME_NG_VERSION}: {}",
        layout.vng().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Programs that every Debian system has (its Essential packages), which
    /// xtask and the guest script may run without a requirement.
    const BASE_SYSTEM: &[&str] = &[
        "apt-get",
        "apt-cache",
        "bash",
        "cat",
        "chroot",
        "cp",
        "dmesg",
        "dpkg-deb",
        "env",
        "mount",
        "prlimit",
        "sh",
        "sha256sum",
        "tail",
        "tar",
        "umount",
    ];

    /// Programs that kernel and liburing builds, vng and the guest run for
    /// us, though no `cmd!` in xtask names them; each must be provided by a
    /// requirement or be in [`BASE_SYSTEM`].
    const INDIRECT: &[(&str, &str)] = &[
        ("rsync", "make headers_install copies the uapi headers"),
        ("flex", "make allnoconfig builds kconfig"),
        ("bison", "make allnoconfig builds kconfig"),
        ("bc", "the kernel build generates timeconst.h"),
        ("perl", "kernel scripts and checkpatch.pl"),
        ("cpio", "the kernel build packs kheaders"),
        ("xz", "tar -xJf of the linux-source tarball"),
        ("ccache", "CC=ccache gcc in every kernel build"),
        ("gcc", "the kernel, liburing and selftest builds"),
        ("g++", "liburing's configure"),
        ("qemu-system-x86_64", "vng starts it"),
        ("busybox", "vng's guest init"),
        ("ethtool", "the guest tests turn off dummy offloads"),
        (
            "prlimit",
            "the guest runs send-zerocopy.t under an RLIMIT_AS",
        ),
        ("sysctl", "io_uring_zerocopy_tx.sh sets net.core sysctls"),
        ("file", "vng detects the kernel version with it"),
        ("tc", "the guest tests put netem on a veth pair"),
        ("tail", "qemu/logged-run.sh streams a test's or suite's log"),
    ];

    /// Where a program a `cmd!` names comes from, if xtask provides it itself:
    /// interpolated paths that setup or the build creates.
    const PROVIDED_BY_XTASK: &[(&str, &str)] = &[
        ("{pip}", "the venv setup creates"),
        ("{vng}", "virtme-ng in that venv"),
        ("./configure", "liburing's own configure script"),
        ("mmdebstrap", "fresh-check installs it for itself"),
    ];

    /// The program names of `cmd!(sh, "PROGRAM ...")` and
    /// `Command::new("PROGRAM")` in `source`.
    fn programs_run_by(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (marker, skip_shell) in [("cmd!(", true), ("Command::new(", false)] {
            for rest in source.split(marker).skip(1) {
                let mut rest = rest.trim_start();
                if skip_shell {
                    // The shell argument: an identifier and a comma.
                    let Some((_, after)) = rest.split_once(',') else {
                        continue;
                    };
                    rest = after.trim_start();
                }
                let Some(literal) = rest.strip_prefix('"') else {
                    continue;
                };
                let end = literal.find([' ', '"', '\'']).unwrap_or(literal.len());
                found.push(literal[..end].to_string());
            }
        }
        found
    }

    fn provided(program: &str) -> bool {
        REQUIREMENTS
            .iter()
            .any(|(probe, _, _)| matches!(probe, Probe::Command(c) if *c == program))
            || BASE_SYSTEM.contains(&program)
            || PROVIDED_BY_XTASK.iter().any(|(p, _)| *p == program)
            || program == "cargo"
    }

    /// Every `.rs` file of xtask/src, with its path.
    fn xtask_sources() -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    files.push((path.display().to_string(), text));
                }
            }
        }
        files
    }

    #[test]
    fn finds_the_programs_of_cmd_and_command() {
        let source = "cmd!(sh, \"git am {p}\")\ncmd!(\n    sh,\n    \"perl scripts/x\"\n)\n\
                      Command::new(\"make\")\nCommand::new(layout.vng())\ncmd!(sh, \"{pip} x\")";
        assert_eq!(programs_run_by(source), ["git", "perl", "{pip}", "make"]);
    }

    #[test]
    fn every_program_xtask_runs_has_a_requirement() {
        let mut unprovided = Vec::new();
        for (path, text) in xtask_sources() {
            // This file's own test strings are not programs xtask runs.
            let code = match path.ends_with("setup.rs") {
                true => text.split("#[cfg(test)]").next().unwrap_or_default(),
                false => &text,
            };
            unprovided.extend(
                programs_run_by(code)
                    .into_iter()
                    .filter(|p| !provided(p))
                    .map(|p| format!("{p} ({path})")),
            );
        }
        for (program, why) in INDIRECT {
            if !provided(program) {
                unprovided.push(format!("{program} ({why})"));
            }
        }
        assert!(
            unprovided.is_empty(),
            "programs no requirement in setup.rs provides: {}",
            unprovided.join(", ")
        );
    }
}
