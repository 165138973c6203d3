//! `make` in a persistent out-of-tree build directory, with ccache, its
//! output in a log and a progress line on the terminal.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::layout::Layout;
use crate::phase::human;

/// `make` in the build tree, output to `log`, with a progress line every
/// 30 s or 500 objects; warnings and errors are shown as they happen.
pub fn make(layout: &Layout, src: &Path, build: &Path, targets: &[&str], log: &Path) -> Result<()> {
    fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    let mut logfile = fs::File::create(log)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut child = Command::new("make")
        .current_dir(src)
        .arg(format!("O={}", build.display()))
        .arg(format!("-j{jobs}"))
        .arg("CC=ccache gcc")
        .arg("HOSTCC=ccache gcc")
        .args(targets)
        .env("CCACHE_DIR", layout.ccache())
        .env("KBUILD_BUILD_USER", "xtask")
        .env("KBUILD_BUILD_HOST", "sendzc-iov")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run make")?;
    // stderr goes through a thread into the same channel as stdout.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut objects = 0usize;
    let mut next_report = 500;
    let mut tail: Vec<String> = Vec::new();
    for line in rx {
        writeln!(logfile, "{line}")?;
        if line.starts_with("  CC ") || line.starts_with("  AS ") || line.starts_with("  LD ") {
            objects += 1;
        } else if line.contains("warning:") || line.contains("error:") || line.contains("Error ") {
            eprintln!("  | {line}");
        }
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
        if last_report.elapsed() > Duration::from_secs(30) || objects >= next_report {
            eprintln!("  build: {objects} objects, {}", human(start.elapsed()));
            last_report = Instant::now();
            next_report = objects + 500;
        }
    }
    let _ = reader.join();
    let status = child.wait()?;
    if !status.success() {
        for line in &tail {
            eprintln!("  | {line}");
        }
        bail!(
            "make {} failed ({status}); log: {}",
            targets.join(" "),
            log.display()
        );
    }
    eprintln!(
        "  build: {objects} objects compiled in {}",
        human(start.elapsed())
    );
    Ok(())
}
