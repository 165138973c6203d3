//! liburing's test suite, from Debian's liburing source package: built as
//! released for the base kernel, and with kernel-patches/liburing/ applied
//! for the patched kernel, then run in the guest by its own runtests.sh.
//!
//! This file builds both flavours; ffi_map.rs applies the series (based on
//! liburing's master) to the release, selection.rs says which tests run and
//! stages them, results.rs reads runtests.sh's verdicts, and gate.rs judges
//! them against the base kernel's.

mod ffi_map;
pub mod gate;
mod results;
mod selection;

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;
use crate::source::{self, Base, PrivateApt};

pub use results::{results_of, Results};
pub use selection::{selection, stage, Selection};

/// Seconds each test may run (runtests.sh's TIMEOUT, guest seconds). Under
/// TCG with KASAN a few stress tests need more than liburing's default of
/// 60: they are reported as timed out, on both kernels alike.
pub const TEST_TIMEOUT: u32 = 60;

/// Seconds each test may run when the gate runs it again, after it did not
/// pass on the patched kernel. Timing out is not failing ("may not be a
/// failure", runtests.sh says): under TCG with KASAN, tests such as nop.t
/// and recvsend_bundle.t take 50-60 s on either kernel and cross the line
/// by chance. A second chance with the same line would judge the host's
/// load, not the series; a test that still runs after four times as long
/// hangs.
pub const RERUN_TIMEOUT: u32 = 4 * TEST_TIMEOUT;

/// Which liburing: as released, or with our series applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Released,
    Patched,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Released => "released",
            Flavour::Patched => "patched",
        }
    }

    /// The peer suite's name in the guest's `peer-result:` lines.
    pub fn suite_name(self) -> String {
        format!("liburing-{}", self.name())
    }
}

fn dir(layout: &Layout) -> PathBuf {
    layout.patches().join("liburing")
}

pub fn base(layout: &Layout) -> Result<Base> {
    Base::load_from(&dir(layout).join("BASE"))
}

/// The patch files named by `kernel-patches/liburing/series`, in order;
/// none if there is no series file.
pub fn series(layout: &Layout) -> Result<Vec<PathBuf>> {
    let list = dir(layout).join("series");
    let Ok(text) = fs::read_to_string(&list) else {
        return Ok(Vec::new());
    };
    let mut patches = Vec::new();
    for name in text.lines().map(str::trim) {
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let path = dir(layout).join(name);
        if !path.is_file() {
            bail!("kernel-patches/liburing/series names {name}, which does not exist");
        }
        patches.push(path);
    }
    Ok(patches)
}

/// The orig tarball of BASE, downloaded once and checked against its sha256.
fn tarball(layout: &Layout, base: &Base) -> Result<PathBuf> {
    let sh = Shell::new()?;
    let path = layout.apt().join("src").join(&base.tarball);
    if !path.is_file() {
        eprintln!(
            "  downloading source package {}={}",
            base.package, base.version
        );
        let apt = PrivateApt::new(layout)?;
        apt.update(&sh)?;
        apt.download_source(&sh, &base.package, &base.version)?;
    }
    let sum = source::sha256(&sh, &path)?;
    if sum != base.sha256 {
        bail!(
            "{} has sha256 {sum}, kernel-patches/liburing/BASE says {}",
            path.display(),
            base.sha256
        );
    }
    Ok(path)
}

/// What a built tree was built from: tarball and patch contents.
fn fingerprint(sh: &Shell, base: &Base, patches: &[PathBuf]) -> Result<String> {
    let mut ids = format!("{} {}\n", base.tarball, base.sha256);
    for patch in patches {
        ids.push_str(&cmd!(sh, "git hash-object {patch}").quiet().read()?);
        ids.push('\n');
    }
    Ok(ids)
}

/// Extracts, patches and builds liburing and its tests in the cache, unless
/// that tree is already built from the same inputs; returns the tree.
pub fn build(layout: &Layout, flavour: Flavour) -> Result<PathBuf> {
    let base = base(layout)?;
    let patches = match flavour {
        Flavour::Released => Vec::new(),
        Flavour::Patched => series(layout)?,
    };
    let sh = Shell::new()?;
    let tree = layout.cache.join("liburing").join(flavour.name());
    let stamp = tree.join(".sendzc-built");
    let want = fingerprint(&sh, &base, &patches)?;
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        eprintln!(
            "  liburing {} ({}, {} patches): built",
            base.version,
            flavour.name(),
            patches.len()
        );
        return Ok(tree);
    }
    let tarball = tarball(layout, &base)?;
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    cmd!(sh, "tar -xzf {tarball} -C {tree} --strip-components=1").run()?;
    let _cd = sh.push_dir(&tree);
    for patch in &patches {
        let name = patch.file_name().unwrap_or_default().to_string_lossy();
        ffi_map::apply(&sh, patch)
            .with_context(|| format!("liburing patch {name} does not apply"))?;
        eprintln!("  applied {name}");
    }
    configure(&sh)?;
    make(&sh).with_context(|| format!("building liburing ({}) failed", flavour.name()))?;
    fs::write(&stamp, want)?;
    eprintln!(
        "  liburing {} ({}, {} patches) built in {}",
        base.version,
        flavour.name(),
        patches.len(),
        tree.display()
    );
    Ok(tree)
}

/// `kernel-patches/liburing/series` patch by patch on a scratch tree: each
/// applies without whitespace errors, and the library, its tests and its
/// examples build without a warning after each one.
pub fn check_series(layout: &Layout) -> Result<()> {
    let patches = series(layout)?;
    if patches.is_empty() {
        eprintln!("  kernel-patches/liburing/series is empty or missing: nothing to check");
        return Ok(());
    }
    let base = base(layout)?;
    let tarball = tarball(layout, &base)?;
    let sh = Shell::new()?;
    let tree = layout.cache.join("liburing/check");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    cmd!(sh, "tar -xzf {tarball} -C {tree} --strip-components=1").run()?;
    let _cd = sh.push_dir(&tree);
    configure(&sh)?;
    for (n, patch) in patches.iter().enumerate() {
        let name = patch.file_name().unwrap_or_default().to_string_lossy();
        ffi_map::apply(&sh, patch)
            .with_context(|| format!("liburing patch {name} does not apply cleanly"))?;
        make(&sh).with_context(|| format!("liburing does not build after {name}"))?;
        eprintln!("  {}/{} {name}: applies, builds", n + 1, patches.len());
    }
    Ok(())
}

fn configure(sh: &Shell) -> Result<()> {
    cmd!(sh, "./configure --cc=gcc --cxx=g++")
        .quiet()
        .ignore_stdout()
        .run()
        .context("liburing's configure failed")
}

/// The library, the tests and the examples (liburing's `all`); a compiler
/// warning is an error (the release builds without any with gcc 12).
fn make(sh: &Shell) -> Result<()> {
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let out = cmd!(sh, "make -s -j{jobs}")
        .quiet()
        .ignore_status()
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning:")).collect();
    if !out.status.success() || !warnings.is_empty() {
        for line in stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  | {line}");
        }
        bail!(
            "make failed ({}) or warned ({} warning(s))",
            out.status,
            warnings.len()
        );
    }
    Ok(())
}
