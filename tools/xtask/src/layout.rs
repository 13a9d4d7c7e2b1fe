//! Where things are: the repository root and the build tool's directories under `target/`.

use std::path::{Path, PathBuf};

/// The repository root (two levels above this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tools/xtask lies two levels below the repository root")
        .to_path_buf()
}

/// The workspace's target directory (xtask ignores `CARGO_TARGET_DIR` so paths stay stable).
pub fn target() -> PathBuf {
    root().join("target")
}

/// A scratch directory under `target/`, created if needed.
pub fn work_dir(parts: &[&str]) -> std::io::Result<PathBuf> {
    let mut dir = target();
    for part in parts {
        dir.push(part);
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `path` relative to the repository root when it lies inside it, for messages.
pub fn show(path: &Path) -> String {
    let root = root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}
