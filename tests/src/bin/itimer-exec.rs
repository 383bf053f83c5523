//! itimer-exec: `itimer-exec MS PROGRAM [ARG...]` arms ITIMER_REAL to fire
//! after MS milliseconds, then execs PROGRAM. Interval timers survive
//! exec, so PROGRAM (escapes, in the tests) starts with a SIGALRM on its
//! way at a moment the caller chose.
use std::os::unix::process::CommandExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(ms), Some(program)) = (
        args.first().and_then(|s| s.parse::<i64>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: itimer-exec MS PROGRAM [ARG...]");
        std::process::exit(2);
    };
    let timer = libc::itimerval {
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
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) } != 0 {
        eprintln!("setitimer: {}", std::io::Error::last_os_error());
        std::process::exit(2);
    }
    let err = std::process::Command::new(program)
        .args(args.get(2..).unwrap_or_default())
        .exec();
    eprintln!("exec {program}: {err}");
    std::process::exit(127);
}
