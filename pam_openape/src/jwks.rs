//! Step 3: the issuer's signing key, from a root-owned cache or the
//! issuer's JWKS.
//!
//! The hot path makes no request while the cache is fresh. A `kid` the
//! cache does not know causes one refresh, so a key the IdP published a
//! second ago verifies on its first use, even right after another fetch.
//! Every fetch of an issuer's JWKS spends one token of a small per-issuer
//! bucket ([`Bucket`]: [`REFRESH_BURST`] tokens, one more every
//! `jwks_min_refresh` seconds), so a flood of made-up `kid`s costs the IdP
//! at most a burst and then about one request per interval. The bucket is
//! kept in the issuer's cache file (the cache outlives each process; one
//! file, replaced atomically) and updated under a sibling lock file. From a
//! spent token until the answer is stored the caller cannot end the
//! process ([`Critical`]), so it cannot spend tokens without refreshing. The JWKS is
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
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Denial, Kind, Step, sanitize};
use crate::pam::ffi::Critical;
use crate::token::hex;
use crate::trust;

/// An Ed25519 public key from a JWKS `x`: strict base64url (no padding,
/// no non-zero trailing bits) of exactly 32 bytes that decode to a curve
/// point of large order. A small-order ("weak") key would let one
/// signature verify for every message under a lax verifier; it is refused
/// here and again by `verify_strict`. `None` for anything else.
pub fn ed25519_key(x: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes)
        .ok()
        .filter(|k| !k.is_weak())
}

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
        // A key no grant can name is not kept, not even as unusable: an
        // issuer's megabyte of key ids would only bloat the cache file.
        let Some(kid) = k.kid.filter(|kid| crate::token::kid_is_nameable(kid)) else {
            continue;
        };
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
                    if ed25519_key(x).is_none() {
                        Some("key is not a usable Ed25519 public key".to_string())
                    } else {
                        set.keys.push(Key {
                            kid,
                            x: x.to_string(),
                        });
                        continue;
                    }
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

/// Refreshes an issuer's JWKS may take in a row before the bucket is empty.
/// Three: a real rotation still finds a token after a couple of made-up
/// `kid`s, and a flood costs the IdP at most three requests at once.
pub const REFRESH_BURST: u32 = 3;

/// How long [`KeyCache`] tries to take the bucket's lock before it goes on
/// without it. The lock is held only around reading and writing the small
/// cache file, never around the network; a holder that is stopped (a caller
/// may SIGSTOP its own setuid process) must not stall everyone else.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

/// The JWKS refresh budget of one issuer: a token bucket. `tokens` are
/// left as of `at` (unix seconds); one more is added every `every` seconds
/// after `at`, up to [`REFRESH_BURST`].
///
/// Bad states cannot lock out a rotation for good: a time from the future
/// (the clock went back, or a damaged file) cannot measure an interval, so
/// it counts as one interval ago: one refresh is possible now, and the
/// state it stores is sound again. More tokens than the burst count as the
/// burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub tokens: u32,
    pub at: i64,
}

impl Bucket {
    /// A bucket nobody has drawn from.
    pub fn full(now: i64) -> Bucket {
        Bucket {
            tokens: REFRESH_BURST,
            at: now,
        }
    }

    /// The bucket as of `now`, with the tokens earned since `at`.
    fn refilled(self, now: i64, every: i64) -> Bucket {
        if every <= 0 {
            return Bucket::full(now);
        }
        let at = if self.at > now {
            now.saturating_sub(every)
        } else {
            self.at
        };
        let earned = now.saturating_sub(at) / every;
        let total = i64::from(self.tokens.min(REFRESH_BURST)).saturating_add(earned);
        match u32::try_from(total) {
            Ok(t) if t < REFRESH_BURST => Bucket {
                tokens: t,
                // `earned` < REFRESH_BURST here: no overflow.
                at: at.saturating_add(earned.saturating_mul(every)),
            },
            _ => Bucket::full(now),
        }
    }

    /// Spend one refresh at `now` with one token earned every `every`
    /// seconds (0: no limit). `Ok` is the bucket to store; `Err` the
    /// seconds until the next token.
    pub fn take(self, now: i64, every: i64) -> Result<Bucket, i64> {
        let b = self.refilled(now, every);
        match b.tokens.checked_sub(1) {
            Some(tokens) => Ok(Bucket { tokens, at: b.at }),
            None => Err(b.at.saturating_add(every).saturating_sub(now).max(1)),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct CacheFile {
    issuer: String,
    fetched_at: i64,
    keys: Vec<Key>,
    /// Absent in files written before the bucket existed: full.
    #[serde(default)]
    bucket: Option<Bucket>,
}

/// What the cache directory holds for one issuer.
enum Stored {
    /// No file: nothing fetched yet, the bucket is full.
    Missing,
    /// A file that cannot be read or parsed. Its keys are not used and its
    /// bucket counts as empty (fail closed), refilling from the file's
    /// modification time: that time does not move while the file stays
    /// damaged, so a refresh becomes possible at most one interval after
    /// the damage (at once if the time is in the future, see [`Bucket`])
    /// and then rewrites the file; never a lockout.
    Damaged {
        since: i64,
    },
    Good(CacheFile),
}

impl Stored {
    fn bucket(&self, now: i64) -> Bucket {
        match self {
            Stored::Missing => Bucket::full(now),
            Stored::Damaged { since } => Bucket {
                tokens: 0,
                at: *since,
            },
            Stored::Good(c) => c.bucket.unwrap_or(Bucket::full(now)),
        }
    }

    fn file(&self) -> Option<&CacheFile> {
        match self {
            Stored::Good(c) => Some(c),
            _ => None,
        }
    }
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

    /// SHA-256 of the issuer: the only name cache files get.
    fn stem(issuer: &str) -> String {
        hex(&Sha256::digest(issuer.as_bytes()))
    }

    /// Cache file of `issuer` in `dir`: named by the SHA-256 of the issuer.
    fn path(dir: &Path, issuer: &str) -> PathBuf {
        dir.join(format!("jwks-{}.json", Self::stem(issuer)))
    }

    /// The cache directory, created if missing, checked, and returned as
    /// its canonical (symlink-free) path, through which files are opened.
    fn dir(&self) -> Result<PathBuf, Denial> {
        let dir = self.cfg.cache_dir.as_path();
        if !dir.exists() {
            // Only below a trusted directory: in one someone else may
            // write, they could swap what is made for a symlink and have
            // root make the rest wherever it points.
            let base = dir
                .ancestors()
                .skip(1)
                .find(|d| d.exists())
                .ok_or_else(|| {
                    Denial::new(
                        Step::Key,
                        Kind::Config,
                        format!("cache directory {}: nothing of it exists", dir.display()),
                    )
                })?;
            trust::check_dir_chain(base, self.cfg.trusted_owner).map_err(|e| {
                Denial::new(Step::Key, Kind::Config, format!("cache directory {e}"))
            })?;
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

    fn load(&self, dir: &Path, issuer: &str) -> Stored {
        // `dir` was checked by `dir()` just before.
        let path = Self::path(dir, issuer);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Stored::Missing,
            // Cannot even look at it: no time to refill from (a time
            // from the future: one refresh may repair it).
            Err(_) => return Stored::Damaged { since: i64::MAX },
        };
        let since = {
            use std::os::unix::fs::MetadataExt;
            meta.mtime()
        };
        let parsed = trust::open_in_trusted_dir(&path, self.cfg.trusted_owner)
            .ok()
            .and_then(|file| {
                // Sized from the inode: one read, not a doubling series.
                let mut buf = Vec::with_capacity(trust::read_capacity(meta.len()));
                file.take(trust::MAX_TRUSTED_FILE)
                    .read_to_end(&mut buf)
                    .ok()?;
                serde_json::from_slice::<CacheFile>(&buf).ok()
            });
        match parsed {
            Some(c) if c.issuer == issuer => Stored::Good(c),
            _ => Stored::Damaged { since },
        }
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

    /// The issuer's lock (`jwks-<sha256>.lock`, 0600), taken exclusively
    /// around a read-modify-write of its cache file so that concurrent
    /// processes cannot spend the same token twice. Best effort: `None`
    /// (go on unlocked) when the file cannot be opened or the lock is not
    /// free within [`LOCK_PATIENCE`].
    fn lock(dir: &Path, issuer: &str) -> Option<nix::fcntl::Flock<std::fs::File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(dir.join(format!("jwks-{}.lock", Self::stem(issuer))))
            .ok()?;
        trust::flock_within(file, LOCK_PATIENCE, std::time::Duration::from_millis(5))
    }

    fn fetch_keys(&mut self, fetch: &dyn Fetch, issuer: &str) -> Result<KeySet, Denial> {
        let url = crate::http::join(issuer, "/.well-known/jwks.json");
        self.fetches += 1;
        let body = fetch
            .fetch(&url)
            .map_err(|e| unavailable(format!("issuer {issuer} JWKS: {e}")))?;
        parse_jwks(&body).map_err(|e| unavailable(format!("issuer {issuer}: {e}")))
    }

    fn is_fresh(&self, c: &CacheFile, now: i64) -> bool {
        now >= c.fetched_at - 60 && now - c.fetched_at < self.cfg.jwks_max_age
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
        let shown = sanitize(kid, 64);
        if let Some(k) = self.cached_key(&self.load(&dir, issuer), kid, now) {
            return Ok(k);
        }

        // A refresh is needed: spend a token first, under the lock. From
        // the spent token until the answer is stored, the caller may not
        // end this process (see [`Critical`]): a caller that killed its own
        // run after the spend and before the store emptied the bucket with
        // nothing refreshed, and with the cache stale every other grant
        // was refused until the next token, which its loop took again.
        let _held = Critical::enter();
        let guard = Self::lock(&dir, issuer);
        let stored = self.load(&dir, issuer);
        // Another process may have fetched the new key meanwhile.
        if let Some(k) = self.cached_key(&stored, kid, now) {
            return Ok(k);
        }
        let fresh = stored.file().is_some_and(|c| self.is_fresh(c, now));
        let bucket = match stored.bucket(now).take(now, self.cfg.jwks_min_refresh) {
            Ok(b) => b,
            Err(wait) if fresh => {
                return Err(Denial::refused(
                    Step::Key,
                    format!(
                        "unknown key id {shown} (the issuer's keys were refreshed just now; the next refresh is allowed in {wait} s)"
                    ),
                ));
            }
            Err(wait) => {
                return Err(unavailable(format!(
                    "issuer {issuer}: keys need a refresh, and the refresh limit allows the next one in {wait} s"
                )));
            }
        };
        let mut spent = stored.file().cloned().unwrap_or(CacheFile {
            issuer: issuer.to_string(),
            fetched_at: 0,
            keys: Vec::new(),
            bucket: None,
        });
        spent.bucket = Some(bucket);
        self.store(&dir, &spent);
        drop(guard);

        let set = self.fetch_keys(fetch, issuer)?;

        // Keep what the fetch brought, with the bucket as it is now.
        let guard = Self::lock(&dir, issuer);
        let bucket = match self.load(&dir, issuer) {
            Stored::Good(c) => c.bucket,
            _ => Some(bucket),
        };
        let c = CacheFile {
            issuer: issuer.to_string(),
            fetched_at: now,
            keys: set.keys.clone(),
            bucket,
        };
        self.store(&dir, &c);
        drop(guard);

        if let Some(k) = c.keys.into_iter().find(|k| k.kid == kid) {
            return Ok(k);
        }
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

    /// `kid` from a cache that is fresh.
    fn cached_key(&self, stored: &Stored, kid: &str, now: i64) -> Option<Key> {
        let c = stored.file().filter(|c| self.is_fresh(c, now))?;
        c.keys.iter().find(|k| k.kid == kid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A real Ed25519 public key, base64url.
    fn x32() -> String {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        URL_SAFE_NO_PAD.encode(k.verifying_key().to_bytes())
    }

    #[test]
    fn only_large_order_points_are_keys() {
        assert!(ed25519_key(&x32()).is_some());
        // The identity and another small-order point: "weak" keys.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(ed25519_key(&URL_SAFE_NO_PAD.encode(identity)).is_none());
        assert!(ed25519_key(&URL_SAFE_NO_PAD.encode([0u8; 32])).is_none());
        let doc = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":URL_SAFE_NO_PAD.encode(identity),"kid":"weak"}]});
        let set = parse_jwks(doc.to_string().as_bytes()).unwrap_or_default();
        assert!(set.keys.is_empty());
        assert_eq!(set.unusable.len(), 1);
        // Strict base64url: padding and non-zero trailing bits refused.
        let x = x32();
        assert!(ed25519_key(&format!("{x}=")).is_none());
        // 32 bytes are 43 characters; the last one carries 2 unused bits.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = x.bytes().last().unwrap_or(b'A');
        let i = ALPHABET.iter().position(|&c| c == last).unwrap_or(0);
        let mut bad = x.clone();
        bad.pop();
        bad.push(char::from(ALPHABET.get(i | 1).copied().unwrap_or(b'B')));
        assert_ne!(bad, x);
        assert!(ed25519_key(&bad).is_none());
        assert!(ed25519_key(x.get(..42).unwrap_or_default()).is_none());
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
            {"kty":"OKP","crv":"Ed25519","x":x32()},
            {"kty":"OKP","crv":"Ed25519","x":x32(),"kid":""},
            {"kty":"OKP","crv":"Ed25519","x":x32(),"kid":"k".repeat(257)},
            {"kty":"RSA","kid":"r".repeat(100_000)}
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

    #[test]
    fn bucket_gives_a_burst_then_one_per_interval() {
        let every = 20;
        let mut b = Bucket::full(1000);
        for _ in 0..REFRESH_BURST {
            b = b.take(1000, every).unwrap_or(b);
        }
        assert_eq!(b.tokens, 0);
        assert_eq!(b.take(1000, every), Err(20));
        assert_eq!(b.take(1019, every), Err(1));
        let after = b.take(1020, every);
        assert_eq!(
            after,
            Ok(Bucket {
                tokens: 0,
                at: 1020
            })
        );
        // Long idle: back to a full burst, never more.
        assert_eq!(
            b.take(1_000_000, every),
            Ok(Bucket {
                tokens: REFRESH_BURST - 1,
                at: 1_000_000
            })
        );
        // No limit configured.
        assert!(
            Bucket {
                tokens: 0,
                at: 1000
            }
            .take(1000, 0)
            .is_ok()
        );
    }

    #[test]
    fn bucket_states_that_cannot_lock_out() {
        // `at` in the future (clock went back, damaged file): counts as
        // one interval ago, so one refresh is possible now and the stored
        // result is sound; waiting for that time could be forever.
        let future = Bucket {
            tokens: 0,
            at: i64::MAX,
        };
        let repaired = future.take(1000, 20);
        assert_eq!(
            repaired,
            Ok(Bucket {
                tokens: 0,
                at: 1000
            })
        );
        assert_eq!(repaired.map(|b| b.take(1001, 20)), Ok(Err(19)));
        // More tokens than the burst count as the burst.
        let many = Bucket {
            tokens: u32::MAX,
            at: 0,
        };
        assert_eq!(many.take(5, 20).map(|b| b.tokens), Ok(REFRESH_BURST - 1));
        // An `at` from the far past does not overflow.
        let old = Bucket {
            tokens: 0,
            at: i64::MIN,
        };
        assert!(old.take(5, 20).is_ok());
    }

    /// A JWKS endpoint double that counts its requests.
    struct Counting {
        doc: std::cell::RefCell<String>,
        n: std::cell::Cell<u32>,
    }

    impl Fetch for Counting {
        fn fetch(&self, _url: &str) -> Result<Vec<u8>, String> {
            self.n.set(self.n.get() + 1);
            Ok(self.doc.borrow().clone().into_bytes())
        }
    }

    fn doc(kids: &[&str]) -> String {
        let keys: Vec<_> = kids
            .iter()
            .map(|k| json!({"kty":"OKP","crv":"Ed25519","x":x32(),"kid":k}))
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn cache_config(dir: &Path) -> Option<Config> {
        let text = "[security]\nallowed_issuers = [\"https://id.example\"]\nallowed_approvers = [\"a@x\"]\n";
        let mut cfg = Config::parse(Path::new("/etc/openape/config.toml"), text, 0).ok()?;
        cfg.cache_dir = dir.to_path_buf();
        cfg.trusted_owner = crate::testutil::me();
        cfg.jwks_min_refresh = 20;
        Some(cfg)
    }

    const ISS: &str = "https://id.example";

    #[test]
    fn a_rotated_key_verifies_right_after_a_fetch_and_floods_are_bounded() {
        let Some(tmp) = crate::testutil::TempDir::trusted("jwks-bucket") else {
            return;
        };
        let cfg = cache_config(tmp.path());
        assert!(cfg.is_some());
        let Some(cfg) = cfg else { return };
        let idp = Counting {
            doc: std::cell::RefCell::new(doc(&["k1"])),
            n: std::cell::Cell::new(0),
        };
        // Each process has its own KeyCache; the state is in the files.
        let key = |kid: &str, now: i64| KeyCache::new(&cfg).key(&idp, ISS, kid, now);
        assert!(key("k1", 1000).is_ok());
        assert!(key("k1", 1001).is_ok());
        assert_eq!(idp.n.get(), 1);
        // Rotation a second after the fetch: the new kid verifies at once.
        *idp.doc.borrow_mut() = doc(&["k2"]);
        assert!(key("k2", 1001).is_ok());
        assert_eq!(idp.n.get(), 2);
        // A flood of made-up kids: one more request (the burst's last
        // token), then refusals without traffic.
        for i in 0..100 {
            let r = key(&format!("made-up-{i}"), 1002);
            assert_eq!(r.err().map(|d| d.step), Some(Step::Key));
        }
        assert_eq!(idp.n.get(), 3);
        // Known keys keep working from the cache meanwhile.
        assert!(key("k2", 1003).is_ok());
        // One interval later, one more refresh.
        assert!(key("made-up-x", 1021).is_err());
        assert!(key("made-up-y", 1021).is_err());
        assert_eq!(idp.n.get(), 4);
    }

    #[test]
    fn a_failing_jwks_endpoint_also_spends_tokens() {
        struct Down(std::cell::Cell<u32>);
        impl Fetch for Down {
            fn fetch(&self, _url: &str) -> Result<Vec<u8>, String> {
                self.0.set(self.0.get() + 1);
                Err("HTTP 503".into())
            }
        }
        let Some(tmp) = crate::testutil::TempDir::trusted("jwks-down") else {
            return;
        };
        let cfg = cache_config(tmp.path());
        assert!(cfg.is_some());
        let Some(cfg) = cfg else { return };
        let idp = Down(std::cell::Cell::new(0));
        for i in 0..50 {
            let r = KeyCache::new(&cfg).key(&idp, ISS, &format!("k{i}"), 1000);
            assert_eq!(r.err().map(|d| d.kind), Some(Kind::Unavailable));
        }
        assert_eq!(idp.0.get(), REFRESH_BURST);
    }

    #[test]
    fn a_damaged_cache_file_delays_by_at_most_one_interval() {
        let Some(tmp) = crate::testutil::TempDir::trusted("jwks-damaged") else {
            return;
        };
        let cfg = cache_config(tmp.path());
        assert!(cfg.is_some());
        let Some(cfg) = cfg else { return };
        let path = KeyCache::path(tmp.path(), ISS);
        assert!(std::fs::write(&path, b"{not json").is_ok());
        let mtime = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).map(|m| m.mtime()).unwrap_or(0)
        };
        let idp = Counting {
            doc: std::cell::RefCell::new(doc(&["k1"])),
            n: std::cell::Cell::new(0),
        };
        // Right after the damage: no token (fail closed), no request.
        let r = KeyCache::new(&cfg).key(&idp, ISS, "k1", mtime);
        assert_eq!(r.err().map(|d| d.kind), Some(Kind::Unavailable));
        assert_eq!(idp.n.get(), 0);
        // One interval later the file is refreshed and rewritten.
        assert!(KeyCache::new(&cfg).key(&idp, ISS, "k1", mtime + 20).is_ok());
        assert_eq!(idp.n.get(), 1);
        assert!(KeyCache::new(&cfg).key(&idp, ISS, "k1", mtime + 21).is_ok());
        assert_eq!(idp.n.get(), 1);
        // Written 0600, named by the hash only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
    }
}
