//! The io-uring crate series (kernel-patches/io-uring-crate/): the
//! published package from cargo's download, the patches applied one by
//! one with the crate's own tests after each, then crosscheck/ against the
//! patched crate.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;
use crate::source::{self, Base};

const GIT_IDENT: [&str; 4] = ["-c", "user.name=xtask", "-c", "user.email=xtask@localhost"];

fn dir(layout: &Layout) -> PathBuf {
    layout.patches().join("io-uring-crate")
}

/// The patch files named by the series file, in order.
fn series(layout: &Layout) -> Result<Vec<PathBuf>> {
    let list = dir(layout).join("series");
    let text = fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|name| {
            let path = dir(layout).join(name);
            match path.is_file() {
                true => Ok(path),
                false => {
                    bail!("kernel-patches/io-uring-crate/series names {name}, which does not exist")
                }
            }
        })
        .collect()
}

/// The version of `package` in Cargo.lock.
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_string());
        }
    }
    None
}

/// The `.crate` file of BASE in cargo's download cache, fetched if need be.
fn package(sh: &Shell, layout: &Layout, base: &Base) -> Result<PathBuf> {
    let lock = fs::read_to_string(layout.root.join("Cargo.lock"))?;
    let locked = locked_version(&lock, &base.package);
    if locked.as_deref() != Some(base.version.as_str()) {
        bail!(
            "kernel-patches/io-uring-crate/BASE is {} {}, but Cargo.lock has {:?}: rebase the series",
            base.package,
            base.version,
            locked
        );
    }
    let _cd = sh.push_dir(&layout.root);
    cmd!(sh, "cargo fetch --quiet")
        .run()
        .context("cargo fetch failed")?;
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cargo"),
    };
    let cache = cargo_home.join("registry/cache");
    let found = fs::read_dir(&cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .flatten()
        .map(|index| index.path().join(&base.tarball))
        .find(|p| p.is_file())
        .with_context(|| format!("{} is not in {}", base.tarball, cache.display()))?;
    let sum = source::sha256(sh, &found)?;
    if sum != base.sha256 {
        bail!(
            "{} has sha256 {sum}, BASE says {}",
            found.display(),
            base.sha256
        );
    }
    Ok(found)
}

/// `cargo test` in `tree`, quietly; fails with its output.
fn cargo_test(sh: &Shell, tree: &Path, target: &Path) -> Result<()> {
    let _cd = sh.push_dir(tree);
    let _env = sh.push_env("CARGO_TARGET_DIR", target);
    let out = cmd!(sh, "cargo test --quiet").ignore_status().output()?;
    if !out.status.success() {
        eprint!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("cargo test failed in {}", tree.display());
    }
    Ok(())
}

/// Applies the series patch by patch, the crate's tests after each, then
/// the crosscheck against the patched crate.
pub fn check_series(layout: &Layout) -> Result<()> {
    let patches = series(layout)?;
    let base = Base::load_from(&dir(layout).join("BASE"))?;
    let sh = Shell::new()?;
    let crate_file = package(&sh, layout, &base)?;
    let work = layout.cache.join("io-uring-crate");
    let tree = work.join("check");
    let target = work.join("target");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    cmd!(sh, "tar -xzf {crate_file} -C {tree} --strip-components=1").run()?;
    {
        let _cd = sh.push_dir(&tree);
        cmd!(sh, "git init -q -b base").run()?;
        cmd!(sh, "git add -f -A").run()?;
        cmd!(sh, "git {GIT_IDENT...} commit -q -m base").run()?;
    }
    for (n, patch) in patches.iter().enumerate() {
        let name = patch.file_name().unwrap_or_default().to_string_lossy();
        {
            let _cd = sh.push_dir(&tree);
            cmd!(sh, "git {GIT_IDENT...} am -q {patch}")
                .quiet()
                .run()
                .with_context(|| format!("io-uring crate patch {name} does not apply"))?;
        }
        cargo_test(&sh, &tree, &target).with_context(|| format!("after {name}"))?;
        eprintln!(
            "  {}/{} {name}: applies, the crate's tests pass",
            n + 1,
            patches.len()
        );
    }
    let cross = work.join("crosscheck");
    let _ = fs::remove_dir_all(&cross);
    fs::create_dir_all(&cross)?;
    let tests = dir(layout).join("crosscheck/tests");
    cmd!(sh, "cp -r {tests} {cross}").run()?;
    let uapi = layout.root.join("uapi");
    fs::write(
        cross.join("Cargo.toml"),
        format!(
            "[package]\nname = \"crosscheck\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\nio-uring = \"{}\"\nlibc = \"0.2\"\n\
             sendzc-iov = {{ path = \"{}\" }}\n\n[patch.crates-io]\nio-uring = {{ path = \"{}\" }}\n",
            base.version,
            uapi.display(),
            tree.display()
        ),
    )?;
    fs::create_dir_all(cross.join("src"))?;
    fs::write(cross.join("src/lib.rs"), "")?;
    cargo_test(&sh, &cross, &target)
        .context("crosscheck: the patched builders differ from sendzc-iov's")?;
    eprintln!("  crosscheck: the patched crate's builders match sendzc-iov's");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_locked_version() {
        let lock = "[[package]]\nname = \"io-uring\"\nversion = \"0.7.15\"\nsource = \"x\"\n";
        assert_eq!(locked_version(lock, "io-uring").as_deref(), Some("0.7.15"));
        assert_eq!(locked_version(lock, "libc"), None);
    }

    #[test]
    fn the_series_is_based_on_the_locked_crate() {
        let layout = Layout::detect().unwrap();
        let base = Base::load_from(&dir(&layout).join("BASE")).unwrap();
        let lock = fs::read_to_string(layout.root.join("Cargo.lock")).unwrap();
        assert_eq!(locked_version(&lock, &base.package), Some(base.version));
        assert!(!series(&layout).unwrap().is_empty());
    }
}
