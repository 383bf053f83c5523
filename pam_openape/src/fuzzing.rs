//! Fuzz targets for the parsers and the verification chain. Not an API: the
//! cargo-fuzz harness in `fuzz/` and the stable corpus replay in
//! `tests/tests/fuzz_corpus.rs` both call these functions, so an input that
//! fails under libFuzzer fails the same way in `cargo test`.
//!
//! Every target takes arbitrary bytes and must return normally. Besides "no
//! panic, no abort, bounded memory", each one asserts properties that a
//! fail-closed implementation has, so a wrong "yes" is a crash too:
//!
//! * an accepted grant satisfies every binding of the configuration and the
//!   request (issuer, approver, audience, host, subject, user, command,
//!   time), the chain reports its steps in order and a refusal comes from
//!   the step after the last one that passed;
//! * a consume answer counts as success only when it says `consumed` (or
//!   `valid` for a grant that is not `once`) with HTTP 200 and no `error`;
//! * a JWKS key that is kept is exactly 32 bytes and usable by the
//!   signature library without panicking;
//! * the sudo/su parsers accept only the documented subset, the command they
//!   return is the tail of the command line, no `#-1`-class uid gets through;
//! * a refusal's message, which reaches a terminal, syslog and the audit
//!   log, has no control characters and a bounded length;
//! * what is accepted as a JWS header, a claims set, a JWKS or a consume
//!   answer is a JSON object (serde would also read a struct from an array).
//!
//! The `token` target must get past the signature (step 4) to reach steps
//! 5–11, so it signs with a fixed Ed25519 test key. That key is public (it
//! is in this file), signs only for [`ISSUER`] under the reserved `.invalid`
//! top-level domain, and is trusted only by the in-memory configuration
//! below; nothing outside this module refers to it. The issuer's JWKS comes
//! from a constant [`Fetch`]; no network is touched. The key cache directory
//! is `/proc`: owned by root and writable by nobody (not even root can create
//! a file there), so `KeyCache`'s trust check passes, every cache load
//! misses, every cache store fails silently, and each check takes the same
//! refresh path through the constant JWKS: stateless and reproducible, and
//! the same for a root and a non-root fuzzer.

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};

use crate::command::{self, Matched};
use crate::config::{self, Config};
use crate::error::{Denial, Kind, Step};
use crate::invocation::{self, Invocation, UserSpec};
use crate::jwks::{self, Fetch, KeyCache};
use crate::token::{self, Claims, GrantType};
use crate::verify::{self, Request, Verdict, Verified};

/// The issuer the fuzzing configuration trusts; its JWKS is [`JWKS`].
pub const ISSUER: &str = "https://fuzz.openape.invalid";
/// An allowlisted issuer whose JWKS cannot be fetched.
pub const ISSUER_DOWN: &str = "http://127.0.0.1:9";
/// An allowlisted issuer whose JWKS endpoint answers HTML.
pub const ISSUER_GARBAGE: &str = "https://garbage.fuzz.openape.invalid/";
/// `target_host` grants must name.
pub const HOST: &str = "fuzzhost";
/// The clock of every check (2025-06-15T15:06:40Z).
pub const NOW: i64 = 1_750_000_000;
/// Key id of the fixed signing key.
pub const KID: &str = "fuzz-1";
/// `x` of the fixed signing key (Ed25519 public key, base64url).
pub const X: &str = "aWHl9G3AyL4RDuiajxM5jiLqgN23Ge0fdiyuCnLQcDY";
/// `x` of a second, valid key whose private half is not here.
pub const X2: &str = "Ao64eY0yYNCU0aLE-79KgRFhDnfUm-7adgi_6j5Ht2o";
/// The header [`sign`] uses for a claims-mode input.
pub const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT","kid":"fuzz-1"}"#;
/// The command the fixed requests ask to run.
pub const ARGV: [&str; 3] = ["systemctl", "restart", "nginx"];

/// Seed of the fixed test key: SHA-256 of
/// `"pam_openape fuzzing key: public, test only"`.
const SEED: [u8; 32] = [
    0x80, 0xe2, 0x2b, 0xa7, 0x61, 0x8a, 0x9e, 0xee, 0xaa, 0xb0, 0x57, 0xa7, 0xc3, 0xe4, 0x42, 0xaa,
    0xb5, 0xf8, 0x1e, 0xd9, 0xf8, 0x0a, 0x27, 0x89, 0x9d, 0xad, 0x89, 0x26, 0x10, 0xb9, 0xa9, 0x7e,
];

/// The configuration every `token` and `idp_responses` check runs against.
pub const CONFIG: &str = r#"host = "fuzzhost"
run_as = "root"
audit_log = "/var/log/openape/audit.log"

[security]
allowed_issuers = ["https://fuzz.openape.invalid", "http://127.0.0.1:9", "https://garbage.fuzz.openape.invalid/"]
allowed_approvers = ["alice@example.com", "bob@example.com"]
allowed_audiences = ["escapes", "sudo"]
clock_skew = 30

[subjects]
deploy = ["deploy-agent@example.com"]

[cache]
dir = "/proc"
jwks_max_age = 300
jwks_min_refresh = 10
"#;

/// Path the fuzzing configuration claims to come from (messages only).
pub const CONFIG_PATH: &str = "/etc/openape/fuzz.toml";

/// The JWKS of [`ISSUER`]: the signing key, a second good key, and one
/// of each kind of key that must be refused.
pub fn jwks_document() -> String {
    let short = URL_SAFE_NO_PAD.encode([1u8; 16]);
    let long = URL_SAFE_NO_PAD.encode([1u8; 40]);
    format!(
        r#"{{"keys":[
{{"kty":"OKP","crv":"Ed25519","x":"{X}","kid":"fuzz-1","alg":"EdDSA","use":"sig"}},
{{"kty":"OKP","crv":"Ed25519","x":"{X2}","kid":"fuzz-2"}},
{{"kty":"OKP","crv":"Ed25519","x":"{short}","kid":"short"}},
{{"kty":"OKP","crv":"Ed25519","x":"{long}","kid":"long"}},
{{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"rsa"}},
{{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
{{"kty":"OKP","crv":"X25519","x":"{X}","kid":"x25519"}},
{{"kty":"OKP","crv":"Ed25519","x":"{X}","kid":"enc","use":"enc"}},
{{"kty":"OKP","crv":"Ed25519","x":"{X}","kid":"es","alg":"ES256"}},
{{"kty":"OKP","crv":"Ed25519","x":"{X}"}}
]}}"#
    )
}

/// The IdP as seen by the key cache: constant answers, no network.
struct ConstIdp;

impl Fetch for ConstIdp {
    fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        if url == format!("{ISSUER}/.well-known/jwks.json") {
            Ok(jwks_document().into_bytes())
        } else if url == "https://garbage.fuzz.openape.invalid/.well-known/jwks.json" {
            Ok(b"<html><body>502 Bad Gateway</body></html>".to_vec())
        } else {
            Err("connection refused".into())
        }
    }
}

/// An IdP whose JWKS endpoint answers `body` for every issuer.
struct BodyIdp<'a>(&'a [u8]);

impl Fetch for BodyIdp<'_> {
    fn fetch(&self, _url: &str) -> Result<Vec<u8>, String> {
        Ok(self.0.to_vec())
    }
}

/// The fuzzing configuration, parsed once. `trusted_owner` is the owner of
/// `/` (root on any ordinary system), which also owns `/proc`.
pub fn fuzz_config() -> Option<&'static Config> {
    static CFG: OnceLock<Option<Config>> = OnceLock::new();
    CFG.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata("/").map(|m| m.uid()).unwrap_or(0);
        Config::parse(Path::new(CONFIG_PATH), CONFIG, owner).ok()
    })
    .as_ref()
}

/// Sign `header.payload` with the fixed test key: a compact JWS whose
/// signature verifies against [`X`]. Used for claims-mode inputs and to
/// write the seed corpus.
pub fn sign(header_json: &[u8], payload_json: &[u8]) -> Option<String> {
    let key = SigningKey::from_bytes(&SEED);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let sig = key.sign(input.as_bytes());
    Some(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// Claims of a grant that passes every check of the fuzzing configuration
/// for `deploy` running [`ARGV`] as root, at [`NOW`].
pub fn good_claims() -> String {
    format!(
        r#"{{"iss":"{ISSUER}","sub":"deploy-agent@example.com","aud":"escapes","target_host":"{HOST}","iat":{},"exp":{},"jti":"g-0001","grant_id":"g-0001","grant_type":"once","approval":"once","command":["systemctl","restart","nginx"],"decided_by":"alice@example.com","run_as":"root"}}"#,
        NOW - 10,
        NOW + 290
    )
}

/// Does the whole chain work in this environment (the key, the cache
/// directory, the configuration)? `Err` says which part does not; then the
/// fuzzers never get past step 3 and their figures mean little.
pub fn self_test() -> Result<(), String> {
    let cfg = fuzz_config().ok_or("the fuzzing configuration does not parse")?;
    let token = sign(HEADER.as_bytes(), good_claims().as_bytes()).ok_or("cannot sign")?;
    let argv = fixed_argv();
    let req = Request {
        caller: "deploy",
        target_user: Some("root"),
        argv: Some(&argv),
    };
    let mut keys = KeyCache::new(cfg);
    let v = verify::check(&token, &req, cfg, &mut keys, &ConstIdp, NOW, &mut |_, _| {})
        .map_err(|d| format!("the good grant fails at {}: {}", d.step.name(), d.reason))?;
    if v.verdict != Verdict::Allow || v.matched != Some(Matched::Argv) {
        return Err(format!("unexpected verdict {v:?}"));
    }
    Ok(())
}

fn fixed_argv() -> Vec<String> {
    ARGV.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Shared properties
// ---------------------------------------------------------------------------

/// Longest refusal message: the parts taken from input are cut to at most
/// 160 characters by `sanitize` (each control character 4 bytes, a bidi
/// control or line separator 8), plus fixed text and configuration values.
const MAX_REASON: usize = 2048;

/// A refusal message reaches a terminal (escapes prints it), syslog and the
/// audit log: no control characters (the CVE-2023-28486 class), no bidi
/// control or line separator, and bounded.
fn check_denial(d: &Denial) {
    assert!(
        !d.reason.chars().any(crate::error::is_terminal_active),
        "refusal at {} carries a control character: {:?}",
        d.step.name(),
        d.reason
    );
    assert!(
        d.reason.len() <= MAX_REASON,
        "refusal at {} is {} bytes long",
        d.step.name(),
        d.reason.len()
    );
}

/// Position of a chain step (DESIGN.md "Verification chain").
fn chain_index(step: Step) -> Option<usize> {
    Some(match step {
        Step::Parse => 0,
        Step::Issuer => 1,
        Step::Key => 2,
        Step::Signature => 3,
        Step::Time => 4,
        Step::Approver => 5,
        Step::Audience => 6,
        Step::Host => 7,
        Step::Subject => 8,
        Step::TargetUser => 9,
        Step::Command => 10,
        Step::Consume => 11,
        _ => return None,
    })
}

fn user_spec_ok(arg: &str, spec: &UserSpec) {
    match spec {
        UserSpec::Uid(uid) => {
            assert!(*uid != u32::MAX, "uid {uid} accepted from {arg:?}");
            let digits = arg.strip_prefix('#').unwrap_or("x");
            assert!(
                digits.bytes().all(|b| b.is_ascii_digit())
                    && digits.parse::<u64>().ok() == Some(u64::from(*uid)),
                "{arg:?} read as uid {uid}"
            );
        }
        UserSpec::Name(name) => {
            assert_eq!(name, arg);
            assert!(
                !name.is_empty()
                    && name.len() <= 256
                    && !name.starts_with('-')
                    && !name.starts_with('#')
                    && !name
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/'),
                "user name {name:?} accepted"
            );
        }
    }
}

fn user_spec(arg: &str) {
    if let Ok(spec) = invocation::user_spec(arg) {
        user_spec_ok(arg, &spec);
    }
}

// ---------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------

/// Step 1 to 11 on a token, plus the pure checks on whatever parses.
///
/// Input: bytes starting with `{` are a claims payload, signed here with the
/// fixed key under [`HEADER`] (so the fuzzer explores steps 5–11); any other
/// bytes are the token itself (lossy UTF-8), which explores parsing, the
/// issuer, the key lookup and the signature.
pub fn token(data: &[u8]) {
    let text = if data.first() == Some(&b'{') {
        match sign(HEADER.as_bytes(), data) {
            Some(t) => t,
            None => return,
        }
    } else {
        String::from_utf8_lossy(data).into_owned()
    };
    let Some(cfg) = fuzz_config() else { return };

    let parsed = token::parse(&text);
    let claims = match parsed {
        Ok(p) => {
            assert!(text.len() <= token::MAX_TOKEN_LEN);
            // RFC 7515/7519: the header and the claims set are JSON
            // objects (serde would also read a struct from an array).
            let mut parts = text.split('.');
            let mut json = Vec::new();
            for what in ["header", "claims"] {
                json = parts
                    .next()
                    .and_then(|seg| URL_SAFE_NO_PAD.decode(seg).ok())
                    .unwrap_or_default();
                assert!(
                    is_json_object(&json),
                    "{what} that is not a JSON object accepted"
                );
            }
            if p.claims.execution_context.is_some()
                && let Some(v) = lenient_json(&json)
            {
                assert!(
                    v.get("execution_context")
                        .is_some_and(serde_json::Value::is_object),
                    "execution_context that is not a JSON object accepted"
                );
            }
            assert!(p.fingerprint.len() == 8);
            assert!(text.starts_with(&p.signing_input));
            Some(p.claims)
        }
        Err(d) => {
            assert_eq!(d.step, Step::Parse);
            check_denial(&d);
            None
        }
    };
    if let Some(c) = &claims {
        claims_checks(c);
    }

    let fixed = fixed_argv();
    let own: Option<Vec<String>> = claims.as_ref().and_then(|c| {
        c.command
            .clone()
            .or_else(|| c.execution_context.as_ref().and_then(|e| e.argv.clone()))
    });
    let requests = [
        Request {
            caller: "deploy",
            target_user: Some("root"),
            argv: Some(&fixed),
        },
        Request {
            caller: "alice",
            target_user: None,
            argv: Some(own.as_deref().unwrap_or(&fixed)),
        },
        Request {
            caller: "alice",
            target_user: Some("www-data"),
            argv: None,
        },
    ];
    for req in &requests {
        chain(&text, req, cfg);
    }
}

/// One full run of steps 1–11 with its properties.
fn chain(text: &str, req: &Request<'_>, cfg: &Config) {
    let mut keys = KeyCache::new(cfg);
    let mut passed: Vec<usize> = Vec::new();
    let result = verify::check(text, req, cfg, &mut keys, &ConstIdp, NOW, &mut |step, _| {
        passed.push(chain_index(step).unwrap_or(usize::MAX));
    });
    for (n, idx) in passed.iter().enumerate() {
        assert_eq!(*idx, n, "chain steps out of order: {passed:?}");
    }
    assert!(
        keys.fetches <= 1,
        "{} JWKS fetches for one token",
        keys.fetches
    );
    match result {
        Ok(v) => {
            assert_eq!(passed.len(), 11, "accepted after steps {passed:?}");
            verified_checks(&v, req, cfg);
        }
        Err(d) => {
            check_denial(&d);
            let at = chain_index(d.step).unwrap_or(usize::MAX);
            // The failing step is the next one, or the key step rejecting
            // the key it just returned (step 4 reports Step::Key then).
            assert!(
                at == passed.len() || (d.step == Step::Key && at + 1 == passed.len()),
                "refused at {} after steps {passed:?}",
                d.step.name()
            );
            assert!(
                matches!(
                    d.kind,
                    Kind::Refused | Kind::Unavailable | Kind::Config | Kind::Io
                ),
                "kind {:?}",
                d.kind
            );
        }
    }
}

/// What an accepted grant must satisfy.
fn verified_checks(v: &Verified, req: &Request<'_>, cfg: &Config) {
    let c = &v.claims;
    assert_eq!(v.verdict, Verdict::Allow);
    assert_eq!(c.iss, ISSUER, "only {ISSUER} has a usable key");
    let approver = c.decided_by.as_deref().unwrap_or_default();
    assert!(
        cfg.allowed_approvers.iter().any(|a| a == approver),
        "approver {approver:?} accepted"
    );
    assert!(
        approver != c.sub || cfg.allow_self_approval,
        "self-approval"
    );
    assert!(cfg.allowed_audiences.contains(&v.audience));
    assert!(c.aud.values().contains(&v.audience));
    assert_eq!(c.target_host, cfg.host);
    if let Some(subs) = cfg.subjects.get(req.caller) {
        assert!(subs.contains(&c.sub), "subject {:?} accepted", c.sub);
    }
    assert_eq!(&v.run_as, c.run_as.as_ref().unwrap_or(&cfg.run_as));
    if let Some(user) = req.target_user {
        assert_eq!(v.run_as, user);
    }
    assert!(verify::check_time(c, cfg.clock_skew, NOW).is_ok());
    match req.argv {
        Some(argv) => {
            assert!(v.matched.is_some());
            assert_eq!(command::check(c, argv).ok(), v.matched);
            command_match_checks(c, argv, v.matched);
        }
        None => {
            assert!(v.matched.is_none());
            assert!(
                !command::has_binding(c),
                "bound grant accepted without command"
            );
        }
    }
}

/// `command::check` said `m` for `argv`: every binding present agrees.
fn command_match_checks(c: &Claims, argv: &[String], m: Option<Matched>) {
    let Some(m) = m else { return };
    assert!(!argv.is_empty());
    assert!(command::has_binding(c));
    if let Some(cmd) = &c.command {
        assert_eq!(cmd.as_slice(), argv);
    }
    if let Some(ctx) = &c.execution_context {
        if let Some(a) = &ctx.argv {
            assert_eq!(a.as_slice(), argv);
        }
        if let Some(h) = &ctx.argv_hash {
            assert!(h.eq_ignore_ascii_case(&command::argv_hash(argv)));
        }
    }
    if let Some(h) = &c.cmd_hash {
        let h = h
            .strip_prefix("sha256:")
            .or_else(|| h.strip_prefix("SHA-256:"))
            .unwrap_or(h);
        assert!(h.eq_ignore_ascii_case(&command::cmd_hash(argv)));
    }
    if m == Matched::CmdHash {
        assert!(
            !command::join_is_ambiguous(argv),
            "ambiguous argv {argv:?} accepted by cmd_hash alone"
        );
    }
}

/// Clocks a real system can have: 1970 to 2100.
fn clock(t: i64) -> i64 {
    t.clamp(0, 4_102_444_800)
}

/// The checks that do not need a signature, on any claims that parse.
fn claims_checks(c: &Claims) {
    // Step 5 on its own, at several clocks and leeways.
    let nows = [
        NOW,
        0,
        clock(c.exp),
        clock(c.exp.saturating_add(31)),
        clock(c.nbf.unwrap_or(NOW)),
        clock(c.iat.unwrap_or(NOW)),
    ];
    for now in nows {
        for skew in [0, 30, 300] {
            match verify::check_time(c, skew, now) {
                Ok(()) => {
                    assert!(now <= c.exp.saturating_add(skew), "expired grant accepted");
                    if let Some(nbf) = c.nbf {
                        assert!(
                            nbf <= now.saturating_add(skew),
                            "nbf in the future accepted"
                        );
                    }
                    if let Some(iat) = c.iat {
                        assert!(
                            iat <= now.saturating_add(skew),
                            "iat in the future accepted"
                        );
                        if c.grant_type != GrantType::Timed {
                            assert!(
                                c.exp.saturating_sub(iat) <= verify::MAX_SHORT_LIFETIME + skew,
                                "long-lived {} grant accepted",
                                c.grant_type.as_str()
                            );
                        }
                    }
                }
                Err(d) => {
                    assert_eq!(d.step, Step::Time);
                    check_denial(&d);
                }
            }
        }
    }

    // Step 11 on its own, for the argvs the grant itself names.
    let mut argvs: Vec<Vec<String>> = vec![fixed_argv(), Vec::new()];
    if let Some(cmd) = &c.command {
        argvs.push(cmd.clone());
        argvs.push(cmd.join(" ").split(' ').map(str::to_string).collect());
    }
    if let Some(a) = c.execution_context.as_ref().and_then(|e| e.argv.as_ref()) {
        argvs.push(a.clone());
    }
    for argv in argvs.iter().take(8) {
        if argv.len() > 4096 {
            continue;
        }
        let m = command::check(c, argv);
        command_match_checks(c, argv, m.as_ref().ok().copied());
        if argv.is_empty() {
            assert!(m.is_err());
        }
    }

    // The consume URL built from token data stays in its path segment.
    let seg = crate::http::encode_segment(&c.grant_id);
    assert!(
        seg.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
        "grant_id {:?} encoded as {seg:?}",
        c.grant_id
    );
    assert!(seg != "." && seg != "..");
    let url = crate::http::join(&c.iss, &format!("/api/grants/{seg}/consume"));
    assert!(url.ends_with("/consume"));

    // The audit line for this grant is one line of JSON.
    let record = crate::audit::Record {
        ts: crate::time::rfc3339_utc(NOW),
        event: "grant_run",
        via: "escapes".into(),
        command: c.command.clone().unwrap_or_default(),
        cmd_hash: c.cmd_hash.clone(),
        grant_id: Some(c.grant_id.clone()),
        grant_type: Some(c.grant_type.as_str()),
        agent: Some(c.sub.clone()),
        issuer: Some(c.iss.clone()),
        decided_by: c.decided_by.clone(),
        audience: Some(c.aud.values().join(",")),
        target_host: Some(c.target_host.clone()),
        host: HOST.into(),
        run_as: c.run_as.clone(),
        ..crate::audit::Record::default()
    };
    if let Ok(line) = serde_json::to_vec(&record) {
        assert!(!line.contains(&b'\n'), "audit line with a newline");
        let back: Result<serde_json::Value, _> = serde_json::from_slice(&line);
        assert!(
            back.as_ref()
                .ok()
                .and_then(|v| v.get("grant_id"))
                .and_then(|g| g.as_str())
                == Some(c.grant_id.as_str()),
            "audit line does not round-trip"
        );
    }
}

// ---------------------------------------------------------------------------
// sudo / su command lines
// ---------------------------------------------------------------------------

/// Most arguments examined one by one (user specs).
const MAX_ARGS: usize = 256;

/// sudo's argv as `/proc/self/cmdline` holds it (NUL-separated).
pub fn sudo_argv(data: &[u8]) {
    let Some(argv) = cmdline(data) else { return };
    sudo_parse(&argv);
    // The same arguments behind a proper program name.
    if let Some(rest) = argv.get(1..) {
        let mut as_sudo = vec!["sudo".to_string()];
        as_sudo.extend_from_slice(rest);
        sudo_parse(&as_sudo);
    }
    environ(data);
}

/// su's argv as `/proc/self/cmdline` holds it (NUL-separated).
pub fn su_argv(data: &[u8]) {
    let Some(argv) = cmdline(data) else { return };
    su_parse(&argv);
    if let Some(rest) = argv.get(1..) {
        let mut as_su = vec!["su".to_string()];
        as_su.extend_from_slice(rest);
        su_parse(&as_su);
    }
    environ(data);
}

fn cmdline(data: &[u8]) -> Option<Vec<String>> {
    let argv = invocation::split_cmdline(data).ok()?;
    let body = data.strip_suffix(b"\0").unwrap_or(data);
    assert_eq!(argv.join("\0").as_bytes(), body, "cmdline split is lossy");
    for a in argv.iter().take(MAX_ARGS) {
        user_spec(a);
    }
    if let (Some(exe), Some(service)) = (argv.first(), argv.get(1)) {
        let _ = invocation::host_kind(exe, service);
    }
    Some(argv)
}

/// The grant variable from a NUL-separated environment block.
fn environ(data: &[u8]) {
    if let Some(v) = invocation::env_from_block(data, "OPENAPE_GRANT") {
        let entry = [b"OPENAPE_GRANT=".as_slice(), v.as_bytes()].concat();
        assert!(
            data.split(|&b| b == 0).any(|e| e == entry.as_slice()),
            "grant variable not read from one whole entry"
        );
    }
}

fn sudo_parse(argv: &[String]) {
    let Ok(inv) = invocation::parse_sudo(argv) else {
        return;
    };
    let Invocation {
        user, argv: cmd, ..
    } = inv;
    let cmd = cmd.unwrap_or_default();
    assert!(!cmd.is_empty(), "sudo accepted without a command");
    assert!(
        cmd.len() < argv.len() && argv.ends_with(&cmd),
        "sudo command {cmd:?} is not the tail of {argv:?}"
    );
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let base = program.rsplit('/').next().unwrap_or(program);
    assert!(
        base == "sudo" || base == "sudo-rs",
        "accepted as {program:?}"
    );
    let first = cmd.first().map(String::as_str).unwrap_or_default();
    assert!(
        !first.contains('=') || first.starts_with('/'),
        "VAR=value accepted: {first:?}"
    );
    // A relative program with a slash depends on the caller's cwd.
    assert!(
        !first.contains('/') || first.starts_with('/'),
        "relative program accepted: {first:?}"
    );
    // sudo-rs skips a lone `-`; `sudo sudoedit FILE` is edit mode.
    assert!(!first.starts_with('-'), "command {first:?} accepted");
    // As sudo-rs's std::path sees it: `.` and empty components dropped.
    let first_base = std::path::Path::new(first)
        .components()
        .next_back()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        !first_base.starts_with("sudoedit"),
        "sudoedit accepted as the command: {first:?}"
    );
    // Independent reading of the option part: only -n, -S, -u USER and the
    // long forms, and `--` only as its last element.
    let opts = argv.get(1..argv.len() - cmd.len()).unwrap_or_default();
    let mut named: Option<&str> = None;
    let mut i = 0;
    while let Some(o) = opts.get(i) {
        let mut value: Option<&str> = None;
        if o == "--" {
            assert_eq!(i + 1, opts.len(), "sudo options after --: {opts:?}");
        } else if o == "--non-interactive" || o == "--stdin" {
        } else if o == "--user" {
            i += 1;
            value = opts.get(i).map(String::as_str);
            assert!(value.is_some());
        } else if let Some(v) = o.strip_prefix("--user=") {
            value = Some(v);
        } else {
            let cluster = o.strip_prefix('-').unwrap_or_default();
            assert!(
                !cluster.is_empty() && !cluster.starts_with('-'),
                "sudo accepted {o:?} before the command"
            );
            let flags = cluster.split('u').next().unwrap_or_default();
            assert!(
                flags.chars().all(|c| c == 'n' || c == 'S'),
                "sudo option {o:?} accepted"
            );
            if flags.len() < cluster.len() {
                let rest = cluster.get(flags.len() + 1..).unwrap_or_default();
                if rest.is_empty() {
                    i += 1;
                    value = opts.get(i).map(String::as_str);
                    assert!(value.is_some());
                } else {
                    value = Some(rest);
                }
            }
        }
        if let Some(v) = value {
            assert!(named.is_none(), "two -u accepted: {opts:?}");
            named = Some(v);
        }
        i += 1;
    }
    assert_eq!(
        named.is_some(),
        user.is_some(),
        "user {user:?} does not follow from {opts:?}"
    );
    if let (Some(v), Some(spec)) = (named, &user) {
        user_spec_ok(v, spec);
    }
}

fn su_parse(argv: &[String]) {
    let Ok(inv) = invocation::parse_su(argv) else {
        return;
    };
    let program = argv.first().map(String::as_str).unwrap_or_default();
    assert_eq!(
        program.rsplit('/').next(),
        Some("su"),
        "accepted as {program:?}"
    );
    // Independent reading: options, then at most one operand (the user).
    let mut cmd: Option<&str> = None;
    let mut operands: Vec<&str> = Vec::new();
    let mut done = false;
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        // su's getopt: after the user, `-` (and, under POSIXLY_CORRECT,
        // every option) goes to the shell.
        assert!(
            done || operands.is_empty() || !a.starts_with('-'),
            "su accepted {a:?} after the user name"
        );
        if done || !a.starts_with('-') {
            operands.push(a);
        } else if a == "--" {
            done = true;
        } else if a == "-" || a == "-l" || a == "--login" {
        } else if a == "-c" || a == "--command" {
            i += 1;
            assert!(cmd.is_none(), "two -c accepted");
            cmd = argv.get(i).map(String::as_str);
            assert!(cmd.is_some());
        } else {
            let v = a
                .strip_prefix("--command=")
                .or_else(|| a.strip_prefix("-c"));
            assert!(v.is_some(), "su option {a:?} accepted");
            assert!(cmd.is_none(), "two -c accepted");
            cmd = v;
        }
        i += 1;
    }
    assert!(operands.len() <= 1, "su accepted operands {operands:?}");
    assert_eq!(
        inv.argv,
        cmd.map(|c| vec![c.to_string()]),
        "su command differs"
    );
    assert_eq!(
        operands.len(),
        usize::from(inv.user.is_some()),
        "su user {:?} from {operands:?}",
        inv.user
    );
    if let (Some(u), Some(spec)) = (operands.first(), &inv.user) {
        user_spec_ok(u, spec);
    }
}

// ---------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------

/// `/etc/openape/config.toml` text, and the PAM module arguments.
pub fn config(data: &[u8]) {
    // Config::load refuses text that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(Path::new(config::DEFAULT_CONFIG_PATH), text, 0) {
        config_checks(&c);
    }
    let args: Vec<&str> = text.split_ascii_whitespace().take(MAX_ARGS).collect();
    if let Ok(a) = crate::pam::args::parse(&args) {
        assert!(!a.grant_env.is_empty());
    }
}

fn config_checks(c: &Config) {
    assert!(!c.allowed_issuers.is_empty());
    for iss in &c.allowed_issuers {
        assert!(
            config::issuer_url_ok(iss).is_ok(),
            "issuer {iss:?} accepted"
        );
    }
    assert!(!c.allowed_approvers.is_empty());
    assert!(c.allowed_approvers.iter().all(|a| !a.trim().is_empty()));
    assert!(!c.allowed_audiences.is_empty());
    assert!(c.allowed_audiences.iter().all(|a| !a.is_empty()));
    assert!((0..=300).contains(&c.clock_skew));
    assert!((1..=120).contains(&c.http_timeout.as_secs()));
    assert!(!c.host.is_empty());
    assert!(
        !c.host
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    );
    assert!(!c.run_as.is_empty());
    assert!(c.audit_log.is_absolute());
    assert!(c.cache_dir.is_absolute());
    assert!(c.ca_bundle.as_ref().is_none_or(|p| p.is_absolute()));
    assert!(c.secure_path.iter().all(|p| p.is_absolute()));
    assert!(c.subjects.values().all(|s| !s.is_empty()));
    for name in &c.env_keep {
        assert!(
            !name.starts_with("LD_")
                && !name.starts_with("MALLOC_")
                && !name.starts_with("PERL")
                && !name.starts_with("PYTHON")
                && !matches!(
                    name.as_str(),
                    "PATH" | "IFS" | "ENV" | "BASH_ENV" | "GCONV_PATH" | "HOME" | "OPENAPE_GRANT"
                ),
            "env.keep {name:?} accepted"
        );
    }
    assert!(c.jwks_max_age >= 0 && c.jwks_min_refresh >= 0);
}

// ---------------------------------------------------------------------------
// IdP answers
// ---------------------------------------------------------------------------

/// HTTP statuses the consume answer is judged under; the first input byte
/// picks one.
const STATUSES: [u16; 16] = [
    200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 409, 429, 500, 502, 503, 0,
];

/// A consume answer and a JWKS document: the first byte picks the HTTP
/// status, the second the grant type, the rest is the body.
pub fn idp_responses(data: &[u8]) {
    let (status, gt, body) = match data {
        [s, g, rest @ ..] => {
            let status = STATUSES
                .get(usize::from(*s) % STATUSES.len())
                .copied()
                .unwrap_or(200);
            let gt = match g % 3 {
                0 => GrantType::Once,
                1 => GrantType::Timed,
                _ => GrantType::Always,
            };
            (status, gt, rest)
        }
        _ => (200, GrantType::Once, data),
    };
    consume_answer(status, gt, body);
    jwks_answer(body);
}

/// Does this JSON text start with `{` (after whitespace)?
fn is_json_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
}

/// The JSON as a value, read like serde reads ignored fields (without
/// checking their UTF-8); `None` if it is not JSON.
fn lenient_json(json: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_str(&String::from_utf8_lossy(json)).ok()
}

fn consume_answer(status: u16, gt: GrantType, body: &[u8]) {
    match verify::judge_consume(status, body, gt) {
        Ok(s) => {
            assert_eq!(status, 200, "success under HTTP {status}");
            assert!(
                is_json_object(body),
                "success from a body that is not an object"
            );
            assert!(
                s == "consumed" || (s == "valid" && gt != GrantType::Once),
                "success {s:?} for a {} grant",
                gt.as_str()
            );
            let v = lenient_json(body);
            assert!(
                v.as_ref()
                    .and_then(|v| v.get("status"))
                    .and_then(|s| s.as_str())
                    == Some(s.as_str()),
                "success without that status in the body"
            );
            assert!(
                v.as_ref().and_then(|v| v.get("error")).is_none(),
                "success with an error field"
            );
        }
        Err(d) => {
            assert_eq!(d.step, Step::Consume);
            assert!(matches!(d.kind, Kind::Refused | Kind::Unavailable));
            check_denial(&d);
        }
    }
}

fn jwks_answer(body: &[u8]) {
    let set = jwks::parse_jwks(body);
    let mut kids: Vec<String> = vec![KID.to_string()];
    if let Ok(set) = &set {
        assert!(
            is_json_object(body),
            "JWKS that is not a JSON object accepted"
        );
        // Every entry of `keys` was read as a key, so each must be an object.
        if let Some(v) = lenient_json(body) {
            assert!(
                v.get("keys")
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|ks| ks.iter().all(serde_json::Value::is_object)),
                "JWKS key that is not a JSON object accepted"
            );
        }
        for k in &set.keys {
            let raw = URL_SAFE_NO_PAD.decode(&k.x).unwrap_or_default();
            assert_eq!(
                raw.len(),
                32,
                "key {:?} kept with {} bytes",
                k.kid,
                raw.len()
            );
            // What step 4 does with a key: must not panic, whatever the bytes.
            let vk = jwks::ed25519_key(&k.x);
            assert!(
                vk.is_some(),
                "key {:?} kept although it is no usable Ed25519 key",
                k.kid
            );
            if let Some(vk) = vk {
                let _ = verify::signature_is_valid(&vk, "a.b", "c2ln");
            }
        }
        kids.extend(set.keys.iter().take(4).map(|k| k.kid.clone()));
        kids.extend(set.unusable.iter().take(4).map(|(k, _)| k.clone()));
    }
    let Some(cfg) = fuzz_config() else { return };
    // Step 3 against this JWKS, for the kids it names.
    for kid in &kids {
        let mut keys = KeyCache::new(cfg);
        match keys.key(&BodyIdp(body), ISSUER, kid, NOW) {
            Ok(k) => {
                assert_eq!(&k.kid, kid);
                assert!(
                    set.as_ref().is_ok_and(|s| s.keys.contains(&k)),
                    "key {kid:?} returned but not kept by parse_jwks"
                );
            }
            Err(d) => {
                assert_eq!(d.step, Step::Key);
                check_denial(&d);
            }
        }
    }
    // Steps 1–11 of a good grant, with this JWKS as the issuer's answer.
    static GOOD: OnceLock<Option<String>> = OnceLock::new();
    let Some(good) = GOOD
        .get_or_init(|| sign(HEADER.as_bytes(), good_claims().as_bytes()))
        .as_deref()
    else {
        return;
    };
    let argv = fixed_argv();
    let req = Request {
        caller: "deploy",
        target_user: Some("root"),
        argv: Some(&argv),
    };
    let mut keys = KeyCache::new(cfg);
    match verify::check(
        good,
        &req,
        cfg,
        &mut keys,
        &BodyIdp(body),
        NOW,
        &mut |_, _| {},
    ) {
        Ok(_) => assert!(
            set.as_ref()
                .is_ok_and(|s| s.keys.iter().any(|k| k.kid == KID && k.x == X)),
            "grant verified with a JWKS that lacks its key"
        ),
        Err(d) => check_denial(&d),
    }
}
