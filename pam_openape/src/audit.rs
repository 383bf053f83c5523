//! The JSONL audit log: one object per line, appended with one `write(2)`.
//!
//! Opened with `O_APPEND | O_NOFOLLOW` in a directory that must be trusted
//! (root-owned, not writable by others); never follows a symlink, never
//! creates the directory, never holds a token (only an 8-hex fingerprint).
//! Callers open it before anything is consumed: a grant that cannot be
//! logged is not used. Timestamps are UTC, computed without `TZ`.
//! A line is never written in part for want of space (room is reserved
//! first), and a line someone else left torn (a writer killed inside its
//! `write(2)`) is ended before the next record, which so stays whole.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
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
    /// Set only when `command` was cut to fit [`MAX_LINE`]: the size in
    /// bytes of the whole command (its arguments joined by spaces), whose
    /// `cmd_hash` the record then carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_bytes: Option<u64>,
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
}

/// Longest line written. A grant is at most 16 KiB, so no command a grant
/// names comes near it; a longer line is a refused command line (argv can
/// hold megabytes, six times that once control characters are escaped),
/// which went into root's log whole. Such a record is cut: the first
/// [`KEPT_COMMAND`] bytes of its command, the size and `cmd_hash` of the
/// whole, a reason and cwd of at most [`KEPT_TEXT`] bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest wait for another writer's lock (see [`AuditLog::append`]).
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);
/// What a cut record keeps of its command (escaped JSON bytes).
const KEPT_COMMAND: usize = 32 * 1024;
/// What a cut record keeps of its reason and cwd (escaped JSON bytes).
const KEPT_TEXT: usize = 4096;

/// Bytes `c` takes inside a JSON string as [`to_line`] writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if u32::from(c) < 0x20 || escaped_raw_control(c) => 6,
        c => c.len_utf8(),
    }
}

/// What serde_json leaves raw in a string but a terminal acts on: DEL and
/// the C1 controls U+0080–U+009F (U+009B is CSI: the Linux console, in
/// UTF-8 mode too, starts an escape sequence with it as with `ESC [`, so
/// a caller's argv could clear or redraw root's screen when the log is
/// read with cat or tail), the bidi controls and the line separators
/// ([`crate::error::is_terminal_active`]). They are written `\uXXXX`,
/// like C0.
fn escaped_raw_control(c: char) -> bool {
    u32::from(c) >= 0x7f && crate::error::is_terminal_active(c)
}

/// serde_json's compact output with [`escaped_raw_control`] characters
/// escaped too; still plain JSON, parsed back to the same strings.
struct NoRawControls;

impl serde_json::ser::Formatter for NoRawControls {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if escaped_raw_control(c) {
                writer.write_all(fragment.get(start..i).unwrap_or_default().as_bytes())?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(fragment.get(start..).unwrap_or_default().as_bytes())
    }
}

/// One record as a JSON line (without the newline): no raw control
/// character of any kind.
fn to_line(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, NoRawControls);
    record.serialize(&mut ser)?;
    Ok(out)
}

/// The longest prefix of `s` that takes at most `budget` bytes inside a
/// JSON string, and the bytes it takes.
fn prefix_within(s: &str, budget: usize) -> (&str, usize) {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        if used + json_len(c) > budget {
            return (s.get(..i).unwrap_or_default(), used);
        }
        used += json_len(c);
    }
    (s, used)
}

impl Record {
    /// This record cut to fit [`MAX_LINE`] (see there).
    fn fitted(&self) -> Record {
        let mut budget = KEPT_COMMAND;
        let mut command = Vec::new();
        for arg in &self.command {
            let (kept, used) = prefix_within(arg, budget);
            command.push(kept.to_string());
            // Quotes and comma.
            budget = budget.saturating_sub(used + 3);
            if kept.len() < arg.len() || budget == 0 {
                break;
            }
        }
        let whole = self.command.iter().map(String::len).sum::<usize>()
            + self.command.len().saturating_sub(1);
        let cut = |t: &Option<String>| {
            t.as_deref()
                .map(|t| prefix_within(t, KEPT_TEXT).0.to_string())
        };
        Record {
            command,
            command_bytes: Some(whole as u64),
            cmd_hash: self
                .cmd_hash
                .clone()
                .or_else(|| Some(crate::command::cmd_hash(&self.command))),
            reason: cut(&self.reason),
            cwd: cut(&self.cwd),
            ..self.clone()
        }
    }
}

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
        let dir_fd =
            trust::open_log_dir(dir, owner).map_err(|e| io_err(path, format!("directory {e}")))?;
        let name = path
            .file_name()
            .ok_or_else(|| io_err(path, "names no file"))?;
        // Relative to the checked directory's descriptor: no component can
        // be swapped between the check and the open. Readable as well:
        // `append` looks at the last byte (a line torn by a writer killed
        // mid-write must not swallow the next record).
        let file: File = nix::fcntl::openat(
            &dir_fd,
            name,
            nix::fcntl::OFlag::O_RDWR
                | nix::fcntl::OFlag::O_APPEND
                | nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NOCTTY
                | nix::fcntl::OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| {
            if e == nix::errno::Errno::ELOOP {
                io_err(path, "is a symbolic link")
            } else {
                io_err(path, format!("cannot be opened: {e}"))
            }
        })?
        .into();
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
    pub fn reserve_for(&self, record: &Record) -> Result<(), Denial> {
        let len = to_line(record).map_err(|e| io_err(&self.path, e))?.len() as u64 + 4096;
        self.reserve(len)
    }

    /// Make room for `len` more bytes at the end of the file. Space past
    /// the end is allocated without changing the size
    /// (`fallocate(FALLOC_FL_KEEP_SIZE)`), so the write that follows
    /// cannot run out of space half-way; where the file system cannot do
    /// that, its free space is checked instead.
    fn reserve(&self, len: u64) -> Result<(), Denial> {
        use nix::fcntl::{FallocateFlags, fallocate};
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

    /// Held while a line is checked and written: the end of the file seen
    /// before the write is then never another writer's line still being
    /// copied in (which would look torn). Other writers wait at most
    /// [`LOCK_PATIENCE`]; one stopped while holding it (a caller may
    /// SIGSTOP its own escapes) only delays them, they then write without
    /// it. A writer that dies lets go of it with its descriptor.
    fn lock(&self) -> Option<nix::fcntl::Flock<File>> {
        // A second descriptor of the same open file: the lock belongs to
        // the open file, so this process's other uses of it never wait.
        let file = self.file.try_clone().ok()?;
        trust::flock_within(file, LOCK_PATIENCE, std::time::Duration::from_millis(1))
    }

    /// Does the file end in the middle of a line? (A writer killed during
    /// its `write(2)`, or an older build on a full disk, left one.)
    fn ends_mid_line(&self, end: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(last) = end.checked_sub(1) else {
            return false;
        };
        let mut byte = [0u8; 1];
        matches!(self.file.read_at(&mut byte, last), Ok(1) if byte != *b"\n")
    }

    /// Append one record as one line with a single `write(2)`. Nothing is
    /// written when the whole line does not fit (space is reserved first),
    /// and a line torn before it is ended first, so a record never becomes
    /// part of someone else's broken line.
    pub fn append(&self, record: &Record) -> Result<(), Denial> {
        let mut line = to_line(record).map_err(|e| io_err(&self.path, e))?;
        if line.len() >= MAX_LINE {
            line = to_line(&record.fitted()).map_err(|e| io_err(&self.path, e))?;
        }
        line.push(b'\n');
        // A file-size limit must not cut a line in half (the rest of the
        // log would no longer parse): lift it for this write where the
        // process may, and refuse to write a line that would not fit.
        let _lift = FileSizeLimit::lift();
        let _held = self.lock();
        let end = self
            .file
            .metadata()
            .map_err(|e| io_err(&self.path, e))?
            .len();
        if self.ends_mid_line(end) {
            line.insert(0, b'\n');
        }
        if !FileSizeLimit::allows(end.saturating_add(line.len() as u64)) {
            return Err(io_err(
                &self.path,
                "the file-size limit (ulimit -f) leaves no room for the log line",
            ));
        }
        self.reserve(line.len() as u64)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, me};
    use std::fs::OpenOptions;

    /// A new log `audit.log` in a trusted temp directory (kept alive by
    /// the returned `TempDir`); `None` (reported skipped) where there is
    /// no such directory for this user.
    fn fresh_log(name: &str) -> Option<(TempDir, std::path::PathBuf, AuditLog)> {
        let Some(t) = TempDir::trusted(name) else {
            eprintln!("skipped: no trusted temp directory for this user");
            return None;
        };
        let p = t.path().join("audit.log");
        let log = AuditLog::open(&p, me());
        assert!(log.is_ok(), "{:?}", log.err());
        Some((t, p, log.ok()?))
    }

    #[test]
    fn writes_one_parseable_line_per_record_even_with_hostile_text() {
        let Some((_t, p, log)) = fresh_log("audit") else {
            return;
        };
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

    /// serde_json writes DEL and the C1 controls raw; U+009B is CSI on
    /// the Linux console, so a refused caller's argv `["id\u{9b}2J"]`
    /// (no grant needed) cleared root's screen when the log was shown.
    /// Every control character is written escaped, and the line still
    /// parses back to the same text.
    #[test]
    fn no_raw_control_character_reaches_the_log() {
        let Some((_t, p, log)) = fresh_log("audit-c1") else {
            return;
        };
        let hostile =
            "id\u{9b}2J\u{9b}1;1H\u{7f}\u{85}\u{9d}0;t\u{9c}\u{80}é\u{a0}\u{202e}x\u{2028}";
        let rec = Record {
            event: "denied",
            command: vec![hostile.into()],
            reason: Some(hostile.into()),
            cwd: Some(hostile.into()),
            ..Record::default()
        };
        assert!(log.append(&rec).is_ok());
        let bytes = std::fs::read(&p).unwrap_or_default();
        let text = String::from_utf8(bytes).unwrap_or_default();
        let line = text.strip_suffix('\n').unwrap_or_default();
        assert!(
            !line.chars().any(crate::error::is_terminal_active),
            "raw control character in {line:?}"
        );
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        assert_eq!(v["command"][0], hostile);
        assert_eq!(v["reason"], hostile);
        assert_eq!(v["cwd"], hostile);
        // The cut of an oversized record counts these escapes too.
        assert_eq!(json_len('\u{9b}'), to_line_len("\u{9b}"));
        assert_eq!(json_len('\u{7f}'), to_line_len("\u{7f}"));
        assert_eq!(json_len('\u{a0}'), to_line_len("\u{a0}"));
        assert_eq!(json_len('\u{202e}'), to_line_len("\u{202e}"));
    }

    /// Bytes `s` takes inside a JSON string as written to the log.
    fn to_line_len(s: &str) -> usize {
        let rec = Record {
            command: vec![s.into()],
            ..Record::default()
        };
        let empty = Record::default();
        to_line(&rec).map(|l| l.len()).unwrap_or_default()
            - to_line(&empty).map(|l| l.len()).unwrap_or_default()
            - 2
    }

    #[test]
    fn a_huge_record_is_cut_to_one_bounded_line() {
        let Some((_t, p, log)) = fresh_log("audit4") else {
            return;
        };
        // Under the limit (what a 16 KiB grant can name): untouched.
        let small: Vec<String> = vec!["echo".into(), "\u{1}\"é".repeat(1500)];
        let rec = Record {
            event: "grant_run",
            command: small.clone(),
            ..Record::default()
        };
        assert!(log.append(&rec).is_ok());
        // Over it: every kind of character, megabytes of them.
        let big: Vec<String> = std::iter::once("x".to_string())
            .chain(std::iter::repeat_n("a\u{1}\"\\\né€".repeat(20_000), 30))
            .collect();
        let rec = Record {
            event: "denied",
            command: big.clone(),
            reason: Some("\u{2}".repeat(100_000)),
            ..Record::default()
        };
        assert!(log.append(&rec).is_ok());
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value =
            serde_json::from_str(lines.first().copied().unwrap_or_default()).unwrap_or_default();
        assert_eq!(first["command"], serde_json::json!(small));
        assert!(first.get("command_bytes").is_none());
        let last = lines.last().copied().unwrap_or_default();
        assert!(last.len() < MAX_LINE, "{}", last.len());
        let v: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
        let kept: Vec<String> = serde_json::from_value(v["command"].clone()).unwrap_or_default();
        assert_eq!(kept.first(), big.first());
        assert!(kept.len() >= 2 && kept.len() < big.len(), "{}", kept.len());
        for (k, b) in kept.iter().zip(&big) {
            assert!(b.starts_with(k.as_str()));
        }
        let whole = big.iter().map(String::len).sum::<usize>() + big.len() - 1;
        assert_eq!(v["command_bytes"], whole);
        assert_eq!(v["cmd_hash"], crate::command::cmd_hash(&big));
        assert!(
            v["reason"]
                .as_str()
                .is_some_and(|r| r.len() * 6 <= KEPT_TEXT)
        );
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_record() {
        let Some((_t, p, log)) = fresh_log("audit3") else {
            return;
        };
        let rec = Record {
            ts: crate::time::rfc3339_utc(0),
            event: "grant_run",
            via: "escapes".into(),
            command: vec!["id".into()],
            ..Record::default()
        };
        assert!(log.append(&rec).is_ok());
        // What a writer killed in the middle of its write(2) leaves: the
        // start of a line, no newline.
        let torn = OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(b"{\"ts\":\"x\",\"event\":\"den"));
        assert!(torn.is_ok(), "{torn:?}");
        assert!(log.append(&rec).is_ok());
        assert!(log.append(&rec).is_ok());
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for i in [0, 2, 3] {
            let line = lines.get(i).copied().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            assert_eq!(v["event"], "grant_run", "line {i}: {text}");
        }
        assert!(text.ends_with("}\n"));
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
