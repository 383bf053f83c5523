//! Replacing a file atomically, for `escapes trust` (the config) and
//! `escapes update` (the binary itself): a temp file in the target's own
//! directory (created `O_EXCL | O_NOFOLLOW`, never an existing file or a
//! planted symlink), written and fsynced, renamed over the target, then
//! the directory fsynced. Until the rename the target is untouched; if
//! anything fails the temp file is removed (on drop).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A temp file that is removed on drop unless it was committed.
pub struct Temp {
    path: PathBuf,
    dir: PathBuf,
    file: Option<File>,
}

impl Temp {
    /// Create `dir/.<stem>.tmp-<pid>-<n>` for reading and writing with
    /// `mode` (before the umask; callers fchmod afterwards anyway).
    pub fn create(dir: &Path, stem: &str, mode: u32) -> std::io::Result<Temp> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for attempt in 0..16u32 {
            let path = dir.join(format!(
                ".{stem}.tmp-{}-{}",
                std::process::id(),
                nanos.wrapping_add(attempt)
            ));
            match open_new(&path, mode) {
                Ok(file) => {
                    return Ok(Temp {
                        path,
                        dir: dir.to_path_buf(),
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EEXIST)))
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (`None` only after [`Temp::commit`], which consumes).
    pub fn file(&mut self) -> std::io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }

    /// fsync the data, rename over `target`, fsync the directory. On
    /// `Err` before the rename the temp file is removed and `target` is
    /// as it was. The directory fsync failing after the rename is
    /// reported as `Ok(false)`: the new file is in place, but its
    /// durability is not proven.
    pub fn commit(mut self, target: &Path) -> std::io::Result<bool> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
            drop(f);
        }
        std::fs::rename(&self.path, target)?;
        // Renamed: nothing is left to remove.
        self.path = PathBuf::new();
        Ok(fsync_dir(&self.dir).is_ok())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Remove the temp files [`Temp::create`] made for `stem` in `dir` whose
/// process is gone: left by a run that was killed (or a crash) before its
/// rename. For `escapes update` such a file is a setuid-root copy of a
/// release, which must not outlive the binary it was meant to replace.
/// Only regular files are removed (unlinked, never followed); a file of a
/// process that still runs is left alone. Returns the names removed.
pub fn sweep(dir: &Path, stem: &str) -> Vec<String> {
    let prefix = format!(".{stem}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid != 0 && Path::new(&format!("/proc/{pid}")).exists();
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if !alive && regular && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name.to_string_lossy().into_owned());
        }
    }
    removed
}

/// Create exactly `path`: fails if anything (a file, a symlink) is there.
fn open_new(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
}

/// fsync a directory, so a rename in it survives a crash.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/unit-tmp")
            .join(format!("atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let d = scratch("commit");
        let target = d.join("t");
        std::fs::write(&target, b"old").unwrap();

        let mut t = Temp::create(&d, "t", 0o600).unwrap();
        t.file().unwrap().write_all(b"half").unwrap();
        let tmp = t.path().to_path_buf();
        assert!(tmp.exists());
        drop(t);
        assert!(!tmp.exists(), "temp file left behind");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");

        let mut t = Temp::create(&d, "t", 0o600).unwrap();
        t.file().unwrap().write_all(b"new").unwrap();
        assert!(t.commit(&target).unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn never_opens_a_planted_symlink() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let planted = d.join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = open_new(&planted, 0o600).err().map(|e| e.kind());
        assert_eq!(e, Some(std::io::ErrorKind::AlreadyExists));
        // A dangling symlink is not followed either.
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        assert!(open_new(&dangling, 0o600).is_err());
        assert!(!d.join("nowhere").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sweep_removes_only_dead_runs_regular_files() {
        let d = scratch("sweep");
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = d.join(".u.tmp-4999999-7");
        let live = d.join(format!(".u.tmp-{}-7", std::process::id()));
        let other_stem = d.join(".v.tmp-4999999-7");
        let link = d.join(".u.tmp-4999998-1");
        let victim = d.join("victim");
        for p in [&dead, &live, &other_stem, &victim] {
            std::fs::write(p, b"x").unwrap();
        }
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert_eq!(sweep(&d, "u"), vec![".u.tmp-4999999-7".to_string()]);
        assert!(!dead.exists());
        for p in [&live, &other_stem, &victim, &link] {
            assert!(std::fs::symlink_metadata(p).is_ok(), "{}", p.display());
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
