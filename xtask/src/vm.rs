//! Boot a kernel with virtme-ng and run a command inside it.
//!
//! The guest's verdict travels back through a file in a shared read-write
//! directory, not through vng's exit code: a guest that panics, hangs or is
//! killed leaves no status file, and that is reported as a failure.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

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

/// One guest boot.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub accel: Accel,
    /// The command line run inside the guest.
    pub exec: String,
    /// Shared read-write with the guest; holds the status file.
    pub out_dir: &'a Path,
    pub console_log: PathBuf,
    pub timeout: Duration,
    /// More vng arguments (network, QEMU options).
    pub vng_args: Vec<String>,
    /// Host network namespace to run QEMU in (`ip netns exec`).
    pub netns: Option<String>,
}

/// How a boot ended.
pub struct Outcome {
    /// The guest command's exit status, if it got to write one.
    pub status: Option<i32>,
    pub timed_out: bool,
    pub took: Duration,
}

const STATUS_FILE: &str = "status";

impl Boot<'_> {
    pub fn run(&self, layout: &Layout) -> Result<Outcome> {
        fs::create_dir_all(self.out_dir)?;
        let status_path = self.out_dir.join(STATUS_FILE);
        let _ = fs::remove_file(&status_path);
        let mut console = fs::File::create(&self.console_log)?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(layout.vng());
                c
            }
            None => Command::new(layout.vng()),
        };
        // vng runs virtme-run from PATH; --verbose puts the serial console
        // (kernel log and, without udev on the host, the script's output)
        // on stdout.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![layout.venv().join("bin")];
        dirs.extend(std::env::split_paths(&path));
        command
            .env("PATH", std::env::join_paths(dirs)?)
            .arg("--verbose")
            // No virtiofsd here: skip vng's attempts to start one.
            .arg("--force-9p")
            .arg("--run")
            .arg(self.kernel)
            .args(["--cpus", "2", "--memory", "2G"])
            .arg(format!("--rwdir={}", self.out_dir.display()))
            .args(&self.vng_args)
            .args(["--exec", &self.exec]);
        if self.accel == Accel::Tcg {
            command.arg("--disable-kvm");
        }
        let start = Instant::now();
        let mut child = command
            .current_dir(&layout.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so that a timeout kills QEMU too.
            .process_group(0)
            .spawn()
            .context("cannot start vng")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for pipe in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    eprintln!("  | {line}");
                    writeln!(console, "{line}")?;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !timed_out && start.elapsed() > self.timeout {
                timed_out = true;
                eprintln!(
                    "  guest still running after {}: killing it",
                    human(self.timeout)
                );
                // SAFETY: kill() on our own child's process group; no memory is involved.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            }
        }
        child.wait()?;
        let status = fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(Outcome {
            status,
            timed_out,
            took: start.elapsed(),
        })
    }
}

/// KVM if /dev/kvm works with this QEMU, found by one short probe boot whose
/// result is kept in the cache (nested KVM here can hang in early boot).
pub fn choose_accel(layout: &Layout, kernel: &Path, forced: Option<Accel>) -> Result<Accel> {
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

/// Lines of a guest's kernel log that fail a run.
pub fn kernel_problems(log: &str) -> Vec<&str> {
    const PATTERNS: &[&str] = &[
        "BUG:",
        "WARNING:",
        "KASAN",
        "possible circular locking",
        "possible recursive locking",
        "inconsistent lock state",
        "Oops",
        "general protection fault",
        "Kernel panic",
        "unreferenced object",
        "UBSAN:",
        "RCU stall",
        "hung_task",
    ];
    log.lines()
        .filter(|line| PATTERNS.iter().any(|p| line.contains(p)))
        .collect()
}

/// What guest-run.sh writes to the kernel log before the first test.
pub const TESTS_START: &str = "sendzc-guest: tests start";

/// Kernel problems logged before the tests started: at boot, in code the
/// tests never reached.
pub fn boot_problems(out_dir: &Path) -> Vec<String> {
    let dmesg = fs::read_to_string(out_dir.join("dmesg.txt")).unwrap_or_default();
    problems_before_tests(&dmesg)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Problem lines before the [`TESTS_START`] marker; none without it (then
/// every problem counts against the run).
fn problems_before_tests(dmesg: &str) -> Vec<&str> {
    match dmesg.find(TESTS_START) {
        Some(at) => kernel_problems(&dmesg[..at]),
        None => Vec::new(),
    }
}

/// How many problem lines dmesg and the kmemleak report of a run hold.
pub fn problem_count(out_dir: &Path) -> usize {
    let read = |name: &str| fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    kernel_problems(&read("dmesg.txt")).len() + kernel_problems(&read("kmemleak.txt")).len()
}

/// Fails with the offending lines when dmesg or the kmemleak report of the
/// last guest run show a kernel problem.
pub fn check_kernel_logs(out_dir: &Path) -> Result<()> {
    let dmesg_path = out_dir.join("dmesg.txt");
    let dmesg = fs::read_to_string(&dmesg_path)
        .with_context(|| format!("the guest wrote no kernel log ({})", dmesg_path.display()))?;
    let kmemleak = fs::read_to_string(out_dir.join("kmemleak.txt")).unwrap_or_default();
    let mut problems = kernel_problems(&dmesg);
    problems.extend(kernel_problems(&kmemleak));
    eprintln!(
        "  dmesg: {} lines, kmemleak report: {} lines, problems: {}",
        dmesg.lines().count(),
        kmemleak.lines().count(),
        problems.len()
    );
    if problems.is_empty() {
        return Ok(());
    }
    for line in &problems {
        eprintln!("  ! {line}");
    }
    bail!(
        "{} kernel problem line(s) in the guest; see {} and kmemleak.txt",
        problems.len(),
        dmesg_path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernel_problems() {
        let log = "[    1.0] io_uring: fine\n\
                   [    2.0] WARNING: CPU: 0 PID: 1 at io_uring/net.c:100\n\
                   [    3.0] BUG: KASAN: slab-use-after-free in io_sendmsg_zc\n\
                   unreferenced object 0xffff888 (size 64):\n\
                   [    4.0] ok again\n";
        assert_eq!(kernel_problems(log).len(), 3);
    }

    #[test]
    fn splits_boot_problems_from_test_problems() {
        let log = format!(
            "[0.1] BUG: KASAN: wild-memory-access in do_raw_spin_lock\n[5.0] {TESTS_START}\n\
             [6.0] WARNING: at io_uring/net.c:1\n"
        );
        assert_eq!(problems_before_tests(&log).len(), 1);
        assert_eq!(kernel_problems(&log).len(), 2);
        assert!(problems_before_tests("[0.1] BUG: no marker\n").is_empty());
    }

    #[test]
    fn clean_log_has_no_problems() {
        assert!(kernel_problems("[ 0.0] Linux version 7.3.4\n[ 1.0] Run /init\n").is_empty());
    }
}
