//! The bindings against the C header of the patched kernel: a C program
//! compiled against `<linux/io_uring.h>` from `make headers_install` prints
//! every constant, size, alignment and offset the crate relies on, and each
//! must equal the Rust side (`sendzc_iov::layout::facts`).
//!
//! It needs those headers, which a plain machine does not have, so it is
//! ignored by default: `cargo xtask check-uapi` (and vm-test) runs it with
//! `--ignored` and `SENDZC_UAPI_INCLUDE` set to the installed headers.
//! Without that variable, the headers of the last `cargo xtask vm-test` (in
//! the cache) are used; if there are none the test fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn include_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SENDZC_UAPI_INCLUDE") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("SENDZC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sendzc-iov")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sendzc-iov")))
        .expect("no SENDZC_CACHE, XDG_CACHE_HOME or HOME");
    cache.join("kernel/build-series-debug/usr/include")
}

fn c_program(facts: &[(&str, u64)]) -> String {
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/io_uring.h>\n\
         #define P(x) printf(\"%s=%llu\\n\", #x, (unsigned long long)(x));\n\
         int main(void)\n{\n",
    );
    for (expr, _) in facts {
        src.push_str(&format!("\tP({expr})\n"));
    }
    src.push_str("\treturn 0;\n}\n");
    src
}

#[test]
#[ignore = "needs the patched kernel headers: cargo xtask check-uapi"]
fn c_header_matches_rust_bindings() {
    let include = include_dir();
    assert!(
        include.join("linux/io_uring.h").is_file(),
        "no patched headers at {}: run `cargo xtask kernel` (or set SENDZC_UAPI_INCLUDE)",
        include.display()
    );
    let facts = sendzc_iov::layout::facts();
    let dir = std::env::temp_dir().join(format!("sendzc-c-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c_program(&facts)).unwrap();

    let cc = Command::new("cc")
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("running cc");
    assert!(
        cc.status.success(),
        "the C side does not compile against {}:\n{}",
        include.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().expect("running the C program");
    let c: BTreeMap<String, u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    std::fs::remove_dir_all(&dir).ok();

    let differ: Vec<String> = facts
        .iter()
        .filter(|(expr, rust)| c.get(*expr) != Some(rust))
        .map(|(expr, rust)| format!("{expr}: C {:?}, Rust {rust}", c.get(*expr)))
        .collect();
    assert_eq!(
        c.len(),
        facts.len(),
        "the C program printed {} of {} facts",
        c.len(),
        facts.len()
    );
    assert!(
        differ.is_empty(),
        "bindings differ from the header:\n{}",
        differ.join("\n")
    );
}
