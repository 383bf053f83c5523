//! The only `unsafe` of the PAM hooks: libpam calls that pam-bindings does
//! not wrap (`pam_getenv`, `pam_syslog`), typed access to our own
//! `pam_set_data` slot, a look at the host's pending signals, and
//! [`Critical`] (also used by the JWKS cache around a refresh, for escapes
//! and the hooks alike).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};

use pam::module::PamHandle;

unsafe extern "C" {
    fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

/// A variable from the PAM environment (not the process environment).
pub fn getenv(pamh: &mut PamHandle, name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    // SAFETY: pamh is the live handle libpam passed to this hook; name is a
    // valid NUL-terminated string; the result is NULL or a string owned by
    // libpam that stays valid until the PAM environment changes, and we copy
    // it before returning.
    let ptr = unsafe { pam_getenv(pamh as *mut PamHandle, name.as_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL pointers from pam_getenv point to a NUL-terminated
    // string (see above).
    let value = unsafe { CStr::from_ptr(ptr) };
    value.to_str().ok().map(str::to_string)
}

/// One line to syslog (authpriv), through libpam so it carries the
/// service and module name. The message is sanitised and passed as an
/// argument to a constant `%s` format, never as the format.
pub fn syslog(pamh: &PamHandle, priority: c_int, msg: &str) {
    let clean = crate::error::sanitize(msg, 900);
    let Ok(text) = CString::new(clean) else {
        return;
    };
    // SAFETY: pamh is the live handle; the format is a constant "%s" with
    // exactly one string argument, which is NUL-terminated and outlives the
    // call.
    unsafe {
        pam_syslog(
            pamh as *const PamHandle,
            libc::LOG_AUTHPRIV | priority,
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    };
}

/// Key of our per-handle state. Unique to this module; only ever stored
/// with the type `super::HandleState`.
pub const STATE_KEY: &str = "openape.pam_openape.state.v1";

/// Read our per-handle state.
pub fn get_state(pamh: &PamHandle) -> Option<&super::HandleState> {
    // SAFETY: STATE_KEY is private to this module and set only by
    // `put_state` with a Box<HandleState>, so the stored type is HandleState.
    unsafe { pamh.get_data::<super::HandleState>(STATE_KEY) }.ok()
}

/// Store our per-handle state; libpam frees it at pam_end (the cleanup
/// only drops memory: no I/O, no logging).
pub fn put_state(pamh: &mut PamHandle, state: super::HandleState) -> bool {
    pamh.set_data(STATE_KEY, Box::new(state)).is_ok()
}

/// An interrupt the host has blocked and that is now pending: sudo blocks
/// SIGINT and SIGQUIT while it authenticates, so a Ctrl-C during a request
/// wait only shows up here (it is delivered once sudo unblocks it, after
/// the hook returns). Only looks; never changes the host's signal state.
pub fn pending_interrupt() -> Option<c_int> {
    // SAFETY: sigemptyset and sigpending write into a local sigset_t;
    // sigismember reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigpending(&mut set) != 0 {
            return None;
        }
        [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP]
            .into_iter()
            .find(|&sig| libc::sigismember(&set, sig) == 1)
    }
}

/// The interrupts a user sends at the terminal (SIGINT, SIGQUIT, SIGTERM,
/// SIGHUP) held for this thread while a request waits and until its grant
/// is accepted or refused. sudo 1.9 holds them itself while it
/// authenticates; sudo-rs and su do not, so a Ctrl-C during the wait
/// ended them at once, with the request left with no line after
/// `grant_requested` (the child cancelled it on its own). Held, they show
/// up in [`pending_interrupt`]: the module cancels, writes its `denied`
/// line and returns. Dropping it puts the old mask back, and the host then
/// gets what arrived, after the line.
pub struct HeldInterrupts {
    old: Option<libc::sigset_t>,
}

impl HeldInterrupts {
    pub fn enter() -> HeldInterrupts {
        // SAFETY: sigset operations on locals of this frame;
        // pthread_sigmask changes only this thread's mask and keeps the
        // old one, which Drop puts back.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            let old = (libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) == 0).then_some(old);
            HeldInterrupts { old }
        }
    }
}

impl Drop for HeldInterrupts {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            // SAFETY: puts back this thread's mask saved by `enter`.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        }
    }
}

/// From just before a grant is consumed until its audit line is written
/// (and around every other audit line of the module), the host must not
/// die or stop of anything its caller arranged. sudo 1.9, sudo-rs and su
/// run the PAM stack with the caller's real uid, so the caller may send
/// them any signal, SIGKILL and SIGSTOP included, and they keep the
/// caller's interval timers, CPU limit and signal dispositions: a SIGALRM
/// from an `ITIMER_REAL` armed before exec, a SIGTERM or SIGKILL sent by
/// hand, a SIGXCPU or the hard CPU limit's SIGKILL all killed the host
/// after the IdP had consumed the grant and before any line was written,
/// and a SIGKILL in the middle of a long line cut it.
///
/// While this value lives: the real and saved uid are root as well (where
/// the effective uid is root), so the caller's processes may not signal
/// this one at all (kill(2) needs the sender's uid to match the target's
/// real or saved uid); every signal that can be held is held, for those
/// that need no permission (a terminal's SIGINT, SIGQUIT, SIGTSTP, SIGHUP;
/// the timers' SIGALRM, SIGVTALRM, SIGPROF); the kernel's own fault signals
/// are left alone (a fault there is a crash either way); and the CPU limit
/// is lifted where the process may. Dropping it puts back the ids, the
/// limit and the mask; whatever arrived meanwhile is delivered then, after
/// the line.
pub struct Critical {
    old_mask: Option<libc::sigset_t>,
    cpu: Option<libc::rlimit>,
    /// Real, effective and saved uid before the switch to root.
    ids: Option<(libc::uid_t, libc::uid_t, libc::uid_t)>,
}

impl Critical {
    pub fn enter() -> Critical {
        // Signals held (the old mask kept for Drop), then:
        let old_mask = crate::request::privsep::hold_all_but_faults();
        // SAFETY: getrlimit/setrlimit read and write one rlimit on this
        // frame; getresuid writes three locals, and
        // setresuid(0, 0, 0) is only called with the effective uid root
        // (the ids are put back by Drop, which keeps them).
        unsafe {
            let mut cpu: libc::rlimit = std::mem::zeroed();
            let cpu = (libc::getrlimit(libc::RLIMIT_CPU, &mut cpu) == 0
                && cpu.rlim_cur != libc::RLIM_INFINITY)
                .then(|| {
                    let lifted = libc::rlimit {
                        rlim_cur: libc::RLIM_INFINITY,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    if libc::setrlimit(libc::RLIMIT_CPU, &lifted) != 0 {
                        let soft_to_hard = libc::rlimit {
                            rlim_cur: cpu.rlim_max,
                            rlim_max: cpu.rlim_max,
                        };
                        libc::setrlimit(libc::RLIMIT_CPU, &soft_to_hard);
                    }
                    cpu
                });
            let (mut r, mut e, mut su) = (0, 0, 0);
            let ids = (libc::getresuid(&mut r, &mut e, &mut su) == 0
                && e == 0
                && (r != 0 || su != 0)
                && libc::setresuid(0, 0, 0) == 0)
                .then_some((r, e, su));
            Critical { old_mask, cpu, ids }
        }
    }
}

impl Drop for Critical {
    fn drop(&mut self) {
        // SAFETY: puts back the ids, the limit and the mask saved by
        // `enter` (values on this struct, read by the calls only); the
        // effective uid is root throughout, so setresuid may restore them.
        // Should that ever fail, the host would go on with a real uid of
        // root it never had: end it at once instead (nothing runs).
        unsafe {
            if let Some((r, e, su)) = self.ids.take()
                && libc::setresuid(r, e, su) != 0
            {
                libc::_exit(1);
            }
            if let Some(cpu) = self.cpu.take() {
                libc::setrlimit(libc::RLIMIT_CPU, &cpu);
            }
            if let Some(old) = self.old_mask.take() {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
        }
    }
}
