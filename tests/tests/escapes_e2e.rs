//! End-to-end suite for `escapes`: a setuid-root copy of the built binary,
//! run by a real non-root user (`openape-e2e`, with a supplementary group)
//! against the in-process test IdP. Every refusal asserts the exit code,
//! that the command did not run, and the audit line (`event`, `step`).
//!
//! Needs root (installs a setuid binary and creates a user); without root
//! every test prints a skip notice and passes. Run after
//! `cargo build --workspace`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openape_tests::harness::{
    self, HOST, Output, Run, Sandbox, TestUser, exec_raw, groups_of, set_owner_mode, test_user,
};
use openape_tests::http_client;
use openape_tests::idp::{Fault, GrantSpec, GrantType, Issued, TestIdp};
use pam_openape::config::DEFAULT_SECURE_PATH;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// One test's world: its own IdP, its own sandbox (configured for that
/// IdP), and the test user.
struct T {
    idp: TestIdp,
    sb: Sandbox,
    user: &'static TestUser,
}

/// `None` (after the skip notice) when not root.
fn setup(name: &str) -> Option<T> {
    if !harness::require_root() {
        return None;
    }
    let user = test_user();
    let idp = TestIdp::start();
    let sb = Sandbox::new(name);
    sb.write_config(&sb.config(&idp.issuer()).render());
    Some(T { idp, sb, user })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl T {
    /// A once-grant for `argv` on this host (all three bindings).
    fn spec(&self, argv: &[String]) -> GrantSpec {
        GrantSpec::new(HOST, &strs(argv))
    }

    fn issue(&self, argv: &[String]) -> Issued {
        self.idp.issue(&self.spec(argv))
    }

    /// `escapes [opts] --grant-stdin -- argv` as the test user, the grant
    /// on stdin.
    fn run(&self, jwt: &str, opts: &[&str], argv: &[String]) -> Output {
        let mut args: Vec<String> = opts.iter().map(|s| (*s).to_string()).collect();
        args.push("--grant-stdin".into());
        args.push("--".into());
        args.extend(argv.iter().cloned());
        self.sb.run_as_user(&args, &[], Some(jwt.as_bytes()))
    }

    /// Run a fresh grant for `true` so the JWKS cache is warm.
    fn warm_cache(&self) {
        let before = self.jwks_requests();
        let argv = vec!["true".to_string()];
        let g = self.issue(&argv);
        let out = self.run(&g.jwt, &[], &argv);
        assert_eq!(out.code, 0, "warming the cache: {out}");
        assert_eq!(
            self.jwks_requests(),
            before + 1,
            "one JWKS fetch to warm the cache"
        );
    }

    fn jwks_requests(&self) -> usize {
        self.idp.request_count("/.well-known/jwks.json")
    }

    fn consume_requests(&self) -> usize {
        self.idp.request_count("/api/grants/")
    }

    /// Sign `claims` with the IdP's current key and default header.
    fn sign(&self, claims: Value) -> String {
        self.idp.sign(Value::Null, claims)
    }

    /// Grant claims for `argv`, issued now (not stored at the IdP).
    fn claims(&self, argv: &[String]) -> Value {
        self.idp.claims_for(&self.spec(argv), "e2e-forged", now())
    }

    /// Refused: exit `code`, the marker is absent, the last audit line is a
    /// `denied` line for `step`.
    fn assert_denied(&self, out: &Output, code: i32, step: &str, marker: &str) {
        assert_eq!(out.code, code, "{out}");
        assert!(
            !self.sb.marker_exists(marker),
            "the command ran although refused: {out}"
        );
        let last = self.sb.last_audit();
        assert_eq!(last["event"], "denied", "{last}\n{out}");
        assert_eq!(last["step"], step, "{last}\n{out}");
        assert_eq!(last["via"], "escapes", "{last}");
        assert_eq!(last["real_uid"], self.user.uid, "{last}");
        assert!(
            last["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{last}"
        );
    }

    /// Refused before anything could be logged or sent: exit `code`, no
    /// audit line, no request to the IdP, marker absent.
    fn assert_refused_early(&self, out: &Output, code: i32, marker: &str) {
        assert_eq!(out.code, code, "{out}");
        assert!(!self.sb.marker_exists(marker), "the command ran: {out}");
        assert!(
            self.idp.requests().is_empty(),
            "IdP was contacted: {:?}",
            self.idp.requests()
        );
    }

    fn assert_not_consumed(&self, g: &Issued) {
        assert_eq!(self.idp.consume_count(&g.grant_id), 0, "grant was consumed");
        assert_eq!(
            self.idp
                .request_count(&format!("/api/grants/{}/consume", g.grant_id)),
            0,
            "a consume request was sent"
        );
    }
}

/// Flip one character in the middle of the signature segment.
fn flip_signature(jwt: &str) -> String {
    let (signed, sig) = jwt.rsplit_once('.').unwrap();
    let mut b = sig.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    format!("{signed}.{}", String::from_utf8(b).unwrap())
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// `KEY=value` lines of an `env` run.
fn env_map(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gid_set(s: &str) -> BTreeSet<u32> {
    s.split_whitespace().map(|g| g.parse().unwrap()).collect()
}

// ---------------------------------------------------------------------------
// 1. parse
// ---------------------------------------------------------------------------

#[test]
fn parse_refuses_garbage_tokens() {
    let Some(t) = setup("parse-garbage") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    for junk in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJFZERTQSJ9.e30.",
        "not base64.!!.??",
    ] {
        let out = t.run(junk, &[], &argv);
        t.assert_denied(&out, 5, "parse", "m");
    }
    assert!(t.idp.requests().is_empty(), "{:?}", t.idp.requests());
}

#[test]
fn parse_refuses_alg_none() {
    let Some(t) = setup("parse-none") else { return };
    let argv = t.sb.marker_cmd("m");
    let claims = t.claims(&argv);
    let kid = t.idp.kid();
    // Unsigned, as alg none is meant; and with a valid-looking signature.
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT","kid":kid})),
        b64(&claims)
    );
    let signed = t.idp.sign(json!({"alg": "none"}), claims);
    for tok in [unsigned, signed] {
        let out = t.run(&tok, &[], &argv);
        t.assert_denied(&out, 5, "parse", "m");
    }
    assert!(t.idp.requests().is_empty());
}

#[test]
fn parse_refuses_hs256_macd_with_the_public_key() {
    let Some(t) = setup("parse-hs256") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let jwks: Value = serde_json::from_str(&t.idp.jwks_json()).unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
    let raw_key = URL_SAFE_NO_PAD.decode(&x).unwrap();
    let signing_input = format!(
        "{}.{}",
        b64(&json!({"alg":"HS256","typ":"JWT","kid":t.idp.kid()})),
        b64(&t.claims(&argv))
    );
    for key in [
        raw_key.as_slice(),
        x.as_bytes(),
        t.idp.jwks_json().as_bytes(),
    ] {
        let mac = hmac_sha256(key, signing_input.as_bytes());
        let tok = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac));
        let out = t.run(&tok, &[], &argv);
        t.assert_denied(&out, 5, "parse", "m");
    }
    assert!(t.idp.requests().is_empty());
}

// ---------------------------------------------------------------------------
// 2. issuer
// ---------------------------------------------------------------------------

#[test]
fn issuer_not_allowed_is_refused_before_any_traffic() {
    let Some(t) = setup("issuer") else { return };
    let other = TestIdp::start();
    let argv = t.sb.marker_cmd("m");
    let g = other.issue(&GrantSpec::new(HOST, &strs(&argv)));
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "issuer", "m");
    assert!(
        other.requests().is_empty(),
        "the unlisted issuer was contacted: {:?}",
        other.requests()
    );
    assert!(t.idp.requests().is_empty());
}

// ---------------------------------------------------------------------------
// 3. key
// ---------------------------------------------------------------------------

/// The shipped refresh limit (`jwks_min_refresh` default: a bucket of
/// `REFRESH_BURST` fetches, one more per 20 s), not the harness's 0.
fn with_shipped_refresh_limit(t: &T) {
    let mut cfg = t.sb.config(&t.idp.issuer());
    cfg.jwks_min_refresh = 20;
    t.sb.write_config(&cfg.render());
}

#[test]
fn made_up_kid_flood_costs_the_idp_a_few_jwks_requests() {
    let Some(t) = setup("key-kid-flood") else {
        return;
    };
    with_shipped_refresh_limit(&t);
    t.warm_cache();
    let argv = t.sb.marker_cmd("m");
    for i in 0..100 {
        let tok = t
            .idp
            .sign(json!({"kid": format!("made-up-{i}")}), t.claims(&argv));
        let out = t.run(&tok, &[], &argv);
        t.assert_denied(&out, 5, "key", "m");
    }
    let bound = 1 + pam_openape::jwks::REFRESH_BURST as usize;
    assert!(
        t.jwks_requests() <= bound,
        "{} JWKS requests for 100 made-up kids (bound {bound})",
        t.jwks_requests()
    );
    assert_eq!(t.consume_requests(), 1, "only the warm-up consumed");
    // Known keys keep working from the cache, without a request.
    let before = t.jwks_requests();
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(t.jwks_requests(), before);
}

#[test]
fn made_up_kid_flood_against_a_failing_jwks_endpoint_is_bounded_too() {
    let Some(t) = setup("key-kid-flood-5xx") else {
        return;
    };
    with_shipped_refresh_limit(&t);
    // Nothing cached and every JWKS fetch fails: each attempt would
    // otherwise ask again.
    t.idp
        .set_fault_for("/.well-known/jwks.json", Fault::Status(503));
    let argv = t.sb.marker_cmd("m");
    for i in 0..30 {
        let tok = t
            .idp
            .sign(json!({"kid": format!("made-up-{i}")}), t.claims(&argv));
        let out = t.run(&tok, &[], &argv);
        t.assert_denied(&out, 1, "key", "m");
    }
    let bound = pam_openape::jwks::REFRESH_BURST as usize;
    assert!(
        t.jwks_requests() <= bound,
        "{} JWKS requests from 30 runs against a failing endpoint (bound {bound})",
        t.jwks_requests()
    );
    assert_eq!(t.consume_requests(), 0);
}

/// A caller spent the issuer's JWKS refresh budget without refreshing
/// anything: a run with a made-up `kid` takes a token and starts the
/// fetch, and the caller (the real uid of its own setuid process)
/// SIGKILLs it before the answer is stored. Three such runs emptied the
/// bucket; with nothing cached (first use, or a cache past
/// `jwks_max_age`) every other user's valid grant was then refused at
/// step key until the next token, which the caller's loop takes again:
/// one unprivileged user locked every grant out. The refresh, from the
/// spent token to the stored answer, is no longer the caller's to cut.
#[test]
fn a_caller_cannot_spend_the_refresh_budget_by_killing_its_own_fetches() {
    use std::io::Write as _;
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    use std::process::{Command, Stdio};
    let Some(t) = setup("key-kill-refresh") else {
        return;
    };
    with_shipped_refresh_limit(&t);
    // Slow enough that the caller's kill lands while the fetch is out.
    t.idp.set_fault_for(
        "/.well-known/jwks.json",
        Fault::Slow(Duration::from_millis(1500)),
    );
    let argv = t.sb.marker_cmd("m");
    let mut kills = Vec::new();
    for i in 0..pam_openape::jwks::REFRESH_BURST as usize {
        let tok = t
            .idp
            .sign(json!({"kid": format!("made-up-{i}")}), t.claims(&argv));
        let ns = t.sb.config_ns();
        let mut cmd = Command::new("/usr/bin/setpriv");
        // SAFETY: runs in the forked child before exec, as root;
        // ConfigNs::enter makes system calls only.
        unsafe { cmd.pre_exec(move || ns.enter()) };
        let mut child = cmd
            .arg(format!("--reuid={}", t.user.uid))
            .arg(format!("--regid={}", t.user.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(t.sb.escapes())
            .arg("--grant-stdin")
            .arg("--")
            .args(&argv)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(t.sb.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(tok.as_bytes())
            .unwrap();
        let start = std::time::Instant::now();
        while t.jwks_requests() <= i && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(t.jwks_requests(), i + 1, "run {i} never asked for the JWKS");
        // The caller's own kill, with its own uid.
        let kill = Run::new("/bin/kill")
            .args(["-KILL", &child.id().to_string()])
            .as_test_user()
            .output();
        kills.push(kill.code);
        let status = child.wait().unwrap();
        assert_ne!(
            status.signal(),
            Some(libc::SIGKILL),
            "run {i}: the caller killed escapes in the middle of the JWKS refresh"
        );
    }
    assert!(kills.iter().all(|c| *c != 0), "kill exit codes {kills:?}");
    t.idp.clear_faults();

    // Another user's valid grant right after.
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
    assert_eq!(t.idp.consume_count(&g.grant_id), 1);
}

// ---------------------------------------------------------------------------
// 4. signature
// ---------------------------------------------------------------------------

#[test]
fn flipped_signature_character_is_refused() {
    let Some(t) = setup("signature") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&flip_signature(&g.jwt), &[], &argv);
    t.assert_denied(&out, 5, "signature", "m");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// 5. time
// ---------------------------------------------------------------------------

#[test]
fn expired_grant_is_refused() {
    let Some(t) = setup("time-exp") else { return };
    let argv = t.sb.marker_cmd("m");
    // A once grant issued 1000 s ago: exp = iat + 300, 700 s in the past.
    let claims = t
        .idp
        .claims_for(&t.spec(&argv), "e2e-expired", now() - 1000);
    assert!(claims["exp"].as_u64().unwrap() + 600 < now());
    let out = t.run(&t.sign(claims), &[], &argv);
    t.assert_denied(&out, 5, "time", "m");
    assert_eq!(t.consume_requests(), 0);
}

#[test]
fn grant_not_yet_valid_is_refused() {
    let Some(t) = setup("time-nbf") else { return };
    let argv = t.sb.marker_cmd("m");
    let mut claims = t.claims(&argv);
    claims["nbf"] = json!(now() + 3600);
    let out = t.run(&t.sign(claims), &[], &argv);
    t.assert_denied(&out, 5, "time", "m");
    assert_eq!(t.consume_requests(), 0);
}

// ---------------------------------------------------------------------------
// 6. approver
// ---------------------------------------------------------------------------

#[test]
fn approver_not_allowed_is_refused() {
    let Some(t) = setup("approver-other") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.decided_by = "mallory@example.com".into();
    let g = t.idp.issue(&spec);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "approver", "m");
    t.assert_not_consumed(&g);
}

#[test]
fn grant_without_decided_by_is_refused() {
    let Some(t) = setup("approver-missing") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let mut claims = t.claims(&argv);
    claims.as_object_mut().unwrap().remove("decided_by");
    let out = t.run(&t.sign(claims), &[], &argv);
    t.assert_denied(&out, 5, "approver", "m");
    assert_eq!(t.consume_requests(), 0);
}

#[test]
fn self_approved_grant_is_refused() {
    let Some(t) = setup("approver-self") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.requester = harness::APPROVER.into();
    let g = t.idp.issue(&spec);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "approver", "m");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// 7. audience
// ---------------------------------------------------------------------------

#[test]
fn audience_apes_cli_is_refused() {
    let Some(t) = setup("audience") else { return };
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.audience = "apes-cli".into();
    let g = t.idp.issue(&spec);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "audience", "m");
    t.assert_not_consumed(&g);
}

#[test]
fn agent_login_token_is_refused() {
    let Some(t) = setup("audience-login") else {
        return;
    };
    let post = |path: &str, body: Value| -> Value {
        let (status, text) = http_client::request(
            t.idp.addr(),
            "POST",
            path,
            &[],
            Some(&body.to_string()),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    };
    let id = "agent@example.com";
    let ch = post("/api/auth/challenge", json!({"id": id}));
    let login = post(
        "/api/auth/authenticate",
        json!({"id": id, "challenge": ch["challenge"], "signature": "c2ln"}),
    );
    let token = login["token"].as_str().unwrap().to_string();
    let before = t.idp.requests().len();
    let argv = t.sb.marker_cmd("m");
    let out = t.run(&token, &[], &argv);
    // Same key and kid as grants, but no grant_id/grant_type/target_host:
    // it is not a grant, so it fails at parse (before the audience check).
    t.assert_denied(&out, 5, "parse", "m");
    assert_eq!(
        t.idp.requests().len(),
        before,
        "IdP contacted for a login token"
    );
}

// ---------------------------------------------------------------------------
// 8. host
// ---------------------------------------------------------------------------

#[test]
fn grant_for_another_host_is_refused() {
    let Some(t) = setup("host") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.idp.issue(&GrantSpec::new("otherhost", &strs(&argv)));
    // HOSTNAME from the caller changes nothing.
    let out = t.sb.run_as_user(
        &["--grant-stdin", "--", argv[0].as_str(), argv[1].as_str()],
        &[("HOSTNAME", "otherhost")],
        Some(g.jwt.as_bytes()),
    );
    t.assert_denied(&out, 5, "host", "m");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// 9. subject
// ---------------------------------------------------------------------------

#[test]
fn subject_not_bound_to_the_caller_is_refused() {
    let Some(t) = setup("subject") else { return };
    let mut cfg = t.sb.config(&t.idp.issuer());
    cfg.tail = format!(
        "[subjects]\n{} = [\"someone@else\"]\n",
        harness::toml_str(harness::TEST_USER)
    );
    t.sb.write_config(&cfg.render());
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "subject", "m");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// 10. target user
// ---------------------------------------------------------------------------

#[test]
fn run_as_nobody_grant_used_with_u_root_is_refused() {
    let Some(t) = setup("target-user") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.run_as = Some("nobody".into());
    let g = t.idp.issue(&spec);
    let out = t.run(&g.jwt, &["-u", "root"], &argv);
    t.assert_denied(&out, 5, "target_user", "m");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// 11. command
// ---------------------------------------------------------------------------

#[test]
fn extra_argument_is_refused() {
    let Some(t) = setup("cmd-extra") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let mut more = argv.clone();
    more.push(t.sb.marker_path("extra").to_string_lossy().into_owned());
    let out = t.run(&g.jwt, &[], &more);
    t.assert_denied(&out, 5, "command", "m");
    assert!(!t.sb.marker_exists("extra"));
    t.assert_not_consumed(&g);
}

#[test]
fn reordered_arguments_are_refused() {
    let Some(t) = setup("cmd-order") else { return };
    let a = t.sb.marker_path("a").to_string_lossy().into_owned();
    let b = t.sb.marker_path("b").to_string_lossy().into_owned();
    let g = t.issue(&["touch".into(), a.clone(), b.clone()]);
    let out = t.run(&g.jwt, &[], &["touch".into(), b, a]);
    t.assert_denied(&out, 5, "command", "a");
    assert!(!t.sb.marker_exists("b"));
    t.assert_not_consumed(&g);
}

/// DESIGN step 11 / issue 10 item 10: a grant bound by `cmd_hash` alone is
/// refused by default (the space join hides which argv was approved);
/// with `allow_cmd_hash_only = true` it passes, but never for an argv the
/// join can confuse.
#[test]
fn cmd_hash_only_grants_are_refused_by_default() {
    let Some(t) = setup("cmd-hash") else { return };
    let cmd_hash_only = |argv: &[String]| {
        let mut spec = t.spec(argv);
        spec.with_command = false;
        spec.with_argv_hash = false;
        spec.with_cmd_hash = true;
        t.idp.issue(&spec)
    };
    let plain = t.sb.marker_cmd("plain");
    let g = cmd_hash_only(&plain);
    let out = t.run(&g.jwt, &[], &plain);
    t.assert_denied(&out, 5, "command", "plain");
    assert!(out.stderr.contains("allow_cmd_hash_only"), "{out}");
    t.assert_not_consumed(&g);

    let mut cfg = t.sb.config(&t.idp.issuer());
    cfg.security = "allow_cmd_hash_only = true".into();
    t.sb.write_config(&cfg.render());
    // Ambiguous under the space join: ["touch", "<m>-a b"] hashes like
    // ["touch", "<m>-a", "b"].
    let spaced = t.sb.marker_cmd("a b");
    let g = cmd_hash_only(&spaced);
    let out = t.run(&g.jwt, &[], &spaced);
    t.assert_denied(&out, 5, "command", "a b");
    t.assert_not_consumed(&g);

    // Allowed and unambiguous: runs.
    let g = cmd_hash_only(&plain);
    let out = t.run(&g.jwt, &[], &plain);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("plain"));
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

// ---------------------------------------------------------------------------
// 12. consume
// ---------------------------------------------------------------------------

#[test]
fn once_grant_replay_is_refused() {
    let Some(t) = setup("consume-replay") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
    t.sb.remove_marker("m");

    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "consume", "m");
    assert_eq!(t.idp.consume_count(&g.grant_id), 1);
    assert_eq!(t.sb.audit_lines().len(), 2);
    // A refusal after every check passed names the grant (the replay is
    // traceable to it); one before names none (its claims are not yet
    // trusted).
    assert_eq!(
        t.sb.last_audit()["grant_id"].as_str(),
        Some(g.grant_id.as_str())
    );
    let out = t.run(&g.jwt, &[], &t.sb.marker_cmd("other"));
    t.assert_denied(&out, 5, "command", "other");
    assert!(t.sb.last_audit().get("grant_id").is_none());
}

#[test]
fn revoked_grant_is_refused() {
    let Some(t) = setup("consume-revoked") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    t.idp.revoke(&g.grant_id);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "consume", "m");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);
}

#[test]
fn consume_answer_200_empty_object_is_refused() {
    let Some(t) = setup("consume-empty") else {
        return;
    };
    t.idp.set_fault_for("/api/grants/", Fault::EmptyObject);
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "consume", "m");
    assert_eq!(
        t.idp
            .request_count(&format!("/api/grants/{}/consume", g.grant_id)),
        1
    );
}

// ---------------------------------------------------------------------------
// Positive runs
// ---------------------------------------------------------------------------

#[test]
fn runs_as_root_with_exactly_roots_groups_and_logs_grant_run() {
    let Some(t) = setup("success") else { return };
    let root_groups = groups_of("root");
    let argv_u: Vec<String> = vec!["id".into(), "-u".into()];
    let g_u = t.issue(&argv_u);
    let out = t.run(&g_u.jwt, &[], &argv_u);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "0\n", "{out}");

    let line = t.sb.last_audit();
    assert_eq!(line["event"], "grant_run", "{line}");
    assert_eq!(line["via"], "escapes");
    assert_eq!(line["grant_id"], g_u.grant_id.as_str());
    assert_eq!(line["grant_type"], "once");
    assert_eq!(line["agent"], "agent@example.com");
    assert_eq!(line["decided_by"], harness::APPROVER);
    assert_eq!(line["issuer"], t.idp.issuer().as_str());
    assert_eq!(line["audience"], "escapes");
    assert_eq!(line["command"], json!(argv_u));
    assert_eq!(line["run_as"], "root");
    assert_eq!(line["user"], harness::TEST_USER);
    assert_eq!(line["real_uid"], t.user.uid);
    assert_eq!(line["host"], HOST);
    assert_eq!(line["target_host"], HOST);
    assert!(line["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));
    assert_eq!(t.idp.consume_count(&g_u.grant_id), 1);

    // No supplementary group of the caller survives: exactly root's groups.
    let argv_g: Vec<String> = vec!["id".into(), "-G".into()];
    let g_g = t.issue(&argv_g);
    let out = t.run(&g_g.jwt, &[], &argv_g);
    assert_eq!(out.code, 0, "{out}");
    let got = gid_set(&out.stdout);
    let want: BTreeSet<u32> = root_groups.iter().copied().collect();
    assert_eq!(got, want, "{out}");
    assert!(!got.contains(&t.user.extra_gid) && !got.contains(&t.user.gid));

    // Real, effective, saved and filesystem ids all 0.
    let argv_s: Vec<String> = vec!["cat".into(), "/proc/self/status".into()];
    let g_s = t.issue(&argv_s);
    let out = t.run(&g_s.jwt, &[], &argv_s);
    assert_eq!(out.code, 0, "{out}");
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), "0 0 0 0", "{out}");
    assert_eq!(field("Gid:"), "0 0 0 0", "{out}");
    assert_eq!(gid_set(&field("Groups:")), want, "{out}");

    // Never a token in the audit log.
    let text = t.sb.audit_text();
    for g in [&g_u, &g_g, &g_s] {
        let parts: Vec<&str> = g.jwt.split('.').collect();
        assert!(!text.contains(parts[2]), "signature in the audit log");
        assert!(!text.contains(parts[1]), "payload in the audit log");
    }
    assert_eq!(t.sb.audit_lines().len(), 3);
}

#[test]
fn run_as_nobody_from_the_grant_and_with_u_nobody() {
    let Some(t) = setup("nobody") else { return };
    let run_as_nobody = |argv: &[String], opts: &[&str]| {
        let mut spec = t.spec(argv);
        spec.run_as = Some("nobody".into());
        let g = t.idp.issue(&spec);
        let out = t.run(&g.jwt, opts, argv);
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        let line = t.sb.last_audit();
        assert_eq!(line["event"], "grant_run");
        assert_eq!(line["run_as"], "nobody");
        out
    };
    let argv: Vec<String> = vec!["id".into(), "-u".into()];
    for opts in [&[][..], &["-u", "nobody"][..]] {
        let out = run_as_nobody(&argv, opts);
        assert_eq!(out.stdout, "65534\n", "{opts:?}: {out}");
    }
    let out = run_as_nobody(&["id".into(), "-G".into()], &[]);
    let want: BTreeSet<u32> = groups_of("nobody").into_iter().collect();
    assert_eq!(gid_set(&out.stdout), want, "{out}");
}

#[test]
fn argv_reaches_the_command_byte_exact_and_logs_one_line() {
    let Some(t) = setup("argv-exact") else {
        return;
    };
    // Control characters, a JSON look-alike, a space, an empty argument:
    // bound exactly, passed exactly, logged as one parseable line, and no
    // caller variable (EDITOR, SHELL, ESCAPES_*) splits or extends argv.
    let argv: Vec<String> = [
        "printf",
        "%s|",
        "a\nb\rc",
        "\u{1b}[2J",
        "{\"event\":\"grant_run\"}\n",
        "x y",
        "",
        "trailing\\",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let g = t.issue(&argv);
    let mut args = vec!["--grant-stdin".to_string(), "--".into()];
    args.extend(argv.iter().cloned());
    let out = t.sb.run_as_user(
        &args,
        &[
            ("EDITOR", "vi -- /etc/shadow"),
            ("SHELL", "/bin/sh -c id"),
            ("ESCAPES_ARGS", "--extra"),
        ],
        Some(g.jwt.as_bytes()),
    );
    assert_eq!(out.code, 0, "{out}");
    let want: String = argv[2..].iter().map(|a| format!("{a}|")).collect();
    assert_eq!(out.stdout, want, "{out}");
    let lines = t.sb.audit_lines();
    assert_eq!(lines.len(), 1, "{}", t.sb.audit_text());
    assert_eq!(lines[0]["event"], "grant_run");
    assert_eq!(lines[0]["command"], json!(argv));
}

#[test]
fn verify_checks_everything_and_consumes_runs_and_logs_nothing() {
    let Some(t) = setup("verify") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let mut args = vec!["verify".to_string(), "--grant-stdin".into(), "--".into()];
    args.extend(argv.iter().cloned());
    let out = t.sb.run_as_user(&args, &[], Some(g.jwt.as_bytes()));
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("grant passes every local check"),
        "{out}"
    );
    assert!(!t.sb.marker_exists("m"));
    t.assert_not_consumed(&g);
    assert!(t.sb.audit_lines().is_empty());

    // A refused grant: the failing step is named, exit 5.
    let mut spec = t.spec(&argv);
    spec.target_host = "otherhost".into();
    let bad = t.idp.issue(&spec);
    let out = t.sb.run_as_user(&args, &[], Some(bad.jwt.as_bytes()));
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stdout.contains("FAIL  host"), "{out}");
    assert!(!t.sb.marker_exists("m"));
    t.assert_not_consumed(&bad);

    // Options a run refuses are refused by the dry run too (it said
    // "passes every local check" for them, and the run then failed).
    for (opts, code) in [
        (&["--preserve-env=SSH_AUTH_SOCK"][..], 1),
        (&["-g", "daemon"][..], 5),
    ] {
        let mut a = vec!["verify".to_string()];
        a.extend(opts.iter().map(|o| o.to_string()));
        a.extend(args[1..].iter().cloned());
        let out = t.sb.run_as_user(&a, &[], Some(g.jwt.as_bytes()));
        assert_eq!(out.code, code, "{opts:?}: {out}");
        assert!(!out.stdout.contains("passes every local check"), "{out}");
        let run = t.run(&g.jwt, opts, &argv);
        assert_eq!(run.code, code, "{opts:?}: {run}");
    }
    assert!(!t.sb.marker_exists("m"));
    t.assert_not_consumed(&g);

    // The grant is still good for a real run afterwards.
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
}

/// `env` as the bound command, the grant in `var`, a hostile caller
/// environment around it.
fn env_is_reset(var: &str) {
    let Some(t) = setup(&format!("env-{}", var.to_lowercase())) else {
        return;
    };
    let argv: Vec<String> = vec!["env".into()];
    let g = t.issue(&argv);
    let hostile = [
        (var, g.jwt.as_str()),
        ("LD_PRELOAD", "/nonexistent-openape-e2e.so"),
        ("BASH_ENV", "/tmp/openape-e2e-bash-env"),
        ("ENV", "/tmp/openape-e2e-env"),
        ("IFS", "x"),
        ("TZ", "../../../../etc/shadow"),
        ("FOO_UNKNOWN", "1"),
        ("PATH", "/evil:/usr/bin"),
        ("SHELL", "/tmp/evil-shell"),
        ("HOME", "/tmp/evil-home"),
    ];
    let out = t.sb.run_as_user(&["-n", "--", "env"], &hostile, None);
    assert_eq!(out.code, 0, "{out}");
    let env = env_map(&out.stdout);
    for gone in [
        "ESCAPES_GRANT",
        "OPENAPE_GRANT",
        "LD_PRELOAD",
        "BASH_ENV",
        "ENV",
        "IFS",
        "TZ",
        "FOO_UNKNOWN",
    ] {
        assert!(!env.contains_key(gone), "{gone} reached the command: {out}");
    }
    assert!(
        !out.stdout.contains(&g.jwt),
        "the grant reached the command"
    );
    assert_eq!(
        env.get("PATH").map(String::as_str),
        Some(DEFAULT_SECURE_PATH)
    );
    assert_eq!(env.get("HOME").map(String::as_str), Some("/root"));
    assert_eq!(env.get("USER").map(String::as_str), Some("root"));
    assert_eq!(env.get("LOGNAME").map(String::as_str), Some("root"));
    assert_ne!(
        env.get("SHELL").map(String::as_str),
        Some("/tmp/evil-shell")
    );
    assert_eq!(
        env.get("SUDO_USER").map(String::as_str),
        Some(harness::TEST_USER)
    );
    assert_eq!(env.get("SUDO_UID"), Some(&t.user.uid.to_string()));
    assert_eq!(env.get("SUDO_COMMAND").map(String::as_str), Some("env"));
    let line = t.sb.last_audit();
    assert_eq!(line["event"], "grant_run");
    assert_eq!(line["grant_id"], g.grant_id.as_str());
}

#[test]
fn grant_from_escapes_grant_env_var_and_a_reset_environment() {
    env_is_reset("ESCAPES_GRANT");
}

#[test]
fn grant_from_openape_grant_env_var_and_a_reset_environment() {
    env_is_reset("OPENAPE_GRANT");
}

/// `[env] keep` may not name a variable that makes an approved command run
/// the caller's code: `PERLLIB` (perl reads it when `PERL5LIB` is unset),
/// `PYTHONUSERBASE` (python runs the `.pth` files of that user site as
/// root) and `LESSOPEN` (less runs it for every file, even into a pipe)
/// passed the old list, which named only `PERL5LIB`, `PERL5OPT`,
/// `PYTHONPATH`, `PYTHONHOME` of such variables. A config naming one is
/// refused (exit 1) before anything else; the approved perl/python/less
/// command never sees the caller's code.
#[test]
fn env_keep_cannot_name_a_variable_that_runs_the_callers_code() {
    let Some(t) = setup("keep-interp") else {
        return;
    };
    let u = t.user;
    // PERLLIB: a caller's strict.pm.
    let lib = t.sb.user_dir("perllib");
    let perl_marker = t.sb.marker_path("perl");
    let strict = format!(
        "package strict;\nBEGIN {{ open(my $f, '>', '{}') or die; close $f; }}\nsub import {{}}\nsub unimport {{}}\n1;\n",
        perl_marker.display()
    );
    t.sb.write_file("perllib/strict.pm", strict.as_bytes(), u.uid, u.gid, 0o644);
    // PYTHONUSERBASE: a caller's user site with a .pth line.
    let base = t.sb.user_dir("pybase");
    let site = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import site; print(site.getusersitepackages())"])
        .env_clear()
        .env("PYTHONUSERBASE", &base)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let py_marker = t.sb.marker_path("python");
    let have_python = !site.is_empty();
    if have_python {
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(
            format!("{site}/openape-e2e.pth"),
            format!(
                "import os; open({:?}, 'w').close()\n",
                py_marker.display().to_string()
            ),
        )
        .unwrap();
        std::process::Command::new("chown")
            .args(["-R", &format!("{}:{}", u.uid, u.gid)])
            .arg(&base)
            .status()
            .unwrap();
    }
    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        (
            "PERLLIB",
            lib.display().to_string(),
            vec!["perl".into(), "-e".into(), "use strict; print 1".into()],
            "perl",
        ),
        (
            "PYTHONUSERBASE",
            base.display().to_string(),
            vec!["python3".into(), "-c".into(), "print(1)".into()],
            "python",
        ),
        (
            "LESSOPEN",
            format!("|touch {}; cat %s", t.sb.marker_path("less").display()),
            vec!["less".into(), "/etc/hostname".into()],
            "less",
        ),
    ];
    for (name, value, argv, marker) in cases {
        if marker == "python" && !have_python {
            continue;
        }
        let mut cfg = t.sb.config(&t.idp.issuer());
        cfg.tail = format!("[env]\nkeep = [\"{name}\"]\n");
        t.sb.write_config(&cfg.render());
        let g = t.issue(&argv);
        let mut args = vec!["--grant-stdin".to_string(), "--".into()];
        args.extend(argv.iter().cloned());
        let out =
            t.sb.run_as_user(&args, &[(name, value.as_str())], Some(g.jwt.as_bytes()));
        assert!(
            !t.sb.marker_exists(marker),
            "{name} from the caller ran the caller's code as root: {out}"
        );
        assert_eq!(out.code, 1, "{name}: {out}");
        assert!(out.stderr.contains("not a valid configuration"), "{out}");
        t.assert_not_consumed(&g);
    }
}

/// `TZ`, when `[env] keep` names it, passes only as sudo's env_check lets
/// it: a zone name, a path inside /usr/share/zoneinfo or a POSIX rule.
/// It passed unchecked, so the caller chose a file the root command opens
/// and parses: `../../../../etc/shadow`, its own file, or a FIFO it holds
/// (the approved `date` hung there until the caller let it go).
#[test]
fn a_kept_tz_cannot_point_a_root_command_at_a_callers_file() {
    let Some(t) = setup("keep-tz") else {
        return;
    };
    let mut cfg = t.sb.config(&t.idp.issuer());
    cfg.tail = "[env]\nkeep = [\"TZ\"]\n".into();
    t.sb.write_config(&cfg.render());
    let dir = t.sb.user_dir("tz");
    let argv: Vec<String> = vec!["env".into()];
    let cases = [
        ("Europe/Vienna", true),
        (":/usr/share/zoneinfo/UTC", true),
        ("EST5EDT,M3.2.0/2,M11.1.0/2", true),
        ("../../../../etc/shadow", false),
        (":/etc/shadow", false),
        ("/usr/share/zoneinfo/../../../etc/shadow", false),
    ];
    for (tz, kept) in cases {
        let g = t.issue(&argv);
        let out = t.sb.run_as_user(
            &["--grant-stdin", "--", "env"],
            &[("TZ", tz)],
            Some(g.jwt.as_bytes()),
        );
        assert_eq!(out.code, 0, "{out}");
        let env = env_map(&out.stdout);
        if kept {
            assert_eq!(env.get("TZ").map(String::as_str), Some(tz), "{out}");
        } else {
            assert!(!env.contains_key("TZ"), "TZ={tz} reached root: {out}");
        }
    }
    // A FIFO of the caller's: `date` as root opened it and waited there.
    let fifo = dir.join("zone");
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "0666"])
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let argv: Vec<String> = vec!["date".into()];
    let g = t.issue(&argv);
    let fifo_tz = fifo.display().to_string();
    let out =
        t.sb.escapes_run(&["--grant-stdin", "--", "date"])
            .envs([("TZ", fifo_tz.as_str())])
            .as_test_user()
            .stdin(g.jwt.as_bytes())
            .timeout(Duration::from_secs(5))
            .output();
    assert_eq!(
        out.code, 0,
        "the root command opened the caller's FIFO and hung there: {out}"
    );
}

#[test]
fn caller_path_cannot_choose_the_program() {
    let Some(t) = setup("path-hijack") else {
        return;
    };
    let evil = t.sb.user_dir("evil");
    let ran = evil.join("fake-id-ran");
    let u = t.user;
    let fake = format!("#!/bin/sh\n/usr/bin/touch {}\necho fake\n", ran.display());
    t.sb.write_file("evil/id", fake.as_bytes(), u.uid, u.gid, 0o755);
    let argv: Vec<String> = vec!["id".into(), "-u".into()];
    let g = t.issue(&argv);
    let path = format!("{}:/usr/bin:/bin", evil.display());
    let out = t.sb.run_as_user(
        &["--grant-stdin", "--", "id", "-u"],
        &[("PATH", &path)],
        Some(g.jwt.as_bytes()),
    );
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, "0\n", "{out}");
    assert!(!ran.exists(), "the caller's fake id ran");
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

#[test]
fn grant_stdin_with_a_trailing_newline_works() {
    let Some(t) = setup("stdin") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let mut args = vec!["--grant-stdin".to_string(), "--".into()];
    args.extend(argv.iter().cloned());
    let out =
        t.sb.run_as_user(&args, &[], Some(format!("{}\n", g.jwt).as_bytes()));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

#[test]
fn grant_file_unreadable_looks_like_missing_and_is_read_with_callers_rights() {
    let Some(t) = setup("grant-file") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let root_only = t.sb.write_file("grant-root", g.jwt.as_bytes(), 0, 0, 0o600);
    let missing = t.sb.path("grant-missing");
    let run = |file: &std::path::Path| {
        let mut args = vec![
            "--grant-file".to_string(),
            file.to_string_lossy().into_owned(),
            "--".into(),
        ];
        args.extend(argv.iter().cloned());
        t.sb.run_as_user(&args, &[], None)
    };
    let unreadable = run(&root_only);
    t.assert_denied(&unreadable, 1, "grant", "m");
    let absent = run(&missing);
    t.assert_denied(&absent, 1, "grant", "m");
    assert_eq!(
        unreadable.stderr, absent.stderr,
        "an unreadable file must look like a missing one"
    );
    assert!(!unreadable.stderr.contains(&g.jwt[..20]));
    assert!(t.idp.requests().is_empty());

    // The same grant in a file the caller can read works.
    let dir = t.sb.user_dir("mine");
    let u = t.user;
    t.sb.write_file("mine/grant", g.jwt.as_bytes(), u.uid, u.gid, 0o600);
    let out = run(&dir.join("grant"));
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
}

/// `--grant-file` was read with the caller's file-system ids but root's
/// other capabilities: CAP_SYS_PTRACE let the path walk through
/// `/proc/PID/cwd` (or `root`) of any process, landing inside a directory
/// whose 0700 ancestor the caller may not pass, so a world-readable grant
/// kept there (another user's, a service's) could be used. The file is now
/// read with the caller's effective ids, so no capability applies.
#[test]
fn grant_file_cannot_be_reached_through_another_process_s_proc_links() {
    let Some(t) = setup("grant-file-proc") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let vault = t.sb.path("vault");
    std::fs::create_dir_all(vault.join("open")).unwrap();
    set_owner_mode(&vault, 0, 0, 0o700);
    set_owner_mode(&vault.join("open"), 0, 0, 0o755);
    t.sb.write_file("vault/open/grant", g.jwt.as_bytes(), 0, 0, 0o644);
    let mut sleeper = std::process::Command::new("/bin/sleep")
        .arg("30")
        .current_dir(vault.join("open"))
        .spawn()
        .unwrap();
    let via_proc = format!("/proc/{}/cwd/grant", sleeper.id());

    // Control: the caller cannot read it there.
    let cat = Run::new("/bin/cat").arg(&via_proc).as_test_user().output();
    assert_ne!(cat.code, 0, "{cat}");

    let mut args = vec!["--grant-file".to_string(), via_proc.clone(), "--".into()];
    args.extend(argv.iter().cloned());
    let out = t.sb.run_as_user(&args, &[], None);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    t.assert_denied(&out, 1, "grant", "m");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0, "{out}");
}

#[test]
fn timed_grant_works_twice_with_one_consume_each_and_a_warm_cache() {
    let Some(t) = setup("timed") else { return };
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.grant_type = GrantType::Timed;
    spec.duration_secs = Some(600);
    let g = t.idp.issue(&spec);
    let consume = format!("/api/grants/{}/consume", g.grant_id);

    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
    assert_eq!(t.idp.request_count(&consume), 1);
    assert_eq!(t.jwks_requests(), 1);
    assert_eq!(t.sb.last_audit()["grant_type"], "timed");
    t.sb.remove_marker("m");

    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
    assert_eq!(t.idp.request_count(&consume), 2, "one consume per run");
    assert_eq!(t.jwks_requests(), 1, "second run must use the cache");
    assert_eq!(t.idp.consume_count(&g.grant_id), 2);
    let lines = t.sb.audit_lines();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["event"] == "grant_run"));
}

#[test]
fn key_rotation_verifies_on_first_use_right_after_a_fetch() {
    let Some(t) = setup("rotation") else { return };
    with_shipped_refresh_limit(&t);
    t.warm_cache();
    let old_kid = t.idp.kid();
    // The IdP publishes a new key a moment after our fetch, and the
    // approver's grant is signed with it at once.
    t.idp.rotate_key();
    assert_ne!(t.idp.kid(), old_kid);
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    assert!(t.sb.marker_exists("m"));
    assert_eq!(t.jwks_requests(), 2, "exactly one refresh for the new kid");
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

// ---------------------------------------------------------------------------
// Trust root
// ---------------------------------------------------------------------------

#[test]
fn config_owned_by_the_caller_is_refused() {
    let Some(t) = setup("trust-owner") else {
        return;
    };
    let cfg = t.sb.config_path();
    set_owner_mode(&cfg, t.user.uid, t.user.gid, 0o600);
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_refused_early(&out, 1, "m");
    assert!(
        out.stderr.contains(t.sb.default_config_path()),
        "message must name the file: {out}"
    );
    assert!(t.sb.audit_lines().is_empty());
}

#[test]
fn config_in_a_caller_writable_directory_is_refused() {
    let Some(t) = setup("trust-dir") else { return };
    let text = t.sb.config(&t.idp.issuer()).render();
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    // A directory the caller owns, and a root-owned one writable by the
    // caller's supplementary group; the file itself is root's, 0600.
    let owned = t.sb.user_dir("userconf");
    std::fs::create_dir(t.sb.path("groupconf")).unwrap();
    let grouped = t.sb.path("groupconf");
    set_owner_mode(&grouped, 0, t.user.extra_gid, 0o775);
    for dir in [owned, grouped] {
        let file = dir.join("config.toml");
        std::fs::write(&file, &text).unwrap();
        set_owner_mode(&file, 0, 0, 0o600);
        let mut args = vec![
            "--config".to_string(),
            file.to_string_lossy().into_owned(),
            "--grant-stdin".into(),
            "--".into(),
        ];
        args.extend(argv.iter().cloned());
        // Only root may choose a config; even root's choice must pass the
        // trust-root checks.
        let out = t.sb.run_as_root(&args, &[], Some(g.jwt.as_bytes()));
        t.assert_refused_early(&out, 1, "m");
        assert!(
            out.stderr.contains(&dir.to_string_lossy().into_owned()),
            "message must name the directory: {out}"
        );
    }
    assert!(t.sb.audit_lines().is_empty());
}

/// Issue 10 item 3: a caller never picks the policy, not even another
/// root-owned file (an old copy that still trusts a removed approver, a
/// PAM-only config) and not a device: `--config` is for real root only.
#[test]
fn a_caller_cannot_choose_another_root_owned_config() {
    let Some(t) = setup("trust-pick") else {
        return;
    };
    // The old copy trusts mallory, who the live config no longer does.
    let mut old = t.sb.config(&t.idp.issuer());
    old.approvers = vec!["mallory@example.com".into()];
    let bak =
        t.sb.write_file("etc/config.toml.bak", old.render().as_bytes(), 0, 0, 0o600);
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.decided_by = "mallory@example.com".into();
    let g = t.idp.issue(&spec);
    for config in [bak.to_string_lossy().into_owned(), "/dev/null".into()] {
        for verify in [false, true] {
            let mut args: Vec<String> = Vec::new();
            if verify {
                args.push("verify".into());
            }
            args.extend([
                "--config".to_string(),
                config.clone(),
                "--grant-stdin".into(),
                "--".into(),
            ]);
            args.extend(argv.iter().cloned());
            let out = t.sb.run_as_user(&args, &[], Some(g.jwt.as_bytes()));
            t.assert_refused_early(&out, 2, "m");
            assert!(out.stderr.contains("only root may choose"), "{out}");
            assert!(!out.stdout.contains("ok "), "{out}");
        }
    }
    assert!(t.sb.audit_lines().is_empty());
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);
    // The same grant through the default path is refused by the live
    // policy (mallory is not an approver there), at step approver.
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 5, "approver", "m");
    // Real root may choose the file (and the grant then verifies).
    let mut args = vec![
        "verify".to_string(),
        "--config".into(),
        bak.to_string_lossy().into_owned(),
        "--grant-stdin".into(),
        "--".into(),
    ];
    args.extend(argv.iter().cloned());
    let out = t.sb.run_as_root(&args, &[], Some(g.jwt.as_bytes()));
    assert_eq!(out.code, 0, "{out}");
}

#[test]
fn caller_supplied_config_with_their_own_idp_is_refused() {
    let Some(t) = setup("trust-own-idp") else {
        return;
    };
    // The old tool's hole: `--config` to a file the caller wrote, trusting
    // the caller's own IdP and approver.
    let evil = TestIdp::start();
    let dir = std::path::PathBuf::from(format!(
        "/tmp/openape-e2e-{}-{}",
        std::process::id(),
        evil.port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let u = t.user;
    set_owner_mode(&dir, u.uid, u.gid, 0o700);
    let mut cfg = t.sb.config(&evil.issuer());
    cfg.approvers = vec!["mallory@example.com".into()];
    cfg.audit_log = dir.join("audit.log");
    cfg.cache_dir = dir.join("cache");
    let file = dir.join("config.toml");
    std::fs::write(&file, cfg.render()).unwrap();
    set_owner_mode(&file, u.uid, u.gid, 0o600);

    let argv = t.sb.marker_cmd("m");
    let mut spec = GrantSpec::new(HOST, &strs(&argv));
    spec.decided_by = "mallory@example.com".into();
    let g = evil.issue(&spec);
    let mut args = vec![
        "--config".to_string(),
        file.to_string_lossy().into_owned(),
        "--grant-stdin".into(),
        "--".into(),
    ];
    args.extend(argv.iter().cloned());
    let out = t.sb.run_as_user(&args, &[], Some(g.jwt.as_bytes()));
    t.assert_refused_early(&out, 2, "m");
    assert!(out.stderr.contains("only root may choose"), "{out}");
    assert!(evil.requests().is_empty(), "{:?}", evil.requests());
    assert!(!dir.join("audit.log").exists());

    // Even root-owned and 0600 and chosen by root, nothing below
    // world-writable /tmp is trusted.
    set_owner_mode(&dir, 0, 0, 0o755);
    set_owner_mode(&file, 0, 0, 0o600);
    let out = t.sb.run_as_root(&args, &[], Some(g.jwt.as_bytes()));
    t.assert_refused_early(&out, 1, "m");
    assert!(out.stderr.contains("/tmp"), "{out}");
    assert!(evil.requests().is_empty());
    assert_eq!(evil.consume_count(&g.grant_id), 0);
}

/// A config that does not parse tells a caller that it is broken and
/// where, never what it holds: the file is root's alone (0600), but a type
/// error quoted the value (`invalid type: string "<approver>"`) and a bad
/// `[env] keep` or `[request] idp` named it, so any caller of the setuid
/// binary could read the trust root out of a broken config. Root (and
/// syslog) still get the whole message.
#[test]
fn a_broken_config_shows_a_caller_nothing_of_its_content() {
    let Some(t) = setup("config-leak") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let good = t.sb.config(&t.idp.issuer());
    let mut keep = good.clone();
    keep.tail = "[env]\nkeep = [\"LD_HIDDENVALUE\"]\n".into();
    let mut idp = good.clone();
    idp.tail = "[request]\nidp = \"https://hiddenvalue.example.com\"\n".into();
    let typed = good.render().replace(
        "allowed_approvers = [",
        "allowed_approvers = \"hiddenvalue@example.com\"\nx = [",
    );
    for text in [typed, keep.render(), idp.render()] {
        t.sb.write_config(&text);
        for verify in [false, true] {
            let mut args: Vec<String> = Vec::new();
            if verify {
                args.push("verify".into());
            }
            args.extend(["--grant-stdin".to_string(), "--".into()]);
            args.extend(argv.iter().cloned());
            let out = t.sb.run_as_user(&args, &[], Some(b"x.y.z"));
            t.assert_refused_early(&out, 1, "m");
            assert!(out.stderr.contains("/etc/openape/config.toml"), "{out}");
            assert!(
                !out.stderr.to_lowercase().contains("hiddenvalue")
                    && !out.stdout.to_lowercase().contains("hiddenvalue"),
                "the config's content reached the caller: {out}"
            );
            let out = t.sb.run_as_root(&args, &[], Some(b"x.y.z"));
            assert_eq!(out.code, 1, "{out}");
            assert!(
                out.stderr.contains("HIDDENVALUE") || out.stderr.contains("hiddenvalue"),
                "{out}"
            );
        }
    }
    assert!(t.sb.audit_lines().is_empty());
}

// ---------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------

/// One refused run cannot write megabytes into root's log: the command
/// line (argv can hold megabytes, six times that once control characters
/// are escaped) went into the `denied` line whole, some 35 MB per
/// invocation from any caller, enough to fill /var in a minute and then
/// refuse every grant for want of room. A line is now at most 64 KiB: the
/// command is cut, with its full size and the SHA-256 of the whole.
#[test]
fn a_refused_command_line_cannot_flood_the_audit_log() {
    let Some(t) = setup("audit-flood") else {
        return;
    };
    let arg = "\u{1}".repeat(100_000);
    let mut args = vec!["--grant", "not-a-grant", "--", "/bin/echo"];
    args.extend(std::iter::repeat_n(arg.as_str(), 12));
    let out = t.sb.run_as_user(&args, &[], None);
    assert_eq!(out.code, 5, "{out}");
    let size = std::fs::metadata(t.sb.audit_path()).unwrap().len();
    assert!(size <= 64 * 1024, "one refused run wrote {size} bytes");
    let line = t.sb.last_audit();
    assert_eq!(line["event"], "denied", "{line}");
    assert_eq!(line["command_bytes"], 9 + 12 * 100_001, "{line}");
    let command: Vec<String> = serde_json::from_value(line["command"].clone()).unwrap();
    assert_eq!(command.first().map(String::as_str), Some("/bin/echo"));
    let kept = command.get(1).cloned().unwrap_or_default();
    assert!(!kept.is_empty() && arg.starts_with(&kept), "{line}");
    let whole: Vec<String> = std::iter::once("/bin/echo".to_string())
        .chain(std::iter::repeat_n(arg.clone(), 12))
        .collect();
    let hash = pam_openape::command::cmd_hash(&whole);
    assert_eq!(line["cmd_hash"], hash.as_str(), "{line}");
}

/// A grant's `run_as` is chosen by whoever requested it (an agent, in the
/// request body) and signed as is. When that user does not exist here the
/// refusal quoted it raw, so an approved grant put the requester's escape
/// sequences on the terminal of whoever ran or dry-ran it: root checking
/// an agent's grant with `escapes verify` (README) got its window title
/// set and its screen cleared. It is shown escaped, like every other claim.
#[test]
fn a_grants_unknown_run_as_reaches_the_terminal_only_escaped() {
    let Some(t) = setup("run-as-bytes") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let mut spec = t.spec(&argv);
    spec.run_as = Some("nosuch\u{1b}]0;root@host\u{7}\u{1b}[2J\u{9b}H\r".into());
    let g = t.idp.issue(&spec);
    let mut verify = vec!["verify".to_string(), "--grant-stdin".into(), "--".into()];
    verify.extend(argv.iter().cloned());
    let dry = t.sb.escapes_run(&verify).stdin(g.jwt.as_bytes()).output();
    let run = t.run(&g.jwt, &[], &argv);
    for out in [dry, run] {
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr.contains("does not exist here"), "{out}");
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "raw control character: {text:?}"
            );
        }
    }
    assert!(!t.sb.marker_exists("m"));
    t.assert_not_consumed(&g);
}

/// A caller with no grant at all puts its argv into root's log. The C1
/// control U+009B is CSI on the Linux console (UTF-8 mode included), and
/// serde_json wrote it raw: `cat audit.log` on the console ran the
/// caller's escape sequence (clear screen, move the cursor to redraw
/// earlier lines). Every control character is escaped now, and so are
/// the bidi controls and line separators (which reorder or break the
/// line in a viewer).
#[test]
fn a_refused_command_puts_no_raw_control_character_into_the_log() {
    let Some(t) = setup("audit-c1") else {
        return;
    };
    let arg = "x\u{9b}2J\u{9b}H\u{9b}8m\u{7f}\u{85}\u{202e}deifirev\u{2028}";
    let out = t.sb.run_as_user(
        &["--grant", "not-a-grant", "--", "/bin/echo", arg],
        &[],
        None,
    );
    assert_eq!(out.code, 5, "{out}");
    let text = std::fs::read_to_string(t.sb.audit_path()).unwrap();
    assert!(
        !text
            .chars()
            .any(|c| c != '\n' && pam_openape::error::is_terminal_active(c)),
        "raw control or bidi character in the log: {text:?}"
    );
    let line = t.sb.last_audit();
    assert_eq!(line["event"], "denied", "{line}");
    assert_eq!(line["command"], json!(["/bin/echo", arg]), "{line}");
}

/// A missing JWKS cache directory is made by root on any caller's run,
/// and was made (with every missing directory above it) before the chain
/// was checked: below a directory another user may write, that user could
/// swap a new directory for a symlink and have root make directories
/// wherever they point. The chain is checked first now; nothing is made.
#[test]
fn a_cache_directory_is_not_made_below_a_directory_others_may_write() {
    let Some(t) = setup("cache-mkdir") else {
        return;
    };
    let theirs = t.sb.user_dir("theirs");
    let mut cfg = t.sb.config(&t.idp.issuer());
    cfg.cache_dir = theirs.join("cache/jwks");
    t.sb.write_config(&cfg.render());
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 1, "key", "m");
    t.assert_not_consumed(&g);
    let made: Vec<_> = std::fs::read_dir(&theirs).unwrap().collect();
    assert!(made.is_empty(), "made below the user's directory: {made:?}");
}

#[test]
fn missing_audit_directory_runs_nothing_and_consumes_nothing() {
    let Some(t) = setup("audit-missing") else {
        return;
    };
    let mut cfg = t.sb.config(&t.idp.issuer());
    cfg.audit_log = t.sb.path("no-such-dir/audit.log");
    t.sb.write_config(&cfg.render());
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_refused_early(&out, 1, "m");
    assert!(out.stderr.contains("audit"), "{out}");
    t.assert_not_consumed(&g);
}

/// The directories above the log's own may be writable by their group
/// (Ubuntu's `/var/log` is `root:syslog 0775`), never by others; the log's
/// own directory by root only.
#[test]
fn audit_directories_above_the_logs_may_be_group_writable_only() {
    let Some(t) = setup("audit-group") else {
        return;
    };
    let make = |rel: &str, mode: u32| {
        let p = t.sb.path(rel);
        std::fs::create_dir(&p).unwrap();
        set_owner_mode(&p, 0, t.user.extra_gid, mode);
        p
    };
    let upper = make("varlog", 0o775);
    let own = make("varlog/openape", 0o750);
    let group_own = make("varlog/grouped", 0o770);
    let open = make("tmp", 0o1777);
    let below_open = make("tmp/openape", 0o750);
    let run_with = |log: &std::path::Path| {
        let mut cfg = t.sb.config(&t.idp.issuer());
        cfg.audit_log = log.to_path_buf();
        t.sb.write_config(&cfg.render());
        let argv = t.sb.marker_cmd("m");
        let g = t.issue(&argv);
        (t.run(&g.jwt, &[], &argv), g)
    };
    // Group-writable above, root's alone below: used.
    let (out, _) = run_with(&own.join("audit.log"));
    assert_eq!(out.code, 0, "{out}");
    let text = std::fs::read_to_string(own.join("audit.log")).unwrap();
    assert!(text.contains("\"grant_run\""), "{text}");
    assert!(t.sb.marker_exists("m"));
    std::fs::remove_file(t.sb.path("marker-m")).unwrap();
    // The log's own directory group-writable, or a world-writable one
    // above: refused before anything is used.
    for (dir, says) in [
        (&group_own, "writable by group or others"),
        (&below_open, "writable by others"),
    ] {
        let (out, g) = run_with(&dir.join("audit.log"));
        assert_eq!(out.code, 1, "{out}");
        assert!(!t.sb.marker_exists("m"), "the command ran: {out}");
        assert!(out.stderr.contains(says), "{out}");
        t.assert_not_consumed(&g);
        assert!(!dir.join("audit.log").exists());
    }
    let _ = (upper, open);
}

#[test]
fn symlinked_audit_log_runs_nothing_and_consumes_nothing() {
    let Some(t) = setup("audit-symlink") else {
        return;
    };
    let target = t.sb.path("log/elsewhere");
    std::os::unix::fs::symlink(&target, t.sb.audit_path()).unwrap();
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_refused_early(&out, 1, "m");
    assert!(out.stderr.contains("symbolic link"), "{out}");
    assert!(!target.exists(), "the symlink was followed");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// IdP failures: fail closed
// ---------------------------------------------------------------------------

#[test]
fn idp_down_fails_closed() {
    let Some(t) = setup("idp-down") else { return };
    let argv = t.sb.marker_cmd("m");

    // Fresh cache, IdP closes every connection: the key cannot be fetched.
    t.idp.set_fault(Fault::Down);
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 1, "key", "m");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);

    // Warm cache, consume endpoint down.
    t.idp.clear_faults();
    t.warm_cache();
    t.idp.set_fault_for("/api/grants/", Fault::Down);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 1, "consume", "m");
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);

    // An issuer on a closed port (nothing listens), fresh cache.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let issuer = format!("http://127.0.0.1:{closed}");
    let sb2 = Sandbox::new("idp-closed");
    sb2.write_config(&sb2.config(&issuer).render());
    let marker_argv = sb2.marker_cmd("m");
    let mut claims2 = t.idp.claims_for(
        &GrantSpec::new(HOST, &strs(&marker_argv)),
        "e2e-closed",
        now(),
    );
    claims2["iss"] = json!(issuer);
    let tok2 = t.sign(claims2);
    let mut args = vec!["--grant-stdin".to_string(), "--".into()];
    args.extend(marker_argv.iter().cloned());
    let out = sb2.run_as_user(&args, &[], Some(tok2.as_bytes()));
    assert_eq!(out.code, 1, "{out}");
    assert!(!sb2.marker_exists("m"));
    let last = sb2.last_audit();
    assert_eq!(last["event"], "denied");
    assert_eq!(last["step"], "key");
}

#[test]
fn idp_hang_fails_closed_within_the_http_timeout() {
    let Some(t) = setup("idp-hang") else { return };
    let bound = Duration::from_secs(3); // [http] timeout = 2, plus 1 s
    let argv = t.sb.marker_cmd("m");

    // JWKS hangs (fresh cache).
    t.idp.set_fault(Fault::Hang);
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 1, "key", "m");
    assert!(out.elapsed < bound, "took {:?}", out.elapsed);

    // Consume hangs (warm cache).
    t.idp.clear_faults();
    t.warm_cache();
    t.idp.set_fault_for("/api/grants/", Fault::Hang);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 1, "consume", "m");
    assert!(out.elapsed < bound, "took {:?}", out.elapsed);
    assert_eq!(t.idp.consume_count(&g.grant_id), 0);
}

// ---------------------------------------------------------------------------
// Users, argv[0], refused options, program resolution
// ---------------------------------------------------------------------------

#[test]
fn minus_one_uids_are_usage_errors() {
    let Some(t) = setup("uid-minus-one") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    // CVE-2019-14287 (-u#-1) and CVE-2019-15900 (doas) shapes.
    for spec in ["#-1", "#4294967295", "#0x0", "# 0", "root ", ""] {
        let out = t.run(&g.jwt, &["-u", spec], &argv);
        t.assert_denied(&out, 2, "usage", "m");
    }
    let out = t.run(&g.jwt, &["-u", "0x0"], &argv);
    t.assert_denied(&out, 1, "target_user", "m");
    t.assert_not_consumed(&g);
    assert_eq!(t.jwks_requests(), 0);
}

#[test]
fn unknown_user_is_exit_1() {
    let Some(t) = setup("nosuchuser") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &["-u", "openape-no-such-user"], &argv);
    t.assert_denied(&out, 1, "target_user", "m");
    t.assert_not_consumed(&g);
}

#[test]
fn empty_argv0_is_refused() {
    let Some(t) = setup("argv0") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = Run::new(t.sb.escapes())
        .arg0("")
        .arg("--config")
        .arg(t.sb.config_path())
        .arg("--grant-stdin")
        .arg("--")
        .args(&argv)
        .env("GCONV_PATH", ".")
        .stdin(&g.jwt)
        .cwd(t.sb.root())
        .as_test_user()
        .output();
    t.assert_refused_early(&out, 2, "m");
    assert!(out.stderr.contains("argv[0]"), "{out}");
    assert!(t.sb.audit_lines().is_empty());
}

#[test]
fn argc_zero_is_refused() {
    let Some(t) = setup("argc0") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = exec_raw(
        &t.sb.escapes(),
        &[],
        &[
            ("GCONV_PATH", "."),
            ("ESCAPES_GRANT", &g.jwt),
            ("PATH", harness::SANE_PATH),
        ],
        true,
        t.sb.root(),
        harness::DEFAULT_TIMEOUT,
    );
    t.assert_refused_early(&out, 2, "m");
    assert!(
        out.stderr.contains("argv[0]") || out.stderr.contains("argument vector"),
        "{out}"
    );
    assert!(t.sb.audit_lines().is_empty());
}

#[test]
fn refused_sudo_options_run_and_consume_nothing() {
    let Some(t) = setup("sudo-opts") else { return };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let other = t.idp.issue(&GrantSpec::new("otherhost", &strs(&argv)));
    let cases: [(&[&str], &Issued); 7] = [
        (&["-s"], &g),
        (&["-i"], &g),
        (&["-R", "/"], &g),
        (&["--chroot=/"], &g),
        (&["-h", "otherhost"], &other),
        (&["--host=otherhost"], &other),
        (&["--host", "otherhost"], &other),
    ];
    for (opts, grant) in cases {
        let mut args: Vec<String> = opts.iter().map(|s| (*s).to_string()).collect();
        args.push("--grant-stdin".into());
        args.extend(argv.iter().cloned());
        let out = t.sb.run_as_user(&args, &[], Some(grant.jwt.as_bytes()));
        assert_eq!(out.code, 2, "{opts:?}: {out}");
        assert!(!t.sb.marker_exists("m"), "{opts:?} ran the command");
    }
    assert!(t.idp.requests().is_empty(), "{:?}", t.idp.requests());
    t.assert_not_consumed(&g);
    t.assert_not_consumed(&other);
}

#[test]
fn relative_program_with_a_slash_is_a_usage_error() {
    let Some(t) = setup("relative") else { return };
    let argv: Vec<String> = vec!["./x".into()];
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 2, "usage", "m");
    t.assert_not_consumed(&g);
}

#[test]
fn program_not_on_secure_path_is_127_and_not_consumed() {
    let Some(t) = setup("not-found") else { return };
    let argv: Vec<String> = vec!["openape-e2e-no-such-program".into()];
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    t.assert_denied(&out, 127, "exec", "m");
    t.assert_not_consumed(&g);
}

// ---------------------------------------------------------------------------
// Descriptors and late failures
// ---------------------------------------------------------------------------

#[test]
fn command_inherits_only_stdin_stdout_stderr() {
    let Some(t) = setup("fds") else { return };
    // The caller leaks a descriptor; escapes itself holds the audit log,
    // config and sockets: a command run as nobody must see none of them.
    let leaked = std::fs::File::open("/etc/hostname").unwrap();
    let argv: Vec<String> = vec!["ls".into(), "/proc/self/fd".into()];
    let mut spec = t.spec(&argv);
    spec.run_as = Some("nobody".into());
    let g = t.idp.issue(&spec);
    let out =
        t.sb.escapes_run(&["--grant-stdin", "--", "ls", "/proc/self/fd"])
            .stdin(&g.jwt)
            .pass_fd(leaked.into(), 7)
            .as_test_user()
            .output();
    assert_eq!(out.code, 0, "{out}");
    // 0-2, plus 3: ls's own handle on /proc/self/fd.
    let fds: BTreeSet<u32> = gid_set(&out.stdout);
    assert_eq!(fds, BTreeSet::from([0, 1, 2, 3]), "{out}");
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

#[test]
fn chdir_failure_is_detected_before_the_grant_is_used() {
    let Some(t) = setup("chdir-late") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &["-D", "/nonexistent-openape-e2e"], &argv);
    assert_ne!(out.code, 0, "{out}");
    assert!(!t.sb.marker_exists("m"));
    // The once-grant must still be usable, and the log must not claim a run.
    t.assert_not_consumed(&g);
    let events: Vec<Value> =
        t.sb.audit_lines()
            .iter()
            .map(|l| l["event"].clone())
            .collect();
    assert_eq!(events, vec![json!("denied")], "{}", t.sb.audit_text());
}

/// A program the target user may not execute (root-only 0700, grant for
/// nobody) is found before the grant is used: exit 126, nothing consumed,
/// no `grant_run` line. (The check runs as the target, after the switch.)
#[test]
fn program_the_target_cannot_execute_is_refused_before_consume() {
    let Some(t) = setup("noexec-target") else {
        return;
    };
    let script = t.sb.write_file(
        "root-only.sh",
        b"#!/bin/sh\ntouch /nonexistent\n",
        0,
        0,
        0o700,
    );
    let argv = vec![script.to_string_lossy().into_owned()];
    let mut spec = t.spec(&argv);
    spec.run_as = Some("nobody".into());
    let g = t.idp.issue(&spec);
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 126, "{out}");
    t.assert_not_consumed(&g);
    let l = t.sb.last_audit();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("exec")),
        "{l}"
    );
    assert!(
        !t.sb.audit_text().contains("grant_run"),
        "{}",
        t.sb.audit_text()
    );
}

/// TIOCSTI (CVE-2005-4890, CVE-2023-28339 class): root runs a command as
/// nobody on its own terminal; the command must not be able to push
/// keystrokes into root's shell. Control: the same probe run as nobody
/// without escapes, on the same kind of terminal, can (so the probe works
/// and the kernel allows legacy TIOCSTI).
#[test]
fn a_less_privileged_command_cannot_type_into_the_callers_terminal() {
    let Some(t) = setup("tiocsti") else {
        return;
    };
    if std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti")
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        eprintln!(
            "skipped: this kernel has TIOCSTI disabled (dev.tty.legacy_tiocsti = 0), the class cannot occur"
        );
        return;
    }
    let probe_src = std::fs::read(harness::artefact("tiocsti-probe")).unwrap();
    let probe = t.sb.write_file("tiocsti-probe", &probe_src, 0, 0, 0o755);
    let probe_s = probe.to_string_lossy().into_owned();
    let under_script = |cmd: String| {
        Run::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
    };
    let control = under_script(format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups -- {probe_s}"
    ));
    assert!(
        control.stdout.contains("pushed"),
        "control probe could not push: {control}"
    );

    let argv = vec![probe_s.clone()];
    let mut spec = t.spec(&argv);
    spec.run_as = Some("nobody".into());
    let g = t.idp.issue(&spec);
    let gfile =
        t.sb.write_file("grant-tiocsti", g.jwt.as_bytes(), 0, 0, 0o600);
    let out = under_script(format!(
        "{} --config {} --grant-file {} -u nobody -- {probe_s}",
        t.sb.escapes().display(),
        t.sb.config_path().display(),
        gfile.display()
    ));
    assert!(
        out.stdout.contains("refused"),
        "the command pushed into the caller's terminal: {out}"
    );
    assert_eq!(t.sb.last_audit()["event"], "grant_run");
}

/// `[http] timeout` is one deadline for the whole run, not per request: a
/// JWKS answer after 1.5 s and a consume that would answer after another
/// 1.5 s (timeout 2 s) is refused at consume after about 2 s, not run after 3.
#[test]
fn the_http_timeout_bounds_all_requests_together() {
    let Some(t) = setup("deadline") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    t.idp.set_fault_for(
        "/.well-known/jwks.json",
        Fault::Slow(Duration::from_millis(1500)),
    );
    t.idp
        .set_fault_for("/api/grants/", Fault::Slow(Duration::from_millis(1500)));
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 1, "{out}");
    assert!(!t.sb.marker_exists("m"));
    assert_eq!(t.sb.last_audit()["step"], "consume");
    assert!(
        out.elapsed < Duration::from_millis(2900),
        "took {:?}",
        out.elapsed
    );
}

/// GHSA-q428-6v73-fc4q class: a grant half typed at the no-echo prompt,
/// then Ctrl-C: nothing of it appears on the terminal, and the terminal's
/// echo is on again afterwards. Driven through a real terminal (tmux).
#[test]
fn interrupted_prompt_echoes_nothing_and_restores_the_terminal() {
    let Some(t) = setup("prompt-sigint") else {
        return;
    };
    if !std::path::Path::new("/usr/bin/tmux").exists() {
        eprintln!("skipped: tmux is not installed (scripts/setup.sh installs it)");
        return;
    }
    let session = format!("openape-e2e-{}", std::process::id());
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
        for _ in 0..100 {
            if screen().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    send(&[&format!("{} -- id", t.sb.escapes().display()), "Enter"]);
    assert!(wait_for("OpenApe grant:"), "no prompt:\n{}", screen());
    send(&["eyJhalfTypedSecret"]);
    std::thread::sleep(Duration::from_millis(200));
    send(&["C-c"]);
    assert!(
        wait_for("interrupted"),
        "escapes did not stop:\n{}",
        screen()
    );
    send(&["stty -a | tr ' ' '\\n' | grep -x -- '-*echo'", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    let text = screen();
    let _ = tmux(&["kill-session", "-t", &session]);
    assert!(
        !text.contains("halfTyped"),
        "typed characters were echoed:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.trim() == "echo"),
        "echo not restored:\n{text}"
    );
    let l = t.sb.last_audit();
    assert_eq!(
        (l["event"].as_str(), l["step"].as_str()),
        (Some("denied"), Some("grant")),
        "{l}"
    );
}

/// The audit log that a user's run creates is root:root 0600 (a setuid
/// process would otherwise create it with the caller's group).
#[test]
fn the_audit_log_a_user_creates_is_root_root_0600() {
    use std::os::unix::fs::MetadataExt;
    let Some(t) = setup("audit-owner") else {
        return;
    };
    let argv = t.sb.marker_cmd("m");
    let g = t.issue(&argv);
    let out = t.run(&g.jwt, &[], &argv);
    assert_eq!(out.code, 0, "{out}");
    let m = std::fs::metadata(t.sb.audit_path()).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o600));
}
