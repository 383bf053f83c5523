//! pam_openape.so under the real sudo 1.9, sudo-rs and util-linux su, as
//! the non-root test user, in a private mount namespace per scenario (see
//! `openape_tests::sudo_ns`): the machine's /etc/pam.d, /etc/sudoers,
//! /run/sudo and /usr/bin/sudo are never modified.
//!
//! Every sudo scenario runs twice, as `<scenario>::ogsudo` (Debian's sudo
//! 1.9) and `<scenario>::sudo_rs` (sudo-rs at the version pinned in
//! tests/sudo-rs.version, built by scripts/sudo-rs.sh). Where the two
//! behave differently the scenario says so (`SudoImpl` matches); the
//! README's compatibility table lists the differences. Without a sudo-rs
//! build the `sudo_rs` variants print `skipped: ...` with the reason, and
//! fail under CI (`CI=true`).
//!
//! Every test needs root; without it each prints the skip notice and
//! passes. Run: `cargo build --workspace && ./scripts/sudo-rs.sh && cargo
//! test -p openape-tests --test pam_sudo_su -- --test-threads=2`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use openape_tests::against_both_sudos;
use openape_tests::harness::{Output, TEST_USER};
use openape_tests::idp::{Fault, GrantSpec, TestIdp};
use openape_tests::sudo_ns::{PamSandbox, SudoImpl, require_root, shipped, with_common_stacks};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The stacks, as the project's sample files would ship them. `@SO@` is the
// module, `@CFG@` the config, `@ROOT@` the sandbox.
// ---------------------------------------------------------------------------

/// pam.d/sudo, grant or password: a good grant is enough; without a grant
/// (PAM_IGNORE) and with a bad one (PAM_AUTH_ERR, ignored by `sufficient`)
/// the next line decides. pam_exec stands in for the password module and
/// leaves a marker, so a test can see that the fall-through happened.
const SUDO_GRANT_OR_PASSWORD: &str = "\
#%PAM-1.0
auth     sufficient @SO@ config=@CFG@ nonint
auth     required   pam_exec.so quiet /usr/bin/touch @ROOT@/out/fallthrough-marker
account  required   pam_permit.so
session  required   pam_permit.so
";

const SUDO_GRANT_OR_DENY: &str = openape_tests::sudo_ns::GRANT_OR_DENY_STACK;

/// The conversation variant: no `nonint`, the grant is asked for through
/// the PAM conversation (`sudo -S` reads the answer from stdin).
const SUDO_GRANT_PROMPT: &str = "\
#%PAM-1.0
auth     sufficient @SO@ config=@CFG@
auth     required   pam_deny.so
account  required   pam_permit.so
session  required   pam_permit.so
";

/// pam.d/sudo, grant only: `grant_only` in the account phase refuses every
/// handle that did not verify a grant for this very argv (closes sudo's
/// timestamp and NOPASSWD shortcuts).
const SUDO_GRANT_ONLY: &str = "\
#%PAM-1.0
auth     required   @SO@ config=@CFG@ nonint
account  required   @SO@ config=@CFG@ grant_only
session  required   pam_permit.so
";

/// sudoers of the scenarios. No `env_keep += OPENAPE_GRANT`: the module
/// reads the caller's variable from /proc/self/environ (at PAM time sudo's
/// exported getenv() answers from its already reset environment), so the
/// token never has to be handed on to the command.
fn sudoers(timestamp_zero: bool, env_keep: bool) -> String {
    let mut s = String::from(
        "Defaults !lecture\n\
         Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n",
    );
    if timestamp_zero {
        s.push_str("Defaults timestamp_timeout=0\n");
    }
    if env_keep {
        s.push_str("Defaults env_keep += \"OPENAPE_GRANT\"\n");
    }
    s.push_str(&format!(
        "{TEST_USER} ALL=(ALL:ALL) ALL\n\
         {TEST_USER} ALL=(ALL:ALL) NOPASSWD: /usr/bin/true\n"
    ));
    s
}

/// The shipped configuration: timestamp_timeout=0 and the grant kept.
fn shipped_sudoers() -> String {
    sudoers(true, false)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn setup(name: &str, idp: &TestIdp, service: &str, stack: &str) -> PamSandbox {
    let ps = PamSandbox::new(name, &idp.issuer());
    ps.write_pam(service, stack);
    if service == "su" {
        // `su -`/`su -l` authenticate as service su-l, which includes su
        // (as Debian's own /etc/pam.d/su-l does).
        ps.write_pam("su-l", SU_L);
    }
    ps.write_sudoers(&shipped_sudoers());
    ps
}

/// A sandbox whose scenarios run `sudo` as `imp`.
fn sudo_sandbox(imp: SudoImpl, name: &str, issuer: &str) -> PamSandbox {
    let mut ps = PamSandbox::new(name, issuer);
    ps.use_sudo(imp);
    ps
}

/// [`setup`] for a sudo scenario run by `imp`.
fn setup_sudo(imp: SudoImpl, name: &str, idp: &TestIdp, service: &str, stack: &str) -> PamSandbox {
    let mut ps = setup(name, idp, service, stack);
    ps.use_sudo(imp);
    ps
}

against_both_sudos!(
    sudo_runs_the_approved_command,
    sudo_refuses_another_argv,
    sudo_refuses_a_replayed_once_grant,
    sudo_refuses_a_target_user_other_than_run_as,
    sudo_reads_the_grant_through_the_conversation,
    sudo_conversation_drops_answers_of_512_bytes_or_more,
    grant_or_password_falls_through_without_a_grant_and_logs_nothing,
    grant_or_password_falls_through_on_a_bad_grant_but_logs_it,
    timestamp_hole_is_closed_by_grant_only_account,
    timestamp_hole_is_open_without_grant_only,
    timestamp_zero_reauthenticates_and_refuses,
    nopasswd_skips_auth_but_grant_only_account_still_refuses,
    idp_down_fails_closed_quickly,
    idp_hanging_fails_closed_within_the_http_timeout_per_try,
    sudo_shell_forms_are_refused_and_consume_nothing,
    sudo_i_is_refused_at_the_command_step,
    sudo_i_with_a_no_command_grant_for_the_caller_gives_no_root,
    env_grant_reaches_the_module_without_env_keep,
    shipped_grant_only_stack_and_sudoers_drop_in_work_verbatim,
    shipped_grant_or_password_stack_accepts_a_grant_and_otherwise_asks_for_the_password,
    sudo_in_the_namespace_is_the_expected_implementation,
    sudo_user_forms_name_the_same_target,
    sudo_commands_that_switch_sudo_modes_are_refused,
    sudo_refuses_a_relative_program_with_a_slash,
    refusal_messages_reach_the_user_only_without_pam_silent,
    sudo_n_never_asks_the_auth_stack,
);

/// Debian's `su-l` stack: everything from `su`.
const SU_L: &str = "auth include su\naccount include su\nsession include su\n";

fn grant(idp: &TestIdp, argv: &[&str]) -> openape_tests::idp::Issued {
    idp.issue(&GrantSpec::new("testhost", argv))
}

fn with_grant(jwt: &str) -> [(&str, &str); 1] {
    [("OPENAPE_GRANT", jwt)]
}

fn assert_ran(out: &Output, stdout: &str) {
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, stdout, "{out}");
}

fn assert_refused(out: &Output) {
    assert_ne!(out.code, 0, "expected a refusal: {out}");
    assert_eq!(out.stdout.trim(), "", "nothing may run: {out}");
}

fn assert_grant_run(ps: &PamSandbox, via: &str, command: &[&str]) -> Value {
    let l = ps.last_audit();
    assert_eq!(l["event"], "grant_run", "{l}");
    assert_eq!(l["via"], via, "{l}");
    assert_eq!(l["command"], json!(command), "{l}");
    assert_eq!(l["run_as"], "root", "{l}");
    assert_eq!(l["user"], TEST_USER, "{l}");
    l
}

fn assert_denied(ps: &PamSandbox, via: &str, step: &str) -> Value {
    let l = ps.last_audit();
    assert_eq!(l["event"], "denied", "{l}");
    assert_eq!(l["via"], via, "{l}");
    assert_eq!(l["step"], step, "{l}");
    assert_eq!(l["user"], TEST_USER, "{l}");
    l
}

/// Audit lines of one event.
fn count(ps: &PamSandbox, event: &str) -> usize {
    ps.audit().iter().filter(|l| l["event"] == event).count()
}

// ---------------------------------------------------------------------------
// 1-4: the grant decides, exactly
// ---------------------------------------------------------------------------

fn sudo_runs_the_approved_command(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-ok", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_ran(&out, "0\n");
    let l = assert_grant_run(&ps, "pam:sudo", &["id", "-u"]);
    assert_eq!(l["grant_id"], g.grant_id.as_str());
    assert_eq!(l["grant_type"], "once");
    assert_eq!(l["decided_by"], "alice@example.com");
    assert!(
        !ps.sb.audit_text().contains(&g.jwt),
        "token in the audit log"
    );
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}

fn sudo_refuses_another_argv(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-argv", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "id", "-g"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    let l = assert_denied(&ps, "pam:sudo", "command");
    assert_eq!(l["command"], json!(["id", "-g"]));
    assert_eq!(count(&ps, "grant_run"), 0);
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

fn sudo_refuses_a_replayed_once_grant(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-replay", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]);
    let first = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_ran(&first, "0\n");
    let second = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&second);
    let l = assert_denied(&ps, "pam:sudo", "consume");
    assert!(
        l["reason"]
            .as_str()
            .unwrap_or("")
            .contains("already_consumed"),
        "{l}"
    );
    assert_eq!(count(&ps, "grant_run"), 1);
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}

fn sudo_refuses_a_target_user_other_than_run_as(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-target", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]); // run_as root
    let out = ps.run(
        &["sudo", "-u", "nobody", "id", "-u"],
        &with_grant(&g.jwt),
        None,
    );
    assert_refused(&out);
    let l = assert_denied(&ps, "pam:sudo", "target_user");
    assert_eq!(l["run_as"], "nobody", "{l}");
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

// ---------------------------------------------------------------------------
// 5: the conversation
// ---------------------------------------------------------------------------

fn sudo_reads_the_grant_through_the_conversation(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-conv", &idp, "sudo", SUDO_GRANT_PROMPT);
    let g = grant(&idp, &["id", "-u"]);
    // sudo refuses answers of 512 bytes or more: the grant comes in lines
    // of 500 characters, as `fold -w 500` makes them.
    let stdin: String = g
        .jwt
        .as_bytes()
        .chunks(500)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    let out = ps.run(&["sudo", "-S", "id", "-u"], &[], Some(stdin.as_bytes()));
    assert_ran(&out, "0\n");
    assert!(out.stderr.contains("OpenApe grant:"), "{out}");
    assert!(!out.stderr.contains(&g.jwt), "the prompt echoed: {out}");
    let l = assert_grant_run(&ps, "pam:sudo", &["id", "-u"]);
    assert_eq!(l["grant_id"], g.grant_id.as_str());
}

/// What sudo does with long conversation answers, and why the module
/// reads a prompted grant in lines of 500 characters: up to 511 bytes reach
/// the module, 512 and more are dropped by sudo before the module sees them.
/// sudo 1.9 says "Sorry, try again." and asks again (the rest of the line is
/// lost); sudo-rs (a 512-byte answer buffer, NUL included) fails the
/// conversation with "Incorrect authentication attempt" and stops.
fn sudo_conversation_drops_answers_of_512_bytes_or_more(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-conv-len", &idp, "sudo", SUDO_GRANT_PROMPT);
    // 511 bytes: delivered, refused by the module at parse.
    let short = format!("{}\n", "a".repeat(511));
    let out = ps.run(&["sudo", "-S", "id", "-u"], &[], Some(short.as_bytes()));
    assert_refused(&out);
    assert_denied(&ps, "pam:sudo", "parse");
    let delivered = ps.audit().len();
    // A real grant (~900 bytes): sudo never hands it to the module.
    let g = grant(&idp, &["id", "-u"]);
    assert!(g.jwt.len() >= 512, "grant is only {} bytes", g.jwt.len());
    let stdin = format!("{}\n", g.jwt);
    let out = ps.run(&["sudo", "-S", "id", "-u"], &[], Some(stdin.as_bytes()));
    assert_refused(&out);
    let dropped = match imp {
        SudoImpl::Ogsudo => "Sorry, try again.",
        SudoImpl::SudoRs => "Incorrect authentication attempt",
    };
    assert!(out.stderr.contains(dropped), "{}: {out}", imp.label());
    assert_eq!(count(&ps, "grant_run"), 0);
    // No line about this token: the module never saw it.
    let fp = pam_openape::token::fingerprint(&g.jwt);
    assert!(
        ps.audit()[delivered..]
            .iter()
            .all(|l| l["token_fp"] != fp.as_str()),
        "{:?}",
        ps.audit()
    );
    assert_eq!(idp.consume_count(&g.grant_id), 0);
    assert_eq!(
        idp.request_count("/"),
        0,
        "the grant never reached the module"
    );
}

#[test]
fn su_reads_the_grant_through_the_conversation() {
    // util-linux su uses libpam_misc's misc_conv, which takes long answers.
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = setup("su-conv", &idp, "su", SUDO_GRANT_PROMPT);
    let g = grant(&idp, &["id -u"]);
    let stdin = format!("{}\n", g.jwt);
    let out = ps.run(
        &["su", "-", "-c", "id -u", "root"],
        &[],
        Some(stdin.as_bytes()),
    );
    assert_ran(&out, "0\n");
    assert!(out.stderr.contains("OpenApe grant:"), "{out}");
    assert!(!out.stderr.contains(&g.jwt), "the prompt echoed: {out}");
    assert_grant_run(&ps, "pam:su-l", &["id -u"]);
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}

// ---------------------------------------------------------------------------
// 6: grant or password
// ---------------------------------------------------------------------------

fn grant_or_password_falls_through_without_a_grant_and_logs_nothing(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-fall", &idp, "sudo", SUDO_GRANT_OR_PASSWORD);
    let out = ps.run(&["sudo", "id", "-u"], &[], None);
    // The password stand-in accepted: sudo ran the command.
    assert_ran(&out, "0\n");
    assert!(ps.out_path("fallthrough-marker").exists(), "{out}");
    assert!(
        ps.audit().is_empty(),
        "no grant is no event: {:?}",
        ps.audit()
    );
    assert_eq!(idp.request_count("/"), 0, "no grant, no IdP traffic");
}

fn grant_or_password_falls_through_on_a_bad_grant_but_logs_it(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-fall-bad", &idp, "sudo", SUDO_GRANT_OR_PASSWORD);
    let g = idp.issue(&GrantSpec::new("otherhost", &["id", "-u"]));
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    // `sufficient` ignores PAM_AUTH_ERR: the password stand-in decided.
    assert_ran(&out, "0\n");
    assert!(ps.out_path("fallthrough-marker").exists(), "{out}");
    assert_denied(&ps, "pam:sudo", "host");
    assert_eq!(count(&ps, "denied"), 1, "{:?}", ps.audit());
    assert_eq!(count(&ps, "grant_run"), 0);
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

// ---------------------------------------------------------------------------
// 7: su
// ---------------------------------------------------------------------------

#[test]
fn su_runs_the_approved_dash_c_string() {
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = setup(
        "su-ok",
        &idp,
        "su",
        openape_tests::sudo_ns::GRANT_OR_DENY_STACK,
    );
    let g = grant(&idp, &["id -u"]);
    let out = ps.run(
        &["su", "-", "-c", "id -u", "root"],
        &with_grant(&g.jwt),
        None,
    );
    assert_ran(&out, "0\n");
    let l = assert_grant_run(&ps, "pam:su-l", &["id -u"]);
    assert_eq!(l["grant_id"], g.grant_id.as_str());
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}

#[test]
fn su_refuses_another_dash_c_string() {
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = setup(
        "su-argv",
        &idp,
        "su",
        openape_tests::sudo_ns::GRANT_OR_DENY_STACK,
    );
    let g = grant(&idp, &["id -u"]);
    let out = ps.run(
        &["su", "-l", "-c", "id -g", "root"],
        &with_grant(&g.jwt),
        None,
    );
    assert_refused(&out);
    let l = assert_denied(&ps, "pam:su-l", "command");
    assert_eq!(l["command"], json!(["id -g"]));
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

/// Issue 10 item 1: plain `su -c STRING` keeps the caller's environment
/// (PATH, BASH_ENV, ENV…), so the approved string would run the caller's
/// own start-up script as root. Refused, nothing consumed, and the
/// caller's BASH_ENV script never ran.
#[test]
fn su_without_a_login_environment_runs_nothing() {
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = setup(
        "su-env",
        &idp,
        "su",
        openape_tests::sudo_ns::GRANT_OR_DENY_STACK,
    );
    let marker = ps.sb.path("bash-env-ran");
    let script = ps.sb.write_file(
        "bash-env.sh",
        format!("touch {}\n", marker.display()).as_bytes(),
        0,
        0,
        0o644,
    );
    let g = grant(&idp, &["id -u"]);
    let script = script.to_string_lossy().into_owned();
    let mut env = with_grant(&g.jwt).to_vec();
    env.push(("BASH_ENV", &script));
    env.push(("ENV", &script));
    let out = ps.run(&["su", "-c", "id -u", "root"], &env, None);
    assert_refused(&out);
    let l = assert_denied(&ps, "pam:su", "command");
    assert!(
        l["reason"].as_str().unwrap_or_default().contains("su -"),
        "{l}"
    );
    assert!(!marker.exists(), "the caller's BASH_ENV ran as root");
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

#[test]
fn su_refuses_a_sudo_shaped_grant_for_the_same_words() {
    // A grant for the argv ["id", "-u"] has the same cmd_hash as the su
    // string "id -u", but the string holds whitespace, so only an exact
    // binding may match it.
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = setup(
        "su-cross",
        &idp,
        "su",
        openape_tests::sudo_ns::GRANT_OR_DENY_STACK,
    );
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(
        &["su", "-", "-c", "id -u", "root"],
        &with_grant(&g.jwt),
        None,
    );
    assert_refused(&out);
    assert_denied(&ps, "pam:su-l", "command");
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

// ---------------------------------------------------------------------------
// 8: sudo's timestamp
// ---------------------------------------------------------------------------

/// Two sudo calls from one shell (one parent: without a tty sudo keys its
/// timestamp to the parent process), the grant only in the first.
const TWO_CALLS: &str = "\
OPENAPE_GRANT=\"$1\" sudo id -u; echo \"rc1=$?\"
sudo id -g; echo \"rc2=$?\"
";

fn timestamp_hole_is_closed_by_grant_only_account(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-ts", &idp, "sudo", SUDO_GRANT_ONLY);
    // sudo's default timestamp_timeout (15 min): the second call skips
    // authentication, but pam_acct_mgmt still runs.
    ps.write_sudoers(&sudoers(false, false));
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run_script(TWO_CALLS, &[&g.jwt], &[]);
    assert_eq!(out.stdout, "0\nrc1=0\nrc2=1\n", "{out}");
    // The timestamp was written by the first call and used by the second.
    assert!(
        std::fs::read_dir(ps.timestamp_dir())
            .map(|d| d.count())
            .unwrap_or(0)
            > 0,
        "no timestamp record: {out}"
    );
    // The second call carried no grant, so pam_authenticate would have
    // failed before account: a denial at `account` proves sudo skipped
    // authentication on its timestamp and grant_only caught it.
    let lines = ps.audit();
    assert_eq!(count(&ps, "grant_run"), 1, "{lines:?}");
    let l = assert_denied(&ps, "pam:sudo", "account");
    assert_eq!(l["command"], json!(["id", "-g"]), "{l}");
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}

/// The hole itself, for contrast: without grant_only and with sudo's
/// default timestamp_timeout, one grant opens a sudo session.
fn timestamp_hole_is_open_without_grant_only(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-ts-open", &idp, "sudo", SUDO_GRANT_OR_DENY);
    ps.write_sudoers(&sudoers(false, false));
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run_script(TWO_CALLS, &[&g.jwt], &[]);
    // `id -g` ran as root without any grant.
    assert_eq!(out.stdout, "0\nrc1=0\n0\nrc2=0\n", "{out}");
    assert_eq!(count(&ps, "grant_run"), 1);
    assert_eq!(count(&ps, "denied"), 0);
}

fn timestamp_zero_reauthenticates_and_refuses(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-ts0", &idp, "sudo", SUDO_GRANT_ONLY);
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run_script(TWO_CALLS, &[&g.jwt], &[]);
    assert_eq!(out.stdout, "0\nrc1=0\nrc2=1\n", "{out}");
    // No grant in the second call: the module answered PAM_IGNORE, the
    // grant-only stack had nothing else, and sudo never got to account.
    let lines = ps.audit();
    assert_eq!(count(&ps, "grant_run"), 1, "{lines:?}");
    assert_eq!(count(&ps, "denied"), 0, "{lines:?}");
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}

fn nopasswd_skips_auth_but_grant_only_account_still_refuses(imp: SudoImpl) {
    let idp = TestIdp::start();
    // grant-or-deny with pam_permit in account: NOPASSWD works as usual.
    let ps = setup_sudo(imp, "sudo-nopw", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let out = ps.run(&["sudo", "true"], &[], None);
    assert_eq!(out.code, 0, "{out}");
    assert!(ps.audit().is_empty());
    // grant-only: sudo skips pam_authenticate for NOPASSWD, pam_acct_mgmt
    // with grant_only refuses.
    ps.write_pam("sudo", SUDO_GRANT_ONLY);
    let out = ps.run(&["sudo", "true"], &[], None);
    assert_ne!(out.code, 0, "{out}");
    let l = assert_denied(&ps, "pam:sudo", "account");
    assert_eq!(l["command"], json!(["true"]), "{l}");
}

// ---------------------------------------------------------------------------
// 9: the IdP is down
// ---------------------------------------------------------------------------

fn idp_down_fails_closed_quickly(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-down", &idp, "sudo", SUDO_GRANT_ONLY);
    let g = grant(&idp, &["id", "-u"]);
    drop(idp); // the port is closed; the JWKS cache is empty
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    eprintln!(
        "IdP down: {} tries, refused after {:?}",
        count(&ps, "denied"),
        out.elapsed
    );
    assert!(
        out.elapsed < Duration::from_secs(2 + 5),
        "took {:?}: {out}",
        out.elapsed
    );
    assert_denied(&ps, "pam:sudo", "key");
    assert_eq!(count(&ps, "grant_run"), 0);
}

fn idp_hanging_fails_closed_within_the_http_timeout_per_try(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-hang", &idp, "sudo", SUDO_GRANT_ONLY);
    let g = grant(&idp, &["id", "-u"]);
    idp.set_fault(Fault::Hang);
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    // sudo asks up to passwd_tries (3) times; each try may take one
    // http.timeout (2 s), never more.
    let tries = count(&ps, "denied") as u64;
    eprintln!(
        "hanging IdP: {tries} tries, refused after {:?}",
        out.elapsed
    );
    assert!((1..=3).contains(&tries), "{:?}", ps.audit());
    assert!(
        out.elapsed < Duration::from_secs(2 * tries + 3),
        "took {:?} for {tries} tries: {out}",
        out.elapsed
    );
    assert_denied(&ps, "pam:sudo", "key");
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

// ---------------------------------------------------------------------------
// 10: shells
// ---------------------------------------------------------------------------

fn sudo_shell_forms_are_refused_and_consume_nothing(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-shell", &idp, "sudo", SUDO_GRANT_OR_DENY);
    // `sudo -i` authenticates under its own PAM service, sudo-i (sudoers'
    // pam_login_service; on Debian /etc/pam.d/sudo-i includes
    // common-auth, so a pam-auth-update install puts the module there
    // too). Give it the same stack.
    ps.write_pam(imp.login_service(), SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]);
    for argv in [
        &["sudo", "-s"][..],
        &["sudo", "-s", "id", "-u"],
        &["sudo", "-i"],
        &["sudo", "-i", "id", "-u"],
        &["sudoedit", "/etc/shadow"],
    ] {
        let before = ps.audit().len();
        let out = ps.run(argv, &with_grant(&g.jwt), None);
        assert_refused(&out);
        assert!(ps.audit().len() > before, "{argv:?}: no denied line");
        let l = ps.last_audit();
        assert_eq!(l["event"], "denied", "{argv:?}: {l}");
        if argv.get(1) != Some(&"-i") {
            // (sudo -i: see sudo_i_is_refused_at_the_command_step)
            assert_eq!(l["step"], "command", "{argv:?}: {l}");
            assert_eq!(l["via"], "pam:sudo", "{argv:?}: {l}");
        }
    }
    assert_eq!(count(&ps, "grant_run"), 0);
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

fn sudo_i_is_refused_at_the_command_step(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(
        imp,
        "sudo-i-step",
        &idp,
        imp.login_service(),
        SUDO_GRANT_OR_DENY,
    );
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "-i", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    let l = assert_denied(&ps, &format!("pam:{}", imp.login_service()), "command");
    assert_eq!(
        l["reason"], "sudo option -i is not allowed with grants",
        "{l}"
    );
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

fn sudo_i_with_a_no_command_grant_for_the_caller_gives_no_root(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(
        imp,
        "sudo-i-root",
        &idp,
        imp.login_service(),
        SUDO_GRANT_OR_DENY,
    );
    // Approved: "the agent acts as openape-e2e, no command".
    let mut spec = GrantSpec::new("testhost", &[]);
    spec.command = None;
    spec.run_as = Some(TEST_USER.to_string());
    let g = idp.issue(&spec);
    let out = ps.run(&["sudo", "-i", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    assert_eq!(count(&ps, "grant_run"), 0, "{:?}", ps.audit());
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

// ---------------------------------------------------------------------------
// Where the grant comes from under sudo
// ---------------------------------------------------------------------------

fn env_grant_reaches_the_module_without_env_keep(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-noenvkeep", &idp, "sudo", SUDO_GRANT_OR_DENY);
    ps.write_sudoers(&sudoers(true, false));
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_ran(&out, "0\n");
    assert_grant_run(&ps, "pam:sudo", &["id", "-u"]);
    // And the token does not reach the command: sudo's env_reset drops it.
    let g = grant(&idp, &["printenv", "OPENAPE_GRANT"]);
    let out = ps.run(
        &["sudo", "printenv", "OPENAPE_GRANT"],
        &with_grant(&g.jwt),
        None,
    );
    assert!(
        !out.stdout.contains(&g.jwt),
        "the command saw the grant: {out}"
    );
    assert_eq!(out.code, 1, "printenv finds no OPENAPE_GRANT: {out}");
    assert_grant_run(&ps, "pam:sudo", &["printenv", "OPENAPE_GRANT"]);
}

// ---------------------------------------------------------------------------
// The files the project ships (pam.d/), used verbatim
// ---------------------------------------------------------------------------

fn shipped_grant_only_stack_and_sudoers_drop_in_work_verbatim(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = sudo_sandbox(imp, "shipped-grant-only", &idp.issuer());
    if !with_common_stacks(&ps) {
        return;
    }
    ps.write_pam("sudo", &shipped("sudo.grant-only"));
    ps.write_sudoers(&format!(
        "{}\n{TEST_USER} ALL=(ALL:ALL) ALL\n",
        shipped("sudoers.openape")
    ));
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_ran(&out, "0\n");
    assert_grant_run(&ps, "pam:sudo", &["id", "-u"]);
    // Same grant, other command: refused, and exactly one denied line
    // (passwd_tries=1 in the shipped drop-in).
    let before = ps.audit().len();
    let out = ps.run(&["sudo", "id", "-g"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    assert_eq!(ps.audit().len(), before + 1, "{:?}", ps.audit());
    // No grant at all: refused (no password fallback in grant-only).
    let out = ps.run(&["sudo", "id", "-u"], &[], None);
    assert_refused(&out);
}

fn shipped_grant_or_password_stack_accepts_a_grant_and_otherwise_asks_for_the_password(
    imp: SudoImpl,
) {
    let idp = TestIdp::start();
    let ps = sudo_sandbox(imp, "shipped-grant-or-pw", &idp.issuer());
    if !with_common_stacks(&ps) {
        return;
    }
    ps.write_pam("sudo", &shipped("sudo.grant-or-password"));
    ps.write_sudoers(&format!(
        "{}\n{TEST_USER} ALL=(ALL:ALL) ALL\n",
        shipped("sudoers.openape")
    ));
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "id", "-u"], &with_grant(&g.jwt), None);
    assert_ran(&out, "0\n");
    // Without a grant the password module is asked (no terminal here, so
    // sudo gives up) and nothing is logged as a grant refusal. sudo 1.9
    // says it needs a password; sudo-rs, whose conversation opens the
    // terminal for every prompt, that it needs a terminal.
    let before = ps.audit().len();
    let out = ps.run(&["sudo", "id", "-u"], &[], None);
    assert_refused(&out);
    let asked = match imp {
        SudoImpl::Ogsudo => "password",
        SudoImpl::SudoRs => "A terminal is required to authenticate",
    };
    assert!(out.stderr.contains(asked), "{}: {out}", imp.label());
    assert_eq!(ps.audit().len(), before);
}

#[test]
fn shipped_su_stack_accepts_a_grant_for_the_dash_c_string() {
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = PamSandbox::new("shipped-su", &idp.issuer());
    if !with_common_stacks(&ps) {
        return;
    }
    ps.write_pam("su", &shipped("su.grant-or-password"));
    ps.write_pam("su-l", SU_L);
    ps.write_sudoers(&shipped_sudoers()); // the namespace mounts it; su ignores it
    let g = grant(&idp, &["id -u"]);
    let out = ps.run(
        &["su", "-", "-c", "id -u", "root"],
        &with_grant(&g.jwt),
        None,
    );
    assert_ran(&out, "0\n");
    assert_grant_run(&ps, "pam:su-l", &["id -u"]);
}

// ---------------------------------------------------------------------------
// The two implementations: which one runs, and where they differ
// ---------------------------------------------------------------------------

/// The namespace runs the implementation the test names, and the sudoers
/// of the scenarios parse without a diagnostic under both (sudo-rs knows
/// fewer Defaults than sudo 1.9 and prints every unknown one).
fn sudo_in_the_namespace_is_the_expected_implementation(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-which", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let out = ps.run(&["sudo", "-V"], &[], None);
    assert_eq!(out.code, 0, "{}: {out}", imp.label());
    let first = out.stdout.lines().next().unwrap_or_default().to_string();
    match imp {
        SudoImpl::Ogsudo => assert!(first.starts_with("Sudo version 1.9"), "{out}"),
        SudoImpl::SudoRs => assert_eq!(
            first,
            format!("sudo-rs {}", openape_tests::sudo_ns::SUDO_RS_VERSION.trim()),
            "{out}"
        ),
    }
    for sudoers_text in [shipped_sudoers(), sudoers(false, true)] {
        ps.write_sudoers(&sudoers_text);
        let out = ps.run(&["sudo", "-n", "true"], &[], None);
        assert_eq!(out.code, 0, "{}: {out}", imp.label());
        assert_eq!(out.stderr, "", "{}: {out}", imp.label());
    }
    ps.write_sudoers(&format!(
        "{}\n{TEST_USER} ALL=(ALL:ALL) NOPASSWD: /usr/bin/true\n",
        shipped("sudoers.openape")
    ));
    let out = ps.run(&["sudo", "-n", "true"], &[], None);
    assert_eq!(out.code, 0, "{}: {out}", imp.label());
    assert_eq!(out.stderr, "", "{}: {out}", imp.label());
}

/// The `-u` forms the module accepts name the same target under both
/// implementations: the command runs as that user, and the audit line
/// says so.
fn sudo_user_forms_name_the_same_target(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-user-forms", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let nobody_uid = uid_of("nobody");
    for form in [
        &["sudo", "-u", "nobody", "id", "-u"][..],
        &["sudo", "-unobody", "id", "-u"],
        &["sudo", "-Su", "nobody", "id", "-u"],
        &["sudo", "--user=nobody", "id", "-u"],
        &["sudo", "--user", "nobody", "--", "id", "-u"],
    ] {
        let mut spec = GrantSpec::new("testhost", &["id", "-u"]);
        spec.run_as = Some("nobody".to_string());
        let g = idp.issue(&spec);
        let out = ps.run(form, &with_grant(&g.jwt), None);
        assert_eq!(out.code, 0, "{} {form:?}: {out}", imp.label());
        assert_eq!(out.stdout, nobody_uid, "{} {form:?}: {out}", imp.label());
        let l = ps.last_audit();
        assert_eq!(l["event"], "grant_run", "{} {form:?}: {l}", imp.label());
        assert_eq!(l["run_as"], "nobody", "{} {form:?}: {l}", imp.label());
        assert_eq!(
            l["command"],
            json!(["id", "-u"]),
            "{} {form:?}: {l}",
            imp.label()
        );
        assert_eq!(idp.consume_count(&g.grant_id), 1);
    }
}

/// The uid of `user` in the passwd database.
fn uid_of(user: &str) -> String {
    let out = std::process::Command::new("/usr/bin/id")
        .args(["-u", user])
        .output()
        .unwrap_or_else(|e| panic!("id -u {user}: {e}"));
    assert!(out.status.success(), "id -u {user}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Command lines whose first word makes sudo do something other than run
/// that word: sudo-rs skips a lone `-` (`sudo - id -u` runs `id -u`), and
/// both switch to edit mode for `sudo sudoedit FILE`. A grant naming those
/// words exactly is refused before it is consumed.
fn sudo_commands_that_switch_sudo_modes_are_refused(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-modes", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["-", "id", "-u"]);
    let out = ps.run(&["sudo", "-", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    let l = assert_denied(&ps, "pam:sudo", "command");
    assert!(
        l["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("starting with -"),
        "{}: {l}",
        imp.label()
    );
    assert_eq!(idp.consume_count(&g.grant_id), 0, "{}", imp.label());
    let g = grant(&idp, &["sudoedit", "/etc/hostname"]);
    let env = [
        ("OPENAPE_GRANT", g.jwt.as_str()),
        ("EDITOR", "/usr/bin/true"),
        ("SUDO_EDITOR", "/usr/bin/true"),
    ];
    let out = ps.run(&["sudo", "sudoedit", "/etc/hostname"], &env, None);
    assert_ne!(out.code, 0, "{}: {out}", imp.label());
    let l = assert_denied(&ps, "pam:sudo", "command");
    assert_eq!(
        l["reason"],
        "sudoedit is not allowed with grants",
        "{}: {l}",
        imp.label()
    );
    assert_eq!(idp.consume_count(&g.grant_id), 0, "{}", imp.label());
    assert_eq!(count(&ps, "grant_run"), 0);
}

/// A grant naming `./x` names whatever `x` is in the directory the caller
/// chose: sudo runs it from the caller's working directory, which no grant
/// binds. escapes refuses such a program (a bare name or an absolute path
/// only); under sudo the module must too, before anything is consumed.
/// Without the check the caller's own script ran as root.
fn sudo_refuses_a_relative_program_with_a_slash(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-relative", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let script = "d=$(mktemp -d) && cd \"$d\" && mkdir bin \
        && printf '#!/bin/sh\\necho caller-script-uid-$(id -u)\\n' > x \
        && chmod 755 x && cp x bin/x && exec sudo \"$@\"";
    for cmd in ["./x", "bin/x"] {
        let g = grant(&idp, &[cmd]);
        let out = ps.run_script(script, &[cmd], &with_grant(&g.jwt));
        assert_refused(&out);
        let l = assert_denied(&ps, "pam:sudo", "command");
        assert!(
            l["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("relative program"),
            "{}: {l}",
            imp.label()
        );
        assert_eq!(idp.consume_count(&g.grant_id), 0, "{}", imp.label());
    }
    assert_eq!(count(&ps, "grant_run"), 0);
}

/// PAM_SILENT: sudo 1.9 passes it to every PAM call, so the module's
/// PAM_ERROR_MSG never reaches the user; sudo-rs passes it when running a
/// command but not for `-s`/`-i`, where the message shows (as `[sudo
/// error] OpenApe: ...`; with `-S` on stderr, otherwise on the terminal).
fn refusal_messages_reach_the_user_only_without_pam_silent(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-silent", &idp, "sudo", SUDO_GRANT_OR_DENY);
    ps.write_pam("sudo-i", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "-S", "id", "-g"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    assert!(!out.stderr.contains("OpenApe:"), "{}: {out}", imp.label());
    for argv in [&["sudo", "-S", "-s", "id"][..], &["sudo", "-S", "-i", "id"]] {
        let out = ps.run(argv, &with_grant(&g.jwt), None);
        assert_refused(&out);
        let shown = out.stderr.contains("OpenApe: sudo option -");
        match imp {
            SudoImpl::Ogsudo => assert!(!shown, "{argv:?}: {out}"),
            SudoImpl::SudoRs => assert!(shown, "{argv:?}: {out}"),
        }
    }
    assert_eq!(count(&ps, "grant_run"), 0);
    assert_eq!(idp.consume_count(&g.grant_id), 0);
}

/// `sudo -n` when the rule needs authentication: neither implementation
/// calls pam_authenticate, so a grant in the environment is never looked
/// at. With `Defaults noninteractive_auth` (sudo 1.9.13 here, sudo-rs) both
/// do, and a grant in the environment works with `-n`; without it agents
/// use a NOPASSWD rule and the module in the account phase.
fn sudo_n_never_asks_the_auth_stack(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = setup_sudo(imp, "sudo-n", &idp, "sudo", SUDO_GRANT_OR_DENY);
    let g = grant(&idp, &["id", "-u"]);
    let out = ps.run(&["sudo", "-n", "id", "-u"], &with_grant(&g.jwt), None);
    assert_refused(&out);
    assert!(ps.audit().is_empty(), "{}: {:?}", imp.label(), ps.audit());
    assert_eq!(idp.consume_count(&g.grant_id), 0);
    // With noninteractive_auth both run the auth stack under -n, and the
    // grant from the environment (no prompt: `nonint`) is enough.
    ps.write_sudoers(&format!(
        "{}Defaults noninteractive_auth\n",
        shipped_sudoers()
    ));
    let out = ps.run(&["sudo", "-n", "id", "-u"], &with_grant(&g.jwt), None);
    assert_ran(&out, "0\n");
    assert_grant_run(&ps, "pam:sudo", &["id", "-u"]);
    assert_eq!(idp.consume_count(&g.grant_id), 1);
}
