//! tiocsti-probe: tries to push one character into the terminal on stdin
//! with TIOCSTI and prints `pushed` or `refused <errno>`. Used by the tests
//! to show that a command run by escapes as a less privileged user cannot
//! type into the caller's shell.
fn main() {
    let c: libc::c_char = b'#' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte from a valid pointer; fd 0 is ours.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSTI, &c as *const libc::c_char) };
    if rc == 0 {
        println!("pushed");
    } else {
        println!("refused {}", std::io::Error::last_os_error());
    }
}
