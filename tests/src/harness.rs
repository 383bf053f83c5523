//! Harness for the end-to-end suites that need root: a sandbox holding a
//! setuid copy of `escapes`, its root-owned configuration, audit log and
//! JWKS cache; a real non-root test user with a supplementary group; and a
//! runner that executes programs as that user (or as root) with a clean
//! environment and a hard timeout, so no test can hang the suite.
//!
//! Reused by the PAM suites: [`require_root`], [`test_user`], [`artefact`],
//! [`Sandbox`] (config writer, audit reader, markers, user-owned
//! directories), [`Run`] (any program as the test user) and [`exec_raw`]
//! (execve with an arbitrary, even empty, argv).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The non-root user every e2e test acts as.
pub const TEST_USER: &str = "openape-e2e";
/// A supplementary group of [`TEST_USER`]; it must never survive elevation.
pub const EXTRA_GROUP: &str = "openape-extra";
/// Parent of every sandbox: root-owned 0755 like `/var/lib` above it (the
/// trust-root checks refuse world-writable ancestors such as `/tmp`).
pub const TEST_ROOT: &str = "/var/lib/openape-tests";
/// `host` in the default configuration.
pub const HOST: &str = "testhost";
/// The approver the default configuration allows (the test IdP's default).
pub const APPROVER: &str = "alice@example.com";
/// PATH given to every program the runner starts (callers may override).
pub const SANE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Hard limit for one program run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Set this to keep sandboxes after the tests (for debugging).
pub const KEEP_ENV: &str = "OPENAPE_KEEP_TEST_DIRS";

const SKIP: &str =
    "skipped: needs root (installs a setuid binary and creates a user); CI runs as root";

/// The one place that decides whether a root-only test runs. Prints the
/// skip notice and returns `false` when not running as root.
pub fn require_root() -> bool {
    require_root_because(SKIP)
}

/// [`require_root`] with a suite's own skip notice.
pub fn require_root_because(notice: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        eprintln!("{notice}");
        false
    }
}

/// Whether root here may raise a hard resource limit: CAP_SYS_RESOURCE
/// (capability 24) in the bounding set. Some containers drop it even for
/// root (this kind of CI machine does), and then a caller's hard limit
/// stays, so a run that needs more must be refused unspent.
pub fn can_raise_hard_limits() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapBnd:"))?.to_string();
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

// ---------------------------------------------------------------------------
// Build artefacts
// ---------------------------------------------------------------------------

/// `target/<profile>`, found from the running test binary
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary has a directory");
    if deps.file_name() == Some(OsStr::new("deps")) {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A workspace artefact next to the test binaries (`escapes`,
/// `libpam_openape.so`, ...). Panics with a hint when it was not built.
/// A concurrent `cargo build` relinks artefacts (remove, then link), so a
/// missing file is waited for a few seconds once per process.
pub fn artefact(name: &str) -> PathBuf {
    static GAVE_UP: AtomicBool = AtomicBool::new(false);
    let p = target_profile_dir().join(name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.is_file() && !GAVE_UP.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    if !p.is_file() {
        GAVE_UP.store(true, Ordering::SeqCst);
    }
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace` first (the e2e tests use the built binaries)",
        p.display()
    );
    p
}

/// Files that tests execute are written under the write side of this lock,
/// processes are started under the read side: a child forked while another
/// thread still had a freshly written binary open for writing would make
/// exec of that binary fail with ETXTBSY ("Text file busy").
static EXEC_WRITE_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Hold while starting a process (fork/spawn).
fn spawn_guard() -> std::sync::RwLockReadGuard<'static, ()> {
    EXEC_WRITE_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Hold while writing a file a test may execute.
fn write_guard() -> std::sync::RwLockWriteGuard<'static, ()> {
    EXEC_WRITE_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// Copy `src` to `dst` and make sure the copy is whole: a concurrent
/// `cargo build` may be rewriting `src`, so retry until its size and
/// mtime are the same before and after the copy.
pub fn copy_stable(src: &Path, dst: &Path) {
    let stamp = |p: &Path| fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    let mut last_err = String::new();
    for _ in 0..40 {
        let before = stamp(src);
        let copied = {
            let _w = write_guard();
            fs::copy(src, dst)
        };
        match copied {
            Ok(n) if before.is_some() && stamp(src) == before && before.map(|b| b.0) == Some(n) => {
                return;
            }
            Ok(_) => last_err = "source changed during the copy".into(),
            Err(e) => last_err = e.to_string(),
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!("copy {} -> {}: {last_err}", src.display(), dst.display());
}

/// The built `escapes` binary.
pub fn escapes_bin() -> PathBuf {
    artefact("escapes")
}

// ---------------------------------------------------------------------------
// The test user
// ---------------------------------------------------------------------------

/// The test user as the system knows it.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    /// Primary group (its own, from `useradd -U`).
    pub gid: u32,
    /// Gid of [`EXTRA_GROUP`].
    pub extra_gid: u32,
    /// Every group of the user (primary first), as `id -G` lists them.
    pub groups: Vec<u32>,
}

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", SANE_PATH)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn id_of(args: &[&str]) -> String {
    let out = sh("/usr/bin/id", args);
    assert!(out.status.success(), "id {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn exists(db: &str, key: &str) -> bool {
    sh("/usr/bin/getent", &[db, key]).status.success()
}

/// Run a user-management command; "already exists" (exit 9) is fine.
fn tolerant(program: &str, args: &[&str]) {
    let out = sh(program, args);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(9),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Serialise user creation across processes (other test binaries, another
/// engineer's run) with an flock; threads are serialised by the OnceLock.
fn with_file_lock<T>(f: impl FnOnce() -> T) -> T {
    ensure_test_root();
    let lock = File::create(Path::new(TEST_ROOT).join(".users.lock")).expect("create lock file");
    // SAFETY: flock on a descriptor we own; it only blocks.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    let out = f();
    drop(lock);
    out
}

/// The test user, created on first use (idempotent, safe in parallel):
/// `useradd -M -s /bin/sh -U openape-e2e`, plus `openape-extra` as a
/// supplementary group. Needs root.
pub fn test_user() -> &'static TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(|| {
        with_file_lock(|| {
            if !exists("group", EXTRA_GROUP) {
                tolerant("/usr/sbin/groupadd", &[EXTRA_GROUP]);
            }
            if !exists("passwd", TEST_USER) {
                if exists("group", TEST_USER) {
                    tolerant(
                        "/usr/sbin/useradd",
                        &["-M", "-s", "/bin/sh", "-g", TEST_USER, TEST_USER],
                    );
                } else {
                    tolerant(
                        "/usr/sbin/useradd",
                        &["-M", "-s", "/bin/sh", "-U", TEST_USER],
                    );
                }
            }
            let groups: Vec<u32> = id_of(&["-G", TEST_USER])
                .split_whitespace()
                .map(|g| g.parse().expect("numeric gid"))
                .collect();
            let extra_gid: u32 = sh("/usr/bin/getent", &["group", EXTRA_GROUP])
                .stdout
                .split(|b| *b == b':')
                .nth(2)
                .and_then(|g| std::str::from_utf8(g).ok()?.trim().parse().ok())
                .expect("gid of the extra group");
            if !groups.contains(&extra_gid) {
                tolerant("/usr/sbin/usermod", &["-aG", EXTRA_GROUP, TEST_USER]);
            }
            let groups: Vec<u32> = id_of(&["-G", TEST_USER])
                .split_whitespace()
                .map(|g| g.parse().expect("numeric gid"))
                .collect();
            assert!(
                groups.contains(&extra_gid),
                "{TEST_USER} not in {EXTRA_GROUP}"
            );
            TestUser {
                name: TEST_USER.to_string(),
                uid: id_of(&["-u", TEST_USER]).parse().expect("uid"),
                gid: id_of(&["-g", TEST_USER]).parse().expect("gid"),
                extra_gid,
                groups,
            }
        })
    })
}

/// The home directory of `user` in the passwd database.
pub fn passwd_home(user: &str) -> String {
    let out = sh("/usr/bin/getent", &["passwd", user]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(':')
        .nth(5)
        .filter(|h| h.starts_with('/') && *h != "/")
        .unwrap_or_else(|| panic!("{user} has no usable home directory in passwd"))
        .to_string()
}

/// Numeric groups of `user` from the group database (`id -G user`).
pub fn groups_of(user: &str) -> Vec<u32> {
    id_of(&["-G", user])
        .split_whitespace()
        .map(|g| g.parse().expect("numeric gid"))
        .collect()
}

// ---------------------------------------------------------------------------
// Running programs
// ---------------------------------------------------------------------------

/// What a finished program did.
#[derive(Clone, Debug)]
pub struct Output {
    /// Exit code, or 128 + signal number.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The command line, for messages.
    pub what: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited {} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.what, self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A program to run with a clean environment (`PATH` = [`SANE_PATH`] plus
/// whatever is set with [`Run::env`]), in its own process group, killed
/// after the timeout.
#[derive(Clone, Debug)]
pub struct Run {
    program: OsString,
    args: Vec<OsString>,
    arg0: Option<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    as_user: bool,
    /// With `as_user`: these supplementary groups instead of the user's.
    groups: Option<Vec<u32>>,
    /// With `as_user`: this real, effective and saved gid instead of the
    /// user's primary group.
    gid: Option<u32>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    /// Descriptors handed to the program: (our copy, its number there).
    fds: Vec<(Arc<OwnedFd>, i32)>,
    /// Run inside a private mount namespace with this config directory
    /// at `/etc/openape` (see [`ConfigNs`]).
    config_ns: Option<Arc<ConfigNs>>,
}

/// The default configuration path of `escapes` is fixed (only real root
/// may choose another), so a test's config reaches a setuid run through a
/// private mount namespace, entered in the forked child before exec:
///
/// ```text
/// unshare(CLONE_NEWNS); mount --make-rprivate /
/// mount -t tmpfs <sandbox>/ns                    (scratch, 0755 root)
/// mount -t overlay -o lowerdir=/etc,upperdir=<ns>/u,workdir=<ns>/w /etc
/// mkdir /etc/openape; mount --bind <sandbox>/etc /etc/openape
/// ```
///
/// The overlay lets `/etc/openape` exist even where the machine has none,
/// without writing to the machine's `/etc`; everything vanishes with the
/// namespace. The bind mount shows the sandbox's own directory, so the
/// owner and mode a test sets on it are what `escapes` checks.
#[derive(Debug)]
pub struct ConfigNs {
    scratch: CString,
    upper: CString,
    work: CString,
    overlay_opts: CString,
    config_dir: CString,
    /// Request-mode suites: a home directory for the test user.
    home: Option<HomeBind>,
}

/// `<sandbox>/home` shown at the test user's passwd home inside the
/// namespace; the home's parent (`/home`) is overlaid first, so the
/// mount point exists without writing to the machine.
#[derive(Debug)]
struct HomeBind {
    src: CString,
    target: CString,
    parent: CString,
    upper: CString,
    work: CString,
    overlay_opts: CString,
}

impl ConfigNs {
    pub fn new(scratch: &Path, config_dir: &Path) -> ConfigNs {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
        ConfigNs {
            scratch: c(scratch),
            upper: c(&scratch.join("u")),
            work: c(&scratch.join("w")),
            overlay_opts: CString::new(format!(
                "lowerdir=/etc,upperdir={},workdir={}",
                scratch.join("u").display(),
                scratch.join("w").display()
            ))
            .expect("no NUL in path"),
            config_dir: c(config_dir),
            home: None,
        }
    }

    /// As [`ConfigNs::new`], plus `home_src` bind-mounted at `home_target`.
    pub fn with_home(
        scratch: &Path,
        config_dir: &Path,
        home_src: &Path,
        home_target: &Path,
    ) -> ConfigNs {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
        let parent = home_target.parent().expect("home has a parent");
        let mut ns = ConfigNs::new(scratch, config_dir);
        ns.home = Some(HomeBind {
            src: c(home_src),
            target: c(home_target),
            parent: c(parent),
            upper: c(&scratch.join("hu")),
            work: c(&scratch.join("hw")),
            overlay_opts: CString::new(format!(
                "lowerdir={},upperdir={},workdir={}",
                parent.display(),
                scratch.join("hu").display(),
                scratch.join("hw").display()
            ))
            .expect("no NUL in path"),
        });
        ns
    }

    /// Enter the namespace. Runs in a forked child (only system calls on
    /// strings prepared before the fork), as root.
    pub fn enter(&self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: plain system calls on NUL-terminated strings that live in
        // `self` (prepared before the fork) or are 'static literals.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(err());
            }
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            if libc::mount(
                c"tmpfs".as_ptr(),
                self.scratch.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0755".as_ptr().cast(),
            ) != 0
            {
                return Err(err());
            }
            if libc::mkdir(self.upper.as_ptr(), 0o755) != 0
                || libc::chmod(self.upper.as_ptr(), 0o755) != 0
                || libc::mkdir(self.work.as_ptr(), 0o700) != 0
            {
                return Err(err());
            }
            if libc::mount(
                c"overlay".as_ptr(),
                c"/etc".as_ptr(),
                c"overlay".as_ptr(),
                0,
                self.overlay_opts.as_ptr().cast(),
            ) != 0
            {
                return Err(err());
            }
            if libc::mkdir(c"/etc/openape".as_ptr(), 0o755) != 0
                && *libc::__errno_location() != libc::EEXIST
            {
                return Err(err());
            }
            if libc::mount(
                self.config_dir.as_ptr(),
                c"/etc/openape".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            if let Some(h) = &self.home {
                if libc::mkdir(h.upper.as_ptr(), 0o755) != 0
                    || libc::chmod(h.upper.as_ptr(), 0o755) != 0
                    || libc::mkdir(h.work.as_ptr(), 0o700) != 0
                    || libc::mount(
                        c"overlay".as_ptr(),
                        h.parent.as_ptr(),
                        c"overlay".as_ptr(),
                        0,
                        h.overlay_opts.as_ptr().cast(),
                    ) != 0
                {
                    return Err(err());
                }
                if libc::mkdir(h.target.as_ptr(), 0o755) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(err());
                }
                if libc::mount(
                    h.src.as_ptr(),
                    h.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
            }
        }
        Ok(())
    }
}

impl Run {
    pub fn new(program: impl AsRef<OsStr>) -> Run {
        Run {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            arg0: None,
            env: vec![("PATH".into(), SANE_PATH.into())],
            stdin: None,
            as_user: false,
            groups: None,
            gid: None,
            cwd: None,
            timeout: DEFAULT_TIMEOUT,
            fds: Vec::new(),
            config_ns: None,
        }
    }

    /// Run inside a private mount namespace where `ns` puts a sandbox's
    /// configuration at the default path.
    pub fn config_ns(mut self, ns: Arc<ConfigNs>) -> Run {
        self.config_ns = Some(ns);
        self
    }

    /// Hand `fd` to the program as descriptor number `target` (> 2),
    /// without close-on-exec: what a caller leaking a descriptor does.
    pub fn pass_fd(mut self, fd: OwnedFd, target: i32) -> Run {
        assert!(target > 2, "use stdin() for 0..=2");
        self.fds.push((Arc::new(fd), target));
        self
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Run {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Run {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set argv[0] (the program is still executed by path). Runs as the
    /// test user are then done by dropping privileges in the child instead
    /// of through `setpriv`, which would set its own argv[0].
    pub fn arg0(mut self, a: impl AsRef<OsStr>) -> Run {
        self.arg0 = Some(a.as_ref().to_owned());
        self
    }

    /// Set (or replace) one environment variable.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Run {
        let k = k.as_ref().to_owned();
        self.env.retain(|(o, _)| *o != k);
        self.env.push((k, v.as_ref().to_owned()));
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Run {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Feed these bytes on stdin (then EOF); default is /dev/null.
    pub fn stdin(mut self, data: impl AsRef<[u8]>) -> Run {
        self.stdin = Some(data.as_ref().to_vec());
        self
    }

    /// Run as [`TEST_USER`]: real and effective uid and gid, and exactly
    /// the user's groups (`setpriv --reuid --regid --init-groups`).
    pub fn as_test_user(mut self) -> Run {
        self.as_user = true;
        self
    }

    /// Run as [`TEST_USER`] holding only these supplementary groups (as
    /// a process that dropped some of the user's groups would).
    pub fn as_test_user_with_groups(mut self, groups: &[u32]) -> Run {
        self.as_user = true;
        self.groups = Some(groups.to_vec());
        self
    }

    /// Run as [`TEST_USER`] with this gid (real, effective, saved) and
    /// only these supplementary groups: a process that no longer holds
    /// the user's primary group (a service's `Group=`, `setpriv --regid`).
    pub fn as_test_user_with_ids(mut self, gid: u32, groups: &[u32]) -> Run {
        self.as_user = true;
        self.gid = Some(gid);
        self.groups = Some(groups.to_vec());
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Run {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Run {
        self.timeout = t;
        self
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if self.as_user {
            s.push_str(&format!("[as {TEST_USER}] "));
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Run to completion (or kill at the timeout and panic).
    pub fn output(self) -> Output {
        let what = self.describe();
        let mut cmd;
        let ns = self.config_ns.clone();
        if self.as_user && self.arg0.is_none() && self.groups.is_none() && self.gid.is_none() {
            test_user();
            cmd = Command::new("/usr/bin/setpriv");
            if let Some(ns) = ns.clone() {
                // SAFETY: runs in the forked child before exec, as root; see
                // ConfigNs::enter (system calls only).
                unsafe { cmd.pre_exec(move || ns.enter()) };
            }
            cmd.arg(format!("--reuid={TEST_USER}"))
                .arg(format!("--regid={TEST_USER}"))
                .arg("--init-groups")
                .arg("--")
                .arg(&self.program);
        } else {
            cmd = Command::new(&self.program);
            if let Some(a0) = &self.arg0 {
                cmd.arg0(a0);
            }
            if let Some(ns) = ns.clone() {
                // SAFETY: runs in the forked child before exec and before
                // the privilege drop below; see ConfigNs::enter.
                unsafe { cmd.pre_exec(move || ns.enter()) };
            }
            if self.as_user {
                let u = test_user().clone();
                let groups: Vec<libc::gid_t> = self.groups.clone().unwrap_or(u.groups);
                let gid = self.gid.unwrap_or(u.gid);
                // SAFETY: the closure runs in the forked child before exec
                // and only makes the async-signal-safe system calls
                // setgroups, setresgid and setresuid on data prepared
                // before the fork.
                unsafe {
                    cmd.pre_exec(move || drop_to(&groups, gid, u.uid));
                }
            }
        }
        if !self.fds.is_empty() {
            let pairs: Vec<(i32, i32)> = self
                .fds
                .iter()
                .map(|(fd, target)| (fd.as_raw_fd(), *target))
                .collect();
            // SAFETY: runs in the forked child before exec; dup2 is
            // async-signal-safe and the descriptors stay open in the parent
            // (held by `self.fds`) until after spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    for &(src, dst) in &pairs {
                        if libc::dup2(src, dst) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let start = Instant::now();
        let spawned = {
            let _r = spawn_guard();
            cmd.spawn()
        };
        let mut child = spawned.unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let feeder = match (child.stdin.take(), self.stdin) {
            (Some(mut w), Some(data)) => Some(thread::spawn(move || {
                // The program may exit without reading: EPIPE is fine.
                let _ = w.write_all(&data);
            })),
            _ => None,
        };
        let out_reader = reader(child.stdout.take().expect("stdout piped"));
        let err_reader = reader(child.stderr.take().expect("stderr piped"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if start.elapsed() > self.timeout {
                kill_group(pid);
                let _ = child.wait();
                panic!("{what}: still running after {:?}; killed", self.timeout);
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = start.elapsed();
        if let Some(f) = feeder {
            let _ = f.join();
        }
        // A leftover grandchild could keep a pipe open: bound the wait.
        kill_group(pid);
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Output {
            code,
            stdout,
            stderr,
            elapsed,
            what,
        }
    }
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn kill_group(pgid: i32) {
    // SAFETY: kill only sends a signal to the process group we created;
    // ESRCH when it is gone is harmless.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Become the test user for good (runs in a forked child).
fn drop_to(groups: &[libc::gid_t], gid: u32, uid: u32) -> std::io::Result<()> {
    // SAFETY: setgroups reads `groups.len()` gids from a live slice.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain system calls with integer arguments.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `execve(path, argv, env)` as the test user (or as root), with exactly
/// the given argv — an empty `argv` gives a true `argc == 0` exec (the
/// PwnKit shape), which `Command` cannot express. stdin is /dev/null,
/// stdout and stderr are captured, the child is killed after `timeout`.
pub fn exec_raw(
    path: &Path,
    argv: &[&[u8]],
    env: &[(&str, &str)],
    as_user: bool,
    cwd: &Path,
    timeout: Duration,
) -> Output {
    exec_raw_in(None, path, argv, env, &[], as_user, cwd, timeout)
}

/// [`exec_raw`] inside a [`ConfigNs`] (when given), with extra raw
/// environment entries appended as they are (`BAREWORD`, `=X`: shapes
/// that `NAME=value` pairs cannot express).
#[allow(clippy::too_many_arguments)]
pub fn exec_raw_in(
    ns: Option<&ConfigNs>,
    path: &Path,
    argv: &[&[u8]],
    env: &[(&str, &str)],
    raw_env: &[&[u8]],
    as_user: bool,
    cwd: &Path,
    timeout: Duration,
) -> Output {
    let what = format!("execve({}, {argv:?})", path.display());
    let cstr = |b: &[u8]| CString::new(b).expect("no NUL inside");
    let c_path = cstr(path.as_os_str().as_bytes());
    let c_cwd = cstr(cwd.as_os_str().as_bytes());
    let c_argv: Vec<CString> = argv.iter().map(|a| cstr(a)).collect();
    let mut p_argv: Vec<*const libc::c_char> = c_argv.iter().map(|c| c.as_ptr()).collect();
    p_argv.push(std::ptr::null());
    let c_env: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .chain(raw_env.iter().map(|e| cstr(e)))
        .collect();
    let mut p_env: Vec<*const libc::c_char> = c_env.iter().map(|c| c.as_ptr()).collect();
    p_env.push(std::ptr::null());
    let ids = as_user.then(|| {
        let u = test_user();
        (u.groups.clone(), u.gid, u.uid)
    });
    let devnull = File::open("/dev/null").expect("/dev/null");

    let pipe = || {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned here only.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    };
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();

    let start = Instant::now();
    let guard = spawn_guard();
    // SAFETY: the child below only makes async-signal-safe system calls
    // (setpgid, dup2, chdir, setgroups, setresgid, setresuid, execve,
    // _exit) on memory prepared before the fork, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child must not touch the lock (not async-signal-safe).
        std::mem::forget(guard);
    } else {
        drop(guard);
    }
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see the fork above; every pointer is into a vector or
        // CString that lives until exec because nothing is freed here.
        unsafe {
            libc::setpgid(0, 0);
            libc::dup2(devnull.as_raw_fd(), 0);
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::dup2(err_w.as_raw_fd(), 2);
            if let Some(ns) = ns
                && ns.enter().is_err()
            {
                libc::_exit(119);
            }
            if libc::chdir(c_cwd.as_ptr()) != 0 {
                libc::_exit(120);
            }
            if let Some((groups, gid, uid)) = &ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(*gid, *gid, *gid) != 0
                    || libc::setresuid(*uid, *uid, *uid) != 0)
            {
                libc::_exit(121);
            }
            libc::execve(c_path.as_ptr(), p_argv.as_ptr(), p_env.as_ptr());
            libc::_exit(122);
        }
    }
    drop(out_w);
    drop(err_w);
    drop(devnull);
    let out_reader = reader(out_r);
    let err_reader = reader(err_r);
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing into a local int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        assert!(rc == 0, "waitpid: {}", std::io::Error::last_os_error());
        if start.elapsed() > timeout {
            kill_group(pid);
            // SAFETY: reap the child we just killed.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("{what}: still running after {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    kill_group(pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Output {
        code,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed,
        what,
    }
}

// ---------------------------------------------------------------------------
// Sandbox
// ---------------------------------------------------------------------------

fn ensure_test_root() {
    let root = Path::new(TEST_ROOT);
    match fs::create_dir(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot create {TEST_ROOT}: {e}"),
    }
    std::os::unix::fs::chown(root, Some(0), Some(0)).expect("chown test root");
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod test root");
}

/// Create `path` (if needed) with this owner and mode; chmod after chown
/// so a setuid bit survives.
pub fn set_owner_mode(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    set_owner_mode(path, 0, 0, mode);
}

/// TOML basic string (JSON string escapes are valid TOML escapes).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

fn toml_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// The configuration a sandbox writes; every field can be changed before
/// [`ConfigBuilder::render`]. Extra text goes where TOML needs it: `top`
/// before any table, `security` and `cache` inside those tables, `tail`
/// (whole tables such as `[subjects]` or `[env]`) at the end.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    pub host: String,
    pub issuers: Vec<String>,
    pub approvers: Vec<String>,
    pub audit_log: PathBuf,
    pub cache_dir: PathBuf,
    pub jwks_min_refresh: u32,
    pub http_timeout: u32,
    pub top: String,
    pub security: String,
    pub cache: String,
    pub tail: String,
}

impl ConfigBuilder {
    pub fn render(&self) -> String {
        let line = |s: &str| {
            if s.is_empty() || s.ends_with('\n') {
                s.to_string()
            } else {
                format!("{s}\n")
            }
        };
        format!(
            "host = {host}\naudit_log = {audit}\n{top}\n[security]\nallowed_issuers = {iss}\nallowed_approvers = {appr}\nallow_unprivileged_loopback = true\n{sec}\n[cache]\ndir = {cache}\njwks_min_refresh = {minr}\n{cache_extra}\n[http]\ntimeout = {timeout}\n\n{tail}",
            host = toml_str(&self.host),
            audit = toml_str(&self.audit_log.to_string_lossy()),
            top = line(&self.top),
            iss = toml_list(&self.issuers),
            appr = toml_list(&self.approvers),
            sec = line(&self.security),
            cache = toml_str(&self.cache_dir.to_string_lossy()),
            minr = self.jwks_min_refresh,
            cache_extra = line(&self.cache),
            timeout = self.http_timeout,
            tail = line(&self.tail),
        )
    }
}

/// A private root-owned tree under [`TEST_ROOT`]:
///
/// ```text
/// <root>/            0755 root
///   bin/escapes      4755 root (setuid copy of the built binary)
///   etc/config.toml  0600 root
///   log/             0700 root   (audit.log)
///   cache/           0700 root   (JWKS cache)
/// ```
///
/// Dropping it removes the tree unless `OPENAPE_KEEP_TEST_DIRS` is set.
pub struct Sandbox {
    root: PathBuf,
    ns: Arc<ConfigNs>,
    /// Set by [`Sandbox::with_user_home`]: (sandbox dir, passwd home).
    home: Option<(PathBuf, PathBuf)>,
}

impl Sandbox {
    /// A fresh sandbox named `<name>-<pid>-<n>`. Needs root.
    pub fn new(name: &str) -> Sandbox {
        static N: AtomicUsize = AtomicUsize::new(0);
        ensure_test_root();
        let n = N.fetch_add(1, Ordering::SeqCst);
        let root = Path::new(TEST_ROOT).join(format!("{name}-{}-{n}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).expect("remove stale sandbox");
        }
        mkdir(&root, 0o755);
        let ns = Arc::new(ConfigNs::new(&root.join("ns"), &root.join("etc")));
        let sb = Sandbox {
            root,
            ns,
            home: None,
        };
        for d in ["bin", "etc"] {
            mkdir(&sb.path(d), 0o755);
        }
        mkdir(&sb.path("ns"), 0o700);
        mkdir(&sb.path("log"), 0o700);
        mkdir(&sb.path("cache"), 0o700);
        sb.install_setuid(&escapes_bin(), "bin/escapes");
        sb
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Copy `src` to `rel`, owner root, mode 4755.
    pub fn install_setuid(&self, src: &Path, rel: &str) -> PathBuf {
        let dst = self.path(rel);
        copy_stable(src, &dst);
        set_owner_mode(&dst, 0, 0, 0o4755);
        dst
    }

    /// Write `rel` with this content, owner and mode.
    pub fn write_file(&self, rel: &str, content: &[u8], uid: u32, gid: u32, mode: u32) -> PathBuf {
        let p = self.path(rel);
        {
            let _w = write_guard();
            fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
        set_owner_mode(&p, uid, gid, mode);
        p
    }

    /// A directory `rel` owned by the test user (mode 0755): a place the
    /// caller controls.
    pub fn user_dir(&self, rel: &str) -> PathBuf {
        let u = test_user();
        let p = self.path(rel);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        set_owner_mode(&p, u.uid, u.gid, 0o755);
        p
    }

    pub fn escapes(&self) -> PathBuf {
        self.path("bin/escapes")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("etc/config.toml")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path("log/audit.log")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path("cache")
    }

    /// The default configuration for one issuer: `host = "testhost"`, the
    /// sandbox's audit log and cache, `allowed_approvers =
    /// ["alice@example.com"]`, `jwks_min_refresh = 0`, `[http] timeout = 2`.
    pub fn config(&self, issuer: &str) -> ConfigBuilder {
        ConfigBuilder {
            host: HOST.to_string(),
            issuers: vec![issuer.to_string()],
            approvers: vec![APPROVER.to_string()],
            audit_log: self.audit_path(),
            cache_dir: self.cache_dir(),
            jwks_min_refresh: 0,
            http_timeout: 2,
            top: String::new(),
            security: String::new(),
            cache: String::new(),
            tail: String::new(),
        }
    }

    /// Write the config file (root, 0600), replacing any earlier one.
    pub fn write_config(&self, text: &str) {
        self.write_file("etc/config.toml", text.as_bytes(), 0, 0, 0o600);
    }

    /// The private mount namespace that shows this sandbox's `etc/` at
    /// `/etc/openape` (for a [`Run`] of another program that execs escapes).
    pub fn config_ns(&self) -> Arc<ConfigNs> {
        Arc::clone(&self.ns)
    }

    /// A shell prefix that runs the rest of a command line in this
    /// sandbox's config namespace (the [`ConfigNs`] steps with unshare(1)
    /// and mount(8)), for programs started through a shell (tmux, script).
    /// Must be run as root.
    pub fn config_ns_shell(&self) -> String {
        let ns = self.path("ns");
        let etc = self.path("etc");
        let home = match &self.home {
            None => String::new(),
            Some((src, target)) => {
                let parent = target.parent().unwrap_or(Path::new("/home"));
                format!(
                    " && mkdir -m 0755 {ns}/hu && mkdir -m 0700 {ns}/hw && mount -t overlay overlay -o lowerdir={p},upperdir={ns}/hu,workdir={ns}/hw {p} && mkdir -p {t} && mount --bind {s} {t}",
                    ns = ns.display(),
                    p = parent.display(),
                    t = target.display(),
                    s = src.display()
                )
            }
        };
        format!(
            "unshare --mount --propagation private -- /bin/sh -c 'mount -t tmpfs -o mode=0755 tmpfs {ns} && mkdir -m 0755 {ns}/u && mkdir -m 0700 {ns}/w && mount -t overlay overlay -o lowerdir=/etc,upperdir={ns}/u,workdir={ns}/w /etc && mkdir -p /etc/openape && mount --bind {etc} /etc/openape{home} && exec \"$@\"' sh",
            ns = ns.display(),
            etc = etc.display()
        )
    }

    /// Give the test user a home of its own for this sandbox: `<root>/home`
    /// (owned by the user, 0755), shown at the user's passwd home in every
    /// config-namespace run (runs, [`Sandbox::config_ns_shell`]). The
    /// machine's home directories are not touched. Returns `<root>/home`.
    pub fn with_user_home(&mut self) -> PathBuf {
        let src = self.user_dir("home");
        let target = PathBuf::from(passwd_home(TEST_USER));
        self.ns = Arc::new(ConfigNs::with_home(
            &self.path("ns"),
            &self.path("etc"),
            &src,
            &target,
        ));
        self.home = Some((src.clone(), target));
        src
    }

    /// The path escapes reads its configuration from inside
    /// [`Sandbox::config_ns`] (the same file as [`Sandbox::config_path`]).
    pub fn default_config_path(&self) -> &'static str {
        "/etc/openape/config.toml"
    }

    /// `bin/escapes` as a [`Run`] (cwd = sandbox root; env is clean), in
    /// the sandbox's [`ConfigNs`] so the sandbox config is at the default
    /// path, unless `args` names `--config` (only real root may) or starts
    /// with `-h`, `-V`, `trust` or `update` (run as they are).
    pub fn escapes_run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        let names_config = args.iter().any(|a| {
            let b = a.as_ref().as_bytes();
            b == b"--config" || b.starts_with(b"--config=")
        });
        let mut r = Run::new(self.escapes()).cwd(&self.root);
        let mut rest = args;
        if let Some((first, tail)) = args.split_first()
            && first.as_ref().as_bytes() == b"verify"
        {
            r = r.arg("verify");
            rest = tail;
        }
        if !names_config && !args.first().is_some_and(|a| is_subcommand(a.as_ref())) {
            r = r.config_ns(self.config_ns());
        }
        r.args(rest)
    }

    /// Run `bin/escapes args` as the test user with exactly `env` (plus a
    /// sane PATH unless `env` sets one) and optional stdin.
    pub fn run_as_user<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Output {
        let mut r = self
            .escapes_run(args)
            .envs(env.iter().copied())
            .as_test_user();
        if let Some(s) = stdin {
            r = r.stdin(s);
        }
        r.output()
    }

    /// As [`Sandbox::run_as_user`], but as root.
    pub fn run_as_root<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Output {
        let mut r = self.escapes_run(args).envs(env.iter().copied());
        if let Some(s) = stdin {
            r = r.stdin(s);
        }
        r.output()
    }

    /// The raw audit log ("" when it does not exist).
    pub fn audit_text(&self) -> String {
        fs::read_to_string(self.audit_path()).unwrap_or_default()
    }

    /// Every audit line, parsed; panics if any line is not a JSON object.
    pub fn audit_lines(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l:?}"));
                assert!(v.is_object(), "audit line is not an object: {l:?}");
                v
            })
            .collect()
    }

    /// The last audit line; panics when the log is empty.
    pub fn last_audit(&self) -> Value {
        self.audit_lines()
            .pop()
            .unwrap_or_else(|| panic!("no audit line in {}", self.audit_path().display()))
    }

    /// A command that proves it ran: `touch <root>/marker-<name>` (touch is
    /// on secure_path; runs as the target user, root by default).
    pub fn marker_cmd(&self, name: &str) -> Vec<String> {
        vec![
            "touch".to_string(),
            self.marker_path(name).to_string_lossy().into_owned(),
        ]
    }

    pub fn marker_path(&self, name: &str) -> PathBuf {
        self.path(&format!("marker-{name}"))
    }

    pub fn marker_exists(&self, name: &str) -> bool {
        self.marker_path(name).exists()
    }

    pub fn remove_marker(&self, name: &str) {
        let _ = fs::remove_file(self.marker_path(name));
    }
}

fn is_subcommand(a: &OsStr) -> bool {
    matches!(
        a.as_bytes(),
        b"trust" | b"update" | b"--update" | b"-h" | b"--help" | b"-V" | b"--version"
    )
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("kept {}", self.root.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A small tmpfs mounted over `dir` (root's, 0700) and filled to the
/// last byte: the audit log's file system with no room left. Unmounted
/// (lazily) when dropped. `None` when it cannot be mounted here.
pub struct FullTmpfs(PathBuf);

impl FullTmpfs {
    pub fn mount(dir: &Path) -> Option<FullTmpfs> {
        let mounted = Command::new("/usr/bin/mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=64k,mode=0700,uid=0,gid=0",
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return None;
        }
        let guard = FullTmpfs(dir.to_path_buf());
        if let Ok(mut f) = File::create(dir.join("fill")) {
            let chunk = vec![b'x'; 4096];
            while f.write_all(&chunk).is_ok() {}
        }
        Some(guard)
    }
}

impl Drop for FullTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
