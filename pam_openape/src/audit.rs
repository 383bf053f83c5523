//! The JSONL audit log: one object per line, appended with one `write(2)`.
//!
//! Opened with `O_APPEND | O_NOFOLLOW` in a directory that must be trusted
//! (root-owned, not writable by others); never follows a symlink, never
//! creates the directory, never holds a token (only an 8-hex fingerprint).
//! Callers open it before anything is consumed: a grant that cannot be
//! logged is not used. Timestamps are UTC, computed without `TZ`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Denial, Kind, Step};
use crate::trust;

/// `RLIMIT_FSIZE` raised for as long as this value lives: the soft limit
/// to the hard one (any process may), and both to unlimited where the
/// process is privileged; the caller's limit comes back on drop.
struct FileSizeLimit {
    saved: Option<(u64, u64)>,
}

impl FileSizeLimit {
    fn lift() -> FileSizeLimit {
        use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_FSIZE) else {
            return FileSizeLimit { saved: None };
        };
        if soft == RLIM_INFINITY {
            return FileSizeLimit { saved: None };
        }
        if setrlimit(Resource::RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY).is_err() {
            let _ = setrlimit(Resource::RLIMIT_FSIZE, hard, hard);
        }
        FileSizeLimit {
            saved: Some((soft, hard)),
        }
    }

    /// Would a file of `size` bytes be within the limit in force now?
    fn allows(size: u64) -> bool {
        use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
        match getrlimit(Resource::RLIMIT_FSIZE) {
            Ok((soft, _)) => soft == RLIM_INFINITY || size <= soft,
            Err(_) => false,
        }
    }
}

impl Drop for FileSizeLimit {
    fn drop(&mut self) {
        if let Some((soft, hard)) = self.saved {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_FSIZE,
                soft,
                hard,
            );
        }
    }
}

/// One audit record. `event` is `grant_run`, `denied`, `session_open` or
/// `session_close`; fields that do not apply are left out.
#[derive(Serialize, Default, Debug, Clone)]
pub struct Record {
    pub ts: String,
    pub event: &'static str,
    /// `escapes` or `pam:<service>`.
    pub via: String,
    pub real_uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_type: Option<&'static str>,
    /// The grant's `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_host: Option<String>,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// First 8 hex digits of SHA-256 of the token, for correlation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_fp: Option<String>,
    /// `torn_line` records only: the start of the cut-off line they
    /// replace, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragment: Option<String>,
}

/// How long [`AuditLog::append`] waits for the log's lock before it writes
/// without it (a writer its caller stopped with SIGSTOP holds it).
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
/// How far back the start of a cut-off line is looked for.
const MAX_FRAGMENT_SCAN: u64 = 64 * 1024 * 1024;
/// How much of a cut-off line its `torn_line` record keeps.
const FRAGMENT_KEPT: usize = 512;

/// An open audit log.
pub struct AuditLog {
    file: File,
    path: PathBuf,
}

fn io_err(path: &Path, msg: impl std::fmt::Display) -> Denial {
    Denial::new(
        Step::Audit,
        Kind::Io,
        format!("audit log {}: {msg}", path.display()),
    )
}

impl AuditLog {
    /// Open (creating it 0600 if needed) the log at `path`. Its directory
    /// must exist and be trusted; the file must not be a symlink, must be a
    /// regular file owned by `owner` and writable by nobody else.
    pub fn open(path: &Path, owner: u32) -> Result<AuditLog, Denial> {
        let dir = path
            .parent()
            .ok_or_else(|| io_err(path, "has no directory"))?;
        if !dir.is_dir() {
            return Err(io_err(
                path,
                format!(
                    "directory {} does not exist (create it root-owned, mode 0750)",
                    dir.display()
                ),
            ));
        }
        let real_dir = trust::check_dir_chain(dir, owner)
            .map_err(|e| io_err(path, format!("directory {e}")))?;
        let name = path
            .file_name()
            .ok_or_else(|| io_err(path, "names no file"))?;
        // Through the checked, symlink-free directory: no component can be
        // swapped between the check and the open.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(real_dir.join(name))
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io_err(path, "is a symbolic link")
                } else {
                    io_err(path, format!("cannot be opened: {e}"))
                }
            })?;
        let meta = file.metadata().map_err(|e| io_err(path, e))?;
        if !meta.is_file() {
            return Err(io_err(path, "is not a regular file"));
        }
        if meta.uid() != owner || meta.mode() & 0o022 != 0 {
            return Err(io_err(
                path,
                "must be owned by root and writable by nobody else",
            ));
        }
        // A setuid process creates files with the caller's group: give a
        // root-owned log root's group.
        if owner == 0 && meta.gid() != 0 {
            nix::unistd::fchown(&file, None, Some(nix::unistd::Gid::from_raw(0)))
                .map_err(|e| io_err(path, format!("cannot set its group to root: {e}")))?;
        }
        Ok(AuditLog {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Make sure `record` (and some slack) will fit on the disk, before a
    /// grant is used: the file is created with an inode even on a full
    /// disk, but its line could then not be written after the consume.
    /// Space past the end of the file is allocated without changing its
    /// size (`fallocate(FALLOC_FL_KEEP_SIZE)`); where the file system cannot
    /// do that, its free space is checked instead.
    pub fn reserve_for(&self, record: &Record) -> Result<(), Denial> {
        use nix::fcntl::{FallocateFlags, fallocate};
        let len = serde_json::to_vec(record)
            .map_err(|e| io_err(&self.path, e))?
            .len() as u64
            + 4096;
        let end = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, e))?
            .len();
        let _lift = FileSizeLimit::lift();
        if !FileSizeLimit::allows(end.saturating_add(len)) {
            return Err(io_err(
                &self.path,
                "the file-size limit (ulimit -f) leaves no room for the log line",
            ));
        }
        let (Ok(off), Ok(n)) = (i64::try_from(end), i64::try_from(len)) else {
            return Err(io_err(&self.path, "is too large"));
        };
        match fallocate(&self.file, FallocateFlags::FALLOC_FL_KEEP_SIZE, off, n) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                let st =
                    nix::sys::statvfs::fstatvfs(&self.file).map_err(|e| io_err(&self.path, e))?;
                let free = st.blocks_available().saturating_mul(st.fragment_size());
                if free < len {
                    return Err(io_err(&self.path, "has no space left for the log line"));
                }
                Ok(())
            }
            Err(e) => Err(io_err(
                &self.path,
                format!("no space can be reserved for the log line ({e})"),
            )),
        }
    }

    /// Append one record as one line with a single `write(2)`.
    ///
    /// The write happens under an exclusive `flock` of the log (waiting at
    /// most [`LOCK_PATIENCE`], then without it), after a look at the end of
    /// the file: a process killed while writing (sudo and su run the PAM
    /// stack with their caller's real uid, so the caller may SIGKILL them
    /// mid-write; a write that spans pages is then cut between two of
    /// them) leaves a line without its newline. That fragment is replaced
    /// by a `torn_line` record before the new line goes in, so a cut-off
    /// line never stays in the log and no line is glued to one.
    pub fn append(&self, record: &Record) -> Result<(), Denial> {
        let mut line = serde_json::to_vec(record).map_err(|e| io_err(&self.path, e))?;
        line.push(b'\n');
        // A file-size limit must not cut a line in half (the rest of the
        // log would no longer parse): lift it for this write where the
        // process may, and refuse to write a line that would not fit.
        let _lift = FileSizeLimit::lift();
        let _lock = self.lock();
        self.repair_tail(record);
        let end = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, e))?
            .len();
        if !FileSizeLimit::allows(end.saturating_add(line.len() as u64)) {
            return Err(io_err(
                &self.path,
                "the file-size limit (ulimit -f) leaves no room for the log line",
            ));
        }
        let n = (&self.file)
            .write(&line)
            .map_err(|e| io_err(&self.path, format!("write failed: {e}")))?;
        if n != line.len() {
            return Err(io_err(&self.path, "short write (disk full?)"));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's exclusive lock, or `None` after [`LOCK_PATIENCE`] (or
    /// when no descriptor is left for it): the write then goes ahead
    /// without it, as one `O_APPEND` write.
    fn lock(&self) -> Option<nix::fcntl::Flock<File>> {
        use nix::fcntl::{Flock, FlockArg};
        // The lock belongs to the open file description, which the clone
        // shares; dropping the guard unlocks it.
        let mut file = self.file.try_clone().ok()?;
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => return Some(locked),
                Err((f, _)) if std::time::Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(_) => return None,
            }
        }
    }

    /// If the log does not end with a newline, a writer died in the middle
    /// of its line: cut the fragment off (or, where the file cannot be
    /// shortened, e.g. `chattr +a`, end it with a newline) and put a
    /// `torn_line` record in its place. Best effort: the new line is
    /// written whatever happens here.
    fn repair_tail(&self, writer: &Record) {
        use std::os::unix::fs::FileExt;
        let Ok(len) = self.file.metadata().map(|m| m.len()) else {
            return;
        };
        let mut last = [0u8; 1];
        if len == 0 || self.file.read_exact_at(&mut last, len - 1).is_err() || last == [b'\n'] {
            return;
        }
        // Where the cut-off line starts: after the last newline before it.
        let mut start = None;
        let mut pos = len;
        let mut chunk = vec![0u8; 64 * 1024];
        while pos > 0 && len - pos < MAX_FRAGMENT_SCAN {
            let n = usize::try_from(pos.min(chunk.len() as u64)).unwrap_or(0);
            let from = pos - n as u64;
            let Some(buf) = chunk.get_mut(..n) else {
                return;
            };
            if self.file.read_exact_at(buf, from).is_err() {
                return;
            }
            if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
                start = Some(from + i as u64 + 1);
                break;
            }
            pos = from;
            if pos == 0 {
                start = Some(0);
            }
        }
        let mut head = vec![0u8; FRAGMENT_KEPT];
        let kept = start
            .and_then(|s| {
                let n = usize::try_from((len - s).min(FRAGMENT_KEPT as u64)).ok()?;
                let buf = head.get_mut(..n)?;
                self.file.read_exact_at(buf, s).ok()?;
                Some(String::from_utf8_lossy(buf).into_owned())
            })
            .unwrap_or_default();
        let cut = start.is_some_and(|s| self.file.set_len(s).is_ok());
        let note = Record {
            ts: writer.ts.clone(),
            event: "torn_line",
            via: writer.via.clone(),
            real_uid: writer.real_uid,
            user: writer.user.clone(),
            host: writer.host.clone(),
            reason: Some(format!(
                "the line before this one was cut off ({}; its writer died while writing it){}",
                match start {
                    Some(s) => format!("{} bytes", len - s),
                    None => "longer than the scan".to_string(),
                },
                if cut {
                    "; it was removed, its start is kept in fragment"
                } else {
                    "; it could not be removed and stays above this line"
                }
            )),
            fragment: Some(kept),
            ..Record::default()
        };
        let Ok(mut text) = serde_json::to_vec(&note) else {
            return;
        };
        text.push(b'\n');
        if !cut {
            text.insert(0, b'\n');
        }
        let _ = (&self.file).write(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, me};

    #[test]
    fn writes_one_parseable_line_per_record_even_with_hostile_text() {
        let Some(t) = TempDir::trusted("audit") else {
            eprintln!("skipped: no trusted temp directory for this user");
            return;
        };
        let p = t.path().join("audit.log");
        let log = AuditLog::open(&p, me());
        assert!(log.is_ok(), "{:?}", log.err());
        let Ok(log) = log else { return };
        let rec = Record {
            ts: crate::time::rfc3339_utc(0),
            event: "denied",
            via: "escapes".into(),
            command: vec![
                "echo".into(),
                "a\nb\r\x1b[2J".into(),
                "{\"event\":\"grant_run\"}\n".into(),
            ],
            reason: Some("x\ny".into()),
            ..Record::default()
        };
        assert!(log.append(&rec).is_ok());
        assert!(log.append(&rec).is_ok());
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            assert_eq!(v["event"], "denied");
            assert_eq!(v["command"][1], "a\nb\r\x1b[2J");
        }
        let mode = std::fs::metadata(&p).map(|m| m.mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600);
    }

    /// A writer killed in the middle of its line leaves a fragment without
    /// a newline; the next append replaces it with a `torn_line` record
    /// (keeping its start) instead of gluing its own line to it.
    #[test]
    fn a_cut_off_line_is_replaced_before_the_next_one() {
        let Some(t) = TempDir::trusted("audit-torn") else {
            eprintln!("skipped: no trusted temp directory for this user");
            return;
        };
        let p = t.path().join("audit.log");
        let log = AuditLog::open(&p, me());
        assert!(log.is_ok(), "{:?}", log.err());
        let Ok(log) = log else { return };
        let rec = |event| Record {
            ts: crate::time::rfc3339_utc(0),
            event,
            via: "escapes".into(),
            command: vec!["echo".into(), "x".repeat(100_000)],
            ..Record::default()
        };
        assert!(log.append(&rec("denied")).is_ok());
        // What a killed writer leaves: the start of a line, no newline.
        let fragment = br#"{"ts":"1970-01-01T00:00:00Z","event":"grant_run","command":["ec"#;
        assert!((&log.file).write_all(fragment).is_ok());
        assert!(log.append(&rec("grant_run")).is_ok());
        // And one cut off just after its first bytes.
        assert!((&log.file).write_all(b"{\"ts").is_ok());
        assert!(log.append(&rec("denied")).is_ok());
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        let events: Vec<&str> = parsed
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("not JSON"))
            .collect();
        assert_eq!(
            events,
            ["denied", "torn_line", "grant_run", "torn_line", "denied"]
        );
        let torn: serde_json::Value =
            serde_json::from_str(text.lines().nth(1).unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            torn["fragment"].as_str(),
            std::str::from_utf8(fragment).ok()
        );
        assert!(
            torn["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("{} bytes", fragment.len()))),
            "{torn}"
        );
    }

    #[test]
    fn refuses_symlinks_and_missing_directories() {
        let Some(t) = TempDir::trusted("audit2") else {
            eprintln!("skipped: no trusted temp directory for this user");
            return;
        };
        let target = t.path().join("elsewhere");
        let link = t.path().join("audit.log");
        let _ = std::os::unix::fs::symlink(&target, &link);
        let e = AuditLog::open(&link, me()).err().map(|e| e.reason);
        assert!(
            e.as_deref().is_some_and(|r| r.contains("symbolic link")),
            "{e:?}"
        );
        assert!(!target.exists());
        let e = AuditLog::open(&t.path().join("missing/audit.log"), me())
            .err()
            .map(|e| e.reason);
        assert!(
            e.as_deref().is_some_and(|r| r.contains("does not exist")),
            "{e:?}"
        );
    }
}
