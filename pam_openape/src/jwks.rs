//! Step 3: the issuer's signing key, from a root-owned cache or the
//! issuer's JWKS.
//!
//! The hot path makes no request while the cache is fresh. A `kid` the
//! cache does not know causes one refresh, limited by a small token bucket
//! per issuer kept in the cache file: [`KID_BURST`] refreshes at once, then
//! one more per `jwks_min_refresh` seconds. So a key the IdP published a
//! second ago verifies on its first use, even right after a fetch, while a
//! flood of made-up `kid`s costs the IdP at most a few requests a minute. The JWKS is
//! fetched only from `{iss}/.well-known/jwks.json` of an allowlisted issuer;
//! `jku`, `x5u`, `jwk` and `x5c` headers are never used. Only OKP/Ed25519
//! keys with exactly 32 bytes of `x` are kept. Cache files are named by the
//! SHA-256 of the issuer, never by token data.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Denial, Kind, Step, sanitize};
use crate::token::hex;
use crate::trust;

/// A validated Ed25519 verification key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub kid: String,
    /// base64url of exactly 32 bytes.
    pub x: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<crate::token::Obj<RawJwk>>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
}

/// What a JWKS says about each `kid`: a usable key, or why not.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// `kid`s that exist but are not usable EdDSA keys, with the reason.
    pub unusable: Vec<(String, String)>,
}

/// Parse a JWKS document; keep only well-formed Ed25519 signing keys.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    let raw: RawJwks = crate::token::parse_object(bytes)
        .map_err(|_| "JWKS is not a JSON object with a keys array".to_string())?;
    let mut set = KeySet::default();
    for crate::token::Obj(k) in raw.keys {
        let Some(kid) = k.kid else { continue };
        let why = if k.kty.as_deref() != Some("OKP") {
            Some(format!(
                "key type {} is not OKP",
                sanitize(k.kty.as_deref().unwrap_or("(none)"), 20)
            ))
        } else if k.crv.as_deref() != Some("Ed25519") {
            Some("curve is not Ed25519".to_string())
        } else if k.alg.as_deref().is_some_and(|a| a != "EdDSA") {
            Some("key algorithm is not EdDSA".to_string())
        } else if k.use_.as_deref().is_some_and(|u| u != "sig") {
            Some("key use is not sig".to_string())
        } else {
            match k.x.as_deref().map(|x| (x, URL_SAFE_NO_PAD.decode(x))) {
                Some((x, Ok(bytes))) if bytes.len() == 32 => {
                    set.keys.push(Key {
                        kid,
                        x: x.to_string(),
                    });
                    continue;
                }
                Some((_, Ok(bytes))) => Some(format!("key is {} bytes, not 32", bytes.len())),
                _ => Some("key has no valid x".to_string()),
            }
        };
        if let Some(why) = why {
            set.unusable.push((kid, why));
        }
    }
    Ok(set)
}

/// Unknown-`kid` refreshes allowed at once (the bucket's size).
pub const KID_BURST: usize = 3;

#[derive(Serialize, Deserialize)]
struct CacheFile {
    issuer: String,
    fetched_at: i64,
    keys: Vec<Key>,
    /// When the recent unknown-`kid` refreshes happened (the bucket).
    #[serde(default)]
    kid_refreshes: Vec<i64>,
}

/// The refreshes of `history` still in the bucket's window at `now`: with
/// `interval` seconds per token, a refresh stays for `KID_BURST × interval`
/// seconds, so at most [`KID_BURST`] fit into any window of that length.
/// Times in the future (clock set back) are kept, so they cannot be used to
/// empty the bucket.
fn in_window(history: &[i64], now: i64, interval: i64) -> Vec<i64> {
    let window = interval.saturating_mul(KID_BURST as i64);
    history
        .iter()
        .copied()
        .filter(|t| now.saturating_sub(*t) < window)
        .collect()
}

/// How the JWKS document is fetched (the real client, or a test double).
pub trait Fetch {
    /// GET the URL and return the body of a 200 answer; `Err` explains.
    fn fetch(&self, url: &str) -> Result<Vec<u8>, String>;
}

impl Fetch for crate::http::Client {
    fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self.get(url)?;
        if resp.status != 200 {
            return Err(format!("answered HTTP {}", resp.status));
        }
        Ok(resp.body)
    }
}

/// The key cache for one configuration.
pub struct KeyCache<'a> {
    cfg: &'a Config,
    /// Requests made by this value (for benchmarks and tests).
    pub fetches: u32,
}

fn unavailable(msg: String) -> Denial {
    Denial::new(Step::Key, Kind::Unavailable, msg)
}

impl<'a> KeyCache<'a> {
    pub fn new(cfg: &'a Config) -> Self {
        KeyCache { cfg, fetches: 0 }
    }

    /// Cache file of `issuer` in `dir`: named by the SHA-256 of the issuer.
    fn path(dir: &Path, issuer: &str) -> PathBuf {
        dir.join(format!(
            "jwks-{}.json",
            hex(&Sha256::digest(issuer.as_bytes()))
        ))
    }

    /// Make sure the cache directory exists and is trusted.
    /// The cache directory, created if missing, checked, and returned as
    /// its canonical (symlink-free) path, through which files are opened.
    fn dir(&self) -> Result<PathBuf, Denial> {
        let dir = self.cfg.cache_dir.as_path();
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    Denial::new(
                        Step::Key,
                        Kind::Io,
                        format!("cache directory {}: cannot create: {e}", dir.display()),
                    )
                })?;
        }
        trust::check_dir_chain(dir, self.cfg.trusted_owner)
            .map_err(|e| Denial::new(Step::Key, Kind::Config, format!("cache directory {e}")))
    }

    fn load(&self, dir: &Path, issuer: &str) -> Option<CacheFile> {
        // `dir` was checked by `dir()` just before.
        let file =
            trust::open_in_trusted_dir(&Self::path(dir, issuer), self.cfg.trusted_owner).ok()?;
        let mut buf = Vec::new();
        file.take(trust::MAX_TRUSTED_FILE)
            .read_to_end(&mut buf)
            .ok()?;
        let c: CacheFile = serde_json::from_slice(&buf).ok()?;
        (c.issuer == issuer).then_some(c)
    }

    fn store(&self, dir: &Path, c: &CacheFile) {
        // A cache that cannot be written only costs a request next time.
        let Ok(text) = serde_json::to_vec(c) else {
            return;
        };
        let target = Self::path(dir, &c.issuer);
        let tmp = dir.join(format!(".jwks-{}.tmp", std::process::id()));
        let ok = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &target));
        if ok.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn refresh(
        &mut self,
        fetch: &dyn Fetch,
        issuer: &str,
        now: i64,
        kid_refreshes: Vec<i64>,
    ) -> Result<(CacheFile, KeySet), Denial> {
        let url = crate::http::join(issuer, "/.well-known/jwks.json");
        self.fetches += 1;
        let body = fetch
            .fetch(&url)
            .map_err(|e| unavailable(format!("issuer {issuer} JWKS: {e}")))?;
        let set = parse_jwks(&body).map_err(|e| unavailable(format!("issuer {issuer}: {e}")))?;
        let c = CacheFile {
            issuer: issuer.to_string(),
            fetched_at: now,
            keys: set.keys.clone(),
            kid_refreshes,
        };
        if let Ok(dir) = self.dir() {
            self.store(&dir, &c);
        }
        Ok((c, set))
    }

    /// The key `kid` of `issuer`, from cache or network.
    pub fn key(
        &mut self,
        fetch: &dyn Fetch,
        issuer: &str,
        kid: &str,
        now: i64,
    ) -> Result<Key, Denial> {
        let dir = self.dir()?;
        let cached = self.load(&dir, issuer);
        let fresh = cached.as_ref().is_some_and(|c| {
            now >= c.fetched_at - 60 && now - c.fetched_at < self.cfg.jwks_max_age
        });
        let interval = self.cfg.jwks_min_refresh;
        let mut history = cached
            .as_ref()
            .map(|c| in_window(&c.kid_refreshes, now, interval))
            .unwrap_or_default();
        if let Some(c) = cached.as_ref().filter(|_| fresh) {
            if let Some(k) = c.keys.iter().find(|k| k.kid == kid) {
                return Ok(k.clone());
            }
            if history.len() >= KID_BURST {
                return Err(Denial::refused(
                    Step::Key,
                    format!(
                        "unknown key id {} (the issuer's keys were refreshed {} times in the last {} s; no more requests for unknown key ids now)",
                        sanitize(kid, 64),
                        history.len(),
                        interval.saturating_mul(KID_BURST as i64)
                    ),
                ));
            }
            history.push(now);
        }
        let (c, set) = self.refresh(fetch, issuer, now, history)?;
        if let Some(k) = c.keys.into_iter().find(|k| k.kid == kid) {
            return Ok(k);
        }
        let shown = sanitize(kid, 64);
        Err(match set.unusable.iter().find(|(k, _)| k == kid) {
            Some((_, why)) => Denial::refused(
                Step::Key,
                format!("key {shown} of issuer {issuer} does not fit EdDSA: {why}"),
            ),
            None => Denial::refused(
                Step::Key,
                format!("issuer {issuer} has no key with key id {shown}"),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn x32() -> String {
        URL_SAFE_NO_PAD.encode([7u8; 32])
    }

    #[test]
    fn the_kid_bucket_holds_three_per_window() {
        // interval 20 s: window 60 s.
        assert_eq!(in_window(&[100, 130, 159], 159, 20), vec![100, 130, 159]);
        assert_eq!(in_window(&[100, 130, 159], 160, 20), vec![130, 159]);
        // A clock set back cannot empty the bucket.
        assert_eq!(in_window(&[500], 160, 20), vec![500]);
        // 0 turns the limit off.
        assert!(in_window(&[160], 160, 0).is_empty());
    }

    #[test]
    fn keeps_only_ed25519_keys_of_32_bytes() {
        let doc = json!({"keys":[
            {"kty":"OKP","crv":"Ed25519","x":x32(),"kid":"good","alg":"EdDSA","use":"sig"},
            {"kty":"OKP","crv":"Ed25519","x":URL_SAFE_NO_PAD.encode([1u8;16]),"kid":"short"},
            {"kty":"OKP","crv":"Ed25519","x":URL_SAFE_NO_PAD.encode([1u8;40]),"kid":"long"},
            {"kty":"RSA","n":"AQAB","e":"AQAB","kid":"rsa"},
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"OKP","crv":"X25519","x":x32(),"kid":"x25519"},
            {"kty":"OKP","crv":"Ed25519","x":x32(),"kid":"enc","use":"enc"},
            {"kty":"OKP","crv":"Ed25519","x":x32()}
        ]});
        let set = parse_jwks(doc.to_string().as_bytes());
        assert!(set.is_ok());
        let set = set.unwrap_or_default();
        assert_eq!(
            set.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        assert_eq!(set.unusable.len(), 6);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }
}
