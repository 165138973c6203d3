//! The guest's kernel log and kmemleak report: any BUG, WARNING, KASAN,
//! lockdep or leak report fails the run.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reports the kernel starts its message with (`[time] WARNING: CPU: ...`).
/// Userspace writes to the kernel log too, and its lines carry its own
/// prefix (`virtme-ng-init: WARNING: failed to run ...` where a root
/// filesystem has no systemd), so these count only at the start.
const REPORTS: &[&str] = &["BUG:", "WARNING:", "Oops", "UBSAN:", "Kernel panic"];

/// Words of kernel reports wherever they stand in a line.
const ANYWHERE: &[&str] = &[
    "KASAN",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "general protection fault",
    "unreferenced object",
    "RCU stall",
    "hung_task",
];

/// The tag of every line the project's own programs write to the kernel
/// log (`sendzc-guest:`, `sendzc-many:`, ...): their words are ours, a
/// summary that names KASAN is not a KASAN report.
const OWN_TAG: &str = "sendzc-";

/// A log line without its `[   12.345678] ` timestamp.
fn message(line: &str) -> &str {
    let line = line.trim_start();
    match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((_, message)) => message,
        None => line,
    }
}

/// Lines of a guest's kernel log that fail a run.
pub fn kernel_problems(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| !message(line).starts_with(OWN_TAG))
        .filter(|line| {
            REPORTS.iter().any(|p| message(line).starts_with(p))
                || ANYWHERE.iter().any(|p| line.contains(p))
        })
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
pub fn problem_count(out_dir: &Path) -> ProblemCount {
    let read = |name: &str| fs::read_to_string(out_dir.join(name)).unwrap_or_default();
    ProblemCount {
        splats: kernel_problems(&read("dmesg.txt")).len(),
        leaks: kernel_problems(&read("kmemleak.txt")).len(),
    }
}

/// Problem lines of a run: in dmesg (splats) and in the kmemleak report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProblemCount {
    pub splats: usize,
    pub leaks: usize,
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
    fn userspace_warnings_in_the_log_are_not_kernel_problems() {
        let log = "[   12.105544] virtme-ng-init: WARNING: failed to run: \"systemd-tmpfiles\"\n\
                   [   13.0] WARNING: CPU: 1 PID: 80 at io_uring/notif.c:40\n\
                   [   14.0] BUG: KASAN: use-after-free in io_tx_ubuf_complete\n";
        assert_eq!(
            kernel_problems(log),
            [
                "[   13.0] WARNING: CPU: 1 PID: 80 at io_uring/notif.c:40",
                "[   14.0] BUG: KASAN: use-after-free in io_tx_ubuf_complete"
            ]
        );
    }

    #[test]
    fn our_own_lines_are_not_kernel_problems() {
        let log = "[  731.0] sendzc-many: 3366 B per request (with KASAN's own)\n\
                   [  732.0] sendzc-fault: BUG: none, 0 leaks\n\
                   [  733.0] KASAN: null-ptr-deref in range [0x0-0x7]\n";
        assert_eq!(
            kernel_problems(log),
            ["[  733.0] KASAN: null-ptr-deref in range [0x0-0x7]"]
        );
    }

    #[test]
    fn clean_log_has_no_problems() {
        assert!(kernel_problems("[ 0.0] Linux version 7.3.4\n[ 1.0] Run /init\n").is_empty());
    }
}
