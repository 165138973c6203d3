//! The kernel config: allnoconfig plus the fragments in qemu/, and a check
//! that every option of the fragments took.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::layout::{Layout, Profile};

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
