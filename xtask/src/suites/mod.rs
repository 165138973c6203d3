//! The suites that run in the guest, one module each: ours (rust.rs, and
//! the crate's examples in examples.rs), the kernel's zero-copy selftest
//! (selftest.rs) and liburing's (liburing/).
//! Suites written by others are peer suites: we build and run them, we do
//! not edit them. Each says what it runs in the guest ([`PeerSuite`]) and
//! how its result is judged ([`Judge`]).

pub mod examples;
pub mod liburing;
pub mod rust;
pub mod selftest;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::guest::GuestRun;
use crate::kernel::Kernel;
use crate::layout::Layout;
use crate::options::Options;
use crate::phase::Phases;
use crate::report::{tally_logs, Summary, Tally};

/// The peer suites staged for one guest run, and liburing's selection.
pub struct Peers {
    pub suites: Vec<PeerSuite>,
    pub selection: liburing::Selection,
}

/// Builds the suites that run after our tests against `kernel` and stages
/// them into the (emptied) output directory of guest run `label`: the
/// crate's examples, the kernel selftest, then liburing's tests (with
/// kernel-patches/liburing/ applied).
pub fn build_peers(
    layout: &Layout,
    options: &Options,
    kernel: &Kernel,
    label: &str,
) -> Result<Peers> {
    let out = crate::guest::fresh_out(layout, label)?;
    let selection = liburing::selection(layout)?;
    let mut suites = vec![
        examples::build(layout)?,
        selftest::build(layout, &kernel.src, &kernel.build)?,
    ];
    let tree = liburing::build(layout, liburing::Flavour::Patched)?;
    suites.extend(liburing::stage(
        &tree,
        &out,
        liburing::Flavour::Patched,
        liburing::gate::scope(options, &selection),
        &selection.limits,
        liburing::TEST_TIMEOUT,
    )?);
    Ok(Peers { suites, selection })
}

/// What the suites of one guest run came to.
pub struct Judged {
    /// Our tests' libtest totals, plus one per judged peer suite.
    pub tally: Tally,
    pub summary: Summary,
    /// One line per peer suite that failed or reported nothing.
    pub failures: Vec<String>,
}

/// Judges the guest run: our tests by libtest's lines, exit-judged peer
/// suites by their status, liburing by its gate against the base kernel.
pub fn judge(
    layout: &Layout,
    options: &Options,
    phases: &mut Phases,
    kernel: &Kernel,
    run: &GuestRun,
    peers: &Peers,
) -> Result<Judged> {
    let mut judged = Judged {
        tally: tally_logs(&run.out.join("results")),
        summary: Summary {
            cases: crate::report::case_counts(&run.out.join("cases.txt")),
            ..Summary::default()
        },
        failures: Vec::new(),
    };
    let reported = results(&run.out, &peers.suites);
    for suite in &peers.suites {
        let Some((_, exited_ok)) = reported.iter().find(|(n, _)| *n == suite.name) else {
            judged
                .failures
                .push(format!("{} reported no result", suite.name));
            continue;
        };
        if suite.judge == Judge::Exit {
            let first_failure = log(&run.out, &suite.name)
                .ok()
                .and_then(|l| first_run_failure(&l));
            let word = match (exited_ok, &first_failure) {
                (true, None) => "passed",
                (true, Some(_)) => "passed on its second run",
                (false, _) => "FAILED",
            };
            eprintln!("  peer suite {}: {word}", suite.name);
            if let Some(why) = first_failure {
                eprintln!("    its first run failed: {why}");
            }
            judged
                .summary
                .peers
                .push((suite.name.clone(), "not run".into(), word.into()));
            judged.tally.count(*exited_ok);
            if !exited_ok {
                judged.failures.push(format!("{} failed", suite.name));
            }
        }
    }
    let liburing_reported = peers
        .suites
        .iter()
        .filter(|s| s.judge == Judge::Host)
        .all(|s| reported.iter().any(|(n, _)| *n == s.name));
    if liburing_reported {
        let patched = liburing::results_of(&run.out, &peers.suites)?;
        let lost = liburing::gate::judge(
            layout,
            options,
            phases,
            kernel,
            &peers.selection,
            patched,
            &mut judged.summary,
        )?;
        judged.tally.count(lost.is_empty());
        if !lost.is_empty() {
            judged.failures.push(format!(
                "liburing tests that pass on the base kernel but not on the patched \
                 one: {}",
                lost.join(" ")
            ));
        }
    }
    Ok(judged)
}

/// A suite the guest runs with `command` from `dir`.
pub struct PeerSuite {
    pub name: String,
    pub dir: PathBuf,
    pub judge: Judge,
    pub command: String,
}

/// Who decides whether a suite passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// Its exit status.
    Exit,
    /// The host, from the suite's log (OUTDIR/peer-NAME.log).
    Host,
}

/// The plan line guest-run.sh reads: name, directory, judge, command.
pub fn plan_line(suite: &PeerSuite) -> String {
    let judge = match suite.judge {
        Judge::Exit => "exit",
        Judge::Host => "host",
    };
    format!(
        "{}\t{}\t{judge}\t{}\n",
        suite.name,
        suite.dir.display(),
        suite.command
    )
}

/// `(suite, exited 0)` for each of `suites` whose exit status the guest
/// wrote (OUTDIR/peer-NAME.status): read from a file of its own, since a
/// kernel message can land in the middle of a console line.
pub fn results(out: &Path, suites: &[PeerSuite]) -> Vec<(String, bool)> {
    suites
        .iter()
        .filter_map(|suite| {
            let status = fs::read_to_string(out.join(format!("peer-{}.status", suite.name)));
            let code: i32 = status.ok()?.trim().parse().ok()?;
            Some((suite.name.clone(), code == 0))
        })
        .collect()
}

/// What `qemu/rerun-once.sh` prints between a failed first run and the
/// second.
const RERUN_MARK: &str = "sendzc-rerun: the first run failed";

/// The first run's last line and status (`... refused (exit 1)`), when a
/// suite's first run failed and `rerun-once.sh` ran it again.
fn first_run_failure(log: &str) -> Option<String> {
    let (before, after) = log.split_once(RERUN_MARK)?;
    let status = after.split(';').next().unwrap_or_default().trim();
    let last = before.lines().rev().find(|l| !l.trim().is_empty());
    Some(format!("{} {status}", last.unwrap_or("no output").trim()))
}

/// The output of suite `name` in the guest's output directory.
pub fn log(out: &Path, name: &str) -> Result<String> {
    let path = out.join(format!("peer-{name}.log"));
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_failed_first_run() {
        let log = "ipv4 udp -m 1 -t 1 -n 32\n\
                   ./io_uring_zerocopy_tx: send failed: Connection refused\n\
                   sendzc-rerun: the first run failed (exit 1); running it again\n\
                   ipv4 udp -m 1 -t 1 -n 32\nOK. All tests passed\n";
        assert_eq!(
            first_run_failure(log).as_deref(),
            Some("./io_uring_zerocopy_tx: send failed: Connection refused (exit 1)")
        );
        assert_eq!(first_run_failure("ipv4 udp\nOK. All tests passed\n"), None);
    }

    #[test]
    fn reads_peer_results() {
        let out = std::env::temp_dir().join(format!("sendzc-peer-results-{}", std::process::id()));
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("peer-kernel-selftest.status"), "0\n").unwrap();
        fs::write(out.join("peer-liburing.status"), "1\n").unwrap();
        fs::write(out.join("peer-garbled.status"), "[ 1.0] x\n").unwrap();
        let suite = |name: &str| PeerSuite {
            name: name.into(),
            dir: PathBuf::from("/"),
            judge: Judge::Exit,
            command: "true".into(),
        };
        let suites = ["kernel-selftest", "liburing", "garbled", "missing"].map(suite);
        let reported = results(&out, &suites);
        fs::remove_dir_all(&out).unwrap();
        // A suite without a readable status reported nothing.
        assert_eq!(
            reported,
            [
                ("kernel-selftest".to_string(), true),
                ("liburing".to_string(), false)
            ]
        );
    }

    /// logged-run.sh passes each argument as it is, and the log holds
    /// everything the command wrote, standard error included.
    #[test]
    fn logged_run_keeps_arguments_and_output() {
        use std::process::Command;

        let dir = std::env::temp_dir().join(format!("sendzc-logged-run-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/logged-run.sh");
        let log = dir.join("x.log");
        let output = Command::new(script)
            .arg(&log)
            .arg(&dir)
            .args([
                "sh",
                "-c",
                "echo \"$1|$2\"; echo err >&2; exit 4",
                "sh",
                "a b",
                "*",
            ])
            .output()
            .unwrap();
        let logged = fs::read_to_string(&log).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(output.status.code(), Some(4));
        assert_eq!(logged, "a b|*\nerr\n");
    }

    /// A suite that leaves a process behind holding its output (as a test
    /// that runtests.sh timed out can) still ends: logged-run.sh returns
    /// the suite's status once the suite itself exits. With a pipe to tee
    /// it waited for the leftover process, and the guest hung until the
    /// host killed it.
    #[test]
    fn peer_suite_ends_when_a_leftover_process_holds_its_output() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        use std::time::{Duration, Instant};

        let dir = std::env::temp_dir().join(format!("sendzc-peer-suite-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("suite.sh"),
            "#!/bin/sh\nsleep 30 &\necho $! > leftover.pid\necho suite-output\nexit 3\n",
        )
        .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/logged-run.sh");
        let log = dir.join("peer-x.log");
        let console = dir.join("console");
        // its own process group, so that a hung run can be killed whole
        let mut child = Command::new(script)
            .arg(&log)
            .arg(&dir)
            .args(["sh", "./suite.sh"])
            .stdout(fs::File::create(&console).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                let group = libc::pid_t::try_from(child.id()).unwrap();
                // SAFETY: killpg takes no pointers; the group is the one
                // this test created for logged-run.sh and its children.
                unsafe { libc::killpg(group, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let leftover: libc::pid_t = fs::read_to_string(dir.join("leftover.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill takes no pointers; the pid is the leftover process
        // the suite started (in the test's group, still running or gone).
        unsafe { libc::kill(leftover, libc::SIGKILL) };
        let streamed = fs::read_to_string(&console).unwrap();
        let logged = fs::read_to_string(&log).unwrap();
        fs::remove_dir_all(&dir).unwrap();

        let status = status.expect("logged-run.sh still running after 20 s");
        assert_eq!(status.code(), Some(3));
        assert_eq!(logged, "suite-output\n");
        assert!(streamed.contains("suite-output"), "streamed: {streamed:?}");
    }
}
