//! Request mode of pam_openape.so (module argument `request`), through
//! real libpam: a setuid copy of `pam-driver` named `sudo` is run by the
//! real test user (real uid = the caller, effective uid 0, as under sudo),
//! imitating `sudo <argv>`. The test user has an enrolled Ed25519 key in a
//! home of its own (bind-mounted in the sandbox's namespace); the test
//! plays the approver. Real sudo in request mode is in `pam_sudo_su`.
//!
//! Needs root; without it every test prints a skip notice and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use openape_tests::harness::{
    self, Output, Run, Sandbox, TEST_USER, TestUser, artefact, set_owner_mode, test_user,
};
use openape_tests::idp::{TestIdp, TokenSwap};
use pam_openape::request::keys;
use serde_json::Value;

const AGENT: &str = "agent@example.com";
const SUCCESS: &str = "0";
const PERM_DENIED: &str = "6";
const AUTH_ERR: &str = "7";

struct P {
    idp: TestIdp,
    sb: Sandbox,
    home: PathBuf,
    user: &'static TestUser,
    driver: PathBuf,
    module: String,
}

fn key_from_urandom() -> SigningKey {
    use std::io::Read as _;
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut seed)
        .unwrap();
    SigningKey::from_bytes(&seed)
}

fn setup(name: &str, with_key: bool) -> Option<P> {
    if !harness::require_root() {
        return None;
    }
    let user = test_user();
    let idp = TestIdp::start();
    let mut sb = Sandbox::new(name);
    let home = sb.with_user_home();
    let mut cfg = sb.config(&idp.issuer());
    cfg.tail = "[request]\ntimeout = 30\n".into();
    sb.write_config(&cfg.render());
    let so = fs::read(artefact("libpam_openape.so")).unwrap();
    let module = sb
        .write_file("pam_openape.so", &so, 0, 0, 0o644)
        .to_string_lossy()
        .into_owned();
    fs::create_dir_all(sb.path("pam.d")).unwrap();
    let driver = sb.install_setuid(&artefact("pam-driver"), "bin/sudo");
    let p = P {
        idp,
        sb,
        home,
        user,
        driver,
        module,
    };
    if with_key {
        p.idp.enrol_agent_key(&p.home, user, AGENT, None);
    }
    Some(p)
}

impl P {
    /// The `sudo` stack: `{so}` and `{cfg}` filled in.
    fn stack(&self, text: &str) {
        let t = text
            .replace("{so}", &self.module)
            .replace("{cfg}", &self.sb.config_path().to_string_lossy());
        self.sb.write_file("pam.d/sudo", t.as_bytes(), 0, 0, 0o644);
    }

    /// `sudo ARGS` through the setuid driver, as the test user.
    fn drive(&self, args: &[&str], steps: &str) -> Output {
        self.drive_env(args, steps, &[])
    }

    /// `drive` with more PAMD_* settings for the driver.
    fn drive_env(&self, args: &[&str], steps: &str, env: &[(&str, &str)]) -> Output {
        self.driver_run(args, steps, env).as_test_user().output()
    }

    /// `drive` from a process holding gid `gid` and only `groups`.
    fn drive_with_ids(&self, args: &[&str], steps: &str, gid: u32, groups: &[u32]) -> Output {
        self.driver_run(args, steps, &[])
            .as_test_user_with_ids(gid, groups)
            .output()
    }

    fn driver_run(&self, args: &[&str], steps: &str, env: &[(&str, &str)]) -> Run {
        Run::new(&self.driver)
            .arg0("sudo")
            .args(args)
            .env("PAMD_SERVICE", "sudo")
            .env("PAMD_CONFDIR", self.sb.path("pam.d"))
            .env("PAMD_USER", TEST_USER)
            .env("PAMD_RUSER", TEST_USER)
            .env("PAMD_STEPS", steps)
            .envs(env.iter().copied())
            .config_ns(self.sb.config_ns())
            .timeout(Duration::from_secs(60))
    }

    /// `drive` with the interrupts blocked for the whole run, as sudo
    /// blocks them while it authenticates.
    fn drive_blocked(&self, args: &[&str], steps: &str) -> Output {
        self.drive_env(args, steps, &[("PAMD_BLOCK_SIGNALS", "1")])
    }

    /// Pids of the processes running this sandbox's driver.
    fn driver_pids(&self) -> Vec<i32> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
                (fs::read_link(e.path().join("exe")).ok()? == self.driver).then_some(pid)
            })
            .collect()
    }

    /// Send `sig` to every process running this sandbox's driver (the
    /// host and its request child).
    fn signal_driver(&self, sig: i32) -> usize {
        let pids = self.driver_pids();
        for pid in &pids {
            // SAFETY: kill with a pid read from /proc and a signal number.
            unsafe { libc::kill(*pid, sig) };
        }
        pids.len()
    }

    /// Drive on a thread; once a grant is pending, `decide(id)`.
    fn drive_and_decide(&self, args: &[&str], steps: &str, decide: impl FnOnce(&str)) -> Output {
        std::thread::scope(|s| {
            let h = s.spawn(|| self.drive(args, steps));
            let id = self
                .idp
                .wait_for_pending(Duration::from_secs(20))
                .unwrap_or_else(|| panic!("no pending grant: {:?}", self.idp.requests()));
            decide(&id);
            h.join().unwrap()
        })
    }

    fn events(&self) -> Vec<String> {
        self.sb
            .audit_lines()
            .iter()
            .map(|l| l["event"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn last(&self) -> Value {
        self.sb.last_audit()
    }
}

fn code(out: &Output, step: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{step}=")))
        .unwrap_or_else(|| panic!("no {step}= line\n{out}"))
        .to_string()
}

const AUTH_REQUEST: &str = "auth required {so} config={cfg} nonint request\n";

#[test]
fn approved_request_authenticates_that_argv_once() {
    let Some(p) = setup("pamreq-ok", true) else {
        return;
    };
    p.stack(AUTH_REQUEST);
    let out = p.drive_and_decide(&["id", "-u"], "auth", |id| {
        assert!(p.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    // The URL reached the user through the conversation: PAM_TEXT_INFO (4)
    // when the driver has a controlling terminal, else PAM_ERROR_MSG (3),
    // which hosts print on stderr rather than on the command's stdout.
    let id = p.idp.grant_ids().pop().unwrap();
    let link = format!(
        "Approve at: {}/grant-approval?grant_id={id}",
        p.idp.issuer()
    );
    assert!(
        out.stdout.contains(&format!("msg=4:{link}"))
            || out.stdout.contains(&format!("msg=3:{link}")),
        "{out}"
    );
    assert_eq!(p.events(), ["grant_requested", "grant_run"]);
    let l = p.last();
    assert_eq!(l["command"], serde_json::json!(["id", "-u"]));
    assert_eq!(l["run_as"], "root");
    assert_eq!(l["via"], "pam:sudo");
    assert_eq!(l["grant_id"], id.as_str());
    assert_eq!(p.idp.consume_count(&id), 1);
    // The request named exactly sudo's command and target.
    let reqs = p.idp.requests();
    assert!(
        reqs.iter().any(|r| r.1.starts_with("/api/grants")),
        "{reqs:?}"
    );
}

#[test]
fn denied_request_and_the_deadline_refuse_and_cancel() {
    let Some(p) = setup("pamreq-deny", true) else {
        return;
    };
    p.stack(AUTH_REQUEST);
    let out = p.drive_and_decide(&["id", "-u"], "auth", |id| {
        assert!(p.idp.deny(id, harness::APPROVER));
    });
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    let l = p.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request")),
        "{l}"
    );

    // Deadline: nobody decides; the request is cancelled by its requester.
    p.stack(&AUTH_REQUEST.replace("request\n", "request request_timeout=2\n"));
    let out = p.drive(&["id", "-g"], "auth");
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    let id = p.idp.grant_ids().pop().unwrap();
    let (status, by) = p.idp.grant_state(&id).unwrap();
    assert_eq!(status, "denied", "the request must be cancelled");
    assert_eq!(by.as_deref(), Some(AGENT));
    assert_eq!(p.last()["step"], "request");
    assert_eq!(p.idp.consume_count(&id), 0);
}

#[test]
fn a_token_for_another_command_is_refused_at_the_command_step() {
    let Some(p) = setup("pamreq-swap", true) else {
        return;
    };
    p.stack(AUTH_REQUEST);
    p.idp.set_token_swap(Some(TokenSwap {
        command: Some(vec!["id".into(), "-g".into()]),
        ..TokenSwap::default()
    }));
    let out = p.drive_and_decide(&["id", "-u"], "auth", |id| {
        assert!(p.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert_eq!(p.last()["step"], "command");
    let id = p.idp.grant_ids().pop().unwrap();
    assert_eq!(p.idp.consume_count(&id), 0);
}

#[test]
fn without_an_identity_nothing_is_requested() {
    let Some(p) = setup("pamreq-none", false) else {
        return;
    };
    p.stack(AUTH_REQUEST);
    let out = p.drive(&["id", "-u"], "auth");
    assert_ne!(code(&out, "auth"), SUCCESS, "{out}");
    assert!(!out.stdout.contains("Approve at"), "{out}");
    assert!(p.idp.grant_ids().is_empty());
    assert!(!p.events().iter().any(|e| e == "grant_requested"));
}

#[test]
fn unreadable_or_symlinked_keys_are_never_read_and_nothing_is_sent() {
    let Some(p) = setup("pamreq-key", false) else {
        return;
    };
    p.stack(AUTH_REQUEST);
    fs::create_dir_all(p.home.join(".ssh")).unwrap();
    set_owner_mode(&p.home.join(".ssh"), p.user.uid, p.user.gid, 0o700);
    std::os::unix::fs::symlink("/etc/shadow", p.home.join(".ssh/id_ed25519")).unwrap();
    let out = p.drive(&["id", "-u"], "auth");
    assert_ne!(code(&out, "auth"), SUCCESS, "{out}");
    assert!(!out.stdout.contains("root:"), "{out}");
    assert!(p.idp.requests().is_empty(), "{:?}", p.idp.requests());

    fs::remove_file(p.home.join(".ssh/id_ed25519")).unwrap();
    p.sb.write_file(
        "home/.ssh/id_ed25519",
        keys::pkcs8_pem(&key_from_urandom()).as_bytes(),
        0,
        0,
        0o600,
    );
    let out = p.drive(&["id", "-u"], "auth");
    assert_ne!(code(&out, "auth"), SUCCESS, "{out}");
    assert!(p.idp.requests().is_empty(), "{:?}", p.idp.requests());
}

/// The agent path: a NOPASSWD sudo rule skips authentication (and `sudo
/// -n` never prompts), but the account phase with `grant_only request`
/// asks for the grant, waits and verifies it for this very argv.
#[test]
fn account_phase_requests_for_nopasswd_agents() {
    let Some(p) = setup("pamreq-acct", true) else {
        return;
    };
    p.stack("account required {so} config={cfg} grant_only request\n");
    let out = p.drive_and_decide(&["-n", "id", "-u"], "acct", |id| {
        assert!(p.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(code(&out, "acct"), SUCCESS, "{out}");
    assert_eq!(p.events(), ["grant_requested", "grant_run"]);

    let out = p.drive_and_decide(&["-n", "id", "-u"], "acct", |id| {
        assert!(p.idp.deny(id, harness::APPROVER));
    });
    assert_eq!(code(&out, "acct"), PERM_DENIED, "{out}");
    assert_eq!(p.last()["step"], "request");
}

/// su in request mode: `su - -c STRING root` asks for a grant for exactly
/// that string as root (service su-l).
#[test]
fn su_login_requests_the_dash_c_string() {
    let Some(p) = setup("pamreq-su", true) else {
        return;
    };
    let t = AUTH_REQUEST
        .replace("{so}", &p.module)
        .replace("{cfg}", &p.sb.config_path().to_string_lossy());
    p.sb.write_file("pam.d/su-l", t.as_bytes(), 0, 0, 0o644);
    let su = p.sb.install_setuid(&artefact("pam-driver"), "bin/su");
    let run = || {
        Run::new(&su)
            .arg0("su")
            .args(["-", "-c", "id -u", "root"])
            .env("PAMD_SERVICE", "su-l")
            .env("PAMD_CONFDIR", p.sb.path("pam.d"))
            .env("PAMD_USER", "root")
            .env("PAMD_RUSER", TEST_USER)
            .config_ns(p.sb.config_ns())
            .as_test_user()
            .timeout(Duration::from_secs(60))
            .output()
    };
    let out = std::thread::scope(|s| {
        let h = s.spawn(run);
        let id = p.idp.wait_for_pending(Duration::from_secs(20)).unwrap();
        assert!(p.idp.approve(&id, harness::APPROVER));
        h.join().unwrap()
    });
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    let l = p.last();
    assert_eq!(l["event"], "grant_run");
    assert_eq!(l["command"], serde_json::json!(["id -u"]));
    assert_eq!(l["via"], "pam:su-l");
}

/// An IdP that never answers cannot hang the login: the module gives up
/// within its bound (the wait plus a few HTTP deadlines) and refuses.
#[test]
fn an_idp_that_never_answers_is_bounded() {
    let Some(p) = setup("pamreq-hang", true) else {
        return;
    };
    p.stack(&AUTH_REQUEST.replace("request\n", "request request_timeout=2\n"));
    p.idp
        .set_fault_for("/api/agent/", openape_tests::idp::Fault::Hang);
    let start = std::time::Instant::now();
    let out = p.drive(&["id", "-u"], "auth");
    assert_ne!(code(&out, "auth"), SUCCESS, "{out}");
    // [http] timeout is 2 s in the test config: 2 s wait + 5 × 2 s + 2 s.
    assert!(
        start.elapsed() < Duration::from_secs(16),
        "{:?}",
        start.elapsed()
    );
    assert!(!p.events().iter().any(|e| e == "grant_run"));
}

/// Ctrl-C (pending, as sudo blocks it) that lands while the request child
/// is already fetching the approved grant's token: the module must still
/// refuse, consume nothing and log the refusal, not authenticate.
#[test]
fn an_interrupt_while_the_token_is_fetched_authenticates_nothing() {
    let Some(p) = setup("pamreq-sig-fetch", true) else {
        return;
    };
    p.stack(AUTH_REQUEST);
    let (out, id) = std::thread::scope(|s| {
        let h = s.spawn(|| p.drive_blocked(&["id", "-u"], "auth"));
        let id = p
            .idp
            .wait_for_pending(Duration::from_secs(20))
            .expect("no pending grant");
        // The token answer takes 1.5 s (under http.timeout = 2 s).
        let path = format!("/api/grants/{id}/token");
        assert!(
            p.idp
                .approve_with_slow_token(&id, harness::APPROVER, Duration::from_millis(1500))
        );
        let fetching = |p: &P| {
            p.idp
                .requests()
                .iter()
                .any(|(m, r)| m == "POST" && *r == path)
        };
        let start = std::time::Instant::now();
        while !fetching(&p) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(fetching(&p), "the token was never fetched");
        std::thread::sleep(Duration::from_millis(200));
        assert!(p.signal_driver(libc::SIGINT) >= 1);
        (h.join().unwrap(), id)
    });
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert_eq!(p.idp.consume_count(&id), 0);
    assert!(
        !p.events().iter().any(|e| e == "grant_run"),
        "{:?}",
        p.events()
    );
    let l = p.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request")),
        "{l}"
    );
}

/// util-linux su keeps a caller's SIG_IGN for SIGCHLD while it
/// authenticates (measured), so the kernel reaps the request child the
/// moment it ends, and its pid is free. Here the host (the driver, set up
/// that way) is held up showing the approval link (a stopped terminal)
/// while the child reaches its deadline and ends; another process, not the
/// host's, then gets the child's pid. When the host comes back past the
/// deadline, the module stops "the child": it must not kill that process.
#[test]
fn a_pid_reused_after_the_request_child_ended_is_not_killed() {
    let Some(p) = setup("pamreq-pid-reuse", true) else {
        return;
    };
    // Deadline 1 s; the module gives up 1 + 5 * 2 + 2 = 13 s after start.
    p.stack(&AUTH_REQUEST.replace("request\n", "request request_timeout=1\n"));
    let (out, placed) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            p.drive_env(
                &["id", "-u"],
                "auth",
                &[
                    ("PAMD_IGNORE_SIGCHLD", "1"),
                    ("PAMD_INFO_DELAY_MS", "15000"),
                ],
            )
        });
        // The request child: the driver process whose parent is a driver.
        let start = std::time::Instant::now();
        let mut child = None;
        while child.is_none() && start.elapsed() < Duration::from_secs(10) {
            let pids = p.driver_pids();
            child = pids.iter().copied().find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|st| {
                        st.lines()
                            .find_map(|l| l.strip_prefix("PPid:"))
                            .and_then(|v| v.trim().parse::<i32>().ok())
                    })
                    .is_some_and(|ppid| pids.contains(&ppid))
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = child.expect("no request child");
        // It ends at its deadline (after cancelling) and the kernel reaps it.
        let start = std::time::Instant::now();
        while fs::metadata(format!("/proc/{child}")).is_ok()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            fs::metadata(format!("/proc/{child}")).is_err(),
            "the request child did not end"
        );
        // Another process takes its pid (ns_last_pid makes it the next).
        let mut placed = None;
        for _ in 0..100 {
            fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", child - 1)).unwrap();
            let mut v = std::process::Command::new("/bin/sleep")
                .arg("60")
                .spawn()
                .unwrap();
            if i32::try_from(v.id()).ok() == Some(child) {
                placed = Some(v);
                break;
            }
            let _ = v.kill();
            let _ = v.wait();
        }
        (h.join().unwrap(), placed)
    });
    let Some(mut victim) = placed else {
        eprintln!("skipped: could not place a process at the freed pid");
        return;
    };
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert!(
        alive,
        "the module killed pid {}, which was no longer its request child",
        victim.id()
    );
    assert_eq!(p.last()["step"], "request");
}

/// The request child becomes the caller with the groups the host
/// process holds. The primary group came from passwd instead: a process
/// that no longer held it (a service's `Group=`, `setpriv --regid`) got it
/// back in the child, which read a key only that group may read and
/// logged in as its agent. (`escapes` takes the process's gid; this is
/// the module's side of `request_e2e::a_dropped_group_does_not_come_back_for_the_request`.)
#[test]
fn a_primary_group_the_caller_dropped_does_not_come_back_for_the_request() {
    let Some(p) = setup("pamreq-gid", true) else {
        return;
    };
    p.stack(&AUTH_REQUEST.replace("request\n", "request request_timeout=2\n"));
    // The key, readable through the user's primary group only.
    set_owner_mode(&p.home.join(".ssh/id_ed25519"), 0, p.user.gid, 0o640);
    // Control: holding that group, the key is read and a request made
    // (nobody decides; the deadline cancels it).
    let out = p.drive(&["id", "-u"], "auth");
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert_eq!(p.idp.grant_ids().len(), 1, "{out}");
    // The same user holding only the extra group, as gid and as the one
    // supplementary group: refused before any request.
    let extra = p.user.extra_gid;
    let out = p.drive_with_ids(&["id", "-u"], "auth", extra, &[extra]);
    assert_ne!(code(&out, "auth"), SUCCESS, "{out}");
    assert_eq!(p.idp.grant_ids().len(), 1, "{:?}", p.idp.requests());
    let l = p.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request")),
        "{l}"
    );
    assert!(
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("permission denied")),
        "{l}"
    );
}
