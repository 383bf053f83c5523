//! Real `sudo` and `su` against `pam_openape.so`, without touching the
//! machine's `/etc`.
//!
//! Each scenario runs as
//!
//! ```text
//! unshare --mount --propagation private -- /bin/sh -c '
//!     mount --bind <sandbox>/etc/pam.d      /etc/pam.d
//!     mount --bind <sandbox>/etc/sudoers    /etc/sudoers
//!     mount --bind <sandbox>/etc/sudoers.d  /etc/sudoers.d
//!     mount --bind <sandbox>/run-sudo       /run/sudo
//!     exec setpriv --reuid=openape-e2e --regid=openape-e2e --init-groups \
//!          --reset-env -- env K=V... "$@"' sh <argv...>
//! ```
//!
//! so the replaced PAM stacks, sudoers and sudo's timestamp directory exist
//! only inside that private mount namespace and vanish with it. The whole
//! `/etc/pam.d` directory is replaced by the sandbox's, which holds only the
//! services a test wrote plus an `other` that denies everything: no stack
//! of the machine (`common-auth`, ...) can take part, and a service the test
//! did not think of fails closed.
//!
//! Two sudo implementations are exercised ([`SudoImpl`]): Debian's sudo
//! 1.9 (`/usr/bin/sudo` as installed) and sudo-rs, built at the version
//! pinned in `tests/sudo-rs.version` by `scripts/sudo-rs.sh` (run by `make
//! test`) and installed setuid-root under
//! `/var/lib/openape-tests/sudo-rs/<version>/bin/sudo`. For sudo-rs the
//! namespace also has
//!
//! ```text
//!     mount --bind <that binary>            /usr/bin/sudo
//!     mount --bind <sandbox>/run-sudo-rs    /run/sudo-rs
//!     mount --bind <sandbox>/etc/sudoers    /etc/sudoers-rs   (only if it exists)
//! ```
//!
//! so scripts call it as `sudo` (its argv\[0\] and `/proc/self/exe` are
//! `sudo`, as with a distribution's sudo-rs installed as sudo), its
//! timestamp records (`/var/run/sudo-rs/ts`) are private, and a machine
//! `/etc/sudoers-rs` (which sudo-rs prefers) cannot take part. The empty
//! mount point `/run/sudo-rs` is created when missing (root, 0711: what
//! sudo-rs itself creates).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, Output, Run, Sandbox, TEST_ROOT, TEST_USER, set_owner_mode};

/// Printed (once per test) when the suite is not run as root.
pub const SKIP: &str = "skipped: needs root (mount namespace, setuid sudo); CI runs as root";

/// Hard limit for one scenario (the namespace, sudo/su and the command).
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20);

/// The files of the machine that must never change.
const GUARDED: [&str; 4] = [
    "/etc/pam.d/sudo",
    "/etc/pam.d/su",
    "/etc/sudoers",
    "/etc/pam.d",
];

/// Whether a test of this suite runs (root), with this suite's notice.
pub fn require_root() -> bool {
    harness::require_root_because(SKIP)
}

/// The sudo-rs version the suites build and run (`scripts/sudo-rs.sh`).
pub const SUDO_RS_VERSION: &str = include_str!("../sudo-rs.version");

/// Which sudo a scenario runs. Both are called as `sudo` inside the
/// namespace; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SudoImpl {
    /// The machine's `/usr/bin/sudo` (Debian's sudo 1.9).
    Ogsudo,
    /// sudo-rs at [`SUDO_RS_VERSION`], bind-mounted over `/usr/bin/sudo`.
    SudoRs,
}

impl SudoImpl {
    /// For messages: "sudo 1.9" or "sudo-rs 0.2.x".
    pub fn label(self) -> String {
        match self {
            SudoImpl::Ogsudo => "sudo 1.9".to_string(),
            SudoImpl::SudoRs => format!("sudo-rs {}", SUDO_RS_VERSION.trim()),
        }
    }

    /// The PAM service of `sudo -i`: sudo 1.9 uses sudoers'
    /// `pam_login_service` (`sudo-i`); sudo-rs uses `sudo` for every launch
    /// unless built with its `pam-login` feature (the suites build it with
    /// the default features).
    pub fn login_service(self) -> &'static str {
        match self {
            SudoImpl::Ogsudo => "sudo-i",
            SudoImpl::SudoRs => "sudo",
        }
    }

    /// The directory the namespace mounts over this sudo's timestamp
    /// directory (`/run/sudo` or `/run/sudo-rs`), relative to the sandbox.
    fn run_dir(self) -> &'static str {
        match self {
            SudoImpl::Ogsudo => "run-sudo",
            SudoImpl::SudoRs => "run-sudo-rs",
        }
    }
}

/// Each sudo scenario is a `fn(SudoImpl)`; this makes two tests of it in a
/// module named after it, `<scenario>::ogsudo` (Debian's sudo 1.9) and
/// `<scenario>::sudo_rs` (sudo-rs; skipped with the reason when it could
/// not be built, a failure under CI). Both need root.
#[macro_export]
macro_rules! against_both_sudos {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use $crate::sudo_ns::{SudoImpl, require_root, require_sudo};

            #[test]
            fn ogsudo() {
                if require_root() && require_sudo(SudoImpl::Ogsudo) {
                    super::$scenario(SudoImpl::Ogsudo);
                }
            }

            #[test]
            fn sudo_rs() {
                if require_root() && require_sudo(SudoImpl::SudoRs) {
                    super::$scenario(SudoImpl::SudoRs);
                }
            }
        }
    )*};
}

/// The private setuid sudo-rs binary, or why there is none.
pub fn sudo_rs_binary() -> Result<PathBuf, String> {
    let version = SUDO_RS_VERSION.trim();
    let dir = Path::new(TEST_ROOT).join("sudo-rs").join(version);
    let bin = dir.join("bin/sudo");
    match fs::symlink_metadata(&bin) {
        Ok(m) if m.is_file() && m.uid() == 0 && m.mode() & 0o7777 == 0o4755 => Ok(bin),
        Ok(_) => Err(format!(
            "{} is not a root-owned 4755 file; rerun scripts/sudo-rs.sh",
            bin.display()
        )),
        Err(_) => Err(match fs::read_to_string(dir.join("unavailable")) {
            Ok(why) => why.trim().to_string(),
            Err(_) => format!(
                "{} not built: run scripts/sudo-rs.sh (make test does)",
                bin.display()
            ),
        }),
    }
}

/// Whether a scenario for `imp` can run. sudo 1.9 always can; for sudo-rs
/// a missing build prints `skipped: ...` with the reason, except under CI
/// (`CI=true`), where it fails the test: CI must test sudo-rs.
pub fn require_sudo(imp: SudoImpl) -> bool {
    if imp == SudoImpl::Ogsudo {
        return true;
    }
    match sudo_rs_binary() {
        Ok(_) => true,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{} is missing under CI: {why}",
                imp.label()
            );
            // Straight to the stderr handle, not through the test
            // harness's capture: a skipped implementation must show in
            // the output of a passing run.
            let _ = writeln!(std::io::stderr(), "skipped: {}: {why}", imp.label());
            false
        }
    }
}

/// A snapshot of the machine's PAM and sudoers files, compared at the end
/// of a test: the scenarios must not leak a mount or a write.
pub struct EtcGuard {
    before: Vec<(String, Option<Vec<u8>>)>,
    mountinfo_before: String,
}

fn snapshot(path: &str) -> Option<Vec<u8>> {
    let p = Path::new(path);
    if p.is_dir() {
        let mut names: Vec<String> = fs::read_dir(p)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Some(names.join("\n").into_bytes())
    } else {
        fs::read(p).ok()
    }
}

fn own_mounts() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

impl EtcGuard {
    pub fn new() -> EtcGuard {
        EtcGuard {
            before: GUARDED
                .iter()
                .map(|p| ((*p).to_string(), snapshot(p)))
                .collect(),
            mountinfo_before: own_mounts(),
        }
    }

    /// Panics when a guarded file changed or a sandbox mount is visible in
    /// the test process's own mount namespace.
    pub fn check(&self) {
        for (path, before) in &self.before {
            assert_eq!(
                &snapshot(path),
                before,
                "{path} changed during the test: the namespace leaked"
            );
        }
        let now = own_mounts();
        for line in now.lines() {
            assert!(
                !line.contains(TEST_ROOT) || self.mountinfo_before.contains(line),
                "a sandbox mount leaked into the test's namespace: {line}"
            );
        }
    }
}

impl Default for EtcGuard {
    fn default() -> Self {
        EtcGuard::new()
    }
}

/// A sandbox for the PAM scenarios: the harness [`Sandbox`] (config,
/// audit log, cache) plus a copy of the module, a private `/etc/pam.d`,
/// sudoers, an empty `sudoers.d`, sudo's timestamp directory and a
/// directory the test user can write to.
///
/// ```text
/// <root>/lib/pam_openape.so   0644 root
/// <root>/etc/config.toml      0600 root
/// <root>/etc/pam.d/           0755 root  (other + whatever the test writes)
/// <root>/etc/sudoers          0440 root
/// <root>/etc/sudoers.d/       0755 root  (empty)
/// <root>/run-sudo/            0711 root  (mounted on /run/sudo)
/// <root>/run-sudo-rs/         0711 root  (sudo-rs only: on /run/sudo-rs)
/// <root>/out/                 0755 openape-e2e  (markers)
/// <root>/log/ <root>/cache/   0700 root
/// ```
pub struct PamSandbox {
    pub sb: Sandbox,
    guard: EtcGuard,
    sudo: SudoImpl,
}

/// `/etc/pam.d/other` of the sandbox: everything the test did not configure
/// is refused.
const PAM_OTHER: &str = "\
auth     required pam_deny.so
account  required pam_deny.so
password required pam_deny.so
session  required pam_deny.so
";

impl PamSandbox {
    /// A fresh sandbox trusting `issuer` (`host = "testhost"`, approver
    /// `alice@example.com`, `[http] timeout = 2`, an empty JWKS cache).
    pub fn new(name: &str, issuer: &str) -> PamSandbox {
        let guard = EtcGuard::new();
        harness::test_user();
        let sb = Sandbox::new(name);
        for (dir, mode) in [
            ("lib", 0o755),
            ("etc/pam.d", 0o755),
            ("etc/sudoers.d", 0o755),
            ("run-sudo", 0o711),
        ] {
            let p = sb.path(dir);
            fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            set_owner_mode(&p, 0, 0, mode);
        }
        sb.user_dir("out");
        let so = harness::artefact("libpam_openape.so");
        let dst = sb.path("lib/pam_openape.so");
        fs::copy(&so, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", so.display()));
        set_owner_mode(&dst, 0, 0, 0o644);
        sb.write_config(&sb.config(issuer).render());
        let ps = PamSandbox {
            sb,
            guard,
            sudo: SudoImpl::Ogsudo,
        };
        ps.write_pam("other", PAM_OTHER);
        ps
    }

    /// Run `sudo` as `imp` in every later scenario of this sandbox (the
    /// default is sudo 1.9). Check [`require_sudo`] first.
    pub fn use_sudo(&mut self, imp: SudoImpl) {
        if imp == SudoImpl::SudoRs {
            let run = self.sb.path(imp.run_dir());
            if !run.exists() {
                fs::create_dir(&run).unwrap_or_else(|e| panic!("mkdir {}: {e}", run.display()));
            }
            set_owner_mode(&run, 0, 0, 0o711);
            // The mount point; what sudo-rs creates itself on first use.
            let point = Path::new("/run/sudo-rs");
            match fs::create_dir(point) {
                Ok(()) => set_owner_mode(point, 0, 0, 0o711),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir {}: {e}", point.display()),
            }
        }
        self.sudo = imp;
    }

    /// The sudo this sandbox runs.
    pub fn sudo(&self) -> SudoImpl {
        self.sudo
    }

    /// Where this sudo's timestamp records land (the namespace's
    /// `/run/sudo/ts` or `/var/run/sudo-rs/ts`).
    pub fn timestamp_dir(&self) -> PathBuf {
        self.sb.path(self.sudo.run_dir()).join("ts")
    }

    pub fn module(&self) -> PathBuf {
        self.sb.path("lib/pam_openape.so")
    }

    /// A home of its own for the test user (request mode: its key lives
    /// there), bind-mounted at the user's passwd home in every run.
    pub fn with_user_home(&mut self) -> PathBuf {
        self.sb.with_user_home()
    }

    /// Fill a stack template: `@SO@` (the module copy), `@CFG@` (the
    /// config file), `@ROOT@` (the sandbox root).
    pub fn render(&self, template: &str) -> String {
        template
            .replace("@SO@", &self.module().to_string_lossy())
            .replace("@CFG@", &self.sb.config_path().to_string_lossy())
            .replace("@ROOT@", &self.sb.root().to_string_lossy())
    }

    /// Write `/etc/pam.d/<service>` of the namespace from a template.
    pub fn write_pam(&self, service: &str, template: &str) {
        let text = self.render(template);
        self.sb.write_file(
            &format!("etc/pam.d/{service}"),
            text.as_bytes(),
            0,
            0,
            0o644,
        );
    }

    /// Write `/etc/sudoers` of the namespace (root, 0440).
    pub fn write_sudoers(&self, text: &str) {
        self.sb
            .write_file("etc/sudoers", self.render(text).as_bytes(), 0, 0, 0o440);
    }

    /// A file the test user can create (`<root>/out/<name>`).
    pub fn out_path(&self, name: &str) -> PathBuf {
        self.sb.path("out").join(name)
    }

    /// Run `argv` as the test user inside a private mount namespace where
    /// the sandbox's PAM stacks, sudoers and timestamp directory are
    /// mounted over the machine's. The environment is `setpriv
    /// --reset-env`'s (TERM, HOME, SHELL, USER, LOGNAME, PATH) plus `env`.
    /// stdin is `/dev/null` unless `stdin` is given.
    pub fn run(&self, argv: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
        self.run_for(argv, env, stdin, SCENARIO_TIMEOUT)
    }

    /// [`PamSandbox::run`] with another time limit (a script that runs
    /// many scenarios in one namespace).
    pub fn run_for(
        &self,
        argv: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Output {
        assert!(
            Path::new("/run/sudo").is_dir(),
            "/run/sudo does not exist: sudo's timestamp directory is needed as a mount point"
        );
        assert!(
            self.sb.path("etc/sudoers").is_file(),
            "write_sudoers() first"
        );
        let script = format!(
            "set -e\n{mounts}\
             exec /usr/bin/setpriv --reuid={u} --regid={u} --init-groups --reset-env -- /usr/bin/env \"$@\"\n",
            mounts = self.mounts(),
            u = TEST_USER,
        );
        let mut r = Run::new("/usr/bin/unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(script)
            .arg("sh");
        for (k, v) in env {
            assert!(!k.contains('='), "bad variable name {k}");
            r = r.arg(format!("{k}={v}"));
        }
        // `env` would take a first word containing '=' as an assignment.
        if argv.first().is_some_and(|a| a.contains('=')) {
            r = r.arg("--");
        }
        // The sandbox's config namespace first (an overlay on /etc, the
        // config at /etc/openape, the user's home where one was set up);
        // the binds above go on top of it.
        r = r
            .args(argv)
            .cwd(self.sb.root())
            .config_ns(self.sb.config_ns())
            .timeout(timeout);
        if let Some(s) = stdin {
            r = r.stdin(s);
        }
        let out = r.output();
        self.guard.check();
        out
    }

    /// The shell commands (one a line) that mount the sandbox's PAM
    /// stacks, sudoers and timestamp directory, and for sudo-rs its binary
    /// over `/usr/bin/sudo`, inside a fresh mount namespace.
    pub fn mounts(&self) -> String {
        let q = |p: PathBuf| shell_quote(&p.to_string_lossy());
        let mut lines = format!(
            "mount --bind {pamd} /etc/pam.d\n\
             mount --bind {sudoers} /etc/sudoers\n\
             mount --bind {sudoersd} /etc/sudoers.d\n\
             mount --bind {run} /run/sudo\n",
            pamd = q(self.sb.path("etc/pam.d")),
            sudoers = q(self.sb.path("etc/sudoers")),
            sudoersd = q(self.sb.path("etc/sudoers.d")),
            run = q(self.sb.path("run-sudo")),
        );
        if self.sudo == SudoImpl::SudoRs {
            let bin = sudo_rs_binary().unwrap_or_else(|e| panic!("sudo-rs: {e}"));
            assert!(
                Path::new("/usr/bin/sudo").is_file(),
                "/usr/bin/sudo is needed as the mount point for sudo-rs"
            );
            lines.push_str(&format!(
                "mount --bind {bin} /usr/bin/sudo\n\
                 mount --bind {run} /run/sudo-rs\n\
                 if [ -e /etc/sudoers-rs ]; then mount --bind {sudoers} /etc/sudoers-rs; fi\n",
                bin = q(bin),
                run = q(self.sb.path(self.sudo.run_dir())),
                sudoers = q(self.sb.path("etc/sudoers")),
            ));
        }
        lines
    }

    /// A shell script run by `/bin/sh -c` as the test user (one parent for
    /// every sudo in it: sudo's timestamp without a tty is keyed to the
    /// parent process). Extra `args` are `$1`, `$2`, ...
    pub fn run_script(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut argv = vec!["/bin/sh", "-c", script, "sh"];
        argv.extend_from_slice(args);
        self.run(&argv, env, None)
    }

    pub fn audit(&self) -> Vec<Value> {
        self.sb.audit_lines()
    }

    /// The last audit line; panics when there is none.
    pub fn last_audit(&self) -> Value {
        self.sb.last_audit()
    }
}

/// Single-quote for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A shipped file from the repository's pam.d/, with the module given by
/// absolute path and the sandbox config (the only edits an admin who
/// installed the module elsewhere would make).
pub fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pam.d")
        .join(name);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("pam_openape.so", "@SO@ config=@CFG@")
}

/// Copy the machine's Debian `common-*` stacks into the private pam.d so
/// the shipped files' `@include` lines resolve. `false`: not Debian-like.
pub fn with_common_stacks(ps: &PamSandbox) -> bool {
    for name in [
        "common-auth",
        "common-account",
        "common-session",
        "common-session-noninteractive",
        "common-password",
    ] {
        match fs::read_to_string(format!("/etc/pam.d/{name}")) {
            Ok(text) => ps.write_pam(name, &text),
            Err(_) => {
                eprintln!("skipped: /etc/pam.d/{name} missing (not a Debian-style PAM layout)");
                return false;
            }
        }
    }
    true
}

/// A PAM stack where only a grant authenticates (the password stand-in
/// always fails). `@SO@` and `@CFG@` as in [`shipped`].
pub const GRANT_OR_DENY_STACK: &str = "\
#%PAM-1.0
auth     sufficient @SO@ config=@CFG@ nonint
auth     required   pam_deny.so
account  required   pam_permit.so
session  required   pam_permit.so
";
