//! In-process test double of the OpenApe IdP.
//!
//! It speaks the real protocol (see DESIGN.md, "The protocol" and
//! "Request-and-wait"): discovery, JWKS, the grants API, consume, the agent
//! challenge login (`/api/agent/*`: enrolled Ed25519 keys, single-use 60 s
//! challenges, `apes-cli` bearer tokens), grants owned by the agent that
//! requested them (only it reads them, fetches their token or cancels
//! them), `ETag`/304 on polls. Tokens are
//! real Ed25519 (EdDSA) JWTs. On top of that it has switches the real IdP does
//! not have: faults (down, hang, error status, garbage, slow, huge body,
//! redirect, empty object, byte-by-byte dribble, a fixed body), key
//! rotation, a JWKS override, signing of arbitrary encodings, a
//! configurable refusal status, a request log, 429 with `Retry-After`,
//! auto-approval, reuse of approved timed/always grants, a token swap (a
//! token for another command, host, user or approver), and test-only
//! `/_test/...` routes for the demo binary (mint, fault, rotate, agent,
//! switch, pending).
//!
//! The server binds `127.0.0.1` only. Every loop is bounded in count and time:
//! a fixed number of connections per server, a 5 s socket read timeout, a 10 s
//! deadline to read one request, 16 KiB heads and 64 KiB bodies, and any
//! deliberate stall (hang, slow, big body) ends after at most 120 s or as soon
//! as the [`TestIdp`] is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

/// Connections one server accepts before it stops listening.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Connections handled at the same time; more are closed unanswered.
const MAX_CONCURRENT: usize = 512;
/// Largest request head (request line + headers).
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// Socket read timeout for every read of a request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request deadline (defeats a client dribbling one byte at a time).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Socket write timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest any deliberate stall (hang, slow, big body) may hold a socket.
const MAX_HOLD: Duration = Duration::from_secs(120);
/// Bound on stored grants and pending login challenges (memory bound).
const MAX_GRANTS: usize = 100_000;
const MAX_CHALLENGES: usize = 10_000;

/// Lifetimes of issued tokens, as the real IdP.
const ONCE_LIFETIME: u64 = 5 * 60;
const ALWAYS_LIFETIME: u64 = 60 * 60;
const DEFAULT_TIMED_DURATION: u64 = 60 * 60;
const LOGIN_LIFETIME: u64 = 8 * 60 * 60;
/// Agent-login challenges are single use and live this long.
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(60);

/// Default approver for grants approved without a `decided_by`.
const DEFAULT_APPROVER: &str = "alice@example.com";
const DEFAULT_REQUESTER: &str = "agent@example.com";

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The three grant types of OpenApe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantType {
    /// Single use: the first consume succeeds, later ones are refused.
    Once,
    /// Valid until the grant's `expires_at` (approval time + duration).
    Timed,
    /// Valid until revoked; tokens live one hour.
    Always,
}

impl GrantType {
    /// The wire name: `"once"`, `"timed"` or `"always"`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::Once => "once",
            GrantType::Timed => "timed",
            GrantType::Always => "always",
        }
    }

    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<GrantType> {
        match s {
            "once" => Some(GrantType::Once),
            "timed" => Some(GrantType::Timed),
            "always" => Some(GrantType::Always),
            _ => None,
        }
    }
}

/// What a grant asks for; [`TestIdp::issue`] turns it into an approved grant
/// and its token.
#[derive(Clone, Debug)]
pub struct GrantSpec {
    /// The token's `sub`.
    pub requester: String,
    pub target_host: String,
    /// The token's `aud` (default `"escapes"`).
    pub audience: String,
    pub grant_type: GrantType,
    /// The argv the grant is bound to; `None` gives a grant with no command.
    pub command: Option<Vec<String>>,
    pub run_as: Option<String>,
    pub decided_by: String,
    /// Timed grants only: seconds from approval to expiry (default 3600).
    pub duration_secs: Option<u64>,
    pub reason: Option<String>,
    /// Emit `cmd_hash` (when `command` is `Some`).
    pub with_cmd_hash: bool,
    /// Emit `execution_context {argv, argv_hash}` (when `command` is `Some`).
    pub with_argv_hash: bool,
    /// Emit `command` (when `command` is `Some`).
    pub with_command: bool,
}

impl GrantSpec {
    /// A once grant for `command` on `host`: requester `agent@example.com`,
    /// approver `alice@example.com`, audience `escapes`, run_as `root`, and all
    /// three command bindings (`command`, `cmd_hash`, `execution_context`).
    pub fn new(host: &str, command: &[&str]) -> Self {
        GrantSpec {
            requester: DEFAULT_REQUESTER.to_string(),
            target_host: host.to_string(),
            audience: "escapes".to_string(),
            grant_type: GrantType::Once,
            command: Some(command.iter().map(|s| (*s).to_string()).collect()),
            run_as: Some("root".to_string()),
            decided_by: DEFAULT_APPROVER.to_string(),
            duration_secs: None,
            reason: None,
            with_cmd_hash: true,
            with_argv_hash: true,
            with_command: true,
        }
    }

    /// A once grant on `host` bound to no command at all (what a service
    /// without a command line, `login` or `sshd`, can accept).
    pub fn unbound(host: &str) -> Self {
        GrantSpec {
            command: None,
            with_command: false,
            with_cmd_hash: false,
            with_argv_hash: false,
            ..GrantSpec::new(host, &[])
        }
    }
}

/// An approved grant and its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub grant_id: String,
    pub jwt: String,
}

/// How the server misbehaves. Faults never apply to the `/_test/` routes, so
/// the demo binary can always be switched back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Read the request, then close the connection without any response.
    Down,
    /// Read the request and never answer; the socket is held until the client
    /// goes away, the server is dropped, or 120 s pass.
    Hang,
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// 200 with the body `<html>not json` (labelled `application/json`).
    Garbage,
    /// Sleep (at most 120 s), then answer normally.
    Slow(Duration),
    /// 200 `application/json` with this many bytes of JSON-ish data, streamed.
    BigBody(usize),
    /// 302 with this `Location`.
    Redirect(String),
    /// 200 `{}`.
    EmptyObject,
    /// Answer normally, but write the response one byte at a time with
    /// this pause between bytes (a slowloris server: every read succeeds,
    /// only a whole-request deadline stops the client). Ends after at most
    /// 120 s or when the server is dropped.
    Dribble(Duration),
    /// Answer with this status and this body verbatim (`application/json`).
    Body(u16, String),
    /// 429 Too Many Requests with `Retry-After: <secs>` (the real IdP's
    /// rate limit).
    RateLimited(u64),
}

/// What the test IdP changes in a grant token it mints from
/// `POST /api/grants/{id}/token` (a compromised or buggy IdP): each `Some`
/// field replaces the grant's own value in the token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSwap {
    pub command: Option<Vec<String>>,
    pub target_host: Option<String>,
    pub run_as: Option<String>,
    pub decided_by: Option<String>,
}

/// How `GET /_test/release/bin` (the release server of the `escapes
/// update` tests) answers. The manifest at `/_test/release/manifest` is
/// always served as set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseMode {
    /// 200 with the whole binary.
    Whole,
    /// Announce the whole length, send this many bytes, then close: a
    /// download cut mid-way.
    CutAfter(usize),
    /// 200 with this many filler bytes, streamed (nothing held in memory);
    /// `announce` sends a Content-Length, otherwise the body ends at close.
    Filler { bytes: usize, announce: bool },
}

/// Server options beyond the port, for [`TestIdp::start_with`].
#[derive(Clone, Debug)]
pub struct IdpOptions {
    /// 0 picks a free port.
    pub port: u16,
    /// Connections accepted before the server stops listening.
    pub max_connections: usize,
    /// Status for consume refusals: 403 (default) or 200.
    pub refusal_status: u16,
}

impl Default for IdpOptions {
    fn default() -> Self {
        IdpOptions {
            port: 0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            refusal_status: 403,
        }
    }
}

/// A running test IdP on `127.0.0.1`. Dropping it stops the server and joins
/// its threads.
pub struct TestIdp {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

// ---------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------

struct KeyPair {
    kid: String,
    key: SigningKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Approved,
    Denied,
    Revoked,
    Used,
}

struct Grant {
    id: String,
    requester: String,
    target_host: String,
    audience: String,
    grant_type: GrantType,
    command: Option<Vec<String>>,
    run_as: Option<String>,
    reason: Option<String>,
    duration_secs: Option<u64>,
    with_cmd_hash: bool,
    with_argv_hash: bool,
    with_command: bool,
    status: Status,
    decided_by: Option<String>,
    created_at: u64,
    decided_at: Option<u64>,
    /// Timed grants: set on approval to approval time + duration.
    expires_at: Option<u64>,
    used_at: Option<u64>,
    /// The agent that created it with a bearer token; only that agent
    /// may read it, fetch its token or cancel it. `None`: made without a
    /// bearer (the older suites and the `/_test` routes), open to all.
    owner: Option<String>,
}

impl Grant {
    fn from_spec(id: String, s: &GrantSpec, now: u64) -> Grant {
        Grant {
            id,
            requester: s.requester.clone(),
            target_host: s.target_host.clone(),
            audience: s.audience.clone(),
            grant_type: s.grant_type,
            command: s.command.clone(),
            run_as: s.run_as.clone(),
            reason: s.reason.clone(),
            duration_secs: s.duration_secs,
            with_cmd_hash: s.with_cmd_hash,
            with_argv_hash: s.with_argv_hash,
            with_command: s.with_command,
            status: Status::Pending,
            decided_by: None,
            created_at: now,
            decided_at: None,
            expires_at: None,
            used_at: None,
            owner: None,
        }
    }

    fn approve(&mut self, decided_by: &str, now: u64) {
        self.status = Status::Approved;
        self.decided_by = Some(decided_by.to_string());
        self.decided_at = Some(now);
        if self.grant_type == GrantType::Timed {
            let dur = self.duration_secs.unwrap_or(DEFAULT_TIMED_DURATION);
            self.expires_at = Some(now.saturating_add(dur));
        }
    }

    fn timed_out(&self, now: u64) -> bool {
        self.grant_type == GrantType::Timed && self.expires_at.is_some_and(|e| now >= e)
    }

    fn status_str(&self, now: u64) -> &'static str {
        match self.status {
            Status::Pending => "pending",
            Status::Approved if self.timed_out(now) => "expired",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Revoked => "revoked",
            Status::Used => "used",
        }
    }

    fn to_json(&self, now: u64) -> Value {
        json!({
            "id": self.id,
            "status": self.status_str(now),
            "requester": self.requester,
            // The real IdP nests the request (`OpenApeGrant.request`).
            "request": {"requester": self.requester},
            "target_host": self.target_host,
            "audience": self.audience,
            "grant_type": self.grant_type.as_str(),
            "command": self.command,
            "run_as": self.run_as,
            "reason": self.reason,
            "duration": self.duration_secs,
            "decided_by": self.decided_by,
            "created_at": self.created_at,
            "decided_at": self.decided_at,
            "expires_at": self.expires_at,
            "used_at": self.used_at,
        })
    }
}

struct State {
    /// Every key ever issued; the last one is current and the only one in the
    /// JWKS. Older ones still verify bearer tokens at consume.
    keys: Vec<KeyPair>,
    grants: HashMap<String, Grant>,
    global_fault: Fault,
    /// Per-path-prefix faults; the longest matching prefix wins over the
    /// global fault (so `set_fault_for(p, Fault::None)` exempts `p`).
    prefix_faults: Vec<(String, Fault)>,
    refusal_status: u16,
    requests: Vec<(String, String)>,
    consumes: HashMap<String, usize>,
    last_authorization: Option<String>,
    /// Agent login: id -> outstanding challenge.
    challenges: HashMap<String, String>,
    /// When set, served verbatim as the JWKS document instead of the keys.
    jwks_override: Option<String>,
    /// The release server: manifest bytes, binary bytes, how to serve it.
    release_manifest: Option<Vec<u8>>,
    release_bin: Arc<Vec<u8>>,
    release_mode: ReleaseMode,
    /// Enrolled agents: email -> Ed25519 public key.
    agents: HashMap<String, [u8; 32]>,
    /// Agent-login challenges: challenge -> (agent email, issued at).
    agent_challenges: HashMap<String, (String, Instant)>,
    /// Approve every new grant at once, as this approver.
    auto_approve: Option<String>,
    /// Answer a request for a timed/always grant with a matching approved
    /// one (200) instead of a new grant.
    reuse_grants: bool,
    /// Change the next tokens minted by `/token`.
    token_swap: Option<TokenSwap>,
    /// Grant ids in the order they were created.
    order: Vec<String>,
}

impl State {
    fn current_key(&self) -> &KeyPair {
        // `keys` is never empty: `start_with` pushes the first key.
        self.keys.last().expect("at least one key")
    }

    fn rotate(&mut self) -> String {
        let kp = new_key();
        let kid = kp.kid.clone();
        self.keys.push(kp);
        kid
    }

    fn fault_for(&self, path: &str) -> Fault {
        self.prefix_faults
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map_or_else(|| self.global_fault.clone(), |(_, f)| f.clone())
    }

    fn insert_grant(&mut self, g: Grant) -> bool {
        if self.grants.len() >= MAX_GRANTS {
            return false;
        }
        self.order.push(g.id.clone());
        self.grants.insert(g.id.clone(), g);
        true
    }

    /// The `sub` of a valid, unexpired agent login token (`aud`
    /// `apes-cli`) in an `Authorization: Bearer` header.
    fn agent_of(&self, req: &Request) -> Option<String> {
        let bearer = req.header("authorization").and_then(|v| {
            let (scheme, tok) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
        })?;
        let c = self.verify_own_token(bearer)?;
        let fresh = c
            .get("exp")
            .and_then(Value::as_u64)
            .is_some_and(|e| e > now_secs());
        if c.get("aud").and_then(Value::as_str) != Some("apes-cli") || !fresh {
            return None;
        }
        c.get("sub").and_then(Value::as_str).map(str::to_string)
    }

    /// The token for an approved grant, signed with the current key.
    fn grant_token(&self, issuer: &str, g: &Grant, now: u64) -> String {
        let claims = grant_claims(issuer, g, now);
        sign_with(self.current_key(), Value::Null, &claims)
    }

    /// Verify a bearer token against every key this IdP has issued; return
    /// its claims when the signature is good. Expiry is not checked here.
    fn verify_own_token(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("EdDSA") {
            return None;
        }
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let signing_input = format!("{h}.{p}");
        let kid = header.get("kid").and_then(Value::as_str);
        let ok = self
            .keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| kid == k.kid))
            .any(|k| {
                k.key
                    .verifying_key()
                    .verify_strict(signing_input.as_bytes(), &sig)
                    .is_ok()
            });
        if !ok {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    finished: AtomicBool,
    issuer: String,
}

impl Shared {
    /// Lock the state; a panic elsewhere must not wedge the server.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// Crypto and encoding helpers
// ---------------------------------------------------------------------------

/// Random bytes from the kernel.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// A random version-4 UUID string.
fn uuid() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn new_key() -> KeyPair {
    let seed: [u8; 32] = random_bytes();
    let kid: [u8; 8] = random_bytes();
    KeyPair {
        kid: format!("test-{}", hex(&kid)),
        key: SigningKey::from_bytes(&seed),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `cmd_hash`: lowercase hex SHA-256 of the space-joined argv, no prefix.
pub fn cmd_hash(argv: &[String]) -> String {
    sha256_hex(argv.join(" ").as_bytes())
}

/// `execution_context.argv_hash`: `"SHA-256:"` + hex SHA-256 of the argv as a
/// JSON array (serde_json's compact form).
pub fn argv_hash(argv: &[String]) -> String {
    let json = serde_json::to_string(argv).expect("argv serialises");
    format!("SHA-256:{}", sha256_hex(json.as_bytes()))
}

/// `base64url(header).base64url(payload).base64url(Ed25519 signature)`.
fn sign_raw_with(key: &KeyPair, header_json: &[u8], payload_json: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload_json)
    );
    let sig = key.key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// Sign with the default header `{"alg":"EdDSA","typ":"JWT","kid":..}`
/// overlaid by the keys of `header` (a `null` value removes the key). A
/// non-object, non-null `header` is used verbatim.
fn sign_with(key: &KeyPair, header: Value, claims: &Value) -> String {
    let mut h = Map::new();
    h.insert("alg".into(), json!("EdDSA"));
    h.insert("typ".into(), json!("JWT"));
    h.insert("kid".into(), json!(key.kid));
    let header = match header {
        Value::Null => Value::Object(h),
        Value::Object(o) => {
            for (k, v) in o {
                if v.is_null() {
                    h.remove(&k);
                } else {
                    h.insert(k, v);
                }
            }
            Value::Object(h)
        }
        other => other,
    };
    let hj = serde_json::to_vec(&header).expect("header serialises");
    let cj = serde_json::to_vec(claims).expect("claims serialise");
    sign_raw_with(key, &hj, &cj)
}

/// The claim set the real IdP puts in a grant token.
fn grant_claims(issuer: &str, g: &Grant, iat: u64) -> Value {
    let exp = match g.grant_type {
        GrantType::Once => iat + ONCE_LIFETIME,
        GrantType::Timed => g.expires_at.unwrap_or_else(|| {
            iat.saturating_add(g.duration_secs.unwrap_or(DEFAULT_TIMED_DURATION))
        }),
        GrantType::Always => iat + ALWAYS_LIFETIME,
    };
    let mut c = Map::new();
    c.insert("iss".into(), json!(issuer));
    c.insert("sub".into(), json!(g.requester));
    c.insert("aud".into(), json!(g.audience));
    c.insert("target_host".into(), json!(g.target_host));
    c.insert("iat".into(), json!(iat));
    c.insert("exp".into(), json!(exp));
    c.insert("jti".into(), json!(g.id));
    c.insert("grant_id".into(), json!(g.id));
    c.insert("grant_type".into(), json!(g.grant_type.as_str()));
    c.insert("approval".into(), json!(g.grant_type.as_str()));
    if let Some(argv) = &g.command {
        if g.with_command {
            c.insert("command".into(), json!(argv));
        }
        if g.with_cmd_hash {
            c.insert("cmd_hash".into(), json!(cmd_hash(argv)));
        }
        if g.with_argv_hash {
            c.insert(
                "execution_context".into(),
                json!({"argv": argv, "argv_hash": argv_hash(argv)}),
            );
        }
    }
    if let Some(d) = &g.decided_by {
        c.insert("decided_by".into(), json!(d));
    }
    if let Some(r) = &g.run_as {
        c.insert("run_as".into(), json!(r));
    }
    Value::Object(c)
}

// ---------------------------------------------------------------------------
// TestIdp
// ---------------------------------------------------------------------------

impl TestIdp {
    /// Start on a free port of `127.0.0.1`. Panics if that fails.
    pub fn start() -> TestIdp {
        TestIdp::start_with(IdpOptions::default()).expect("start test IdP on 127.0.0.1")
    }

    /// Start on `127.0.0.1:port` (0 picks a free port).
    pub fn start_on(port: u16) -> io::Result<TestIdp> {
        TestIdp::start_with(IdpOptions {
            port,
            ..IdpOptions::default()
        })
    }

    /// Start with explicit options. Binds `127.0.0.1` and nothing else.
    pub fn start_with(opts: IdpOptions) -> io::Result<TestIdp> {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, opts.port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                keys: vec![new_key()],
                grants: HashMap::new(),
                global_fault: Fault::None,
                prefix_faults: Vec::new(),
                refusal_status: opts.refusal_status,
                requests: Vec::new(),
                consumes: HashMap::new(),
                last_authorization: None,
                challenges: HashMap::new(),
                jwks_override: None,
                release_manifest: None,
                release_bin: Arc::new(Vec::new()),
                release_mode: ReleaseMode::Whole,
                agents: HashMap::new(),
                agent_challenges: HashMap::new(),
                auto_approve: None,
                reuse_grants: false,
                token_swap: None,
                order: Vec::new(),
            }),
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            issuer: format!("http://127.0.0.1:{}", addr.port()),
        });
        let sh = Arc::clone(&shared);
        let max = opts.max_connections;
        let accept = thread::Builder::new()
            .name("test-idp-accept".into())
            .spawn(move || accept_loop(listener, sh, max))?;
        Ok(TestIdp {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The listening address (always `127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True once the server stopped accepting (connection budget used up)
    /// and every connection it accepted has been answered.
    pub fn finished(&self) -> bool {
        self.shared.finished.load(Ordering::SeqCst)
    }

    /// The current key id.
    pub fn kid(&self) -> String {
        self.shared.lock().current_key().kid.clone()
    }

    /// Switch to a new Ed25519 key with a new kid. The JWKS then serves only
    /// the new key; tokens signed with old keys still consume (the IdP knows
    /// them) but no longer verify against the published JWKS.
    pub fn rotate_key(&self) {
        self.shared.lock().rotate();
    }

    /// The JWKS document, as `GET /.well-known/jwks.json` serves it.
    pub fn jwks_json(&self) -> String {
        jwks(&self.shared.lock()).to_string()
    }

    /// Sign arbitrary claims with the current key. The header is
    /// `{"alg":"EdDSA","typ":"JWT","kid":<current>}` overlaid by `header`'s
    /// keys; a `null` value removes that key (e.g. `{"kid": null}` signs a
    /// token without a kid). Pass `Value::Null` for the plain default header.
    pub fn sign(&self, header: Value, claims: Value) -> String {
        sign_with(self.shared.lock().current_key(), header, &claims)
    }

    /// Sign raw header and payload bytes (base64url-encoded as given) with
    /// the current key, for tokens `sign` cannot express (duplicate keys,
    /// invalid JSON, a literal `null` kid, ...).
    pub fn sign_raw(&self, header_json: &[u8], payload_json: &[u8]) -> String {
        sign_raw_with(self.shared.lock().current_key(), header_json, payload_json)
    }

    /// Sign an arbitrary signing input (`header.payload`, encoded however
    /// the caller likes: padded, `+/` alphabet, ...) with the current key;
    /// returns the base64url (no padding) Ed25519 signature.
    pub fn sign_input(&self, signing_input: &[u8]) -> String {
        let st = self.shared.lock();
        URL_SAFE_NO_PAD.encode(st.current_key().key.sign(signing_input).to_bytes())
    }

    /// Serve `doc` verbatim as `/.well-known/jwks.json` (`None`: the real
    /// keys again). For JWKS with no keys, keys of the wrong type or size.
    pub fn set_jwks_override(&self, doc: Option<String>) {
        self.shared.lock().jwks_override = doc;
    }

    /// The claims a grant token for `g` would carry if issued at `iat`, with
    /// `grant_id`/`jti` set to `grant_id`. Hostile tests mutate this and
    /// re-sign it with [`TestIdp::sign`].
    pub fn claims_for(&self, g: &GrantSpec, grant_id: &str, iat: u64) -> Value {
        let mut grant = Grant::from_spec(grant_id.to_string(), g, iat);
        grant.approve(&g.decided_by, iat);
        grant_claims(&self.shared.issuer, &grant, iat)
    }

    /// Create and approve a grant and return its token, as
    /// `POST /api/grants` + `approve` + `token` would.
    pub fn issue(&self, g: &GrantSpec) -> Issued {
        let now = now_secs();
        let mut grant = Grant::from_spec(uuid(), g, now);
        grant.approve(&g.decided_by, now);
        let mut st = self.shared.lock();
        let jwt = st.grant_token(&self.shared.issuer, &grant, now);
        let grant_id = grant.id.clone();
        assert!(st.insert_grant(grant), "test IdP grant store full");
        Issued { grant_id, jwt }
    }

    /// Enrol `email` the way `escapes enroll` leaves a caller: a fresh
    /// Ed25519 key as `<home>/.ssh/id_ed25519` (PKCS#8, 0600) and its `.pub`
    /// (0644, email in the comment), owned by `user`, and the public key
    /// registered here. Returns the key (reuse it for a second home).
    pub fn enrol_agent_key(
        &self,
        home: &std::path::Path,
        user: &crate::harness::TestUser,
        email: &str,
        key: Option<&SigningKey>,
    ) -> SigningKey {
        let key = key.cloned().unwrap_or_else(|| {
            let mut seed = [0u8; 32];
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .expect("read /dev/urandom");
            SigningKey::from_bytes(&seed)
        });
        let ssh = home.join(".ssh");
        if !ssh.exists() {
            std::fs::create_dir(&ssh).expect("mkdir .ssh");
            crate::harness::set_owner_mode(&ssh, user.uid, user.gid, 0o700);
        }
        for (name, text, mode) in [
            (
                "id_ed25519",
                pam_openape::request::keys::pkcs8_pem(&key),
                0o600,
            ),
            (
                "id_ed25519.pub",
                format!(
                    "{}\n",
                    pam_openape::request::keys::ssh_public_line(&key, Some(email))
                ),
                0o644,
            ),
        ] {
            let p = ssh.join(name);
            std::fs::write(&p, text).expect("write key");
            crate::harness::set_owner_mode(&p, user.uid, user.gid, mode);
        }
        self.register_agent(email, key.verifying_key().to_bytes());
        key
    }

    /// Enroll an agent: its email and Ed25519 public key.
    pub fn register_agent(&self, email: &str, public_key: [u8; 32]) {
        self.shared
            .lock()
            .agents
            .insert(email.to_string(), public_key);
    }

    /// An agent login token (`aud` `apes-cli`, 8 h) for `email`, as
    /// `/api/agent/authenticate` would answer: what an apes session file
    /// holds.
    pub fn login_token(&self, email: &str) -> String {
        let now = now_secs();
        let claims = json!({
            "iss": self.shared.issuer,
            "sub": email,
            "aud": "apes-cli",
            "iat": now,
            "exp": now + LOGIN_LIFETIME,
            "jti": uuid(),
        });
        sign_with(self.shared.lock().current_key(), Value::Null, &claims)
    }

    /// Approve every new grant at once, as `approver` (`None`: off).
    pub fn set_auto_approve(&self, approver: Option<&str>) {
        self.shared.lock().auto_approve = approver.map(str::to_string);
    }

    /// Answer requests for timed/always grants with a matching approved
    /// grant (200) instead of a new one.
    pub fn set_reuse_grants(&self, on: bool) {
        self.shared.lock().reuse_grants = on;
    }

    /// Change what the next tokens from `/token` say (`None`: nothing).
    pub fn set_token_swap(&self, swap: Option<TokenSwap>) {
        self.shared.lock().token_swap = swap;
    }

    /// Approve a pending grant as `approver`; false if it is not pending.
    pub fn approve(&self, grant_id: &str, approver: &str) -> bool {
        let mut st = self.shared.lock();
        match st.grants.get_mut(grant_id) {
            Some(g) if g.status == Status::Pending => {
                g.approve(approver, now_secs());
                true
            }
            _ => false,
        }
    }

    /// Approve a pending grant, with its token answer slowed by `delay`
    /// first: whoever fetches the token waits that long for it (to land a
    /// signal during the fetch).
    pub fn approve_with_slow_token(&self, grant_id: &str, approver: &str, delay: Duration) -> bool {
        self.set_fault_for(&format!("/api/grants/{grant_id}/token"), Fault::Slow(delay));
        self.approve(grant_id, approver)
    }

    /// Deny a pending grant as `approver`; false if it is not pending.
    pub fn deny(&self, grant_id: &str, approver: &str) -> bool {
        let mut st = self.shared.lock();
        match st.grants.get_mut(grant_id) {
            Some(g) if g.status == Status::Pending => {
                g.status = Status::Denied;
                g.decided_by = Some(approver.to_string());
                g.decided_at = Some(now_secs());
                true
            }
            _ => false,
        }
    }

    /// `(status, decided_by)` of a grant.
    pub fn grant_state(&self, grant_id: &str) -> Option<(String, Option<String>)> {
        let st = self.shared.lock();
        st.grants
            .get(grant_id)
            .map(|g| (g.status_str(now_secs()).to_string(), g.decided_by.clone()))
    }

    /// Ids of every grant, oldest first.
    pub fn grant_ids(&self) -> Vec<String> {
        self.shared.lock().order.clone()
    }

    /// Wait (at most `timeout`) for a grant to be pending; its id.
    pub fn wait_for_pending(&self, timeout: Duration) -> Option<String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            {
                let st = self.shared.lock();
                if let Some(id) = st.order.iter().find(|id| {
                    st.grants
                        .get(*id)
                        .is_some_and(|g| g.status == Status::Pending)
                }) {
                    return Some(id.clone());
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Revoke a grant (unknown ids are ignored).
    pub fn revoke(&self, grant_id: &str) {
        if let Some(g) = self.shared.lock().grants.get_mut(grant_id) {
            g.status = Status::Revoked;
        }
    }

    /// Apply `f` to every path (per-prefix faults still win where they match).
    pub fn set_fault(&self, f: Fault) {
        self.shared.lock().global_fault = f;
    }

    /// Apply `f` to requests whose path starts with `path_prefix`. Replaces an
    /// earlier fault for the same prefix; the longest matching prefix wins.
    pub fn set_fault_for(&self, path_prefix: &str, f: Fault) {
        let mut st = self.shared.lock();
        st.prefix_faults.retain(|(p, _)| p != path_prefix);
        st.prefix_faults.push((path_prefix.to_string(), f));
    }

    /// Remove the global and every per-prefix fault.
    pub fn clear_faults(&self) {
        let mut st = self.shared.lock();
        st.global_fault = Fault::None;
        st.prefix_faults.clear();
    }

    /// HTTP status for consume refusals: 403 (default) or 200, as the real
    /// IdP has used both. Other values are accepted as given.
    pub fn set_refusal_status(&self, s: u16) {
        self.shared.lock().refusal_status = s;
    }

    /// `(method, request-target)` of every request received, in order
    /// (including ones answered with a fault).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().requests.clone()
    }

    /// Number of requests whose target starts with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|(_, p)| p.starts_with(path_prefix))
            .count()
    }

    /// Successful consumes (`consumed` or `valid`) of `grant_id`.
    pub fn consume_count(&self, grant_id: &str) -> usize {
        self.shared
            .lock()
            .consumes
            .get(grant_id)
            .copied()
            .unwrap_or(0)
    }

    /// The full `Authorization` header value (e.g. `"Bearer eyJ..."`) of the
    /// most recent request that carried one.
    pub fn last_authorization(&self) -> Option<String> {
        self.shared.lock().last_authorization.clone()
    }

    /// Publish a release: `manifest` (raw bytes, served as JSON at
    /// [`TestIdp::release_manifest_url`]) and `binary` (served at
    /// [`TestIdp::release_bin_url`] according to the [`ReleaseMode`]).
    pub fn set_release(&self, manifest: &[u8], binary: Vec<u8>) {
        let mut st = self.shared.lock();
        st.release_manifest = Some(manifest.to_vec());
        st.release_bin = Arc::new(binary);
    }

    /// How the release binary is served (default [`ReleaseMode::Whole`]).
    pub fn set_release_mode(&self, mode: ReleaseMode) {
        self.shared.lock().release_mode = mode;
    }

    /// `{issuer}/_test/release/manifest`.
    pub fn release_manifest_url(&self) -> String {
        format!("{}/_test/release/manifest", self.shared.issuer)
    }

    /// `{issuer}/_test/release/bin`.
    pub fn release_bin_url(&self) -> String {
        format!("{}/_test/release/bin", self.shared.issuer)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it fails harmlessly if the listener is
        // already gone.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn jwks(st: &State) -> Value {
    let k = st.current_key();
    json!({"keys": [{
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(k.key.verifying_key().to_bytes()),
        "kid": k.kid,
        "alg": "EdDSA",
        "use": "sig",
    }]})
}

// ---------------------------------------------------------------------------
// Server loop
// ---------------------------------------------------------------------------

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, max_connections: usize) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut accepted = 0usize;
    let mut errors = 0usize;
    while accepted < max_connections && errors < 10_000 && !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.stopping() {
                    break;
                }
                accepted += 1;
                // Reap finished workers so the list stays short.
                let (done, live): (Vec<_>, Vec<_>) =
                    workers.into_iter().partition(|h| h.is_finished());
                for h in done {
                    let _ = h.join();
                }
                workers = live;
                if workers.len() >= MAX_CONCURRENT {
                    continue; // dropping `stream` closes it unanswered
                }
                let sh = Arc::clone(&shared);
                if let Ok(h) = thread::Builder::new()
                    .name("test-idp-conn".into())
                    .spawn(move || handle_connection(&sh, stream))
                {
                    workers.push(h);
                }
            }
            Err(_) => {
                errors += 1;
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);
    for h in workers {
        let _ = h.join();
    }
    shared.finished.store(true, Ordering::SeqCst);
}

struct Request {
    method: String,
    /// Raw request target as received (may carry a query).
    target: String,
    /// Lower-cased header names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    extra_headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        extra_headers: Vec::new(),
        body: v.to_string().into_bytes(),
    }
}

fn error_reply(status: u16, code: &str) -> Reply {
    json_reply(status, &json!({"error": code}))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        304 => "Not Modified",
        404 => "Not Found",
        429 => "Too Many Requests",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

fn write_head(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    len: usize,
    extra: &[(String, String)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n",
        reason_phrase(status)
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn write_reply(stream: &mut TcpStream, r: &Reply) -> io::Result<()> {
    write_head(
        stream,
        r.status,
        r.content_type,
        r.body.len(),
        &r.extra_headers,
    )?;
    stream.write_all(&r.body)?;
    stream.flush()
}

/// Close after a response: half-close, then drain briefly (bounded) so unread
/// request bytes do not turn the close into a reset that eats the response.
fn close_gracefully(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut drained = 0usize;
    while drained < 256 * 1024 && start.elapsed() < Duration::from_secs(1) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

enum ReadError {
    /// Connection trouble: give up silently.
    Io,
    /// Answer with this status and error code, then close.
    Reply(u16, &'static str),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one request: head up to 16 KiB, body (Content-Length only) up to
/// 64 KiB, all within `REQUEST_DEADLINE`.
fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Reply(431, "header_too_large"));
        }
        if Instant::now() >= deadline {
            return Err(ReadError::Io);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Io),
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Reply(431, "header_too_large"));
    }
    let bad = ReadError::Reply(400, "bad_request");
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Reply(400, "bad_request"))?
        .to_string();
    let mut lines = head.split("\r\n");
    let mut rl = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (rl.next(), rl.next(), rl.next(), rl.next())
    else {
        return Err(bad);
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(bad);
    }
    let mut headers = Vec::new();
    let mut content_length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad);
        };
        let name = name.to_ascii_lowercase();
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(bad);
        }
        let value = value.trim().to_string();
        if name == "content-length" {
            let n: usize = value
                .parse()
                .map_err(|_| ReadError::Reply(400, "bad_request"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad);
            }
            content_length = Some(n);
        }
        if name == "transfer-encoding" {
            // Clients of this double always know their body length.
            return Err(ReadError::Reply(501, "chunked_not_supported"));
        }
        headers.push((name, value));
    }
    let len = content_length.unwrap_or(0);
    if len > MAX_BODY {
        return Err(ReadError::Reply(413, "body_too_large"));
    }
    let start = head_end + 4;
    while buf.len() < start + len {
        if Instant::now() >= deadline {
            return Err(ReadError::Io);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Io),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: buf[start..start + len].to_vec(),
    })
}

/// Sleep up to `d` (capped at `MAX_HOLD`) in small steps; false if the
/// server is stopping.
fn sleep_unless_stopped(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d.min(MAX_HOLD);
    loop {
        if shared.stopping() {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Hold the socket without answering until the peer leaves, the server
/// stops, or `MAX_HOLD` passes.
fn hang(shared: &Shared, stream: &mut TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < MAX_HOLD && !shared.stopping() {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
}

/// 200 with exactly `n` bytes of JSON-looking data, written in chunks.
fn stream_big_body(shared: &Shared, stream: &mut TcpStream, n: usize) -> io::Result<()> {
    write_head(stream, 200, "application/json", n, &[])?;
    let prefix: &[u8] = b"{\"keys\":[],\"pad\":\"";
    let suffix: &[u8] = b"\"}";
    let start = Instant::now();
    let mut chunk = vec![b'a'; 16 * 1024];
    let mut sent = 0usize;
    while sent < n {
        if shared.stopping() || start.elapsed() > MAX_HOLD {
            return Ok(());
        }
        let len = chunk.len().min(n - sent);
        // Fill the chunk so the whole body reads prefix + a* + suffix.
        for (i, b) in chunk[..len].iter_mut().enumerate() {
            let pos = sent + i;
            *b = if pos < prefix.len() {
                prefix[pos]
            } else if n >= prefix.len() + suffix.len() && pos >= n - suffix.len() {
                suffix[pos - (n - suffix.len())]
            } else {
                b'a'
            };
        }
        stream.write_all(&chunk[..len])?;
        sent += len;
    }
    stream.flush()
}

/// Write `r` one byte at a time, pausing `pause` between bytes, for at
/// most `MAX_HOLD` (or until the server stops).
fn dribble_reply(
    shared: &Shared,
    stream: &mut TcpStream,
    r: &Reply,
    pause: Duration,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason_phrase(r.status),
        r.content_type,
        r.body.len()
    );
    for (n, v) in &r.extra_headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(&r.body);
    let start = Instant::now();
    for b in bytes {
        if shared.stopping() || start.elapsed() > MAX_HOLD {
            return Ok(());
        }
        stream.write_all(&[b])?;
        stream.flush()?;
        if !sleep_unless_stopped(shared, pause) {
            return Ok(());
        }
    }
    Ok(())
}

/// `GET /_test/release/bin`: the binary, whole, cut short, or filler.
fn serve_release_bin(shared: &Shared, stream: &mut TcpStream) {
    const TYPE: &str = "application/octet-stream";
    let (bin, mode) = {
        let st = shared.lock();
        (Arc::clone(&st.release_bin), st.release_mode.clone())
    };
    let result = match mode {
        ReleaseMode::Whole => write_head(stream, 200, TYPE, bin.len(), &[])
            .and_then(|()| stream.write_all(&bin))
            .and_then(|()| stream.flush()),
        ReleaseMode::CutAfter(n) => {
            let _ = write_head(stream, 200, TYPE, bin.len(), &[])
                .and_then(|()| stream.write_all(&bin[..n.min(bin.len())]))
                .and_then(|()| stream.flush());
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        ReleaseMode::Filler { bytes, announce } => {
            let length = if announce {
                format!("Content-Length: {bytes}\r\n")
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {TYPE}\r\n{length}Connection: close\r\n\r\n"
            );
            let chunk = vec![0x5au8; 64 * 1024];
            let start = Instant::now();
            let mut r = stream.write_all(head.as_bytes());
            let mut sent = 0usize;
            while r.is_ok() && sent < bytes && !shared.stopping() && start.elapsed() < MAX_HOLD {
                let len = chunk.len().min(bytes - sent);
                r = stream.write_all(&chunk[..len]);
                sent += len;
            }
            r.and_then(|()| stream.flush())
        }
    };
    if result.is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
    }
}

fn handle_connection(shared: &Shared, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let req = match read_request(&mut stream) {
        Ok(r) => r,
        Err(ReadError::Io) => return,
        Err(ReadError::Reply(status, code)) => {
            let _ = write_reply(&mut stream, &error_reply(status, code));
            close_gracefully(stream);
            return;
        }
    };
    let fault = {
        let mut st = shared.lock();
        st.requests.push((req.method.clone(), req.target.clone()));
        if let Some(a) = req.header("authorization") {
            st.last_authorization = Some(a.to_string());
        }
        // The test-only control routes are never faulted, so a faulted demo
        // server can always be switched back.
        if req.path().starts_with("/_test/") {
            Fault::None
        } else {
            st.fault_for(req.path())
        }
    };
    if req.path() == "/_test/release/bin" && req.method == "GET" {
        serve_release_bin(shared, &mut stream);
        return;
    }
    let reply = match fault {
        Fault::None => route(shared, &req),
        Fault::Down => {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Fault::Hang => {
            hang(shared, &mut stream);
            return;
        }
        Fault::Status(s) => json_reply(s, &json!({"error": "fault", "status": s})),
        Fault::Garbage => Reply {
            status: 200,
            // Deliberately mislabelled: clients must not trust the type.
            content_type: "application/json",
            extra_headers: Vec::new(),
            body: b"<html>not json".to_vec(),
        },
        Fault::Slow(d) => {
            if !sleep_unless_stopped(shared, d) {
                return;
            }
            route(shared, &req)
        }
        Fault::BigBody(n) => {
            if stream_big_body(shared, &mut stream, n).is_ok() {
                close_gracefully(stream);
            }
            return;
        }
        Fault::Redirect(location) => Reply {
            status: 302,
            content_type: "application/json",
            extra_headers: vec![("Location".into(), location)],
            body: Vec::new(),
        },
        Fault::EmptyObject => json_reply(200, &json!({})),
        Fault::Body(status, body) => Reply {
            status,
            content_type: "application/json",
            extra_headers: Vec::new(),
            body: body.into_bytes(),
        },
        Fault::RateLimited(secs) => Reply {
            status: 429,
            content_type: "application/json",
            extra_headers: vec![("Retry-After".into(), secs.to_string())],
            body: br#"{"error":"rate_limited"}"#.to_vec(),
        },
        Fault::Dribble(pause) => {
            let reply = route(shared, &req);
            if dribble_reply(shared, &mut stream, &reply, pause).is_ok() {
                close_gracefully(stream);
            }
            return;
        }
    };
    if write_reply(&mut stream, &reply).is_ok() {
        close_gracefully(stream);
    }
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// Decode `%XX` escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1..i + 3)?;
            if !h.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parse a JSON object body; an empty body is an empty object.
fn body_object(req: &Request) -> Result<Map<String, Value>, Reply> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(error_reply(400, "invalid_json")),
    }
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Result<Option<String>, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(&format!("{k} must be a string"))),
    }
}

fn opt_u64(m: &Map<String, Value>, k: &str) -> Result<Option<u64>, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(&format!("{k} must be a non-negative integer"))),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(&format!("{k} must be a non-negative integer"))),
        Some(_) => Err(invalid(&format!("{k} must be a number"))),
    }
}

fn opt_bool(m: &Map<String, Value>, k: &str, default: bool) -> Result<bool, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(&format!("{k} must be a boolean"))),
    }
}

fn opt_argv(m: &Map<String, Value>, k: &str) -> Result<Option<Vec<String>>, Reply> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| invalid(&format!("{k} must be an array of strings"))),
        Some(_) => Err(invalid(&format!("{k} must be an array of strings"))),
    }
}

fn invalid(detail: &str) -> Reply {
    json_reply(400, &json!({"error": "invalid_request", "detail": detail}))
}

/// Build a spec from a `POST /api/grants` or `/_test/grant` body. `run_as`
/// falls back to `default_run_as` only when the key is absent (an explicit
/// `null` means no run_as).
fn spec_from_body(
    m: &Map<String, Value>,
    default_run_as: Option<&str>,
) -> Result<GrantSpec, Reply> {
    let target_host =
        opt_str(m, "target_host")?.ok_or_else(|| invalid("target_host is required"))?;
    let grant_type = match opt_str(m, "grant_type")? {
        None => GrantType::Once,
        Some(s) => {
            GrantType::parse(&s).ok_or_else(|| invalid("grant_type must be once|timed|always"))?
        }
    };
    let run_as = if m.contains_key("run_as") {
        opt_str(m, "run_as")?
    } else {
        default_run_as.map(str::to_string)
    };
    Ok(GrantSpec {
        requester: opt_str(m, "requester")?.unwrap_or_else(|| DEFAULT_REQUESTER.to_string()),
        target_host,
        audience: opt_str(m, "audience")?.unwrap_or_else(|| "escapes".to_string()),
        grant_type,
        command: opt_argv(m, "command")?,
        run_as,
        decided_by: opt_str(m, "decided_by")?.unwrap_or_else(|| DEFAULT_APPROVER.to_string()),
        duration_secs: opt_u64(m, "duration")?,
        reason: opt_str(m, "reason")?,
        with_cmd_hash: opt_bool(m, "with_cmd_hash", true)?,
        with_argv_hash: opt_bool(m, "with_argv_hash", true)?,
        with_command: opt_bool(m, "with_command", true)?,
    })
}

fn route(shared: &Shared, req: &Request) -> Reply {
    let path = req.path();
    let segs: Vec<&str> = path[1..].split('/').collect();
    let m = req.method.as_str();
    let method_not_allowed = || error_reply(405, "method_not_allowed");
    match segs.as_slice() {
        [".well-known", "openid-configuration"] => {
            if m != "GET" {
                return method_not_allowed();
            }
            let iss = &shared.issuer;
            json_reply(
                200,
                &json!({
                    "issuer": iss,
                    "jwks_uri": format!("{iss}/.well-known/jwks.json"),
                    "grants_endpoint": format!("{iss}/api/grants"),
                    "id_token_signing_alg_values_supported": ["EdDSA"],
                }),
            )
        }
        [".well-known", "jwks.json"] => {
            if m != "GET" {
                return method_not_allowed();
            }
            let st = shared.lock();
            match &st.jwks_override {
                Some(doc) => Reply {
                    status: 200,
                    content_type: "application/json",
                    extra_headers: Vec::new(),
                    body: doc.clone().into_bytes(),
                },
                None => json_reply(200, &jwks(&st)),
            }
        }
        ["api", "grants"] => {
            if m != "POST" {
                return method_not_allowed();
            }
            create_grant(shared, req)
        }
        ["api", "grants", raw_id] => {
            if m != "GET" {
                return method_not_allowed();
            }
            let Some(id) = percent_decode(raw_id) else {
                return error_reply(400, "bad_request");
            };
            get_grant(shared, req, &id)
        }
        ["api", "grants", raw_id, action] => {
            if m != "POST" {
                return method_not_allowed();
            }
            let Some(id) = percent_decode(raw_id) else {
                return error_reply(400, "bad_request");
            };
            match *action {
                "approve" | "deny" | "revoke" => decide(shared, req, &id, action),
                "token" => token(shared, req, &id),
                "consume" => consume(shared, req, &id),
                _ => error_reply(404, "not_found"),
            }
        }
        ["api", "agent", "challenge"] if m == "POST" => agent_challenge(shared, req),
        ["api", "agent", "authenticate"] if m == "POST" => agent_authenticate(shared, req),
        ["api", "auth", "challenge"] => {
            if m != "POST" {
                return method_not_allowed();
            }
            auth_challenge(shared, req)
        }
        ["api", "auth", "authenticate"] => {
            if m != "POST" {
                return method_not_allowed();
            }
            auth_authenticate(shared, req)
        }
        // Test-only control routes: the real IdP has nothing like them. They
        // exist so the demo binary and out-of-process benchmarks can mint
        // grants, inject faults and rotate keys over HTTP.
        ["_test", "release", "manifest"] if m == "GET" => {
            match shared.lock().release_manifest.clone() {
                Some(body) => Reply {
                    status: 200,
                    content_type: "application/json",
                    extra_headers: Vec::new(),
                    body,
                },
                None => error_reply(404, "no_release"),
            }
        }
        ["_test", "grant"] if m == "POST" => test_grant(shared, req),
        ["_test", "agent"] if m == "POST" => test_agent(shared, req),
        ["_test", "switch"] if m == "POST" => test_switch(shared, req),
        ["_test", "pending"] if m == "GET" => {
            let st = shared.lock();
            let ids: Vec<&String> = st
                .order
                .iter()
                .filter(|id| {
                    st.grants
                        .get(*id)
                        .is_some_and(|g| g.status == Status::Pending)
                })
                .collect();
            json_reply(200, &json!({"pending": ids}))
        }
        ["_test", "fault"] if m == "POST" => test_fault(shared, req),
        ["_test", "rotate"] if m == "POST" => {
            let kid = shared.lock().rotate();
            json_reply(200, &json!({"kid": kid}))
        }
        _ => error_reply(404, "not_found"),
    }
}

fn create_grant(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut spec = match spec_from_body(&body, None) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let now = now_secs();
    let mut st = shared.lock();
    // With a bearer, the agent login decides who asks (as the real IdP);
    // without one, the older suites' open behaviour.
    let owner = if req.header("authorization").is_some() {
        let Some(agent) = st.agent_of(req) else {
            return error_reply(401, "invalid_token");
        };
        // The body's `requester` is display data the caller chose; the
        // token's subject replaces it (as the real IdP does).
        spec.requester = agent.clone();
        Some(agent)
    } else {
        None
    };
    if st.reuse_grants && spec.grant_type != GrantType::Once {
        let found = st.grants.values().find(|g| {
            g.status == Status::Approved
                && !g.timed_out(now)
                && g.grant_type == spec.grant_type
                && g.requester == spec.requester
                && g.target_host == spec.target_host
                && g.audience == spec.audience
                && g.command == spec.command
                && g.run_as == spec.run_as
        });
        if let Some(g) = found {
            return json_reply(200, &g.to_json(now));
        }
    }
    let mut g = Grant::from_spec(uuid(), &spec, now);
    g.owner = owner;
    if let Some(approver) = st.auto_approve.clone() {
        g.approve(&approver, now);
    }
    let json = g.to_json(now);
    if st.insert_grant(g) {
        json_reply(201, &json)
    } else {
        error_reply(507, "store_full")
    }
}

/// Is the requester of `g` allowed to act on it? Grants made without a
/// bearer are open; owned grants need the owner's agent login.
fn owner_ok(st: &State, req: &Request, g: &Grant) -> Result<(), Reply> {
    match &g.owner {
        None => Ok(()),
        Some(owner) => match st.agent_of(req) {
            Some(agent) if &agent == owner => Ok(()),
            Some(_) => Err(error_reply(403, "not_requester")),
            None => Err(error_reply(401, "invalid_token")),
        },
    }
}

/// `W/"status:decided_at"`, as the real IdP.
fn etag_of(g: &Grant, now: u64) -> String {
    format!(
        "W/\"{}:{}\"",
        g.status_str(now),
        g.decided_at.unwrap_or(g.created_at)
    )
}

fn get_grant(shared: &Shared, req: &Request, id: &str) -> Reply {
    let st = shared.lock();
    let Some(g) = st.grants.get(id) else {
        return error_reply(404, "not_found");
    };
    if let Err(r) = owner_ok(&st, req, g) {
        return r;
    }
    let now = now_secs();
    let tag = etag_of(g, now);
    let mut reply = if req.header("if-none-match") == Some(tag.as_str()) {
        Reply {
            status: 304,
            content_type: "application/json",
            extra_headers: Vec::new(),
            body: Vec::new(),
        }
    } else {
        json_reply(200, &g.to_json(now))
    };
    reply.extra_headers.push(("ETag".into(), tag));
    reply
}

fn decide(shared: &Shared, req: &Request, id: &str, action: &str) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let decided_by = match opt_str(&body, "decided_by") {
        Ok(d) => d.unwrap_or_else(|| DEFAULT_APPROVER.to_string()),
        Err(r) => return r,
    };
    let now = now_secs();
    let mut st = shared.lock();
    // A requester cancels its own request with its bearer (deny).
    let agent = if req.header("authorization").is_some() {
        let Some(a) = st.agent_of(req) else {
            return error_reply(401, "invalid_token");
        };
        Some(a)
    } else {
        None
    };
    let Some(g) = st.grants.get_mut(id) else {
        return error_reply(404, "not_found");
    };
    let decided_by = match agent {
        Some(a) if action == "deny" && g.owner.as_deref() == Some(a.as_str()) => a,
        Some(_) => return error_reply(403, "not_allowed"),
        None => decided_by,
    };
    match action {
        "approve" | "deny" if g.status != Status::Pending => {
            return json_reply(
                400,
                &json!({"error": "invalid_state", "status": g.status_str(now)}),
            );
        }
        "approve" => g.approve(&decided_by, now),
        "deny" => {
            g.status = Status::Denied;
            g.decided_by = Some(decided_by);
            g.decided_at = Some(now);
        }
        _ => g.status = Status::Revoked,
    }
    json_reply(200, &g.to_json(now))
}

fn token(shared: &Shared, req: &Request, id: &str) -> Reply {
    let st = shared.lock();
    let Some(g) = st.grants.get(id) else {
        return error_reply(404, "not_found");
    };
    if let Err(r) = owner_ok(&st, req, g) {
        return r;
    }
    if g.status != Status::Approved {
        return error_reply(400, "not_approved");
    }
    let now = now_secs();
    let jwt = match &st.token_swap {
        None => st.grant_token(&shared.issuer, g, now),
        Some(swap) => {
            let mut claims = grant_claims(&shared.issuer, g, now);
            if let Some(c) = &swap.command {
                claims["command"] = json!(c);
                claims["cmd_hash"] = json!(cmd_hash(c));
                claims["execution_context"] = json!({"argv": c, "argv_hash": argv_hash(c)});
            }
            if let Some(h) = &swap.target_host {
                claims["target_host"] = json!(h);
            }
            if let Some(u) = &swap.run_as {
                claims["run_as"] = json!(u);
            }
            if let Some(d) = &swap.decided_by {
                claims["decided_by"] = json!(d);
            }
            sign_with(st.current_key(), Value::Null, &claims)
        }
    };
    json_reply(200, &json!({"authz_jwt": jwt}))
}

/// Consume. The whole check-and-mark runs under the store lock, so a once
/// grant is consumed exactly once however many requests race.
fn consume(shared: &Shared, req: &Request, id: &str) -> Reply {
    let bearer = req.header("authorization").and_then(|v| {
        let (scheme, tok) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
    });
    let mut st = shared.lock();
    // The double verifies the signature against every key it has issued but
    // does not check `exp`.
    let claims = bearer.and_then(|t| st.verify_own_token(t));
    if claims
        .as_ref()
        .and_then(|c| c.get("grant_id"))
        .and_then(Value::as_str)
        != Some(id)
    {
        return error_reply(401, "invalid_token");
    }
    let refusal = st.refusal_status;
    let now = now_secs();
    let outcome = {
        let Some(g) = st.grants.get_mut(id) else {
            return error_reply(404, "not_found");
        };
        match g.status {
            Status::Pending => Err("not_approved"),
            Status::Denied => Err("denied"),
            Status::Revoked => Err("revoked"),
            Status::Used => Err("already_consumed"),
            Status::Approved => match g.grant_type {
                GrantType::Once => {
                    g.status = Status::Used;
                    g.used_at = Some(now);
                    Ok("consumed")
                }
                GrantType::Timed if g.timed_out(now) => Err("expired"),
                GrantType::Timed | GrantType::Always => Ok("valid"),
            },
        }
    };
    match outcome {
        Ok(status) => {
            *st.consumes.entry(id.to_string()).or_insert(0) += 1;
            json_reply(200, &json!({"status": status}))
        }
        Err(e) => error_reply(refusal, e),
    }
}

fn auth_challenge(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let id = match opt_str(&body, "id") {
        Ok(Some(id)) => id,
        Ok(None) => return invalid("id is required"),
        Err(r) => return r,
    };
    let bytes: [u8; 32] = random_bytes();
    let challenge = hex(&bytes);
    let mut st = shared.lock();
    if st.challenges.len() >= MAX_CHALLENGES {
        st.challenges.clear();
    }
    st.challenges.insert(id, challenge.clone());
    json_reply(200, &json!({"challenge": challenge}))
}

/// Agent login. The real IdP verifies `signature` (Ed25519 over the
/// challenge) against the agent's enrolled key; this double skips that check
/// and only requires that `challenge` is the one it handed out for `id`.
fn auth_authenticate(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (id, challenge) = match (opt_str(&body, "id"), opt_str(&body, "challenge")) {
        (Ok(Some(i)), Ok(Some(c))) => (i, c),
        _ => return invalid("id and challenge are required"),
    };
    let mut st = shared.lock();
    if st.challenges.get(&id) != Some(&challenge) {
        return error_reply(401, "invalid_challenge");
    }
    st.challenges.remove(&id);
    let now = now_secs();
    let claims = json!({
        "iss": shared.issuer,
        "sub": id,
        "aud": "apes-cli",
        "iat": now,
        "exp": now + LOGIN_LIFETIME,
        "jti": uuid(),
    });
    let token = sign_with(st.current_key(), Value::Null, &claims);
    json_reply(200, &json!({"token": token}))
}

/// Agent login, step 1 (`/api/agent/challenge {"agent_id"}`): a 64-hex
/// challenge for an enrolled agent, single use, valid 60 s.
fn agent_challenge(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let agent = match opt_str(&body, "agent_id") {
        Ok(Some(a)) => a,
        Ok(None) => return invalid("agent_id is required"),
        Err(r) => return r,
    };
    let mut st = shared.lock();
    if !st.agents.contains_key(&agent) {
        return error_reply(404, "agent_not_found");
    }
    st.agent_challenges
        .retain(|_, (_, at)| at.elapsed() < CHALLENGE_LIFETIME);
    if st.agent_challenges.len() >= MAX_CHALLENGES {
        return error_reply(429, "too_many_challenges");
    }
    let challenge = hex(&random_bytes::<32>());
    st.agent_challenges
        .insert(challenge.clone(), (agent, Instant::now()));
    json_reply(200, &json!({"challenge": challenge}))
}

/// Agent login, step 2 (`/api/agent/authenticate {"agent_id", "challenge",
/// "signature"}`): the Ed25519 signature (standard base64) over the
/// challenge string must verify against the enrolled key. The challenge
/// is spent by any attempt. Answers an `apes-cli` token for 8 h.
fn agent_authenticate(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (agent, challenge, signature) = match (
        opt_str(&body, "agent_id"),
        opt_str(&body, "challenge"),
        opt_str(&body, "signature"),
    ) {
        (Ok(Some(a)), Ok(Some(c)), Ok(Some(s))) => (a, c, s),
        _ => return invalid("agent_id, challenge and signature are required"),
    };
    let mut st = shared.lock();
    let Some((for_agent, at)) = st.agent_challenges.remove(&challenge) else {
        return error_reply(401, "invalid_challenge");
    };
    if for_agent != agent || at.elapsed() >= CHALLENGE_LIFETIME {
        return error_reply(401, "invalid_challenge");
    }
    let Some(public) = st.agents.get(&agent) else {
        return error_reply(401, "agent_not_found");
    };
    let good = base64::engine::general_purpose::STANDARD
        .decode(signature.as_bytes())
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .zip(ed25519_dalek::VerifyingKey::from_bytes(public).ok())
        .is_some_and(|(sig, vk)| vk.verify_strict(challenge.as_bytes(), &sig).is_ok());
    if !good {
        return error_reply(401, "invalid_signature");
    }
    let now = now_secs();
    let claims = json!({
        "iss": shared.issuer,
        "sub": agent,
        "aud": "apes-cli",
        "iat": now,
        "exp": now + LOGIN_LIFETIME,
        "jti": uuid(),
    });
    let token = sign_with(st.current_key(), Value::Null, &claims);
    json_reply(200, &json!({"token": token, "expires_in": LOGIN_LIFETIME}))
}

/// The 32-byte key of `ssh-ed25519 <base64> [comment]`, or of plain
/// base64 (standard or url-safe) of the 32 bytes.
pub fn parse_agent_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let mut parts = text.split_whitespace();
    let first = parts.next()?;
    if first == "ssh-ed25519" {
        let blob = base64::engine::general_purpose::STANDARD
            .decode(parts.next()?)
            .ok()?;
        let key = blob.strip_prefix(b"\0\0\0\x0bssh-ed25519\0\0\0\x20")?;
        return key.try_into().ok();
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(first)
        .or_else(|_| URL_SAFE_NO_PAD.decode(first))
        .ok()?;
    raw.as_slice().try_into().ok()
}

/// `POST /_test/agent {"email", "public_key"}`: enroll an agent.
fn test_agent(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (Ok(Some(email)), Ok(Some(key))) = (opt_str(&body, "email"), opt_str(&body, "public_key"))
    else {
        return invalid("email and public_key are required");
    };
    let Some(k) = parse_agent_key(&key) else {
        return invalid("public_key must be an ssh-ed25519 line or 32 bytes of base64");
    };
    shared.lock().agents.insert(email, k);
    json_reply(200, &json!({"ok": true}))
}

/// `POST /_test/switch {"auto_approve": EMAIL|null, "reuse_grants": bool,
/// "token_swap": {command, target_host, run_as, decided_by}|null}`: only
/// the keys given change.
fn test_switch(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut st = shared.lock();
    if body.contains_key("auto_approve") {
        match opt_str(&body, "auto_approve") {
            Ok(a) => st.auto_approve = a,
            Err(r) => return r,
        }
    }
    if body.contains_key("reuse_grants") {
        match opt_bool(&body, "reuse_grants", false) {
            Ok(b) => st.reuse_grants = b,
            Err(r) => return r,
        }
    }
    if let Some(v) = body.get("token_swap") {
        st.token_swap = match v {
            Value::Null => None,
            Value::Object(m) => {
                let parsed = (|| -> Result<TokenSwap, Reply> {
                    Ok(TokenSwap {
                        command: opt_argv(m, "command")?,
                        target_host: opt_str(m, "target_host")?,
                        run_as: opt_str(m, "run_as")?,
                        decided_by: opt_str(m, "decided_by")?,
                    })
                })();
                match parsed {
                    Ok(s) => Some(s),
                    Err(r) => return r,
                }
            }
            _ => return invalid("token_swap must be an object or null"),
        };
    }
    json_reply(200, &json!({"ok": true}))
}

fn test_grant(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let spec = match spec_from_body(&body, Some("root")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let now = now_secs();
    let mut g = Grant::from_spec(uuid(), &spec, now);
    g.approve(&spec.decided_by, now);
    let mut st = shared.lock();
    let jwt = st.grant_token(&shared.issuer, &g, now);
    let grant_id = g.id.clone();
    if !st.insert_grant(g) {
        return error_reply(507, "store_full");
    }
    json_reply(200, &json!({"grant_id": grant_id, "authz_jwt": jwt}))
}

fn test_fault(shared: &Shared, req: &Request) -> Reply {
    let body = match body_object(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = (|| -> Result<(Fault, Option<String>), Reply> {
        let kind = opt_str(&body, "fault")?.ok_or_else(|| invalid("fault is required"))?;
        let status = opt_u64(&body, "status")?.unwrap_or(500);
        let fault = match kind.as_str() {
            "none" => Fault::None,
            "down" => Fault::Down,
            "hang" => Fault::Hang,
            "status" => Fault::Status(
                u16::try_from(status)
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .ok_or_else(|| invalid("status must be 100..=999"))?,
            ),
            "garbage" => Fault::Garbage,
            "slow" => Fault::Slow(Duration::from_millis(opt_u64(&body, "ms")?.unwrap_or(1000))),
            "bigbody" => Fault::BigBody(
                usize::try_from(opt_u64(&body, "bytes")?.unwrap_or(1_000_000))
                    .map_err(|_| invalid("bytes too large"))?,
            ),
            "redirect" => Fault::Redirect(
                opt_str(&body, "location")?.unwrap_or_else(|| "http://127.0.0.1:9/".to_string()),
            ),
            "empty" => Fault::EmptyObject,
            "ratelimit" => Fault::RateLimited(opt_u64(&body, "retry_after")?.unwrap_or(2)),
            _ => return Err(invalid("unknown fault")),
        };
        Ok((fault, opt_str(&body, "prefix")?))
    })();
    let (fault, prefix) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut st = shared.lock();
    match (prefix, fault) {
        // "none" without a prefix switches every fault off.
        (None, Fault::None) => {
            st.global_fault = Fault::None;
            st.prefix_faults.clear();
        }
        (None, f) => st.global_fault = f,
        (Some(p), f) => {
            st.prefix_faults.retain(|(q, _)| *q != p);
            st.prefix_faults.push((p, f));
        }
    }
    json_reply(200, &json!({"ok": true}))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::request;
    use ed25519_dalek::VerifyingKey;
    use std::collections::BTreeSet;

    const T: Duration = Duration::from_secs(5);

    fn b64json(seg: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
    }

    fn get(idp: &TestIdp, path: &str) -> (u16, Value) {
        let (s, b) = request(idp.addr(), "GET", path, &[], None, T).unwrap();
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn post(idp: &TestIdp, path: &str, body: Option<&str>) -> (u16, Value) {
        let (s, b) = request(idp.addr(), "POST", path, &[], body, T).unwrap();
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn consume(idp: &TestIdp, id: &str, jwt: &str) -> (u16, Value) {
        let auth = format!("Bearer {jwt}");
        let path = format!("/api/grants/{id}/consume");
        let (s, b) = request(
            idp.addr(),
            "POST",
            &path,
            &[("Authorization", &auth)],
            None,
            T,
        )
        .unwrap();
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    fn jwks_key(idp: &TestIdp) -> (String, VerifyingKey) {
        let (s, jwks) = get(idp, "/.well-known/jwks.json");
        assert_eq!(s, 200);
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys[0];
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
        assert_eq!(k["use"], "sig");
        let x: [u8; 32] = URL_SAFE_NO_PAD
            .decode(k["x"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        (
            k["kid"].as_str().unwrap().to_string(),
            VerifyingKey::from_bytes(&x).unwrap(),
        )
    }

    #[test]
    fn issued_jwt_has_exact_claims_and_verifies_against_jwks() {
        let idp = TestIdp::start();
        let argv = ["systemctl", "restart", "nginx"];
        let issued = idp.issue(&GrantSpec::new("host1", &argv));
        let parts: Vec<&str> = issued.jwt.split('.').collect();
        assert_eq!(parts.len(), 3);

        let header = b64json(parts[0]);
        assert_eq!(
            header,
            json!({"alg": "EdDSA", "typ": "JWT", "kid": idp.kid()})
        );

        let c = b64json(parts[1]);
        let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = [
            "iss",
            "sub",
            "aud",
            "target_host",
            "iat",
            "exp",
            "jti",
            "grant_id",
            "grant_type",
            "approval",
            "command",
            "cmd_hash",
            "execution_context",
            "decided_by",
            "run_as",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, want);
        assert_eq!(c["iss"], idp.issuer());
        assert_eq!(c["sub"], "agent@example.com");
        assert_eq!(c["aud"], "escapes");
        assert_eq!(c["target_host"], "host1");
        assert_eq!(c["jti"], issued.grant_id);
        assert_eq!(c["grant_id"], issued.grant_id);
        assert_eq!(c["grant_type"], "once");
        assert_eq!(c["approval"], "once");
        assert_eq!(c["command"], json!(argv));
        assert_eq!(c["decided_by"], "alice@example.com");
        assert_eq!(c["run_as"], "root");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
        let joined = Sha256::digest(b"systemctl restart nginx");
        assert_eq!(c["cmd_hash"], hex(&joined));
        let arr = Sha256::digest(br#"["systemctl","restart","nginx"]"#);
        assert_eq!(c["execution_context"]["argv"], json!(argv));
        assert_eq!(
            c["execution_context"]["argv_hash"],
            format!("SHA-256:{}", hex(&arr))
        );
        assert_eq!(issued.grant_id.len(), 36);

        let (kid, vk) = jwks_key(&idp);
        assert_eq!(kid, idp.kid());
        let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        vk.verify_strict(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();

        // Lifetimes and optional claims.
        let mut s = GrantSpec::new("h", &["ls"]);
        s.grant_type = GrantType::Timed;
        s.duration_secs = Some(90);
        s.run_as = None;
        s.with_cmd_hash = false;
        s.with_argv_hash = false;
        let c = b64json(idp.issue(&s).jwt.split('.').nth(1).unwrap());
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 90);
        assert_eq!(c["grant_type"], "timed");
        assert!(c.get("run_as").is_none());
        assert!(c.get("cmd_hash").is_none());
        assert!(c.get("execution_context").is_none());
        assert_eq!(c["command"], json!(["ls"]));
        s.grant_type = GrantType::Always;
        let c = b64json(idp.issue(&s).jwt.split('.').nth(1).unwrap());
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
            3600
        );
        assert_eq!(c["approval"], "always");
    }

    #[test]
    fn discovery_points_at_jwks() {
        let idp = TestIdp::start();
        let (s, d) = get(&idp, "/.well-known/openid-configuration");
        assert_eq!(s, 200);
        assert_eq!(d["issuer"], idp.issuer());
        assert_eq!(
            d["jwks_uri"],
            format!("{}/.well-known/jwks.json", idp.issuer())
        );
        assert_eq!(get(&idp, "/nope").0, 404);
        assert_eq!(
            idp.jwks_json(),
            get(&idp, "/.well-known/jwks.json").1.to_string()
        );
    }

    #[test]
    fn once_consumed_then_already_consumed_with_403_and_200() {
        for refusal in [403u16, 200] {
            let idp = TestIdp::start();
            idp.set_refusal_status(refusal);
            let g = idp.issue(&GrantSpec::new("h", &["id"]));
            let (s, b) = consume(&idp, &g.grant_id, &g.jwt);
            assert_eq!((s, b), (200, json!({"status": "consumed"})));
            let (s, b) = consume(&idp, &g.grant_id, &g.jwt);
            assert_eq!((s, b), (refusal, json!({"error": "already_consumed"})));
            assert_eq!(idp.consume_count(&g.grant_id), 1);
            assert_eq!(idp.last_authorization(), Some(format!("Bearer {}", g.jwt)));
            assert_eq!(
                get(&idp, &format!("/api/grants/{}", g.grant_id)).1["status"],
                "used"
            );
        }
    }

    #[test]
    fn fifty_parallel_consumes_of_one_once_grant_consume_once() {
        let idp = TestIdp::start();
        let g = idp.issue(&GrantSpec::new("h", &["id"]));
        let results: Vec<(u16, Value)> = thread::scope(|s| {
            let hs: Vec<_> = (0..50)
                .map(|_| s.spawn(|| consume(&idp, &g.grant_id, &g.jwt)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let consumed = results
            .iter()
            .filter(|(s, b)| *s == 200 && b["status"] == "consumed")
            .count();
        let refused = results
            .iter()
            .filter(|(s, b)| *s == 403 && b["error"] == "already_consumed")
            .count();
        assert_eq!((consumed, refused), (1, 49));
        assert_eq!(idp.consume_count(&g.grant_id), 1);
        assert_eq!(
            idp.request_count(&format!("/api/grants/{}/consume", g.grant_id)),
            50
        );
    }

    #[test]
    fn timed_valid_twice_then_expired_and_always_valid() {
        let idp = TestIdp::start();
        let mut s = GrantSpec::new("h", &["id"]);
        s.grant_type = GrantType::Timed;
        let g = idp.issue(&s);
        for _ in 0..2 {
            assert_eq!(
                consume(&idp, &g.grant_id, &g.jwt),
                (200, json!({"status": "valid"}))
            );
        }
        assert_eq!(idp.consume_count(&g.grant_id), 2);

        s.duration_secs = Some(0); // expires at approval time
        let g = idp.issue(&s);
        assert_eq!(
            consume(&idp, &g.grant_id, &g.jwt),
            (403, json!({"error": "expired"}))
        );
        assert_eq!(
            get(&idp, &format!("/api/grants/{}", g.grant_id)).1["status"],
            "expired"
        );

        s.grant_type = GrantType::Always;
        let g = idp.issue(&s);
        for _ in 0..3 {
            assert_eq!(
                consume(&idp, &g.grant_id, &g.jwt).1,
                json!({"status": "valid"})
            );
        }
    }

    #[test]
    fn revoked_is_refused() {
        let idp = TestIdp::start();
        let g = idp.issue(&GrantSpec::new("h", &["id"]));
        idp.revoke(&g.grant_id);
        assert_eq!(
            consume(&idp, &g.grant_id, &g.jwt),
            (403, json!({"error": "revoked"}))
        );
        assert_eq!(idp.consume_count(&g.grant_id), 0);
    }

    #[test]
    fn bad_bearers_get_401_and_unknown_grant_404() {
        let idp = TestIdp::start();
        let other = TestIdp::start();
        let g = idp.issue(&GrantSpec::new("h", &["id"]));
        let g2 = idp.issue(&GrantSpec::new("h", &["id"]));
        let foreign = other.issue(&GrantSpec::new("h", &["id"]));
        // Same grant id, signed by another IdP's key.
        let mut forged = idp.claims_for(&GrantSpec::new("h", &["id"]), &g.grant_id, now_secs());
        forged["iss"] = json!(idp.issuer());
        let forged = other.sign(json!({"kid": idp.kid()}), forged);
        let mut tampered: Vec<&str> = g.jwt.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(br#"{"grant_id":"x"}"#);
        tampered[1] = &evil;
        let tampered = tampered.join(".");
        for bad in [
            "garbage",
            "a.b.c",
            &foreign.jwt,
            &forged,
            &tampered,
            &g2.jwt, // valid, but for another grant
        ] {
            let (s, b) = consume(&idp, &g.grant_id, bad);
            assert_eq!((s, b), (401, json!({"error": "invalid_token"})), "{bad}");
        }
        // No Authorization header at all; wrong scheme.
        let path = format!("/api/grants/{}/consume", g.grant_id);
        let (s, _) = request(idp.addr(), "POST", &path, &[], None, T).unwrap();
        assert_eq!(s, 401);
        let basic = format!("Basic {}", g.jwt);
        let (s, _) = request(
            idp.addr(),
            "POST",
            &path,
            &[("Authorization", &basic)],
            None,
            T,
        )
        .unwrap();
        assert_eq!(s, 401);
        // A validly signed token naming an unknown grant.
        let ghost = idp.sign(Value::Null, json!({"grant_id": "ghost"}));
        assert_eq!(
            consume(&idp, "ghost", &ghost),
            (404, json!({"error": "not_found"}))
        );
        // Nothing was consumed by any of that.
        assert_eq!(idp.consume_count(&g.grant_id), 0);
        assert_eq!(consume(&idp, &g.grant_id, &g.jwt).0, 200);
    }

    #[test]
    fn rotation_changes_jwks_kid_and_old_tokens_still_consume() {
        let idp = TestIdp::start();
        let g = idp.issue(&GrantSpec::new("h", &["id"]));
        let (kid1, vk1) = jwks_key(&idp);
        idp.rotate_key();
        let (kid2, vk2) = jwks_key(&idp);
        assert_ne!(kid1, kid2);
        assert_eq!(kid2, idp.kid());
        assert_ne!(vk1, vk2);
        assert!(!idp.jwks_json().contains(&kid1));
        // New tokens carry the new kid; the old token is still one of ours.
        let g2 = idp.issue(&GrantSpec::new("h", &["id"]));
        assert_eq!(b64json(g2.jwt.split('.').next().unwrap())["kid"], kid2);
        assert_eq!(consume(&idp, &g.grant_id, &g.jwt).0, 200);
        // Rotation over HTTP too.
        let (s, b) = post(&idp, "/_test/rotate", None);
        assert_eq!(s, 200);
        assert_eq!(b["kid"], idp.kid());
        assert_ne!(idp.kid(), kid2);
    }

    #[test]
    fn sign_overrides_and_removes_header_keys() {
        let idp = TestIdp::start();
        let t = idp.sign(
            json!({"alg": "none", "kid": null, "crit": ["x"]}),
            json!({"a": 1}),
        );
        let h = b64json(t.split('.').next().unwrap());
        assert_eq!(h, json!({"alg": "none", "typ": "JWT", "crit": ["x"]}));
        assert_eq!(b64json(t.split('.').nth(1).unwrap()), json!({"a": 1}));
        let raw = idp.sign_raw(br#"{"alg":"EdDSA","alg":"none"}"#, b"{}");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(raw.split('.').next().unwrap())
                .unwrap(),
            br#"{"alg":"EdDSA","alg":"none"}"#
        );
    }

    #[test]
    fn http_grant_lifecycle() {
        let idp = TestIdp::start();
        let body = json!({
            "requester": "bot@example.com", "target_host": "web1", "audience": "escapes",
            "grant_type": "once", "command": ["whoami"], "run_as": "root",
            "reason": "test", "duration": null,
        })
        .to_string();
        let (s, g) = post(&idp, "/api/grants", Some(&body));
        assert_eq!(s, 201);
        assert_eq!(g["status"], "pending");
        let id = g["id"].as_str().unwrap().to_string();

        assert_eq!(
            post(&idp, &format!("/api/grants/{id}/token"), None),
            (400, json!({"error": "not_approved"}))
        );
        // A validly signed token for a pending grant.
        let early = idp.sign(Value::Null, json!({"grant_id": id}));
        assert_eq!(
            consume(&idp, &id, &early),
            (403, json!({"error": "not_approved"}))
        );

        let (s, a) = post(
            &idp,
            &format!("/api/grants/{id}/approve"),
            Some(r#"{"decided_by":"bob@example.com"}"#),
        );
        assert_eq!((s, &a["status"]), (200, &json!("approved")));
        // Percent-encoded id in the path.
        let enc = format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
        assert_eq!(
            get(&idp, &format!("/api/grants/{enc}")).1["decided_by"],
            "bob@example.com"
        );

        let (s, t) = post(&idp, &format!("/api/grants/{enc}/token"), None);
        assert_eq!(s, 200);
        let jwt = t["authz_jwt"].as_str().unwrap();
        let c = b64json(jwt.split('.').nth(1).unwrap());
        assert_eq!(c["sub"], "bot@example.com");
        assert_eq!(c["decided_by"], "bob@example.com");
        assert_eq!(c["command"], json!(["whoami"]));
        assert_eq!(
            consume(&idp, &id, jwt),
            (200, json!({"status": "consumed"}))
        );

        // Deny path.
        let (_, g) = post(&idp, "/api/grants", Some(r#"{"target_host":"web1"}"#));
        let id = g["id"].as_str().unwrap();
        assert_eq!(post(&idp, &format!("/api/grants/{id}/deny"), None).0, 200);
        assert_eq!(
            post(&idp, &format!("/api/grants/{id}/approve"), None).0,
            400
        );
        let t = idp.sign(Value::Null, json!({"grant_id": id}));
        assert_eq!(consume(&idp, id, &t), (403, json!({"error": "denied"})));

        // Validation and unknowns.
        assert_eq!(post(&idp, "/api/grants", Some("{}")).0, 400);
        assert_eq!(post(&idp, "/api/grants", Some("not json")).0, 400);
        assert_eq!(post(&idp, "/api/grants/nope/approve", None).0, 404);
        assert_eq!(get(&idp, "/api/grants/nope").0, 404);
        assert_eq!(post(&idp, "/api/grants/x/frobnicate", None).0, 404);
        assert_eq!(get(&idp, "/api/grants/%zz").0, 400);
        assert_eq!(get(&idp, "/api/grants").0, 405);
    }

    #[test]
    fn agent_login_and_owned_grants() {
        let idp = TestIdp::start();
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let call = |m: &str,
                    path: &str,
                    bearer: Option<&str>,
                    body: Option<&str>,
                    extra: &[(&str, &str)]| {
            let auth = bearer.map(|b| format!("Bearer {b}"));
            let mut h: Vec<(&str, &str)> = extra.to_vec();
            if let Some(a) = &auth {
                h.push(("Authorization", a.as_str()));
            }
            let (s, b) = request(idp.addr(), m, path, &h, body, T).unwrap();
            (s, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
        };
        let login = |email: &str, k: &SigningKey| {
            let (s, c) = call(
                "POST",
                "/api/agent/challenge",
                None,
                Some(&json!({"agent_id": email}).to_string()),
                &[],
            );
            if s != 200 {
                return (s, None);
            }
            let ch = c["challenge"].as_str().unwrap().to_string();
            assert_eq!(ch.len(), 64);
            let sig =
                base64::engine::general_purpose::STANDARD.encode(k.sign(ch.as_bytes()).to_bytes());
            let body = json!({"agent_id": email, "challenge": ch, "signature": sig}).to_string();
            let (s, t) = call("POST", "/api/agent/authenticate", None, Some(&body), &[]);
            // Single use: the same answer again is refused.
            assert_eq!(
                call("POST", "/api/agent/authenticate", None, Some(&body), &[]).0,
                401
            );
            (s, t["token"].as_str().map(str::to_string))
        };
        assert_eq!(login("a@example.com", &key).0, 404, "unknown agent");
        idp.register_agent("a@example.com", key.verifying_key().to_bytes());
        assert_eq!(
            login("a@example.com", &SigningKey::from_bytes(&[6u8; 32])).0,
            401,
            "wrong key"
        );
        let (s, bearer) = login("a@example.com", &key);
        assert_eq!(s, 200);
        let bearer = bearer.unwrap();
        assert_eq!(
            b64json(bearer.split('.').nth(1).unwrap())["aud"],
            "apes-cli"
        );

        let req = json!({"target_host": "h", "command": ["id"], "run_as": "root"}).to_string();
        let (s, g) = call("POST", "/api/grants", Some(&bearer), Some(&req), &[]);
        assert_eq!(
            (s, g["status"].as_str(), g["requester"].as_str()),
            (201, Some("pending"), Some("a@example.com"))
        );
        let id = g["id"].as_str().unwrap().to_string();
        let path = format!("/api/grants/{id}");
        // Only the requester reads it; ETag, then 304.
        assert_eq!(call("GET", &path, None, None, &[]).0, 401);
        let other = idp.login_token("b@example.com");
        assert_eq!(call("GET", &path, Some(&other), None, &[]).0, 403);
        let (_, first) = request(
            idp.addr(),
            "GET",
            &path,
            &[("Authorization", &format!("Bearer {bearer}"))],
            None,
            T,
        )
        .unwrap();
        assert!(first.contains("pending"));
        let tag = format!("W/\"pending:{}\"", g["created_at"]);
        assert_eq!(
            call(
                "GET",
                &path,
                Some(&bearer),
                None,
                &[("If-None-Match", &tag)]
            )
            .0,
            304
        );
        // Approved by the approver: a new ETag; the token is the requester's only.
        assert!(idp.approve(&id, "alice@example.com"));
        assert_eq!(
            call(
                "GET",
                &path,
                Some(&bearer),
                None,
                &[("If-None-Match", &tag)]
            )
            .0,
            200
        );
        assert_eq!(
            call("POST", &format!("{path}/token"), Some(&other), None, &[]).0,
            403
        );
        let (s, t) = call("POST", &format!("{path}/token"), Some(&bearer), None, &[]);
        assert_eq!(s, 200);
        assert!(t["authz_jwt"].as_str().is_some());
        // The requester cancels its own pending request.
        let (_, g2) = call("POST", "/api/grants", Some(&bearer), Some(&req), &[]);
        let id2 = g2["id"].as_str().unwrap().to_string();
        assert_eq!(
            call(
                "POST",
                &format!("/api/grants/{id2}/deny"),
                Some(&bearer),
                Some("{}"),
                &[]
            )
            .0,
            200
        );
        assert_eq!(
            idp.grant_state(&id2),
            Some(("denied".into(), Some("a@example.com".into())))
        );
        // 429 with Retry-After; auto-approval; reuse of a timed grant.
        idp.set_fault_for("/api/grants/", Fault::RateLimited(7));
        let (s, b) = request(idp.addr(), "GET", &path, &[], None, T).unwrap();
        assert_eq!(s, 429, "{b}");
        idp.clear_faults();
        idp.set_auto_approve(Some("alice@example.com"));
        idp.set_reuse_grants(true);
        let timed =
            json!({"target_host": "h", "command": ["id"], "run_as": "root", "grant_type": "timed"})
                .to_string();
        let (s, g3) = call("POST", "/api/grants", Some(&bearer), Some(&timed), &[]);
        assert_eq!((s, g3["status"].as_str()), (201, Some("approved")));
        let (s, g4) = call("POST", "/api/grants", Some(&bearer), Some(&timed), &[]);
        assert_eq!((s, g4["id"].clone()), (200, g3["id"].clone()));
    }

    #[test]
    fn agent_login_token_is_not_a_grant() {
        let idp = TestIdp::start();
        let (s, c) = post(
            &idp,
            "/api/auth/challenge",
            Some(r#"{"id":"agent@example.com"}"#),
        );
        assert_eq!(s, 200);
        let ch = c["challenge"].as_str().unwrap();
        let body =
            json!({"id": "agent@example.com", "challenge": ch, "signature": "AAAA"}).to_string();
        let (s, t) = post(&idp, "/api/auth/authenticate", Some(&body));
        assert_eq!(s, 200);
        let tok = t["token"].as_str().unwrap();
        let c = b64json(tok.split('.').nth(1).unwrap());
        assert_eq!(c["aud"], "apes-cli");
        assert_eq!(c["sub"], "agent@example.com");
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
            8 * 3600
        );
        assert!(c.get("grant_id").is_none());
        // The challenge is single-use.
        assert_eq!(post(&idp, "/api/auth/authenticate", Some(&body)).0, 401);
        let g = idp.issue(&GrantSpec::new("h", &["id"]));
        assert_eq!(consume(&idp, &g.grant_id, tok).0, 401);
    }

    #[test]
    fn hang_does_not_answer_and_drop_is_prompt() {
        let idp = TestIdp::start();
        idp.set_fault(Fault::Hang);
        let t0 = Instant::now();
        let r = request(
            idp.addr(),
            "GET",
            "/.well-known/jwks.json",
            &[],
            None,
            Duration::from_secs(1),
        );
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(900));
        // A second hanging client still connected while the server drops.
        let mut s = TcpStream::connect(idp.addr()).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        thread::sleep(Duration::from_millis(100));
        let t1 = Instant::now();
        drop(idp);
        assert!(t1.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn faults() {
        let idp = TestIdp::start();
        let jwks = "/.well-known/jwks.json";
        let q = |p: &str| request(idp.addr(), "GET", p, &[], None, T);

        idp.set_fault(Fault::Status(503));
        let (s, b) = q(jwks).unwrap();
        assert_eq!(s, 503);
        assert!(b.contains("error"));

        idp.set_fault(Fault::Garbage);
        assert_eq!(q(jwks).unwrap(), (200, "<html>not json".to_string()));

        idp.set_fault(Fault::EmptyObject);
        assert_eq!(q(jwks).unwrap(), (200, "{}".to_string()));

        idp.set_fault(Fault::Redirect("http://example.invalid/x".into()));
        assert_eq!(q(jwks).unwrap().0, 302);

        idp.set_fault(Fault::BigBody(100_000));
        let (s, b) = q(jwks).unwrap();
        assert_eq!((s, b.len()), (200, 100_000));
        assert!(b.starts_with("{\"keys\":[]") && b.ends_with("\"}"));

        idp.set_fault(Fault::Slow(Duration::from_millis(300)));
        let t0 = Instant::now();
        assert_eq!(q(jwks).unwrap().0, 200);
        assert!(t0.elapsed() >= Duration::from_millis(300));

        idp.set_fault(Fault::Down);
        assert!(q(jwks).is_err());

        // Prefix faults win over the global one; None exempts a prefix.
        idp.set_fault_for("/.well-known/", Fault::None);
        assert_eq!(q(jwks).unwrap().0, 200);
        assert!(q("/api/grants/x").is_err());
        idp.clear_faults();
        idp.set_fault_for("/api/", Fault::Status(500));
        assert_eq!(q(jwks).unwrap().0, 200);
        assert_eq!(q("/api/grants/x").unwrap().0, 500);

        // Test routes are never faulted and can switch faults over HTTP.
        idp.set_fault(Fault::Down);
        let (s, _) = post(
            &idp,
            "/_test/fault",
            Some(r#"{"fault":"status","status":502}"#),
        );
        assert_eq!(s, 200);
        assert_eq!(q(jwks).unwrap().0, 502);
        post(&idp, "/_test/fault", Some(r#"{"fault":"none"}"#));
        assert_eq!(q(jwks).unwrap().0, 200);
        assert_eq!(q("/api/grants/x").unwrap().0, 404);
        assert!(idp.request_count("/.well-known/jwks.json") >= 10);
    }

    #[test]
    fn test_grant_route_mints_a_consumable_grant() {
        let idp = TestIdp::start();
        let (s, r) = post(
            &idp,
            "/_test/grant",
            Some(r#"{"target_host":"h","command":["ls","-l"],"grant_type":"timed","duration":60}"#),
        );
        assert_eq!(s, 200);
        let jwt = r["authz_jwt"].as_str().unwrap();
        let id = r["grant_id"].as_str().unwrap();
        let c = b64json(jwt.split('.').nth(1).unwrap());
        assert_eq!(c["run_as"], "root");
        assert_eq!(c["grant_type"], "timed");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
        assert_eq!(consume(&idp, id, jwt), (200, json!({"status": "valid"})));
    }

    #[test]
    fn oversized_requests_are_refused() {
        let idp = TestIdp::start();
        let big = "x".repeat(MAX_BODY + 1);
        let (s, _) = request(idp.addr(), "POST", "/api/grants", &[], Some(&big), T).unwrap();
        assert_eq!(s, 413);
        let long = "a".repeat(MAX_HEAD + 10);
        let (s, _) = request(idp.addr(), "GET", "/", &[("X-Long", &long)], None, T).unwrap();
        assert_eq!(s, 431);
    }

    #[test]
    fn binds_loopback_only() {
        let idp = TestIdp::start();
        assert_eq!(idp.addr().ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(idp.issuer(), format!("http://127.0.0.1:{}", idp.port()));
        // Ask the kernel: the listening socket's local address is 127.0.0.1.
        if let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") {
            let port = format!(":{:04X}", idp.port());
            let listening: Vec<&str> = tcp
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A").then_some(f[1])
                })
                .collect();
            assert_eq!(listening, vec![format!("0100007F{port}").as_str()]);
        }
        let tcp6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
        let port = format!(":{:04X} ", idp.port());
        assert!(
            !tcp6
                .lines()
                .any(|l| l.contains(&port) && l.split_whitespace().nth(3) == Some("0A"))
        );
    }

    #[test]
    fn server_stops_after_max_connections() {
        let idp = TestIdp::start_with(IdpOptions {
            max_connections: 2,
            ..IdpOptions::default()
        })
        .unwrap();
        assert!(!idp.finished());
        get(&idp, "/.well-known/jwks.json");
        get(&idp, "/.well-known/jwks.json");
        let t0 = Instant::now();
        while !idp.finished() && t0.elapsed() < T {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(idp.finished());
        assert!(request(idp.addr(), "GET", "/", &[], None, T).is_err());
    }
}
