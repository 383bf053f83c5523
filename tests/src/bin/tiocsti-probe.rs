//! tiocsti-probe: tries to push one character into a terminal with
//! TIOCSTI and prints `pushed` or `refused <errno>`: the terminal on stdin,
//! or with `--tty` the controlling terminal (`/dev/tty`), which a command
//! can reach even when all its standard descriptors are pipes. Used by the
//! tests to show that a command run by escapes as a less privileged user
//! cannot type into the caller's shell.
use std::os::fd::AsRawFd;

fn main() {
    let tty = if std::env::args().nth(1).as_deref() == Some("--tty") {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        {
            Ok(f) => Some(f),
            Err(e) => {
                println!("refused {e}");
                return;
            }
        }
    } else {
        None
    };
    let fd = tty.as_ref().map_or(0, |f| f.as_raw_fd());
    let c: libc::c_char = b'#' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte from a valid pointer; fd is ours.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSTI, &c as *const libc::c_char) };
    if rc == 0 {
        println!("pushed");
    } else {
        println!("refused {}", std::io::Error::last_os_error());
    }
}
