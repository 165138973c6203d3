//! The command line's options, shared by the commands that build and boot
//! a kernel.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::guest::Accel;
use crate::layout::Profile;
use crate::USAGE;

/// Which of liburing's tests vm-test runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LiburingScope {
    /// qemu/liburing-tests.txt: the tests of the paths the series touches.
    #[default]
    Selection,
    /// Every test program (over an hour per kernel under TCG with KASAN).
    All,
}

/// Options shared by the commands that build and boot a kernel.
#[derive(Default)]
pub struct Options {
    pub liburing: LiburingScope,
    pub profile: Option<Profile>,
    pub kernel_src: Option<PathBuf>,
    pub accel: Option<Accel>,
    pub timeout: Option<Duration>,
    pub test_args: Vec<String>,
}

pub fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--liburing" => {
                options.liburing = match value("--liburing")?.as_str() {
                    "selection" => LiburingScope::Selection,
                    "all" => LiburingScope::All,
                    other => bail!("--liburing takes selection or all, not '{other}'"),
                }
            }
            "--profile" => options.profile = Some(Profile::parse(&value("--profile")?)?),
            "--kernel-src" => options.kernel_src = Some(PathBuf::from(value("--kernel-src")?)),
            "--accel" => {
                options.accel = Some(match value("--accel")?.as_str() {
                    "kvm" => Accel::Kvm,
                    "tcg" => Accel::Tcg,
                    other => bail!("--accel takes kvm or tcg, not '{other}'"),
                })
            }
            "--timeout" => {
                let secs = value("--timeout")?;
                let secs: u64 = secs
                    .parse()
                    .with_context(|| format!("--timeout takes seconds, not '{secs}'"))?;
                options.timeout = Some(Duration::from_secs(secs));
            }
            "--" => {
                options.test_args = it.cloned().collect();
                break;
            }
            other => bail!("unknown option '{other}'\n{USAGE}"),
        }
    }
    Ok(options)
}
