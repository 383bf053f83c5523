//! Run a piece of work as the caller, in a forked child, and talk to it
//! only through a pipe.
//!
//! The child becomes the caller for good (the caller's groups it still
//! holds, setresgid, setresuid, then it checks there is no way back) before the work starts,
//! so every file it opens and every socket it makes has exactly the
//! caller's rights. It is not dumpable, notices when its parent is gone
//! (the control pipe closes: the work can still clean up, e.g. cancel a
//! request at the IdP, and must end within its own bounded time), keeps only
//! its two pipe ends and /dev/null on 0–2, ignores the terminal's signals
//! (the parent decides when to stop it) and keeps no signal handler of
//! the host (every other signal is at its default), and always ends with
//! `_exit`:
//! it never returns into the caller's code, no panic unwinds out of it,
//! and it starts no thread.
//!
//! The privileged side reads short lines (`TAG TEXT`), each at most
//! [`MAX_LINE`] bytes and [`MAX_TOTAL`] in all; anything else ends the
//! child. The parent can ask the child to stop by closing or writing to
//! the control pipe, and kills it outright when it is done with it
//! (dropping [`Child`] kills and reaps).
//!
//! Used by `escapes` request mode and meant for the PAM module: fork is
//! safe there only because the child runs nothing but system calls, the
//! allocator (glibc's malloc is fork-aware) and code that takes no lock
//! another thread of the host could hold.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::error::{Denial, Kind, Step};

/// Longest line from the child (a grant JWT plus its tag).
pub const MAX_LINE: usize = crate::token::MAX_TOKEN_LEN + 64;
/// Most bytes the parent reads from one child.
pub const MAX_TOTAL: usize = 64 * 1024;

/// Who the child becomes.
#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

/// The child's end: send lines up, watch for a stop from the parent.
pub struct Channel {
    up: OwnedFd,
    control: OwnedFd,
}

impl Channel {
    /// Send one line `TAG TEXT`. Control characters in `text` are
    /// replaced, and a line longer than [`MAX_LINE`] is not sent.
    pub fn send(&mut self, tag: &str, text: &str) -> bool {
        let clean: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let line = if clean.is_empty() {
            format!("{tag}\n")
        } else {
            format!("{tag} {clean}\n")
        };
        if line.len() > MAX_LINE {
            return false;
        }
        write_all(self.up.as_raw_fd(), line.as_bytes())
    }

    /// Sleep up to `d`; `true` as soon as the parent asks the child to
    /// stop (a byte on the control pipe, or the pipe closed).
    pub fn stop_requested(&self, d: Duration) -> bool {
        let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: self.control.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let start = Instant::now();
        loop {
            let left =
                ms.saturating_sub(i32::try_from(start.elapsed().as_millis()).unwrap_or(i32::MAX));
            // SAFETY: poll reads and writes one pollfd that lives on this
            // stack frame for the whole call.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.max(0)) };
            if rc > 0 {
                return true;
            }
            if rc == 0 || left <= 0 {
                return false;
            }
            // EINTR: poll again for what is left.
        }
    }
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: write reads `buf.len()` bytes from a live slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return false;
        }
        buf = buf.get(n..).unwrap_or_default();
    }
    true
}

/// Block every signal that can be blocked except the kernel's fault
/// signals (a fault is a crash either way) for the calling thread, and
/// return the mask it had (`None` if it could not be changed). escapes
/// holds them from just before a consume until its line; the PAM module
/// around its consume and audit lines (`pam::ffi::Critical`).
pub fn hold_all_but_faults() -> Option<libc::sigset_t> {
    // SAFETY: sigset operations on locals of this frame; pthread_sigmask
    // changes only the calling thread's mask and writes the old one into
    // a local.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut all, sig);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        (libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0).then_some(old)
    }
}

/// [`write_all`] with SIGPIPE held for this thread: if the child is gone
/// (its end of the pipe closed), the write fails with EPIPE and the signal
/// it raised is taken back, so the host (su keeps the default SIGPIPE) is
/// never killed by it. A SIGPIPE that was pending before stays pending.
fn write_without_sigpipe(fd: RawFd, buf: &[u8]) -> bool {
    // SAFETY: sigset operations on locals of this frame; pthread_sigmask
    // changes only this thread's mask and is restored before returning;
    // sigtimedwait with a zero timeout takes at most the one SIGPIPE that
    // our own write raised (the kernel directs it at this thread).
    unsafe {
        let mut pipe_only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut old) != 0 {
            return false;
        }
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pending);
        libc::sigpending(&mut pending);
        let was_pending = libc::sigismember(&pending, libc::SIGPIPE) == 1;
        let ok = write_all(fd, buf);
        if !ok && !was_pending {
            let now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &now) < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        ok
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Denial> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Denial::new(
            Step::Request,
            Kind::Io,
            format!("cannot create a pipe: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: both descriptors were just created and are owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the parent reads next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// One line: tag and text.
    Line(String, String),
    /// Nothing within the wait (or the wait was interrupted by a signal).
    Idle,
    /// The child closed its end (it exited or died).
    Closed,
}

/// The parent's handle. Dropping it kills and reaps the child.
pub struct Child {
    pid: libc::pid_t,
    /// The child as a pidfd (Linux 5.3 and later): the kill and the wait
    /// reach this very process, never one that got its pid after the
    /// kernel reaped the child (a host that ignores SIGCHLD, as su does
    /// with a caller's SIG_IGN). `None`: by pid (older kernels).
    pidfd: Option<OwnedFd>,
    down: Option<OwnedFd>,
    up: OwnedFd,
    buf: Vec<u8>,
    total: usize,
    closed: bool,
    reaped: bool,
}

impl Child {
    /// Ask the child to stop what it is doing (it decides how: request
    /// mode cancels the grant request). It may still send lines.
    pub fn request_stop(&mut self) {
        if let Some(fd) = self.down.take() {
            let _ = write_without_sigpipe(fd.as_raw_fd(), b"x");
            drop(fd);
        }
    }

    /// The next line, waiting at most `wait`. A signal ends the wait
    /// early with [`Next::Idle`]. A line that is too long, too much data
    /// or bytes that are not UTF-8: `Err`, and the child is killed.
    pub fn next(&mut self, wait: Duration) -> Result<Next, Denial> {
        let bad = |what: &str| {
            Denial::new(
                Step::Request,
                Kind::Unavailable,
                format!("request helper: {what}"),
            )
        };
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = std::str::from_utf8(line.get(..pos).unwrap_or_default())
                    .map_err(|_| {
                        self.kill();
                        bad("sent bytes that are not UTF-8")
                    })?
                    .to_string();
                let (tag, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
                return Ok(Next::Line(tag.to_string(), rest.to_string()));
            }
            if self.buf.len() > MAX_LINE {
                self.kill();
                return Err(bad("sent a line that is too long"));
            }
            if self.closed {
                return Ok(Next::Closed);
            }
            let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd {
                fd: self.up.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd living on this stack frame.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc <= 0 {
                return Ok(Next::Idle);
            }
            let mut chunk = [0u8; 4096];
            // SAFETY: read writes at most `chunk.len()` bytes into it.
            let n =
                unsafe { libc::read(self.up.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    return Ok(Next::Idle);
                }
                self.closed = true;
                continue;
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                self.closed = true;
                continue;
            }
            self.total = self.total.saturating_add(n);
            if self.total > MAX_TOTAL {
                self.kill();
                return Err(bad("sent too much"));
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Kill the child (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        match &self.pidfd {
            Some(fd) => {
                // SAFETY: pidfd_send_signal on our own pidfd, with no
                // siginfo; it fails (ESRCH) once the child is gone.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0 as libc::c_uint,
                    )
                };
            }
            None => {
                // Without a pidfd: a child the kernel reaped already
                // (SIGCHLD ignored) is not ours any more; do not signal
                // its pid. What is left is the instant between this look
                // and the kill.
                if self.wait(libc::WNOHANG) == Wait::Gone {
                    self.reaped = true;
                    self.closed = true;
                    return;
                }
                // SAFETY: kill on our own child's pid, still unreaped a
                // moment ago (see above).
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
        while self.wait(0) == Wait::Interrupted {}
        self.reaped = true;
        self.closed = true;
    }

    /// Reap the child if it has exited (`options` 0: wait until it has).
    fn wait(&self, options: libc::c_int) -> Wait {
        let rc = match &self.pidfd {
            Some(fd) => {
                // SAFETY: a zeroed siginfo_t on this stack frame, which
                // waitid fills; the id is our own pidfd.
                unsafe {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let rc = libc::waitid(
                        libc::P_PIDFD,
                        fd.as_raw_fd() as libc::id_t,
                        &mut info,
                        libc::WEXITED | options,
                    );
                    if rc == 0 && info.si_pid() == 0 {
                        return Wait::Running;
                    }
                    rc
                }
            }
            None => {
                let mut status = 0;
                // SAFETY: waitpid on our own child's pid (see `kill`).
                let rc = unsafe { libc::waitpid(self.pid, &mut status, options) };
                if rc == 0 {
                    return Wait::Running;
                }
                rc
            }
        };
        if rc < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            return Wait::Interrupted;
        }
        // Reaped now, or gone already (ECHILD: the kernel reaped it).
        Wait::Gone
    }

    /// Wait up to `wait` for the child to exit by itself; kill it then.
    pub fn finish(&mut self, wait: Duration) {
        let start = Instant::now();
        while !self.reaped && start.elapsed() < wait {
            if self.wait(libc::WNOHANG) == Wait::Gone {
                self.reaped = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Running,
    Interrupted,
    Gone,
}

/// A pidfd for `pid`, our child just forked, if the kernel has them. If
/// the child is already gone and its pid taken by a process that is not
/// ours, there is nothing to stop: `Err(())`.
fn child_pidfd(pid: libc::pid_t) -> Result<Option<OwnedFd>, ()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    let Ok(fd) = libc::c_int::try_from(fd) else {
        return Ok(None);
    };
    if fd < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            // Gone already (the kernel reaped it) and the pid unused.
            Some(libc::ESRCH) => Err(()),
            _ => Ok(None),
        };
    }
    // SAFETY: a descriptor just returned to us and owned only here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed siginfo_t on this stack frame, which waitid fills;
    // WNOWAIT leaves the child as it is.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PIDFD,
            fd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc == 0 {
        return Ok(Some(fd));
    }
    match std::io::Error::last_os_error().raw_os_error() {
        // Not our child: ours is gone and its pid taken.
        Some(libc::ECHILD) => Err(()),
        // waitid cannot take a pidfd (Linux 5.3): by pid, as without one.
        _ => Ok(None),
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Become `caller` for good. Runs in the child, as root (or as the caller
/// already, when the caller is root); `escapes enroll` uses it too.
pub fn become_caller(c: &Caller) -> Result<(), String> {
    use nix::unistd::{Gid, Uid};
    let name = CString::new(c.name.as_bytes()).map_err(|_| "user name contains NUL".to_string())?;
    let gid = Gid::from_raw(c.gid);
    let uid = Uid::from_raw(c.uid);
    // Supplementary groups: those the group database lists for the
    // caller AND the calling process still holds. A process that dropped
    // a group (setpriv --clear-groups, a service's SupplementaryGroups=)
    // does not get it back here, and a host that authenticates holding
    // other groups passes on none the caller is not a member of.
    let listed = nix::unistd::getgrouplist(&name, gid).map_err(|e| format!("getgrouplist: {e}"))?;
    let held = nix::unistd::getgroups().map_err(|e| format!("getgroups: {e}"))?;
    let groups: Vec<Gid> = listed.into_iter().filter(|g| held.contains(g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    let ids = nix::unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let gids = nix::unistd::getresgid().map_err(|e| format!("getresgid: {e}"))?;
    if ids.real != uid || ids.effective != uid || ids.saved != uid {
        return Err("user id did not change completely".into());
    }
    if gids.real != gid || gids.effective != gid || gids.saved != gid {
        return Err("group id did not change completely".into());
    }
    if c.uid != 0 {
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
            || nix::unistd::seteuid(Uid::from_raw(0)).is_ok()
        {
            return Err("could regain root after dropping privileges".into());
        }
        if nix::unistd::setgroups(&[Gid::from_raw(0)]).is_ok() {
            return Err("could change groups after dropping privileges".into());
        }
    }
    Ok(())
}

/// Close every descriptor above 2 except `keep`.
fn close_others(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut from: libc::c_uint = 3;
    for fd in keep.into_iter().filter(|fd| *fd >= 3) {
        let fd = fd as libc::c_uint;
        if fd > from {
            // SAFETY: close_range only closes descriptors of this process.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0 as libc::c_uint) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
}

/// The child's set-up before any work: signals, identity, descriptors.
fn child_setup(caller: &Caller, parent: libc::pid_t, keep: &[RawFd]) -> Result<(), String> {
    // SAFETY: signal dispositions and the mask of this (single-threaded)
    // child; SIG_IGN and SIG_DFL are not handlers that run code.
    unsafe {
        // No handler of the host survives (sudo has its own for SIGUSR1,
        // SIGUSR2, ... while it authenticates): the caller may signal this
        // child and must not run the host's code in it. Signals the C
        // library reserves refuse the change; that is fine.
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    become_caller(caller)?;
    // Changing credentials already cleared these; set them for certain.
    // SAFETY: prctl with integer arguments on this process only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        if libc::getppid() != parent {
            return Err("the parent is gone".into());
        }
    }
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this child.
        unsafe { libc::dup2(devnull.as_raw_fd(), fd) };
    }
    drop(devnull);
    close_others(keep);
    let _ = std::env::set_current_dir("/");
    Ok(())
}

/// In the child: end the process (SIGALRM, at its default action here)
/// after `d`, whatever the work is doing.
pub fn end_after(d: Duration) {
    let secs = u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX);
    // SAFETY: alarm only arms a timer of this process.
    unsafe { libc::alarm(secs) };
}

/// Fork a child that becomes `caller` and runs `work`, then `_exit`s with
/// its result (0–255; 70 if `work` panicked or set-up failed, after a
/// `fail` line). Must be called from a single-threaded process or a place
/// where no other thread holds a lock `work` needs.
pub fn spawn(caller: &Caller, work: impl FnOnce(&mut Channel) -> i32) -> Result<Child, Denial> {
    let (up_r, up_w) = pipe()?;
    let (down_r, down_w) = pipe()?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork; the child below never returns into the caller's code:
    // it runs `work` under catch_unwind and ends with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Denial::new(
            Step::Request,
            Kind::Io,
            format!("cannot fork: {}", std::io::Error::last_os_error()),
        ));
    }
    if pid == 0 {
        drop(up_r);
        drop(down_w);
        let keep = [up_w.as_raw_fd(), down_r.as_raw_fd()];
        let mut chan = Channel {
            up: up_w,
            control: down_r,
        };
        let code = catch_unwind(AssertUnwindSafe(|| {
            match child_setup(caller, parent, &keep) {
                Ok(()) => work(&mut chan),
                Err(e) => {
                    chan.send("fail", &format!("io cannot become the caller: {e}"));
                    70
                }
            }
        }))
        .unwrap_or(70);
        // SAFETY: _exit ends the child at once, without running the
        // parent's atexit handlers or destructors.
        unsafe { libc::_exit(code.clamp(0, 255)) }
    }
    drop(up_w);
    drop(down_r);
    let (pidfd, reaped) = match child_pidfd(pid) {
        Ok(fd) => (fd, false),
        Err(()) => (None, true),
    };
    Ok(Child {
        pid,
        pidfd,
        down: Some(down_w),
        up: up_r,
        buf: Vec::new(),
        total: 0,
        closed: false,
        reaped,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn me() -> Caller {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid).unwrap().unwrap();
        Caller {
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            name: user.name,
        }
    }

    #[test]
    fn lines_come_up_and_a_stop_goes_down() {
        let mut child = spawn(&me(), |chan| {
            chan.send("hello", "a\nb");
            if chan.stop_requested(Duration::from_secs(10)) {
                chan.send("stopped", "");
            }
            0
        })
        .unwrap();
        assert_eq!(
            child.next(Duration::from_secs(5)).unwrap(),
            Next::Line("hello".into(), "a b".into())
        );
        child.request_stop();
        assert_eq!(
            child.next(Duration::from_secs(5)).unwrap(),
            Next::Line("stopped".into(), String::new())
        );
        assert_eq!(child.next(Duration::from_secs(5)).unwrap(), Next::Closed);
    }

    #[test]
    fn a_panic_ends_the_child_and_nothing_else() {
        let mut child = spawn(&me(), |_| panic!("boom")).unwrap();
        assert_eq!(child.next(Duration::from_secs(5)).unwrap(), Next::Closed);
    }

    #[test]
    fn too_much_output_is_refused() {
        let mut child = spawn(&me(), |chan| {
            let mut long = String::new();
            for _ in 0..(MAX_LINE / 64 + 2) {
                long.push_str(&"x".repeat(64));
            }
            // `send` refuses it; write it raw to prove the parent copes.
            write_all(chan.up.as_raw_fd(), long.as_bytes());
            0
        })
        .unwrap();
        let mut result = child.next(Duration::from_secs(5));
        for _ in 0..10 {
            if result.is_err() {
                break;
            }
            result = child.next(Duration::from_secs(5));
        }
        assert!(result.is_err());
    }

    /// A PAM host's own signal handlers (sudo 1.9 has one for SIGUSR1 and
    /// SIGUSR2 while it authenticates, writing to its self-pipe) must not
    /// stay in the child: the caller may signal the child, and would run
    /// the host's code there, on whatever descriptor now has that number.
    /// A host with the default SIGPIPE (su) must survive asking a child
    /// that is already gone to stop: the write to its closed pipe fails
    /// quietly instead of killing the host.
    #[test]
    fn asking_a_dead_child_to_stop_raises_no_sigpipe() {
        let mut child = spawn(&me(), |_| 0).unwrap();
        child.finish(Duration::from_secs(5));
        // SAFETY: SIGPIPE to its default for this test process (Rust's
        // runtime ignores it), restored below; no other test here writes
        // to a closed pipe.
        let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        child.request_stop();
        // SAFETY: a zeroed sigset on this frame, filled by sigpending.
        let still_pending = unsafe {
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut pending);
            libc::sigismember(&pending, libc::SIGPIPE) == 1
        };
        // SAFETY: puts back what was there before this test.
        unsafe { libc::signal(libc::SIGPIPE, old) };
        // Reaching this line at all is the test (SIGPIPE at its default
        // would have killed the process); nothing is left pending either.
        assert!(!still_pending);
    }

    #[test]
    fn the_hosts_signal_handlers_are_not_inherited() {
        extern "C" fn host_handler(_: libc::c_int) {}
        let handler: extern "C" fn(libc::c_int) = host_handler;
        // SAFETY: installs a handler that does nothing for SIGUSR2 in this
        // test process (no other test uses SIGUSR2) and keeps the old one.
        let old = unsafe { libc::signal(libc::SIGUSR2, handler as libc::sighandler_t) };
        let mut child = spawn(&me(), |chan| {
            // SAFETY: queries the disposition into a zeroed sigaction on
            // this stack frame; nothing is changed.
            let current = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut sa);
                sa.sa_sigaction
            };
            chan.send(
                "usr2",
                if current == libc::SIG_DFL {
                    "default"
                } else {
                    "host handler"
                },
            );
            0
        })
        .unwrap();
        let seen = child.next(Duration::from_secs(5)).unwrap();
        // SAFETY: puts back what was there before this test.
        unsafe { libc::signal(libc::SIGUSR2, old) };
        assert_eq!(seen, Next::Line("usr2".into(), "default".into()));
    }

    /// A host that ignores SIGCHLD has its children reaped by the kernel
    /// the moment they exit (util-linux su keeps a caller's SIG_IGN while
    /// it authenticates: measured). The child's pid is then free and may
    /// belong to another process by the time the parent stops the child
    /// (su blocked in the conversation for minutes, then over the
    /// deadline). Stopping the child must never signal that process.
    #[test]
    fn a_pid_reused_after_the_kernel_reaped_the_child_is_never_signalled() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (to place a process at a given pid)");
            return;
        }
        // SAFETY: SIG_IGN for SIGCHLD in this test process, put back below;
        // the other tests here reap with waitpid, which copes with it.
        let old = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        // The child lives until told to stop, then exits by itself.
        let mut child = spawn(&me(), |chan| {
            chan.stop_requested(Duration::from_secs(10));
            0
        })
        .unwrap();
        let pid = child.pid;
        assert!(!child.reaped);
        child.request_stop();
        let gone = |p: libc::pid_t| {
            // SAFETY: kill with signal 0 only checks that the pid exists.
            unsafe { libc::kill(p, 0) != 0 }
        };
        let start = Instant::now();
        while !gone(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(gone(pid), "the child was not reaped by the kernel");
        // Another process, not ours (its parent exits at once), takes the
        // pid: ns_last_pid, written just before its fork, makes it next.
        let last = format!("{}", pid - 1);
        let mut victim = 0;
        for _ in 0..50 {
            let (r, w) = pipe().unwrap();
            // SAFETY: the forked processes only open, write, fork, wait
            // for signals (pause) and _exit: async-signal-safe calls on
            // descriptors and memory prepared before the fork.
            let mid = unsafe { libc::fork() };
            if mid == 0 {
                // SAFETY: see the fork above; `last` and `w` were made
                // before it.
                unsafe {
                    let f = libc::open(c"/proc/sys/kernel/ns_last_pid".as_ptr(), libc::O_WRONLY);
                    libc::write(f, last.as_ptr().cast(), last.len());
                    libc::close(f);
                    let v = libc::fork();
                    if v == 0 {
                        loop {
                            libc::pause();
                        }
                    }
                    libc::write(w.as_raw_fd(), (&raw const v).cast(), 4);
                    libc::_exit(0);
                }
            }
            drop(w);
            let mut got: libc::pid_t = 0;
            // SAFETY: reads at most four bytes into a local pid_t.
            let n = unsafe { libc::read(r.as_raw_fd(), (&raw mut got).cast(), 4) };
            if n == 4 && got == pid {
                victim = got;
                break;
            }
            if n == 4 && got > 0 {
                // SAFETY: the process placed for this test, at another pid.
                unsafe { libc::kill(got, libc::SIGKILL) };
            }
        }
        if victim == 0 {
            // SAFETY: puts back the old disposition.
            unsafe { libc::signal(libc::SIGCHLD, old) };
            eprintln!("skipped: could not place a process at pid {pid}");
            return;
        }
        child.finish(Duration::ZERO);
        drop(child);
        std::thread::sleep(Duration::from_millis(50));
        // Alive, and not a zombie waiting for a parent that does not reap.
        let survived = std::fs::read_to_string(format!("/proc/{victim}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        // SAFETY: the process placed for this test; then the old
        // disposition.
        unsafe {
            libc::kill(victim, libc::SIGKILL);
            libc::signal(libc::SIGCHLD, old);
        }
        assert!(
            survived,
            "stopping the child killed pid {victim}, which is not the child"
        );
    }

    #[test]
    fn descriptors_other_than_the_pipes_are_closed() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        let mut child = spawn(&me(), move |chan| {
            // SAFETY: fcntl(F_GETFD) on an integer descriptor.
            let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            chan.send("open", if open { "yes" } else { "no" });
            0
        })
        .unwrap();
        assert_eq!(
            child.next(Duration::from_secs(5)).unwrap(),
            Next::Line("open".into(), "no".into())
        );
        drop(file);
    }
}
