//! Hostile process state around the setuid binary (issue 10, round 2):
//! what a caller controls besides argv and the environment — umask,
//! resource limits, signal dispositions, a controlling terminal behind
//! piped stdio, broken output descriptors, malformed environment entries,
//! the config path. Each test runs the real setuid `escapes` as the real
//! test user (or as root where the scenario needs a terminal), in the
//! sandbox's private mount namespace, and checks what the command and the
//! audit log saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use openape_tests::harness::{
    self, HOST, Output, Run, Sandbox, TestUser, artefact, exec_raw_in, require_root, test_user,
};
use openape_tests::idp::{Fault, GrantSpec, Issued, TestIdp};

struct T {
    idp: TestIdp,
    sb: Sandbox,
    user: &'static TestUser,
}

fn setup(name: &str) -> Option<T> {
    if !require_root() {
        return None;
    }
    let user = test_user();
    let idp = TestIdp::start();
    let sb = Sandbox::new(name);
    sb.write_config(&sb.config(&idp.issuer()).render());
    Some(T { idp, sb, user })
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl T {
    fn issue(&self, argv: &[String]) -> Issued {
        self.idp.issue(&GrantSpec::new(HOST, &strs(argv)))
    }

    /// A grant file the test user can read.
    fn grant_file(&self, name: &str, g: &Issued) -> String {
        let u = self.user;
        self.sb
            .write_file(name, g.jwt.as_bytes(), u.uid, u.gid, 0o600)
            .to_string_lossy()
            .into_owned()
    }

    /// `/bin/sh -c '<prelude>; exec escapes --grant-file F -- argv'` as
    /// the test user in the sandbox's namespace: the prelude sets up the
    /// hostile state (umask, ulimit, trap) that escapes then inherits.
    fn run_after(&self, prelude: &str, g: &Issued, argv: &[String]) -> Output {
        let file = self.grant_file("grant", g);
        self.shell(prelude, &file, argv).as_test_user().output()
    }

    /// `/bin/sh -c '<prelude>; exec escapes --grant-file FILE -- argv'` in
    /// the sandbox's namespace, as root until told otherwise.
    fn shell(&self, prelude: &str, file: &str, argv: &[String]) -> Run {
        let mut script = format!(
            "{prelude}\nexec {} --grant-file {file} --",
            self.sb.escapes().display()
        );
        for a in argv {
            script.push_str(&format!(" '{a}'"));
        }
        Run::new("/bin/sh")
            .args(["-c", &script])
            .cwd(self.sb.root())
            .config_ns(self.sb.config_ns())
    }

    fn assert_ran(&self, out: &Output, g: &Issued) {
        assert_eq!(out.code, 0, "{out}");
        let lines = self.sb.audit_lines(); // panics on a torn line
        let last = lines.last().expect("an audit line");
        assert_eq!(last["event"], "grant_run", "{last}");
        assert_eq!(last["grant_id"], g.grant_id.as_str(), "{last}");
        assert_eq!(self.idp.consume_count(&g.grant_id), 1);
    }
}

/// Item 5: the caller's umask 000 does not reach a root command (sudo's
/// rule: the caller's umask plus the configured 022), and a configured
/// umask adds its bits.
#[test]
fn the_callers_umask_cannot_make_root_files_world_writable() {
    let Some(t) = setup("umask") else { return };
    for (cfg_umask, want) in [(None, 0o644), (Some("0077"), 0o600)] {
        if let Some(m) = cfg_umask {
            let mut c = t.sb.config(&t.idp.issuer());
            c.top = format!("umask = \"{m}\"");
            t.sb.write_config(&c.render());
        }
        let file = t.sb.path("made-by-root");
        let _ = std::fs::remove_file(&file);
        let argv = vec!["touch".to_string(), file.to_string_lossy().into_owned()];
        let g = t.issue(&argv);
        let out = t.run_after("umask 000", &g, &argv);
        t.assert_ran(&out, &g);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "umask {cfg_umask:?}: mode {mode:o}");
    }
}

/// The caller's `ulimit -c` does not reach the root command: sudo's
/// default `rlimit_core` is 0, and a root command's core file holds what it
/// read as root. The other limits go back to the command (the control:
/// the caller's file-size limit is there).
#[test]
fn the_callers_core_limit_does_not_reach_the_root_command() {
    let Some(t) = setup("rlimit-core") else {
        return;
    };
    let argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        "echo $(ulimit -S -c) $(ulimit -H -c) $(ulimit -S -f)".into(),
    ];
    let g = t.issue(&argv);
    let out = t.run_after("ulimit -S -c unlimited; ulimit -S -f 123456", &g, &argv);
    t.assert_ran(&out, &g);
    assert_eq!(out.stdout.trim(), "0 0 123456", "{out}");
}

/// Where a hard limit cannot be lifted the run must be refused before
/// anything is consumed, and the log must stay whole.
fn assert_refused_unspent(t: &T, out: &Output, g: &Issued) {
    assert_ne!(out.code, 0, "{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0, "{out}");
    let _ = t.sb.audit_lines(); // panics on a torn line
}

/// Item 6: `ulimit -f 0` with SIGXFSZ ignored consumed the grant and wrote
/// no line at all; a limit inside the next line tore it in half. A soft
/// limit is now lifted for escapes itself (the command gets it back); a
/// hard one is lifted where root may (CAP_SYS_RESOURCE), and otherwise the
/// run is refused with the grant unspent and the log whole.
#[test]
fn file_size_limits_cannot_stop_or_tear_the_audit_line() {
    let Some(t) = setup("rlimit-fsize") else {
        return;
    };
    let argv = vec!["/bin/sh".to_string(), "-c".into(), "ulimit -S -f".into()];
    let g = t.issue(&argv);
    let out = t.run_after("ulimit -S -f 0; trap '' XFSZ", &g, &argv);
    t.assert_ran(&out, &g);
    assert_eq!(
        out.stdout.trim(),
        "0",
        "the command gets the caller's limit back: {out}"
    );

    // The log is now a few hundred bytes: a limit of one 512-byte block
    // more ends inside the next line.
    let size = std::fs::metadata(t.sb.audit_path()).unwrap().len();
    let blocks = size.div_ceil(512);
    let g = t.issue(&argv);
    let out = t.run_after(&format!("ulimit -S -f {blocks}; trap '' XFSZ"), &g, &argv);
    t.assert_ran(&out, &g);
    assert!(std::fs::metadata(t.sb.audit_path()).unwrap().len() > blocks * 512);

    // Hard limits (what `ulimit -f 0` sets in most shells).
    for prelude in [
        "ulimit -f 0; trap '' XFSZ".to_string(),
        format!("ulimit -f {}; trap '' XFSZ", blocks + 1),
        "ulimit -f 0".to_string(),
    ] {
        let g = t.issue(&argv);
        let out = t.run_after(&prelude, &g, &argv);
        if harness::can_raise_hard_limits() {
            t.assert_ran(&out, &g);
        } else {
            assert_refused_unspent(&t, &out, &g);
        }
    }
}

/// A full file system under the log: a refused line that does not fit
/// must not be written in part. The part before ENOSPC had no newline, so
/// the next record (another caller's `grant_run`) was glued onto it and
/// no longer parsed. A caller who can fill that file system picks the
/// tear with the length of a refused command line.
#[test]
fn a_full_disk_cannot_tear_a_line_into_the_next_record() {
    let Some(t) = setup("disk-full-tear") else {
        return;
    };
    let log = t.sb.path("log");
    let Some(_fs) = harness::FullTmpfs::mount(&log) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let fill = log.join("fill");
    std::fs::remove_file(&fill).unwrap();
    let argv = vec!["true".to_string()];
    let g = t.issue(&argv);
    let out = t.run_after("", &g, &argv);
    t.assert_ran(&out, &g);
    let before = std::fs::metadata(t.sb.audit_path()).unwrap().len();

    // The rest of the file system taken (what a user filling a shared
    // /var does), then a refused command line longer than the room left
    // in the log's last page.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        while f.write_all(&[b'x'; 4096]).is_ok() {}
        while f.write_all(b"x").is_ok() {}
    }
    let long = "A".repeat(9000);
    let out = t.sb.run_as_user(
        &["--grant", "not-a-grant", "--", "/bin/echo", long.as_str()],
        &[],
        None,
    );
    assert_ne!(out.code, 0, "{out}");
    assert_eq!(
        std::fs::metadata(t.sb.audit_path()).unwrap().len(),
        before,
        "a line that did not fit was written in part"
    );

    std::fs::remove_file(&fill).unwrap();
    let g = t.issue(&argv);
    let out = t.run_after("", &g, &argv);
    t.assert_ran(&out, &g); // every line parses, the last is this grant_run
}

/// Many writers at once, with lines that cross page boundaries: every
/// line is one whole record, none empty, none interleaved. (A writer that
/// checked the end of the file while another's line was still being
/// copied in took it for a torn line and ended it: an empty line.)
#[test]
fn concurrent_writers_leave_whole_lines_only() {
    let Some(t) = setup("audit-concurrent") else {
        return;
    };
    let script = format!(
        "a=$(printf '%03000d' 0)\nfor j in 1 2 3 4 5 6 7 8; do (for i in $(seq 1 60); do {} --grant x -- /bin/echo $j$a >/dev/null 2>&1; done) & done\nwait",
        t.sb.escapes().display()
    );
    let out = Run::new("/bin/bash")
        .args(["-c", &script])
        .cwd(t.sb.root())
        .config_ns(t.sb.config_ns())
        .as_test_user()
        .timeout(Duration::from_secs(120))
        .output();
    assert_eq!(out.code, 0, "{out}");
    let text = t.sb.audit_text();
    assert_eq!(text.lines().count(), 480, "{}", text.len());
    assert!(!text.contains("\n\n"), "an empty line");
    let lines = t.sb.audit_lines(); // panics on a torn line
    assert!(lines.iter().all(|l| l["event"] == "denied"));
}

/// Item 6: a tiny descriptor limit cannot make escapes consume a grant it
/// then cannot log or run.
#[test]
fn a_tiny_descriptor_limit_still_runs_and_logs() {
    let Some(t) = setup("rlimit-nofile") else {
        return;
    };
    let argv = vec!["true".to_string()];
    let g = t.issue(&argv);
    let out = t.run_after("ulimit -S -n 4", &g, &argv);
    t.assert_ran(&out, &g);
    let g = t.issue(&argv);
    let out = t.run_after("ulimit -n 4", &g, &argv);
    if harness::can_raise_hard_limits() {
        t.assert_ran(&out, &g);
    } else {
        assert_refused_unspent(&t, &out, &g);
    }
}

/// Item 8: the command starts with default signal dispositions and an
/// empty mask, whatever the caller ignored (SIGPIPE included, which the
/// Rust runtime ignores for itself).
#[test]
fn the_command_gets_default_signal_dispositions() {
    let Some(t) = setup("signals") else {
        return;
    };
    let argv = vec![
        "grep".to_string(),
        "-E".into(),
        "^Sig(Ign|Blk)".into(),
        "/proc/self/status".into(),
    ];
    let g = t.issue(&argv);
    let out = t.run_after("trap '' INT TERM HUP QUIT PIPE USR1 TSTP", &g, &argv);
    t.assert_ran(&out, &g);
    for line in out.stdout.lines() {
        let (_, mask) = line.split_once(':').unwrap();
        assert_eq!(
            u64::from_str_radix(mask.trim(), 16).unwrap(),
            0,
            "inherited: {line}\n{out}"
        );
    }
    assert_eq!(out.stdout.lines().count(), 2, "{out}");
}

/// Item 7: environment entries that are not NAME=value (`=X`, `==`, a bare
/// word) must not panic the setuid binary before any check (exit 101);
/// they are dropped and the run goes on.
#[test]
fn malformed_environment_entries_do_not_panic() {
    let Some(t) = setup("env-eq") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let file = t.grant_file("grant", &g);
    let mut args: Vec<Vec<u8>> = vec![
        b"escapes".to_vec(),
        b"--grant-file".to_vec(),
        file.into_bytes(),
        b"--".to_vec(),
    ];
    args.extend(argv.iter().map(|a| a.clone().into_bytes()));
    let argv_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    let out = exec_raw_in(
        Some(t.sb.config_ns().as_ref()),
        &t.sb.escapes(),
        &argv_refs,
        &[("", "X"), ("", "=Y"), ("PATH", harness::SANE_PATH)],
        &[b"BAREWORD".as_slice()],
        true,
        t.sb.root(),
        harness::DEFAULT_TIMEOUT,
    );
    assert!(!out.stderr.contains("panicked"), "{out}");
    t.assert_ran(&out, &g);
    assert!(t.sb.marker_exists("m"));
}

/// Item 7: output that cannot be written (a full device, a closed pipe)
/// is ignored, never a panic: a refusal still exits 5 with its audit line,
/// and --help exits 0.
#[test]
fn unwritable_output_does_not_panic() {
    let Some(t) = setup("dev-full") else { return };
    let argv = t.sb.marker_cmd("m");
    let mut spec = GrantSpec::new("otherhost", &strs(&argv));
    spec.run_as = None;
    let g = t.idp.issue(&spec);
    let file = t.grant_file("grant", &g);
    let script = format!(
        "{esc} --grant-file {file} -- {cmd} >/dev/full 2>/dev/full; echo rc=$?; {esc} --help >/dev/full 2>/dev/full; echo help=$?",
        esc = t.sb.escapes().display(),
        cmd = argv.join(" ")
    );
    let out = Run::new("/bin/sh")
        .args(["-c", &script])
        .cwd(t.sb.root())
        .config_ns(t.sb.config_ns())
        .as_test_user()
        .output();
    assert!(out.stdout.contains("rc=5"), "{out}");
    assert!(out.stdout.contains("help=0"), "{out}");
    let last = t.sb.last_audit();
    assert_eq!(last["step"], "host", "{last}");
}

/// Closed standard descriptors (`<&- >&- 2>&-`): what escapes opens (the
/// audit log, the IdP socket, the cache) takes the lowest free number, and
/// a root command that inherited the audit log as its stdout would write
/// into it. glibc fills 0–2 of a set-user-ID program before `main`
/// (`/dev/full`, `/dev/null`); the run is logged, every line whole, and
/// the command sees none of escapes' files on 0–2.
#[test]
fn closed_standard_descriptors_do_not_reach_the_audit_log() {
    let Some(t) = setup("closed-fds") else { return };
    let fds = t.sb.path("fds");
    let probe = format!(
        "for n in 0 1 2; do echo \"$n $(readlink /proc/$$/fd/$n)\"; done > {} 2>&1",
        fds.display()
    );
    let argv = vec!["/bin/sh".to_string(), "-c".into(), probe];
    let g = t.issue(&argv);
    let out = t.run_after("exec 0<&- 1>&- 2>&-", &g, &argv);
    t.assert_ran(&out, &g);
    let seen = std::fs::read_to_string(&fds).unwrap_or_default();
    assert_eq!(seen.lines().count(), 3, "{seen:?}\n{out}");
    for l in seen.lines() {
        assert!(
            !l.contains("audit") && !l.contains("socket:") && !l.contains("cache"),
            "the root command got escapes' descriptor: {l}\n{seen}"
        );
    }
}

/// The same with root as the caller, where glibc fills nothing (no
/// set-user-ID start) and escapes does it itself (it starts at its own C
/// `main`, not through std's start-up): a refusal's message and a run both
/// leave only whole JSON lines in the audit log, and the command gets
/// /dev/null, not escapes' files, on 0-2.
#[test]
fn closed_standard_descriptors_of_a_root_caller_do_not_reach_the_audit_log() {
    let Some(t) = setup("closed-fds-root") else {
        return;
    };
    let fds = t.sb.path("fds");
    let probe = format!(
        "for n in 0 1 2; do l=$(readlink /proc/$$/fd/$n); echo \"$n $l\" >> {}; done",
        fds.display()
    );
    let argv = vec!["/bin/sh".to_string(), "-c".into(), probe];
    let g = t.issue(&argv);
    let file = t.sb.write_file("grant-root", g.jwt.as_bytes(), 0, 0, 0o600);
    let as_root = |cmd: &[String]| {
        t.shell("exec 0<&- 1>&- 2>&-", &file.to_string_lossy(), cmd)
            .output()
    };
    // A refusal first (the grant is for another command): its message has
    // nowhere to go but must not land in a file escapes opened.
    let refused = as_root(&["/bin/true".to_string()]);
    assert_ne!(refused.code, 0, "{refused}");
    let lines = t.sb.audit_lines(); // panics on a line that is not JSON
    assert_eq!(
        lines.last().map(|l| l["event"].clone()),
        Some("denied".into()),
        "{lines:?}"
    );
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);
    let out = as_root(&argv);
    t.assert_ran(&out, &g);
    let seen = std::fs::read_to_string(&fds).unwrap_or_default();
    assert_eq!(seen.lines().count(), 3, "{seen:?}\n{out}");
    for l in seen.lines() {
        assert!(
            l.ends_with(" /dev/null"),
            "the root command got {l} instead of /dev/null\n{seen}"
        );
    }
}

/// Root as the caller with standard error closed and no /dev/null to fill
/// it (an empty /dev, in a mount namespace of its own): escapes stops with
/// exit 1 before it opens anything, so no file of its own can become
/// standard error. Nothing is consumed. Control: the same with /dev intact
/// runs.
#[test]
fn a_closed_descriptor_that_cannot_be_filled_stops_escapes() {
    let Some(t) = setup("closed-fds-no-null") else {
        return;
    };
    let argv = vec!["/bin/true".to_string()];
    let run = |empty_dev: bool| {
        let g = t.issue(&argv);
        let file = t.sb.write_file("grant-root", g.jwt.as_bytes(), 0, 0, 0o600);
        let script = if empty_dev {
            "mount -t tmpfs none /dev && exec \"$0\" \"$@\" 2>&-"
        } else {
            "exec \"$0\" \"$@\" 2>&-"
        };
        let out = Run::new("/usr/bin/unshare")
            .args(["-m", "/bin/sh", "-c", script])
            .arg(t.sb.escapes())
            .args(["--grant-file", &file.to_string_lossy(), "--", "/bin/true"])
            .cwd(t.sb.root())
            .config_ns(t.sb.config_ns())
            .output();
        (out, g)
    };
    let (out, g) = run(true);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);
    let (out, g) = run(false);
    t.assert_ran(&out, &g);
}

/// Item 4: with every fd piped the caller can still have a controlling
/// terminal, and a command for a less privileged user could open
/// /dev/tty and type into the caller's shell. It now runs detached from
/// it. Control: the same probe as nobody without escapes can push.
#[test]
fn piped_stdio_does_not_hand_the_terminal_to_the_command() {
    let Some(t) = setup("tiocsti-piped") else {
        return;
    };
    if std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti")
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        eprintln!(
            "skipped: this kernel has TIOCSTI disabled (dev.tty.legacy_tiocsti = 0), the class cannot occur"
        );
        return;
    }
    let probe_src = std::fs::read(harness::artefact("tiocsti-probe")).unwrap();
    let probe = t.sb.write_file("tiocsti-probe", &probe_src, 0, 0, 0o755);
    let probe_s = probe.to_string_lossy().into_owned();
    let result = t.sb.path("probe-out");
    let under_script = |cmd: String| {
        Run::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .timeout(Duration::from_secs(20))
            .output()
    };
    let control = under_script(format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups -- {probe_s} --tty </dev/null >{r} 2>&1",
        r = result.display()
    ));
    let seen = std::fs::read_to_string(&result).unwrap_or_default();
    assert!(
        seen.contains("pushed"),
        "control probe could not push: {seen} {control}"
    );

    let argv = vec![probe_s.clone(), "--tty".into()];
    let mut spec = GrantSpec::new(HOST, &strs(&argv));
    spec.run_as = Some("nobody".into());
    let g = t.idp.issue(&spec);
    let gfile =
        t.sb.write_file("grant-piped", g.jwt.as_bytes(), 0, 0, 0o600);
    let _ = std::fs::remove_file(&result);
    // Root is the caller here (the shell in the terminal); root may name
    // the config.
    let out = under_script(format!(
        "{} --config {} --grant-file {} -u nobody -- {probe_s} --tty </dev/null >{r} 2>&1",
        t.sb.escapes().display(),
        t.sb.config_path().display(),
        gfile.display(),
        r = result.display()
    ));
    let seen = std::fs::read_to_string(&result).unwrap_or_default();
    assert!(
        seen.contains("refused"),
        "the command reached the caller's terminal: {seen} {out}"
    );
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

/// An exec that fails after consume is logged as a `denied` line after
/// the `grant_run` one, also when the command runs detached from the
/// caller's terminal (non-root target, controlling terminal): there the
/// exec happens in a forked child, whose failure used to end in a bare
/// exit 126 with nothing in the log.
#[test]
fn a_failed_exec_is_logged_in_place_and_detached() {
    let Some(t) = setup("exec-fails-detached") else {
        return;
    };
    // Executable, but no program the kernel can load (ENOEXEC).
    let bogus =
        t.sb.write_file("bogus", b"\x7fELF not really\n", 0, 0, 0o755);
    let bogus_s = bogus.to_string_lossy().into_owned();
    let argv = vec![bogus_s.clone()];
    let check = |what: &str, out: &str| {
        let lines = t.sb.audit_lines();
        let n = lines.len();
        assert!(n >= 2, "{what}: {lines:?} {out}");
        assert_eq!(lines[n - 2]["event"], "grant_run", "{what}: {lines:?}");
        assert_eq!(lines[n - 1]["event"], "denied", "{what}: {lines:?}");
        assert_eq!(lines[n - 1]["step"], "exec", "{what}: {lines:?}");
    };
    // In place: root target, no terminal.
    let g = t.idp.issue(&GrantSpec::new(HOST, &strs(&argv)));
    let out =
        t.sb.escapes_run(&["--grant", &g.jwt, "--", &bogus_s])
            .as_test_user()
            .output();
    assert_eq!(out.code, 126, "{out}");
    assert!(out.stderr.contains("Exec format error"), "{out}");
    check("in place", &out.to_string());
    // Detached: target nobody, a controlling terminal (script).
    let mut spec = GrantSpec::new(HOST, &strs(&argv));
    spec.run_as = Some("nobody".into());
    let g = t.idp.issue(&spec);
    let gfile =
        t.sb.write_file("grant-bogus", g.jwt.as_bytes(), 0, 0, 0o600);
    let out = Run::new("/usr/bin/script")
        .args([
            "-qec",
            &format!(
                "{} --config {} --grant-file {} -u nobody -- {bogus_s}; echo rc=$?",
                t.sb.escapes().display(),
                t.sb.config_path().display(),
                gfile.display(),
            ),
            "/dev/null",
        ])
        .timeout(Duration::from_secs(20))
        .output();
    assert!(out.stdout.contains("rc=126"), "{out}");
    assert!(out.stdout.contains("Exec format error"), "{out}");
    check("detached", &out.to_string());
}

/// Item 12: the audit line records where the command really runs (after
/// -D), not where escapes was started.
#[test]
fn the_audit_cwd_is_where_the_command_runs() {
    let Some(t) = setup("cwd") else { return };
    let argv = vec!["true".to_string()];
    let g = t.issue(&argv);
    let out = t.run_after("cd /", &g, &argv);
    t.assert_ran(&out, &g);
    assert_eq!(t.sb.last_audit()["cwd"], "/", "{out}");
    let g = t.issue(&argv);
    let file = t.grant_file("grant-d", &g);
    let out =
        t.sb.escapes_run(&["-D", "/tmp", "--grant-file", &file, "--", "true"])
            .as_test_user()
            .output();
    t.assert_ran(&out, &g);
    assert_eq!(t.sb.last_audit()["cwd"], "/tmp", "{out}");
}

/// Item 13: an http issuer on a loopback port >= 1024 is trusted only with
/// `allow_unprivileged_loopback = true` (any local user can bind it).
#[test]
fn an_unprivileged_loopback_issuer_needs_an_explicit_yes() {
    let Some(t) = setup("loopback") else {
        return;
    };
    let text =
        t.sb.config(&t.idp.issuer())
            .render()
            .replace("allow_unprivileged_loopback = true\n", "");
    t.sb.write_config(&text);
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run_after("", &g, &argv);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("not a valid configuration"), "{out}");
    assert!(!t.sb.marker_exists("m"));
    assert!(t.idp.requests().is_empty(), "{:?}", t.idp.requests());
    // The why is for root (the caller sees nothing of the file's content).
    let mut args = vec!["verify".to_string(), "--grant-stdin".into(), "--".into()];
    args.extend(argv.iter().cloned());
    let out = t.sb.run_as_root(&args, &[], Some(g.jwt.as_bytes()));
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("allow_unprivileged_loopback"), "{out}");
    assert!(t.idp.requests().is_empty(), "{:?}", t.idp.requests());
}

/// A test IdP listening in another network namespace. Its stop wakes its
/// accept by connecting to its own address, so it is dropped from a
/// thread that joined that namespace.
struct InNet {
    idp: Option<TestIdp>,
    net: std::os::fd::OwnedFd,
}

impl Drop for InNet {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        let idp = self.idp.take();
        let fd = self.net.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this thread only, with a descriptor
                // `self` holds open.
                unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                drop(idp);
            });
        });
    }
}

/// "A port below 1024 only root can bind" is the kernel's default, not a
/// rule: `net.ipv4.ip_unprivileged_port_start` moves it (container
/// runtimes set 0 in the container's network namespace). There an
/// issuer at `http://127.0.0.1` (port 80) was trusted without
/// `allow_unprivileged_loopback`, though any local user could bind that
/// port first (while the real IdP restarts, or on the loopback address
/// it does not listen on) and sign grants: the caller's own server on
/// port 80 minted a grant that escapes ran as root. A port is now
/// privileged only below the namespace's own start value.
#[test]
fn a_port_below_1024_is_not_privileged_where_the_kernel_says_otherwise() {
    use std::os::fd::{AsRawFd as _, OwnedFd};
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    if !require_root() {
        return;
    }
    let user = test_user();
    // A network namespace with every port unprivileged, made by a thread
    // of its own (unshare changes only the calling thread), which also
    // starts the server there.
    let (net, idp): (OwnedFd, TestIdp) = std::thread::spawn(|| {
        // SAFETY: unshare on this thread only; no memory is passed.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let setup = Command::new("/bin/sh")
            .args([
                "-c",
                "ip link set lo up && echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
            ])
            .status()
            .unwrap();
        assert!(setup.success());
        // Any user may bind port 80 there (checked with port 81).
        let bind = Command::new("/usr/bin/setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .arg("--")
            .args([
                "/usr/bin/perl",
                "-MIO::Socket::INET",
                "-e",
                "IO::Socket::INET->new(LocalAddr=>q(127.0.0.1),LocalPort=>81,Listen=>1) or exit 1",
            ])
            .status()
            .unwrap();
        assert!(bind.success(), "the test user could not bind port 81");
        let net: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .unwrap()
            .into();
        // The caller's server, as far as escapes can tell.
        (net, TestIdp::start_on(80).unwrap())
    })
    .join()
    .unwrap();
    let net_fd = net.as_raw_fd();
    let server = InNet {
        idp: Some(idp),
        net,
    };
    let idp = server.idp.as_ref().unwrap();
    let sb = Sandbox::new("loopback-80");
    assert_eq!(idp.issuer(), "http://127.0.0.1:80");
    let text = sb.config(&idp.issuer()).render();
    sb.write_config(&text.replace("allow_unprivileged_loopback = true\n", ""));
    let argv = vec![
        "touch".to_string(),
        sb.marker_path("m").to_string_lossy().into_owned(),
    ];
    let g = idp.issue(&GrantSpec::new(HOST, &strs(&argv)));
    let ns = sb.config_ns();
    let mut cmd = Command::new("/usr/bin/setpriv");
    // SAFETY: runs in the forked child before exec, as root: setns on a
    // descriptor this process holds, then ConfigNs::enter (system calls
    // only, on strings prepared before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(net_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            ns.enter()
        })
    };
    let mut child = cmd
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(sb.escapes())
        .arg("--grant-stdin")
        .arg("--")
        .args(&argv)
        .env_clear()
        .env("PATH", harness::SANE_PATH)
        .current_dir(sb.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let _ = child.stdin.take().unwrap().write_all(g.jwt.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !sb.marker_exists("m"),
        "ran as root on a grant from port 80: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a valid configuration"), "{stderr}");
    assert!(idp.requests().is_empty(), "{:?}", idp.requests());
}

/// The kernel's limit on the bytes of one exec's strings (filename, argv,
/// environment) for a stack limit of `stack` bytes: a quarter of it, at
/// most 6 MiB, at least 128 KiB (fs/exec.c `bprm_stack_limits`).
fn exec_limit(stack: u64) -> u64 {
    (stack / 4).clamp(128 << 10, 6 << 20)
}

/// A caller's environment of many kept `LC_*` variables (up to 4 KiB
/// each) fits the exec of escapes but not the command's exec, which adds
/// SUDO_COMMAND (a copy of the argv) and the identity variables: execve
/// failed with E2BIG after the grant was consumed and `grant_run` logged.
/// Now the exec's size is checked before consume: exit 126, nothing spent,
/// nothing logged as run.
#[test]
fn an_environment_too_big_for_the_commands_exec_spends_nothing() {
    let Some(t) = setup("e2big") else { return };
    let marker = t.sb.marker_path("m").to_string_lossy().into_owned();
    let script = format!("touch {marker} # {}", "x".repeat(3000));
    let argv = vec!["sh".to_string(), "-c".to_string(), script];
    let escapes = t.sb.escapes();
    let escapes_b = escapes.as_os_str().as_encoded_bytes().to_vec();
    let run = |g: &Issued, pad: &[(String, String)]| {
        let file = t.grant_file("grant", g);
        let mut args: Vec<Vec<u8>> = vec![
            escapes_b.clone(),
            b"--grant-file".to_vec(),
            file.into_bytes(),
            b"--".to_vec(),
        ];
        args.extend(argv.iter().map(|a| a.clone().into_bytes()));
        let argv_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let mut env: Vec<(&str, &str)> = vec![("PATH", harness::SANE_PATH)];
        env.extend(pad.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let used: u64 = (escapes_b.len() + 1) as u64
            + args.iter().map(|a| a.len() as u64 + 1).sum::<u64>()
            + env
                .iter()
                .map(|(k, v)| (k.len() + v.len() + 2) as u64)
                .sum::<u64>()
            + 8 * (args.len() + env.len()) as u64;
        let out = exec_raw_in(
            Some(t.sb.config_ns().as_ref()),
            &escapes,
            &argv_refs,
            &env,
            &[],
            true,
            t.sb.root(),
            harness::DEFAULT_TIMEOUT,
        );
        (out, used)
    };

    // Control: without padding it runs.
    let g = t.issue(&argv);
    let (out, base) = run(&g, &[]);
    t.assert_ran(&out, &g);
    t.sb.remove_marker("m");

    // Pad the caller's environment to 1000 bytes below the limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the local we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) }, 0);
    let soft = lim.rlim_cur;
    let mut room = exec_limit(soft) - base - 1000;
    let mut pad = Vec::new();
    let mut n = 0u32;
    while room > 64 {
        let name = format!(
            "LC_{}{}{}{}",
            char::from(b'A' + (n / 17576 % 26) as u8),
            char::from(b'A' + (n / 676 % 26) as u8),
            char::from(b'A' + (n / 26 % 26) as u8),
            char::from(b'A' + (n % 26) as u8)
        );
        let len = (room - (name.len() as u64 + 2 + 8)).min(4000);
        room -= name.len() as u64 + 2 + 8 + len;
        pad.push((name, "C".repeat(len as usize)));
        n += 1;
    }
    let g = t.issue(&argv);
    let before = t.sb.audit_lines().len();
    let (out, used) = run(&g, &pad);
    assert!(used < exec_limit(soft), "the test's own exec must fit");
    assert_eq!(out.code, 126, "{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0, "{out}");
    assert!(!t.sb.marker_exists("m"));
    let lines = t.sb.audit_lines();
    assert!(
        lines.iter().skip(before).all(|l| l["event"] != "grant_run"),
        "{lines:?}"
    );
}

/// The caller's session keyring reached the root command: escapes has no
/// PAM session (where sudo stacks run `pam_keyinit`), so a key a root
/// command added to its session keyring (`e4crypt add_key`, `keyctl add
/// ... @s`) was afterwards possessed, and readable, by the caller, and a
/// key the caller planted was found first by the root command's searches.
/// The command now gets a session keyring of its own.
#[test]
fn the_callers_session_keyring_does_not_reach_the_command() {
    let Some(t) = setup("keyring") else { return };
    let (add_key, keyctl) = (libc::SYS_add_key, libc::SYS_keyctl);
    let add = format!(
        "import ctypes; l=ctypes.CDLL(None); \
         print(l.syscall({add_key}, b'user', b'openape-probe', b'root-secret', 11, ctypes.c_long(-3)))"
    );
    let argv = vec!["python3".to_string(), "-c".to_string(), add];
    let g = t.issue(&argv);
    let file = t.grant_file("grant", &g);
    // The caller: a fresh session keyring with a key of its own (proves
    // keyrings work here), run escapes, then look for the root command's key.
    let caller = format!(
        r#"
import ctypes, subprocess, sys
l = ctypes.CDLL(None, use_errno=True)
def kc(*a): return l.syscall({keyctl}, *[ctypes.c_long(x) if isinstance(x, int) else x for x in a])
if kc(1, None) < 0: print("NOKEYRINGS"); sys.exit(0)
if l.syscall({add_key}, b'user', b'mine', b'x', 1, ctypes.c_long(-3)) < 0: print("NOKEYRINGS"); sys.exit(0)
r = subprocess.run([{escapes:?}, "--grant-file", {file:?}, "--"] + {argv:?})
print("EXIT", r.returncode)
print("MINE", kc(10, -3, b'user', b'mine', 0) > 0)
k = kc(10, -3, b'user', b'openape-probe', 0)
if k > 0:
    buf = ctypes.create_string_buffer(64)
    n = kc(11, k, buf, 64)
    print("LEAKED", buf.raw[:n].decode())
else:
    print("NOTFOUND")
"#,
        escapes = t.sb.escapes().to_string_lossy(),
        argv = argv,
    );
    let out = Run::new("/usr/bin/python3")
        .args(["-c", &caller])
        .cwd(t.sb.root())
        .config_ns(t.sb.config_ns())
        .as_test_user()
        .output();
    if out.stdout.contains("NOKEYRINGS") {
        eprintln!("skipped: no keyrings here");
        return;
    }
    assert!(out.stdout.contains("EXIT 0"), "{out}");
    assert!(out.stdout.contains("MINE True"), "{out}");
    t.assert_ran(&out, &g);
    assert!(!out.stdout.contains("LEAKED"), "{out}");
    assert!(out.stdout.contains("NOTFOUND"), "{out}");
}

/// Interval timers survive exec: a caller who arms ITIMER_REAL before
/// exec'ing escapes has SIGALRM (default: terminate) arrive while the
/// consume is in flight. Before, that killed escapes after the IdP had
/// consumed the grant and before `grant_run` was written: a spent grant
/// with no audit line. escapes disarms the timers at start; the run goes
/// through and is logged, and the command gets no timer either.
#[test]
fn a_callers_interval_timer_cannot_cut_the_run_between_consume_and_log() {
    let Some(t) = setup("itimer") else { return };
    let bin = std::fs::read(artefact("state-exec")).unwrap();
    let exec = t.sb.write_file("bin/state-exec", &bin, 0, 0, 0o755);
    let argv = vec![
        "grep".to_string(),
        "-c".into(),
        "^".into(),
        "/proc/self/status".into(),
    ];
    let g = t.issue(&argv);
    let file = t.grant_file("grant", &g);
    // The consume answers after 400 ms; the timer fires at 150 ms, while
    // escapes waits for that answer.
    t.idp
        .set_fault_for("/api/grants/", Fault::Slow(Duration::from_millis(400)));
    let mut args = vec![
        "--itimer".to_string(),
        "real".into(),
        "150".into(),
        "--".into(),
        t.sb.escapes().to_string_lossy().into_owned(),
        "--grant-file".into(),
        file,
        "--".into(),
    ];
    args.extend(argv.iter().cloned());
    let out = Run::new(&exec)
        .args(&args)
        .cwd(t.sb.root())
        .config_ns(t.sb.config_ns())
        .as_test_user()
        .timeout(Duration::from_secs(30))
        .output();
    t.assert_ran(&out, &g);
}
