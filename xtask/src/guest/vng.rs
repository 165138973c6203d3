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

use anyhow::{Context, Result};

use super::Accel;
use crate::layout::Layout;
use crate::phase::human;

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

pub(super) const STATUS_FILE: &str = "status";

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
