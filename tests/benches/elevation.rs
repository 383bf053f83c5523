//! Benchmark (b): whole processes, run by a real non-root user, measured
//! interleaved in the same run so machine noise hits every variant alike:
//!
//! * `/bin/true`, `escapes --grant-file G -- true` (timed grant, loopback
//!   test IdP, warm JWKS cache) and `sudo -n true` (NOPASSWD rule);
//! * `sudo id -u` with a grant through pam_openape.so and `sudo -n id -u`
//!   with a NOPASSWD rule.
//!
//! Also counts the IdP requests per escapes run (target: exactly one, the
//! consume).
//!
//! Then the same interleaved comparison with an IdP whose consume answers
//! after 2 ms (a nearby real IdP): `/bin/true`, `escapes`, `sudo -n true`,
//! and, when `BENCH_BASELINE_ESCAPES` names another escapes binary (an
//! older build, say), that one too, set up the same way. sudoers and /etc/pam.d/sudo are replaced only inside a private
//! mount namespace of this process. Needs root; run with `make bench`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openape_tests::harness::{HOST, Sandbox, artefact, require_root, test_user};
use openape_tests::idp::{Fault, GrantSpec, GrantType, TestIdp};

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

fn as_user(user: &str, env: &[(&str, &str)], argv: &[&str]) -> Command {
    let mut c = Command::new("/usr/bin/setpriv");
    c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
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
    let sb = Sandbox::new("bench");
    let idp = TestIdp::start();
    sb.write_config(&sb.config(&idp.issuer()).render());
    let so = std::fs::read(artefact("libpam_openape.so")).unwrap();
    let module = sb.write_file("pam_openape.so", &so, 0, 0, 0o644);
    let stack = format!(
        "auth required {m} config={c} nonint\naccount required pam_permit.so\nsession required pam_permit.so\n",
        m = module.display(),
        c = sb.config_path().display()
    );
    let pamd = sb.write_file("pam.d-sudo", stack.as_bytes(), 0, 0, 0o644);
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
    let escapes = || {
        as_user(
            &tu.name,
            &[],
            &[
                &esc.to_string_lossy(),
                "--grant-file",
                &gfile.to_string_lossy(),
                "--",
                "true",
            ],
        )
    };
    // Warm-up (fills the JWKS cache, pages in the binaries).
    for _ in 0..3 {
        time(escapes());
        time(as_user(&tu.name, &[], &["sudo", "-n", "true"]));
        time(as_user(
            GRANT_USER,
            &[("OPENAPE_GRANT", &g_id)],
            &["sudo", "id", "-u"],
        ));
    }

    let before = idp.requests().len();
    let (mut t_true, mut t_esc, mut t_sudo, mut t_pam, mut t_nopw) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        t_true.push(time(as_user(&tu.name, &[], &["/bin/true"])));
        let r0 = idp.requests().len();
        t_esc.push(time(escapes()));
        let per_run = idp.requests().len() - r0;
        assert_eq!(
            per_run,
            1,
            "escapes made {per_run} IdP requests in one run: {:?}",
            idp.requests()
        );
        t_sudo.push(time(as_user(&tu.name, &[], &["sudo", "-n", "true"])));
        t_pam.push(time(as_user(
            GRANT_USER,
            &[("OPENAPE_GRANT", &g_id)],
            &["sudo", "id", "-u"],
        )));
        t_nopw.push(time(as_user(&tu.name, &[], &["sudo", "-n", "id", "-u"])));
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
        "whole process, median of {RUNS} interleaved runs as a non-root user (each through setpriv):"
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

    // The same with an IdP that answers consume after 2 ms.
    let baseline = std::env::var_os("BENCH_BASELINE_ESCAPES").map(|p| {
        let bin = std::fs::read(&p).unwrap();
        sb.write_file("bin/escapes-baseline", &bin, 0, 0, 0o4755)
    });
    let run_with = |bin: &Path| {
        as_user(
            &tu.name,
            &[],
            &[
                &bin.to_string_lossy(),
                "--grant-file",
                &gfile.to_string_lossy(),
                "--",
                "true",
            ],
        )
    };
    idp.set_fault_for("/api/grants/", Fault::Slow(Duration::from_millis(2)));
    for _ in 0..3 {
        time(escapes());
        if let Some(b) = &baseline {
            time(run_with(b));
        }
    }
    let (mut t_true, mut t_esc, mut t_base, mut t_sudo) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        t_true.push(time(as_user(&tu.name, &[], &["/bin/true"])));
        t_esc.push(time(escapes()));
        if let Some(b) = &baseline {
            t_base.push(time(run_with(b)));
        }
        t_sudo.push(time(as_user(&tu.name, &[], &["sudo", "-n", "true"])));
    }
    let (tt, te, ts_) = (median(&mut t_true), median(&mut t_esc), median(&mut t_sudo));
    println!("IdP consume answering after 2 ms, median of {RUNS} interleaved runs:");
    println!("  /bin/true                      {tt:7.3} ms");
    println!("  escapes (timed grant) -- true  {te:7.3} ms");
    println!("  sudo -n true (NOPASSWD)        {ts_:7.3} ms");
    println!("  escapes / sudo -n true: {:.2}", te / ts_);
    if !t_base.is_empty() {
        let tb = median(&mut t_base);
        println!("  baseline escapes               {tb:7.3} ms");
        println!(
            "  escapes / baseline: {:.2}   baseline / sudo -n true: {:.2}",
            te / tb,
            tb / ts_
        );
    }
}
