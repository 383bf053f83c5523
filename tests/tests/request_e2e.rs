//! End-to-end suite for request mode (DESIGN.md, "Request-and-wait"): the
//! setuid `escapes`, run by the real non-root test user with no grant,
//! asks the test IdP for one, waits, and runs the command once approved.
//! The test plays the approver. Each test has its own IdP, sandbox and a
//! home directory of its own for the test user (bind-mounted in the
//! config namespace), holding an enrolled Ed25519 key.
//!
//! Needs root; without it every test prints a skip notice and passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use openape_tests::harness::{self, Output, Run, Sandbox, TestUser, set_owner_mode, test_user};
use openape_tests::idp::{Fault, TestIdp, TokenSwap};
use pam_openape::request::keys;
use serde_json::Value;

const AGENT: &str = "agent@example.com";
const APPROVER: &str = harness::APPROVER;

struct T {
    idp: TestIdp,
    sb: Sandbox,
    home: PathBuf,
    user: &'static TestUser,
}

fn random_key() -> SigningKey {
    let mut seed = [0u8; 32];
    use std::io::Read as _;
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut seed)
        .unwrap();
    SigningKey::from_bytes(&seed)
}

/// A sandbox whose config allows request mode against a fresh IdP, and a
/// home for the test user with an enrolled key at `~/.ssh/id_ed25519`
/// (email in the `.pub` comment). `None` when not root.
fn setup(name: &str) -> Option<T> {
    setup_with(name, "timeout = 30\n", true)
}

fn setup_with(name: &str, request_section: &str, with_key: bool) -> Option<T> {
    if !harness::require_root() {
        return None;
    }
    let user = test_user();
    let idp = TestIdp::start();
    let mut sb = Sandbox::new(name);
    let home = sb.with_user_home();
    let mut cfg = sb.config(&idp.issuer());
    cfg.tail = format!("[request]\n{request_section}");
    sb.write_config(&cfg.render());
    let t = T {
        idp,
        sb,
        home,
        user,
    };
    if with_key {
        t.idp.enrol_agent_key(&t.home, user, AGENT, None);
    }
    Some(t)
}

impl T {
    /// Write `rel` under the user's home (parents made, owned by the user).
    fn user_file(&self, rel: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = self.home.join(rel);
        let mut dir = p.parent().unwrap().to_path_buf();
        let mut made = Vec::new();
        while !dir.exists() {
            made.push(dir.clone());
            dir = dir.parent().unwrap().to_path_buf();
        }
        for d in made.iter().rev() {
            fs::create_dir(d).unwrap();
            set_owner_mode(d, self.user.uid, self.user.gid, 0o700);
        }
        fs::write(&p, content).unwrap();
        set_owner_mode(&p, self.user.uid, self.user.gid, mode);
        p
    }

    /// `escapes ARGS` as the test user, with a longer timeout.
    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        self.sb
            .escapes_run(args)
            .as_test_user()
            .timeout(timeout)
            .output()
    }

    /// Start `escapes ARGS` on a thread, play `approver` on the main
    /// thread once the grant is pending, return the run's output.
    fn run_and_decide(&self, args: &[&str], decide: impl FnOnce(&str)) -> Output {
        std::thread::scope(|s| {
            let h = s.spawn(|| self.run(args, Duration::from_secs(40)));
            let id = self
                .idp
                .wait_for_pending(Duration::from_secs(15))
                .unwrap_or_else(|| panic!("no pending grant; requests: {:?}", self.idp.requests()));
            decide(&id);
            h.join().unwrap()
        })
    }

    fn events(&self) -> Vec<(String, Option<String>)> {
        self.sb
            .audit_lines()
            .iter()
            .map(|l| {
                (
                    l["event"].as_str().unwrap_or("").to_string(),
                    l["step"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    fn last(&self) -> Value {
        self.sb.last_audit()
    }

    fn count(&self, method: &str, prefix: &str) -> usize {
        self.idp
            .requests()
            .iter()
            .filter(|(m, p)| m == method && p.starts_with(prefix))
            .count()
    }
}

fn argv<'a>(pre: &[&'a str], cmd: &'a [String]) -> Vec<&'a str> {
    let mut v = pre.to_vec();
    v.push("--");
    v.extend(cmd.iter().map(String::as_str));
    v
}

/// Send `sig` to every process running this sandbox's escapes (the
/// privileged parent and its request child, as a terminal would); with
/// signal 0, only count them.
fn signal_escapes(sb: &Sandbox, sig: i32) -> usize {
    let want = sb.escapes();
    let mut n = 0;
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let first = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if first == want.as_os_str().as_encoded_bytes() {
            // SAFETY: kill with a pid read from /proc and a signal number.
            unsafe { libc::kill(pid, sig) };
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------

#[test]
fn approved_request_runs_once_as_the_target_and_logs_it() {
    let Some(t) = setup("req-approve") else {
        return;
    };
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run_and_decide(&argv(&["--reason", "deploy"], &cmd), |id| {
        std::thread::sleep(Duration::from_millis(300));
        assert!(t.idp.approve(id, APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("ran"));
    let ids = t.idp.grant_ids();
    assert_eq!(ids.len(), 1);
    let id = &ids[0];
    assert!(
        out.stderr.contains(&format!(
            "Approve at: {}/grant-approval?grant_id={id}",
            t.idp.issuer()
        )),
        "{out}"
    );
    assert_eq!(t.idp.consume_count(id), 1);
    // The marker is root's: the command ran as the target.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(t.sb.marker_path("ran")).unwrap().uid(), 0);
    let lines = t.sb.audit_lines();
    assert_eq!(
        t.events(),
        vec![("grant_requested".into(), None), ("grant_run".into(), None)],
        "{lines:?}"
    );
    assert_eq!(lines[0]["grant_id"].as_str(), Some(id.as_str()));
    assert_eq!(lines[0]["agent"].as_str(), Some(AGENT));
    assert_eq!(lines[0]["command"], serde_json::json!(cmd));
    assert_eq!(lines[1]["grant_id"].as_str(), Some(id.as_str()));
    assert_eq!(lines[1]["decided_by"].as_str(), Some(APPROVER));
    // The agent logged in with its key; no token in any audit line.
    assert_eq!(t.count("POST", "/api/agent/challenge"), 1);
    assert!(!t.sb.audit_text().contains("eyJ"));
    // Picking the used once-grant up again: refused, nothing runs.
    t.sb.remove_marker("ran");
    let again = t.run(&argv(&["--grant-id", id], &cmd), Duration::from_secs(20));
    assert_eq!(again.code, 5, "{again}");
    assert!(!t.sb.marker_exists("ran"));
    assert_eq!(t.last()["step"].as_str(), Some("request"));
}

#[test]
fn denied_request_exits_5_and_runs_nothing() {
    let Some(t) = setup("req-deny") else { return };
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run_and_decide(&argv(&[], &cmd), |id| {
        assert!(t.idp.deny(id, APPROVER));
    });
    assert_eq!(out.code, 5, "{out}");
    assert!(!t.sb.marker_exists("ran"));
    assert_eq!(
        t.events(),
        vec![
            ("grant_requested".into(), None),
            ("denied".into(), Some("request".into()))
        ]
    );
    assert!(t.last()["reason"].as_str().unwrap().contains("denied"));
}

#[test]
fn deadline_exits_5_and_cancels_the_request_at_the_idp() {
    let Some(t) = setup("req-deadline") else {
        return;
    };
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run(
        &argv(&["--wait-timeout", "2"], &cmd),
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 5, "{out}");
    assert!(out.elapsed < Duration::from_secs(8), "{out}");
    assert!(!t.sb.marker_exists("ran"));
    let id = &t.idp.grant_ids()[0];
    assert_eq!(
        t.idp.grant_state(id),
        Some(("denied".into(), Some(AGENT.into()))),
        "the request must be cancelled by its requester"
    );
    assert_eq!(t.last()["step"].as_str(), Some("request"));
    // Polled about once a second, never faster.
    let polls = t.count("GET", &format!("/api/grants/{id}"));
    assert!((1..=4).contains(&polls), "{polls} polls in 2 s");
}

#[test]
fn signals_while_waiting_cancel_and_run_nothing() {
    let Some(t) = setup("req-signal") else { return };
    let cmd = t.sb.marker_cmd("ran");
    for (sig, code) in [
        (libc::SIGINT, 130),
        (libc::SIGTERM, 143),
        (libc::SIGHUP, 129),
        (libc::SIGQUIT, 131),
    ] {
        let before = t.idp.grant_ids().len();
        let out = std::thread::scope(|s| {
            let h = s.spawn(|| t.run(&argv(&[], &cmd), Duration::from_secs(30)));
            let start = Instant::now();
            while t.idp.grant_ids().len() == before && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
            assert!(signal_escapes(&t.sb, sig) >= 1);
            h.join().unwrap()
        });
        assert_eq!(out.code, code, "signal {sig}: {out}");
        assert!(out.stderr.contains("cancelled"), "{out}");
        let id = t.idp.grant_ids()[before].clone();
        assert_eq!(
            t.idp.grant_state(&id),
            Some(("denied".into(), Some(AGENT.into())))
        );
        assert!(!t.sb.marker_exists("ran"));
        let l = t.last();
        assert_eq!(
            (l["event"].as_str(), l["step"].as_str()),
            (Some("denied"), Some("request"))
        );
    }
}

/// Ctrl-C that lands while the child is already fetching the approved
/// grant's token (the approval and the interrupt cross): the caller said
/// stop, so nothing runs and the grant is not spent, even though a token
/// arrives after the interrupt.
#[test]
fn an_interrupt_while_the_token_is_fetched_runs_nothing() {
    let Some(t) = setup("req-sig-fetch") else {
        return;
    };
    let cmd = t.sb.marker_cmd("ran");
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| t.run(&argv(&[], &cmd), Duration::from_secs(30)));
        let id = t
            .idp
            .wait_for_pending(Duration::from_secs(15))
            .expect("no pending grant");
        // The token answer takes 1.5 s (under http.timeout = 2 s): the
        // interrupt arrives while the child waits for it.
        let path = format!("/api/grants/{id}/token");
        assert!(
            t.idp
                .approve_with_slow_token(&id, APPROVER, Duration::from_millis(1500))
        );
        let start = Instant::now();
        while t.count("POST", &path) == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(t.count("POST", &path), 1, "the token was never fetched");
        std::thread::sleep(Duration::from_millis(200));
        assert!(signal_escapes(&t.sb, libc::SIGINT) >= 1);
        (h.join().unwrap(), id)
    });
    let (out, id) = out;
    assert_eq!(out.code, 130, "{out}");
    assert!(!t.sb.marker_exists("ran"), "ran after Ctrl-C: {out}");
    assert_eq!(t.idp.consume_count(&id), 0);
    let l = t.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request"))
    );
}

/// The `grant_requested` line cannot be written (the audit file system
/// is full): nothing runs, and the request just made is cancelled at the
/// IdP before escapes exits (as the PAM module does), so an approver is
/// never asked to approve a request nobody will wait for or log.
#[test]
fn an_unwritable_grant_requested_line_cancels_the_request() {
    let Some(t) = setup("req-audit-full") else {
        return;
    };
    let Some(_full) = harness::FullTmpfs::mount(&t.sb.path("log")) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run(&argv(&[], &cmd), Duration::from_secs(30));
    assert_eq!(out.code, 1, "{out}");
    assert!(!t.sb.marker_exists("ran"));
    let ids = t.idp.grant_ids();
    assert_eq!(ids.len(), 1, "{out}");
    assert_eq!(
        t.idp.grant_state(&ids[0]),
        Some(("denied".into(), Some(AGENT.into()))),
        "the request was left pending at the IdP: {out}"
    );
}

#[test]
fn a_token_for_another_command_host_or_user_is_refused_at_its_step() {
    let Some(t) = setup("req-swap") else { return };
    let cmd = t.sb.marker_cmd("ran");
    let other = vec![
        "touch".to_string(),
        t.sb.marker_path("other").display().to_string(),
    ];
    for (swap, step) in [
        (
            TokenSwap {
                command: Some(other.clone()),
                ..TokenSwap::default()
            },
            "command",
        ),
        (
            TokenSwap {
                target_host: Some("elsewhere".into()),
                ..TokenSwap::default()
            },
            "host",
        ),
        (
            TokenSwap {
                run_as: Some("nobody".into()),
                ..TokenSwap::default()
            },
            "target_user",
        ),
    ] {
        t.idp.set_token_swap(Some(swap));
        let out = t.run_and_decide(&argv(&[], &cmd), |id| {
            assert!(t.idp.approve(id, APPROVER));
        });
        assert_eq!(out.code, 5, "{step}: {out}");
        assert!(!t.sb.marker_exists("ran") && !t.sb.marker_exists("other"));
        assert_eq!(t.last()["step"].as_str(), Some(step), "{out}");
    }
}

#[test]
fn approver_not_allowed_or_self_approved_is_refused() {
    let Some(t) = setup("req-approver") else {
        return;
    };
    let cmd = t.sb.marker_cmd("ran");
    for approver in ["mallory@example.com", AGENT] {
        let out = t.run_and_decide(&argv(&[], &cmd), |id| {
            assert!(t.idp.approve(id, approver));
        });
        assert_eq!(out.code, 5, "{approver}: {out}");
        assert!(!t.sb.marker_exists("ran"));
        assert_eq!(t.last()["step"].as_str(), Some("approver"));
    }
}

#[test]
fn apes_session_file_is_used_without_a_challenge() {
    let Some(t) = setup_with("req-session", "timeout = 30\n", false) else {
        return;
    };
    let token = t.idp.login_token(AGENT);
    let now = pam_openape::time::now_unix();
    t.user_file(
        ".config/apes/auth.json",
        serde_json::json!({"idp": t.idp.issuer(), "access_token": token, "email": AGENT, "expires_at": now + 3600})
            .to_string()
            .as_bytes(),
        0o600,
    );
    t.idp.set_auto_approve(Some(APPROVER));
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run(&argv(&[], &cmd), Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("ran"));
    assert_eq!(t.count("POST", "/api/agent/"), 0, "{:?}", t.idp.requests());
    // A session about to expire is not used (and there is no key).
    t.user_file(
        ".config/apes/auth.json",
        serde_json::json!({"idp": t.idp.issuer(), "access_token": token, "email": AGENT, "expires_at": now + 20})
            .to_string()
            .as_bytes(),
        0o600,
    );
    let out = t.run(&["-n", "--", "true"], Duration::from_secs(20));
    assert_eq!(out.code, 2, "{out}");
}

/// The `agent` of `grant_requested` is who the IdP says asked (the
/// requester it bound to the bearer), not the `email` the caller wrote
/// into their session file.
#[test]
fn grant_requested_names_the_requester_the_idp_bound() {
    let Some(t) = setup_with("req-session-who", "timeout = 30\n", false) else {
        return;
    };
    let token = t.idp.login_token(AGENT);
    let now = pam_openape::time::now_unix();
    t.user_file(
        ".config/apes/auth.json",
        serde_json::json!({"idp": t.idp.issuer(), "access_token": token, "email": "ceo@example.com", "expires_at": now + 3600})
            .to_string()
            .as_bytes(),
        0o600,
    );
    t.idp.set_auto_approve(Some(APPROVER));
    let out = t.run(&["--", "true"], Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    let lines = t.sb.audit_lines();
    let asked: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "grant_requested")
        .collect();
    assert_eq!(asked.len(), 1, "{lines:?}");
    assert_eq!(asked[0]["agent"].as_str(), Some(AGENT), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.to_string().contains("ceo@")),
        "{lines:?}"
    );
}

#[test]
fn unreadable_or_symlinked_keys_exit_1_without_any_network() {
    let Some(t) = setup_with("req-badkey", "timeout = 30\n", false) else {
        return;
    };
    let key = random_key();
    // A root-only key given with --key.
    let root_key =
        t.sb.write_file("rootkey", keys::pkcs8_pem(&key).as_bytes(), 0, 0, 0o600);
    let out = t.run(
        &[
            "--key",
            root_key.to_str().unwrap(),
            "--agent-email",
            AGENT,
            "--",
            "true",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("permission denied"), "{out}");
    // The default key path as a symlink to /etc/shadow.
    t.user_file(".ssh/.keep", b"", 0o600);
    std::os::unix::fs::symlink("/etc/shadow", t.home.join(".ssh/id_ed25519")).unwrap();
    let out = t.run(&["--", "true"], Duration::from_secs(20));
    assert_eq!(out.code, 1, "{out}");
    assert!(!out.stderr.contains("root:"), "{out}");
    assert!(t.idp.requests().is_empty(), "{:?}", t.idp.requests());
    let l = t.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request"))
    );
}

/// The request child reads keys with the groups the calling process
/// holds, not with every group the database lists for the caller: a
/// process that dropped a group (`setpriv --clear-groups`, a service's
/// `SupplementaryGroups=`) must not read that group's agent key through
/// escapes and log in as that agent.
#[test]
fn a_dropped_group_does_not_come_back_for_the_request() {
    let Some(t) = setup_with("req-groups", "timeout = 30\n", false) else {
        return;
    };
    let key = random_key();
    t.idp.register_agent(AGENT, key.verifying_key().to_bytes());
    // Readable through the test user's supplementary group only.
    let shared = t.sb.write_file(
        "groupkey",
        keys::pkcs8_pem(&key).as_bytes(),
        0,
        t.user.extra_gid,
        0o640,
    );
    let args = [
        "--key",
        shared.to_str().unwrap(),
        "--agent-email",
        AGENT,
        "--no-wait",
        "--",
        "true",
    ];
    // Control: holding the group, the key is read and a request is made.
    let out = t.run(&args, Duration::from_secs(20));
    assert_eq!(out.code, 75, "{out}");
    assert_eq!(t.idp.grant_ids().len(), 1, "{out}");
    // The same user without that group: refused before any request.
    let out =
        t.sb.escapes_run(&args)
            .as_test_user_with_groups(&[t.user.gid])
            .timeout(Duration::from_secs(20))
            .output();
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("permission denied"), "{out}");
    assert_eq!(t.idp.grant_ids().len(), 1, "{:?}", t.idp.requests());
    let l = t.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request"))
    );
}

#[test]
fn no_identity_keeps_the_old_behaviour() {
    let Some(t) = setup_with("req-none", "timeout = 30\n", false) else {
        return;
    };
    let out = t.run(&["-n", "--", "true"], Duration::from_secs(20));
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("no grant given"), "{out}");
    assert!(t.idp.requests().is_empty());
    // And [request] enabled = false never asks, even with a key.
    let Some(t) = setup_with("req-off", "enabled = false\n", true) else {
        return;
    };
    let out = t.run(&["-n", "--", "true"], Duration::from_secs(20));
    assert_eq!(out.code, 2, "{out}");
    assert!(t.idp.requests().is_empty());
}

#[test]
fn rate_limit_storm_is_honoured() {
    let Some(t) = setup("req-429") else { return };
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run_and_decide(&argv(&[], &cmd), |id| {
        let path = format!("/api/grants/{id}");
        t.idp.set_fault_for(&path, Fault::RateLimited(3));
        let before = t.count("GET", &path);
        std::thread::sleep(Duration::from_secs(7));
        let during = t.count("GET", &path) - before;
        // Retry-After: 3 over 7 s: at most 3 polls (plus one in flight).
        assert!(
            during <= 4,
            "{during} polls during a 7 s storm with Retry-After: 3"
        );
        t.idp.clear_faults();
        assert!(t.idp.approve(id, APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("ran"));
}

#[test]
fn auto_approved_and_reused_grants_run_without_waiting() {
    let Some(t) = setup("req-auto") else { return };
    t.idp.set_auto_approve(Some(APPROVER));
    let cmd = t.sb.marker_cmd("auto");
    let out = t.run(&argv(&[], &cmd), Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("auto"));
    assert!(out.elapsed < Duration::from_secs(3), "{out}");
    assert_eq!(
        t.count("GET", "/api/grants/"),
        0,
        "no poll for an approved grant"
    );
    t.idp.set_auto_approve(None);

    // Timed grant: approved once, then reused by the IdP for the same
    // command: the second run neither creates a grant nor waits.
    t.idp.set_reuse_grants(true);
    let cmd = t.sb.marker_cmd("timed");
    let args = argv(&["--grant-type", "timed", "--duration", "600"], &cmd);
    let out = t.run_and_decide(&args, |id| {
        assert!(t.idp.approve(id, APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    let grants = t.idp.grant_ids().len();
    t.sb.remove_marker("timed");
    let out = t.run(&args, Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("timed"));
    assert!(out.elapsed < Duration::from_secs(3), "{out}");
    assert_eq!(
        t.idp.grant_ids().len(),
        grants,
        "the timed grant was reused"
    );
}

#[test]
fn no_wait_then_grant_id() {
    let Some(t) = setup("req-nowait") else { return };
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run(&argv(&["--no-wait"], &cmd), Duration::from_secs(20));
    assert_eq!(out.code, 75, "{out}");
    let id = t.idp.grant_ids()[0].clone();
    assert!(out.stderr.contains(&format!("Grant id: {id}")), "{out}");
    assert!(out.stderr.contains("Approve at: "), "{out}");
    assert_eq!(t.idp.grant_state(&id).unwrap().0, "pending");
    // Still pending: 75 again, nothing runs.
    let out = t.run(&argv(&["--grant-id", &id], &cmd), Duration::from_secs(20));
    assert_eq!(out.code, 75, "{out}");
    assert!(!t.sb.marker_exists("ran"));
    assert!(t.idp.approve(&id, APPROVER));
    let out = t.run(&argv(&["--grant-id", &id], &cmd), Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("ran"));
    assert_eq!(t.idp.grant_ids().len(), 1);
}

#[test]
fn request_options_need_request_mode() {
    let Some(t) = setup("req-usage") else { return };
    let out = t.run(
        &["--grant", "x.y.z", "--no-wait", "--", "true"],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 2, "{out}");
    let out = t.run(
        &["--grant-type", "forever", "--", "true"],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 2, "{out}");
    let out = t.run(&["--duration", "60", "--", "true"], Duration::from_secs(20));
    assert_eq!(out.code, 2, "{out}");
    assert!(t.idp.requests().is_empty());
}

#[test]
fn enroll_creates_a_key_and_request_mode_then_works() {
    let Some(t) = setup_with("req-enroll", "timeout = 30\n", false) else {
        return;
    };
    let email = "bot@example.com";
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            t.sb.escapes_run(&[
                "enroll",
                "--idp",
                &t.idp.issuer(),
                "--name",
                "bot",
                "--agent-email",
                email,
            ])
            .as_test_user()
            .timeout(Duration::from_secs(30))
            .output()
        });
        let pub_path = t.home.join(".ssh/id_ed25519.pub");
        let start = Instant::now();
        while !pub_path.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let line = fs::read_to_string(&pub_path).unwrap();
        let (pk, comment) = keys::parse_public_line(&line).unwrap();
        assert_eq!(comment.as_deref(), Some(email));
        std::thread::sleep(Duration::from_millis(500));
        t.idp.register_agent(email, pk);
        h.join().unwrap()
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("Enroll at: "), "{out}");
    use std::os::unix::fs::MetadataExt;
    let key_meta = fs::metadata(t.home.join(".ssh/id_ed25519")).unwrap();
    assert_eq!(
        (key_meta.uid(), key_meta.mode() & 0o777),
        (t.user.uid, 0o600)
    );
    // KEY.pub is 0644 as documented (the caller's umask, 022 here, not
    // the 077 escapes sets for itself).
    let pub_meta = fs::metadata(t.home.join(".ssh/id_ed25519.pub")).unwrap();
    assert_eq!(
        (pub_meta.uid(), pub_meta.mode() & 0o777),
        (t.user.uid, 0o644)
    );
    let cfg = fs::read_to_string(t.home.join(".config/apes/config.toml")).unwrap();
    assert!(cfg.contains("[agent]") && cfg.contains(email), "{cfg}");
    t.idp.set_auto_approve(Some(APPROVER));
    let cmd = t.sb.marker_cmd("ran");
    let out = t.run(&argv(&[], &cmd), Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("ran"));
    let _ = Path::new("/");
}

/// `escapes enroll` works as the caller with the groups the process holds:
/// a key readable only through a group the caller's process dropped is
/// not read (before, the drop to the caller ran initgroups).
#[test]
fn enroll_does_not_get_back_a_dropped_group() {
    let Some(t) = setup_with("req-enroll-groups", "timeout = 30\n", false) else {
        return;
    };
    let email = "bot@example.com";
    let key = random_key();
    t.idp.register_agent(email, key.verifying_key().to_bytes());
    // In the caller's home (so the `.pub` beside it can be written), but
    // readable only through the group.
    let shared = t.user_file("keys/groupkey", keys::pkcs8_pem(&key).as_bytes(), 0o640);
    set_owner_mode(&shared, 0, t.user.extra_gid, 0o640);
    let issuer = t.idp.issuer();
    let args = [
        "enroll",
        "--idp",
        &issuer,
        "--name",
        "bot",
        "--key",
        shared.to_str().unwrap(),
        "--agent-email",
        email,
    ];
    let run = |groups: Option<&[u32]>| {
        let r = t.sb.escapes_run(&args).timeout(Duration::from_secs(30));
        match groups {
            Some(g) => r.as_test_user_with_groups(g),
            None => r.as_test_user(),
        }
        .output()
    };
    // Without the group: the key is not readable.
    let out = run(Some(&[t.user.gid]));
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("ermission denied"), "{out}");
    assert!(!out.stdout.contains("Enroll at: "), "{out}");
    // Control: holding the group, the same key is read and enrolled.
    let out = run(None);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("Enroll at: "), "{out}");
}

/// The waiting screen on a real terminal (tmux): the URL, an elapsed-time
/// line updated in place; Ctrl-C cancels, nothing runs, and the line is
/// gone afterwards.
#[test]
fn waiting_screen_and_ctrl_c_on_a_terminal() {
    let Some(t) = setup("req-tmux") else { return };
    if !Path::new("/usr/bin/tmux").exists() {
        eprintln!("skipped: tmux is not installed (scripts/setup.sh installs it)");
        return;
    }
    let session = format!("openape-req-{}", std::process::id());
    let tmux = |args: &[&str]| Run::new("/usr/bin/tmux").args(args).output();
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "40",
        &format!(
            "{} setpriv --reuid={1} --regid={1} --init-groups -- /bin/sh",
            t.sb.config_ns_shell(),
            t.user.name
        ),
    ]);
    assert_eq!(started.code, 0, "{started}");
    let send = |keys: &[&str]| {
        let mut a = vec!["send-keys", "-t", session.as_str()];
        a.extend_from_slice(keys);
        tmux(&a)
    };
    let screen = || tmux(&["capture-pane", "-p", "-t", &session]).stdout;
    let wait_for = |needle: &str| {
        for _ in 0..200 {
            if screen().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    let cmd = t.sb.marker_cmd("ran");
    send(&[
        &format!(
            "{} -- {}; echo exit-$?",
            t.sb.escapes().display(),
            cmd.join(" ")
        ),
        "Enter",
    ]);
    let ok = wait_for("Approve at: ") && wait_for("waiting for approval… 0:02");
    let waiting = screen();
    if !ok {
        let _ = tmux(&["kill-session", "-t", &session]);
        panic!("no waiting screen:\n{waiting}");
    }
    assert_eq!(
        waiting.matches("waiting for approval").count(),
        1,
        "{waiting}"
    );
    send(&["C-c"]);
    let done = wait_for("exit-130");
    let text = screen();
    let _ = tmux(&["kill-session", "-t", &session]);
    assert!(done, "escapes did not stop:\n{text}");
    assert!(text.contains("cancelled at the IdP"), "{text}");
    assert!(
        !text.contains("waiting for approval"),
        "status line left behind:\n{text}"
    );
    assert!(!t.sb.marker_exists("ran"));
    let id = &t.idp.grant_ids()[0];
    assert_eq!(t.idp.grant_state(id).unwrap().0, "denied");
}

/// A tmux session whose shell is the test user's, in the sandbox's
/// config namespace: a real terminal, so Ctrl-C reaches the foreground
/// process group through the terminal driver, which asks no permission
/// (the caller's own `kill` could not signal escapes once it is root).
struct Terminal {
    session: String,
}

impl Terminal {
    fn open(t: &T, tag: &str) -> Option<Terminal> {
        if !Path::new("/usr/bin/tmux").exists() {
            eprintln!("skipped: tmux is not installed (scripts/setup.sh installs it)");
            return None;
        }
        let term = Terminal {
            session: format!("openape-{tag}-{}", std::process::id()),
        };
        let started = term.tmux(&[
            "new-session",
            "-d",
            "-s",
            &term.session,
            "-x",
            "200",
            "-y",
            "40",
            &format!(
                "{} setpriv --reuid={1} --regid={1} --init-groups -- /bin/sh",
                t.sb.config_ns_shell(),
                t.user.name
            ),
        ]);
        assert_eq!(started.code, 0, "{started}");
        Some(term)
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Run::new("/usr/bin/tmux").args(args).output()
    }

    fn send(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", self.session.as_str()];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
            .stdout
    }

    fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.screen().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-session", "-t", &self.session]);
    }
}

/// Ctrl-C (and Ctrl-\, and the terminal hanging up) while the approved
/// grant is being consumed. By then escapes is root through and through,
/// so the caller's `kill` cannot reach it, but the terminal's signals need
/// no permission: they killed escapes after the IdP had consumed the
/// grant and before any line, leaving a spent grant that no `grant_run`
/// or `denied` line accounts for (the user gives up at the moment the
/// approver says yes; or a caller with a pty times the key). Now the
/// interrupt is held from the consume until the line is written.
#[test]
fn an_interrupt_from_the_terminal_during_consume_leaves_a_line() {
    let Some(t) = setup("req-tty-consume") else {
        return;
    };
    for (n, keys) in [["C-c"], ["C-\\"]].iter().enumerate() {
        let Some(term) = Terminal::open(&t, &format!("req-consume-{n}")) else {
            return;
        };
        let marker = format!("ran-{n}");
        let cmd = t.sb.marker_cmd(&marker);
        let before = t.sb.audit_lines().len();
        term.send(&[
            &format!(
                "{} -- {}; echo exit-$?",
                t.sb.escapes().display(),
                cmd.join(" ")
            ),
            "Enter",
        ]);
        assert!(
            term.wait_for("Approve at: ", Duration::from_secs(15)),
            "no link:\n{}",
            term.screen()
        );
        let id = t
            .idp
            .wait_for_pending(Duration::from_secs(5))
            .expect("no pending grant");
        // The consume answer takes 1.5 s (under http.timeout = 2 s): the
        // keys are pressed while escapes waits for it, after the IdP has
        // the request.
        let consume = format!("/api/grants/{id}/consume");
        t.idp
            .set_fault_for(&consume, Fault::Slow(Duration::from_millis(1500)));
        assert!(t.idp.approve(&id, APPROVER));
        let start = Instant::now();
        while t.count("POST", &consume) == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(t.count("POST", &consume), 1, "never consumed");
        std::thread::sleep(Duration::from_millis(300));
        term.send(keys);
        let start = Instant::now();
        while signal_escapes(&t.sb, 0) > 0 && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            signal_escapes(&t.sb, 0),
            0,
            "escapes did not end:\n{}",
            term.screen()
        );
        // Let the IdP finish the consume it was sleeping on.
        let start = Instant::now();
        while t.idp.consume_count(&id) == 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(t.idp.consume_count(&id), 1, "{keys:?}");
        // The spent grant is accounted for: grant_run (the interrupt is
        // delivered once the line is written) names it.
        let lines = t.sb.audit_lines();
        let after: Vec<&Value> = lines.iter().skip(before).collect();
        assert!(
            after
                .iter()
                .any(|l| l["event"] == "grant_run" && l["grant_id"].as_str() == Some(id.as_str())),
            "{keys:?}: a consumed grant with no grant_run line: {after:?}\n{}",
            term.screen()
        );
        // And the stop still counts: the command did not start.
        assert!(!t.sb.marker_exists(&marker), "{keys:?}");
    }
}

/// Ctrl-C after the approval, while escapes verifies the token (the JWKS
/// answer is slow): nothing is consumed, and the run ends with a `denied`
/// line (step `request`). Before, the default action ended escapes there
/// with no line after `grant_requested`.
#[test]
fn an_interrupt_from_the_terminal_after_the_approval_is_logged_unspent() {
    let Some(t) = setup("req-tty-verify") else {
        return;
    };
    let Some(term) = Terminal::open(&t, "req-verify") else {
        return;
    };
    let cmd = t.sb.marker_cmd("ran");
    term.send(&[
        &format!(
            "{} -- {}; echo exit-$?",
            t.sb.escapes().display(),
            cmd.join(" ")
        ),
        "Enter",
    ]);
    assert!(
        term.wait_for("Approve at: ", Duration::from_secs(15)),
        "no link:\n{}",
        term.screen()
    );
    let id = t
        .idp
        .wait_for_pending(Duration::from_secs(5))
        .expect("no pending grant");
    let jwks = "/.well-known/jwks.json";
    t.idp
        .set_fault_for(jwks, Fault::Slow(Duration::from_millis(1500)));
    let before = t.count("GET", jwks);
    assert!(t.idp.approve(&id, APPROVER));
    let start = Instant::now();
    while t.count("GET", jwks) == before && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(t.count("GET", jwks) > before, "the key was never fetched");
    std::thread::sleep(Duration::from_millis(300));
    term.send(&["C-c"]);
    assert!(
        term.wait_for("exit-130", Duration::from_secs(15)),
        "{}",
        term.screen()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(t.idp.consume_count(&id), 0);
    assert!(!t.sb.marker_exists("ran"));
    let l = t.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request")),
        "{:?}\n{}",
        t.sb.audit_lines(),
        term.screen()
    );
    assert_eq!(l["grant_id"].as_str(), Some(id.as_str()));
}
