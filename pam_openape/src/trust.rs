//! Trust-root checks for files that decide who becomes root: the config
//! file, the CA bundle, the JWKS cache and the audit log's directory.
//!
//! A path is trusted when the file (opened without following a final
//! symlink) and every directory above it are owned by the trusted owner
//! (root in production) and writable by nobody else. This holds for a
//! `--config PATH` given by any caller: a caller can never point a setuid
//! binary at a trust root of their own.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest trusted file we read (config, CA bundle).
pub const MAX_TRUSTED_FILE: u64 = 1024 * 1024;

/// Why a path is not trusted. `Display` names the path and the problem.
#[derive(Debug)]
pub struct Untrusted {
    pub path: PathBuf,
    pub problem: String,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

fn untrusted(path: &Path, problem: impl Into<String>) -> Untrusted {
    Untrusted {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, owner: u32) -> Result<(), Untrusted> {
    if meta.uid() != owner {
        return Err(untrusted(
            path,
            format!(
                "is owned by uid {}, must be owned by uid {owner}",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!(
                "is writable by group or others (mode {:o}); run: chmod go-w {}",
                meta.mode() & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Check every directory from `dir` up to `/`: owned by `owner`, not
/// writable by group or others. Both chains are checked: the directories
/// as named (a symlink on the way lives in one of them, and whoever may
/// write there may point it elsewhere at any time, between this check and
/// an open too) and the real, symlink-free path, which is returned.
pub fn check_dir_chain(dir: &Path, owner: u32) -> Result<PathBuf, Untrusted> {
    if !dir.is_absolute() {
        return Err(untrusted(dir, "is not an absolute path"));
    }
    let real = std::fs::canonicalize(dir)
        .map_err(|e| untrusted(dir, format!("cannot be resolved: {e}")))?;
    // The named chain only where it differs (most paths have no symlink).
    let named = dir.ancestors().filter(|_| dir != real.as_path());
    for d in real.ancestors().chain(named) {
        let meta =
            std::fs::metadata(d).map_err(|e| untrusted(d, format!("cannot be examined: {e}")))?;
        if !meta.is_dir() {
            return Err(untrusted(d, "is not a directory"));
        }
        check_meta(d, &meta, owner)?;
    }
    Ok(real)
}

/// The audit log's directory, opened. As [`check_dir_chain`], except that
/// the directories above it may be writable by their group, never by
/// others: Ubuntu's `/var/log` is `root:syslog 0775`, and telling admins
/// to change that would break the system logger. The log's own directory
/// must be owned by `owner` and writable by nobody else. It is opened one
/// component at a time along its real path, each without following a
/// symlink and checked on its descriptor, and the log is then opened
/// relative to that descriptor: a member of such a group may rename
/// directories above it, but at worst the log lands in another directory
/// that `owner` owns and only `owner` may write. Its records stay out of
/// their reach; the audit log is no trust root (the config is).
pub fn open_log_dir(dir: &Path, owner: u32) -> Result<std::os::fd::OwnedFd, Untrusted> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::{Mode, fstat};
    use std::path::Component;
    if !dir.is_absolute() {
        return Err(untrusted(dir, "is not an absolute path"));
    }
    let check = |d: &Path, uid: u32, mode: u32, last: bool| {
        let writable = if last { 0o022 } else { 0o002 };
        if uid != owner {
            Err(untrusted(
                d,
                format!("is owned by uid {uid}, must be owned by uid {owner}"),
            ))
        } else if mode & writable != 0 {
            Err(untrusted(
                d,
                format!(
                    "is writable by {} (mode {:o}); run: chmod {} {}",
                    if last { "group or others" } else { "others" },
                    mode & 0o7777,
                    if last { "go-w" } else { "o-w" },
                    d.display()
                ),
            ))
        } else {
            Ok(())
        }
    };
    // One component at a time, each opened without following a symlink
    // and checked on its descriptor. Err(None): a component is a symlink.
    let walk = |path: &Path| -> Result<std::os::fd::OwnedFd, Option<Untrusted>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut walked = PathBuf::from("/");
        let mut fd = open("/", flags, Mode::empty())
            .map_err(|e| Some(untrusted(&walked, format!("cannot be opened: {e}"))))?;
        let parts: Vec<_> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        for i in 0..=parts.len() {
            let st = fstat(&fd)
                .map_err(|e| Some(untrusted(&walked, format!("cannot be examined: {e}"))))?;
            check(&walked, st.st_uid, st.st_mode, i == parts.len()).map_err(Some)?;
            let Some(next) = parts.get(i) else {
                break;
            };
            walked.push(next);
            fd = openat(&fd, *next, flags, Mode::empty()).map_err(|e| match e {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => None,
                e => Some(untrusted(&walked, format!("cannot be opened: {e}"))),
            })?;
        }
        Ok(fd)
    };
    // Most paths have no symlink and no `..`: then the path as named is
    // the real one, and the walk checks every directory of it.
    let plain = dir
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        match walk(dir) {
            Ok(fd) => return Ok(fd),
            Err(Some(e)) => return Err(e),
            Err(None) => {}
        }
    }
    // As named: a symlink on the way lives in one of these directories.
    for d in dir.ancestors() {
        let m =
            std::fs::metadata(d).map_err(|e| untrusted(d, format!("cannot be examined: {e}")))?;
        if !m.is_dir() {
            return Err(untrusted(d, "is not a directory"));
        }
        check(d, m.uid(), m.mode(), d == dir)?;
    }
    let real = std::fs::canonicalize(dir)
        .map_err(|e| untrusted(dir, format!("cannot be resolved: {e}")))?;
    walk(&real).map_err(|e| {
        e.unwrap_or_else(|| untrusted(&real, "changed while it was opened (a symlink appeared)"))
    })
}

/// An exclusive `flock` of `file`, tried every `poll` for at most
/// `patience`: `None` when it stayed taken (a holder its caller stopped
/// must not stop every other writer for good). The lock belongs to the
/// open file and goes with the returned guard or a holder's death.
pub fn flock_within(
    file: File,
    patience: std::time::Duration,
    poll: std::time::Duration,
) -> Option<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + patience;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Some(locked),
            Err((f, _)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(poll);
            }
            Err(_) => return None,
        }
    }
}

/// Open a trusted regular file for reading: no symlink as the last
/// component, owner and mode checked on the open descriptor (no race
/// between check and read), every parent directory checked too.
pub fn open_trusted(path: &Path, owner: u32) -> Result<File, Untrusted> {
    if !path.is_absolute() {
        return Err(untrusted(path, "is not an absolute path"));
    }
    let parent = path
        .parent()
        .ok_or_else(|| untrusted(path, "has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| untrusted(path, "names no file"))?;
    // Through the checked, symlink-free directory.
    let real = check_dir_chain(parent, owner)?.join(name);
    open_in_trusted_dir(&real, owner).map_err(|e| Untrusted {
        path: path.to_path_buf(),
        ..e
    })
}

/// [`open_trusted`] for a file whose directory chain the caller has just
/// checked with [`check_dir_chain`]: only the file itself is examined.
pub fn open_in_trusted_dir(path: &Path, owner: u32) -> Result<File, Untrusted> {
    // Look before opening: opening a device has effects of its own (a
    // serial line, a tape). The check after the open below stays the one
    // that counts.
    if let Ok(m) = std::fs::symlink_metadata(path)
        && !m.is_file()
        && !m.file_type().is_symlink()
    {
        return Err(untrusted(path, "is not a regular file"));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                untrusted(path, "is a symbolic link; it must be a regular file")
            } else {
                untrusted(path, format!("cannot be opened: {e}"))
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| untrusted(path, format!("cannot be examined: {e}")))?;
    if !meta.is_file() {
        return Err(untrusted(path, "is not a regular file"));
    }
    check_meta(path, &meta, owner)?;
    Ok(file)
}

/// Buffer size for reading a trusted file of `len` bytes in one `read`
/// (plus the one that sees the end), never more than the cap allows.
pub fn read_capacity(len: u64) -> usize {
    usize::try_from(len.min(MAX_TRUSTED_FILE).saturating_add(1)).unwrap_or(0)
}

/// Read a whole trusted file (at most [`MAX_TRUSTED_FILE`] bytes).
pub fn read_trusted(path: &Path, owner: u32) -> Result<Vec<u8>, Untrusted> {
    let file = open_trusted(path, owner)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(read_capacity(len));
    file.take(MAX_TRUSTED_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| untrusted(path, format!("cannot be read: {e}")))?;
    if buf.len() as u64 > MAX_TRUSTED_FILE {
        return Err(untrusted(path, "is larger than 1 MiB"));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, me};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn accepts_a_safe_file_and_refuses_unsafe_ones() {
        let Some(t) = TempDir::trusted("trust") else {
            eprintln!("skipped: no directory chain owned by this user and not writable by others");
            return;
        };
        let f = t.path().join("c.toml");
        std::fs::write(&f, "x").unwrap_or_default();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap_or_default();
        assert!(read_trusted(&f, me()).is_ok());

        // Wrong owner.
        let err = read_trusted(&f, me().wrapping_add(1)).err();
        assert!(err.is_some_and(|e| e.problem.contains("owned by uid")));

        // World-writable file.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o602)).unwrap_or_default();
        let err = read_trusted(&f, me()).err();
        assert!(err.is_some_and(|e| e.problem.contains("writable by group or others")));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap_or_default();

        // Group-writable parent directory.
        let sub = t.path().join("sub");
        std::fs::create_dir(&sub).unwrap_or_default();
        let g = sub.join("c.toml");
        std::fs::write(&g, "x").unwrap_or_default();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o775)).unwrap_or_default();
        let err = read_trusted(&g, me()).err();
        assert!(err.is_some_and(|e| e.path == sub && e.problem.contains("writable")));

        // Symlink as the last component.
        let link = t.path().join("link.toml");
        std::os::unix::fs::symlink(&f, &link).unwrap_or_default();
        let err = read_trusted(&link, me()).err();
        assert!(err.is_some_and(|e| e.problem.contains("symbolic link")));

        // Relative path.
        assert!(read_trusted(Path::new("c.toml"), me()).is_err());
    }

    #[test]
    fn a_symlink_in_a_directory_others_may_write_is_no_way_in() {
        let Some(t) = TempDir::trusted("trust-link") else {
            eprintln!("skipped: no directory chain owned by this user and not writable by others");
            return;
        };
        let good = t.path().join("good");
        std::fs::create_dir(&good).unwrap_or_default();
        let f = good.join("c.toml");
        std::fs::write(&f, "x").unwrap_or_default();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap_or_default();
        assert!(read_trusted(&f, me()).is_ok());
        // Whoever may write `open` may point `open/link` anywhere, at any
        // time: what it points at now proves nothing.
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap_or_default();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap_or_default();
        std::os::unix::fs::symlink(&good, open.join("link")).unwrap_or_default();
        let via = open.join("link/c.toml");
        assert!(std::fs::read(&via).is_ok());
        let err = read_trusted(&via, me()).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.path == open && e.problem.contains("writable")),
            "{err:?}"
        );
        assert!(check_dir_chain(&open.join("link"), me()).is_err());
    }

    /// The audit log's directory: group-writable above it is fine, not
    /// writable by others anywhere, not by group in itself; a symlink on
    /// the way counts where it lives, and the fast walk (no symlink) and
    /// the slow one (through a symlink) apply the same rules.
    #[test]
    fn log_directories_follow_their_own_rules() {
        use std::os::fd::AsRawFd;
        let Some(t) = TempDir::trusted("trust-log") else {
            eprintln!("skipped: no directory chain owned by this user and not writable by others");
            return;
        };
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap_or_default();
        };
        let mkdir = |rel: &str, m: u32| {
            let p = t.path().join(rel);
            std::fs::create_dir(&p).unwrap_or_default();
            mode(&p, m);
            p
        };
        let group = mkdir("group", 0o775);
        let own = mkdir("group/own", 0o700);
        let opened = open_log_dir(&own, me());
        assert!(
            opened.as_ref().is_ok_and(|fd| fd.as_raw_fd() > 2),
            "{:?}",
            opened.err()
        );
        // Through a symlink kept in a trusted directory: the same.
        std::os::unix::fs::symlink(&group, t.path().join("link")).unwrap_or_default();
        assert!(open_log_dir(&t.path().join("link/own"), me()).is_ok());
        // Its own directory writable by its group: refused, both ways.
        mode(&own, 0o770);
        for d in [own.clone(), t.path().join("link/own")] {
            let err = open_log_dir(&d, me()).err();
            assert!(
                err.as_ref()
                    .is_some_and(|e| e.problem.contains("writable by group or others")),
                "{err:?}"
            );
        }
        mode(&own, 0o700);
        // Writable by others above it: refused, both ways.
        mode(&group, 0o777);
        for d in [own.clone(), t.path().join("link/own")] {
            let err = open_log_dir(&d, me()).err();
            assert!(
                err.as_ref().is_some_and(|e| {
                    (e.path == group || e.path == t.path().join("link"))
                        && e.problem.contains("writable by others")
                }),
                "{err:?}"
            );
        }
        mode(&group, 0o775);
        // A symlink in a directory others may write is refused, wherever
        // it points.
        let open = mkdir("open", 0o777);
        std::os::unix::fs::symlink(&group, open.join("link")).unwrap_or_default();
        let err = open_log_dir(&open.join("link/own"), me()).err();
        assert!(err.as_ref().is_some_and(|e| e.path == open), "{err:?}");
    }

    #[test]
    fn tmp_is_never_trusted() {
        // /tmp is world-writable (sticky or not): nothing below it is a trust root.
        assert!(check_dir_chain(Path::new("/tmp"), me()).is_err());
    }
}
