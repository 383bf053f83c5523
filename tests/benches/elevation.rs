//! Benchmark (b): whole processes, started by this (root) process directly
//! as a real non-root user (groups, gid and uid set between fork and exec,
//! no helper program in the timed path), measured interleaved in the same
//! run so machine noise hits every variant alike:
//!
//! * `/bin/true`, `escapes --grant-file G -- true` (timed grant, loopback
//!   test IdP, warm JWKS cache) and `sudo -n true` (NOPASSWD rule, the
//!   machine's stock `/etc/pam.d/sudo`);
//! * `sudo id -u` with a grant through pam_openape.so (the shipped
//!   `sudo.grant-or-password` stack: stock plus one line) and `sudo -n id -u`
//!   with a NOPASSWD rule (stock stack).
//!
//! Also counts the IdP requests per escapes run (target: exactly one, the
//! consume), and the minor page faults and peak resident set of one run of
//! each (from wait4's rusage: the command's exec'd `true` included).
//!
//! Then the floor: two setuid-root C programs built here, one that only
//! execs `/bin/true` and one that first calls getpwnam and initgroups,
//! beside escapes (what one extra exec costs on this machine at all).
//!
//! Then the same interleaved comparison with an IdP 2 ms away: once with
//! only the consume answering after 2 ms, once with every request doing so
//! (a real IdP across a network). `/bin/true`, `escapes`, `sudo -n true`,
//! and, when `BENCH_BASELINE_ESCAPES` names another escapes binary (the
//! previous escapes, say), that one too, set up the same way.
//! sudoers and /etc/pam.d/sudo are replaced only inside a private mount
//! namespace of this process. Needs root; run with `make bench`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openape_tests::harness::{HOST, Sandbox, artefact, require_root, test_user};
use openape_tests::idp::{Fault, GrantSpec, GrantType, TestIdp};
use openape_tests::sudo_ns::shipped;

const RUNS: usize = 40;
const GRANT_USER: &str = "openape-bench";

/// Enter a private mount namespace and bind `src` over `dst` there.
fn private_mounts(binds: &[(&Path, &str)]) {
    // SAFETY: unshare/mount take plain flags and NUL-terminated strings; this
    // benchmark is single-threaded at this point apart from the IdP, which
    // does not depend on the mount table.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
        let none = c"none";
        let root = c"/";
        assert_eq!(
            libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private"
        );
        for (src, dst) in binds {
            let s = std::ffi::CString::new(src.to_string_lossy().as_bytes()).unwrap();
            let d = std::ffi::CString::new(*dst).unwrap();
            assert_eq!(
                libc::mount(
                    s.as_ptr(),
                    d.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                0,
                "bind {} over {dst}",
                src.display()
            );
        }
    }
}

/// Who a measured command runs as.
#[derive(Clone)]
struct Ids {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn ids_of(user: &str) -> Ids {
    let id = |flag: &str| -> Vec<u32> {
        let out = Command::new("/usr/bin/id")
            .args([flag, user])
            .output()
            .unwrap();
        assert!(out.status.success(), "id {flag} {user}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    Ids {
        uid: id("-u")[0],
        gid: id("-g")[0],
        groups: id("-G"),
    }
}

/// `argv` as `ids`, with only PATH and `env` in its environment. The
/// identity is set in the forked child right before exec, so the timing
/// holds the measured program and nothing else.
fn as_user(ids: &Ids, env: &[(&str, &str)], argv: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let ids = ids.clone();
    // SAFETY: runs in the forked child before exec; setgroups, setgid and
    // setuid are async-signal-safe and take plain integers and a pointer to
    // a vector that the child's copy of the closure owns.
    unsafe {
        c.pre_exec(move || {
            if libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) != 0
                || libc::setgid(ids.gid) != 0
                || libc::setuid(ids.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Minor page faults and peak resident set (KiB) of one run of `c`, from
/// wait4 on that child: the program it execs (the command) and the
/// descendants it waited for are included.
// The child is reaped by wait4 below, which std's wait cannot do (rusage).
#[allow(clippy::zombie_processes)]
fn usage(mut c: Command) -> (i64, i64) {
    let child = c.stderr(Stdio::null()).spawn().expect("spawn");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: wait4 writes the status and the rusage into locals we own;
    // `pid` is our own child, not waited for yet.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut ru), pid);
        ru
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{c:?}: wait status {status}"
    );
    (ru.ru_minflt, ru.ru_maxrss)
}

fn time(mut c: Command) -> f64 {
    let start = Instant::now();
    let out = c.output().expect("spawn");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

/// The two setuid-root C programs of the floor measurement, or `None`
/// (with the reason printed) where no C compiler is found.
fn floor_programs(sb: &Sandbox) -> Option<(String, String)> {
    const EXEC_ONLY: &str = "#include <unistd.h>\nint main(int c, char **v) { if (c < 2) return 2; execv(v[1], v + 1); return 127; }\n";
    const WITH_NSS: &str = "#include <grp.h>\n#include <pwd.h>\n#include <unistd.h>\nint main(int c, char **v) { struct passwd *p = getpwnam(\"root\"); if (c < 2 || !p || initgroups(p->pw_name, p->pw_gid)) return 2; execv(v[1], v + 1); return 127; }\n";
    let mut out = vec![];
    for (name, src) in [("floor-exec", EXEC_ONLY), ("floor-nss", WITH_NSS)] {
        let c = sb.write_file(&format!("{name}.c"), src.as_bytes(), 0, 0, 0o644);
        let bin = sb.path(&format!("bin/{name}"));
        let built = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&c)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !built {
            println!("floor: skipped, `cc` could not build {name}");
            return None;
        }
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        out.push(bin.to_string_lossy().into_owned());
    }
    Some((out[0].clone(), out[1].clone()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !require_root() {
        return;
    }
    let tu = test_user();
    if Command::new("/usr/bin/id")
        .arg(GRANT_USER)
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        let _ = Command::new("/usr/sbin/useradd")
            .args(["-M", "-s", "/bin/sh", "-U", GRANT_USER])
            .status();
    }
    let user = Ids {
        uid: tu.uid,
        gid: tu.gid,
        groups: tu.groups.clone(),
    };
    let grant_user = ids_of(GRANT_USER);
    let sb = Sandbox::new("bench");
    let idp = TestIdp::start();
    sb.write_config(&sb.config(&idp.issuer()).render());
    let so = std::fs::read(artefact("libpam_openape.so")).unwrap();
    let module = sb.write_file("pam_openape.so", &so, 0, 0, 0o644);
    // Two /etc/pam.d/sudo contents: the machine's own (what `sudo -n` is
    // measured with) and the shipped grant-or-password stack, which is the
    // same plus one line. The sandbox file is bound over /etc/pam.d/sudo
    // and rewritten (same inode) before each sudo run.
    let grant_stack = shipped("sudo.grant-or-password")
        .replace("@SO@", &module.to_string_lossy())
        .replace("@CFG@", &sb.config_path().to_string_lossy());
    let stock_stack = std::fs::read_to_string("/etc/pam.d/sudo").unwrap_or_else(|_| {
        grant_stack
            .lines()
            .filter(|l| !l.contains("pam_openape"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let pamd = sb.write_file("pam.d-sudo", stock_stack.as_bytes(), 0, 0, 0o644);
    let stack = |text: &str| std::fs::write(&pamd, text).unwrap();
    let sudoers = format!(
        "Defaults !lecture, timestamp_timeout=0, secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n{u} ALL=(ALL:ALL) NOPASSWD: ALL\n{g} ALL=(ALL:ALL) ALL\n",
        u = tu.name,
        g = GRANT_USER
    );
    let sudoers = sb.write_file("sudoers", sudoers.as_bytes(), 0, 0, 0o440);
    let empty = sb.path("empty.d");
    std::fs::create_dir_all(&empty).unwrap();
    let ts = sb.path("run-sudo");
    std::fs::create_dir_all(&ts).unwrap();
    // escapes reads only the default config path for a non-root caller:
    // show the sandbox's etc/ at /etc/openape (overlay on /etc first, so the
    // binds below stay on top of it).
    sb.config_ns().enter().expect("enter the config namespace");
    private_mounts(&[
        (&sudoers, "/etc/sudoers"),
        (&empty, "/etc/sudoers.d"),
        (&pamd, "/etc/pam.d/sudo"),
        (&ts, "/run/sudo"),
    ]);

    // Grants: a timed one for `true` (escapes) and one for `id -u` (sudo).
    let timed = |cmd: &[&str]| {
        let mut s = GrantSpec::new(HOST, cmd);
        s.grant_type = GrantType::Timed;
        s.duration_secs = Some(3600);
        idp.issue(&s).jwt
    };
    let g_true = timed(&["true"]);
    let gfile = sb.write_file("grant-true", g_true.as_bytes(), tu.uid, tu.gid, 0o600);
    let g_id = timed(&["id", "-u"]);
    let esc = sb.escapes();
    let baseline = std::env::var_os("BENCH_BASELINE_ESCAPES").map(|p| {
        let bin = std::fs::read(&p).unwrap();
        sb.write_file("bin/escapes-baseline", &bin, 0, 0, 0o4755)
    });
    let run_escapes = |bin: &Path| {
        let grant = gfile.to_string_lossy();
        let bin = bin.to_string_lossy();
        if Some(bin.as_ref()) == baseline.as_deref().map(|b| b.to_string_lossy()).as_deref() {
            // The previous escapes has no --grant-file.
            as_user(&user, &[], &[&bin, "--grant", &g_true, "--", "true"])
        } else {
            as_user(&user, &[], &[&bin, "--grant-file", &grant, "--", "true"])
        }
    };
    let bin_true = || as_user(&user, &[], &["/bin/true"]);
    let sudo_true = || {
        stack(&stock_stack);
        as_user(&user, &[], &["/usr/bin/sudo", "-n", "true"])
    };
    let sudo_grant = || {
        stack(&grant_stack);
        as_user(
            &grant_user,
            &[("OPENAPE_GRANT", &g_id)],
            &["/usr/bin/sudo", "id", "-u"],
        )
    };
    let sudo_nopw = || {
        stack(&stock_stack);
        as_user(&user, &[], &["/usr/bin/sudo", "-n", "id", "-u"])
    };
    // Warm-up (fills the JWKS cache, pages in the binaries).
    for _ in 0..3 {
        time(run_escapes(&esc));
        if let Some(b) = &baseline {
            time(run_escapes(b));
        }
        time(sudo_true());
        time(sudo_grant());
    }

    let before = idp.requests().len();
    let (mut t_true, mut t_esc, mut t_sudo, mut t_pam, mut t_nopw) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        t_true.push(time(bin_true()));
        let r0 = idp.requests().len();
        t_esc.push(time(run_escapes(&esc)));
        let per_run = idp.requests().len() - r0;
        assert_eq!(
            per_run,
            1,
            "escapes made {per_run} IdP requests in one run: {:?}",
            idp.requests()
        );
        t_sudo.push(time(sudo_true()));
        t_pam.push(time(sudo_grant()));
        t_nopw.push(time(sudo_nopw()));
    }
    let requests = idp.requests();
    let escapes_requests = requests[before..]
        .iter()
        .filter(|(_, p)| p.ends_with("/consume"))
        .count();
    let jwks = requests[before..]
        .iter()
        .filter(|(_, p)| p.contains("jwks"))
        .count();

    let (tt, te, ts_, tp, tn) = (
        median(&mut t_true),
        median(&mut t_esc),
        median(&mut t_sudo),
        median(&mut t_pam),
        median(&mut t_nopw),
    );
    println!(
        "whole process, median of {RUNS} interleaved runs as a non-root user (started directly, no helper):"
    );
    println!("  /bin/true                      {tt:7.3} ms");
    println!(
        "  escapes (timed grant) -- true  {te:7.3} ms   adds {:.3} ms over /bin/true (target <= 0.8 ms)",
        te - tt
    );
    println!(
        "  sudo -n true (NOPASSWD)        {ts_:7.3} ms   adds {:.3} ms over /bin/true",
        ts_ - tt
    );
    println!(
        "  ratio escapes/sudo of the added time: {:.2}  (escapes/sudo wall: {:.2})",
        (te - tt) / (ts_ - tt),
        te / ts_
    );
    println!(
        "  IdP requests in the measured runs: {} consume + {jwks} JWKS for {} escapes + {} grant sudo runs",
        escapes_requests, RUNS, RUNS
    );
    println!(
        "  sudo id -u with a grant (PAM)  {tp:7.3} ms   adds {:.3} ms over sudo -n id -u NOPASSWD {tn:.3} ms (target <= 3 ms)",
        tp - tn
    );
    let show = |(faults, rss): (i64, i64)| format!("{faults} / {rss} KiB");
    print!(
        "  minor page faults / peak RSS of one run (with the exec'd command): /bin/true {}, escapes {}",
        show(usage(bin_true())),
        show(usage(run_escapes(&esc)))
    );
    if let Some(b) = &baseline {
        print!(", baseline escapes {}", show(usage(run_escapes(b))));
    }
    println!(", sudo -n true {}", show(usage(sudo_true())));
    println!(
        "  the same for sudo id -u: with a grant (PAM) {}, NOPASSWD {}",
        show(usage(sudo_grant())),
        show(usage(sudo_nopw()))
    );

    // The floor: what one extra exec costs on this machine at all. Two
    // setuid-root C programs, built here with the C compiler the Rust
    // build needs anyway: one only execs its argument, the other first
    // does what any front end must (getpwnam and initgroups for root,
    // through NSS). A target below the first is out of reach for any
    // program that runs the command by exec.
    if let Some((exec_only, with_nss)) = floor_programs(&sb) {
        let (mut t_true, mut t_exec, mut t_nss, mut t_esc) = (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS * 5 {
            t_true.push(time(bin_true()));
            t_exec.push(time(as_user(&user, &[], &[&exec_only, "/bin/true"])));
            t_nss.push(time(as_user(&user, &[], &[&with_nss, "/bin/true"])));
            t_esc.push(time(run_escapes(&esc)));
        }
        let tt = median(&mut t_true);
        println!(
            "floor, median of {} interleaved runs (setuid C programs that exec /bin/true):",
            RUNS * 5
        );
        println!("  /bin/true                      {tt:7.3} ms");
        for (label, v) in [
            ("exec only", &mut t_exec),
            ("getpwnam+initgroups, exec", &mut t_nss),
            ("escapes (timed grant) -- true", &mut t_esc),
        ] {
            let m = median(v);
            println!("  {label:<30} {m:7.3} ms   adds {:.3} ms", m - tt);
        }
    }

    // The same with an IdP 2 ms away: first only the consume is slow, then
    // every request (the previous escapes also fetches the JWKS each run).
    for (label, slow_prefix) in [
        ("IdP consume answering after 2 ms", "/api/grants/"),
        ("every IdP request answering after 2 ms", "/"),
    ] {
        idp.clear_faults();
        idp.set_fault_for(slow_prefix, Fault::Slow(Duration::from_millis(2)));
        for _ in 0..3 {
            time(run_escapes(&esc));
            if let Some(b) = &baseline {
                time(run_escapes(b));
            }
        }
        let (mut t_true, mut t_esc, mut t_base, mut t_sudo) = (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS {
            t_true.push(time(bin_true()));
            t_esc.push(time(run_escapes(&esc)));
            if let Some(b) = &baseline {
                t_base.push(time(run_escapes(b)));
            }
            t_sudo.push(time(sudo_true()));
        }
        let (tt, te, ts_) = (median(&mut t_true), median(&mut t_esc), median(&mut t_sudo));
        println!("{label}, median of {RUNS} interleaved runs:");
        println!("  /bin/true                      {tt:7.3} ms");
        println!("  escapes (timed grant) -- true  {te:7.3} ms");
        println!("  sudo -n true (NOPASSWD)        {ts_:7.3} ms");
        println!(
            "  escapes / sudo -n true: {:.2}   (target <= 0.60)",
            te / ts_
        );
        if !t_base.is_empty() {
            let tb = median(&mut t_base);
            println!("  baseline escapes               {tb:7.3} ms");
            println!(
                "  escapes / baseline: {:.2} (target <= 0.85)   baseline / sudo -n true: {:.2}",
                te / tb,
                tb / ts_
            );
        }
    }
    idp.clear_faults();
}
