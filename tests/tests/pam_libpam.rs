//! pam_openape.so through real libpam, without touching /etc/pam.d: the
//! `pam-driver` test program loads a stack from a private directory with
//! `pam_start_confdir`. Its argv imitates the host program (`sudo id -u`,
//! `su -c ...`), because that is what the module reads from
//! /proc/self/cmdline. Needs root (the trust roots must be root-owned).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use openape_tests::harness::{HOST, Output, Run, Sandbox, artefact, require_root};
use openape_tests::idp::{Fault, GrantSpec, Issued, TestIdp};
use serde_json::{Value, json};

const SUCCESS: &str = "0";
const SERVICE_ERR: &str = "3";
const PERM_DENIED: &str = "6";
const AUTH_ERR: &str = "7";
const AUTHINFO_UNAVAIL: &str = "9";

struct Pam {
    sb: Sandbox,
    idp: TestIdp,
    module: String,
}

impl Pam {
    fn new(name: &str) -> Pam {
        let sb = Sandbox::new(name);
        let idp = TestIdp::start();
        sb.write_config(&sb.config(&idp.issuer()).render());
        let so = std::fs::read(artefact("libpam_openape.so")).unwrap();
        let module = sb.write_file("pam_openape.so", &so, 0, 0, 0o644);
        std::fs::create_dir_all(sb.path("pam.d")).unwrap();
        Pam {
            sb,
            idp,
            module: module.to_string_lossy().into_owned(),
        }
    }

    /// Write the stack for `service`; `{so}` and `{cfg}` are filled in.
    fn stack(&self, service: &str, text: &str) {
        let t = text
            .replace("{so}", &self.module)
            .replace("{cfg}", &self.sb.config_path().to_string_lossy());
        self.sb
            .write_file(&format!("pam.d/{service}"), t.as_bytes(), 0, 0, 0o644);
    }

    /// Run the driver as `argv0 args...` for `service`.
    fn drive(&self, service: &str, argv0: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut r = Run::new(artefact("pam-driver"))
            .arg0(argv0)
            .args(args)
            .env("PAMD_SERVICE", service)
            .env("PAMD_CONFDIR", self.sb.path("pam.d"))
            .env("PAMD_USER", "root")
            .env("PAMD_RUSER", "root")
            // A ceiling only (the 1,000-cycle run on a loaded machine);
            // rows with a time bound assert it themselves.
            .timeout(std::time::Duration::from_secs(120));
        for (k, v) in env {
            r = r.env(k, v);
        }
        r.output()
    }

    fn grant(&self, cmd: &[&str]) -> String {
        self.idp.issue(&GrantSpec::new(HOST, cmd)).jwt
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

const REQUIRED: &str =
    "auth required {so} config={cfg} nonint\naccount required {so} config={cfg} grant_only\n";

#[test]
fn valid_grant_from_the_environment_authenticates_and_logs() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-ok");
    p.stack("sudo", REQUIRED);
    let jwt = p.grant(&["id", "-u"]);
    let out = p.drive(
        "sudo",
        "sudo",
        &["id", "-u"],
        &[("OPENAPE_GRANT", &jwt), ("PAMD_STEPS", "auth,acct")],
    );
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    assert_eq!(code(&out, "acct"), SUCCESS, "{out}");
    let l = p.last();
    assert_eq!(l["event"], "grant_run");
    assert_eq!(l["via"], "pam:sudo");
    assert_eq!(l["command"], json!(["id", "-u"]));
    assert_eq!(l["run_as"], "root");
    assert_eq!(l["decided_by"], "alice@example.com");
    assert!(!p.sb.audit_text().contains(&jwt), "token in the audit log");
    // Exactly one consume, and nothing outlived the hooks.
    assert_eq!(p.idp.request_count("/api/grants/"), 1);
    assert!(out.stdout.contains("threads=1,1"), "{out}");
}

#[test]
fn grant_from_the_conversation_and_from_the_pam_environment() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-conv");
    p.stack("sudo", "auth required {so} config={cfg}\n");
    let jwt = p.grant(&["id", "-u"]);
    let out = p.drive(
        "sudo",
        "sudo",
        &["-S", "id", "-u"],
        &[("PAMD_ANSWER", &jwt)],
    );
    assert!(out.stdout.contains("prompt=OpenApe grant: "), "{out}");
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");

    let jwt = p.grant(&["id", "-u"]);
    let env = format!("OPENAPE_GRANT={jwt}");
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("PAMD_PAMENV", &env)]);
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    assert!(
        !out.stdout.contains("prompt="),
        "env grant must not prompt\n{out}"
    );
}

#[test]
fn no_grant_is_ignored_so_the_stack_falls_through() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-ignore");
    p.stack(
        "sudo",
        "auth sufficient {so} config={cfg} nonint\nauth required pam_permit.so\n",
    );
    let out = p.drive("sudo", "sudo", &["id"], &[]);
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    assert!(
        p.sb.audit_lines().is_empty(),
        "no grant must not be logged as a refusal"
    );
    // With the module alone, nothing decides: libpam refuses.
    p.stack("sudo", "auth required {so} config={cfg} nonint\n");
    let out = p.drive("sudo", "sudo", &["id"], &[]);
    assert_ne!(code(&out, "auth"), SUCCESS, "{out}");
}

/// One refusal per case: (label, argv, env grant, expected code, step).
#[test]
fn refusals_map_to_auth_err_with_a_denied_line() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-refuse");
    p.stack("sudo", REQUIRED);
    let good_issued = p.idp.issue(&GrantSpec::new(HOST, &["id", "-u"]));
    let good = good_issued.jwt.clone();
    let mut sig = good.clone();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    let mut other_host = GrantSpec::new("otherhost", &["id", "-u"]);
    other_host.target_host = "otherhost".into();
    let wrong_host = p.idp.issue(&other_host).jwt;
    let replayed = p.grant(&["id", "-u"]);
    let first = p.drive(
        "sudo",
        "sudo",
        &["id", "-u"],
        &[("OPENAPE_GRANT", &replayed)],
    );
    assert_eq!(code(&first, "auth"), SUCCESS, "{first}");

    let cases: Vec<(&str, Vec<&str>, String, &str, &str)> = vec![
        (
            "bad signature",
            vec!["id", "-u"],
            sig,
            AUTH_ERR,
            "signature",
        ),
        ("wrong host", vec!["id", "-u"], wrong_host, AUTH_ERR, "host"),
        (
            "wrong target user",
            vec!["-u", "nobody", "id", "-u"],
            good.clone(),
            AUTH_ERR,
            "target_user",
        ),
        (
            "command mismatch",
            vec!["id", "-g"],
            good.clone(),
            AUTH_ERR,
            "command",
        ),
        ("sudo -s", vec!["-s"], good.clone(), AUTH_ERR, "command"),
        (
            "sudo -i",
            vec!["-i", "id", "-u"],
            good.clone(),
            AUTH_ERR,
            "command",
        ),
        (
            "uid -1",
            vec!["-u", "#-1", "id", "-u"],
            good.clone(),
            AUTH_ERR,
            "command",
        ),
        ("replay", vec!["id", "-u"], replayed, AUTH_ERR, "consume"),
        (
            "garbage",
            vec!["id", "-u"],
            "not.a.jwt".into(),
            AUTH_ERR,
            "parse",
        ),
    ];
    for (label, argv, jwt, want, step) in cases {
        let out = p.drive("sudo", "sudo", &argv, &[("OPENAPE_GRANT", &jwt)]);
        assert_eq!(code(&out, "auth"), want, "{label}\n{out}");
        let l = p.last();
        assert_eq!(l["event"], "denied", "{label}");
        assert_eq!(l["step"], step, "{label}: {l}");
        assert_eq!(l["via"], "pam:sudo", "{label}");
        // Only a grant that passed every check is named (the replay).
        assert_eq!(
            l.get("grant_id").is_some(),
            step == "consume",
            "{label}: {l}"
        );
        assert!(
            out.stdout.contains("msg=3:OpenApe: "),
            "{label}: the user is told why\n{out}"
        );
    }
    // Refusals before step 12 consumed nothing.
    assert_eq!(p.idp.consume_count(&good_issued.grant_id), 0);
    assert!(!p.sb.audit_text().contains(&good), "token in the audit log");
}

#[test]
fn idp_unreachable_is_authinfo_unavail() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-down");
    p.stack("sudo", REQUIRED);
    let jwt = p.grant(&["id", "-u"]);
    p.idp.set_fault(Fault::Down);
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &jwt)]);
    assert_eq!(code(&out, "auth"), AUTHINFO_UNAVAIL, "{out}");
    assert_eq!(p.last()["step"], "key");
    // Warm cache, IdP hanging at consume: still unavailable, within the timeout.
    p.idp.clear_faults();
    let jwt = p.grant(&["id", "-u"]);
    let warm = p.grant(&["id", "-u"]);
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &warm)]);
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    p.idp.set_fault(Fault::Hang);
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &jwt)]);
    assert_eq!(code(&out, "auth"), AUTHINFO_UNAVAIL, "{out}");
    assert_eq!(p.last()["step"], "consume");
    assert!(
        out.elapsed.as_secs_f64() < 2.0 + 1.5,
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn broken_configuration_or_arguments_are_service_errors() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-svcerr");
    let issued = p.idp.issue(&GrantSpec::new(HOST, &["id", "-u"]));
    let jwt = issued.jwt.clone();
    p.stack(
        "sudo",
        "auth required {so} config={cfg} nonint bogus_argument\n",
    );
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &jwt)]);
    assert_eq!(code(&out, "auth"), SERVICE_ERR, "{out}");
    p.stack("sudo", "auth required {so} config={cfg} nonint\n");
    p.sb.write_config("[security]\nallowed_issuers = \"not a list\"\n");
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &jwt)]);
    assert_eq!(code(&out, "auth"), SERVICE_ERR, "{out}");
    assert_eq!(p.idp.consume_count(&issued.grant_id), 0);
    assert_eq!(
        p.idp.request_count("/"),
        0,
        "a broken config must stop before any traffic"
    );
}

#[test]
fn caller_must_match_pam_ruser() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-ruser");
    p.stack("sudo", REQUIRED);
    let jwt = p.grant(&["id", "-u"]);
    let out = p.drive(
        "sudo",
        "sudo",
        &["id", "-u"],
        &[("OPENAPE_GRANT", &jwt), ("PAMD_RUSER", "mallory")],
    );
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert_eq!(p.last()["step"], "caller");
}

#[test]
fn grant_only_account_refuses_without_a_grant_in_this_handle() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-acct");
    p.stack("sudo", REQUIRED);
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("PAMD_STEPS", "acct")]);
    assert_eq!(code(&out, "acct"), PERM_DENIED, "{out}");
    let l = p.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("account"))
    );
}

#[test]
fn services_without_a_command_accept_only_unbound_grants() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-login");
    p.stack(
        "login",
        "auth required {so} config={cfg} nonint allow_service=login\n",
    );
    let bound = p.grant(&["id"]);
    let out = p.drive("login", "login", &[], &[("OPENAPE_GRANT", &bound)]);
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert_eq!(p.last()["step"], "command");
    let spec = GrantSpec::unbound(HOST);
    let unbound = p.idp.issue(&spec).jwt;
    let out = p.drive("login", "login", &[], &[("OPENAPE_GRANT", &unbound)]);
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
}

#[test]
fn su_binds_the_dash_c_string() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-su");
    p.stack("su", "auth required {so} config={cfg} nonint\n");
    let jwt = p.grant(&["id -u"]);
    let out = p.drive(
        "su",
        "su",
        &["-", "-c", "id -u", "root"],
        &[("OPENAPE_GRANT", &jwt)],
    );
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    assert_eq!(p.last()["via"], "pam:su");
    let jwt = p.grant(&["id -u"]);
    let out = p.drive(
        "su",
        "su",
        &["-l", "-c", "id -g", "root"],
        &[("OPENAPE_GRANT", &jwt)],
    );
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    // The command line names another user than PAM_USER: refused.
    let out = p.drive(
        "su",
        "su",
        &["--login", "-c", "id -u", "nobody"],
        &[("OPENAPE_GRANT", &jwt)],
    );
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
}

/// Issue 10 item 1: su without `-`/`-l` keeps the caller's PATH, BASH_ENV,
/// ENV…, so the approved string would run the caller's own programs and
/// start-up files as root. A grant for exactly that string is refused,
/// with a reason that says how to call su, and nothing is consumed.
#[test]
fn su_without_a_login_environment_is_refused() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-su-env");
    p.stack("su", "auth required {so} config={cfg} nonint\n");
    for args in [
        &["-c", "systemctl status nginx", "root"][..],
        &["-c", "systemctl status nginx"],
        &["--command=systemctl status nginx", "--", "root"],
    ] {
        let issued = p
            .idp
            .issue(&GrantSpec::new(HOST, &["systemctl status nginx"]));
        let out = p.drive(
            "su",
            "su",
            args,
            &[
                ("OPENAPE_GRANT", &issued.jwt),
                ("BASH_ENV", "/tmp/evil"),
                ("PATH", "/tmp/evil-bin:/usr/bin:/bin"),
            ],
        );
        assert_eq!(code(&out, "auth"), AUTH_ERR, "{args:?}\n{out}");
        let l = p.last();
        assert_eq!(l["event"], "denied", "{l}");
        assert!(
            l["reason"].as_str().unwrap_or_default().contains("su -"),
            "{l}"
        );
        assert_eq!(p.idp.consume_count(&issued.grant_id), 0);
    }
}

/// Issue 10 item 2: a service the module does not positively understand
/// refuses a grant unless the admin opts it in with `allow_service=`; an
/// elevation program (doas, polkit's helper, run0, …; known by service or
/// by executable) refuses even then. No grant: no prompt, PAM_IGNORE.
#[test]
fn unknown_services_and_elevation_programs_refuse_grants() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-services");
    let spec = GrantSpec::unbound(HOST);
    let unbound = || p.idp.issue(&spec);
    let refused = |service: &str, argv0: &str, why: &str, out: &Output, g: &Issued| {
        assert_eq!(code(out, "auth"), AUTH_ERR, "{service}: {out}");
        let l = p.last();
        assert_eq!(l["event"], "denied", "{l}");
        assert!(
            l["reason"].as_str().unwrap_or_default().contains(why),
            "{service} ({argv0}): {l}"
        );
        assert_eq!(p.idp.consume_count(&g.grant_id), 0, "{service}");
    };
    // Not opted in.
    for service in ["sshd", "login", "doas", "polkit-1"] {
        p.stack(service, "auth required {so} config={cfg}\n");
        let g = unbound();
        let out = p.drive(
            service,
            service,
            &["sh", "-c", "id"],
            &[("OPENAPE_GRANT", &g.jwt)],
        );
        let why = if matches!(service, "doas" | "polkit-1") {
            "never accepted"
        } else {
            "allow_service="
        };
        refused(service, service, why, &out, &g);
        // Without a grant it stays out of the way and never prompts.
        let out = p.drive(service, service, &[], &[("PAMD_ANSWER", "x")]);
        assert!(!out.stdout.contains("prompt="), "{service}: {out}");
    }
    // Opted in: an elevation service still refuses.
    for service in ["doas", "polkit-1", "systemd-run0"] {
        p.stack(
            service,
            &format!("auth required {{so}} config={{cfg}} nonint allow_service={service}\n"),
        );
        let g = unbound();
        let out = p.drive(
            service,
            service,
            &["sh", "-c", "id"],
            &[("OPENAPE_GRANT", &g.jwt)],
        );
        refused(service, service, "never accepted", &out, &g);
    }
    // Opted in under an innocent service name, but the program is doas.
    p.stack(
        "login",
        "auth required {so} config={cfg} nonint allow_service=login\n",
    );
    let doas = p.sb.install_setuid(&artefact("pam-driver"), "bin/doas");
    let g = unbound();
    let out = Run::new(&doas)
        .args(["sh", "-c", "id"])
        .env("PAMD_SERVICE", "login")
        .env("PAMD_CONFDIR", p.sb.path("pam.d"))
        .env("PAMD_USER", "root")
        .env("PAMD_RUSER", "root")
        .env("OPENAPE_GRANT", &g.jwt)
        .output();
    refused("login", "doas", "never accepted", &out, &g);
    // Opted in, ordinary program: an unbound grant authenticates PAM_USER.
    let g = unbound();
    let out = p.drive("login", "login", &[], &[("OPENAPE_GRANT", &g.jwt)]);
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
}

/// A service opted in with `allow_service=` logs in PAM_USER, and PAM_USER
/// must be the one account its name names, as sudo's and su's targets
/// are: with a second name of uid 0 (`toor:x:0:0`, added in a private
/// mount namespace) an unbound grant for "toor" is refused before the
/// consume; the same grant shape for "root" still authenticates.
#[test]
fn allowed_services_log_in_only_the_account_pam_user_names() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-alias");
    p.stack(
        "login",
        "auth required {so} config={cfg} nonint allow_service=login\n",
    );
    let unbound = |run_as: &str| {
        let mut spec = GrantSpec::unbound(HOST);
        spec.run_as = Some(run_as.to_string());
        p.idp.issue(&spec)
    };
    let drive_as = |user: &str, g: &Issued| {
        Run::new("/bin/sh")
            .args([
                "-c",
                "printf '%s\\n' 'toor:x:0:0:second name of root:/root:/bin/sh' >> /etc/passwd && exec \"$@\"",
                "sh",
            ])
            .arg(artefact("pam-driver").to_string_lossy().as_ref())
            .env("PAMD_SERVICE", "login")
            .env("PAMD_CONFDIR", p.sb.path("pam.d"))
            .env("PAMD_USER", user)
            .env("PAMD_RUSER", "root")
            .env("OPENAPE_GRANT", &g.jwt)
            .config_ns(p.sb.config_ns())
            .output()
    };
    let g = unbound("toor");
    let out = drive_as("toor", &g);
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    let l = p.last();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("target_user")),
        "{l}"
    );
    assert_eq!(p.idp.consume_count(&g.grant_id), 0);
    let g = unbound("root");
    let out = drive_as("root", &g);
    assert_eq!(code(&out, "auth"), SUCCESS, "{out}");
    assert_eq!(p.idp.consume_count(&g.grant_id), 1);
}

#[test]
fn a_thousand_refusals_in_one_process_leak_nothing() {
    if !require_root() {
        return;
    }
    let p = Pam::new("pam-leak");
    p.stack("sudo", REQUIRED);
    let jwt = p.grant(&["id", "-u"]);
    // Warm the key cache, then refuse many times in one process (the
    // command does not match, so nothing is consumed).
    let out = p.drive(
        "sudo",
        "sudo",
        &["id", "-g"],
        &[
            ("OPENAPE_GRANT", &jwt),
            ("PAMD_REPEAT", "1000"),
            ("PAMD_STEPS", "auth"),
        ],
    );
    let last = out.stdout.lines().last().unwrap_or_default().to_string();
    let (threads, fds) = last.split_once(' ').unwrap();
    let same = |s: &str| {
        let (a, b) = s.split_once('=').unwrap().1.split_once(',').unwrap();
        a == b
    };
    assert!(same(threads) && same(fds), "{last}");
    assert_eq!(out.stdout.matches("auth=7").count(), 1000);
}

/// A panic inside a hook must not unwind into libpam and abort the host
/// (sudo, su, sshd): it is caught and refused. Needs a module built with
/// the test-only `fault-injection` feature, built here into its own
/// target directory (it is never part of a shipped build).
#[test]
fn a_panic_in_the_hook_is_a_refusal_not_a_crash() {
    if !require_root() {
        return;
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = workspace.join("target/fault-injection");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "pam_openape",
            "--features",
            "fault-injection",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&workspace)
        .status()
        .expect("run cargo");
    assert!(
        built.success(),
        "building the fault-injection module failed"
    );
    let p = Pam::new("pam-panic");
    let faulty = std::fs::read(target.join("debug/libpam_openape.so")).unwrap();
    let so =
        p.sb.write_file("pam_openape_fault.so", &faulty, 0, 0, 0o644);
    p.stack(
        "sudo",
        &format!(
            "auth required {} config={{cfg}} nonint fault_panic\n",
            so.display()
        ),
    );
    let jwt = p.grant(&["id", "-u"]);
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &jwt)]);
    assert_eq!(out.code, 0, "the host process died: {out}");
    assert_eq!(code(&out, "auth"), AUTH_ERR, "{out}");
    assert!(
        out.stdout.contains("threads="),
        "the driver did not finish: {out}"
    );
    // The shipped module refuses the argument outright.
    p.stack(
        "sudo",
        "auth required {so} config={cfg} nonint fault_panic\n",
    );
    let out = p.drive("sudo", "sudo", &["id", "-u"], &[("OPENAPE_GRANT", &jwt)]);
    assert_eq!(code(&out, "auth"), SERVICE_ERR, "{out}");
}
