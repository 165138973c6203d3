//! The crate's examples, run in the guest as users would run them: the
//! TCP framing client and server, and the UDP GSO sender, each checking
//! every byte at its receivers; judged by their exit status.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use super::{Judge, PeerSuite};
use crate::layout::Layout;

/// Each example with the arguments it runs with in the guest.
const RUNS: &[(&str, &str)] = &[("framed", "2000 16"), ("udp_gso", "10 16")];

/// Builds the examples and writes the script that runs them.
pub fn build(layout: &Layout) -> Result<PeerSuite> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(&layout.root);
    cmd!(sh, "cargo build --quiet --examples -p sendzc-iov")
        .run()
        .context("building the sendzc-iov examples failed")?;
    let bin = layout.root.join("target/debug/examples");
    let dir = layout.vm_out().join("peers/examples");
    fs::create_dir_all(&dir)?;
    let mut script = String::from("set -e\n");
    for (example, args) in RUNS {
        let path: PathBuf = bin.join(example);
        script.push_str(&format!(
            "echo \"== {example} {args}\"\n{} {args}\n",
            path.display()
        ));
    }
    fs::write(dir.join("run-examples.sh"), script)?;
    Ok(PeerSuite {
        name: "sendzc-iov-examples".to_string(),
        dir,
        judge: Judge::Exit,
        command: "sh ./run-examples.sh".to_string(),
    })
}
