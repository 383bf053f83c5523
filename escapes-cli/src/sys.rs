//! Everything that touches process identity, descriptors, signals and the
//! terminal. The few `unsafe` calls of `escapes` live here, each with a
//! SAFETY line.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::termios::{self, LocalFlags, SetArg};
use nix::unistd::{Gid, Uid, User};
use pam_openape::invocation::UserSpec;
use pam_openape::{Denial, Kind, Step};

/// Descriptors 0, 1 and 2 open, on /dev/null where one was closed, so that
/// no file escapes opens later (the audit log, the config) becomes a
/// standard stream that messages are written to. glibc does this itself
/// for a set-user-ID start; this covers root starting escapes directly.
/// `false` when a closed one could not be filled (no /dev/null): escapes
/// then stops before opening anything, as std's start-up did.
pub fn open_standard_fds() -> bool {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
        {
            // The lowest free descriptor is `fd` (the ones below are open),
            // without close-on-exec: the command inherits it, as it would
            // have inherited the caller's stream.
            // SAFETY: open takes a NUL-terminated literal path and flags;
            // the descriptor is deliberately never closed.
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } != fd {
                return false;
            }
        }
    }
    true
}

/// Take the whole environment and clear it. Must run first thing in
/// `main`, before any thread exists. Entries that are not `NAME=value`
/// with a non-empty name (`=X`, `==`, no `=` at all) are dropped, never
/// passed on and never able to make this panic.
pub fn take_environment() -> Vec<(OsString, OsString)> {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !k.is_empty() && !k.as_encoded_bytes().contains(&b'='))
        .collect();
    // SAFETY: called at the start of main while the process has exactly
    // one thread, so no other thread can read the environment meanwhile;
    // clearenv takes no arguments.
    unsafe { libc::clearenv() };
    vars
}

/// The process state a caller hands a setuid program and that escapes
/// resets: umask, resource limits, signal dispositions and mask. What the
/// caller had is kept here and given back to the command where sudo does
/// (limits), or replaced by a safe rule (umask, signals).
pub struct CallerState {
    /// The caller's umask.
    pub umask: u32,
    /// The caller's limits, as (resource, soft, hard).
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
    /// The caller has a controlling terminal (whatever fds 0-2 are).
    pub has_ctty: bool,
}

/// Limits lifted for escapes itself, so that a caller's `ulimit` can never
/// stop a line from being logged or a consumed grant from running (sudo
/// lifts the same set). `RLIMIT_CORE` goes to 0 instead: no core file of
/// a privileged process.
const LIFTED: [libc::__rlimit_resource_t; 8] = [
    libc::RLIMIT_AS,
    libc::RLIMIT_CPU,
    libc::RLIMIT_DATA,
    libc::RLIMIT_FSIZE,
    libc::RLIMIT_NOFILE,
    libc::RLIMIT_NPROC,
    libc::RLIMIT_RSS,
    libc::RLIMIT_STACK,
];

fn get_limit(res: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the local we pass.
    (unsafe { libc::getrlimit(res, &mut lim) } == 0).then_some(lim)
}

fn set_limit(res: libc::__rlimit_resource_t, cur: libc::rlim_t, max: libc::rlim_t) -> bool {
    let lim = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit reads one rlimit from the local we pass; it is
    // async-signal-safe (a plain system call).
    unsafe { libc::setrlimit(res, &lim) == 0 }
}

/// Reset what the caller controls, first thing after the environment:
/// umask 077 for escapes' own files, limits lifted (see [`LIFTED`]), core
/// files off, every signal at its default except SIGPIPE and SIGXFSZ
/// (ignored, so a closed pipe or a file-size limit is an error, not a
/// silent death before a log line), an empty signal mask; and find out whether the caller has a controlling
/// terminal.
pub fn take_process_state() -> CallerState {
    // SAFETY: umask only swaps the process's file-creation mask.
    let umask = unsafe { libc::umask(0o077) };
    let mut limits = Vec::new();
    for res in LIFTED.into_iter().chain([libc::RLIMIT_CORE]) {
        if let Some(l) = get_limit(res) {
            limits.push((res, l.rlim_cur, l.rlim_max));
        }
    }
    for res in LIFTED {
        if set_limit(res, libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
            continue;
        }
        // RLIMIT_NOFILE cannot be unlimited: the kernel's ceiling.
        if res == libc::RLIMIT_NOFILE
            && let Some(n) = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|t| t.trim().parse::<libc::rlim_t>().ok())
            && set_limit(res, n, n)
        {
            continue;
        }
        // Without CAP_SYS_RESOURCE (some containers drop it even for
        // root) only the soft limit can rise, to the hard one. What is
        // still too low then fails closed later: nothing is consumed that
        // cannot be logged (the audit log checks the file-size limit).
        if let Some(l) = get_limit(res) {
            set_limit(res, l.rlim_max, l.rlim_max);
        }
    }
    if let Some(l) = get_limit(libc::RLIMIT_CORE) {
        set_limit(libc::RLIMIT_CORE, 0, l.rlim_max);
    }
    reset_signals(libc::SIG_IGN);
    clear_interval_timers();
    let has_ctty = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/tty")
        .is_ok();
    CallerState {
        umask,
        limits,
        has_ctty,
    }
}

/// Disarm the three interval timers. They survive exec, so a caller's
/// ITIMER_REAL (or VIRTUAL, PROF) would deliver SIGALRM (SIGVTALRM,
/// SIGPROF), whose default kills, at a moment the caller chose: between
/// the consume and the audit line, say. The command gets none either
/// (sudo's command starts without the caller's timers too).
fn clear_interval_timers() {
    let zero = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        // SAFETY: setitimer reads one itimerval from a live local and
        // writes nothing back (null old value).
        unsafe { libc::setitimer(which, &zero, std::ptr::null_mut()) };
    }
}

/// The kernel's `struct sigaction` for rt_sigaction(2) on Linux.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// `sig` to SIG_DFL through rt_sigaction(2) itself.
fn kernel_default(sig: libc::c_int) {
    let act = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction reads one kernel sigaction from a live local of
    // the kernel's layout (sigset size 8); SIG_DFL installs no handler.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Every catchable signal to its default action (SIGPIPE and SIGXFSZ to
/// `quiet`), and an empty signal mask. Only system calls: safe after fork.
fn reset_signals(quiet: libc::sighandler_t) {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let handler = if sig == libc::SIGPIPE || sig == libc::SIGXFSZ {
            quiet
        } else {
            libc::SIG_DFL
        };
        // SAFETY: installs SIG_DFL or SIG_IGN (no Rust handler runs).
        if unsafe { libc::signal(sig, handler) } == libc::SIG_ERR {
            // The C library reserves a few real-time signals for itself
            // and refuses them; a caller can still have them ignored, so
            // they are reset with the system call directly.
            kernel_default(sig);
        }
    }
    // SAFETY: sigemptyset fills a local set; sigprocmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Hold every signal that can be held, except the kernel's fault signals
/// (a fault is a crash either way). From the moment a grant may be spent
/// until the line that accounts for it is written: once escapes is the
/// target, the caller's `kill` cannot reach it, but a terminal's signals
/// need no permission (Ctrl-C, the quit key, Ctrl-Z, a hang-up), and would
/// otherwise end escapes after the IdP consumed the grant and before any
/// line. Whatever arrives meanwhile stays pending: [`pending_interrupt`]
/// finds it before the consume, and [`release_signals`] delivers it after
/// the line. Calling it again changes nothing.
pub fn hold_signals() {
    // The mask before is empty (take_process_state); release_signals
    // empties it again.
    let _ = pam_openape::request::privsep::hold_all_but_faults();
}

/// Empty the mask again (what [`take_process_state`] set): a signal held
/// by [`hold_signals`] is delivered now, at its default action.
pub fn release_signals() {
    // SAFETY: sigemptyset fills a local set; sigprocmask reads it.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// A held signal that asks escapes to stop (SIGINT, SIGTERM, SIGHUP,
/// SIGQUIT), if one is pending.
pub fn pending_interrupt() -> Option<i32> {
    // SAFETY: sigpending fills a zeroed local set, sigismember reads it.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut pending) != 0 {
            return None;
        }
        [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]
            .into_iter()
            .find(|sig| libc::sigismember(&pending, *sig) == 1)
    }
}

/// One line to syslog (authpriv), tagged `escapes[pid]`, with the real
/// uid. The text is sanitised and passed to a constant `%s` format, never
/// used as the format. Never given a token.
fn syslog(priority: libc::c_int, msg: &str) {
    let line = format!(
        "uid {}: {}",
        Uid::current(),
        pam_openape::error::sanitize(msg, 900)
    );
    let Ok(text) = CString::new(line) else { return };
    // SAFETY: openlog keeps the pointer to a 'static C string literal; the
    // format is a constant "%s" with exactly one NUL-terminated argument
    // that outlives the call.
    unsafe {
        libc::openlog(c"escapes".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV);
        libc::syslog(libc::LOG_AUTHPRIV | priority, c"%s".as_ptr(), text.as_ptr());
    }
}

/// A refusal, at warning level.
pub fn syslog_refusal(msg: &str) {
    syslog(libc::LOG_WARNING, msg);
}

/// A change to the trust root or the binary, at notice level.
pub fn syslog_change(msg: &str) {
    syslog(libc::LOG_NOTICE, msg);
}

/// The invoking user, from the real uid (never from the environment).
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

pub fn caller() -> Result<Caller, String> {
    let uid = Uid::current();
    let user = User::from_uid(uid)
        .map_err(|e| format!("cannot look up your user id {uid}: {e}"))?
        .ok_or_else(|| format!("your user id {uid} has no passwd entry"))?;
    Ok(Caller {
        uid: uid.as_raw(),
        gid: Gid::current().as_raw(),
        name: user.name,
    })
}

/// For subcommands that change the trust root or the binary: the REAL uid
/// must be 0 (a user running the setuid binary has euid 0 but must never
/// choose who may approve root, nor replace the binary). `Err` is the uid
/// that asked, for the caller's message.
pub fn require_real_root() -> Result<(), Uid> {
    let uid = Uid::current();
    if uid.is_root() && Uid::effective().is_root() {
        Ok(())
    } else {
        Err(uid)
    }
}

pub fn euid_is_root() -> bool {
    Uid::effective().is_root()
}

pub fn user_by_uid(uid: u32) -> Result<Option<User>, String> {
    User::from_uid(Uid::from_raw(uid)).map_err(|e| format!("cannot look up user id {uid}: {e}"))
}

/// The user a command may run as, by name or by `#uid`: only an account
/// the name names without doubt ([`pam_openape::users`]). `Err` is the
/// refusal for the audit line (exit 1: the user database is the issue).
pub fn target_by(spec: &UserSpec, asked: &str) -> Result<User, Denial> {
    lookup_target(spec).map_err(|e| target_denial(&e, asked))
}

/// [`target_by`] with the reason kept apart, for callers that word one
/// of them themselves.
pub fn lookup_target(spec: &UserSpec) -> Result<User, pam_openape::users::TargetError> {
    match spec {
        UserSpec::Name(n) => pam_openape::users::by_name(n),
        UserSpec::Uid(u) => pam_openape::users::by_uid(*u),
    }
}

/// The refusal for a target that cannot be used (`asked` shown escaped).
pub fn target_denial(e: &pam_openape::users::TargetError, asked: &str) -> Denial {
    Denial::new(Step::TargetUser, Kind::Io, e.message(asked))
}

/// The groups `user` belongs to (primary first).
pub fn groups_of(user: &User) -> Result<Vec<Gid>, String> {
    let name =
        CString::new(user.name.as_bytes()).map_err(|_| "user name contains NUL".to_string())?;
    nix::unistd::getgrouplist(&name, user.gid)
        .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))
}

pub fn group_by_name(name: &str) -> Result<Option<Gid>, String> {
    if let Some(num) = name.strip_prefix('#') {
        return num
            .parse::<u32>()
            .ok()
            .filter(|n| *n != u32::MAX)
            .map(|n| Some(Gid::from_raw(n)))
            .ok_or_else(|| format!("invalid group id {name:?}"));
    }
    nix::unistd::Group::from_name(name)
        .map(|g| g.map(|g| g.gid))
        .map_err(|e| format!("cannot look up group {name}: {e}"))
}

/// Become `user` for good: supplementary groups from the group database
/// (none of the caller's survive), then gid, then uid (real, effective and
/// saved), then check that there is no way back.
pub fn become_user(user: &User, primary: Gid) -> Result<(), String> {
    let name =
        CString::new(user.name.as_bytes()).map_err(|_| "user name contains NUL".to_string())?;
    nix::unistd::initgroups(&name, primary)
        .map_err(|e| format!("initgroups({}): {e}", user.name))?;
    nix::unistd::setresgid(primary, primary, primary)
        .map_err(|e| format!("setresgid({primary}): {e}"))?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid)
        .map_err(|e| format!("setresuid({}): {e}", user.uid))?;
    let ids = nix::unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = nix::unistd::getresgid().map_err(|e| format!("getresgid: {e}"))?;
    if ids.real != user.uid || ids.effective != user.uid || ids.saved != user.uid {
        return Err("user id did not change completely".into());
    }
    if gids.real != primary || gids.effective != primary || gids.saved != primary {
        return Err("group id did not change completely".into());
    }
    if !user.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("could regain root after dropping privileges".into());
    }
    Ok(())
}

/// Give this process (and so the command) a new, empty session keyring,
/// as `pam_keyinit` does in sudo's and su's session stacks: the caller's
/// session keyring survives a setuid exec, and a command sharing it would
/// leave the keys it adds (`e4crypt add_key`, `keyctl add ... @s`) to the
/// caller and find keys the caller planted. Call after [`become_user`], so
/// the keyring belongs to the target. A kernel without keyrings (`ENOSYS`)
/// or a container filter that refuses `keyctl` (`EPERM`) leaves nothing to
/// share; any other failure is an error.
pub fn new_session_keyring() -> Result<(), String> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) reads no memory of
    // ours (a NULL name asks for an anonymous keyring) and only replaces
    // this process's session keyring.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc >= 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::ENOSYS | nix::errno::Errno::EPERM => Ok(()),
        e => Err(format!(
            "cannot give the command its own session keyring: {e}"
        )),
    }
}

/// Mark every descriptor above 2 close-on-exec, so the command inherits
/// only stdin, stdout and stderr (our own error output still works if exec
/// fails).
pub fn cloexec_from_3() -> Result<(), String> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process; the
    // arguments are plain integers and no memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Older kernels: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list descriptors: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(F_SETFD) on an integer descriptor touches no memory;
        // a descriptor closed meanwhile just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Run `f` with the caller's effective user and group ids (the
/// supplementary groups are still the caller's), so a file is opened with
/// exactly the caller's rights, never root's. Changing only the
/// file-system ids (setfsuid) is not enough: it drops the file-system
/// capabilities but keeps the others, and CAP_SYS_PTRACE lets a path walk
/// through `/proc/PID/cwd` or `/proc/PID/root` of any process, past
/// directories the caller may not enter. With a non-root effective uid the
/// effective capability set is empty; the saved uid 0 brings root back.
/// `None` when the ids cannot be changed there and back (then `f` did not
/// run, or its result is not to be trusted).
pub fn as_caller_fs<T>(caller: &Caller, f: impl FnOnce() -> T) -> Option<T> {
    use nix::unistd::{getresgid, getresuid, setresgid, setresuid};
    let uids = getresuid().ok()?;
    let gids = getresgid().ok()?;
    // Group first, while still root.
    setresgid(gids.real, Gid::from_raw(caller.gid), gids.saved).ok()?;
    if setresuid(uids.real, Uid::from_raw(caller.uid), uids.saved).is_err() {
        let _ = setresgid(gids.real, gids.effective, gids.saved);
        return None;
    }
    let out = f();
    let back = setresuid(uids.real, uids.effective, uids.saved).is_ok()
        && setresgid(gids.real, gids.effective, gids.saved).is_ok()
        && Uid::effective() == uids.effective
        && Gid::effective() == gids.effective;
    back.then_some(out)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Prompt on the controlling terminal with echo off and read one line of
/// at most `max` bytes. Echo is restored on every path, including Ctrl-C
/// (the read is interrupted, the terminal restored, then `Err`).
pub fn prompt_no_echo(prompt: &str, max: usize) -> Result<String, String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| "no terminal to prompt on".to_string())?;
    let saved = termios::tcgetattr(tty.as_fd())
        .map_err(|_| "cannot read the terminal settings".to_string())?;
    let mut quiet = saved.clone();
    quiet
        .local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ECHONL);
    quiet
        .local_flags
        .insert(LocalFlags::ICANON | LocalFlags::ISIG);

    let handler = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let mut old = Vec::new();
    for sig in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no SA_RESTART, so the read below returns EINTR.
        if let Ok(prev) = unsafe { sigaction(sig, &handler) } {
            old.push((sig, prev));
        }
    }

    let _ = (&tty).write_all_str(prompt);
    let result = termios::tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &quiet)
        .map_err(|_| "cannot turn off echo".to_string())
        .and_then(|()| read_line(&tty, max));
    let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &saved);
    let _ = (&tty).write_all_str("\n");
    for (sig, prev) in old {
        // SAFETY: restores the disposition that was in place before.
        let _ = unsafe { sigaction(sig, &prev) };
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    result
}

trait WriteStr {
    fn write_all_str(self, s: &str) -> std::io::Result<()>;
}

impl WriteStr for &File {
    fn write_all_str(self, s: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = self;
        f.write_all(s.as_bytes())
    }
}

fn read_line(mut tty: &File, max: usize) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        match tty.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if line.len() >= max {
                    return Err("input is too long".into());
                }
                line.push(byte[0]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                return Err("interrupted".into());
            }
            Err(_) => return Err("cannot read from the terminal".into()),
        }
    }
    String::from_utf8(line).map_err(|_| "input is not UTF-8".into())
}

/// A program, argv and environment ready for execve (built before any
/// fork, so the child only calls async-signal-safe functions).
pub struct Prepared {
    path: CString,
    args: Vec<CString>,
    envs: Vec<CString>,
    /// The command's umask: the caller's with the configured bits added.
    umask: libc::mode_t,
    /// The caller's limits, given back to the command (as sudo does), but
    /// no core file ([`command_limits`]).
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
}

pub fn prepare(
    path: &std::path::Path,
    argv: &[OsString],
    env: &[(OsString, OsString)],
    caller: &CallerState,
    umask: u32,
) -> Result<Prepared, nix::errno::Errno> {
    let to_c = |v: Vec<u8>| CString::new(v).map_err(|_| nix::errno::Errno::EINVAL);
    let path = to_c(path.as_os_str().to_owned().into_vec())?;
    let args = argv
        .iter()
        .map(|a| to_c(a.clone().into_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let envs = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone().into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_encoded_bytes());
            to_c(kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        path,
        args,
        envs,
        umask: (caller.umask | umask) & 0o777,
        limits: command_limits(&caller.limits),
    })
}

/// The command's limits: the caller's, except that no core file is
/// written (soft and hard 0, sudo's default `rlimit_core`): a root
/// command's core holds what it read as root, and the caller's `ulimit -c`
/// must not choose that one is written.
fn command_limits(
    caller: &[(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)],
) -> Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)> {
    caller
        .iter()
        .map(|&(res, cur, max)| {
            if res == libc::RLIMIT_CORE {
                (res, 0, 0)
            } else {
                (res, cur, max)
            }
        })
        .collect()
}

/// Can the kernel copy this exec's strings? Each argument or variable
/// must be shorter than `MAX_ARG_STRLEN`, and filename, argv, environment
/// and their pointers must fit the limit the kernel derives from the stack
/// limit in force at the exec (the caller's, given back to the command):
/// a quarter of it, at most 6 MiB, at least 128 KiB (`bprm_stack_limits`
/// in fs/exec.c). Some room is left for a `#!` interpreter line, which the
/// kernel adds. `Err(E2BIG)` when it would not fit.
pub fn exec_fits(p: &Prepared) -> Result<(), nix::errno::Errno> {
    const MAX_ARG_STRLEN: usize = 32 * 4096;
    const ARG_MAX: u64 = 128 * 1024;
    const STK_LIM_3_4: u64 = 6 * 1024 * 1024;
    const SHEBANG_ROOM: u64 = 4096;
    let strings = || std::iter::once(&p.path).chain(&p.args).chain(&p.envs);
    if strings().any(|s| s.as_bytes_with_nul().len() > MAX_ARG_STRLEN) {
        return Err(nix::errno::Errno::E2BIG);
    }
    let stack = p
        .limits
        .iter()
        .find(|&&(res, _, _)| res == libc::RLIMIT_STACK)
        .map_or(0, |&(_, cur, _)| cur);
    let limit = (stack / 4).clamp(ARG_MAX, STK_LIM_3_4);
    let pointers = (p.args.len().max(1) + p.envs.len()) as u64 * 8;
    let bytes: u64 = strings().map(|s| s.as_bytes_with_nul().len() as u64).sum();
    if pointers + bytes + SHEBANG_ROOM + p.path.as_bytes().len() as u64 > limit {
        return Err(nix::errno::Errno::E2BIG);
    }
    Ok(())
}

/// Replace the process image. Returns only on failure. Right before the
/// exec the command gets its process state: the umask rule, the caller's
/// limits, default signal dispositions and an empty mask. Only system
/// calls: safe in a forked child.
pub fn exec(p: &Prepared) -> nix::errno::Errno {
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe { libc::umask(p.umask) };
    for &(res, cur, max) in &p.limits {
        set_limit(res, cur, max);
    }
    reset_signals(libc::SIG_DFL);
    match nix::unistd::execve(&p.path, &p.args, &p.envs) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Is any of stdin, stdout, stderr a terminal?
pub fn stdio_is_tty() -> bool {
    [
        std::io::stdin().as_fd(),
        std::io::stdout().as_fd(),
        std::io::stderr().as_fd(),
    ]
    .into_iter()
    .any(|fd| nix::unistd::isatty(fd).unwrap_or(false))
}

static FORWARD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    FORWARD.store(sig, Ordering::SeqCst);
}

/// Run the program in a new session, without a controlling terminal, and
/// wait for it: a command running as a less privileged user must not be
/// able to push keystrokes into the caller's terminal with TIOCSTI (the
/// CVE-2005-4890 / CVE-2023-28339 class). The terminal stays usable through
/// the inherited descriptors. Signals that reach this process (Ctrl-C at
/// the terminal) are forwarded to the child, the only process it signals.
/// Returns the exit code to use: the child's, or 128 + its signal; or the
/// error of the child's exec, which the child reports on a close-on-exec
/// pipe (end of file there means the exec happened), so a failed exec is
/// logged like one in place.
pub fn run_detached(p: &Prepared) -> Result<i32, nix::errno::Errno> {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork, setsid};
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: escapes is single-threaded here; the child only calls setsid,
    // the system calls of `exec`, write and _exit, all async-signal-safe,
    // with buffers built before.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(report_r);
            let _ = setsid();
            let e = exec(p);
            let _ = nix::unistd::write(&report_w, &(e as i32).to_ne_bytes());
            // SAFETY: _exit is async-signal-safe and ends the child at once.
            unsafe {
                libc::_exit(if e == nix::errno::Errno::ENOENT {
                    127
                } else {
                    126
                })
            }
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            let handler = SigAction::new(
                SigHandler::Handler(remember_signal),
                SaFlags::empty(),
                SigSet::empty(),
            );
            for sig in [
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGQUIT,
            ] {
                // SAFETY: the handler only stores to an atomic.
                let _ = unsafe { sigaction(sig, &handler) };
            }
            let forward = || {
                let sig = FORWARD.swap(0, Ordering::SeqCst);
                if let Ok(sig) = Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(child, sig);
                }
            };
            let mut report = [0u8; 4];
            let mut got = 0;
            while got < report.len() {
                match nix::unistd::read(&report_r, &mut report[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(nix::errno::Errno::EINTR) => forward(),
                    Err(_) => break,
                }
            }
            drop(report_r);
            let exec_error = (got == report.len())
                .then(|| nix::errno::Errno::from_raw(i32::from_ne_bytes(report)));
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => {
                        return exec_error.map_or(Ok(code), Err);
                    }
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => forward(),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(args: &[Vec<u8>], envs: &[Vec<u8>], stack: libc::rlim_t) -> Prepared {
        let c = |v: &Vec<u8>| CString::new(v.clone()).unwrap_or_default();
        Prepared {
            path: CString::new("/usr/bin/true").unwrap_or_default(),
            args: args.iter().map(c).collect(),
            envs: envs.iter().map(c).collect(),
            umask: 0o022,
            limits: vec![(libc::RLIMIT_STACK, stack, stack)],
        }
    }

    #[test]
    fn exec_size_follows_the_kernels_limits() {
        let eight_mib = 8 << 20;
        // Small: fits.
        assert!(exec_fits(&prepared(&[b"true".to_vec()], &[], eight_mib)).is_ok());
        // One string of 128 KiB (with its NUL over MAX_ARG_STRLEN): never.
        let long = vec![b'x'; 32 * 4096];
        assert!(exec_fits(&prepared(&[long], &[], libc::RLIM_INFINITY)).is_err());
        // 1.9 MiB of environment fits 8 MiB of stack (2 MiB), 2.1 MiB not.
        let var = |n: usize| {
            (0..n)
                .map(|i| format!("LC_{i}={}", "v".repeat(4000)).into_bytes())
                .collect::<Vec<_>>()
        };
        assert!(exec_fits(&prepared(&[b"true".to_vec()], &var(480), eight_mib)).is_ok());
        assert!(exec_fits(&prepared(&[b"true".to_vec()], &var(530), eight_mib)).is_err());
        // A tiny stack limit still leaves the kernel's 128 KiB floor.
        assert!(exec_fits(&prepared(&[b"true".to_vec()], &var(30), 4096)).is_ok());
        assert!(exec_fits(&prepared(&[b"true".to_vec()], &var(40), 4096)).is_err());
        // Unlimited stack: at most 6 MiB.
        assert!(exec_fits(&prepared(&[], &var(1500), libc::RLIM_INFINITY)).is_ok());
        assert!(exec_fits(&prepared(&[], &var(1600), libc::RLIM_INFINITY)).is_err());
    }
}
