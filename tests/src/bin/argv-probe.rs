//! argv-probe: the command of the argv differential test
//! (tests/tests/pam_argv_differential.rs). It records what really ran:
//! its argv byte-exact (hex), real and effective uid and gid, and the
//! caller's marker variable `PROBE_MARK` (present only when the caller's
//! environment reached the command). One JSON line is appended with one
//! write(2) to `<dir of its own executable>/../probe-out/runs`.
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let argv: Vec<String> = std::env::args_os().map(|a| hex(a.as_bytes())).collect();
    // SAFETY: these calls cannot fail and take no pointers.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let mark = std::env::var_os("PROBE_MARK").map(|m| hex(m.as_bytes()));
    let line = serde_json::json!({
        "argv": argv,
        "uid": uid,
        "euid": euid,
        "gid": gid,
        "egid": egid,
        "mark": mark,
    })
    .to_string()
        + "\n";
    let Some(dir) = std::fs::read_link("/proc/self/exe").ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("probe-out/runs"))
    }) else {
        std::process::exit(3);
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o666)
        .open(&dir)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if written.is_err() {
        std::process::exit(3);
    }
}
