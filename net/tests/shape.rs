//! Checks of the crate's own shape: what it must not depend on, and where
//! the few dangerous things are allowed to happen.

use std::fs;
use std::path::{Path, PathBuf};

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = fs::read_to_string(&path).expect("read source");
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() >= 8, "found the sources");
    out
}

fn relative(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root).expect("under the crate").display().to_string()
}

/// The names in every `[*dependencies]` table of the manifest.
fn dependencies() -> Vec<String> {
    let manifest =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("read");
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line.contains("dependencies");
        } else if in_dependencies && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.', ' ']).next().expect("a key");
            names.push(name.to_string());
        }
    }
    names
}

#[test]
fn the_crate_depends_on_no_runtime() {
    let names = dependencies();
    assert!(names.iter().any(|name| name == "rkyv"), "parsed the manifest: {names:?}");
    for forbidden in ["glommio", "io-uring", "tokio", "async-std", "monoio", "holdfast-engine"] {
        assert!(
            !names.iter().any(|name| name == forbidden),
            "holdfast-net must not depend on {forbidden}"
        );
    }
}

#[test]
fn only_the_blocking_client_reads_the_clock_or_touches_sockets() {
    for (path, text) in sources() {
        let name = relative(&path);
        if name == "src/client/blocking.rs" {
            continue;
        }
        for forbidden in ["Instant::now", "SystemTime::now", "std::net::Tcp", "TcpStream"] {
            let code: String =
                text.lines().filter(|line| !line.trim_start().starts_with("//")).collect();
            assert!(!code.contains(forbidden), "{name} uses {forbidden}; the core is sans-IO");
        }
    }
}

#[test]
fn archived_bytes_are_read_in_exactly_one_place_and_always_checked() {
    let mut accesses = Vec::new();
    for (path, text) in sources() {
        assert!(!text.contains("access_unchecked"), "{}: unchecked rkyv access", relative(&path));
        assert!(
            !text.contains("from_bytes_unchecked"),
            "{}: unchecked rkyv access",
            relative(&path)
        );
        if text.contains("rkyv::access::<") {
            accesses.push(relative(&path));
        }
        assert_eq!(
            text.matches("rkyv::access::<").count(),
            usize::from(text.contains("rkyv::access::<"))
        );
    }
    assert_eq!(accesses, ["src/message.rs"]);
}

#[test]
fn libraries_do_not_print() {
    for (path, text) in sources() {
        for forbidden in ["println!", "eprintln!", "dbg!"] {
            assert!(!text.contains(forbidden), "{} uses {forbidden}", relative(&path));
        }
    }
}
