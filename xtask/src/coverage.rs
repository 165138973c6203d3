//! Coverage of the series: which io_uring/*.c lines the patches add, gcov
//! profiling of exactly those files in the debug kernel, and the report of
//! which added lines the guest run executed.
//!
//! The added lines come from the tree's history (`git diff base HEAD`), so
//! they are the patches' lines, not a hand-kept list.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kernel::{self, Kernel};
use crate::layout::Profile;
use crate::options::Options;

/// The io_uring C files the series changes, relative to the tree's root.
pub fn touched_files(src: &Path) -> Result<Vec<String>> {
    let sh = Shell::new()?;
    let _cd = sh.push_dir(src);
    let names = cmd!(sh, "git diff --name-only base HEAD -- io_uring/*.c")
        .quiet()
        .read()?;
    Ok(names.lines().map(str::to_string).collect())
}

/// make variables that gcov-profile the files the series changes, and only
/// those: the rest of the kernel runs at full speed.
pub fn make_vars(src: &Path) -> Result<Vec<String>> {
    Ok(gcov_vars(&touched_files(src)?))
}

/// `GCOV_PROFILE_<stem>.o=y` for each C file. Kbuild reads the variable in
/// every directory, so a stem must be unique among the kernel's objects:
/// io_uring's are (net.o, rsrc.o, notif.o, io_uring.o).
fn gcov_vars(files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter_map(|file| file.rsplit('/').next()?.strip_suffix(".c"))
        .map(|stem| format!("GCOV_PROFILE_{stem}.o=y"))
        .collect()
}

/// Line numbers (in the patched file) that `diff` adds, per file: `diff` is
/// the output of `git diff -U0`.
pub fn added_lines(diff: &str) -> BTreeMap<String, Vec<u32>> {
    let mut files: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut file = None;
    let mut next = 0u32;
    for line in diff.lines() {
        if let Some(name) = line.strip_prefix("+++ b/") {
            file = Some(name.to_string());
        } else if line.starts_with("+++ ") {
            file = None;
        } else if let Some(hunk) = line.strip_prefix("@@ ") {
            next = hunk_start(hunk).unwrap_or(0);
        } else if let (Some(name), Some(_)) = (&file, line.strip_prefix('+')) {
            files.entry(name.clone()).or_default().push(next);
            next += 1;
        }
    }
    files
}

/// The new-side start line of a hunk header's rest: `-a,b +c,d @@ ...`.
fn hunk_start(hunk: &str) -> Option<u32> {
    let new = hunk.split_whitespace().find(|w| w.starts_with('+'))?;
    new[1..].split(',').next()?.parse().ok()
}

/// What gcov says of one source line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCount {
    /// No code: a declaration, a brace, a comment.
    NotCode,
    Executed(u64),
    NotExecuted,
}

/// Counts per line number from a `.gcov` text file (`count:line:source`).
pub fn parse_gcov(text: &str) -> BTreeMap<u32, (LineCount, String)> {
    let mut lines = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(count), Some(number), Some(source)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(number) = number.trim().parse::<u32>() else {
            continue;
        };
        if number == 0 {
            continue;
        }
        let count = count.trim().trim_end_matches('*');
        let count = match count {
            "-" => LineCount::NotCode,
            "#####" | "=====" | "%%%%%" | "$$$$$" => LineCount::NotExecuted,
            n => match n.parse() {
                Ok(n) => LineCount::Executed(n),
                Err(_) => continue,
            },
        };
        lines.insert(number, (count, source.to_string()));
    }
    lines
}

/// The result: executable added lines, and those the run did not execute.
#[derive(Debug, Default)]
pub struct Coverage {
    pub executable: usize,
    pub executed: usize,
    /// `file:line: source` of each unexecuted added line.
    pub uncovered: Vec<String>,
}

impl Coverage {
    pub fn summary_line(&self) -> String {
        let percent = if self.executable == 0 {
            0.0
        } else {
            100.0 * self.executed as f64 / self.executable as f64
        };
        format!(
            "series coverage: {} of {} added lines executed ({percent:.1}%)",
            self.executed, self.executable
        )
    }

    /// Adds one file: its added lines and gcov's counts for it.
    pub fn add_file(
        &mut self,
        file: &str,
        added: &[u32],
        counts: &BTreeMap<u32, (LineCount, String)>,
    ) {
        for number in added {
            match counts.get(number) {
                Some((LineCount::Executed(_), _)) => {
                    self.executable += 1;
                    self.executed += 1;
                }
                Some((LineCount::NotExecuted, source)) => {
                    self.executable += 1;
                    self.uncovered
                        .push(format!("{file}:{number}: {}", source.trim_end()));
                }
                Some((LineCount::NotCode, _)) | None => {}
            }
        }
    }
}

/// The coverage of the series in a guest run of `kernel`, or `None` (said
/// on the terminal) when the kernel was not built for it: the bench
/// profile, a `--kernel-src` tree, which has no `base` to diff against, or
/// an empty series.
pub fn for_run(
    kernel: &Kernel,
    options: &Options,
    out: &Path,
    uncovered: &Path,
) -> Result<Option<Coverage>> {
    if options.kernel_src.is_some()
        || options.profile.unwrap_or(Profile::Debug) != Profile::Debug
        || !kernel.expect_feature
    {
        eprintln!("  no series coverage: only the series' debug kernel is profiled");
        return Ok(None);
    }
    // gcov reads the sources, and the diff is of the tree: both must be
    // the series as built (the liburing gate resets the tree to `base`).
    let now = kernel::head_commit(&kernel.src);
    if now.is_none() || now != kernel.commit {
        bail!(
            "the kernel tree {} is no longer at the commit built ({:?}, now {now:?}): \
             coverage must run before anything else checks out the tree",
            kernel.src.display(),
            kernel.commit
        );
    }
    let coverage = report(&kernel.src, &kernel.build, &out.join("gcov"), uncovered)?;
    eprintln!(
        "  {} unexecuted added lines listed in {}",
        coverage.uncovered.len(),
        uncovered.display()
    );
    Ok(Some(coverage))
}

/// Maps the guest's gcov data (`gcda_dir`, copied from debugfs) onto the
/// lines the series adds, writing the unexecuted ones to `uncovered`.
pub fn report(src: &Path, build: &Path, gcda_dir: &Path, uncovered: &Path) -> Result<Coverage> {
    let sh = Shell::new()?;
    let diff = {
        let _cd = sh.push_dir(src);
        cmd!(sh, "git diff -U0 base HEAD -- io_uring/*.c")
            .quiet()
            .read()?
    };
    let added = added_lines(&diff);
    if added.is_empty() {
        bail!(
            "the series adds no io_uring/*.c line in {}: is the tree at the series?",
            src.display()
        );
    }
    let work = gcda_dir.join("gcov-out");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let mut coverage = Coverage::default();
    for (file, added) in added {
        let stem = file
            .trim_end_matches(".c")
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let gcda = gcda_dir.join(format!("{stem}.gcda"));
        if !gcda.is_file() {
            bail!(
                "no gcov data for {file} from the guest ({} missing)",
                gcda.display()
            );
        }
        // gcov wants the .gcno beside the .gcda: both go to the work dir.
        let objdir = build.join(Path::new(&file).parent().unwrap_or(Path::new("")));
        fs::copy(
            objdir.join(format!("{stem}.gcno")),
            work.join(format!("{stem}.gcno")),
        )
        .with_context(|| {
            format!(
                "no {stem}.gcno in {}: not built with gcov",
                objdir.display()
            )
        })?;
        fs::copy(&gcda, work.join(format!("{stem}.gcda")))?;
        let source = src.join(&file);
        {
            let _cd = sh.push_dir(&work);
            // A .gcda from another build than the .gcno (a rebuild since the
            // run) fails here, rather than counting every line unexecuted.
            let out = cmd!(sh, "gcov -o {work} {source}")
                .quiet()
                .ignore_status()
                .output()?;
            if !out.status.success() {
                bail!(
                    "gcov failed on {file} ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let gcov = work.join(format!("{stem}.c.gcov"));
        let text = fs::read_to_string(&gcov)
            .with_context(|| format!("gcov wrote no {}", gcov.display()))?;
        coverage.add_file(&file, &added, &parse_gcov(&text));
    }
    let mut listing = coverage.uncovered.join("\n");
    listing.push('\n');
    fs::write(uncovered, listing)?;
    Ok(coverage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "\
diff --git a/io_uring/net.c b/io_uring/net.c
--- a/io_uring/net.c
+++ b/io_uring/net.c
@@ -10,0 +11,2 @@ static int f(void)
+\tint a = 1;
+\treturn a;
@@ -40 +42 @@ static int g(void)
-\treturn 0;
+\treturn 1;
diff --git a/io_uring/gone.c b/io_uring/gone.c
--- a/io_uring/gone.c
+++ /dev/null
@@ -1 +0,0 @@
-int x;
";

    #[test]
    fn profiles_each_touched_file_by_its_object() {
        let files = ["io_uring/net.c".to_string(), "io_uring/rsrc.c".to_string()];
        assert_eq!(
            gcov_vars(&files),
            ["GCOV_PROFILE_net.o=y", "GCOV_PROFILE_rsrc.o=y"]
        );
    }

    #[test]
    fn added_lines_follow_hunk_headers() {
        let lines = added_lines(DIFF);
        assert_eq!(lines.len(), 1, "a deleted file adds nothing: {lines:?}");
        assert_eq!(lines["io_uring/net.c"], vec![11, 12, 42]);
    }

    #[test]
    fn gcov_counts_and_uncovered_lines() {
        let gcov = "        -:    0:Source:net.c\n\
                    \x20       5:   11:\tint a = 1;\n\
                    \x20   #####:   12:\treturn a;\n\
                    \x20       -:   42:}\n";
        let mut coverage = Coverage::default();
        coverage.add_file("io_uring/net.c", &[11, 12, 42], &parse_gcov(gcov));
        assert_eq!((coverage.executed, coverage.executable), (1, 2));
        assert_eq!(coverage.uncovered, vec!["io_uring/net.c:12: \treturn a;"]);
        assert_eq!(
            coverage.summary_line(),
            "series coverage: 1 of 2 added lines executed (50.0%)"
        );
    }
}
