//! state-exec: set up hostile process state, then exec a program (the
//! caller of sudo, sudo-rs or su in the PAM process-state tests). Every
//! piece of it survives exec:
//!
//! ```text
//! state-exec [--itimer real|virtual|prof MS] [--block-all] [--ignore SIG]
//!            [--rlimit fsize|nofile|as|data|stack|core|nproc|cpu SOFT HARD]
//!            [--umask OCTAL] [--close FD] [--raw-env ENTRY] -- PROGRAM [ARG...]
//! ```
//!
//! `--raw-env` appends ENTRY to the environment as it is (`=X`, `==Y`,
//! `BAREWORD`: shapes that `NAME=value` cannot express); PROGRAM is then
//! found on PATH by `execvpe`.
//!
//! `SOFT`/`HARD` are numbers or `inf`. Exit 2 on a usage or set-up error,
//! 127 when the exec fails.
use std::os::unix::process::CommandExt;

fn fail(msg: &str) -> ! {
    eprintln!("state-exec: {msg}");
    std::process::exit(2);
}

fn limit(s: &str) -> libc::rlim_t {
    if s == "inf" {
        return libc::RLIM_INFINITY;
    }
    s.parse()
        .unwrap_or_else(|_| fail(&format!("bad limit {s}")))
}

fn resource(s: &str) -> libc::__rlimit_resource_t {
    match s {
        "fsize" => libc::RLIMIT_FSIZE,
        "nofile" => libc::RLIMIT_NOFILE,
        "as" => libc::RLIMIT_AS,
        "data" => libc::RLIMIT_DATA,
        "stack" => libc::RLIMIT_STACK,
        "core" => libc::RLIMIT_CORE,
        "nproc" => libc::RLIMIT_NPROC,
        "cpu" => libc::RLIMIT_CPU,
        _ => fail(&format!("unknown resource {s}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let next = |it: &mut std::slice::Iter<'_, String>| {
        it.next()
            .cloned()
            .unwrap_or_else(|| fail("missing argument"))
    };
    // Limits are set last (a tiny NOFILE or AS would stop the set-up).
    let mut limits = Vec::new();
    let mut raw_env: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--itimer" => {
                let which = match next(&mut it).as_str() {
                    "real" => libc::ITIMER_REAL,
                    "virtual" => libc::ITIMER_VIRTUAL,
                    "prof" => libc::ITIMER_PROF,
                    w => fail(&format!("unknown timer {w}")),
                };
                let ms: i64 = next(&mut it).parse().unwrap_or_else(|_| fail("bad ms"));
                let t = libc::itimerval {
                    it_interval: libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    },
                    it_value: libc::timeval {
                        tv_sec: ms / 1000,
                        tv_usec: (ms % 1000) * 1000,
                    },
                };
                // SAFETY: setitimer reads one itimerval from a live local.
                if unsafe { libc::setitimer(which, &t, std::ptr::null_mut()) } != 0 {
                    fail("setitimer failed");
                }
            }
            "--block-all" => {
                // SAFETY: a full sigset on this frame, given to sigprocmask.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut set);
                    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                }
            }
            "--ignore" => {
                let sig: i32 = next(&mut it).parse().unwrap_or_else(|_| fail("bad signal"));
                // SAFETY: SIG_IGN is not a handler that runs code.
                unsafe { libc::signal(sig, libc::SIG_IGN) };
            }
            "--rlimit" => {
                let r = resource(&next(&mut it));
                let soft = limit(&next(&mut it));
                let hard = limit(&next(&mut it));
                limits.push((r, soft, hard));
            }
            "--umask" => {
                let m =
                    u32::from_str_radix(&next(&mut it), 8).unwrap_or_else(|_| fail("bad umask"));
                // SAFETY: umask only sets the process's mask.
                unsafe { libc::umask(m) };
            }
            "--close" => {
                let fd: i32 = next(&mut it).parse().unwrap_or_else(|_| fail("bad fd"));
                // SAFETY: closes a descriptor number of this process.
                unsafe { libc::close(fd) };
            }
            "--raw-env" => raw_env.push(next(&mut it)),
            "--" => break,
            other => fail(&format!("unknown option {other}")),
        }
    }
    let rest: Vec<String> = it.cloned().collect();
    let Some((program, prog_args)) = rest.split_first() else {
        fail("no program");
    };
    for (r, soft, hard) in limits {
        let l = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one rlimit from a live local.
        if unsafe { libc::setrlimit(r, &l) } != 0 {
            fail("setrlimit failed");
        }
    }
    if !raw_env.is_empty() {
        exec_with_raw_env(program, prog_args, &raw_env);
    }
    let err = std::process::Command::new(program).args(prog_args).exec();
    eprintln!("state-exec: exec {program}: {err}");
    std::process::exit(127);
}

/// `execvpe` with this process's environment plus `raw` entries as they
/// are. Returns only on failure (exit 127).
fn exec_with_raw_env(program: &str, args: &[String], raw: &[String]) -> ! {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |b: &[u8]| CString::new(b).unwrap_or_else(|_| fail("NUL in an argument"));
    let argv: Vec<CString> = std::iter::once(program.as_bytes())
        .chain(args.iter().map(|a| a.as_bytes()))
        .map(c)
        .collect();
    let envp: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c(&kv)
        })
        .chain(raw.iter().map(|r| c(r.as_bytes())))
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: NUL-terminated arrays of pointers to CStrings that outlive
    // the call; execvpe returns only on failure.
    unsafe { libc::execvpe(argv[0].as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    eprintln!(
        "state-exec: exec {program}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(127);
}
