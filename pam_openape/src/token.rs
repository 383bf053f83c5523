//! Step 1 of the chain: take a compact JWS apart without trusting it.
//!
//! Size cap before any decoding, exactly three base64url segments (no
//! padding, no `+/`), a header whose `alg` is exactly `EdDSA` and that has
//! no `crit`, and a payload that deserialises into typed claims. Typed
//! structs (no `flatten`, no `Value`) make serde refuse duplicate keys and
//! claims of the wrong JSON type: an `"nbf": "9999"` or `"exp": null` is an
//! error, never "absent" (CVE-2026-25537 class).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::error::{Denial, Step, sanitize};

/// Longest token accepted, checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The only signature algorithm accepted. Never taken from the header.
pub const ALG: &str = "EdDSA";

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default, deserialize_with = "some")]
    kid: Option<String>,
    #[serde(default, deserialize_with = "some")]
    typ: Option<String>,
    /// Any `crit` at all, even `null`, is refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// `aud` as a string or an array of strings (RFC 7519).
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn values(&self) -> &[String] {
        match self {
            Audience::One(s) => std::slice::from_ref(s),
            Audience::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GrantType {
    Once,
    Timed,
    Always,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Once => "once",
            GrantType::Timed => "timed",
            GrantType::Always => "always",
        }
    }
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExecutionContext {
    #[serde(default, deserialize_with = "some")]
    pub argv: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    pub argv_hash: Option<String>,
}

/// Longest key id a grant may name, in bytes.
pub const MAX_KID_LEN: usize = 256;

/// Whether a grant header may name this key id (and so whether a JWKS
/// entry with it is worth keeping).
pub fn kid_is_nameable(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID_LEN
}

/// The claims of an OpenApe grant. Unknown claims are ignored; every known
/// claim must have its JSON type when present. `grant_id`, `grant_type` and
/// `target_host` are required: the IdP signs other tokens (agent logins,
/// audience `apes-cli`) with the same key, and those are not grants.
#[derive(Deserialize, Clone, Debug)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    #[serde(default, deserialize_with = "some")]
    pub nbf: Option<i64>,
    #[serde(default, deserialize_with = "some")]
    pub iat: Option<i64>,
    #[serde(default, deserialize_with = "some")]
    pub jti: Option<String>,
    pub grant_id: String,
    pub grant_type: GrantType,
    pub target_host: String,
    #[serde(default, deserialize_with = "some")]
    pub decided_by: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub run_as: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    pub cmd_hash: Option<String>,
    #[serde(default, deserialize_with = "some_object")]
    pub execution_context: Option<ExecutionContext>,
    #[serde(default, deserialize_with = "some")]
    pub permissions: Option<Vec<String>>,
}

/// A present optional claim must have its type; `null` is not "absent".
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Deserialize `T` only from a JSON object. serde's derive also reads a
/// struct from an array by position (`["EdDSA","kid"]` as a header,
/// `["consumed"]` as a consume answer): everything we parse from a token or
/// the IdP must be an object, so that form is refused. Duplicate keys are
/// still refused by the derived code.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}

/// [`object`], for an optional field (present means an object).
fn some_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    object(d).map(Some)
}

/// A value that must be a JSON object (for elements of arrays).
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Obj)
    }
}

/// Parse a whole JSON document that must be an object.
pub fn parse_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = object(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A token taken apart, not yet trusted.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kid: String,
    pub claims: Claims,
    /// `header.payload`, the signed bytes.
    pub signing_input: String,
    /// The third segment, base64url.
    pub signature: String,
    /// First 8 hex digits of SHA-256 of the token: safe to log.
    pub fingerprint: String,
}

/// 8 hex digits of SHA-256: a handle for logs, never the secret.
pub fn fingerprint(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes())[..4])
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn refuse(reason: impl Into<String>) -> Denial {
    Denial::refused(Step::Parse, reason)
}

fn is_b64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Step 1: parse without trusting.
pub fn parse(token: &str) -> Result<Parsed, Denial> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(refuse(format!(
            "grant is larger than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(
            "grant is not a compact JWS (three dot-separated parts)",
        ));
    };
    if !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(refuse("grant is not base64url without padding"));
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| refuse("grant header is not valid base64url"))?;
    let header: Header = parse_object(&header_bytes).map_err(|e| {
        refuse(format!(
            "grant header is not valid: {}",
            sanitize(&e.to_string(), 120)
        ))
    })?;
    if header.alg != ALG {
        return Err(refuse(format!(
            "grant algorithm {} is not allowed (only {ALG})",
            sanitize(&header.alg, 20)
        )));
    }
    if header.crit {
        return Err(refuse(
            "grant header has a crit parameter; none is supported",
        ));
    }
    if let Some(typ) = &header.typ
        && !typ.eq_ignore_ascii_case("JWT")
    {
        return Err(refuse(format!(
            "grant type {} is not JWT",
            sanitize(typ, 40)
        )));
    }
    let kid = match header.kid {
        Some(k) if kid_is_nameable(&k) => k,
        Some(_) => return Err(refuse("grant key id (kid) is empty or too long")),
        None => return Err(refuse("grant header names no key id (kid)")),
    };
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| refuse("grant payload is not valid base64url"))?;
    let claims: Claims = parse_object(&payload).map_err(|e| {
        refuse(format!(
            "grant claims are not an OpenApe grant: {}",
            sanitize(&e.to_string(), 160)
        ))
    })?;
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .unwrap_or_default()
        .to_string();
    Ok(Parsed {
        kid,
        claims,
        signing_input,
        signature: s.to_string(),
        fingerprint: fingerprint(token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn claims() -> serde_json::Value {
        json!({"iss":"https://id","sub":"agent@x","aud":"escapes","exp":2_000_000_000i64,"iat":1_700_000_000i64,
               "grant_id":"g1","grant_type":"once","target_host":"h","decided_by":"alice@x","command":["id"]})
    }

    fn tok(header: serde_json::Value, claims: serde_json::Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    fn reason(t: &str) -> String {
        parse(t).err().map(|e| e.reason).unwrap_or_default()
    }

    #[test]
    fn parses_a_grant() {
        let t = tok(json!({"alg":"EdDSA","typ":"JWT","kid":"k1"}), claims());
        let p = parse(&t);
        assert!(p.is_ok(), "{:?}", p.err());
        if let Ok(p) = p {
            assert_eq!(p.kid, "k1");
            assert_eq!(p.claims.grant_type, GrantType::Once);
            assert_eq!(p.claims.aud.values(), ["escapes"]);
            assert_eq!(p.signature, "c2ln");
            assert_eq!(p.fingerprint.len(), 8);
        }
    }

    #[test]
    fn refuses_other_algorithms_and_crit() {
        for alg in ["none", "HS256", "RS256", "eddsa", "ES256"] {
            let t = tok(json!({"alg":alg,"kid":"k"}), claims());
            assert!(reason(&t).contains("not allowed"), "{alg}");
        }
        assert!(
            reason(&tok(
                json!({"alg":"EdDSA","kid":"k","crit":["exp"]}),
                claims()
            ))
            .contains("crit")
        );
        assert!(
            reason(&tok(json!({"alg":"EdDSA","kid":"k","crit":null}), claims())).contains("crit")
        );
        assert!(reason(&tok(json!({"alg":"EdDSA"}), claims())).contains("kid"));
        assert!(
            reason(&tok(
                json!({"alg":"EdDSA","kid":"k","typ":"at+jwt"}),
                claims()
            ))
            .contains("not JWT")
        );
    }

    #[test]
    fn refuses_wrong_claim_types() {
        for (k, v) in [
            ("exp", json!("2000000000")),
            ("exp", json!(null)),
            ("exp", json!(1e300)),
            ("exp", json!(2.0e9)),
            ("nbf", json!("9999")),
            ("nbf", json!(null)),
            ("iat", json!([1])),
            ("aud", json!(5)),
            ("aud", json!({"a":1})),
            ("iss", json!(["https://evil", "https://id"])),
            ("iss", json!(7)),
            ("sub", json!(null)),
            ("command", json!("id")),
            ("run_as", json!(0)),
            ("grant_type", json!("forever")),
        ] {
            let mut c = claims();
            c[k] = v.clone();
            assert!(
                parse(&tok(json!({"alg":"EdDSA","kid":"k"}), c)).is_err(),
                "{k}={v}"
            );
        }
        for k in [
            "exp",
            "iss",
            "aud",
            "sub",
            "grant_id",
            "grant_type",
            "target_host",
        ] {
            let mut c = claims();
            c.as_object_mut().map(|o| o.remove(k));
            assert!(
                parse(&tok(json!({"alg":"EdDSA","kid":"k"}), c)).is_err(),
                "missing {k}"
            );
        }
    }

    #[test]
    fn refuses_arrays_where_objects_belong() {
        let h = URL_SAFE_NO_PAD.encode(r#"["EdDSA","k"]"#);
        let p = b64(&claims());
        assert!(parse(&format!("{h}.{p}.c2ln")).is_err());
        let h = b64(&json!({"alg":"EdDSA","kid":"k"}));
        let mut c = claims();
        c["execution_context"] = json!([["id"], "SHA-256:00"]);
        assert!(parse(&format!("{h}.{}.c2ln", b64(&c))).is_err());
    }

    #[test]
    fn refuses_duplicate_keys() {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k","alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(claims().to_string());
        assert!(parse(&format!("{h}.{p}.c2ln")).is_err());
        let dup = claims().to_string().replacen('{', r#"{"exp":1,"#, 1);
        let p = URL_SAFE_NO_PAD.encode(dup);
        let h = b64(&json!({"alg":"EdDSA","kid":"k"}));
        assert!(parse(&format!("{h}.{p}.c2ln")).is_err());
    }

    #[test]
    fn refuses_bad_encodings_and_sizes() {
        let good = tok(json!({"alg":"EdDSA","kid":"k"}), claims());
        assert!(parse(&good).is_ok());
        assert!(parse(&format!("{good}=")).is_err());
        assert!(parse(&format!("{good}\n")).is_err());
        assert!(parse(&format!("{good}.x")).is_err());
        assert!(parse(&good.replacen('.', "+.", 1)).is_err());
        assert!(parse("a.b").is_err());
        assert!(parse("").is_err());
        assert!(reason(&"a".repeat(MAX_TOKEN_LEN + 1)).contains("larger"));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg":"EdDSA","kid":"k"})),
            URL_SAFE_NO_PAD.encode(deep)
        );
        assert!(parse(&t).is_err());
    }
}
