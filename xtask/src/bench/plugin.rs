//! The TCG plugin qemu/tcg-insn-profile.c: building it, and reading the
//! counts it writes. Its tests run it under qemu-user on a program whose
//! instruction counts are known, so that what bench-profile reports from a
//! kernel rests on a count checked exactly.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::layout::Layout;

/// Builds the plugin into `out`, with the host's gcc.
pub fn build(layout: &Layout, out: &Path) -> Result<PathBuf> {
    let sh = Shell::new()?;
    let src = layout.qemu().join("tcg-insn-profile.c");
    let lib = out.join("libtcg-insn-profile.so");
    cmd!(sh, "gcc -O2 -Wall -Werror -shared -fPIC -o {lib} {src}").run()?;
    Ok(lib)
}

/// One write of the plugin: cumulative instructions per block address (a
/// block translated twice appears twice), and per skip function those run
/// inside its calls, which the blocks' counts leave out.
#[derive(Debug, Default)]
pub struct Counts {
    pub blocks: BTreeMap<u64, u64>,
    pub skipped: BTreeMap<u64, u64>,
}

/// `ADDR N` and `skip ADDR N` lines, hexadecimal addresses.
pub fn parse_counts(text: &str) -> Result<Counts> {
    let mut counts = Counts::default();
    for line in text.lines() {
        let (map, rest) = match line.strip_prefix("skip ") {
            Some(rest) => (&mut counts.skipped, rest),
            None => (&mut counts.blocks, line),
        };
        let (addr, n) = rest
            .split_once(' ')
            .with_context(|| format!("bad count line '{line}'"))?;
        let addr =
            u64::from_str_radix(addr, 16).with_context(|| format!("bad address '{addr}'"))?;
        let n: u64 = n.parse().with_context(|| format!("bad count '{n}'"))?;
        *map.entry(addr).or_default() += n;
    }
    Ok(counts)
}

/// The writes of a run whose `out=` was `prefix`, in the order the plugin
/// made them (`prefix.0`, `prefix.1`, ...).
pub fn read_writes(prefix: &Path) -> Result<Vec<Counts>> {
    let mut writes = Vec::new();
    loop {
        let path = PathBuf::from(format!("{}.{}", prefix.display(), writes.len()));
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(writes);
        };
        writes.push(parse_counts(&text).with_context(|| path.display().to_string())?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_counts_are_kept_apart() {
        let counts = parse_counts("ffffffff81000100 10\nskip ffffffff81000200 7\n").unwrap();
        assert_eq!(counts.blocks.get(&0xffffffff81000100), Some(&10));
        assert_eq!(counts.blocks.len(), 1);
        assert_eq!(counts.skipped.get(&0xffffffff81000200), Some(&7));
        assert!(parse_counts("skip 12\n").is_err());
    }

    #[test]
    fn bad_count_lines_are_errors() {
        assert!(parse_counts("ffff 12\nnot-a-line\n").is_err());
        assert!(parse_counts("xyz 12\n").is_err());
    }

    /// A static x86-64 program: `mark` twice around CALLS calls of `outer`,
    /// which calls `inner`. Each block's instructions are counted below.
    const PROGRAM: &str = "
	.text
	.globl	_start
_start:
	call	mark
	mov	$100, %ecx
1:	call	outer
	dec	%ecx
	jnz	1b
	call	mark
	mov	$60, %eax
	xor	%edi, %edi
	syscall
outer:
	mov	$5, %edx
2:	dec	%edx
	jnz	2b
	call	inner
	ret
inner:
	mov	$3, %esi
3:	dec	%esi
	jnz	3b
	ret
mark:
	ret
";
    const CALLS: u64 = 100;
    /// mov, 5 x (dec, jnz), call, ret
    const OUTER_OWN: u64 = 1 + 2 * 5 + 1 + 1;
    /// mov, 3 x (dec, jnz), ret
    const INNER: u64 = 1 + 2 * 3 + 1;
    /// Between the marks, outside the calls: the mov and the first call,
    /// CALLS x (dec, jnz), the other calls, the second call of mark, and
    /// the ret of mark that the second write sees (the first write was
    /// made after mark's first ret was counted).
    const MAIN: u64 = 2 + 2 * CALLS + (CALLS - 1) + 1 + 1;

    struct Program {
        dir: PathBuf,
        plugin: PathBuf,
        symbols: BTreeMap<String, u64>,
    }

    impl Program {
        fn build(name: &str) -> Program {
            let layout = Layout::detect().unwrap();
            let dir = std::env::temp_dir()
                .join(format!("tcg-insn-profile-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            let plugin = build(&layout, &dir).unwrap();
            let sh = Shell::new().unwrap();
            let (src, bin) = (dir.join("prog.S"), dir.join("prog"));
            fs::write(&src, PROGRAM).unwrap();
            cmd!(sh, "gcc -nostdlib -static -no-pie -o {bin} {src}")
                .run()
                .unwrap();
            let nm = cmd!(sh, "nm {bin}").read().unwrap();
            let symbols = nm
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
                    Some((fields.nth(1)?.to_string(), addr))
                })
                .collect();
            Program {
                dir,
                plugin,
                symbols,
            }
        }

        fn addr(&self, name: &str) -> u64 {
            self.symbols[name]
        }

        /// Runs the program under qemu-user with the plugin and `extra`
        /// arguments; returns the window between the marks: the block
        /// total and, per skip function, what its calls ran.
        fn window(&self, extra: &str) -> (u64, BTreeMap<u64, u64>) {
            let sh = Shell::new().unwrap();
            let prefix = self.dir.join(format!("counts{}", extra.replace(',', "-")));
            let plugin = format!(
                "{},snap={:x},out={}{extra}",
                self.plugin.display(),
                self.addr("mark"),
                prefix.display()
            );
            let bin = self.dir.join("prog");
            assert!(
                crate::setup::on_path("qemu-x86_64"),
                "qemu-x86_64 is missing: `cargo xtask setup` installs qemu-user"
            );
            cmd!(sh, "qemu-x86_64 -plugin {plugin} {bin}")
                .run()
                .unwrap();
            let writes = read_writes(&prefix).unwrap();
            // A write at each mark, and one at exit.
            assert_eq!(writes.len(), 3, "{extra}");
            let (before, after) = (&writes[0], &writes[1]);
            let total = after.blocks.values().sum::<u64>() - before.blocks.values().sum::<u64>();
            let skipped = after
                .skipped
                .iter()
                .map(|(addr, n)| (*addr, n - before.skipped.get(addr).copied().unwrap_or(0)))
                .collect();
            (total, skipped)
        }
    }

    impl Drop for Program {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_plugin_counts_every_instruction_between_the_marks() {
        let p = Program::build("all");
        let (total, skipped) = p.window("");
        assert_eq!(total, MAIN + CALLS * (OUTER_OWN + INNER));
        assert!(skipped.is_empty());
    }

    #[test]
    fn a_skipped_call_is_counted_apart_with_what_it_calls() {
        let p = Program::build("skip");
        let outer = p.addr("outer");
        let (total, skipped) = p.window(&format!(",skip={outer:x}"));
        assert_eq!(total, MAIN);
        assert_eq!(
            skipped,
            BTreeMap::from([(outer, CALLS * (OUTER_OWN + INNER))])
        );
    }

    #[test]
    fn nested_skipped_calls_pair_up_innermost_first() {
        let p = Program::build("nested");
        let (outer, inner) = (p.addr("outer"), p.addr("inner"));
        let (total, skipped) = p.window(&format!(",skip={outer:x},skip={inner:x}"));
        assert_eq!(total, MAIN);
        assert_eq!(
            skipped,
            BTreeMap::from([(outer, CALLS * OUTER_OWN), (inner, CALLS * INNER)])
        );
    }

    #[test]
    fn only_the_chosen_vcpu_is_counted() {
        let p = Program::build("vcpu");
        let outer = p.addr("outer");
        assert_eq!(p.window(&format!(",vcpu=0,skip={outer:x}")).0, MAIN);
        let (total, skipped) = p.window(&format!(",vcpu=1,skip={outer:x}"));
        assert_eq!(total, 0);
        assert_eq!(skipped, BTreeMap::from([(outer, 0)]));
    }
}
