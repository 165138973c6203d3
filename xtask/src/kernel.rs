//! Apply the series, configure from the fragments in qemu/, build with
//! ccache in a persistent out-of-tree build directory.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::{Layout, Profile};
use crate::phase::human;

/// The patch files named by `kernel-patches/series`, in order.
pub fn series(layout: &Layout) -> Result<Vec<PathBuf>> {
    let dir = layout.patches();
    let list = dir.join("series");
    let text = fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let mut patches = Vec::new();
    for name in text.lines().map(str::trim) {
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let path = dir.join(name);
        if !path.is_file() {
            bail!("kernel-patches/series names {name}, which does not exist");
        }
        patches.push(path);
    }
    Ok(patches)
}

const GIT_IDENT: [&str; 4] = ["-c", "user.name=xtask", "-c", "user.email=xtask@localhost"];

/// Content fingerprint of the series: the blob ids of its patches.
fn fingerprint(sh: &Shell, patches: &[PathBuf]) -> Result<String> {
    let mut ids = String::new();
    for patch in patches {
        ids.push_str(&cmd!(sh, "git hash-object {patch}").quiet().read()?);
        ids.push('\n');
    }
    Ok(ids)
}

/// Resets the tree to `base` and applies `patches`, unless it already holds
/// exactly them (so that an unchanged series rebuilds nothing).
pub fn apply_series(src: &Path, patches: &[PathBuf]) -> Result<()> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(src);
    let stamp = src.join(".git/sendzc-series");
    let want = fingerprint(&sh, patches)?;
    let clean = cmd!(sh, "git status --porcelain --untracked-files=no")
        .quiet()
        .read()?
        .is_empty();
    if clean && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        eprintln!("  {} patches already applied", patches.len());
        return Ok(());
    }
    let _ = fs::remove_file(&stamp);
    let _ = cmd!(sh, "git am --abort").quiet().ignore_stderr().run();
    cmd!(sh, "git checkout -q -f -B series base").run()?;
    for patch in patches {
        let name = patch.file_name().unwrap_or_default().to_string_lossy();
        let applied = cmd!(sh, "git {GIT_IDENT...} am -q --keep-cr {patch}")
            .quiet()
            .run();
        if applied.is_err() {
            let _ = cmd!(sh, "git am --abort").quiet().ignore_stderr().run();
            bail!("patch {name} does not apply (tree: {})", src.display());
        }
        eprintln!("  applied {name}");
    }
    fs::write(&stamp, want)?;
    Ok(())
}

/// One `CONFIG_FOO=value` requirement from a fragment; `None` means "off".
#[derive(Debug, PartialEq, Eq)]
struct Want {
    name: String,
    value: Option<String>,
}

fn parse_fragment(text: &str) -> Vec<Want> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if let Some(name) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                return Some(Want {
                    name: name.to_string(),
                    value: None,
                });
            }
            if line.starts_with('#') {
                return None;
            }
            let (name, value) = line.split_once('=')?;
            Some(Want {
                name: name.to_string(),
                value: (value != "n").then(|| value.to_string()),
            })
        })
        .collect()
}

/// The fragment lines that did not end up in `.config`, as they were written.
fn not_taken(wants: &[Want], dot_config: &str) -> Vec<String> {
    let set = |name: &str| {
        let prefix = format!("{name}=");
        dot_config
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    };
    wants
        .iter()
        .filter(|w| set(&w.name) != w.value)
        .map(|w| match &w.value {
            Some(v) => format!(
                "{}={v} (got {})",
                w.name,
                set(&w.name).unwrap_or("unset".into())
            ),
            None => format!("{} off (got {})", w.name, set(&w.name).unwrap_or_default()),
        })
        .collect()
}

/// The fragments for `profile`: vm.config, then the profile's own.
fn fragments(layout: &Layout, profile: Profile) -> Result<String> {
    let mut all = String::new();
    for name in [
        "vm.config".to_string(),
        format!("{}.config", profile.name()),
    ] {
        let path = layout.qemu().join(&name);
        all.push_str(
            &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    Ok(all)
}

/// allnoconfig plus the fragments, redone only when the fragments change;
/// then every fragment option is checked against the resulting .config.
pub fn configure(layout: &Layout, src: &Path, build: &Path, profile: Profile) -> Result<()> {
    fs::create_dir_all(build)?;
    let wanted = fragments(layout, profile)?;
    let saved = build.join("fragments.config");
    let dot_config = build.join(".config");
    let fresh = fs::read_to_string(&saved).ok().as_deref() == Some(wanted.as_str());
    if !fresh || !dot_config.exists() {
        fs::write(&saved, &wanted)?;
        let sh = Shell::new()?;
        let _cd = sh.push_dir(src);
        let out = format!("O={}", build.display());
        let all = format!("KCONFIG_ALLCONFIG={}", saved.display());
        cmd!(sh, "make -s {out} {all} allnoconfig")
            .run()
            .context("make allnoconfig failed")?;
    } else {
        eprintln!("  fragments unchanged");
    }
    let config = fs::read_to_string(&dot_config)?;
    let missed = not_taken(&parse_fragment(&wanted), &config);
    if !missed.is_empty() {
        bail!(
            "config options from qemu/vm.config or qemu/{}.config did not take \
             (a dependency is missing or the name changed): {}; config: {}",
            profile.name(),
            missed.join(", "),
            dot_config.display()
        );
    }
    eprintln!(
        "  {} fragment options all present in .config",
        parse_fragment(&wanted).len()
    );
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_parsing() {
        let wants =
            parse_fragment("# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=n\nCONFIG_D=2\n");
        let names: Vec<_> = wants
            .iter()
            .map(|w| (w.name.as_str(), w.value.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("CONFIG_A", Some("y")),
                ("CONFIG_B", None),
                ("CONFIG_C", None),
                ("CONFIG_D", Some("2"))
            ]
        );
    }

    #[test]
    fn reports_options_that_did_not_take() {
        let wants = parse_fragment("CONFIG_A=y\nCONFIG_B=n\nCONFIG_C=y\nCONFIG_D=4\n");
        let config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=2\n";
        assert_eq!(
            not_taken(&wants, config),
            [
                "CONFIG_B off (got y)",
                "CONFIG_C=y (got unset)",
                "CONFIG_D=4 (got 2)"
            ]
        );
    }
}
