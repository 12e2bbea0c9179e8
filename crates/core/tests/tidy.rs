//! Tidy: mechanical style rules for the whole workspace, checked under `cargo test` (it lives in
//! `core` because every build has it). Every Rust file under `crates/*/src` opens with a `//!`
//! comment saying what it is for; no `dbg!`, `todo!` or `unimplemented!` is left in library or
//! binary code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(crates).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 10, "tidy found too few files to be looking in the right place");
    files
}

#[test]
fn every_module_opens_with_a_doc_comment() {
    let missing: Vec<_> = sources()
        .into_iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .collect();
    assert!(missing.is_empty(), "files without a leading //! comment: {missing:?}");
}

#[test]
fn no_debugging_leftovers_in_shipped_code() {
    let banned = ["dbg!(", "todo!(", "unimplemented!("];
    let mut hits = Vec::new();
    for f in sources() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if banned.iter().any(|b| line.contains(b)) && !line.trim_start().starts_with("//") {
                hits.push(format!("{}:{}", f.display(), n + 1));
            }
        }
    }
    assert!(hits.is_empty(), "debugging leftovers: {hits:?}");
}
