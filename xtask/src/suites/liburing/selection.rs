//! `qemu/liburing-tests.txt`: which of liburing's tests run by default and
//! the limits some run under; and the staging of the built tests into the
//! guest's directory as peer suites.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::Flavour;
use crate::layout::Layout;
use crate::suites::{Judge, PeerSuite};

/// A test that runs alone, with its own limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub test: String,
    /// RLIMIT_AS in MiB (`as_mib=`), e.g. to make a test take its own
    /// fallback for when a large allocation fails.
    pub address_space_mib: Option<u64>,
    /// Its own runtests.sh TIMEOUT (`timeout=`), in guest seconds.
    pub timeout: Option<u32>,
}

/// `qemu/liburing-tests.txt`: the tests vm-test runs by default, and the
/// limits some of them run under whatever the scope.
pub struct Selection {
    pub tests: Vec<String>,
    pub limits: Vec<Limits>,
}

pub fn selection(layout: &Layout) -> Result<Selection> {
    let path = layout.qemu().join("liburing-tests.txt");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_selection(&text).with_context(|| format!("in {}", path.display()))
}

pub(super) fn parse_selection(text: &str) -> Result<Selection> {
    let mut selection = Selection {
        tests: Vec::new(),
        limits: Vec::new(),
    };
    for line in text.lines() {
        let mut words = line
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace();
        let Some(test) = words.next() else {
            continue;
        };
        selection.tests.push(test.to_string());
        let mut limits = Limits {
            test: test.to_string(),
            address_space_mib: None,
            timeout: None,
        };
        for word in words {
            match word.split_once('=') {
                Some(("as_mib", v)) => limits.address_space_mib = Some(v.parse()?),
                Some(("timeout", v)) => limits.timeout = Some(v.parse()?),
                _ => bail!("{test}: unknown setting '{word}' (as_mib=, timeout=)"),
            }
        }
        if limits.address_space_mib.is_some() || limits.timeout.is_some() {
            selection.limits.push(limits);
        }
    }
    if selection.tests.is_empty() {
        bail!("no test named");
    }
    Ok(selection)
}

/// The suite's test programs: the `*.t` files the build produced.
fn test_programs(test_dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(test_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".t"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no test programs (*.t) in {}", test_dir.display());
    }
    Ok(names)
}

/// Copies the built test directory into `run_dir` (the guest can write
/// there: the tests create files in their working directory) and returns
/// the peer suites that run its programs with runtests.sh: all of them, or
/// those named in `only`; one suite for the tests without `limits`, one
/// for each test with. Each test may run `timeout` seconds, or its own
/// limit if that is longer.
pub fn stage(
    tree: &Path,
    run_dir: &Path,
    flavour: Flavour,
    only: Option<&[String]>,
    limits: &[Limits],
    timeout: u32,
) -> Result<Vec<PeerSuite>> {
    let sh = Shell::new()?;
    let dest = run_dir.join(flavour.suite_name());
    let _ = fs::remove_dir_all(&dest);
    let test_dir = tree.join("test");
    cmd!(sh, "cp -a {test_dir} {dest}").run()?;
    let mut programs = test_programs(&dest)?;
    if let Some(only) = only {
        if let Some(missing) = only.iter().find(|t| !programs.contains(t)) {
            bail!(
                "{missing} is to run, but liburing {} built no such test program",
                flavour.name()
            );
        }
        programs.retain(|p| only.contains(p));
    }
    eprintln!(
        "  liburing {}: {} test programs staged in {}",
        flavour.name(),
        programs.len(),
        dest.display()
    );
    let suite = |name: String, command: String| PeerSuite {
        name,
        dir: dest.clone(),
        // runtests.sh fails on the base kernel too: the host compares.
        judge: Judge::Host,
        command,
    };
    let alone: Vec<&Limits> = limits
        .iter()
        .filter(|l| programs.contains(&l.test))
        .collect();
    let together: Vec<&str> = programs
        .iter()
        .filter(|p| !alone.iter().any(|l| l.test == **p))
        .map(String::as_str)
        .collect();
    let mut suites = Vec::new();
    if !together.is_empty() {
        suites.push(suite(
            flavour.suite_name(),
            format!("env TIMEOUT={timeout} ./runtests.sh {}", together.join(" ")),
        ));
    }
    for (n, l) in alone.iter().enumerate() {
        let rlimit = l
            .address_space_mib
            .map(|mib| format!("prlimit --as={} ", mib << 20))
            .unwrap_or_default();
        let timeout = l.timeout.map_or(timeout, |own| own.max(timeout));
        suites.push(suite(
            format!("{}-{}", flavour.suite_name(), n + 2),
            format!("{rlimit}env TIMEOUT={timeout} ./runtests.sh {}", l.test),
        ));
    }
    Ok(suites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_selection() {
        let s = parse_selection("# c\na.t\n\nb.t  as_mib=64 timeout=300 # why\n").unwrap();
        assert_eq!(s.tests, ["a.t", "b.t"]);
        assert_eq!(
            s.limits,
            [Limits {
                test: "b.t".into(),
                address_space_mib: Some(64),
                timeout: Some(300)
            }]
        );
        assert!(parse_selection("a.t as=1\n").is_err());
        assert!(parse_selection("# nothing\n").is_err());
    }

    /// The runtests.sh command lines stage() gives a tree of `programs`
    /// staged with `limits` and `timeout`.
    fn commands(programs: &[&str], limits: &[Limits], timeout: u32) -> Vec<String> {
        let scratch = std::env::temp_dir().join(format!(
            "sendzc-liburing-stage-{}-{timeout}",
            std::process::id()
        ));
        let tests = scratch.join("tree/test");
        fs::create_dir_all(&tests).unwrap();
        fs::create_dir_all(scratch.join("run")).unwrap();
        for p in programs {
            fs::write(tests.join(p), "").unwrap();
        }
        let suites = stage(
            &scratch.join("tree"),
            &scratch.join("run"),
            Flavour::Patched,
            None,
            limits,
            timeout,
        )
        .unwrap();
        fs::remove_dir_all(&scratch).unwrap();
        suites.into_iter().map(|s| s.command).collect()
    }

    #[test]
    fn every_test_gets_the_timeout_or_its_own_longer_one() {
        let limits = [
            Limits {
                test: "long.t".into(),
                address_space_mib: None,
                timeout: Some(300),
            },
            Limits {
                test: "short.t".into(),
                address_space_mib: None,
                timeout: Some(90),
            },
            Limits {
                test: "capped.t".into(),
                address_space_mib: Some(48),
                timeout: None,
            },
        ];
        let programs = ["a.t", "b.t", "capped.t", "long.t", "short.t"];
        assert_eq!(
            commands(&programs, &limits, 60),
            [
                "env TIMEOUT=60 ./runtests.sh a.t b.t",
                "env TIMEOUT=300 ./runtests.sh long.t",
                "env TIMEOUT=90 ./runtests.sh short.t",
                "prlimit --as=50331648 env TIMEOUT=60 ./runtests.sh capped.t",
            ]
        );
        assert_eq!(
            commands(&programs, &limits, 240),
            [
                "env TIMEOUT=240 ./runtests.sh a.t b.t",
                "env TIMEOUT=300 ./runtests.sh long.t",
                "env TIMEOUT=240 ./runtests.sh short.t",
                "prlimit --as=50331648 env TIMEOUT=240 ./runtests.sh capped.t",
            ]
        );
    }
}
