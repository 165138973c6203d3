//! Where things live: the repository, and the cache outside it that holds
//! the kernel source, the build trees, ccache and the virtme-ng venv.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Kernel build flavours, each with its own config fragment and build tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// KASAN, lockdep, kmemleak, fault injection: what the tests run on.
    Debug,
    /// No debugging options: what the benchmarks run on.
    Bench,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Profile> {
        match s {
            "debug" => Ok(Profile::Debug),
            "bench" => Ok(Profile::Bench),
            _ => bail!("unknown profile '{s}' (expected 'debug' or 'bench')"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Bench => "bench",
        }
    }
}

/// A short stable name for cache entries (FNV-1a, as hex): the same across
/// runs and Rust versions, unlike DefaultHasher.
pub fn stable_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    format!("{hash:016x}")
}

pub struct Layout {
    /// The repository checkout.
    pub root: PathBuf,
    /// `$SENDZC_CACHE`, else `$XDG_CACHE_HOME/sendzc-iov`, else `~/.cache/sendzc-iov`.
    pub cache: PathBuf,
}

impl Layout {
    pub fn detect() -> Result<Layout> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let cache = match (
            std::env::var_os("SENDZC_CACHE"),
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
        ) {
            (Some(dir), _, _) => PathBuf::from(dir),
            (None, Some(xdg), _) => PathBuf::from(xdg).join("sendzc-iov"),
            (None, None, Some(home)) => PathBuf::from(home).join(".cache/sendzc-iov"),
            (None, None, None) => bail!("cannot place the cache: set SENDZC_CACHE or HOME"),
        };
        Ok(Layout { root, cache })
    }

    pub fn patches(&self) -> PathBuf {
        self.root.join("kernel-patches")
    }

    pub fn qemu(&self) -> PathBuf {
        self.root.join("qemu")
    }

    /// Logs and results of VM runs, inside the repository's target dir.
    pub fn vm_out(&self) -> PathBuf {
        self.root.join("target/vm")
    }

    /// The C senders the guest tests run, built on the host.
    pub fn c_senders(&self) -> PathBuf {
        self.vm_out().join("c-senders")
    }

    pub fn apt(&self) -> PathBuf {
        self.cache.join("apt")
    }

    pub fn venv(&self) -> PathBuf {
        self.cache.join("venv")
    }

    pub fn vng(&self) -> PathBuf {
        self.venv().join("bin/vng")
    }

    pub fn ccache(&self) -> PathBuf {
        self.cache.join("ccache")
    }

    /// The extracted linux-source tree, a git repository whose tag `base`
    /// is the pristine tarball.
    pub fn kernel_src(&self) -> PathBuf {
        self.cache.join("kernel/src")
    }

    /// Build tree for `profile`; `tree` tells apart the builds of different
    /// source trees (`--kernel-src`).
    pub fn build_dir(&self, tree: &str, profile: Profile) -> PathBuf {
        self.cache
            .join("kernel")
            .join(format!("build-{tree}-{}", profile.name()))
    }
}
