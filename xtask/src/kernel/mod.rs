//! The kernel under test, from source to bzImage and uapi headers: the
//! series on Debian's tree, the unpatched base tree, or a tree of the
//! user's own (`--kernel-src`), for any profile. The source download is in
//! source.rs, the config in config.rs, the build in make.rs.

mod config;
mod make;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::coverage;
use crate::layout::{stable_hash, Layout, Profile};
use crate::options::Options;
use crate::phase::Phases;
use crate::source;

pub use config::configure;
pub use make::make;

/// A built kernel, ready to boot.
pub struct Kernel {
    pub bzimage: PathBuf,
    pub src: PathBuf,
    pub build: PathBuf,
    /// True when the tree carries the series, so the per-iovec feature must
    /// be there: tests that need it fail instead of skipping.
    pub expect_feature: bool,
    /// The tree's commit when it was built, if it is a git tree: the series
    /// tree is reset to `base` later when the gate builds the base kernel.
    pub commit: Option<String>,
}

impl Kernel {
    /// The uapi headers `make headers_install` put in the build tree.
    pub fn headers(&self) -> PathBuf {
        self.build.join("usr/include")
    }
}

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

/// A short stable name for a custom source tree's build directory.
fn tree_id(dir: &Path) -> String {
    format!("custom-{}", stable_hash(dir.as_os_str().as_encoded_bytes()))
}

fn custom_tree(dir: &Path) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--kernel-src {}", dir.display()))?;
    if !dir.join("io_uring/net.c").is_file() {
        bail!(
            "--kernel-src {} is not a kernel tree (no io_uring/net.c)",
            dir.display()
        );
    }
    eprintln!(
        "  using {} as it is (kernel-patches/ not applied)",
        dir.display()
    );
    Ok(dir)
}

/// source, patch, config, build (setup has run before).
pub fn build(layout: &Layout, options: &Options, phases: &mut Phases) -> Result<Kernel> {
    let profile = options.profile.unwrap_or(Profile::Debug);
    let (src, tree, expect_feature) = match &options.kernel_src {
        Some(dir) => {
            let src = phases.run("source", || custom_tree(dir))?;
            let id = tree_id(&src);
            (src, id, true)
        }
        None => {
            let base = source::Base::load(layout)?;
            let src = phases.run("source", || source::ensure(layout, &base))?;
            let patches = series(layout)?;
            phases.run("patch", || apply_series(&src, &patches))?;
            (src, "series".to_string(), !patches.is_empty())
        }
    };
    build_tree(layout, phases, src, &tree, profile, expect_feature)
}

/// The unpatched base kernel: the same tree at `base`, so that objects
/// ccache saw for the series hit again.
pub fn build_base(layout: &Layout, phases: &mut Phases, profile: Profile) -> Result<Kernel> {
    let base = source::Base::load(layout)?;
    let src = phases.run("source", || source::ensure(layout, &base))?;
    phases.run("base tree", || apply_series(&src, &[]))?;
    build_tree(layout, phases, src, "base", profile, false)
}

/// config and build of `src` in the build tree of `tree` ("series", "base"
/// or a custom tree's id); the phases of trees other than the series say
/// which tree they are for.
fn build_tree(
    layout: &Layout,
    phases: &mut Phases,
    src: PathBuf,
    tree: &str,
    profile: Profile,
    expect_feature: bool,
) -> Result<Kernel> {
    let build = layout.build_dir(tree, profile);
    let phase = |step: &str| match tree {
        "series" => step.to_string(),
        _ => format!("{tree} {step}"),
    };
    phases.run(&phase("config"), || {
        configure(layout, &src, &build, profile)
    })?;
    let log = layout
        .vm_out()
        .join(format!("kernel-build-{tree}-{}.log", profile.name()));
    // Only the series' own debug build is profiled: the base tree has no
    // added lines, and a custom tree no `base` to diff against.
    let coverage_vars = match (tree, profile) {
        ("series", Profile::Debug) => coverage::make_vars(&src)?,
        _ => Vec::new(),
    };
    phases.run(&phase("build"), || {
        let mut targets = vec!["bzImage", "headers_install"];
        targets.extend(coverage_vars.iter().map(String::as_str));
        make(layout, &src, &build, &targets, &log)
    })?;
    let commit = head_commit(&src);
    Ok(Kernel {
        bzimage: build.join("arch/x86/boot/bzImage"),
        src,
        build,
        expect_feature,
        commit,
    })
}

/// `git rev-parse HEAD` of `src`, if it is a git tree.
pub fn head_commit(src: &Path) -> Option<String> {
    let sh = Shell::new().ok()?;
    let _cd = sh.push_dir(src);
    cmd!(sh, "git rev-parse HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_ids_differ_per_path() {
        assert_ne!(tree_id(Path::new("/a")), tree_id(Path::new("/b")));
        assert_eq!(tree_id(Path::new("/a")), tree_id(Path::new("/a")));
    }
}
