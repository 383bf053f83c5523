//! Differential test of the module's command-line parsers
//! (`pam_openape::invocation::parse_sudo` / `parse_su`) against what the
//! real sudo 1.9, sudo-rs and util-linux su execute.
//!
//! sudo gives PAM no command: the module re-parses the host's own argv to
//! learn which command and target user are about to run, and accepts only
//! a grant whose `command` and `run_as` are exactly that. Any form where
//! the parser and the real program disagree lets a grant approved for one
//! command authenticate another. So, for a corpus of invocation forms:
//!
//! 1. the module's own parser says what it believes will run (argv and
//!    target user), or that it refuses the form;
//! 2. a once grant is issued for exactly that argv and target (for a
//!    refused form: for the command a naive reader would see);
//! 3. the real program runs the form, as the test user, in a private mount
//!    namespace (`openape_tests::sudo_ns`), with a PAM stack where only a
//!    grant authenticates. The command is `argv-probe`, which records its
//!    argv byte-exact, its uid/gid and whether the caller's marker
//!    variable reached it;
//! 4. whenever anything ran under the grant, the probe's argv and uid must
//!    equal the grant's `command` and `run_as` and the caller's
//!    environment must not have reached it; a form the parser refuses must
//!    consume nothing and run nothing; a consumed grant with no probe run
//!    is a finding too (the grant was spent on something else).
//!
//! Every form of one program runs in one namespace (one shell script), so
//! the whole corpus costs three namespaces. All mismatches are collected
//! and reported together.
//!
//! Needs root and a build of the workspace (`cargo build --workspace`: the
//! module, the probe) and of sudo-rs (`scripts/sudo-rs.sh`). Run: `cargo
//! test -p openape-tests --test pam_argv_differential`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use openape_tests::against_both_sudos;
use openape_tests::harness::{TEST_USER, artefact, copy_stable, set_owner_mode, test_user};
use openape_tests::idp::{GrantSpec, TestIdp};
use openape_tests::sudo_ns::{PamSandbox, SudoImpl, require_root, shell_quote};
use pam_openape::invocation::{self, UserSpec};
use serde_json::Value;

const SUDO_STACK: &str = openape_tests::sudo_ns::GRANT_OR_DENY_STACK;

/// util-linux su uses `su-l` for a login shell; both get the same stack.
const SU_L: &str = "auth include su\naccount include su\nsession include su\n";

/// Every run authenticates (no timestamp), `-n` runs go through PAM too
/// (`noninteractive_auth`), and root may run sudo again (`sudo sudo ...`).
const SUDOERS: &str = "\
Defaults !lecture
Defaults timestamp_timeout=0
Defaults noninteractive_auth
Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"
root ALL=(ALL:ALL) ALL
@USER@ ALL=(ALL:ALL) ALL
";

/// The caller's marker: it must never reach a command run under a grant
/// (sudo resets the environment; the module accepts only `su -`/`su -l`).
const MARK: &str = "caller-env";

/// Whole-batch time limit (one namespace, every form of one program);
/// a batch takes about 30-80 s on 2 cores, this only stops a hang.
const BATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The module's 1 MiB limit on the command line it reads.
const CMDLINE_LIMIT: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// passwd
// ---------------------------------------------------------------------------

struct Passwd(Vec<(String, u32)>);

impl Passwd {
    fn load() -> Passwd {
        let text = fs::read_to_string("/etc/passwd").expect("/etc/passwd");
        Passwd(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?.to_string();
                    let uid = f.nth(1)?.parse().ok()?;
                    Some((name, uid))
                })
                .collect(),
        )
    }

    /// What the module's `resolve_name` gives: getpwnam / getpwuid.
    fn resolve(&self, spec: &UserSpec) -> Option<(String, u32)> {
        self.0
            .iter()
            .find(|(n, u)| match spec {
                UserSpec::Name(name) => n == name,
                UserSpec::Uid(uid) => u == uid,
            })
            .cloned()
    }

    fn root(&self) -> (String, u32) {
        self.resolve(&UserSpec::Name("root".into())).expect("root")
    }
}

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

/// One invocation: the words a shell passes to execve (argv\[0\] is also
/// the program the script runs), extra variables, and whether the form
/// must really run the probe (a basic form that does not run means the
/// harness is broken, not that the module is safe).
struct Case {
    argv: Vec<Vec<u8>>,
    env: Vec<(String, String)>,
    must_run: bool,
}

/// Placeholders: `@P` the probe, `@ROOT` the sandbox root.
fn words(root: &Path, probe: &Path, w: &[&str]) -> Vec<Vec<u8>> {
    let root = root.to_string_lossy();
    let probe = probe.to_string_lossy();
    w.iter()
        .map(|s| s.replace("@P", &probe).replace("@ROOT", &root).into_bytes())
        .collect()
}

fn case(root: &Path, probe: &Path, w: &[&str]) -> Case {
    Case {
        argv: words(root, probe, w),
        env: Vec::new(),
        must_run: false,
    }
}

fn runs(mut c: Case) -> Case {
    c.must_run = true;
    c
}

fn with_env(mut c: Case, k: &str, v: &str) -> Case {
    c.env.push((k.to_string(), v.to_string()));
    c
}

fn sudo_corpus(root: &Path, probe: &Path) -> Vec<Case> {
    let c = |w: &[&str]| case(root, probe, w);
    let mut v = vec![
        // The subset the module accepts.
        runs(c(&["sudo", "@P", "a", "b"])),
        runs(c(&["/usr/bin/sudo", "@P", "abs-argv0"])),
        runs(c(&["@ROOT/links/sudo", "@P", "symlink-named-sudo"])),
        runs(c(&["@ROOT/links/sudo-rs", "@P", "symlink-named-sudo-rs"])),
        runs(c(&["sudo", "-n", "@P"])),
        runs(c(&["sudo", "-S", "@P"])),
        runs(c(&["sudo", "-nS", "@P"])),
        runs(c(&["sudo", "-nu", "root", "@P"])),
        runs(c(&["sudo", "-nuroot", "@P"])),
        runs(c(&["sudo", "-Snunobody", "@P"])),
        runs(c(&["sudo", "-u", "nobody", "@P", "x"])),
        runs(c(&["sudo", "-unobody", "@P"])),
        runs(c(&["sudo", "-u#0", "@P"])),
        runs(c(&["sudo", "-u", "#65534", "@P"])),
        runs(c(&["sudo", "-u", "#00065534", "@P"])),
        // sudo 1.9 runs a command as the caller without authentication.
        c(&["sudo", "-u", TEST_USER, "@P", "self"]),
        runs(c(&["sudo", "--user=nobody", "@P"])),
        runs(c(&["sudo", "--user", "nobody", "@P"])),
        runs(c(&["sudo", "--non-interactive", "--stdin", "@P"])),
        runs(c(&["sudo", "--", "@P", "-u", "nobody"])),
        runs(c(&["sudo", "-u", "nobody", "--", "@P", "--user=root"])),
        runs(c(&["sudo", "@P", "-u", "nobody", "-s", "-i"])),
        runs(c(&["sudo", "@P", "--", "-E", "--", "-"])),
        runs(c(&["sudo", "@P", ""])),
        runs(c(&["sudo", "@P", "", "", "x"])),
        runs(c(&["sudo", "@P", "PROBE_MARK=1", "A=b"])),
        runs(c(&["sudo", "@P", "-"])),
        runs(c(&["sudo", "@P", "sudoedit", "/etc/hostname"])),
        runs(c(&[
            "sudo",
            "@P",
            "a b",
            " ",
            "\t",
            "x\ny",
            "\u{e9}\u{1f600}",
        ])),
        runs(c(&["sudo", "@P", "$(id)", "`id`", "*", "'\"", "\\"])),
        // sudo sudo: the inner sudo runs as root (no authentication) and
        // must run what its own argv says.
        runs(c(&["sudo", "sudo", "@P", "nested"])),
        runs(c(&["sudo", "sudo", "-u", "nobody", "@P", "nested"])),
        runs(c(&["sudo", "-u", "root", "sudo", "-unobody", "--", "@P"])),
        runs(c(&["sudo", "--user=#65534", "-S", "--", "@P"])),
        runs(c(&["sudo", "-S", "-u", "#0", "-n", "@P"])),
        runs(c(&[
            "sudo", "-u", "nobody", "--stdin", "--", "@P", "--", "x",
        ])),
        // Relative command paths: sudo resolves them against the caller's
        // working directory, which no grant binds; refused (as escapes does).
        c(&["sudo", "bin/argv-probe", "rel"]),
        c(&["sudo", "./bin/argv-probe", "rel"]),
        c(&["sudo", "bin/../bin/argv-probe"]),
        // The command's first word: an empty word, a path with `=`, a
        // trailing `/` or `/.` (sudo-rs strips them), a directory.
        c(&["sudo", "", "@P"]),
        c(&["sudo", "@ROOT/eq=dir/probe"]),
        c(&["sudo", "@P/"]),
        c(&["sudo", "@P/."]),
        c(&["sudo", "@P//"]),
        c(&["sudo", "@ROOT/bin"]),
        c(&["sudo", "@ROOT/bin/"]),
        // A command whose last path component is sudoedit once `.` and
        // `/` are normalised away.
        c(&["sudo", "/usr/bin/sudoedit/.", "/etc/hostname"]),
        c(&["sudo", "/usr/bin/sudoedit/./.", "/etc/hostname"]),
        c(&["sudo", "sudoedit/.", "/etc/hostname"]),
        c(&["sudo", "/usr/bin/sudoedit/", "/etc/hostname"]),
        c(&["sudo", "/usr/bin//sudoedit", "/etc/hostname"]),
        c(&["sudo", "./sudoedit", "/etc/hostname"]),
        c(&["sudo", "/usr/bin/sudoedit-rs/.", "/etc/hostname"]),
        c(&["sudo", "/usr/bin/sudoeditx", "/etc/hostname"]),
        c(&["sudo", "/usr/bin/sudo-edit/.", "/etc/hostname"]),
        // Options the module refuses (each alone and combined).
        c(&["sudo", "-g", "root", "@P"]),
        c(&["sudo", "-groot", "@P"]),
        c(&["sudo", "-u", "root", "-g", "root", "@P"]),
        c(&["sudo", "-E", "@P"]),
        c(&["sudo", "-nE", "@P"]),
        c(&["sudo", "--preserve-env", "@P"]),
        c(&["sudo", "--preserve-env=PROBE_MARK", "@P"]),
        c(&["sudo", "-H", "@P"]),
        c(&["sudo", "-P", "@P"]),
        c(&["sudo", "-b", "@P"]),
        c(&["sudo", "-C", "5", "@P"]),
        c(&["sudo", "-D", "/", "@P"]),
        c(&["sudo", "--chdir=/", "@P"]),
        c(&["sudo", "-R", "/", "@P"]),
        c(&["sudo", "-T", "5", "@P"]),
        c(&["sudo", "-h", "testhost", "@P"]),
        c(&["sudo", "-htesthost", "@P"]),
        c(&["sudo", "-p", "x", "@P"]),
        c(&["sudo", "-A", "@P"]),
        c(&["sudo", "-B", "@P"]),
        c(&["sudo", "-N", "@P"]),
        c(&["sudo", "-k", "@P"]),
        c(&["sudo", "-K"]),
        c(&["sudo", "-k"]),
        c(&["sudo", "-v"]),
        c(&["sudo", "-l"]),
        c(&["sudo", "-l", "@P"]),
        c(&["sudo", "-U", "root", "-l"]),
        c(&["sudo", "-e", "/etc/hostname"]),
        c(&["sudo", "-s", "@P"]),
        c(&["sudo", "-s"]),
        c(&["sudo", "-i", "@P"]),
        c(&["sudo", "-i"]),
        c(&["sudo", "--login", "@P"]),
        c(&["sudo", "--shell", "@P"]),
        c(&["sudo", "-V"]),
        c(&["sudo", "-h"]),
        c(&["sudo", "--us=root", "@P"]),
        c(&["sudo", "--use", "root", "@P"]),
        c(&["sudo", "--non", "@P"]),
        c(&["sudo", "--stdin=1", "@P"]),
        c(&["sudo", "--user=", "@P"]),
        c(&["sudo", "-u", "", "@P"]),
        c(&["sudo", "-u=root", "@P"]),
        c(&["sudo", "-u", "#-1", "@P"]),
        c(&["sudo", "-u#4294967295", "@P"]),
        c(&["sudo", "-u", "#+0", "@P"]),
        c(&["sudo", "-u", "0", "@P"]),
        c(&["sudo", "-u", "nosuchuser", "@P"]),
        c(&["sudo", "-u", "root", "-u", "nobody", "@P"]),
        c(&["sudo", "-u", "-n", "@P"]),
        c(&["sudo", "-n-u", "root", "@P"]),
        // Environment assignments before the command.
        c(&["sudo", "PROBE_MARK=x", "@P"]),
        c(&["sudo", "-u", "root", "PROBE_MARK=x", "@P"]),
        c(&["sudo", "PROBE_MARK=x", "-u", "nobody", "@P"]),
        c(&["sudo", "=x", "@P"]),
        c(&["sudo", "1=x", "@P"]),
        c(&["sudo", "\u{e9}=x", "@P"]),
        c(&["sudo", "./x=y", "@P"]),
        c(&["sudo", "--", "PROBE_MARK=x", "@P"]),
        // A lone or leading `-`.
        c(&["sudo", "-", "@P"]),
        c(&["sudo", "-n", "-", "@P"]),
        c(&["sudo", "--", "-", "@P"]),
        c(&["sudo", "--", "--", "@P"]),
        c(&["sudo", "--", "-u", "nobody", "@P"]),
        // sudoedit by name, as argv[0] or as the command.
        c(&["@ROOT/links/sudoedit", "/etc/hostname"]),
        c(&["@ROOT/links/sudoedit", "@P"]),
        c(&["@ROOT/links/sudoeditor", "@P"]),
        c(&["sudo", "sudoedit", "/etc/hostname"]),
        c(&["sudo", "/usr/bin/sudoedit", "/etc/hostname"]),
        c(&["sudo", "sudoedit-rs", "/etc/hostname"]),
        c(&["sudo"]),
        c(&["sudo", "-n"]),
        c(&["sudo", "-u", "root"]),
    ];
    // Bytes that are not UTF-8, in an option, the command and an argument.
    let p = probe.to_string_lossy().into_owned().into_bytes();
    for bad in [
        vec![b"sudo".to_vec(), p.clone(), b"\xff".to_vec()],
        vec![b"sudo".to_vec(), b"-u\xff".to_vec(), p.clone()],
        vec![b"sudo".to_vec(), [p.as_slice(), b"\xc3"].concat()],
    ] {
        v.push(Case {
            argv: bad,
            env: Vec::new(),
            must_run: false,
        });
    }
    // A long argv the module accepts (1,000 arguments), and one over the
    // module's 1 MiB limit on the command line.
    let mut long = words(root, probe, &["sudo", "@P"]);
    long.extend((0..1000).map(|i| format!("{i}").into_bytes()));
    v.push(Case {
        argv: long,
        env: Vec::new(),
        must_run: true,
    });
    let mut huge = words(root, probe, &["sudo", "@P"]);
    huge.extend((0..9000).map(|_| vec![b'y'; 120]));
    v.push(Case {
        argv: huge,
        env: Vec::new(),
        must_run: false,
    });
    v
}

fn su_corpus(root: &Path, probe: &Path) -> Vec<Case> {
    let c = |w: &[&str]| case(root, probe, w);
    let posix = |w: &[&str]| with_env(case(root, probe, w), "POSIXLY_CORRECT", "1");
    vec![
        // The subset the module accepts.
        runs(c(&["su", "-", "-c", "@P a b"])),
        runs(c(&["su", "-", "-c", "@P a", "root"])),
        runs(c(&["su", "-l", "-c", "@P", "root"])),
        runs(c(&["su", "--login", "--command=@P long-forms"])),
        runs(c(&["su", "--login", "--command", "@P", "root"])),
        runs(c(&["su", "-c", "@P", "-", "root"])),
        runs(c(&["su", "-c", "@P", "--login", "root"])),
        runs(c(&["su", "-", "-c@P attached"])),
        runs(c(&["su", "-", "-c", "@P", "--", "root"])),
        c(&["su", "-", "root", "-c", "@P user-first"]),
        runs(c(&["su", "-l", "-c", "@P", TEST_USER])),
        runs(c(&["/bin/su", "-", "-c", "@P abs-argv0"])),
        runs(c(&["su", "-", "-c", "@P  two  spaces"])),
        // Under POSIXLY_CORRECT getopt stops at the first operand.
        // (`-` stops getopt, so su looks up a user named `-c`.)
        posix(&["su", "-", "-c", "@P posix"]),
        posix(&["su", "-", "root", "-c", "@P posix-user-first"]),
        posix(&["su", "-c", "@P", "-", "root"]),
        // The login flag after the user name: GNU getopt permutes `-l`
        // and `--login` to the front (unless POSIXLY_CORRECT), but a `-`
        // counts only as the first operand.
        c(&["su", "root", "-c", "@P", "-"]),
        c(&["su", "root", "-", "-c", "@P"]),
        c(&["su", "-c", "@P", "root", "-"]),
        c(&["su", "root", "-l", "-c", "@P"]),
        c(&["su", "-c", "@P", "root", "--login"]),
        posix(&["su", "-c", "@P", "root", "-l"]),
        posix(&["su", "-c", "@P", "root", "--login"]),
        posix(&["su", "root", "-l", "-c", "@P"]),
        posix(&["su", "-l", "root", "-c", "@P"]),
        // Forms the module refuses.
        c(&["su", "-c", "@P", "root"]),
        c(&["su", "-c", "@P"]),
        c(&["su", "-", "-s", "/bin/sh", "-c", "@P"]),
        c(&["su", "-", "--shell=/bin/sh", "-c", "@P"]),
        c(&["su", "-", "-m", "-c", "@P"]),
        c(&["su", "-", "-p", "-c", "@P"]),
        c(&["su", "-", "--preserve-environment", "-c", "@P"]),
        c(&["su", "-", "-g", "root", "-c", "@P"]),
        c(&["su", "-", "-G", "root", "-c", "@P"]),
        c(&["su", "-", "--session-command", "@P"]),
        c(&["su", "-", "--session-command=@P"]),
        c(&["su", "-", "-f", "-c", "@P"]),
        c(&["su", "-", "-P", "-c", "@P"]),
        c(&["su", "-", "-w", "PROBE_MARK", "-c", "@P"]),
        c(&["su", "-", "-lc", "@P"]),
        c(&["su", "-", "--comm=@P"]),
        c(&["su", "-", "--log", "-c", "@P"]),
        c(&["su", "-", "-c", "@P", "-c", "@P x"]),
        c(&["su", "-", "-c", "@P", "root", "extra"]),
        c(&["su", "-", "-c", "@P", "--", "-"]),
        c(&["su", "-", "-c", "@P", "--", "-", "root"]),
        c(&["su", "-", "-c", "@P", "-", "root"]),
        c(&["su", "-", "-c", "@P", "#0"]),
        c(&["su", "-", "-c", "@P", "nosuchuser"]),
        c(&["su", "-", "root"]),
        c(&["su", "-"]),
        c(&["su"]),
        c(&["su", "-", "-c", "@P", "root", "-c", "@P x"]),
        c(&["su", "--", "root", "-c", "@P"]),
        c(&["su", "-", "-c", "@P", "-u", "root"]),
        // A -c string that starts with `-` (the shell gets `-c -x...`).
        c(&["su", "-", "-c", "-x @P", "root"]),
        c(&["su", "-", "-c", "-", "root"]),
        c(&["su", "-", "-c", "--", "root"]),
        c(&["su", "-", "-c", "-c", "root"]),
        c(&["su", "-", "-c", "", "root"]),
        c(&["su", "-", "--command=", "root"]),
    ]
}

// ---------------------------------------------------------------------------
// What the module believes, and what that means should run
// ---------------------------------------------------------------------------

/// What the module will accept a grant for.
#[derive(Debug)]
enum View {
    /// A grant for `command` run as `target`.
    Run {
        command: Vec<String>,
        target: String,
    },
    /// Refused whatever the grant says.
    Refused(String),
}

fn utf8_argv(argv: &[Vec<u8>]) -> Result<Vec<String>, String> {
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if total > CMDLINE_LIMIT {
        return Err("command line is longer than 1 MiB".into());
    }
    argv.iter()
        .map(|a| String::from_utf8(a.clone()).map_err(|_| "not UTF-8".to_string()))
        .collect()
}

fn sudo_view(pw: &Passwd, argv: &[Vec<u8>]) -> View {
    let argv = match utf8_argv(argv) {
        Ok(a) => a,
        Err(e) => return View::Refused(e),
    };
    let inv = match invocation::parse_sudo(&argv) {
        Ok(i) => i,
        Err(e) => return View::Refused(e),
    };
    let target = match &inv.user {
        None => Some(pw.root()),
        Some(spec) => pw.resolve(spec),
    };
    match (target, inv.argv) {
        (Some((target, _)), Some(command)) => View::Run { command, target },
        (None, _) => View::Refused("unknown target user".into()),
        (_, None) => View::Refused("no command".into()),
    }
}

fn su_view(pw: &Passwd, argv: &[Vec<u8>]) -> View {
    let argv = match utf8_argv(argv) {
        Ok(a) => a,
        Err(e) => return View::Refused(e),
    };
    let inv = match invocation::parse_su(&argv) {
        Ok(i) => i,
        Err(e) => return View::Refused(e),
    };
    if !inv.login {
        return View::Refused("su without a login environment".into());
    }
    let target = match &inv.user {
        None => Some(pw.root()),
        Some(spec) => pw.resolve(spec),
    };
    match (target, inv.argv) {
        (Some((target, _)), Some(command)) => View::Run { command, target },
        (None, _) => View::Refused("unknown target user".into()),
        (_, None) => View::Refused("no command".into()),
    }
}

/// What a grant for `command` as `target` allows to happen.
#[derive(Debug)]
enum Effect {
    /// The probe runs with exactly this argv as this uid, or nothing runs.
    /// `exists`: the command is an executable file as the kernel sees the
    /// path, so a spent grant must have run it (sudo-rs also runs `P/` or
    /// `P/.` as `P`; sudo 1.9 authenticates, spending the grant, before it
    /// says "command not found").
    Probe {
        argv: Vec<Vec<u8>>,
        uid: u32,
        exists: bool,
    },
    /// The test cannot tell.
    Unknown,
}

/// Does sudo find `cmd` (a path, or a name on secure_path) as an
/// executable file? The batch runs in the sandbox root.
fn resolves(root: &Path, cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        exec(&root.join(cmd))
    } else {
        !cmd.is_empty()
            && "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                .split(':')
                .any(|d| exec(&Path::new(d).join(cmd)))
    }
}

/// The probe run a sudo grant for `command` as `target` stands for: that
/// argv as that uid; for `sudo sudo ...` what the inner sudo (run as root,
/// without authentication) runs by the same parser.
fn sudo_effect(pw: &Passwd, root: &Path, command: &[String], target: &str) -> Effect {
    let Some(first) = command.first() else {
        return Effect::Unknown;
    };
    let exists = resolves(root, first);
    if exists && first.rsplit('/').next() == Some("sudo") && target == "root" {
        let inner: Vec<Vec<u8>> = command.iter().map(|a| a.clone().into_bytes()).collect();
        return match sudo_view(pw, &inner) {
            View::Run { command, target } => sudo_effect(pw, root, &command, &target),
            View::Refused(_) => Effect::Unknown,
        };
    }
    match pw.resolve(&UserSpec::Name(target.to_string())) {
        Some((_, uid)) => Effect::Probe {
            argv: command.iter().map(|a| a.clone().into_bytes()).collect(),
            uid,
            exists,
        },
        None => Effect::Unknown,
    }
}

/// su runs `$SHELL -c STRING`; the corpus strings are the probe and plain
/// words, so the shell runs exactly those words.
fn su_effect(pw: &Passwd, root: &Path, command: &[String], target: &str) -> Effect {
    let [s] = command else {
        return Effect::Unknown;
    };
    let Some((_, uid)) = pw.resolve(&UserSpec::Name(target.to_string())) else {
        return Effect::Unknown;
    };
    let words: Vec<&str> = s.split(' ').filter(|w| !w.is_empty()).collect();
    Effect::Probe {
        exists: words.first().is_some_and(|w| resolves(root, w)),
        argv: words.iter().map(|w| w.as_bytes().to_vec()).collect(),
        uid,
    }
}

/// For a refused form: the grant a naive reader would ask for, the probe
/// and everything after it as root (so a wrong acceptance would match).
fn naive_command(argv: &[Vec<u8>], probe: &Path, one_word: bool) -> Vec<String> {
    let p = probe.to_string_lossy();
    let from = argv
        .iter()
        .position(|a| String::from_utf8_lossy(a).starts_with(p.as_ref()))
        .unwrap_or(argv.len().min(1));
    let cmd: Vec<String> = argv
        .get(from..)
        .unwrap_or_default()
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if one_word {
        return cmd.into_iter().take(1).collect();
    }
    // Keep the token small: the module's token limit is 16 KiB.
    if cmd.is_empty() || cmd.iter().map(String::len).sum::<usize>() > 2000 {
        vec![p.into_owned()]
    } else {
        cmd
    }
}

// ---------------------------------------------------------------------------
// Running a batch
// ---------------------------------------------------------------------------

/// One probe record.
#[derive(Debug)]
struct ProbeRun {
    argv: Vec<Vec<u8>>,
    uid: u32,
    euid: u32,
    mark: Option<Vec<u8>>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0))
        .collect()
}

fn probe_runs(path: &Path) -> Vec<ProbeRun> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            ProbeRun {
                argv: v["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| unhex(a.as_str().unwrap()))
                    .collect(),
                uid: v["uid"].as_u64().unwrap() as u32,
                euid: v["euid"].as_u64().unwrap() as u32,
                mark: v["mark"].as_str().map(unhex),
            }
        })
        .collect()
}

/// A word for /bin/sh: single-quoted when printable, else rebuilt by
/// printf from octal escapes (a trailing `x` keeps trailing newlines).
fn sh_word(script: &mut String, w: &[u8]) {
    match std::str::from_utf8(w) {
        Ok(s) if !s.contains(['\0', '\n']) => {
            let _ = writeln!(script, "set -- \"$@\" {}", shell_quote(s));
        }
        _ => {
            let esc: String = w.iter().map(|b| format!("\\{b:03o}")).collect();
            let _ = writeln!(script, "w=$(printf '{esc}x'); set -- \"$@\" \"${{w%x}}\"");
        }
    }
}

fn show(argv: &[Vec<u8>]) -> String {
    let shown: Vec<String> = argv
        .iter()
        .take(8)
        .map(|a| {
            let s = String::from_utf8_lossy(a);
            if s.len() > 60 {
                format!("{}...({} bytes)", s.get(..40).unwrap_or(""), a.len())
            } else {
                format!("{s:?}")
            }
        })
        .collect();
    let more = if argv.len() > 8 {
        format!(" ...+{} more", argv.len() - 8)
    } else {
        String::new()
    };
    format!("[{}]{more}", shown.join(", "))
}

/// What the corpus run found.
#[derive(Default)]
struct Report {
    findings: Vec<String>,
    accepted: usize,
    ran: usize,
    /// Accepted forms that ran nothing (the real program failed).
    idle: Vec<String>,
    refused: usize,
}

type EffectFn = fn(&Passwd, &Path, &[String], &str) -> Effect;

/// Run every case of `corpus` in one namespace and compare.
fn differential(
    ps: &PamSandbox,
    idp: &TestIdp,
    corpus: &[Case],
    view: fn(&Passwd, &[Vec<u8>]) -> View,
    effect: EffectFn,
    label: &str,
) -> Report {
    let pw = Passwd::load();
    let probe = ps.sb.path("bin/argv-probe");
    let mut script = String::from("cd \"$(dirname \"$0\")\"\n");
    let mut plan = Vec::new();
    for (i, c) in corpus.iter().enumerate() {
        let v = view(&pw, &c.argv);
        let (command, run_as) = match &v {
            View::Run { command, target } => (command.clone(), target.clone()),
            View::Refused(_) => (
                naive_command(&c.argv, &probe, label == "su"),
                "root".to_string(),
            ),
        };
        let mut spec = GrantSpec::new("testhost", &[]);
        // A long argv fits the 16 KiB token only once (`command`, without
        // the `execution_context` copy).
        spec.with_argv_hash = command.iter().map(String::len).sum::<usize>() < 1000;
        spec.command = Some(command);
        spec.run_as = Some(run_as);
        let g = idp.issue(&spec);
        script.push_str("set --\n");
        for w in &c.argv {
            sh_word(&mut script, w);
        }
        let mut env = format!(
            "PROBE_MARK={MARK} OPENAPE_GRANT={} EDITOR={p} VISUAL={p} SUDO_EDITOR={p}",
            shell_quote(&g.jwt),
            p = shell_quote(&probe.to_string_lossy()),
        );
        for (k, val) in &c.env {
            let _ = write!(env, " {k}={}", shell_quote(val));
        }
        let _ = writeln!(
            script,
            "{env} /usr/bin/timeout -s KILL 15 \"$@\" >out/{i}.out 2>out/{i}.err </dev/null; echo $? >out/{i}.rc\n\
             if [ -e probe-out/runs ]; then mv probe-out/runs probe-out/{i}.runs; fi"
        );
        plan.push((v, g));
    }
    // Anything still running (a background sudo) gets a moment to record.
    script.push_str("sleep 1\n");
    let path = ps
        .sb
        .write_file("differential.sh", script.as_bytes(), 0, 0, 0o644);
    let out = ps.run_for(
        &["/bin/sh", &path.to_string_lossy()],
        &[],
        None,
        BATCH_TIMEOUT,
    );
    assert_eq!(out.code, 0, "{label}: the batch script failed: {out}");
    eprintln!("{label}: {} forms in {:?}", corpus.len(), out.elapsed);

    let mut report = Report::default();
    for (i, (c, (v, g))) in corpus.iter().zip(&plan).enumerate() {
        let consumed = idp.consume_count(&g.grant_id);
        let runs = probe_runs(&ps.sb.path(&format!("probe-out/{i}.runs")));
        let rc = fs::read_to_string(ps.sb.path(&format!("out/{i}.rc"))).unwrap_or_default();
        let err = fs::read_to_string(ps.sb.path(&format!("out/{i}.err"))).unwrap_or_default();
        let err: String = err.chars().take(300).collect();
        let what = format!(
            "{label} {} {}",
            show(&c.argv),
            c.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut found: Vec<String> = Vec::new();
        let mut finding = |m: String| {
            found.push(format!(
                "{what}: {m} (module: {v:?}; exit {}; stderr {err:?})",
                rc.trim()
            ))
        };
        match v {
            View::Run { command, target } => {
                report.accepted += 1;
                let (want_argv, want_uid, exists) = match effect(&pw, ps.sb.root(), command, target)
                {
                    Effect::Probe { argv, uid, exists } => (argv, uid, exists),
                    Effect::Unknown => {
                        finding("no expected effect could be derived".into());
                        report.findings.append(&mut found);
                        continue;
                    }
                };
                for r in &runs {
                    if r.argv != want_argv {
                        finding(format!(
                            "ran argv {} but the grant is for {}",
                            show(&r.argv),
                            show(&want_argv)
                        ));
                    }
                    if r.uid != want_uid || r.euid != want_uid {
                        finding(format!(
                            "ran as uid {}/{} but the grant is for {target} ({want_uid})",
                            r.uid, r.euid
                        ));
                    }
                    if r.mark.is_some() {
                        finding("the caller's environment reached the command".into());
                    }
                }
                if consumed > 0 && runs.is_empty() && exists {
                    finding("the grant was consumed but the probe never ran".into());
                }
                if runs.is_empty() {
                    report
                        .idle
                        .push(format!("{what} (exit {}, consumed {consumed})", rc.trim()));
                } else {
                    report.ran += 1;
                }
                if c.must_run && (runs.is_empty() || consumed != 1) {
                    finding(format!(
                        "a basic form did not run under its grant ({} runs, consumed {consumed})",
                        runs.len()
                    ));
                }
            }
            View::Refused(why) => {
                report.refused += 1;
                if consumed != 0 {
                    finding(format!(
                        "refused by the parser ({why}) but consumed {consumed}x"
                    ));
                }
                if !runs.is_empty() {
                    finding(format!(
                        "refused by the parser but ran {}",
                        runs.iter()
                            .map(|r| format!("{} as {}", show(&r.argv), r.euid))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
        }
        report.findings.append(&mut found);
    }
    let stray = ps.sb.path("probe-out/runs");
    if stray.exists() {
        report.findings.push(format!(
            "{label}: a probe run no form accounts for: {:?}",
            probe_runs(&stray)
        ));
    }
    report
}

/// A sandbox with the probe (`<root>/bin/argv-probe`, root 0755), the
/// directory it records into (`<root>/probe-out`, 0777: root, nobody and
/// the test user all write there), and links to /usr/bin/sudo named
/// `sudo`, `sudo-rs`, `sudoedit`, `sudoeditor` (argv\[0\] forms).
fn sandbox(name: &str, idp: &TestIdp) -> PamSandbox {
    let ps = PamSandbox::new(name, &idp.issuer());
    let probe = ps.sb.path("bin/argv-probe");
    copy_stable(&artefact("argv-probe"), &probe);
    set_owner_mode(&probe, 0, 0, 0o755);
    let u = test_user();
    let rec = ps.sb.path("probe-out");
    fs::create_dir(&rec).unwrap();
    set_owner_mode(&rec, u.uid, u.gid, 0o777);
    let links = ps.sb.path("links");
    fs::create_dir(&links).unwrap();
    for n in ["sudo", "sudo-rs", "sudoedit", "sudoeditor"] {
        std::os::unix::fs::symlink("/usr/bin/sudo", links.join(n)).unwrap();
    }
    // A directory whose name has `=` in it, holding a copy of the probe.
    let eq = ps.sb.path("eq=dir");
    fs::create_dir(&eq).unwrap();
    copy_stable(&artefact("argv-probe"), &eq.join("probe"));
    set_owner_mode(&eq.join("probe"), 0, 0, 0o755);
    ps
}

fn summary(label: &str, r: &Report) {
    eprintln!(
        "{label}: {} forms the parser accepts ({} ran the probe), {} it refuses, {} findings",
        r.accepted,
        r.ran,
        r.refused,
        r.findings.len()
    );
    for idle in &r.idle {
        eprintln!("  accepted, ran nothing: {idle}");
    }
    assert!(
        r.findings.is_empty(),
        "{label}: the module's parser and the real program disagree:\n{}",
        r.findings.join("\n")
    );
}

against_both_sudos!(sudo_forms_run_exactly_what_the_grant_names);

fn sudo_forms_run_exactly_what_the_grant_names(imp: SudoImpl) {
    let idp = TestIdp::start();
    let mut ps = sandbox("argv-diff-sudo", &idp);
    ps.use_sudo(imp);
    ps.write_pam("sudo", SUDO_STACK);
    ps.write_sudoers(&SUDOERS.replace("@USER@", TEST_USER));
    let corpus = sudo_corpus(ps.sb.root(), &ps.sb.path("bin/argv-probe"));
    let r = differential(&ps, &idp, &corpus, sudo_view, sudo_effect, &imp.label());
    summary(&imp.label(), &r);
}

#[test]
fn su_forms_run_exactly_what_the_grant_names() {
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = sandbox("argv-diff-su", &idp);
    ps.write_pam("su", SUDO_STACK);
    ps.write_pam("su-l", SU_L);
    ps.write_sudoers(&SUDOERS.replace("@USER@", TEST_USER));
    let corpus = su_corpus(ps.sb.root(), &ps.sb.path("bin/argv-probe"));
    let r = differential(&ps, &idp, &corpus, su_view, su_effect, "su");
    summary("su", &r);
}
