//! Applying the liburing series, which is based on liburing's master, to
//! the 2.15 release that Debian ships and this pipeline builds.
//!
//! Every hunk applies to 2.15 unchanged but one kind: symbols added to a
//! version node of `src/liburing-ffi.map` that master opened after 2.15
//! (LIBURING_2.16). Such a hunk's context names a node 2.15 does not
//! have, so it is applied here by its meaning: the added symbols go into
//! that node, which is opened first, below its parent, if it is missing.
//! Nothing else is rewritten; any other hunk that does not apply fails.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

const MAP: &str = "src/liburing-ffi.map";

/// The symbols one patch adds to one version node of the map.
#[derive(Debug, PartialEq, Eq)]
struct NodeAdditions {
    node: String,
    parent: String,
    symbols: Vec<String>,
}

/// `git apply`s `patch` in the current directory of `sh` (a liburing
/// tree), the map's hunks by meaning; whitespace errors fail it.
pub fn apply(sh: &Shell, patch: &Path) -> Result<()> {
    let text = fs::read_to_string(patch)?;
    cmd!(
        sh,
        "git apply --whitespace=error-all --exclude={MAP} {patch}"
    )
    .quiet()
    .run()?;
    let Some(additions) = map_additions(&text)? else {
        return Ok(());
    };
    let map = sh.current_dir().join(MAP);
    let old = fs::read_to_string(&map).with_context(|| format!("reading {MAP}"))?;
    fs::write(&map, add_to_node(&old, &additions))?;
    Ok(())
}

/// The map's diff in a patch: one hunk that only adds symbols inside one
/// node, or None if the patch leaves the map alone.
fn map_additions(patch: &str) -> Result<Option<NodeAdditions>> {
    let header = format!("diff --git a/{MAP} b/{MAP}");
    let Some(start) = patch.find(&header) else {
        return Ok(None);
    };
    let section = &patch[start + header.len()..];
    let section = section.split("\ndiff --git ").next().unwrap_or(section);
    let section = section.split("\n-- \n").next().unwrap_or(section);
    let mut node = None;
    let mut parent = None;
    let mut symbols = Vec::new();
    let mut in_hunk = false;
    for line in section.lines() {
        if line.starts_with("@@") {
            if in_hunk {
                bail!("{MAP}: more than one hunk; apply it by hand");
            }
            in_hunk = true;
            continue;
        }
        if !in_hunk {
            continue;
        }
        if let Some(added) = line.strip_prefix('+') {
            let symbol = added.trim();
            if !symbol.ends_with(';') || symbol.contains(' ') || symbol.contains('}') {
                bail!("{MAP}: the hunk adds '{added}', not a symbol");
            }
            symbols.push(symbol.to_string());
        } else if line.starts_with('-') {
            bail!("{MAP}: the hunk removes '{line}'");
        } else if let Some(context) = line.strip_prefix(' ') {
            let context = context.trim();
            // The node opens before the added lines; its parent is named
            // where it closes, after them.
            if let Some(name) = context.strip_suffix(" {") {
                if symbols.is_empty() {
                    node = Some(name.to_string());
                }
            } else if let Some(name) = context.strip_prefix("} ") {
                if !symbols.is_empty() && parent.is_none() {
                    parent = Some(name.trim_end_matches(';').to_string());
                }
            }
        }
    }
    let (Some(node), Some(parent)) = (node, parent) else {
        bail!("{MAP}: the hunk's context does not name its node and parent");
    };
    if symbols.is_empty() {
        bail!("{MAP}: the hunk adds no symbol");
    }
    Ok(Some(NodeAdditions {
        node,
        parent,
        symbols,
    }))
}

/// `map` with the symbols at the end of their node, which is appended
/// first if `map` has none of that name.
fn add_to_node(map: &str, additions: &NodeAdditions) -> String {
    let mut map = map.to_string();
    let opening = format!("\n{} {{\n", additions.node);
    let closing = format!("}} {};", additions.parent);
    if !map.contains(&opening) {
        if !map.ends_with('\n') {
            map.push('\n');
        }
        map.push_str(&format!("{opening}\tglobal:\n{closing}\n"));
    }
    let node_start = map.find(&opening).unwrap_or_default();
    let close_at = node_start + map[node_start..].find(&closing).unwrap_or_default();
    let lines: String = additions
        .symbols
        .iter()
        .map(|symbol| format!("\t\t{symbol}\n"))
        .collect();
    map.insert_str(close_at, &lines);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP_2_15_END: &str =
        "LIBURING_2.15 {\n\tglobal:\n\t\tio_uring_register_query;\n} LIBURING_2.14;\n";

    const PATCH: &str = "\
diff --git a/src/include/liburing.h b/src/include/liburing.h
--- a/src/include/liburing.h
+++ b/src/include/liburing.h
@@ -1 +1,2 @@
 x
+y
diff --git a/src/liburing-ffi.map b/src/liburing-ffi.map
index 87b49f13..4f88161d 100644
--- a/src/liburing-ffi.map
+++ b/src/liburing-ffi.map
@@ -280,4 +280,6 @@ LIBURING_2.15 {
 
 LIBURING_2.16 {
 \tglobal:
 \t\tio_uring_prep_cmd_zone_reset_all;
+\t\tio_uring_zc_iov_attr_init;
+\t\tio_uring_prep_send_zc_set_iov_attr;
 } LIBURING_2.15;
-- 
2.47.3
";

    fn additions() -> NodeAdditions {
        NodeAdditions {
            node: "LIBURING_2.16".into(),
            parent: "LIBURING_2.15".into(),
            symbols: vec![
                "io_uring_zc_iov_attr_init;".into(),
                "io_uring_prep_send_zc_set_iov_attr;".into(),
            ],
        }
    }

    #[test]
    fn reads_the_node_its_parent_and_the_added_symbols() {
        assert_eq!(map_additions(PATCH).unwrap(), Some(additions()));
    }

    #[test]
    fn a_patch_that_leaves_the_map_alone_has_no_additions() {
        let patch = PATCH
            .split("diff --git a/src/liburing-ffi.map")
            .next()
            .unwrap();
        assert_eq!(map_additions(patch).unwrap(), None);
    }

    #[test]
    fn a_hunk_that_removes_or_adds_other_lines_is_refused() {
        let removes = PATCH.replace(" \t\tio_uring_prep_cmd_zone_reset_all;", "-\t\tgone;");
        assert!(map_additions(&removes).is_err());
        let local = PATCH.replace("+\t\tio_uring_zc_iov_attr_init;", "+\tlocal: *;");
        assert!(map_additions(&local).is_err());
    }

    #[test]
    fn opens_the_node_below_its_parent_when_the_release_lacks_it() {
        let map = add_to_node(MAP_2_15_END, &additions());
        assert_eq!(
            map,
            format!(
                "{MAP_2_15_END}\nLIBURING_2.16 {{\n\tglobal:\n\
                 \t\tio_uring_zc_iov_attr_init;\n\
                 \t\tio_uring_prep_send_zc_set_iov_attr;\n\
                 }} LIBURING_2.15;\n"
            )
        );
    }

    #[test]
    fn adds_to_the_end_of_an_existing_node() {
        let map =
            format!("{MAP_2_15_END}\nLIBURING_2.16 {{\n\tglobal:\n\t\tfirst;\n}} LIBURING_2.15;\n");
        let map = add_to_node(&map, &additions());
        assert!(map.ends_with(
            "\t\tfirst;\n\t\tio_uring_zc_iov_attr_init;\n\
             \t\tio_uring_prep_send_zc_set_iov_attr;\n} LIBURING_2.15;\n"
        ));
        assert_eq!(map.matches("LIBURING_2.16 {").count(), 1);
    }
}
