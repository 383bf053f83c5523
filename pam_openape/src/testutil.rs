//! Helpers for this crate's unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The uid of this test process (the owner trusted files must have here).
pub fn me() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under `target/unit-tmp`, mode 0700, if that chain of
    /// directories is owned by the current user and writable by nobody else
    /// (true for root in CI and in a checkout owned by the developer).
    pub fn trusted(prefix: &str) -> Option<TempDir> {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/unit-tmp");
        std::fs::create_dir_all(&base).ok()?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).ok()?;
        let me = std::fs::metadata("/proc/self").ok()?.uid();
        crate::trust::check_dir_chain(&base, me).ok()?;
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).ok()?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).ok()?;
        Some(TempDir(std::fs::canonicalize(dir).ok()?))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
