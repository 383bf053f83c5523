//! Real sudo asks for approval and waits (pam_openape.so with `request`),
//! in a private mount namespace: the one-line PAM change for people, the
//! NOPASSWD + `sudo -n` setup for agents, refusals, and two waits at once.
//! The test user has an enrolled key in a home of its own; the test plays
//! the approver. Needs root; otherwise every test prints a skip notice.
//!
//! Every scenario runs against sudo 1.9 and sudo-rs (`<scenario>::ogsudo`,
//! `<scenario>::sudo_rs`). sudo-rs shows conversation messages only on a
//! terminal, or on stderr with `-S`; without either the message fails and
//! sudo-rs then fails the whole authentication, even after the module
//! accepted an approved grant. Its variants of the scenarios without a
//! terminal therefore run `sudo -S` (the link goes to stderr);
//! `sudo_rs_without_a_terminal_cannot_show_the_link` shows what happens
//! without it, and the tmux scenario runs both on a real terminal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use openape_tests::against_both_sudos;
use openape_tests::harness::{self, Output, TEST_USER, test_user};
use openape_tests::idp::TestIdp;
use openape_tests::sudo_ns::{PamSandbox, SudoImpl, require_root, shipped, with_common_stacks};

const AGENT: &str = "agent@example.com";

/// The shipped request stack: a grant (presented or asked for) or the
/// password; grant_only in the account phase closes the timestamp.
const SUDO_REQUEST: &str = "\
#%PAM-1.0
auth     sufficient @SO@ config=@CFG@ request
auth     required   pam_deny.so
account  required   @SO@ config=@CFG@ grant_only
session  required   pam_permit.so
";

/// The agent stack: NOPASSWD skips authentication; the account phase asks.
const SUDO_AGENT: &str = "\
#%PAM-1.0
auth     required   pam_deny.so
account  required   @SO@ config=@CFG@ grant_only request
session  required   pam_permit.so
";

fn sudoers(nopasswd: bool) -> String {
    format!(
        "Defaults !lecture, timestamp_timeout=0, passwd_tries=1\n\
         Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         {TEST_USER} ALL=(ALL:ALL) {}ALL\n",
        if nopasswd { "NOPASSWD: " } else { "" }
    )
}

struct S {
    idp: TestIdp,
    ps: PamSandbox,
    imp: SudoImpl,
}

fn setup(imp: SudoImpl, name: &str, stack: &str, nopasswd: bool) -> Option<S> {
    if !require_root() {
        return None;
    }
    let user = test_user();
    let idp = TestIdp::start();
    let mut ps = PamSandbox::new(name, &idp.issuer());
    ps.use_sudo(imp);
    let home = ps.with_user_home();
    let mut cfg = ps.sb.config(&idp.issuer());
    cfg.tail = "[request]\ntimeout = 15\n".into();
    ps.sb.write_config(&cfg.render());
    ps.write_pam("sudo", stack);
    ps.write_sudoers(&sudoers(nopasswd));
    idp.enrol_agent_key(&home, user, AGENT, None);
    Some(S { idp, ps, imp })
}

impl S {
    /// `argv` as this implementation needs it without a terminal: sudo-rs
    /// gets `-S` for the authentication phase (see the module comment);
    /// `sudo -n` (the account phase) is left alone.
    fn argv<'a>(&self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut v = argv.to_vec();
        if self.imp == SudoImpl::SudoRs && v.first() == Some(&"sudo") && !v.contains(&"-n") {
            v.insert(1, "-S");
        }
        v
    }

    /// Run `argv` (as the test user, through sudo) on a thread; decide
    /// the first pending grant with `decide`.
    fn run_and_decide(&self, argv: &[&str], decide: impl FnOnce(&str)) -> Output {
        let argv = self.argv(argv);
        std::thread::scope(|s| {
            let h = s.spawn(|| self.ps.run(&argv, &[], None));
            let id = self
                .idp
                .wait_for_pending(Duration::from_secs(15))
                .unwrap_or_else(|| panic!("no pending grant: {:?}", self.idp.requests()));
            decide(&id);
            h.join().unwrap()
        })
    }

    fn events(&self) -> Vec<String> {
        self.ps
            .audit()
            .iter()
            .map(|l| l["event"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// The test user's shell in tmux, inside the sandbox's namespaces (config,
/// home, PAM stacks, sudoers, the chosen sudo): a real terminal.
struct Terminal {
    session: String,
}

impl Terminal {
    fn start(s: &S) -> Option<Terminal> {
        if !std::path::Path::new("/usr/bin/tmux").exists() {
            eprintln!("skipped: tmux is not installed (scripts/setup.sh installs it)");
            return None;
        }
        let mounts: Vec<String> = s.ps.mounts().lines().map(str::to_string).collect();
        let inner = format!(
            "{} && exec setpriv --reuid={u} --regid={u} --init-groups -- /bin/sh",
            mounts.join(" && "),
            u = TEST_USER
        );
        let t = Terminal {
            session: format!(
                "openape-{}",
                s.ps.sb
                    .root()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        };
        let started = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "200",
            "-y",
            "40",
            &format!("{} /bin/sh -c \"{inner}\"", s.ps.sb.config_ns_shell()),
        ]);
        assert_eq!(started.code, 0, "{started}");
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> Output {
        openape_tests::harness::Run::new("/usr/bin/tmux")
            .args(args)
            .output()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
            .stdout
    }

    fn wait_for(&self, needle: &str) -> bool {
        for _ in 0..200 {
            if self.screen().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", &self.session, line, "Enter"]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-session", "-t", &self.session]);
    }
}

/// On a real terminal: `sudo CMD` shows the link, the approver says yes,
/// the command runs; a denied one does not; and the `sudo -n` agent setup
/// the same way.
fn on_a_terminal_approve_deny_and_the_agent_path(imp: SudoImpl) {
    for (stack, nopasswd, sudo) in [(SUDO_REQUEST, false, "sudo"), (SUDO_AGENT, true, "sudo -n")] {
        let Some(s) = setup(imp, "sudoreq-tty", stack, nopasswd) else {
            return;
        };
        let Some(term) = Terminal::start(&s) else {
            return;
        };
        for approve in [true, false] {
            let marker = s.ps.out_path(if approve { "yes" } else { "no" });
            term.type_line(&format!("{sudo} touch {}; echo rc=$?", marker.display()));
            assert!(
                term.wait_for("Approve at:"),
                "{sudo}: no link:\n{}",
                term.screen()
            );
            let id = s.idp.wait_for_pending(Duration::from_secs(5)).unwrap();
            if approve {
                assert!(s.idp.approve(&id, harness::APPROVER));
                assert!(term.wait_for("rc=0"), "{sudo}:\n{}", term.screen());
                assert!(marker.exists(), "{sudo}:\n{}", term.screen());
            } else {
                assert!(s.idp.deny(&id, harness::APPROVER));
                let mut done = false;
                for _ in 0..200 {
                    let text = term.screen();
                    if text.lines().any(|l| l.starts_with("rc=") && l != "rc=0") {
                        done = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                assert!(done, "{sudo}: not refused:\n{}", term.screen());
                assert!(!marker.exists());
            }
        }
        let runs = s.events().iter().filter(|e| *e == "grant_run").count();
        assert_eq!(runs, 1, "{sudo}");
    }
}

against_both_sudos!(
    sudo_rs_without_a_terminal_cannot_show_the_link,
    sudo_shows_the_link_waits_and_runs_the_approved_command,
    sudo_denied_request_runs_nothing,
    sudo_n_agents_wait_for_approval_of_that_very_argv,
    two_waits_at_once_each_run_only_their_own_command,
    ctrl_c_while_sudo_waits_cancels_the_request_and_runs_nothing,
    shipped_request_and_agent_stacks_work_verbatim,
    sudo_deadline_cancels_the_request_and_runs_nothing,
    on_a_terminal_approve_deny_and_the_agent_path,
);

/// Nobody decides: at `request_timeout` the request is cancelled at the
/// IdP by its requester, sudo refuses (the stack falls through to
/// pam_deny), nothing runs, nothing is consumed.
fn sudo_deadline_cancels_the_request_and_runs_nothing(imp: SudoImpl) {
    let stack = SUDO_REQUEST.replace("request\n", "request request_timeout=2\n");
    let Some(s) = setup(imp, "sudoreq-deadline", &stack, false) else {
        return;
    };
    let marker = s.ps.out_path("ran");
    let m = marker.to_string_lossy().into_owned();
    let out = s.ps.run(&s.argv(&["sudo", "touch", &m]), &[], None);
    assert_ne!(out.code, 0, "{out}");
    assert!(!marker.exists());
    let ids = s.idp.grant_ids();
    assert_eq!(ids.len(), 1, "{:?}", s.idp.requests());
    let (status, by) = s.idp.grant_state(&ids[0]).unwrap();
    assert_eq!((status.as_str(), by.as_deref()), ("denied", Some(AGENT)));
    assert_eq!(s.idp.consume_count(&ids[0]), 0);
    let l = s.ps.last_audit();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("request")),
        "{l}"
    );
}

/// Real util-linux su in request mode: `su - -c STRING root` (service
/// su-l) asks for a grant for exactly that string as root, waits, runs it.
#[test]
fn su_login_asks_for_the_dash_c_string_and_runs_it() {
    if !require_root() {
        return;
    }
    let Some(s) = setup(SudoImpl::Ogsudo, "sureq", SUDO_REQUEST, false) else {
        return;
    };
    let su_stack = "#%PAM-1.0\nauth sufficient @SO@ config=@CFG@ request nonint\nauth required pam_deny.so\naccount required pam_permit.so\nsession required pam_permit.so\n";
    s.ps.write_pam("su-l", su_stack);
    let out = std::thread::scope(|t| {
        let h = t.spawn(|| s.ps.run(&["su", "-", "-c", "id -u", "root"], &[], None));
        let id = s
            .idp
            .wait_for_pending(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no pending grant: {:?}", s.idp.requests()));
        assert!(s.idp.approve(&id, harness::APPROVER));
        h.join().unwrap()
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.lines().any(|l| l == "0"), "{out}");
    let l = s.ps.last_audit();
    assert_eq!(l["event"], "grant_run", "{l}");
    assert_eq!(l["command"], serde_json::json!(["id -u"]));
    assert_eq!(l["via"], "pam:su-l");
}

fn sudo_shows_the_link_waits_and_runs_the_approved_command(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-ok", SUDO_REQUEST, false) else {
        return;
    };
    let out = s.run_and_decide(&["sudo", "id", "-u"], |id| {
        assert!(s.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    // The command's output alone on stdout: the link and the waiting line
    // go to the terminal or stderr, never into what a pipe would read.
    assert_eq!(out.stdout.trim(), "0", "{out}");
    let id = s.idp.grant_ids().pop().unwrap();
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains(&format!(
            "Approve at: {}/grant-approval?grant_id={id}",
            s.idp.issuer()
        )),
        "the link must reach the user (sudo passes PAM_SILENT): {out}"
    );
    assert_eq!(s.events(), ["grant_requested", "grant_run"]);
    let l = s.ps.last_audit();
    assert_eq!(l["command"], serde_json::json!(["id", "-u"]));
    assert_eq!(l["via"], "pam:sudo");
    assert_eq!(s.idp.consume_count(&id), 1);
}

fn sudo_denied_request_runs_nothing(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-deny", SUDO_REQUEST, false) else {
        return;
    };
    let marker = s.ps.out_path("ran");
    let m = marker.to_string_lossy().into_owned();
    let out = s.run_and_decide(&["sudo", "touch", &m], |id| {
        assert!(s.idp.deny(id, harness::APPROVER));
    });
    assert_ne!(out.code, 0, "{out}");
    assert!(!marker.exists());
    let l = s.ps.last_audit();
    assert_eq!(l["event"], "denied", "{l}");
    assert_eq!(l["step"], "request", "{l}");
}

/// The agent setup: NOPASSWD rule, `sudo -n`, the module in the account
/// phase with `grant_only request`. Without an approved grant for that very
/// argv nothing runs.
fn sudo_n_agents_wait_for_approval_of_that_very_argv(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-agent", SUDO_AGENT, true) else {
        return;
    };
    let out = s.run_and_decide(&["sudo", "-n", "id", "-u"], |id| {
        assert!(s.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    // sudo prints PAM_TEXT_INFO on its stdout when that is not a tty.
    assert!(out.stdout.lines().any(|l| l == "0"), "{out}");
    assert_eq!(s.events(), ["grant_requested", "grant_run"]);

    let marker = s.ps.out_path("denied");
    let m = marker.to_string_lossy().into_owned();
    let out = s.run_and_decide(&["sudo", "-n", "touch", &m], |id| {
        assert!(s.idp.deny(id, harness::APPROVER));
    });
    assert_ne!(out.code, 0, "{out}");
    assert!(!marker.exists());
    assert_eq!(s.ps.last_audit()["step"], "request");
}

/// Two sudo runs wait at once, each for its own command; approved in the
/// opposite order, each runs exactly its own command once.
fn two_waits_at_once_each_run_only_their_own_command(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-two", SUDO_REQUEST, false) else {
        return;
    };
    let a = s.ps.out_path("a");
    let b = s.ps.out_path("b");
    let (a_s, b_s) = (
        a.to_string_lossy().into_owned(),
        b.to_string_lossy().into_owned(),
    );
    let (argv_a, argv_b) = (
        s.argv(&["sudo", "touch", &a_s]),
        s.argv(&["sudo", "touch", &b_s]),
    );
    let (out_a, out_b) = std::thread::scope(|t| {
        let ha = t.spawn(|| s.ps.run(&argv_a, &[], None));
        let hb = t.spawn(|| s.ps.run(&argv_b, &[], None));
        let start = std::time::Instant::now();
        while s.idp.grant_ids().len() < 2 && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ids = s.idp.grant_ids();
        assert_eq!(ids.len(), 2, "two requests: {:?}", s.idp.requests());
        for id in ids.iter().rev() {
            assert!(s.idp.approve(id, harness::APPROVER));
        }
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(out_a.code, 0, "{out_a}");
    assert_eq!(out_b.code, 0, "{out_b}");
    assert!(a.exists() && b.exists());
    let runs: Vec<(String, serde_json::Value)> =
        s.ps.audit()
            .into_iter()
            .filter(|l| l["event"] == "grant_run")
            .map(|l| {
                (
                    l["grant_id"].as_str().unwrap().to_string(),
                    l["command"].clone(),
                )
            })
            .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_ne!(runs[0].0, runs[1].0);
    for id in s.idp.grant_ids() {
        assert_eq!(s.idp.consume_count(&id), 1, "{id}");
    }
}

/// Ctrl-C at a real terminal while sudo waits: sudo ends, the request
/// child sees its parent gone and cancels the request at the IdP, nothing
/// runs. Driven through tmux.
fn ctrl_c_while_sudo_waits_cancels_the_request_and_runs_nothing(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-ctrlc", SUDO_REQUEST, false) else {
        return;
    };
    let Some(term) = Terminal::start(&s) else {
        return;
    };
    let tmux = |args: &[&str]| term.tmux(args);
    let session = term.session.clone();
    let screen = || term.screen();
    let wait_for = |needle: &str| term.wait_for(needle);
    let marker = s.ps.out_path("ran");
    tmux(&[
        "send-keys",
        "-t",
        &session,
        &format!("sudo touch {}", marker.display()),
        "Enter",
    ]);
    let shown = wait_for("Approve at:");
    let id = s.idp.wait_for_pending(Duration::from_secs(5));
    tmux(&["send-keys", "-t", &session, "C-c"]);
    let mut cancelled = false;
    if let Some(id) = &id {
        for _ in 0..100 {
            if s.idp.grant_state(id).is_some_and(|(st, _)| st == "denied") {
                cancelled = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let text = screen();
    let _ = tmux(&["kill-session", "-t", &session]);
    assert!(shown, "no approval link on the terminal:\n{text}");
    let id = id.expect("a pending grant");
    assert!(
        cancelled,
        "the request was not cancelled at the IdP:\n{text}"
    );
    assert_eq!(s.idp.grant_state(&id).unwrap().1.as_deref(), Some(AGENT));
    // Approving it now changes nothing: it is cancelled, and nothing ran.
    assert!(!s.idp.approve(&id, harness::APPROVER));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists());
    assert!(
        !s.events().iter().any(|e| e == "grant_run"),
        "{:?}",
        s.events()
    );
}

/// The shipped files, verbatim: pam.d/sudo.request with the sudoers
/// drop-in (people), pam.d/sudo.agent with a NOPASSWD rule (agents).
fn shipped_request_and_agent_stacks_work_verbatim(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-shipped", SUDO_REQUEST, false) else {
        return;
    };
    if !with_common_stacks(&s.ps) {
        return;
    }
    let dropin = shipped("sudoers.openape");
    s.ps.write_pam("sudo", &shipped("sudo.request"));
    s.ps.write_sudoers(&format!("{dropin}\n{TEST_USER} ALL=(ALL:ALL) ALL\n"));
    let out = s.run_and_decide(&["sudo", "id", "-u"], |id| {
        assert!(s.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.lines().any(|l| l == "0"), "{out}");

    s.ps.write_pam("sudo", &shipped("sudo.agent"));
    s.ps.write_sudoers(&format!(
        "{dropin}\n{TEST_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    ));
    let out = s.run_and_decide(&["sudo", "-n", "id", "-g"], |id| {
        assert!(s.idp.approve(id, harness::APPROVER));
    });
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.lines().any(|l| l == "0"), "{out}");
    // Without a grant (the request is denied) nothing runs.
    let marker = s.ps.out_path("agent-denied");
    let m = marker.to_string_lossy().into_owned();
    let out = s.run_and_decide(&["sudo", "-n", "touch", &m], |id| {
        assert!(s.idp.deny(id, harness::APPROVER));
    });
    assert_ne!(out.code, 0, "{out}");
    assert!(!marker.exists());
    let runs = s.events().iter().filter(|e| *e == "grant_run").count();
    assert_eq!(runs, 2);
}

/// Without a terminal and without `-S`, sudo 1.9 prints the link on its
/// stderr (the module sends it as PAM_ERROR_MSG when there is no terminal,
/// so it stays out of the command's stdout) and the approved command runs. sudo-rs cannot show the link (its
/// conversation needs the terminal for every message) and would fail the
/// authentication even after the module accepted an approved grant, so the
/// module notices the failed message, cancels the request at the IdP and
/// stays out (PAM_IGNORE): no approval is spent on a run that cannot
/// happen. Use a terminal or `sudo -S` with sudo-rs.
fn sudo_rs_without_a_terminal_cannot_show_the_link(imp: SudoImpl) {
    let Some(s) = setup(imp, "sudoreq-notty", SUDO_REQUEST, false) else {
        return;
    };
    let marker = s.ps.out_path("ran");
    let m = marker.to_string_lossy().into_owned();
    match imp {
        SudoImpl::Ogsudo => {
            let out = std::thread::scope(|t| {
                let h = t.spawn(|| s.ps.run(&["sudo", "touch", &m], &[], None));
                let id = s
                    .idp
                    .wait_for_pending(Duration::from_secs(15))
                    .unwrap_or_else(|| panic!("no pending grant: {:?}", s.idp.requests()));
                assert!(s.idp.approve(&id, harness::APPROVER));
                h.join().unwrap()
            });
            assert_eq!(out.code, 0, "{out}");
            assert!(out.stderr.contains("Approve at: "), "{out}");
            assert!(!out.stdout.contains("Approve at"), "{out}");
            assert!(marker.exists(), "{out}");
        }
        SudoImpl::SudoRs => {
            let out = s.ps.run(&["sudo", "touch", &m], &[], None);
            assert_ne!(out.code, 0, "{out}");
            assert!(!marker.exists(), "{out}");
            let ids = s.idp.grant_ids();
            assert_eq!(ids.len(), 1, "{:?}", s.idp.requests());
            let (status, by) = s.idp.grant_state(&ids[0]).unwrap();
            assert_eq!(
                (status.as_str(), by.as_deref()),
                ("denied", Some(AGENT)),
                "the request must be cancelled by its requester"
            );
            assert_eq!(s.idp.consume_count(&ids[0]), 0);
            let l = s.ps.last_audit();
            assert_eq!(
                (l["event"].as_str(), l["step"].as_str()),
                (Some("denied"), Some("request")),
                "{l}"
            );
            assert!(!s.events().iter().any(|e| e == "grant_run"));
        }
    }
}
