//! The import-circle check: inside a library crate, no two top-level modules use each other
//! (`crate::a` in module `b` and `crate::b` in module `a`). Such a pair means neither can be
//! read, tested or moved without the other; docs/architecture.md draws each crate as layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The library crates checked, by directory under `crates/`.
const LIBRARIES: [&str; 6] = [
    "proto",
    "transport-tls",
    "transport-dtls",
    "connmgr",
    "proxy",
    "streamproxy",
];

pub(crate) fn check(root: &Path) -> Result<()> {
    let mut circles = Vec::new();
    for krate in LIBRARIES {
        let src = root.join("crates").join(krate).join("src");
        for (a, b) in circles_in(&src)? {
            circles.push(format!("{krate}: `{a}` and `{b}` use each other"));
        }
    }
    if !circles.is_empty() {
        bail!(
            "import circles between modules:\n  {}",
            circles.join("\n  ")
        );
    }
    eprintln!("circles: no module pair of a library crate uses each other");
    Ok(())
}

/// Pairs of top-level modules under `src` that refer to each other through `crate::`.
fn circles_in(src: &Path) -> Result<Vec<(String, String)>> {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("{}", path.display()))? {
                files.push(entry?.path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap_or(&path);
        let top = relative
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        // Test modules may reach anywhere.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                uses.entry(top.clone()).or_default().insert(name);
            }
        }
    }
    let mut pairs = Vec::new();
    for (a, targets) in &uses {
        for b in targets {
            if a < b && uses.get(b).is_some_and(|t| t.contains(a)) {
                pairs.push((a.clone(), b.clone()));
            }
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_of_modules_using_each_other_is_found_and_one_way_use_is_not() {
        let dir = std::env::temp_dir().join(format!("circles-{}", std::process::id()));
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("b")).expect("dirs");
        std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").expect("lib");
        std::fs::write(src.join("a.rs"), "use crate::b::X;\n").expect("a");
        std::fs::write(src.join("b/mod.rs"), "pub struct X;\n").expect("b");
        std::fs::write(src.join("b/inner.rs"), "use crate::a::Y;\n").expect("b/inner");
        std::fs::write(
            src.join("c.rs"),
            "use crate::a::Y;\n#[cfg(test)]\nmod tests { use crate::c; }\n",
        )
        .expect("c");
        let found = circles_in(&src).expect("scan");
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(found, vec![("a".to_owned(), "b".to_owned())]);
    }

    #[test]
    fn the_workspace_has_no_circles() {
        check(&crate::cmd::project_root()).expect("no circles");
    }
}
