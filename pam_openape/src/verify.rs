//! The verification chain (DESIGN.md): one function, this order, a typed
//! refusal per step. Steps 1–11 are local ([`check`]); step 12 is
//! [`consume`], called last, after the caller has opened its audit log.
//! Only [`consume`] produces an [`Approved`], and only an `Approved` whose
//! verdict is exactly [`Verdict::Allow`] may lead to running anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Deserializer};

use crate::command::{self, Matched};
use crate::config::Config;
use crate::error::{Denial, Kind, Step, sanitize};
use crate::http::{self, Client};
use crate::jwks::{Fetch, KeyCache, ed25519_key};
use crate::token::{self, Claims, GrantType};

/// The outcome as a value far from its opposite in Hamming distance, so a
/// flipped bit cannot turn a refusal into an approval (CVE-2023-42465
/// class). Code that acts compares with `== Verdict::Allow`, never `!=
/// Deny`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow = 0x5AC3_9E61,
    Deny = 0xA53C_619E,
}

/// What is being authorised.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Local name of the real uid that asks.
    pub caller: &'a str,
    /// The user being switched to (`-u`, or the sudo/su target), or
    /// `None` to take the grant's `run_as` (else the configured `run_as`).
    pub target_user: Option<&'a str>,
    /// The argv to run, or `None` where no command is run (then only grants
    /// without a command binding pass).
    pub argv: Option<&'a [String]>,
}

/// A grant that passed steps 1–11.
#[derive(Clone, Debug)]
pub struct Verified {
    pub claims: Claims,
    pub fingerprint: String,
    /// The `aud` value that matched.
    pub audience: String,
    /// The user the grant runs as (`run_as` claim, else configuration).
    pub run_as: String,
    pub matched: Option<Matched>,
    pub verdict: Verdict,
}

/// A grant that passed every step including consumption.
#[derive(Clone, Debug)]
pub struct Approved {
    pub verified: Verified,
    /// `consumed` or `valid`, as the issuer said.
    pub status: String,
    pub verdict: Verdict,
}

impl Approved {
    pub fn allows(&self) -> bool {
        self.verdict == Verdict::Allow && self.verified.verdict == Verdict::Allow
    }
}

/// Longest lifetime (`exp − iat`) accepted for `once` and `always` grants;
/// the IdP issues 5 minutes and 1 hour.
pub const MAX_SHORT_LIFETIME: i64 = 3600;

fn refuse(step: Step, reason: impl Into<String>) -> Denial {
    Denial::refused(step, reason)
}

/// Steps 1–11. `on_pass` is told each step that passed, with a short
/// description (used by `escapes verify`).
pub fn check(
    token: &str,
    req: &Request<'_>,
    cfg: &Config,
    keys: &mut KeyCache<'_>,
    fetch: &dyn Fetch,
    now: i64,
    on_pass: &mut dyn FnMut(Step, String),
) -> Result<Verified, Denial> {
    // 1. Parse.
    let parsed = token::parse(token)?;
    let c = &parsed.claims;
    on_pass(
        Step::Parse,
        format!(
            "EdDSA token, key id {}, grant {} ({})",
            sanitize(&parsed.kid, 64),
            sanitize(&c.grant_id, 64),
            c.grant_type.as_str()
        ),
    );

    // 2. Issuer, before any network traffic.
    if !cfg.allowed_issuers.iter().any(|i| i == &c.iss) {
        return Err(refuse(
            Step::Issuer,
            format!(
                "issuer {} is not in allowed_issuers of {}",
                sanitize(&c.iss, 120),
                cfg.path.display()
            ),
        ));
    }
    on_pass(Step::Issuer, c.iss.clone());

    // 3. Key.
    let key = keys.key(fetch, &c.iss, &parsed.kid, now)?;
    on_pass(Step::Key, format!("Ed25519 key {}", sanitize(&key.kid, 64)));

    // 4. Signature, algorithm pinned to EdDSA (step 1 refused any other).
    let vk = ed25519_key(&key.x)
        .ok_or_else(|| refuse(Step::Key, "issuer key is not a valid Ed25519 key"))?;
    if !signature_is_valid(&vk, &parsed.signing_input, &parsed.signature) {
        return Err(refuse(Step::Signature, "grant signature is not valid"));
    }
    on_pass(Step::Signature, "valid".into());

    // 5. Time.
    check_time(c, cfg.clock_skew, now)?;
    on_pass(Step::Time, format!("expires in {} s", c.exp - now));

    // 6. Approver.
    let Some(approver) = c.decided_by.as_deref() else {
        return Err(refuse(
            Step::Approver,
            "grant names no approver (decided_by)",
        ));
    };
    if !cfg.allowed_approvers.iter().any(|a| a == approver) {
        return Err(refuse(
            Step::Approver,
            format!(
                "approver {} is not in allowed_approvers of {}",
                sanitize(approver, 120),
                cfg.path.display()
            ),
        ));
    }
    // Mail addresses name one mailbox whatever the case of their letters
    // (in practice): `Agent@X` approving `agent@x` is still self-approval.
    if approver.eq_ignore_ascii_case(&c.sub) && !cfg.allow_self_approval {
        return Err(refuse(
            Step::Approver,
            format!(
                "grant was approved by its own requester {} (allow_self_approval is off)",
                sanitize(approver, 120)
            ),
        ));
    }
    on_pass(Step::Approver, approver.to_string());

    // 7. Audience.
    let Some(audience) = c
        .aud
        .values()
        .iter()
        .find(|a| cfg.allowed_audiences.contains(a))
    else {
        return Err(refuse(
            Step::Audience,
            format!(
                "grant audience {} is not in allowed_audiences of {}",
                sanitize(&c.aud.values().join(","), 120),
                cfg.path.display()
            ),
        ));
    };
    on_pass(Step::Audience, audience.clone());

    // 8. Host.
    if c.target_host != cfg.host {
        return Err(refuse(
            Step::Host,
            format!(
                "grant is for host {}, this is {}",
                sanitize(&c.target_host, 120),
                cfg.host
            ),
        ));
    }
    on_pass(Step::Host, cfg.host.clone());

    // 9. Subject.
    if let Some(subs) = cfg.subjects.get(req.caller)
        && !subs.contains(&c.sub)
    {
        return Err(refuse(
            Step::Subject,
            format!(
                "grant subject {} may not be used by {} ([subjects] in {})",
                sanitize(&c.sub, 120),
                req.caller,
                cfg.path.display()
            ),
        ));
    }
    on_pass(Step::Subject, c.sub.clone());

    // 10. Target user.
    let run_as = c.run_as.as_deref().unwrap_or(&cfg.run_as);
    if let Some(wanted) = req.target_user
        && run_as != wanted
    {
        return Err(refuse(
            Step::TargetUser,
            format!("grant is for user {}, not {wanted}", sanitize(run_as, 64)),
        ));
    }
    let run_as = run_as.to_string();
    on_pass(Step::TargetUser, run_as.clone());

    // 11. Command.
    let matched = match req.argv {
        Some(argv) => {
            let m = command::check_with(c, argv, cfg.allow_cmd_hash_only)
                .map_err(|e| refuse(Step::Command, e))?;
            on_pass(Step::Command, format!("{} matches", m.describe()));
            Some(m)
        }
        None => {
            if command::has_binding(c) {
                return Err(refuse(
                    Step::Command,
                    "grant is bound to a command, but no command is being run",
                ));
            }
            on_pass(Step::Command, "no command binding, none run".into());
            None
        }
    };

    Ok(Verified {
        audience: audience.clone(),
        run_as,
        fingerprint: parsed.fingerprint.clone(),
        claims: parsed.claims,
        matched,
        verdict: Verdict::Allow,
    })
}

/// Does `signature` (the token's third segment, strict base64url of
/// exactly 64 bytes) sign the ASCII bytes of `signing_input`
/// (`header.payload`) under `key`? `verify_strict` also refuses
/// non-canonical signatures and small-order (weak) keys, so one message
/// has exactly one valid signature per key.
pub fn signature_is_valid(key: &VerifyingKey, signing_input: &str, signature: &str) -> bool {
    let Some(sig) = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&sig))
        .is_ok()
}

/// Step 5 on its own (also re-run right before consume).
pub fn check_time(c: &Claims, skew: i64, now: i64) -> Result<(), Denial> {
    if now > c.exp.saturating_add(skew) {
        return Err(refuse(
            Step::Time,
            format!("grant expired {} s ago", now.saturating_sub(c.exp)),
        ));
    }
    if let Some(nbf) = c.nbf
        && nbf > now.saturating_add(skew)
    {
        return Err(refuse(
            Step::Time,
            format!(
                "grant is not valid for another {} s (nbf)",
                nbf.saturating_sub(now)
            ),
        ));
    }
    // The IdP puts `iat` in every grant (DESIGN: protocol facts); without
    // it the lifetime cap of once/always grants could not be applied.
    let Some(iat) = c.iat else {
        return Err(refuse(Step::Time, "grant has no issue time (iat)"));
    };
    if iat > now.saturating_add(skew) {
        return Err(refuse(
            Step::Time,
            "grant was issued in the future (iat); check the clocks",
        ));
    }
    if c.grant_type != GrantType::Timed && c.exp.saturating_sub(iat) > MAX_SHORT_LIFETIME + skew {
        return Err(refuse(
            Step::Time,
            format!(
                "{} grant lives {} s, more than {MAX_SHORT_LIFETIME} s",
                c.grant_type.as_str(),
                c.exp.saturating_sub(iat)
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ConsumeAnswer {
    #[serde(default, deserialize_with = "some")]
    status: Option<String>,
    #[serde(default, deserialize_with = "some")]
    error: Option<String>,
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// How the consume answer decides. Pure, so it is tested on its own.
pub fn judge_consume(status: u16, body: &[u8], grant_type: GrantType) -> Result<String, Denial> {
    let answer: Option<ConsumeAnswer> = crate::token::parse_object(body).ok();
    if let Some(err) = answer.as_ref().and_then(|a| a.error.as_deref()) {
        let why = match err {
            "already_consumed" => "this once-grant was already used",
            "revoked" => "the grant was revoked",
            "denied" => "the grant was denied",
            "expired" => "the grant has expired at the issuer",
            "not_approved" => "the grant is not approved",
            _ => "the issuer refused the grant",
        };
        return Err(refuse(
            Step::Consume,
            format!("{why} ({})", sanitize(err, 40)),
        ));
    }
    match status {
        200 => {}
        401 => {
            return Err(refuse(
                Step::Consume,
                "the issuer rejected the token (HTTP 401)",
            ));
        }
        403 => {
            return Err(refuse(
                Step::Consume,
                "the issuer refused the grant (HTTP 403)",
            ));
        }
        404 => {
            return Err(refuse(
                Step::Consume,
                "the issuer does not know this grant (HTTP 404)",
            ));
        }
        s if s >= 500 => {
            return Err(Denial::new(
                Step::Consume,
                Kind::Unavailable,
                format!("the issuer failed (HTTP {s})"),
            ));
        }
        s => {
            return Err(refuse(
                Step::Consume,
                format!("the issuer answered HTTP {s}"),
            ));
        }
    }
    let Some(answer) = answer else {
        return Err(Denial::new(
            Step::Consume,
            Kind::Unavailable,
            "the issuer's consume answer is not JSON",
        ));
    };
    match answer.status.as_deref() {
        Some("consumed") => Ok("consumed".into()),
        Some("valid") if grant_type != GrantType::Once => Ok("valid".into()),
        Some("valid") => Err(refuse(
            Step::Consume,
            "the issuer did not consume this once-grant",
        )),
        _ => Err(refuse(
            Step::Consume,
            "the issuer's answer says neither consumed nor valid",
        )),
    }
}

/// Step 12: consume the grant at its issuer. Time is checked again first.
pub fn consume(
    v: Verified,
    token: &str,
    cfg: &Config,
    client: &Client,
    now: i64,
) -> Result<Approved, Denial> {
    if v.verdict != Verdict::Allow {
        return Err(refuse(Step::Consume, "grant was not verified"));
    }
    check_time(&v.claims, cfg.clock_skew, now)?;
    let url = http::join(
        &v.claims.iss,
        &format!(
            "/api/grants/{}/consume",
            http::encode_segment(&v.claims.grant_id)
        ),
    );
    let resp = client.post_bearer(&url, token).map_err(|e| {
        Denial::new(
            Step::Consume,
            Kind::Unavailable,
            format!("issuer {}: {e}", v.claims.iss),
        )
    })?;
    let status = judge_consume(resp.status, &resp.body, v.claims.grant_type)?;
    Ok(Approved {
        verified: v,
        status,
        verdict: Verdict::Allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};

    fn signed(input: &str) -> (VerifyingKey, String) {
        let k = SigningKey::from_bytes(&[9u8; 32]);
        let sig = URL_SAFE_NO_PAD.encode(k.sign(input.as_bytes()).to_bytes());
        (k.verifying_key(), sig)
    }

    #[test]
    fn signature_over_the_signing_input_only() {
        let input = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0";
        let (vk, sig) = signed(input);
        assert!(signature_is_valid(&vk, input, &sig));
        assert!(!signature_is_valid(&vk, &format!("{input}x"), &sig));
        assert!(!signature_is_valid(&vk, &input[1..], &sig));
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(!signature_is_valid(&other, input, &sig));
        // Strict base64url of exactly 64 bytes.
        assert!(!signature_is_valid(&vk, input, &format!("{sig}==")));
        assert!(!signature_is_valid(&vk, input, &sig.replace('-', "+")) || !sig.contains('-'));
        assert!(!signature_is_valid(
            &vk,
            input,
            sig.get(..85).unwrap_or_default()
        ));
        assert!(!signature_is_valid(&vk, input, &format!("{sig}AA")));
        assert!(!signature_is_valid(&vk, input, ""));
        // 64 bytes are 86 characters; the last one has 4 unused bits.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut loose = sig.clone();
        let last = loose.pop().map_or(b'A', |c| c as u8);
        let i = ALPHABET.iter().position(|&c| c == last).unwrap_or(0);
        loose.push(char::from(ALPHABET.get(i | 1).copied().unwrap_or(b'B')));
        assert_ne!(loose, sig);
        assert!(!signature_is_valid(&vk, input, &loose));
    }

    #[test]
    fn non_canonical_and_weak_key_signatures_are_refused() {
        let input = "a.b";
        let (vk, sig) = signed(input);
        // S + L: the same signature for a lax verifier, not canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut raw = URL_SAFE_NO_PAD.decode(&sig).unwrap_or_default();
        let mut carry = 0u16;
        for (i, l) in L.iter().enumerate() {
            if let Some(b) = raw.get_mut(32 + i) {
                let sum = u16::from(*b) + u16::from(*l) + carry;
                *b = (sum & 0xff) as u8;
                carry = sum >> 8;
            }
        }
        assert!(!signature_is_valid(
            &vk,
            input,
            &URL_SAFE_NO_PAD.encode(&raw)
        ));
        // A small-order key (the identity point) with R = identity, S = 0
        // "verifies" every message under a lax verifier.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = VerifyingKey::from_bytes(&identity);
        assert!(weak.is_ok());
        let mut universal = identity.to_vec();
        universal.extend_from_slice(&[0u8; 32]);
        let universal = URL_SAFE_NO_PAD.encode(&universal);
        if let Ok(weak) = weak {
            let lax = weak.verify(
                input.as_bytes(),
                &Signature::from_slice(&URL_SAFE_NO_PAD.decode(&universal).unwrap_or_default())
                    .unwrap_or(Signature::from_bytes(&[0u8; 64])),
            );
            assert!(lax.is_ok(), "the lax check this guards against");
            assert!(!signature_is_valid(&weak, input, &universal));
        }
        assert!(ed25519_key(&URL_SAFE_NO_PAD.encode(identity)).is_none());
    }

    /// The whole chain (steps 1–11) on a grant signed here, with a JWKS
    /// served from memory and the cache in a trusted temporary directory.
    struct Chain {
        cfg: Config,
        key: SigningKey,
        _dir: crate::testutil::TempDir,
    }

    struct Jwks(String);

    impl Fetch for Jwks {
        fn fetch(&self, _url: &str) -> Result<Vec<u8>, String> {
            Ok(self.0.clone().into_bytes())
        }
    }

    const ISS: &str = "https://id.example";

    impl Chain {
        fn new(security: &str) -> Option<Chain> {
            let dir = crate::testutil::TempDir::trusted("verify-chain")?;
            let text = format!(
                "host = \"h\"\n[security]\nallowed_issuers = [\"{ISS}\"]\nallowed_approvers = [\"alice@x\"]\n{security}\n"
            );
            let mut cfg =
                Config::parse(std::path::Path::new("/etc/openape/config.toml"), &text, 0).ok()?;
            cfg.cache_dir = dir.path().to_path_buf();
            cfg.trusted_owner = crate::testutil::me();
            Some(Chain {
                cfg,
                key: SigningKey::from_bytes(&[5u8; 32]),
                _dir: dir,
            })
        }

        fn check(&self, claims: serde_json::Value, argv: &[&str]) -> Result<Verified, Denial> {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#);
            let p = URL_SAFE_NO_PAD.encode(claims.to_string());
            let sig = self.key.sign(format!("{h}.{p}").as_bytes());
            let token = format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
            let x = URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes());
            let jwks = Jwks(
                serde_json::json!({"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":x}]})
                    .to_string(),
            );
            let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
            let req = Request {
                caller: "deploy",
                target_user: Some("root"),
                argv: Some(&argv),
            };
            let mut keys = KeyCache::new(&self.cfg);
            check(
                &token,
                &req,
                &self.cfg,
                &mut keys,
                &jwks,
                1000,
                &mut |_, _| {},
            )
        }
    }

    fn grant(binding: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({"iss":ISS,"sub":"agent@x","aud":"escapes","exp":1200,"iat":990,
            "grant_id":"g1","grant_type":"once","target_host":"h","decided_by":"alice@x"});
        if let (Some(c), Some(b)) = (c.as_object_mut(), binding.as_object()) {
            c.extend(b.clone());
        }
        c
    }

    fn hash(argv: &[&str]) -> String {
        command::cmd_hash(&argv.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn chain_refuses_cmd_hash_alone_unless_allowed() {
        let Some(chain) = Chain::new("") else { return };
        let step = |r: Result<Verified, Denial>| r.err().map(|d| d.step);
        // The control: a grant with `command` passes.
        let ok = chain.check(
            grant(serde_json::json!({"command":["id","-u"]})),
            &["id", "-u"],
        );
        assert_eq!(ok.map(|v| v.matched), Ok(Some(Matched::Argv)));
        // cmd_hash alone: refused at step `command` by default.
        let only = grant(serde_json::json!({"cmd_hash": hash(&["id", "-u"])}));
        assert_eq!(
            step(chain.check(only.clone(), &["id", "-u"])),
            Some(Step::Command)
        );
        // cmd_hash beside command must agree.
        let both = grant(serde_json::json!({"command":["id","-u"],"cmd_hash": hash(&["id"])}));
        assert_eq!(step(chain.check(both, &["id", "-u"])), Some(Step::Command));

        let Some(allowed) = Chain::new("allow_cmd_hash_only = true") else {
            return;
        };
        let ok = allowed.check(only, &["id", "-u"]);
        assert_eq!(ok.map(|v| v.matched), Ok(Some(Matched::CmdHash)));
        // Allowed, but never for an argv the space join can confuse.
        let spaced = grant(serde_json::json!({"cmd_hash": hash(&["echo", "a b"])}));
        assert_eq!(
            step(allowed.check(spaced, &["echo", "a b"])),
            Some(Step::Command)
        );
        let empty = grant(serde_json::json!({"cmd_hash": hash(&["echo", ""])}));
        assert_eq!(
            step(allowed.check(empty, &["echo", ""])),
            Some(Step::Command)
        );
    }

    #[test]
    fn chain_requires_iat_and_sees_self_approval_in_any_case() {
        let Some(mut chain) = Chain::new("") else {
            return;
        };
        chain.cfg.allowed_approvers.push("Agent@X".into());
        let step = |r: Result<Verified, Denial>| r.err().map(|d| d.step);
        let argv = serde_json::json!({"command":["id"]});
        // The controls: the grant as the IdP signs it passes, and an
        // approver other than the requester passes.
        assert_eq!(step(chain.check(grant(argv.clone()), &["id"])), None);
        // No `iat`: the 1 h cap of once grants cannot be applied (this
        // one would live 1200 s past `exp` - 3 h = a long-lived once grant).
        let mut no_iat = grant(serde_json::json!({"command":["id"],"exp":1000 + 3 * 3600}));
        assert_eq!(step(chain.check(no_iat.clone(), &["id"])), Some(Step::Time));
        if let Some(c) = no_iat.as_object_mut() {
            c.remove("iat");
        }
        assert_eq!(step(chain.check(no_iat, &["id"])), Some(Step::Time));
        let mut short_no_iat = grant(argv);
        if let Some(c) = short_no_iat.as_object_mut() {
            c.remove("iat");
        }
        assert_eq!(step(chain.check(short_no_iat, &["id"])), Some(Step::Time));
        // The requester approving its own grant, spelt with other case.
        let own = grant(serde_json::json!({"command":["id"],"decided_by":"Agent@X"}));
        assert_eq!(step(chain.check(own, &["id"])), Some(Step::Approver));
    }

    #[test]
    fn verdicts_are_far_apart() {
        let d = (Verdict::Allow as u32 ^ Verdict::Deny as u32).count_ones();
        assert!(d >= 16, "hamming distance {d}");
        assert_ne!(Verdict::Allow as u32, 0);
        assert_ne!(Verdict::Deny as u32, 0);
    }

    #[test]
    fn consume_success_needs_an_explicit_status() {
        assert!(judge_consume(200, br#"{"status":"consumed"}"#, GrantType::Once).is_ok());
        assert!(judge_consume(200, br#"{"status":"valid"}"#, GrantType::Timed).is_ok());
        assert!(judge_consume(200, br#"{"status":"valid"}"#, GrantType::Always).is_ok());
        // Fail-open traps of the old tool.
        assert!(judge_consume(200, b"{}", GrantType::Once).is_err());
        assert!(judge_consume(200, br#"{"status":null}"#, GrantType::Once).is_err());
        assert!(judge_consume(200, br#"{"status":"ok"}"#, GrantType::Once).is_err());
        assert!(judge_consume(200, br#"{"status":"valid"}"#, GrantType::Once).is_err());
        assert!(
            judge_consume(
                200,
                br#"{"status":"consumed","error":"revoked"}"#,
                GrantType::Once
            )
            .is_err()
        );
        assert!(judge_consume(201, br#"{"status":"consumed"}"#, GrantType::Once).is_err());
        // An array is not an answer object (serde would read it by position).
        assert!(judge_consume(200, br#"["consumed"]"#, GrantType::Once).is_err());
        assert!(judge_consume(200, br#"["valid"]"#, GrantType::Timed).is_err());
    }

    #[test]
    fn consume_refusals_in_both_forms() {
        for err in [
            "already_consumed",
            "revoked",
            "denied",
            "expired",
            "not_approved",
            "other",
        ] {
            let body = format!(r#"{{"error":"{err}"}}"#);
            for status in [200, 403] {
                let r = judge_consume(status, body.as_bytes(), GrantType::Once);
                assert_eq!(
                    r.as_ref().err().map(|d| d.kind),
                    Some(Kind::Refused),
                    "{status} {err}"
                );
            }
        }
        assert_eq!(
            judge_consume(401, b"", GrantType::Once)
                .err()
                .map(|d| d.kind),
            Some(Kind::Refused)
        );
        assert_eq!(
            judge_consume(404, b"{}", GrantType::Once)
                .err()
                .map(|d| d.kind),
            Some(Kind::Refused)
        );
        assert_eq!(
            judge_consume(500, b"oops", GrantType::Once)
                .err()
                .map(|d| d.kind),
            Some(Kind::Unavailable)
        );
        assert_eq!(
            judge_consume(200, b"<html>", GrantType::Once)
                .err()
                .map(|d| d.kind),
            Some(Kind::Unavailable)
        );
    }
}
