//! `cargo xtask fresh-check`: the two README commands on a fresh machine.
//!
//! A new Debian 12 root filesystem (mmdebstrap, minbase, plus only what
//! README lists as prerequisites), this machine's apt, pip and DNS
//! settings and its extra certificate authorities copied in, the Rust toolchain, `/proc`, `/sys`, `/dev` and a clone of
//! the repository's HEAD bind-mounted, and nothing else: inside it the
//! commands of README's "Two commands" block run one after the other with
//! an empty cache, as a new user would type them. What the working machine
//! has installed by hand cannot hide a missing requirement there.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;
use crate::phase::{human, Phases};
use crate::setup;

/// What README says a machine needs before the two commands: a Rust
/// toolchain (bind-mounted here), a linker for cargo and TLS roots for it.
const PREREQUISITES: &str = "ca-certificates,gcc,libc6-dev";

/// Where the clone sits inside the chroot.
const CLONE_IN_CHROOT: &str = "/root/sendzc-iov";

/// The `cargo xtask ...` lines of README's first `sh` code block.
fn readme_commands(readme: &str) -> Vec<String> {
    readme
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .unwrap_or_default()
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| line.starts_with("cargo xtask "))
        .map(str::to_string)
        .collect()
}

/// The host's apt sources file, handed to mmdebstrap as its mirror list.
fn apt_sources() -> Result<PathBuf> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    let classic = Path::new("/etc/apt/sources.list");
    [deb822, classic]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .map(Path::to_path_buf)
        .context(
            "no Debian apt sources on this machine (/etc/apt/sources.list{,.d/debian.sources})",
        )
}

/// The bind mounts into the chroot, undone (in reverse) when dropped.
struct Mounts {
    points: Vec<PathBuf>,
}

impl Mounts {
    fn bind(&mut self, sh: &Shell, from: &Path, to: &Path) -> Result<()> {
        fs::create_dir_all(to)?;
        cmd!(sh, "mount --rbind {from} {to}")
            .run()
            .with_context(|| format!("cannot bind-mount {}", from.display()))?;
        // Unmounting the chroot's copy must not unmount the host's.
        cmd!(sh, "mount --make-rslave {to}").run()?;
        self.points.push(to.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let Ok(sh) = Shell::new() else { return };
        for point in self.points.iter().rev() {
            if cmd!(sh, "umount -R {point}").quiet().run().is_err() {
                let _ = cmd!(sh, "umount -R --lazy {point}").quiet().run();
            }
        }
    }
}

/// Mount points at or below `rootfs`, deepest first.
fn mounts_under(rootfs: &Path) -> Result<Vec<String>> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let prefix = rootfs.display().to_string();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    Ok(points)
}

/// Unmounts whatever an interrupted earlier run left under `rootfs`, and
/// makes sure nothing is left: removing the old rootfs with the host's
/// /dev or toolchain still bound into it would delete them.
fn unmount_leftovers(sh: &Shell, rootfs: &Path) -> Result<()> {
    for point in mounts_under(rootfs)? {
        let _ = cmd!(sh, "umount -R --lazy {point}").quiet().run();
    }
    let left = mounts_under(rootfs)?;
    if !left.is_empty() {
        bail!(
            "still mounted under the old chroot, not removing it: {}",
            left.join(" ")
        );
    }
    Ok(())
}

/// A Debian 12 minbase with the prerequisites, this machine's apt
/// settings (its archive serves dated snapshots) and its DNS.
fn make_rootfs(sh: &Shell, rootfs: &Path) -> Result<()> {
    unmount_leftovers(sh, rootfs)?;
    let _ = fs::remove_dir_all(rootfs);
    fs::create_dir_all(rootfs)?;
    let sources = apt_sources()?;
    let hook =
        "mkdir -p \"$1/etc/apt/apt.conf.d\" && cp /etc/apt/apt.conf.d/* \"$1/etc/apt/apt.conf.d/\"";
    cmd!(
        sh,
        "mmdebstrap --quiet --variant=minbase --include={PREREQUISITES} --setup-hook={hook} bookworm {rootfs} {sources}"
    )
    .run()
    .context("mmdebstrap could not build a Debian 12 root filesystem")?;
    carry_machine_settings(sh, rootfs)
}

/// What any machine of this kind has besides its packages, and a fresh
/// one would have too: DNS, pip's settings, and the certificate
/// authorities the registries' TLS is signed by that Debian does not ship.
fn carry_machine_settings(sh: &Shell, rootfs: &Path) -> Result<()> {
    fs::copy("/etc/resolv.conf", rootfs.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the chroot")?;
    if Path::new("/etc/pip.conf").is_file() {
        fs::copy("/etc/pip.conf", rootfs.join("etc/pip.conf"))?;
    }
    let bundle = "etc/ssl/certs/ca-certificates.crt";
    let host = fs::read_to_string(Path::new("/").join(bundle)).unwrap_or_default();
    let debian = fs::read_to_string(rootfs.join(bundle)).unwrap_or_default();
    let extra = certificates_not_in(&host, &debian);
    if !extra.is_empty() {
        let dir = rootfs.join("usr/local/share/ca-certificates");
        fs::create_dir_all(&dir)?;
        for (n, cert) in extra.iter().enumerate() {
            fs::write(dir.join(format!("this-machine-{n}.crt")), cert)?;
        }
        cmd!(sh, "chroot {rootfs} update-ca-certificates")
            .quiet()
            .ignore_stdout()
            .run()?;
        eprintln!(
            "  {} certificate authorities of this machine carried over",
            extra.len()
        );
    }
    Ok(())
}

/// The PEM certificates of `bundle` that `other` does not hold.
fn certificates_not_in(bundle: &str, other: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .filter_map(|chunk| {
            let start = chunk.find("-----BEGIN CERTIFICATE-----")?;
            chunk.ends_with(END).then(|| &chunk[start..])
        })
        .filter(|cert| !other.contains(cert))
        .map(|cert| format!("{cert}\n"))
        .collect()
}

/// A fresh clone of the repository's HEAD (only commits travel).
fn clone_head(sh: &Shell, layout: &Layout, clone: &Path) -> Result<String> {
    let _ = fs::remove_dir_all(clone);
    let root = &layout.root;
    let dirty = !cmd!(sh, "git -C {root} status --porcelain --untracked-files=no")
        .quiet()
        .read()?
        .is_empty();
    if dirty {
        eprintln!("  note: uncommitted changes are not in the clone; it is HEAD");
    }
    cmd!(sh, "git clone -q --no-hardlinks {root} {clone}").run()?;
    cmd!(sh, "git -C {clone} rev-parse --short HEAD")
        .quiet()
        .read()
        .map_err(Into::into)
}

fn home_dir(var: &str, default: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(var) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(default))
}

/// `/proc`, `/sys`, `/dev`, the toolchain and the clone, bind-mounted.
fn mount_all(sh: &Shell, rootfs: &Path, clone: &Path) -> Result<Mounts> {
    let mut mounts = Mounts { points: Vec::new() };
    for dir in ["/proc", "/sys", "/dev"] {
        mounts.bind(sh, Path::new(dir), &rootfs.join(&dir[1..]))?;
    }
    let cargo = home_dir("CARGO_HOME", ".cargo")?;
    let rustup = home_dir("RUSTUP_HOME", ".rustup")?;
    mounts.bind(sh, &cargo, &rootfs.join("root/.cargo"))?;
    mounts.bind(sh, &rustup, &rootfs.join("root/.rustup"))?;
    mounts.bind(sh, clone, &rootfs.join(&CLONE_IN_CHROOT[1..]))?;
    Ok(mounts)
}

/// The phase table (`---- phases ----` to `total`) xtask printed last.
fn phase_table(log: &str) -> String {
    let Some(start) = log.rfind("---- phases ----") else {
        return "  (no phase table: the command ended before it)\n".into();
    };
    let mut table = String::new();
    for line in log[start..].lines().skip(1) {
        table.push_str(line);
        table.push('\n');
        if line.trim_start().starts_with("total") {
            break;
        }
    }
    table
}

/// Runs `command` as a new user would, in a login-like environment inside
/// the chroot; its output goes to the terminal and to `log`.
fn run_in_chroot(sh: &Shell, rootfs: &Path, command: &str, log: &str) -> Result<()> {
    let script = format!(
        "set -o pipefail; cd {CLONE_IN_CHROOT} && mkdir -p target && \
         {command} 2>&1 | tee target/{log}"
    );
    cmd!(
        sh,
        "chroot {rootfs} /usr/bin/env -i HOME=/root USER=root LANG=C.UTF-8 TERM=dumb
         PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
         bash -c {script}"
    )
    .run()
    .with_context(|| format!("'{command}' failed in the fresh chroot"))
}

/// Builds the chroot, runs README's commands in it, and prints each one's
/// phase table; the whole record goes to `target/fresh-check.md`.
pub fn run(layout: &Layout, phases: &mut Phases) -> Result<()> {
    if !setup::is_root() {
        bail!("fresh-check builds a chroot and bind-mounts into it: run it as root");
    }
    let sh = Shell::new()?;
    if cmd!(sh, "mmdebstrap --version").quiet().read().is_err() {
        setup::install_packages(&sh, &["mmdebstrap"])?;
    }
    let readme = fs::read_to_string(layout.root.join("README.md"))?;
    let commands = readme_commands(&readme);
    if commands.is_empty() {
        bail!("README.md has no ```sh block with cargo xtask commands");
    }
    let work = layout.cache.join("fresh");
    let rootfs = work.join("rootfs");
    let clone = work.join("clone");
    phases.run("fresh rootfs", || make_rootfs(&sh, &rootfs))?;
    let head = phases.run("fresh clone", || clone_head(&sh, layout, &clone))?;
    let _mounts = mount_all(&sh, &rootfs, &clone)?;
    let mut record =
        format!("# fresh-check of {head}\n\nDebian 12 minbase + {PREREQUISITES}, empty cache.\n");
    for (n, command) in commands.iter().enumerate() {
        let log = format!("fresh-{}.log", n + 1);
        let start = Instant::now();
        let result = phases.run(command, || run_in_chroot(&sh, &rootfs, command, &log));
        let took = human(start.elapsed());
        let text = fs::read_to_string(clone.join("target").join(&log)).unwrap_or_default();
        let table = phase_table(&text);
        let verdict = if result.is_ok() { "passed" } else { "FAILED" };
        eprintln!("  {command}: {verdict} in {took}; its phases:\n{table}");
        record.push_str(&format!(
            "\n## `{command}`: {verdict} in {took}\n\n```\n{table}```\n"
        ));
        fs::write(layout.root.join("target/fresh-check.md"), &record)?;
        result?;
    }
    eprintln!(
        "fresh-check: {} commands passed in a fresh Debian 12; record in target/fresh-check.md",
        commands.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_readme_commands() {
        let readme = "# x\n\n```sh\ncargo xtask vm-test   # build, boot\ncargo xtask ci\n```\n\
                      ```sh\ncargo xtask bench\n```\n";
        assert_eq!(
            readme_commands(readme),
            ["cargo xtask vm-test", "cargo xtask ci"]
        );
    }

    #[test]
    fn the_repository_readme_has_two_commands() {
        let readme = include_str!("../../README.md");
        assert_eq!(
            readme_commands(readme),
            ["cargo xtask vm-test", "cargo xtask ci"]
        );
    }

    #[test]
    fn finds_the_certificates_another_bundle_lacks() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let b = "# b\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let bundle = format!("{a}{b}");
        assert_eq!(
            certificates_not_in(&bundle, a),
            ["-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n"]
        );
        assert!(certificates_not_in(a, &bundle).is_empty());
    }

    #[test]
    fn cuts_the_last_phase_table() {
        let log = "x\n---- phases ----\n  setup 1.0s\n  total 1.0s\nmore\n";
        assert_eq!(phase_table(log), "  setup 1.0s\n  total 1.0s\n");
    }
}
