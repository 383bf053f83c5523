//! pam-driver: a minimal libpam application for the tests.
//!
//! It loads a PAM stack from a private directory with `pam_start_confdir`
//! (Linux-PAM ≥ 1.4), so tests never touch /etc/pam.d. Its own argv is the
//! command line the module will read from /proc/self/cmdline: tests start
//! it with argv[0] = "sudo" or "su" and the arguments of the invocation
//! they imitate. Everything else comes from PAMD_* environment variables:
//!
//! * PAMD_SERVICE, PAMD_CONFDIR: the stack `<CONFDIR>/<SERVICE>`
//! * PAMD_USER: PAM_USER; PAMD_RUSER: PAM_RUSER (unset: not set)
//! * PAMD_ANSWER: the answer to every prompt (unset: empty answer)
//! * PAMD_PAMENV: `NAME=value` put into the PAM environment
//! * PAMD_STEPS: comma list of auth, acct, open, close (default auth)
//! * PAMD_REPEAT: run the whole cycle N times (default 1)
//! * PAMD_BLOCK_SIGNALS=1: block SIGINT, SIGQUIT, SIGTERM and SIGHUP for
//!   the whole run, as sudo does while it authenticates (a Ctrl-C is then
//!   only pending, and the module has to notice it)
//! * PAMD_IGNORE_SIGCHLD=1: SIGCHLD ignored for the whole run, as util-linux
//!   su keeps it when its caller ignored it (the kernel then reaps children)
//! * PAMD_INFO_DELAY_MS=N: the first informational message (PAM_TEXT_INFO)
//!   takes N ms to show, like a terminal whose output is stopped
//!
//! Output, one per line: `auth=N`, `acct=N`, `open=N`, `close=N` (PAM
//! codes), `msg=<style>:<text>` for module messages, and finally
//! `threads=B,A fds=B,A` (before and after all cycles).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn =
    extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

#[repr(C)]
struct PamConv {
    conv: ConvFn,
    appdata_ptr: *mut c_void,
}

const PAM_RUSER: c_int = 8;

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_start_confdir(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_acct_mgmt(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_open_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_set_item(pamh: *mut c_void, item_type: c_int, item: *const c_void) -> c_int;
    fn pam_putenv(pamh: *mut c_void, name_value: *const c_char) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
}

extern "C" fn conversation(
    n: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    _appdata: *mut c_void,
) -> c_int {
    let count = usize::try_from(n).unwrap_or(0);
    // SAFETY: calloc'd array of `count` responses; libpam frees it and each
    // resp string with free().
    let out = unsafe { libc::calloc(count.max(1), std::mem::size_of::<PamResponse>()) }
        as *mut PamResponse;
    if out.is_null() {
        return 5; // PAM_BUF_ERR
    }
    let answer = CString::new(std::env::var("PAMD_ANSWER").unwrap_or_default()).unwrap_or_default();
    for i in 0..count {
        // SAFETY: Linux-PAM passes an array of `n` message pointers.
        let m = unsafe { &**msgs.add(i) };
        // SAFETY: each message text is a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(m.msg) }.to_string_lossy();
        match m.msg_style {
            1 | 2 => {
                println!("prompt={text}");
                // SAFETY: `out` has room for `count` responses; strdup'd
                // string is freed by libpam.
                unsafe { (*out.add(i)).resp = libc::strdup(answer.as_ptr()) };
            }
            style => {
                println!("msg={style}:{}", text.replace('\n', "\\n"));
                if style == 4
                    && let Some(ms) = std::env::var("PAMD_INFO_DELAY_MS")
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    && !INFO_DELAYED.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
        }
    }
    // SAFETY: resp is the out-pointer libpam gave us.
    unsafe { *resp = out };
    0
}

/// The first PAM_TEXT_INFO was delayed already (PAMD_INFO_DELAY_MS).
static INFO_DELAYED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

fn main() {
    let var = |k: &str| std::env::var(k).ok();
    let service = CString::new(var("PAMD_SERVICE").expect("PAMD_SERVICE")).unwrap();
    let confdir = CString::new(var("PAMD_CONFDIR").expect("PAMD_CONFDIR")).unwrap();
    let user = var("PAMD_USER").map(|u| CString::new(u).unwrap());
    let ruser = var("PAMD_RUSER").map(|u| CString::new(u).unwrap());
    let pamenv = var("PAMD_PAMENV").map(|u| CString::new(u).unwrap());
    let steps = var("PAMD_STEPS").unwrap_or_else(|| "auth".into());
    let repeat: usize = var("PAMD_REPEAT").and_then(|r| r.parse().ok()).unwrap_or(1);
    let conv = PamConv {
        conv: conversation,
        appdata_ptr: std::ptr::null_mut(),
    };
    if var("PAMD_IGNORE_SIGCHLD").as_deref() == Some("1") {
        // SAFETY: sets SIGCHLD to SIG_IGN in this single-threaded process.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    }
    if var("PAMD_BLOCK_SIGNALS").as_deref() == Some("1") {
        // SAFETY: builds a signal set on the stack and blocks it for this
        // single-threaded process.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }
    let (threads0, fds0) = (count_dir("/proc/self/task"), count_dir("/proc/self/fd"));
    for _ in 0..repeat {
        let mut pamh: *mut c_void = std::ptr::null_mut();
        let user_ptr = user.as_ref().map_or(std::ptr::null(), |u| u.as_ptr());
        // SAFETY: all pointers are valid NUL-terminated strings or NULL (user);
        // conv outlives the handle.
        let rc = unsafe {
            pam_start_confdir(
                service.as_ptr(),
                user_ptr,
                &conv,
                confdir.as_ptr(),
                &mut pamh,
            )
        };
        if rc != 0 {
            println!("start={rc}");
            std::process::exit(3);
        }
        if let Some(r) = &ruser {
            // SAFETY: live handle; PAM copies the string.
            unsafe { pam_set_item(pamh, PAM_RUSER, r.as_ptr().cast()) };
        }
        if let Some(e) = &pamenv {
            // SAFETY: live handle; PAM copies the string.
            unsafe { pam_putenv(pamh, e.as_ptr()) };
        }
        let mut last = 0;
        for step in steps.split(',') {
            // SAFETY: live handle from pam_start_confdir.
            last = unsafe {
                match step {
                    "auth" => pam_authenticate(pamh, 0),
                    "acct" => pam_acct_mgmt(pamh, 0),
                    "open" => pam_open_session(pamh, 0),
                    "close" => pam_close_session(pamh, 0),
                    other => panic!("unknown step {other}"),
                }
            };
            println!("{step}={last}");
        }
        // SAFETY: ends the handle exactly once.
        unsafe { pam_end(pamh, last) };
    }
    let (threads1, fds1) = (count_dir("/proc/self/task"), count_dir("/proc/self/fd"));
    println!("threads={threads0},{threads1} fds={fds0},{fds1}");
}
