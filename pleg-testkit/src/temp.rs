//! Temporary directories for sockets and files, removed when dropped
//! (through the `tempfile` crate).

pub use tempfile::TempDir;

/// A fresh directory under [`std::env::temp_dir`], named
/// `pleg-<name>-<random>`, removed with everything in it when dropped.
///
/// # Panics
/// If the directory cannot be made, naming the error.
pub fn dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pleg-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("making a temporary directory for {name}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_is_unique_and_goes_when_dropped() {
        let one = super::dir("one");
        let other = super::dir("one");
        assert_ne!(one.path(), other.path());
        assert!(
            one.path()
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pleg-one-")),
            "{}",
            one.path().display()
        );
        std::fs::write(one.path().join("file"), b"x").expect("a file inside");
        let path = one.path().to_owned();
        drop(one);
        assert!(!path.exists());
        assert!(other.path().exists());
    }
}
