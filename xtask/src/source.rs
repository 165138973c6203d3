//! The kernel source: Debian's linux-source package, fetched with a private
//! apt configuration (the system's apt sources are never touched), checked
//! against `kernel-patches/BASE`, extracted once into the cache as a git
//! repository whose tag `base` is the pristine tree.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;

/// `kernel-patches/BASE`: which package, which version, which tarball.
#[derive(Debug, PartialEq, Eq)]
pub struct Base {
    pub package: String,
    pub version: String,
    pub suite: String,
    pub tarball: String,
    pub sha256: String,
}

impl Base {
    /// `kernel-patches/BASE`.
    pub fn load(layout: &Layout) -> Result<Base> {
        Base::load_from(&layout.patches().join("BASE"))
    }

    /// A BASE file: `kernel-patches/BASE`, `kernel-patches/liburing/BASE`.
    pub fn load_from(path: &Path) -> Result<Base> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Base::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str) -> Result<Base> {
        let field = |key: &str| -> Result<String> {
            text.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .with_context(|| format!("no '{key}:' line"))
        };
        Ok(Base {
            package: field("package")?,
            version: field("version")?,
            suite: field("suite")?,
            tarball: field("tarball")?,
            sha256: field("sha256")?,
        })
    }

    /// What the extracted tree's stamp file holds.
    fn stamp(&self) -> String {
        format!("{} {} {}\n", self.package, self.version, self.sha256)
    }
}

/// The Debian mirror the system already uses, read from its apt sources so
/// that no host name is written into this repository.
fn system_mirror() -> Result<String> {
    let mut candidates = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "sources") {
                candidates.push(fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    candidates.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    candidates
        .iter()
        .flat_map(|text| text.lines())
        .find_map(mirror_from_line)
        .context("no Debian archive URI in /etc/apt/sources.list{,.d/*.sources}")
}

/// A main-archive URI from a deb822 `URIs:` line or a one-line `deb` entry.
fn mirror_from_line(line: &str) -> Option<String> {
    let line = line.trim();
    let uri = if let Some(rest) = line.strip_prefix("URIs:") {
        rest.split_whitespace().next()?
    } else if let Some(rest) = line.strip_prefix("deb ") {
        rest.split_whitespace().find(|w| w.contains("://"))?
    } else {
        return None;
    };
    let uri = uri.trim_end_matches('/');
    uri.ends_with("/debian").then(|| uri.to_string())
}

/// apt-get and apt-cache with lists, cache and sources under the cache dir.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    pub fn new(layout: &Layout) -> Result<PrivateApt> {
        let dir = layout.apt();
        for sub in ["lists/partial", "archives/partial", "etc", "dl"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let mirror = system_mirror()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        // trixie-backports carries linux-source-7.3; sid the liburing source.
        let sources = format!(
            "deb [signed-by={keyring}] {mirror} trixie-backports main\n\
             deb-src [signed-by={keyring}] {mirror} sid main\n"
        );
        fs::write(dir.join("etc/sources.list"), sources)?;
        Ok(PrivateApt { dir })
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::sourcelist={d}/etc/sources.list"),
            "-oDir::Etc::sourceparts=-".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}"),
            format!("-oDir::Cache::Archives={d}/archives"),
            "-oAPT::Sandbox::User=root".into(),
            "-qq".into(),
        ]
    }

    pub fn update(&self, sh: &Shell) -> Result<()> {
        let opts = self.options();
        cmd!(sh, "apt-get {opts...} update")
            .run()
            .context("apt-get update (private lists) failed: is the Debian archive reachable?")
    }

    /// Downloads `package=version` into `dl/`; returns the .deb's path.
    pub fn download(&self, sh: &Shell, package: &str, version: &str) -> Result<PathBuf> {
        let dl = self.fetch(sh, "dl", &["download"], package, version)?;
        find_deb(&dl, package, version)
    }

    /// Downloads the source package `package=version` (.dsc, orig tarball,
    /// Debian tarball) into `src/`; returns that directory.
    pub fn download_source(&self, sh: &Shell, package: &str, version: &str) -> Result<PathBuf> {
        self.fetch(sh, "src", &["source", "--download-only"], package, version)
    }

    /// `apt-get VERB... package=version` in the cache's `subdir`.
    fn fetch(
        &self,
        sh: &Shell,
        subdir: &str,
        verb: &[&str],
        package: &str,
        version: &str,
    ) -> Result<PathBuf> {
        let dir = self.dir.join(subdir);
        fs::create_dir_all(&dir)?;
        let opts = self.options();
        let spec = format!("{package}={version}");
        let _cd = sh.push_dir(&dir);
        cmd!(sh, "apt-get {opts...} {verb...} {spec}")
            .run()
            .with_context(|| {
                format!(
                    "cannot download {spec}: the archive may have moved on; \
                     update the BASE file that names it (and rebase what applies to it)"
                )
            })?;
        Ok(dir)
    }
}

fn find_deb(dir: &Path, package: &str, version: &str) -> Result<PathBuf> {
    // apt escapes ':' in versions as %3a; our versions have no epoch.
    let name = format!("{package}_{version}_all.deb");
    let path = dir.join(&name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!("apt-get download did not produce {name}")
    }
}

pub fn sha256(sh: &Shell, file: &Path) -> Result<String> {
    let out = cmd!(sh, "sha256sum {file}").quiet().read()?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Makes sure `layout.kernel_src()` holds the BASE tree; returns its path.
pub fn ensure(layout: &Layout, base: &Base) -> Result<PathBuf> {
    let src = layout.kernel_src();
    let stamp_path = src.join(".git/sendzc-base");
    if fs::read_to_string(&stamp_path).ok().as_deref() == Some(&base.stamp()) {
        eprintln!(
            "  {} {} (cached, sha256 {})",
            base.package, base.version, base.sha256
        );
        return Ok(src);
    }
    let sh = Shell::new()?;
    let apt = PrivateApt::new(layout)?;
    let deb = match find_deb(&layout.apt().join("dl"), &base.package, &base.version) {
        Ok(deb) => deb,
        Err(_) => {
            eprintln!("  downloading {}={}", base.package, base.version);
            apt.update(&sh)?;
            apt.download(&sh, &base.package, &base.version)?
        }
    };
    let unpack = layout.cache.join("kernel/unpack");
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack)?;
    cmd!(sh, "dpkg-deb -x {deb} {unpack}").run()?;
    let tarball = unpack.join("usr/src").join(&base.tarball);
    let sum = sha256(&sh, &tarball)?;
    eprintln!("  {} {} sha256 {sum}", base.package, base.version);
    if sum != base.sha256 {
        bail!(
            "{} has sha256 {sum}, kernel-patches/BASE says {}",
            tarball.display(),
            base.sha256
        );
    }
    eprintln!("  extracting into {}", src.display());
    let _ = fs::remove_dir_all(&src);
    cmd!(sh, "tar -xJf {tarball} -C {unpack}").run()?;
    let top = base.tarball.trim_end_matches(".tar.xz");
    fs::rename(unpack.join(top), &src)?;
    fs::remove_dir_all(&unpack)?;
    commit_baseline(&sh, &src, base)?;
    fs::write(&stamp_path, base.stamp())?;
    Ok(src)
}

/// Turns the pristine tree into a repository with one commit tagged `base`.
fn commit_baseline(sh: &Shell, src: &Path, base: &Base) -> Result<()> {
    let _cd = sh.push_dir(src);
    let message = format!("{} {}", base.package, base.version);
    cmd!(sh, "git init -q -b pristine").run()?;
    // A background repack of 90k files would compete with the build.
    cmd!(sh, "git config gc.auto 0").run()?;
    // Debian's .gitignore ignores the whole top level: add with -f.
    cmd!(sh, "git add -f -A").run()?;
    cmd!(
        sh,
        "git -c user.name=xtask -c user.email=xtask@localhost commit -q -m {message}"
    )
    .run()?;
    cmd!(sh, "git tag -f base").quiet().run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base() {
        let text = "# comment\npackage: linux-source-7.3\nversion: 7.3.4-1~bpo13+1\n\
                    suite: trixie-backports\ntarball: linux-source-7.3.tar.xz\nsha256: ab12\n";
        let base = Base::parse(text).unwrap();
        assert_eq!(base.version, "7.3.4-1~bpo13+1");
        assert_eq!(base.sha256, "ab12");
    }

    #[test]
    fn base_names_missing_field() {
        let err = Base::parse("package: x\n").unwrap_err();
        assert_eq!(err.to_string(), "no 'version:' line");
    }

    #[test]
    fn mirror_lines() {
        assert_eq!(
            mirror_from_line("URIs: http://example.org/debian").as_deref(),
            Some("http://example.org/debian")
        );
        assert_eq!(
            mirror_from_line("deb [arch=amd64] http://example.org/debian/ bookworm main")
                .as_deref(),
            Some("http://example.org/debian")
        );
        assert_eq!(
            mirror_from_line("URIs: http://example.org/debian-security"),
            None
        );
        assert_eq!(mirror_from_line("# deb http://example.org/debian x"), None);
    }
}
