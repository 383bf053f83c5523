//! The hostile suite (issue 4, item 1): one table, one oracle.
//!
//! Every row is a hostile input (token, argv, environment, IdP fault,
//! filesystem state, concurrency, signal) for one or both front doors:
//! the setuid `escapes` run by the real non-root test user, and
//! `pam_openape.so` driven through real libpam by `pam-driver` (whose argv
//! imitates `sudo ...`). Each (row, door) gets its own test IdP and its own
//! root-owned directory (config, audit log, JWKS cache, PAM stack); the
//! setuid binary and the module are shared. The runner applies the same
//! checks to every row:
//!
//! 1. nothing hostile ran: the row's marker file (the bound command is
//!    `touch <marker>` unless the row is about argv or environment) and any
//!    payload marker are absent;
//! 2. the exit code (escapes) or PAM code is the one a safe implementation
//!    gives, and the audit log holds a whole-JSON `denied` line with the
//!    expected `step` (or, where the config or the log itself is unusable,
//!    no line at all); rows whose granted benign command runs (`Granted`:
//!    environment recorders, TLS control) log `grant_run` instead;
//! 3. no token text (payload or signature segment, or their first or last
//!    24 characters) in stdout, stderr or the audit log;
//! 4. each run finished within `[http] timeout` + 2 s (10 s for the huge
//!    argv rows, 40 s for 50 parallel runs);
//! 5. every grant the row minted was consumed exactly as often as the row
//!    says (0 for every refusal).
//!
//! Three rows found bugs when this suite was written (a full audit disk
//! burned the grant; a trailing newline was dropped from `--grant`;
//! `VAR=/x` was not a usage error). They are fixed and stay as ordinary
//! rows: `fs-audit-disk-full`, `grant-arg-with-trailing-newline`,
//! `cmd-var-assignment-with-slash`.
//!
//! Needs root (setuid binary, test user, tmpfs mount); otherwise skipped.
//! Run after `cargo build --workspace`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use openape_tests::harness::{
    APPROVER, ConfigBuilder, ConfigNs, FullTmpfs, HOST, Output, Run, SANE_PATH, Sandbox, TEST_USER,
    artefact, exec_raw, passwd_home, require_root, set_owner_mode, test_user, toml_str,
};
use openape_tests::http_client;
use openape_tests::idp::{Fault, GrantSpec, GrantType, Issued, TestIdp, TokenSwap};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PAM_SUCCESS: i32 = 0;
const PAM_SERVICE_ERR: i32 = 3;
const PAM_AUTH_ERR: i32 = 7;
const PAM_AUTHINFO_UNAVAIL: i32 = 9;

/// `[http] timeout` of every row's configuration, in seconds.
const HTTP_TIMEOUT: u64 = 2;
/// Rows run at the same time (most of them wait on a timeout, not a CPU).
const WORKERS: usize = 6;
/// Hard limit of one program run (the oracle's bound is much smaller).
const RUN_LIMIT: Duration = Duration::from_secs(40);

fn bound() -> Duration {
    Duration::from_secs(HTTP_TIMEOUT + 2)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn which(name: &str) -> Option<PathBuf> {
    SANE_PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// The table's vocabulary
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    Tokens,
    Commands,
    Environment,
    IdpFaults,
    Filesystem,
    Concurrency,
    Signals,
    Request,
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Group::Tokens => "tokens",
            Group::Commands => "commands",
            Group::Environment => "environment",
            Group::IdpFaults => "idp-faults",
            Group::Filesystem => "filesystem",
            Group::Concurrency => "concurrency",
            Group::Signals => "signals",
            Group::Request => "request",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    Escapes,
    Pam,
}

impl fmt::Display for Door {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Door::Escapes => "escapes",
            Door::Pam => "pam",
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Doors {
    Escapes,
    Pam,
    Both,
}

impl Doors {
    fn list(self) -> &'static [Door] {
        match self {
            Doors::Escapes => &[Door::Escapes],
            Doors::Pam => &[Door::Pam],
            Doors::Both => &[Door::Escapes, Door::Pam],
        }
    }
}

/// What the audit log must show for a refusal.
#[derive(Clone, Copy, Debug)]
enum Audit {
    /// Exactly one `denied` line (per run) with this step.
    Step(&'static str),
    /// Nothing can be logged (config untrusted, log unusable, refused
    /// before the config is read): no line at all.
    Nothing,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Refused: escapes exit code and audit, PAM code and audit.
    Refused {
        exit: i32,
        esc: Audit,
        pam: i32,
        pam_audit: Audit,
    },
    /// The granted benign command ran exactly as approved (exit 0 / PAM
    /// success, one `grant_run`, consumed once); the hostile payload did not.
    Granted,
    /// Several runs; the row checks its own mix of outcomes (described here).
    Custom(&'static str),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Refused {
                exit,
                esc,
                pam,
                pam_audit,
            } => {
                let a = |a: &Audit| match a {
                    Audit::Step(s) => format!("denied at {s}"),
                    Audit::Nothing => "no audit line".into(),
                };
                write!(f, "exit {exit} {}; pam {pam} {}", a(esc), a(pam_audit))
            }
            Expect::Granted => f.write_str("granted command only"),
            Expect::Custom(what) => f.write_str(what),
        }
    }
}

/// Refused by a verification step (exit 5, PAM_AUTH_ERR).
const fn refused(step: &'static str) -> Expect {
    split(5, Audit::Step(step), PAM_AUTH_ERR, Audit::Step(step))
}

/// The IdP could not be used (exit 1, PAM_AUTHINFO_UNAVAIL).
const fn unavailable(step: &'static str) -> Expect {
    split(
        1,
        Audit::Step(step),
        PAM_AUTHINFO_UNAVAIL,
        Audit::Step(step),
    )
}

/// Nothing trusted to log to (exit 1, PAM_SERVICE_ERR, no line).
const UNTRUSTED: Expect = split(1, Audit::Nothing, PAM_SERVICE_ERR, Audit::Nothing);

/// Refused with different codes or steps per door.
const fn split(exit: i32, esc: Audit, pam: i32, pam_audit: Audit) -> Expect {
    Expect::Refused {
        exit,
        esc,
        pam,
        pam_audit,
    }
}

enum Case {
    /// One invocation per door, built from this input.
    Std(fn(&Ctx) -> Input),
    /// The row runs its own invocations (and checks their mix itself).
    Custom(fn(&Ctx) -> Vec<Obs>),
}

struct Row {
    name: &'static str,
    group: Group,
    doors: Doors,
    expect: Expect,
    case: Case,
}

fn row(name: &'static str, group: Group, doors: Doors, expect: Expect, case: Case) -> Row {
    Row {
        name,
        group,
        doors,
        expect,
        case,
    }
}

/// How `escapes` gets the grant (PAM always reads `OPENAPE_GRANT`).
#[derive(Clone, Debug)]
enum Via {
    Stdin,
    Arg,
    Env,
    /// `--grant-file` naming this path as is.
    File(PathBuf),
}

/// One invocation.
#[derive(Clone, Debug)]
struct Input {
    token: String,
    via: Via,
    /// escapes options (before `--`); also sudo's, unless `sudo` is set.
    opts: Vec<String>,
    argv: Vec<String>,
    dashdash: bool,
    env: Vec<(String, String)>,
    /// sudo's arguments for the PAM door (default: opts + argv).
    sudo: Option<Vec<String>>,
    cwd: Option<PathBuf>,
    /// Run under `strace -f` (trace file: `<dir>/trace`).
    strace: bool,
}

impl Input {
    fn new(token: impl Into<String>, argv: Vec<String>) -> Input {
        Input {
            token: token.into(),
            via: Via::Stdin,
            opts: Vec::new(),
            argv,
            dashdash: true,
            env: Vec::new(),
            sudo: None,
            cwd: None,
            strace: false,
        }
    }

    fn opts(mut self, o: &[&str]) -> Input {
        self.opts = owned(o);
        self
    }

    fn via(mut self, v: Via) -> Input {
        self.via = v;
        self
    }

    fn env(mut self, k: &str, v: impl Into<String>) -> Input {
        self.env.push((k.to_string(), v.into()));
        self
    }

    fn no_dashdash(mut self) -> Input {
        self.dashdash = false;
        self
    }

    fn cwd(mut self, d: PathBuf) -> Input {
        self.cwd = Some(d);
        self
    }

    fn strace(mut self) -> Input {
        self.strace = true;
        self
    }
}

/// What one run did.
struct Obs {
    door: Door,
    /// Exit code (escapes) or the `auth=` PAM code (-1 if none printed).
    code: i32,
    out: Output,
}

// ---------------------------------------------------------------------------
// Shared pieces: the lab (setuid binary, module), decoys, a TLS front
// ---------------------------------------------------------------------------

struct Lab {
    sb: Sandbox,
    module: PathBuf,
    driver: PathBuf,
    cc: Option<PathBuf>,
    strace: Option<PathBuf>,
}

impl Lab {
    fn new() -> Lab {
        test_user();
        let sb = Sandbox::new("hostile");
        let so = fs::read(artefact("libpam_openape.so")).unwrap();
        let module = sb.write_file("pam_openape.so", &so, 0, 0, 0o644);
        fs::create_dir(sb.path("rows")).unwrap();
        set_owner_mode(&sb.path("rows"), 0, 0, 0o755);
        Lab {
            sb,
            module,
            driver: artefact("pam-driver"),
            cc: which("cc"),
            strace: which("strace"),
        }
    }

    fn escapes(&self) -> PathBuf {
        self.sb.escapes()
    }
}

/// A loopback listener that must never be contacted (jku/x5u targets,
/// redirect targets, proxies): it counts connections and closes them.
struct Decoy {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Decoy {
    fn start() -> Decoy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&hits), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok(_) => {
                        h.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Decoy {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test CA (rcgen) for the TLS rows.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `san` (an IP or a DNS name).
    fn leaf(
        &self,
        san: &str,
        expired: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, san.to_string());
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// HTTPS on 127.0.0.1 in front of the (plain HTTP) test IdP: terminates
/// TLS with the given certificate and forwards each request verbatim.
struct TlsFront {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn tls_serve(
    cfg: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    backend: SocketAddr,
    forwarded: &AtomicUsize,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = tls.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut back = TcpStream::connect(backend)?;
    back.set_read_timeout(Some(Duration::from_secs(10)))?;
    back.write_all(&buf)?;
    let mut resp = Vec::new();
    back.read_to_end(&mut resp)?;
    forwarded.fetch_add(1, Ordering::SeqCst);
    tls.write_all(&resp)?;
    tls.conn.send_close_notify();
    tls.flush()
}

impl TlsFront {
    fn start(
        backend: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let cfg = Arc::new(cfg);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, f, s) = (
            Arc::clone(&conns),
            Arc::clone(&forwarded),
            Arc::clone(&stop),
        );
        let thread = thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let (cfg, f) = (Arc::clone(&cfg), Arc::clone(&f));
                        workers.push(thread::spawn(move || {
                            let _ = tls_serve(cfg, stream, backend, &f);
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        TlsFront {
            addr,
            conns,
            forwarded,
            stop,
            thread: Some(thread),
        }
    }

    fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// One row's world
// ---------------------------------------------------------------------------

type Check = Box<dyn FnOnce(&Ctx, &[Obs]) -> Result<(), String>>;

struct Ctx {
    lab: Arc<Lab>,
    door: Door,
    dir: PathBuf,
    idp: TestIdp,
    cfg: RefCell<ConfigBuilder>,
    config_path: RefCell<PathBuf>,
    /// Tokens that must never show up in any output or log.
    secrets: RefCell<Vec<String>>,
    /// (grant_id, how often it must have been consumed).
    grants: RefCell<Vec<(String, usize)>>,
    /// Paths a hostile payload would create.
    hostile: RefCell<Vec<PathBuf>>,
    checks: RefCell<Vec<Check>>,
    failures: RefCell<Vec<String>>,
    bound: RefCell<Duration>,
    keep: RefCell<Vec<Box<dyn Any>>>,
}

impl Ctx {
    fn new(lab: Arc<Lab>, name: &str, door: Door) -> Ctx {
        let dir = lab.sb.path(&format!("rows/{name}-{door}"));
        fs::create_dir(&dir).unwrap();
        set_owner_mode(&dir, 0, 0, 0o755);
        for (d, mode) in [
            ("etc", 0o755),
            ("log", 0o700),
            ("cache", 0o700),
            ("pam.d", 0o755),
            ("ns", 0o700),
        ] {
            let p = dir.join(d);
            fs::create_dir(&p).unwrap();
            set_owner_mode(&p, 0, 0, mode);
        }
        let idp = TestIdp::start();
        let cfg = ConfigBuilder {
            host: HOST.to_string(),
            issuers: vec![idp.issuer()],
            approvers: vec![APPROVER.to_string()],
            audit_log: dir.join("log/audit.log"),
            cache_dir: dir.join("cache"),
            jwks_min_refresh: 0,
            http_timeout: HTTP_TIMEOUT as u32,
            top: String::new(),
            security: String::new(),
            cache: String::new(),
            tail: String::new(),
        };
        let c = Ctx {
            lab,
            door,
            config_path: RefCell::new(dir.join("etc/config.toml")),
            dir,
            idp,
            cfg: RefCell::new(cfg),
            secrets: RefCell::new(Vec::new()),
            grants: RefCell::new(Vec::new()),
            hostile: RefCell::new(Vec::new()),
            checks: RefCell::new(Vec::new()),
            failures: RefCell::new(Vec::new()),
            bound: RefCell::new(bound()),
            keep: RefCell::new(Vec::new()),
        };
        c.write_config();
        c.write_stack();
        c
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn marker(&self) -> PathBuf {
        self.path("marker")
    }

    /// The bound command of most rows: `touch <marker>`.
    fn marker_cmd(&self) -> Vec<String> {
        vec![
            "touch".to_string(),
            self.marker().to_string_lossy().into_owned(),
        ]
    }

    fn p(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    fn write_config(&self) {
        let text = self.cfg.borrow().render();
        let p = self.path("etc/config.toml");
        fs::write(&p, text).unwrap();
        set_owner_mode(&p, 0, 0, 0o600);
    }

    /// The private mount namespace that shows the directory of this row's
    /// config at `/etc/openape` for escapes (only real root may pass
    /// `--config`), so the file must be named `config.toml`.
    fn config_ns(&self) -> Arc<ConfigNs> {
        let p = self.config_path.borrow();
        assert_eq!(
            p.file_name().and_then(|n| n.to_str()),
            Some("config.toml"),
            "escapes reads only <dir>/config.toml: {}",
            p.display()
        );
        Arc::new(ConfigNs::new(
            &self.path("ns"),
            p.parent().expect("config has a directory"),
        ))
    }

    fn set_config_path(&self, p: PathBuf) {
        *self.config_path.borrow_mut() = p;
        self.write_stack();
    }

    fn write_stack(&self) {
        let text = format!(
            "auth required {} config={} nonint\n",
            self.lab.module.display(),
            self.config_path.borrow().display()
        );
        let p = self.path("pam.d/sudo");
        fs::write(&p, text).unwrap();
        set_owner_mode(&p, 0, 0, 0o644);
    }

    /// A directory the caller (test user) owns.
    fn user_dir(&self, rel: &str) -> PathBuf {
        let u = test_user();
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap();
        set_owner_mode(&p, u.uid, u.gid, 0o755);
        p
    }

    /// A file the caller owns.
    fn user_file(&self, rel: &str, content: &[u8], mode: u32) -> PathBuf {
        let u = test_user();
        let p = self.path(rel);
        fs::write(&p, content).unwrap();
        set_owner_mode(&p, u.uid, u.gid, mode);
        p
    }

    fn root_file(&self, rel: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, content).unwrap();
        set_owner_mode(&p, 0, 0, mode);
        p
    }

    /// A script that would create `payload` if anything ran it.
    fn payload_script(&self, rel: &str, payload: &Path) -> PathBuf {
        self.hostile(payload.to_path_buf());
        self.user_file(
            rel,
            format!("#!/bin/sh\ntouch {}\n", payload.display()).as_bytes(),
            0o755,
        )
    }

    fn secret(&self, t: &str) {
        self.secrets.borrow_mut().push(t.to_string());
    }

    fn hostile(&self, p: PathBuf) {
        self.hostile.borrow_mut().push(p);
    }

    fn check(&self, f: impl FnOnce(&Ctx, &[Obs]) -> Result<(), String> + 'static) {
        self.checks.borrow_mut().push(Box::new(f));
    }

    fn fail(&self, msg: impl Into<String>) {
        self.failures.borrow_mut().push(msg.into());
    }

    fn keep(&self, x: impl Any) {
        self.keep.borrow_mut().push(Box::new(x));
    }

    fn set_bound(&self, d: Duration) {
        *self.bound.borrow_mut() = d;
    }

    fn audit_path(&self) -> PathBuf {
        self.cfg.borrow().audit_log.clone()
    }

    fn audit_text(&self) -> String {
        fs::read_to_string(self.audit_path()).unwrap_or_default()
    }

    fn spec(&self, argv: &[String]) -> GrantSpec {
        GrantSpec::new(HOST, &strs(argv))
    }

    /// Mint an approved grant at the IdP; it must be consumed `consumes` times.
    fn issue_n(&self, spec: &GrantSpec, consumes: usize) -> Issued {
        let g = self.idp.issue(spec);
        self.grants
            .borrow_mut()
            .push((g.grant_id.clone(), consumes));
        self.secret(&g.jwt);
        g
    }

    fn issue(&self, spec: &GrantSpec) -> Issued {
        self.issue_n(spec, 0)
    }

    /// A once-grant for `argv` that must not be consumed.
    fn grant(&self, argv: &[String]) -> String {
        self.issue(&self.spec(argv)).jwt
    }

    /// A once-grant for `argv` that the row expects to be used once.
    fn grant_used(&self, argv: &[String]) -> String {
        self.issue_n(&self.spec(argv), 1).jwt
    }

    /// Claims of a real, approved grant for `argv` (so a missing check would
    /// let it run and consume): rows mutate and re-sign them.
    fn claims_of(&self, spec: &GrantSpec) -> Value {
        let g = self.issue(spec);
        self.idp.claims_for(spec, &g.grant_id, now() as u64)
    }

    fn claims(&self, argv: &[String]) -> Value {
        self.claims_of(&self.spec(argv))
    }

    fn sign(&self, claims: Value) -> String {
        let t = self.idp.sign(Value::Null, claims);
        self.secret(&t);
        t
    }

    fn sign_h(&self, header: Value, claims: Value) -> String {
        let t = self.idp.sign(header, claims);
        self.secret(&t);
        t
    }

    fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let t = self.idp.sign_raw(header, payload);
        self.secret(&t);
        t
    }

    /// The default header of this IdP's tokens, as JSON text.
    fn header_json(&self) -> String {
        json!({"alg": "EdDSA", "typ": "JWT", "kid": self.idp.kid()}).to_string()
    }

    /// The standard input: this token on stdin, the marker command.
    fn input(&self, token: impl Into<String>) -> Input {
        Input::new(token, self.marker_cmd())
    }

    /// `escapes verify` with this grant (fills the JWKS cache; consumes,
    /// runs and logs nothing).
    fn warm(&self, token: &str, argv: &[String]) {
        let out = Run::new(self.lab.escapes())
            .arg0(self.lab.escapes())
            .arg("verify")
            .config_ns(self.config_ns())
            .arg("--grant-stdin")
            .arg("--")
            .args(argv)
            .stdin(token)
            .cwd(&self.dir)
            .as_test_user()
            .timeout(RUN_LIMIT)
            .output();
        if out.code != 0 {
            self.fail(format!("warming the JWKS cache with verify failed: {out}"));
        }
    }

    /// `escapes` as the test user, executed directly (no setpriv in between,
    /// so loader variables reach nothing but escapes itself).
    fn escapes_run(&self, i: &Input) -> Run {
        let esc = self.lab.escapes();
        let mut args: Vec<String> = Vec::new();
        let mut stdin = None;
        let mut env = i.env.clone();
        match &i.via {
            Via::Stdin => {
                args.push("--grant-stdin".into());
                stdin = Some(i.token.clone());
            }
            Via::Arg => {
                args.push("--grant".into());
                args.push(i.token.clone());
            }
            Via::Env => env.insert(0, ("ESCAPES_GRANT".into(), i.token.clone())),
            Via::File(p) => {
                args.push("--grant-file".into());
                args.push(p.to_string_lossy().into_owned());
            }
        }
        args.extend(i.opts.iter().cloned());
        if i.dashdash {
            args.push("--".into());
        }
        args.extend(i.argv.iter().cloned());
        let mut r = if i.strace {
            let strace = self.lab.strace.clone().unwrap();
            Run::new(strace)
                .args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
                .arg(self.path("trace"))
                .args(["--", "/usr/bin/setpriv"])
                .arg(format!("--reuid={TEST_USER}"))
                .arg(format!("--regid={TEST_USER}"))
                .args(["--init-groups", "--"])
                .arg(&esc)
                .args(&args)
        } else {
            Run::new(&esc).arg0(&esc).args(&args).as_test_user()
        };
        r = r
            .cwd(i.cwd.clone().unwrap_or_else(|| self.dir.clone()))
            .config_ns(self.config_ns())
            .timeout(RUN_LIMIT);
        for (k, v) in env {
            r = r.env(k, v);
        }
        if let Some(s) = stdin {
            r = r.stdin(s);
        }
        r
    }

    /// pam-driver imitating `sudo <args>`, the grant in OPENAPE_GRANT.
    fn pam_run(&self, i: &Input) -> Run {
        let args = i
            .sudo
            .clone()
            .unwrap_or_else(|| [i.opts.clone(), i.argv.clone()].concat());
        let mut r = if i.strace {
            // strace sets argv[0] to the path it runs: name it `sudo`.
            let link = self.path("sudo");
            let _ = std::os::unix::fs::symlink(&self.lab.driver, &link);
            Run::new(self.lab.strace.clone().unwrap())
                .args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
                .arg(self.path("trace"))
                .arg("--")
                .arg(link)
                .args(&args)
        } else {
            Run::new(&self.lab.driver).arg0("sudo").args(&args)
        };
        r = r
            .env("PAMD_SERVICE", "sudo")
            .env("PAMD_CONFDIR", self.path("pam.d"))
            .env("PAMD_USER", "root")
            .env("PAMD_RUSER", "root")
            .cwd(&self.dir)
            .timeout(RUN_LIMIT);
        if !i.token.is_empty() {
            r = r.env("OPENAPE_GRANT", &i.token);
        }
        for (k, v) in &i.env {
            r = r.env(k, v);
        }
        r
    }

    fn exec(&self, i: &Input) -> Obs {
        self.secret(&i.token);
        match self.door {
            Door::Escapes => {
                let out = self.escapes_run(i).output();
                Obs {
                    door: Door::Escapes,
                    code: out.code,
                    out,
                }
            }
            Door::Pam => pam_obs(self.pam_run(i).output()),
        }
    }

    // --- reusable row checks -------------------------------------------

    /// The decoy must never have been contacted (kept alive until checked).
    fn untouched(&self, d: Decoy, what: &'static str) {
        self.check(move |_, _| match d.hits() {
            0 => Ok(()),
            n => Err(format!(
                "{what}: the decoy at {} got {n} connections",
                d.url()
            )),
        });
    }

    /// No request at all reached the IdP.
    fn no_traffic(&self) {
        self.check(|c, _| {
            let r = c.idp.requests();
            if r.is_empty() {
                Ok(())
            } else {
                Err(format!("the IdP was contacted: {r:?}"))
            }
        });
    }

    /// The command's environment (an `env` recorder) lacks these variables.
    fn env_absent(&self, names: &'static [&'static str]) {
        self.check(move |_, obs| {
            for o in obs.iter().filter(|o| o.door == Door::Escapes) {
                for n in names {
                    let prefix = format!("{n}=");
                    if let Some(l) = o.out.stdout.lines().find(|l| l.starts_with(&prefix)) {
                        return Err(format!("{n} reached the command: {l:?}"));
                    }
                }
                if !o.out.stdout.contains("SUDO_USER=") {
                    return Err(format!("the recorder printed no environment: {}", o.out));
                }
            }
            Ok(())
        });
    }

    /// No process opened any of these paths (needs strace; skipped with a
    /// printed reason otherwise).
    fn no_open(&self, paths: &'static [&'static str]) {
        self.check(move |c, _| {
            if c.lab.strace.is_none() {
                println!("  (strace not installed: open() sub-assert skipped)");
                return Ok(());
            }
            let trace = fs::read_to_string(c.path("trace"))
                .map_err(|e| format!("no strace output: {e}"))?;
            for p in paths {
                if let Some(l) = trace.lines().find(|l| l.contains(&format!("\"{p}\""))) {
                    return Err(format!("{p} was opened: {l}"));
                }
            }
            if !trace.contains("openat") {
                return Err("strace saw no openat at all".into());
            }
            Ok(())
        });
    }

    /// The granted file exists (the benign command really ran).
    fn granted_file(&self, rel: &str) -> String {
        let p = self.path(rel);
        let s = p.to_string_lossy().into_owned();
        self.check(move |c, _| {
            if c.door == Door::Pam || p.exists() {
                Ok(())
            } else {
                Err(format!(
                    "the granted command did not run ({} absent)",
                    p.display()
                ))
            }
        });
        s
    }
}

fn pam_obs(out: Output) -> Obs {
    let code = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("auth="))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(-1);
    Obs {
        door: Door::Pam,
        code,
        out,
    }
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

/// Pieces of a token that must not appear anywhere: the payload and
/// signature segments, and their first/last 24 characters.
fn needles(token: &str) -> Vec<String> {
    let t = token.trim();
    let segs: Vec<&str> = t.split('.').collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        if i == 0 || s.len() < 24 {
            continue;
        }
        out.push((*s).to_string());
        out.push(s[..24].to_string());
        out.push(s[s.len() - 24..].to_string());
    }
    if segs.len() < 2 && t.len() >= 24 {
        out.push(t[..24].to_string());
    }
    out
}

fn via_of(door: Door) -> &'static str {
    match door {
        Door::Escapes => "escapes",
        Door::Pam => "pam:sudo",
    }
}

fn oracle(row: &Row, c: &Ctx, obs: &[Obs]) -> Vec<String> {
    let mut f = c.failures.take();
    let std_row = matches!(row.case, Case::Std(_));
    let limit = *c.bound.borrow();
    let secrets: Vec<String> = c
        .secrets
        .borrow()
        .iter()
        .flat_map(|s| needles(s))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for o in obs {
        if o.out.elapsed > limit {
            f.push(format!(
                "({}) took {:?}, bound {limit:?}",
                o.door, o.out.elapsed
            ));
        }
        let want = match row.expect {
            Expect::Refused { exit, pam, .. } => Some(match o.door {
                Door::Escapes => exit,
                Door::Pam => pam,
            }),
            Expect::Granted => Some(match o.door {
                Door::Escapes => 0,
                Door::Pam => PAM_SUCCESS,
            }),
            Expect::Custom(_) => None,
        };
        if let Some(w) = want
            && o.code != w
        {
            f.push(format!(
                "({}) code {} instead of {w}\n{}",
                o.door, o.code, o.out
            ));
        }
        for n in &secrets {
            if o.out.stdout.contains(n.as_str()) || o.out.stderr.contains(n.as_str()) {
                f.push(format!("({}) token text in the output: …{n}…", o.door));
                break;
            }
        }
    }
    // 1. nothing hostile ran.
    let mut paths = vec![c.marker()];
    paths.extend(c.hostile.borrow().iter().cloned());
    for p in paths {
        if p.exists() {
            f.push(format!("HOSTILE COMMAND RAN: {} exists", p.display()));
        }
    }
    // 2. the audit log: whole JSON lines, the right event and step.
    let text = c.audit_text();
    for n in &secrets {
        if text.contains(n.as_str()) {
            f.push(format!("token text in the audit log: …{n}…"));
            break;
        }
    }
    let mut lines = Vec::new();
    for l in text.lines() {
        match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => lines.push(v),
            _ => f.push(format!(
                "audit line is not a JSON object: {:?}",
                l.chars().take(200).collect::<String>()
            )),
        }
    }
    let runs = obs.len();
    let events = |e: &str| lines.iter().filter(|l| l["event"] == e).count();
    let audit = match row.expect {
        Expect::Refused { esc, pam_audit, .. } => Some(match c.door {
            Door::Escapes => esc,
            Door::Pam => pam_audit,
        }),
        _ => None,
    };
    match (row.expect, audit) {
        (_, Some(Audit::Nothing)) if !lines.is_empty() => {
            f.push(format!("expected no audit line, found: {text}"));
        }
        (_, Some(Audit::Nothing)) => {}
        (_, Some(Audit::Step(step))) => {
            if std_row && lines.len() != runs {
                f.push(format!(
                    "expected exactly {runs} audit line(s), found {}: {}",
                    lines.len(),
                    text.chars().take(600).collect::<String>()
                ));
            }
            if events("grant_run") > 0 {
                f.push(format!("a grant_run line for a refusal: {text}"));
            }
            match lines.last() {
                None => f.push("no denied audit line".into()),
                Some(l) => {
                    if l["event"] != "denied" || l["step"] != step {
                        f.push(format!("last audit line is not denied at {step}: {l}"));
                    }
                    if l["via"] != via_of(c.door) {
                        f.push(format!("audit via is not {}: {l}", via_of(c.door)));
                    }
                    if l["reason"].as_str().is_none_or(str::is_empty) {
                        f.push(format!("denied line without a reason: {l}"));
                    }
                    let uid = match c.door {
                        Door::Escapes => test_user().uid,
                        Door::Pam => 0,
                    };
                    if l["real_uid"] != uid {
                        f.push(format!("real_uid is not {uid}: {l}"));
                    }
                }
            }
        }
        (Expect::Granted, _) => {
            if events("denied") > 0 || events("grant_run") != runs {
                f.push(format!(
                    "expected {runs} grant_run line(s) and no denied: {text}"
                ));
            }
            for l in &lines {
                if !l["ts"].as_str().is_some_and(|t| t.ends_with('Z')) {
                    f.push(format!("audit ts is not UTC: {l}"));
                }
            }
        }
        _ => {}
    }
    // 5. consumption.
    for (id, n) in c.grants.borrow().iter() {
        let got = c.idp.consume_count(id);
        if got != *n {
            f.push(format!("grant {id} consumed {got} times, expected {n}"));
        }
    }
    // Row-specific checks.
    for chk in c.checks.take() {
        if let Err(e) = chk(c, obs) {
            f.push(e);
        }
    }
    f
}

// ---------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------

struct JobResult {
    row: usize,
    door: Door,
    failures: Vec<String>,
    hostile_ran: bool,
    codes: Vec<i32>,
    secs: f64,
}

fn run_job(lab: &Arc<Lab>, idx: usize, row: &Row, door: Door) -> JobResult {
    let start = Instant::now();
    let mut hostile_ran = false;
    let mut codes = Vec::new();
    let res = catch_unwind(AssertUnwindSafe(|| {
        let c = Ctx::new(Arc::clone(lab), row.name, door);
        let obs = match row.case {
            Case::Std(build) => {
                let input = build(&c);
                vec![c.exec(&input)]
            }
            Case::Custom(run) => run(&c),
        };
        let failures = oracle(row, &c, &obs);
        let refused = matches!(row.expect, Expect::Refused { .. });
        hostile_ran = failures.iter().any(|f| f.starts_with("HOSTILE"))
            || (refused && obs.iter().any(|o| o.code == 0));
        codes = obs.iter().map(|o| o.code).collect();
        failures
    }));
    let failures = match res {
        Ok(f) => f,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panic".into());
            vec![format!("row panicked: {msg}")]
        }
    };
    JobResult {
        row: idx,
        door,
        failures,
        hostile_ran,
        codes,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Run the selected rows (parallel, then the timing-sensitive groups one
/// by one) and return (rows run, results).
fn run_rows(select: impl Fn(&Row) -> bool) -> (usize, Vec<JobResult>, Vec<Row>) {
    let table = table();
    let lab = Arc::new(Lab::new());
    let serial = |r: &Row| matches!(r.group, Group::Concurrency | Group::Signals);
    let jobs: Vec<(usize, Door)> = table
        .iter()
        .enumerate()
        .filter(|(_, r)| select(r))
        .flat_map(|(i, r)| r.doors.list().iter().map(move |d| (i, *d)))
        .collect();
    let rows_run = table.iter().filter(|r| select(r)).count();
    let (par, ser): (Vec<_>, Vec<_>) = jobs.iter().partition(|(i, _)| !serial(&table[*i]));
    let results = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(i, door)) = par.get(n) else { break };
                    let r = run_job(&lab, i, &table[i], door);
                    results.lock().unwrap().push(r);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    for &(i, door) in &ser {
        results.push(run_job(&lab, i, &table[i], door));
    }
    results.sort_by_key(|r| (table[r.row].group, r.row, r.door == Door::Pam));
    (rows_run, results, table)
}

fn report(rows_run: usize, results: &[JobResult], table: &[Row]) -> (usize, usize) {
    let mut failed = 0;
    let mut ran = 0;
    for r in results {
        let row = &table[r.row];
        let status = if r.failures.is_empty() {
            "ok  "
        } else {
            "FAIL"
        };
        println!(
            "{status} {:<11} {:<38} {:<7} got {:<10} want {}  {:.2}s",
            row.group.to_string(),
            row.name,
            r.door.to_string(),
            format!("{:?}", r.codes)
                .chars()
                .take(10)
                .collect::<String>(),
            row.expect,
            r.secs
        );
        for f in &r.failures {
            println!("       - {}", f.replace('\n', "\n         "));
        }
        failed += usize::from(!r.failures.is_empty());
        ran += usize::from(r.hostile_ran);
    }
    let run: BTreeSet<usize> = results.iter().map(|r| r.row).collect();
    let mut groups: Vec<(Group, usize)> = Vec::new();
    for i in run {
        let g = table[i].group;
        match groups.iter_mut().find(|(x, _)| *x == g) {
            Some((_, n)) => *n += 1,
            None => groups.push((g, 1)),
        }
    }
    groups.sort();
    let per_group: Vec<String> = groups.iter().map(|(g, n)| format!("{g} {n}")).collect();
    let line = format!(
        "hostile: {rows_run} rows ({} runs over escapes and PAM; {}), {ran} commands ran, {failed} runs failed",
        results.len(),
        per_group.join(", ")
    );
    println!("{line}");
    // Bypass the test harness's capture so the summary is always visible.
    let _ = writeln!(io::stderr(), "{line}");
    (failed, ran)
}

/// Every row without a known bug: all must pass.
#[test]
fn hostile_table() {
    if !require_root() {
        return;
    }
    let start = Instant::now();
    let (rows, results, table) = run_rows(|_| true);
    let (failed, ran) = report(rows, &results, &table);
    let _ = writeln!(
        io::stderr(),
        "hostile: {rows} rows, {ran} commands ran ({:.0} s)",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(ran, 0, "a hostile command ran");
    assert_eq!(
        failed, 0,
        "{failed} hostile runs failed (see the table above)"
    );
    assert!(rows >= 60, "only {rows} rows");
}

fn run_named(name: &str) {
    if !require_root() {
        return;
    }
    let (rows, results, table) = run_rows(|r| r.name == name);
    assert_eq!(rows, 1, "no row named {name}");
    let (failed, ran) = report(rows, &results, &table);
    assert_eq!((failed, ran), (0, 0), "row {name} failed");
}

/// Run one row by name: `HOSTILE_ROW=name cargo test ... -- --ignored one_row`.
#[test]
#[ignore = "debugging aid: runs the row named by HOSTILE_ROW"]
fn one_row() {
    if let Ok(name) = std::env::var("HOSTILE_ROW") {
        run_named(&name);
    }
}

// ---------------------------------------------------------------------------
// Token helpers
// ---------------------------------------------------------------------------

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

/// HS256 over the claims, MAC'd with `key` (the Ed25519 public key in
/// some form: the key-confusion attack).
fn hs256(c: &Ctx, key: &[u8]) -> Input {
    let input = format!(
        "{}.{}",
        b64(json!({"alg":"HS256","typ":"JWT","kid":c.idp.kid()}).to_string()),
        b64(c.claims(&c.marker_cmd()).to_string())
    );
    let tok = format!("{input}.{}", b64(hmac_sha256(key, input.as_bytes())));
    c.input(tok)
}

fn jwk_x(c: &Ctx) -> String {
    let jwks: Value = serde_json::from_str(&c.idp.jwks_json()).unwrap();
    jwks["keys"][0]["x"].as_str().unwrap().to_string()
}

/// Marker-command claims with one claim changed (`Value::Null` removes it).
fn with_claim(c: &Ctx, k: &str, v: Value) -> Input {
    let mut claims = c.claims(&c.marker_cmd());
    if v.is_null() {
        claims.as_object_mut().unwrap().remove(k);
    } else {
        claims[k] = v;
    }
    let t = c.sign(claims);
    c.input(t)
}

/// Marker-command claims as JSON text, edited as text (duplicate keys).
fn claims_text(c: &Ctx) -> String {
    c.claims(&c.marker_cmd()).to_string()
}

/// A second Ed25519 key (another IdP's), unknown to this row's issuer.
fn foreign_idp() -> TestIdp {
    TestIdp::start()
}

fn spec_with(c: &Ctx, f: impl FnOnce(&mut GrantSpec)) -> GrantSpec {
    let mut s = c.spec(&c.marker_cmd());
    f(&mut s);
    s
}

fn agent_login_token(c: &Ctx) -> String {
    let post = |path: &str, body: Value| -> Value {
        let (status, text) = http_client::request(
            c.idp.addr(),
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
    login["token"].as_str().unwrap().to_string()
}

/// Every file below `dir` (relative paths).
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

/// kid with path characters: refused at the key step, and nothing is
/// created outside the cache directory (cache files are named by hash).
fn kid_path(c: &Ctx, kid: &str, outside: PathBuf) -> Input {
    let before = tree(&c.dir);
    let passwd = fs::metadata("/etc/passwd").and_then(|m| m.modified()).ok();
    c.hostile(outside);
    c.check(move |c, _| {
        let after = tree(&c.dir);
        for p in after.difference(&before) {
            let s = p.to_string_lossy();
            let ok = s == "log/audit.log"
                || s == "marker"
                || (s.starts_with("cache/jwks-") && s.len() == "cache/jwks-".len() + 64 + 5);
            if !ok {
                return Err(format!("a file appeared outside the cache: {s}"));
            }
        }
        if fs::metadata("/etc/passwd").and_then(|m| m.modified()).ok() != passwd {
            return Err("/etc/passwd changed".into());
        }
        Ok(())
    });
    let t = c.sign_h(json!({"kid": kid}), c.claims(&c.marker_cmd()));
    c.input(t)
}

/// A token whose header names a key location (`jku`/`x5u`) or carries a
/// key (`jwk`/`x5c`) of another signer; the decoy must get no connection.
fn foreign_key_header(c: &Ctx, field: &str, real_kid: bool) -> Input {
    let attacker = foreign_idp();
    let decoy = Decoy::start();
    let value = match field {
        "jku" | "x5u" => json!(format!("{}/.well-known/jwks.json", decoy.url())),
        "jwk" => {
            let jwks: Value = serde_json::from_str(&attacker.jwks_json()).unwrap();
            jwks["keys"][0].clone()
        }
        _ => json!([STANDARD_NO_PAD.encode(b"not a certificate, but it looks like one")]),
    };
    let kid = if real_kid {
        c.idp.kid()
    } else {
        attacker.kid()
    };
    let mut header = serde_json::Map::new();
    header.insert("kid".into(), json!(kid));
    header.insert(field.into(), value);
    let tok = attacker.sign(Value::Object(header), c.claims(&c.marker_cmd()));
    c.secret(&tok);
    c.untouched(decoy, "a key-location header was followed");
    c.keep(attacker);
    c.input(tok)
}

/// Header and payload encoded with `enc` and signed over exactly that
/// signing input (so only the encoding is wrong).
fn encoded(c: &Ctx, header: &str, payload: &str, enc: &dyn Fn(&[u8]) -> String) -> String {
    let input = format!("{}.{}", enc(header.as_bytes()), enc(payload.as_bytes()));
    let sig = c.idp.sign_input(input.as_bytes());
    let t = format!("{input}.{sig}");
    c.secret(&t);
    t
}

/// Deeply nested JSON signed by an attacker under the real kid: the
/// parser must survive it (no stack exhaustion) and the signature fail.
/// Nesting inside unknown claims or header fields is skipped by serde_json
/// without recursion, so it is not a parse error.
fn deep_forged(c: &Ctx, header: &str, payload: &str) -> Input {
    let attacker = foreign_idp();
    let t = attacker.sign_raw(header.as_bytes(), payload.as_bytes());
    assert!(t.len() < 16 * 1024, "{} bytes", t.len());
    c.secret(&t);
    c.keep(attacker);
    c.input(t)
}

// ---------------------------------------------------------------------------
// Environment helpers
// ---------------------------------------------------------------------------

/// The recorder command: prints the command's environment.
fn recorder() -> Vec<String> {
    owned(&["env"])
}

/// A granted recorder run with these extra variables.
fn env_row(c: &Ctx, argv: Vec<String>, vars: &[(&str, String)]) -> Input {
    let t = c.grant_used(&argv);
    let mut i = Input::new(t, argv);
    for (k, v) in vars {
        i = i.env(k, v.clone());
    }
    i
}

/// As [`env_row`], after a control: the same command with the same
/// variables, run directly as root, does trigger the payload (which is
/// then removed). So an absent payload later means escapes dropped it.
fn controlled_env_row(
    c: &Ctx,
    argv: Vec<String>,
    vars: &[(&str, String)],
    payload: &Path,
) -> Input {
    let _ = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", SANE_PATH)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(&c.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if payload.exists() {
        let _ = fs::remove_file(payload);
    } else if !vars.iter().any(|(_, v)| v.starts_with("/nonexistent")) {
        c.fail(format!(
            "control: {argv:?} with {:?} did not trigger the payload",
            vars.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        ));
    }
    env_row(c, argv, vars)
}

/// Build a shared object whose constructor creates `payload` (needs cc).
fn preload_payload(c: &Ctx, payload: &Path) -> Option<PathBuf> {
    let cc = c.lab.cc.clone()?;
    let src = c.path("payload.c");
    fs::write(
        &src,
        format!(
            "#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void hostile(void) {{ int fd = open(\"{}\", O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }}\n",
            payload.display()
        ),
    )
    .unwrap();
    let so = c.path("payload.so");
    let ok = Command::new(cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .env_clear()
        .env("PATH", SANE_PATH)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    set_owner_mode(&so, test_user().uid, test_user().gid, 0o755);
    Some(so)
}

// ---------------------------------------------------------------------------
// IdP helpers
// ---------------------------------------------------------------------------

/// Marker grant with `fault` on the JWKS (fresh cache).
fn jwks_fault(c: &Ctx, fault: Fault) -> Input {
    let t = c.grant(&c.marker_cmd());
    c.idp.set_fault_for("/.well-known/", fault);
    c.input(t)
}

/// Marker grant, cache warmed by `escapes verify`, `fault` on consume.
fn consume_fault(c: &Ctx, fault: Fault) -> Input {
    consume_fault_n(c, fault, 0)
}

/// As [`consume_fault`], for a fault that lets the IdP consume first.
fn consume_fault_n(c: &Ctx, fault: Fault, consumed: usize) -> Input {
    let argv = c.marker_cmd();
    let t = c.issue_n(&c.spec(&argv), consumed).jwt;
    c.warm(&t, &argv);
    c.idp.set_fault_for("/api/grants/", fault);
    c.input(t)
}

/// A JWKS document whose only key is `key` (with the token's kid).
fn jwks_only(c: &Ctx, mut key: Value) -> Input {
    key["kid"] = json!(c.idp.kid());
    c.idp
        .set_jwks_override(Some(json!({ "keys": [key] }).to_string()));
    let t = c.grant(&c.marker_cmd());
    c.input(t)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Test-CA certificate, no ca_bundle (compiled-in roots only).
    Untrusted,
    /// ca_bundle names a different CA.
    OtherCa,
    /// ca_bundle is the right CA, the certificate names another host.
    WrongName,
    /// ca_bundle is the right CA, the certificate expired.
    Expired,
    /// No ca_bundle; the caller sets SSL_CERT_FILE/SSL_CERT_DIR to the CA.
    CallerCa,
    /// Control: ca_bundle is the right CA.
    Right,
}

fn tls_row(c: &Ctx, kind: Tls) -> Input {
    let ca = TestCa::new("openape hostile test CA");
    let san = if kind == Tls::WrongName {
        "localhost"
    } else {
        "127.0.0.1"
    };
    let (chain, key) = ca.leaf(san, kind == Tls::Expired);
    let front = TlsFront::start(c.idp.addr(), chain, key);
    let issuer = front.issuer();
    let ca_pem = c.root_file("ca.pem", ca.pem().as_bytes(), 0o644);
    let bundle = match kind {
        Tls::OtherCa => Some(c.root_file(
            "other-ca.pem",
            TestCa::new("another CA").pem().as_bytes(),
            0o644,
        )),
        Tls::WrongName | Tls::Expired | Tls::Right => Some(ca_pem.clone()),
        Tls::Untrusted | Tls::CallerCa => None,
    };
    {
        let mut cfg = c.cfg.borrow_mut();
        cfg.issuers = vec![issuer.clone()];
        if let Some(b) = bundle {
            cfg.tail = format!("[tls]\nca_bundle = {}\n", toml_str(&b.to_string_lossy()));
        }
    }
    c.write_config();
    let argv = if kind == Tls::Right {
        vec!["touch".to_string(), c.granted_file("granted")]
    } else {
        c.marker_cmd()
    };
    let spec = c.spec(&argv);
    let g = c.issue_n(&spec, usize::from(kind == Tls::Right));
    let mut claims = c.idp.claims_for(&spec, &g.grant_id, now() as u64);
    claims["iss"] = json!(issuer);
    let tok = c.sign(claims);
    let mut i = Input::new(tok, argv);
    if kind == Tls::CallerCa {
        let user_ca = c.user_file("user-ca.pem", ca.pem().as_bytes(), 0o644);
        let dir = c.user_dir("user-certs");
        fs::copy(&user_ca, dir.join("ca.pem")).unwrap();
        i = i
            .env("SSL_CERT_FILE", user_ca.to_string_lossy())
            .env("SSL_CERT_DIR", dir.to_string_lossy())
            .env("CURL_CA_BUNDLE", user_ca.to_string_lossy());
    }
    let right = kind == Tls::Right;
    c.check(move |c, _| {
        let conns = front.conns.load(Ordering::SeqCst);
        let fwd = front.forwarded.load(Ordering::SeqCst);
        if conns == 0 {
            return Err("the HTTPS issuer was never contacted".into());
        }
        match (right, fwd, c.idp.requests().len()) {
            (false, 0, 0) => Ok(()),
            (false, f, r) => Err(format!(
                "a request passed the untrusted TLS connection ({f} forwarded, {r} at the IdP)"
            )),
            (true, 0, _) => Err("control: nothing passed the trusted TLS connection".into()),
            (true, _, _) => Ok(()),
        }
    });
    i
}

// ---------------------------------------------------------------------------
// Filesystem helpers
// ---------------------------------------------------------------------------

/// Config at `path` (root-owned 0600 unless changed by the row).
fn config_at(c: &Ctx, path: PathBuf) -> Input {
    let text = c.cfg.borrow().render();
    fs::write(&path, text).unwrap();
    set_owner_mode(&path, 0, 0, 0o600);
    c.set_config_path(path);
    c.no_traffic();
    let t = c.grant(&c.marker_cmd());
    c.input(t)
}

fn grant_file(c: &Ctx, path: PathBuf) -> Input {
    let t = c.grant(&c.marker_cmd());
    c.check(|_, obs| {
        for o in obs {
            if o.out.stderr.contains("root:") || o.out.stdout.contains("root:") {
                return Err(format!("file content echoed: {}", o.out));
            }
        }
        Ok(())
    });
    c.input(t).via(Via::File(path))
}

// ---------------------------------------------------------------------------
// Custom rows: concurrency, signals, argc 0
// ---------------------------------------------------------------------------

fn as_obs(door: Door, out: Output) -> Obs {
    match door {
        Door::Escapes => Obs {
            door,
            code: out.code,
            out,
        },
        Door::Pam => pam_obs(out),
    }
}

/// A command that appends one line to `<dir>/ran` per run.
fn counter_cmd(c: &Ctx) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo ran >> {}", c.p("ran")),
    ]
}

fn count_ran(c: &Ctx) -> usize {
    fs::read_to_string(c.path("ran"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// 50 parallel uses of one grant (once or timed).
fn parallel(c: &Ctx, grant_type: GrantType) -> Vec<Obs> {
    const N: usize = 50;
    c.set_bound(Duration::from_secs(40));
    // These rows are about atomic consumption and whole audit lines, not
    // deadlines: 50 processes on a loaded 2-core machine may need more than
    // the 2 s the other rows use (a run over the deadline fails closed,
    // exit 1, which is right but not what this row measures).
    c.cfg.borrow_mut().http_timeout = 30;
    c.write_config();
    let argv = counter_cmd(c);
    let mut spec = c.spec(&argv);
    spec.grant_type = grant_type;
    let want_runs = if grant_type == GrantType::Once { 1 } else { N };
    let g = c.issue_n(&spec, want_runs);
    c.warm(&g.jwt, &argv);
    let input = Input::new(g.jwt.clone(), argv);
    let runs: Vec<Run> = (0..N)
        .map(|_| match c.door {
            Door::Escapes => c.escapes_run(&input),
            Door::Pam => c.pam_run(&input),
        })
        .collect();
    let door = c.door;
    let outs: Vec<Output> = thread::scope(|s| {
        let hs: Vec<_> = runs
            .into_iter()
            .map(|r| s.spawn(move || r.output()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let obs: Vec<Obs> = outs.into_iter().map(|o| as_obs(door, o)).collect();
    let refused_code = match door {
        Door::Escapes => 5,
        Door::Pam => PAM_AUTH_ERR,
    };
    let ok = obs.iter().filter(|o| o.code == 0).count();
    let no = obs.iter().filter(|o| o.code == refused_code).count();
    if ok != want_runs || ok + no != N {
        let mut codes: Vec<i32> = obs.iter().map(|o| o.code).collect();
        codes.sort_unstable();
        c.fail(format!(
            "{ok} succeeded, {no} refused (codes {codes:?}), expected {want_runs} succeeded"
        ));
    }
    if door == Door::Escapes && count_ran(c) != want_runs {
        c.fail(format!(
            "the command ran {} times, expected {want_runs}",
            count_ran(c)
        ));
    }
    let text = c.audit_text();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.len() != N || text.lines().count() != N {
        c.fail(format!(
            "{} audit lines ({} whole JSON), expected {N}",
            text.lines().count(),
            lines.len()
        ));
    }
    let runs_logged = lines.iter().filter(|l| l["event"] == "grant_run").count();
    let denied_consume = lines
        .iter()
        .filter(|l| l["event"] == "denied" && l["step"] == "consume")
        .count();
    if runs_logged != want_runs || denied_consume != N - want_runs {
        c.fail(format!(
            "{runs_logged} grant_run and {denied_consume} consume refusals logged, expected {want_runs} and {}",
            N - want_runs
        ));
    }
    obs
}

/// A signal to escapes while the IdP hangs on consume; then a fresh grant
/// must work.
fn signal_row(c: &Ctx, sig: i32) -> Vec<Obs> {
    let argv = c.marker_cmd();
    let tok = c.grant(&argv);
    c.warm(&tok, &argv);
    c.idp.set_fault_for("/api/grants/", Fault::Hang);
    let esc = c.lab.escapes();
    let ns = c.config_ns();
    let mut cmd = Command::new("/usr/bin/setpriv");
    // SAFETY: runs in the forked child before exec, as root; ConfigNs::enter
    // makes system calls only, on strings prepared before the fork.
    unsafe { cmd.pre_exec(move || ns.enter()) };
    let mut child = cmd
        .arg(format!("--reuid={TEST_USER}"))
        .arg(format!("--regid={TEST_USER}"))
        .arg("--init-groups")
        .arg("--")
        .arg(&esc)
        .arg("--grant-stdin")
        .arg("--")
        .args(&argv)
        .env_clear()
        .env("PATH", SANE_PATH)
        .current_dir(&c.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let start = Instant::now();
    {
        let mut w = child.stdin.take().unwrap();
        let _ = w.write_all(tok.as_bytes());
    }
    let pid = child.id() as i32;
    while c.idp.request_count("/api/grants/") == 0 && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(2));
    }
    if c.idp.request_count("/api/grants/") == 0 {
        c.fail("escapes never reached the consume call");
    }
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(pid, sig) };
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(20) {
            // SAFETY: as above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break child.wait().unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if code != 128 + sig && code != 1 {
        c.fail(format!(
            "escapes ended with {code} after signal {sig}, expected death by it or exit 1"
        ));
    }
    let first = Obs {
        door: Door::Escapes,
        code,
        out: Output {
            code,
            stdout,
            stderr,
            elapsed,
            what: format!("escapes (signal {sig} during consume)"),
        },
    };
    // The next invocation, with a fresh grant, works.
    c.idp.clear_faults();
    let after = vec!["touch".to_string(), c.granted_file("after")];
    let t2 = c.grant_used(&after);
    let second = c.exec(&Input::new(t2, after));
    if second.code != 0 {
        c.fail(format!("the next invocation failed: {}", second.out));
    }
    let text = c.audit_text();
    let runs = text.lines().filter(|l| l.contains("\"grant_run\"")).count();
    if runs != 1 {
        c.fail(format!(
            "expected exactly one grant_run (the next invocation): {text}"
        ));
    }
    vec![first, second]
}

fn argc_zero(c: &Ctx) -> Vec<Obs> {
    let t = c.grant(&c.marker_cmd());
    c.secret(&t);
    c.no_traffic();
    let out = exec_raw(
        &c.lab.escapes(),
        &[],
        &[
            ("GCONV_PATH", "."),
            ("ESCAPES_GRANT", &t),
            ("PATH", SANE_PATH),
        ],
        true,
        &c.dir,
        RUN_LIMIT,
    );
    vec![as_obs(Door::Escapes, out)]
}

fn full_disk(c: &Ctx) -> Input {
    let log = c.path("log");
    let full = FullTmpfs::mount(&log)
        .unwrap_or_else(|| panic!("cannot mount a tmpfs on {}", log.display()));
    c.keep(full);
    let t = c.grant(&c.marker_cmd());
    c.input(t)
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

fn table() -> Vec<Row> {
    use Doors::{Both, Escapes as Esc};
    use Group::*;
    vec![
        // ------------------------------------------------------------ tokens
        row(
            "alg-none-unsigned",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let claims = c.claims(&c.marker_cmd());
                let t = format!(
                    "{}.{}.",
                    b64(json!({"alg":"none","typ":"JWT","kid":c.idp.kid()}).to_string()),
                    b64(claims.to_string())
                );
                c.input(t)
            }),
        ),
        row(
            "alg-none-with-valid-signature",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.sign_h(json!({"alg": "none"}), c.claims(&c.marker_cmd()));
                c.input(t)
            }),
        ),
        row(
            "hs256-keyed-with-x-bytes",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let key = URL_SAFE_NO_PAD.decode(jwk_x(c)).unwrap();
                hs256(c, &key)
            }),
        ),
        row(
            "hs256-keyed-with-x-string",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| hs256(c, jwk_x(c).as_bytes())),
        ),
        row(
            "hs256-keyed-with-jwks-json",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| hs256(c, c.idp.jwks_json().as_bytes())),
        ),
        row(
            "kid-unknown",
            Tokens,
            Both,
            refused("key"),
            Case::Std(|c| {
                let t = c.sign_h(
                    json!({"kid": "hostile-unknown-kid"}),
                    c.claims(&c.marker_cmd()),
                );
                c.input(t)
            }),
        ),
        row(
            "kid-absent",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.sign_h(json!({"kid": null}), c.claims(&c.marker_cmd()));
                c.input(t)
            }),
        ),
        row(
            "kid-empty",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.sign_h(json!({"kid": ""}), c.claims(&c.marker_cmd()));
                c.input(t)
            }),
        ),
        row(
            "kid-etc-passwd-traversal",
            Tokens,
            Both,
            refused("key"),
            Case::Std(|c| {
                let out = c.path("etc-passwd-probe");
                kid_path(c, "../../etc/passwd", out)
            }),
        ),
        row(
            "kid-traversal-into-row-dir",
            Tokens,
            Both,
            refused("key"),
            Case::Std(|c| {
                let out = c.path("kid-escape");
                kid_path(c, "../kid-escape", out)
            }),
        ),
        row(
            "kid-rotated-out-key",
            Tokens,
            Both,
            refused("key"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.idp.rotate_key();
                c.input(t)
            }),
        ),
        row(
            "jku-to-attacker-jwks",
            Tokens,
            Both,
            refused("key"),
            Case::Std(|c| foreign_key_header(c, "jku", false)),
        ),
        row(
            "x5u-to-attacker-with-real-kid",
            Tokens,
            Both,
            refused("signature"),
            Case::Std(|c| foreign_key_header(c, "x5u", true)),
        ),
        row(
            "jwk-embedded-attacker-key",
            Tokens,
            Both,
            refused("key"),
            Case::Std(|c| foreign_key_header(c, "jwk", false)),
        ),
        row(
            "x5c-embedded-chain",
            Tokens,
            Both,
            refused("signature"),
            Case::Std(|c| foreign_key_header(c, "x5c", true)),
        ),
        row(
            "foreign-key-with-real-kid",
            Tokens,
            Both,
            refused("signature"),
            Case::Std(|c| {
                let attacker = foreign_idp();
                let t = attacker.sign(json!({"kid": c.idp.kid()}), c.claims(&c.marker_cmd()));
                c.keep(attacker);
                c.input(t)
            }),
        ),
        row(
            "signature-last-char-flipped",
            Tokens,
            Both,
            refused("signature"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                let (signed, sig) = t.rsplit_once('.').unwrap();
                let mut b = sig.as_bytes().to_vec();
                let i = b.len() / 2;
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                c.input(format!("{signed}.{}", String::from_utf8(b).unwrap()))
            }),
        ),
        row(
            "crit-header",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.sign_h(
                    json!({"crit": ["exp"], "exp": 1}),
                    c.claims(&c.marker_cmd()),
                );
                c.input(t)
            }),
        ),
        row(
            "typ-at+jwt",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.sign_h(json!({"typ": "at+jwt"}), c.claims(&c.marker_cmd()));
                c.input(t)
            }),
        ),
        row(
            "duplicate-header-kid",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let kid = c.idp.kid();
                let h = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}","kid":"{kid}"}}"#);
                let t = c.sign_raw(h.as_bytes(), claims_text(c).as_bytes());
                c.input(t)
            }),
        ),
        row(
            "duplicate-header-alg",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let h = format!(
                    r#"{{"alg":"none","typ":"JWT","kid":"{}","alg":"EdDSA"}}"#,
                    c.idp.kid()
                );
                let t = c.sign_raw(h.as_bytes(), claims_text(c).as_bytes());
                c.input(t)
            }),
        ),
        row(
            "duplicate-payload-target-host",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let p = claims_text(c).replacen('{', r#"{"target_host":"otherhost","#, 1);
                let t = c.sign_raw(c.header_json().as_bytes(), p.as_bytes());
                c.input(t)
            }),
        ),
        row(
            "duplicate-payload-exp",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let p = claims_text(c).replacen('{', r#"{"exp":1,"#, 1);
                let t = c.sign_raw(c.header_json().as_bytes(), p.as_bytes());
                c.input(t)
            }),
        ),
        row(
            "b64-padding-equals",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let mut p = claims_text(c);
                if p.len().is_multiple_of(3) {
                    // 8 more bytes: no longer a multiple of 3, so padded.
                    p = p.replacen('{', r#"{"xy":0,"#, 1);
                }
                let t = encoded(c, &c.header_json(), &p, &|b| URL_SAFE.encode(b));
                assert!(t.contains('='));
                c.input(t)
            }),
        ),
        row(
            "b64-plus-slash-alphabet",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                let mut t = String::new();
                for n in 0..64 {
                    claims["note"] = json!(format!("{}>>>???~~~", "\u{fb}".repeat(n)));
                    t = encoded(c, &c.header_json(), &claims.to_string(), &|b| {
                        STANDARD_NO_PAD.encode(b)
                    });
                    if t.contains('+') || t.contains('/') {
                        break;
                    }
                }
                assert!(t.contains('+') || t.contains('/'));
                c.input(t)
            }),
        ),
        row(
            "b64-padded-signature",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                let (signed, sig) = t.rsplit_once('.').unwrap();
                let padded = URL_SAFE.encode(URL_SAFE_NO_PAD.decode(sig).unwrap());
                c.input(format!("{signed}.{padded}"))
            }),
        ),
        row(
            "grant-arg-with-trailing-newline",
            Tokens,
            Esc,
            refused("parse"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(format!("{t}\n")).via(Via::Arg)
            }),
        ),
        row(
            "grant-stdin-two-trailing-newlines",
            Tokens,
            Esc,
            refused("parse"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(format!("{t}\n\n"))
            }),
        ),
        row(
            "grant-crlf-and-leading-space",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(format!(" {t}\r\n"))
            }),
        ),
        row(
            "huge-token-20kib",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                claims["pad"] = json!("p".repeat(15 * 1024));
                let t = c.sign(claims);
                assert!(t.len() > 20 * 1024);
                c.input(t)
            }),
        ),
        row(
            "huge-token-1mib-stdin",
            Tokens,
            Esc,
            refused("parse"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                claims["pad"] = json!("p".repeat(780 * 1024));
                let t = c.sign(claims);
                assert!(t.len() > 1024 * 1024);
                c.input(t)
            }),
        ),
        row(
            "deep-json-array-5000-forged",
            Tokens,
            Both,
            refused("signature"),
            Case::Std(|c| {
                let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
                let p = claims_text(c).replacen('{', &format!(r#"{{"deep":{deep},"#), 1);
                deep_forged(c, &c.header_json(), &p)
            }),
        ),
        row(
            "deep-json-object-1500-in-header-forged",
            Tokens,
            Both,
            refused("signature"),
            Case::Std(|c| {
                let deep = format!("{}1{}", r#"{"a":"#.repeat(1500), "}".repeat(1500));
                let h = c
                    .header_json()
                    .replacen('{', &format!(r#"{{"deep":{deep},"#), 1);
                deep_forged(c, &h, &claims_text(c))
            }),
        ),
        row(
            "deep-json-40k-over-size-cap",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                // 40k deep: over the 16 KiB cap, under the 128 KiB a single
                // environment variable may hold (the PAM door).
                let deep = format!("{}{}", "[".repeat(40_000), "]".repeat(40_000));
                let p = claims_text(c).replacen('{', &format!(r#"{{"deep":{deep},"#), 1);
                let t = c.sign_raw(c.header_json().as_bytes(), p.as_bytes());
                c.input(t)
            }),
        ),
        row(
            "exp-missing",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "exp", Value::Null)),
        ),
        row(
            "exp-past",
            Tokens,
            Both,
            refused("time"),
            Case::Std(|c| {
                let spec = c.spec(&c.marker_cmd());
                let g = c.issue(&spec);
                let claims = c.idp.claims_for(&spec, &g.grant_id, (now() - 1000) as u64);
                let t = c.sign(claims);
                c.input(t)
            }),
        ),
        row(
            "exp-string",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "exp", json!((now() + 300).to_string()))),
        ),
        row(
            "exp-float",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "exp", json!(now() as f64 + 300.5))),
        ),
        row(
            "exp-null",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                claims["exp"] = Value::Null;
                let t = c.sign(claims);
                c.input(t)
            }),
        ),
        row(
            "exp-1e300",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "exp", json!(1e300))),
        ),
        row(
            "nbf-future",
            Tokens,
            Both,
            refused("time"),
            Case::Std(|c| with_claim(c, "nbf", json!(now() + 3600))),
        ),
        row(
            "nbf-string",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "nbf", json!("0"))),
        ),
        row(
            "iat-future",
            Tokens,
            Both,
            refused("time"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                claims["iat"] = json!(now() + 600);
                claims["exp"] = json!(now() + 900);
                let t = c.sign(claims);
                c.input(t)
            }),
        ),
        row(
            "once-grant-lives-2h",
            Tokens,
            Both,
            refused("time"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                claims["iat"] = json!(now() - 60);
                claims["exp"] = json!(now() - 60 + 7200);
                let t = c.sign(claims);
                c.input(t)
            }),
        ),
        row(
            "iss-not-allowed",
            Tokens,
            Both,
            refused("issuer"),
            Case::Std(|c| {
                let other = foreign_idp();
                let g = other.issue(&c.spec(&c.marker_cmd()));
                c.secret(&g.jwt);
                c.check(move |_, _| match other.requests().len() {
                    0 => Ok(()),
                    n => Err(format!("the unlisted issuer got {n} requests")),
                });
                c.input(g.jwt)
            }),
        ),
        row(
            "iss-trailing-slash",
            Tokens,
            Both,
            refused("issuer"),
            Case::Std(|c| {
                let iss = format!("{}/", c.idp.issuer());
                with_claim(c, "iss", json!(iss))
            }),
        ),
        row(
            "iss-array",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let iss = c.idp.issuer();
                with_claim(c, "iss", json!(["https://evil.example", iss]))
            }),
        ),
        row(
            "sub-missing",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "sub", Value::Null)),
        ),
        row(
            "aud-array-without-ours",
            Tokens,
            Both,
            refused("audience"),
            Case::Std(|c| with_claim(c, "aud", json!(["apes-cli", "escapes-evil"]))),
        ),
        row(
            "aud-another-audience",
            Tokens,
            Both,
            refused("audience"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| s.audience = "apes-cli".into()));
                c.input(g.jwt)
            }),
        ),
        row(
            "agent-login-token",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| {
                let t = agent_login_token(c);
                let before = c.idp.requests().len();
                c.check(move |c, _| {
                    if c.idp.requests().len() == before {
                        Ok(())
                    } else {
                        Err("IdP contacted for a login token".into())
                    }
                });
                c.input(t)
            }),
        ),
        row(
            "grant-for-another-host",
            Tokens,
            Both,
            refused("host"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| s.target_host = "otherhost".into()));
                c.input(g.jwt)
            }),
        ),
        row(
            "approver-missing",
            Tokens,
            Both,
            refused("approver"),
            Case::Std(|c| with_claim(c, "decided_by", Value::Null)),
        ),
        row(
            "approver-not-allowed",
            Tokens,
            Both,
            refused("approver"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| {
                    s.decided_by = "mallory@example.com".into()
                }));
                c.input(g.jwt)
            }),
        ),
        row(
            "approver-equals-sub",
            Tokens,
            Both,
            refused("approver"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| s.requester = APPROVER.into()));
                c.input(g.jwt)
            }),
        ),
        row(
            "grant-type-unknown",
            Tokens,
            Both,
            refused("parse"),
            Case::Std(|c| with_claim(c, "grant_type", json!("forever"))),
        ),
        row(
            "grant-without-command-binding",
            Tokens,
            Both,
            refused("command"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| {
                    s.with_command = false;
                    s.with_cmd_hash = false;
                    s.with_argv_hash = false;
                }));
                c.input(g.jwt)
            }),
        ),
        // ---------------------------------------------------------- commands
        row(
            "cmd-extra-argument",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                let mut argv = c.marker_cmd();
                argv.push(c.p("extra"));
                c.hostile(c.path("extra"));
                Input::new(t, argv)
            }),
        ),
        row(
            "cmd-missing-argument",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let mut granted = c.marker_cmd();
                granted.push(c.p("second"));
                let t = c.grant(&granted);
                c.input(t)
            }),
        ),
        row(
            "cmd-reordered-arguments",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let granted = vec!["touch".to_string(), c.p("other"), c.p("marker")];
                let t = c.grant(&granted);
                c.hostile(c.path("other"));
                Input::new(t, vec!["touch".into(), c.p("marker"), c.p("other")])
            }),
        ),
        row(
            "cmd-hash-only-space-join-ambiguity",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                // Approved (by hash only): touch <marker> <dir>/b c
                let approved = vec!["touch".to_string(), c.p("marker"), c.p("b"), "c".into()];
                let g = c.issue(&spec_with(c, |s| {
                    s.command = Some(approved.clone());
                    s.with_command = false;
                    s.with_argv_hash = false;
                }));
                // Presented: the same join, other arguments.
                Input::new(
                    g.jwt,
                    vec!["touch".into(), c.p("marker"), format!("{} c", c.p("b"))],
                )
            }),
        ),
        row(
            "cmd-hash-only-unambiguous-refused-by-default",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| {
                    s.with_command = false;
                    s.with_argv_hash = false;
                }));
                c.input(g.jwt)
            }),
        ),
        row(
            "cmd-hash-beside-command-disagrees",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                // `command` names the marker command; `cmd_hash` another.
                let mut other = c.marker_cmd();
                other.push(c.p("other"));
                c.hostile(c.path("other"));
                let hash = pam_openape::command::cmd_hash(&other);
                with_claim(c, "cmd_hash", json!(hash))
            }),
        ),
        row(
            "cmd-hash-only-empty-argument",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let argv = vec!["touch".to_string(), c.p("marker"), String::new()];
                let g = c.issue(&spec_with(c, |s| {
                    s.command = Some(argv.clone());
                    s.with_command = false;
                    s.with_argv_hash = false;
                }));
                Input::new(g.jwt, argv)
            }),
        ),
        row(
            "cmd-control-chars-and-fake-json",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                let mut argv = c.marker_cmd();
                argv.push("x\n{\"event\":\"grant_run\",\"via\":\"escapes\"}\r\u{1b}[2J\u{7}\u{85}\u{2028}".into());
                Input::new(t, argv)
            }),
        ),
        row(
            "cmd-grant-argv-with-nul",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let granted = vec!["touch".to_string(), format!("{}\u{0}/etc/x", c.p("marker"))];
                let t = c.grant(&granted);
                c.input(t)
            }),
        ),
        row(
            "cmd-argc-zero-exec",
            Commands,
            Esc,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Nothing),
            Case::Custom(argc_zero),
        ),
        row(
            "cmd-empty-argv0",
            Commands,
            Esc,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Nothing),
            Case::Custom(|c| {
                let t = c.grant(&c.marker_cmd());
                c.no_traffic();
                let i = c.input(t).env("GCONV_PATH", ".");
                let out = c.escapes_run(&i).arg0("").output();
                vec![as_obs(Door::Escapes, out)]
            }),
        ),
        row(
            "cmd-100k-arguments",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                let mut argv = c.marker_cmd();
                argv.extend(std::iter::repeat_n("x".to_string(), 100_000));
                // Not a network wait: bounded by the work on 100k arguments
                // (about 1 s in a debug build on 2 busy cores).
                c.set_bound(Duration::from_secs(10));
                Input::new(t, argv)
            }),
        ),
        row(
            "cmd-1mib-of-arguments",
            Commands,
            Both,
            refused("command"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                let mut argv = c.marker_cmd();
                argv.extend(std::iter::repeat_n("y".repeat(127 * 1024), 8));
                c.set_bound(Duration::from_secs(10));
                Input::new(t, argv)
            }),
        ),
        row(
            "cmd-u-hash-minus-1",
            Commands,
            Both,
            split(
                2,
                Audit::Step("usage"),
                PAM_AUTH_ERR,
                Audit::Step("command"),
            ),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t).opts(&["-u", "#-1"])
            }),
        ),
        row(
            "cmd-u-hash-4294967295",
            Commands,
            Both,
            split(
                2,
                Audit::Step("usage"),
                PAM_AUTH_ERR,
                Audit::Step("command"),
            ),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t).opts(&["-u", "#4294967295"])
            }),
        ),
        row(
            "cmd-u-0x0",
            Commands,
            Both,
            split(
                1,
                Audit::Step("target_user"),
                PAM_AUTH_ERR,
                Audit::Step("target_user"),
            ),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t).opts(&["-u", "0x0"])
            }),
        ),
        row(
            "cmd-u-empty",
            Commands,
            Both,
            split(
                2,
                Audit::Step("usage"),
                PAM_AUTH_ERR,
                Audit::Step("command"),
            ),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t).opts(&["-u", ""])
            }),
        ),
        row(
            "cmd-u-nobody-with-root-grant",
            Commands,
            Both,
            refused("target_user"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t).opts(&["-u", "nobody"])
            }),
        ),
        row(
            "cmd-g-group-of-caller",
            Commands,
            Esc,
            refused("target_user"),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t).opts(&["-g", "openape-extra"])
            }),
        ),
        row(
            "cmd-relative-program-with-slash",
            Commands,
            Both,
            split(
                2,
                Audit::Step("usage"),
                PAM_AUTH_ERR,
                Audit::Step("command"),
            ),
            Case::Std(|c| {
                let dir = c.user_dir("cwd");
                let marker = c.marker();
                c.payload_script("cwd/x", &marker);
                let t = c.grant(&owned(&["./x"]));
                Input::new(t, owned(&["./x"])).cwd(dir)
            }),
        ),
        row(
            "cmd-hostile-path-unknown-name",
            Commands,
            Esc,
            split(127, Audit::Step("exec"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Std(|c| {
                let dir = c.user_dir("fakebin");
                let marker = c.marker();
                c.payload_script("fakebin/openape-hostile-fake", &marker);
                let argv = owned(&["openape-hostile-fake"]);
                let t = c.grant(&argv);
                Input::new(t, argv).env("PATH", format!("{}:{SANE_PATH}", dir.display()))
            }),
        ),
        row(
            "cmd-hostile-path-fake-touch",
            Commands,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let dir = c.user_dir("fakebin");
                let marker = c.marker();
                c.payload_script("fakebin/touch", &marker);
                let argv = vec!["touch".to_string(), c.granted_file("granted")];
                let t = c.grant_used(&argv);
                Input::new(t, argv).env("PATH", format!("{}:{SANE_PATH}", dir.display()))
            }),
        ),
        row(
            "cmd-sudo-s-shell",
            Commands,
            Both,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Step("command")),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.no_traffic();
                let mut i = c.input(t).opts(&["-s"]).no_dashdash();
                i.argv.clear();
                i.sudo = Some(owned(&["-s"]));
                i
            }),
        ),
        row(
            "cmd-var-assignment-prefix",
            Commands,
            Both,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Step("command")),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.no_traffic();
                let mut argv = vec!["FOO=bar".to_string()];
                argv.extend(c.marker_cmd());
                Input::new(t, argv).no_dashdash()
            }),
        ),
        row(
            "cmd-var-assignment-with-slash",
            Commands,
            Both,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Step("command")),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.no_traffic();
                let mut argv = vec!["LD_PRELOAD=/nonexistent.so".to_string()];
                argv.extend(c.marker_cmd());
                Input::new(t, argv).no_dashdash()
            }),
        ),
        row(
            "cmd-chroot-R",
            Commands,
            Both,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Step("command")),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.no_traffic();
                c.input(t).opts(&["-R", "/"])
            }),
        ),
        row(
            "cmd-host-h-other",
            Commands,
            Both,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Step("command")),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| s.target_host = "otherhost".into()));
                c.no_traffic();
                c.input(g.jwt).opts(&["-h", "otherhost"])
            }),
        ),
        row(
            "cmd-preserve-env-ld-preload",
            Commands,
            Both,
            split(
                1,
                Audit::Step("usage"),
                PAM_AUTH_ERR,
                Audit::Step("command"),
            ),
            Case::Std(|c| {
                let t = c.grant(&c.marker_cmd());
                c.input(t)
                    .opts(&["--preserve-env=LD_PRELOAD"])
                    .env("LD_PRELOAD", "/nonexistent.so")
            }),
        ),
        // ------------------------------------------------------- environment
        row(
            "env-ld-preload",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let payload = c.path("preload-ran");
                let so = preload_payload(c, &payload);
                let so = match so {
                    Some(p) => p.to_string_lossy().into_owned(),
                    None => {
                        println!(
                            "  (no C compiler: LD_PRELOAD payload not built, only its absence is checked)"
                        );
                        "/nonexistent/payload.so".into()
                    }
                };
                c.hostile(payload.clone());
                c.env_absent(&["LD_PRELOAD"]);
                controlled_env_row(c, recorder(), &[("LD_PRELOAD", so)], &payload)
            }),
        ),
        row(
            "env-ld-library-path-and-audit",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let d = c.user_dir("libs");
                c.env_absent(&["LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG"]);
                env_row(
                    c,
                    recorder(),
                    &[
                        ("LD_LIBRARY_PATH", d.to_string_lossy().into_owned()),
                        ("LD_AUDIT", c.p("libs/audit.so")),
                        ("LD_DEBUG", "all".into()),
                    ],
                )
            }),
        ),
        row(
            "env-bash-env",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let marker = c.marker();
                let s = c.payload_script("bash_env.sh", &marker);
                c.env_absent(&["BASH_ENV"]);
                controlled_env_row(
                    c,
                    owned(&["bash", "-c", "env"]),
                    &[("BASH_ENV", s.to_string_lossy().into_owned())],
                    &marker,
                )
            }),
        ),
        row(
            "env-ENV-for-sh",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let marker = c.marker();
                let s = c.payload_script("env.sh", &marker);
                c.env_absent(&["ENV"]);
                controlled_env_row(
                    c,
                    owned(&["sh", "-i", "-c", "env"]),
                    &[("ENV", s.to_string_lossy().into_owned())],
                    &marker,
                )
            }),
        ),
        row(
            "env-exported-bash-function",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let f = format!("() {{ touch {}; }}", c.p("marker"));
                c.env_absent(&["BASH_FUNC_env%%"]);
                controlled_env_row(
                    c,
                    owned(&["bash", "-c", "env"]),
                    &[("BASH_FUNC_env%%", f)],
                    &c.marker(),
                )
            }),
        ),
        row(
            "env-ifs",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                c.env_absent(&["IFS"]);
                env_row(c, owned(&["sh", "-c", "env"]), &[("IFS", "/ ".into())])
            }),
        ),
        row(
            "env-tz-etc-shadow",
            Environment,
            Both,
            Expect::Granted,
            Case::Std(|c| {
                c.env_absent(&["TZ"]);
                c.no_open(&["/etc/shadow", "/etc/../etc/shadow"]);
                let i = env_row(
                    c,
                    recorder(),
                    &[("TZ", "../../../../../../etc/shadow".into())],
                );
                if c.lab.strace.is_some() {
                    i.strace()
                } else {
                    i
                }
            }),
        ),
        row(
            "env-tz-proc-self-environ",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                c.env_absent(&["TZ"]);
                c.no_open(&["/proc/self/environ"]);
                let i = env_row(c, recorder(), &[("TZ", ":/proc/self/environ".into())]);
                if c.lab.strace.is_some() {
                    i.strace()
                } else {
                    i
                }
            }),
        ),
        row(
            "env-language-nlspath-locpath",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                c.env_absent(&["LANGUAGE", "NLSPATH", "LOCPATH", "LC_ALL", "LC_MESSAGES"]);
                env_row(
                    c,
                    recorder(),
                    &[
                        ("LANGUAGE", "../../../../tmp/evil".into()),
                        ("NLSPATH", "/tmp/%N".into()),
                        ("LOCPATH", c.p("locales")),
                        ("LC_ALL", "../../x".into()),
                        ("LC_MESSAGES", "C%n%n%n".into()),
                    ],
                )
            }),
        ),
        row(
            "env-terminfo",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let d = c.user_dir("terminfo");
                c.env_absent(&["TERMINFO", "TERMINFO_DIRS"]);
                c.check(|_, obs| {
                    match obs
                        .iter()
                        .flat_map(|o| o.out.stdout.lines())
                        .find(|l| l.starts_with("TERM=") && l.contains('/'))
                    {
                        Some(l) => Err(format!("a TERM path reached the command: {l}")),
                        None => Ok(()),
                    }
                });
                env_row(
                    c,
                    recorder(),
                    &[
                        ("TERMINFO", d.to_string_lossy().into_owned()),
                        ("TERMINFO_DIRS", d.to_string_lossy().into_owned()),
                        ("TERM", "../../../tmp/evil".into()),
                    ],
                )
            }),
        ),
        row(
            "env-proxy-variables",
            Environment,
            Both,
            Expect::Granted,
            Case::Std(|c| {
                let decoy = Decoy::start();
                let url = decoy.url();
                c.untouched(decoy, "a proxy variable was honoured");
                c.env_absent(&[
                    "HTTPS_PROXY",
                    "https_proxy",
                    "ALL_PROXY",
                    "HTTP_PROXY",
                    "http_proxy",
                ]);
                let argv = if c.door == Door::Escapes {
                    recorder()
                } else {
                    c.marker_cmd()
                };
                let mut i = env_row(c, argv, &[]);
                for k in [
                    "HTTPS_PROXY",
                    "https_proxy",
                    "HTTP_PROXY",
                    "http_proxy",
                    "ALL_PROXY",
                    "all_proxy",
                ] {
                    i = i.env(k, url.clone());
                }
                i.env("NO_PROXY", "")
            }),
        ),
        row(
            "env-ssl-cert-variables",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                let f = c.user_file("ca.pem", b"not a CA", 0o644);
                c.env_absent(&["SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE"]);
                env_row(
                    c,
                    recorder(),
                    &[
                        ("SSL_CERT_FILE", f.to_string_lossy().into_owned()),
                        ("SSL_CERT_DIR", c.p(".")),
                        ("CURL_CA_BUNDLE", f.to_string_lossy().into_owned()),
                    ],
                )
            }),
        ),
        row(
            "env-loader-and-interpreter-variables",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                const NAMES: &[&str] = &[
                    "GCONV_PATH",
                    "HOSTALIASES",
                    "RES_OPTIONS",
                    "LOCALDOMAIN",
                    "MALLOC_CHECK_",
                    "GLIBC_TUNABLES",
                    "TMPDIR",
                    "PYTHONPATH",
                    "PYTHONSTARTUP",
                    "PERL5LIB",
                    "PERL5OPT",
                    "RUBYOPT",
                    "NODE_OPTIONS",
                    "PS4",
                    "SHELLOPTS",
                    "BASHOPTS",
                    "PROMPT_COMMAND",
                    "CDPATH",
                    "EDITOR",
                    "VISUAL",
                    "SUDO_EDITOR",
                    "HOSTNAME",
                    "XDG_CONFIG_HOME",
                ];
                c.env_absent(NAMES);
                let vars: Vec<(&str, String)> = NAMES.iter().map(|n| (*n, c.p("evil"))).collect();
                env_row(c, recorder(), &vars)
            }),
        ),
        row(
            "env-rust-log-and-backtrace",
            Environment,
            Both,
            Expect::Granted,
            Case::Std(|c| {
                c.env_absent(&["RUST_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"]);
                c.check(|_, obs| {
                    for o in obs {
                        let e = o.out.stderr.to_ascii_lowercase();
                        if e.contains("trace")
                            || e.contains("debug")
                            || e.contains("ureq")
                            || e.contains("rustls")
                        {
                            return Err(format!("env-driven logging: {}", o.out.stderr));
                        }
                    }
                    Ok(())
                });
                let argv = if c.door == Door::Escapes {
                    recorder()
                } else {
                    c.marker_cmd()
                };
                env_row(
                    c,
                    argv,
                    &[
                        ("RUST_LOG", "trace".into()),
                        ("RUST_BACKTRACE", "full".into()),
                        ("RUST_LIB_BACKTRACE", "1".into()),
                    ],
                )
            }),
        ),
        row(
            "env-grant-variables-not-passed-on",
            Environment,
            Esc,
            Expect::Granted,
            Case::Std(|c| {
                c.env_absent(&["ESCAPES_GRANT", "OPENAPE_GRANT"]);
                let t = c.grant_used(&recorder());
                Input::new(t.clone(), recorder())
                    .via(Via::Env)
                    .env("OPENAPE_GRANT", t)
            }),
        ),
        row(
            "env-hostname-other",
            Environment,
            Both,
            refused("host"),
            Case::Std(|c| {
                let g = c.issue(&spec_with(c, |s| s.target_host = "otherhost".into()));
                c.input(g.jwt)
                    .env("HOSTNAME", "otherhost")
                    .env("HOST", "otherhost")
            }),
        ),
        // -------------------------------------------------------- IdP faults
        row(
            "idp-jwks-down",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::Down)),
        ),
        row(
            "idp-jwks-hang",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::Hang)),
        ),
        row(
            "idp-jwks-slowloris",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::Dribble(Duration::from_millis(100)))),
        ),
        row(
            "idp-jwks-slow-30s",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::Slow(Duration::from_secs(30)))),
        ),
        row(
            "idp-jwks-500",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::Status(500))),
        ),
        row(
            "idp-jwks-garbage",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::Garbage)),
        ),
        row(
            "idp-jwks-100mib-body",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| jwks_fault(c, Fault::BigBody(100 * 1024 * 1024))),
        ),
        row(
            "idp-jwks-redirect-elsewhere",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| {
                let d = Decoy::start();
                let i = jwks_fault(
                    c,
                    Fault::Redirect(format!("{}/.well-known/jwks.json", d.url())),
                );
                c.untouched(d, "a redirect was followed");
                i
            }),
        ),
        row(
            "idp-jwks-no-keys",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                c.idp.set_jwks_override(Some(r#"{"keys":[]}"#.into()));
                let t = c.grant(&c.marker_cmd());
                c.input(t)
            }),
        ),
        row(
            "idp-jwks-not-a-jwks",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| {
                c.idp
                    .set_jwks_override(Some(r#"{"keys":{"kty":"OKP"}}"#.into()));
                let t = c.grant(&c.marker_cmd());
                c.input(t)
            }),
        ),
        row(
            "idp-jwks-only-rsa-key",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                jwks_only(
                    c,
                    json!({"kty":"RSA","alg":"RS256","use":"sig","n":b64([0xc5u8; 256]),"e":"AQAB"}),
                )
            }),
        ),
        row(
            "idp-jwks-okp-16-byte-x",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                jwks_only(
                    c,
                    json!({"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","x":b64([7u8; 16])}),
                )
            }),
        ),
        row(
            "idp-jwks-okp-40-byte-x",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                let mut x = URL_SAFE_NO_PAD.decode(jwk_x(c)).unwrap();
                x.extend_from_slice(&[0u8; 8]);
                jwks_only(
                    c,
                    json!({"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","x":b64(x)}),
                )
            }),
        ),
        row(
            "idp-jwks-small-order-key-universal-signature",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                // The JWKS publishes the identity point as the key; under a
                // lax Ed25519 check (R = identity, S = 0) then "signs"
                // every message.
                let mut identity = [0u8; 32];
                identity[0] = 1;
                let key = json!({"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":c.idp.kid(),"x":b64(identity)});
                c.idp
                    .set_jwks_override(Some(json!({ "keys": [key] }).to_string()));
                let t = c.grant(&c.marker_cmd());
                let (signed, _) = t.rsplit_once('.').unwrap();
                let mut sig = identity.to_vec();
                sig.extend_from_slice(&[0u8; 32]);
                c.input(format!("{signed}.{}", b64(sig)))
            }),
        ),
        row(
            "idp-jwks-x25519-curve",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                let x = jwk_x(c);
                jwks_only(c, json!({"kty":"OKP","crv":"X25519","use":"sig","x":x}))
            }),
        ),
        row(
            "idp-jwks-oct-secret-key",
            IdpFaults,
            Both,
            refused("key"),
            Case::Std(|c| {
                let x = jwk_x(c);
                jwks_only(c, json!({"kty":"oct","alg":"HS256","k":x}))
            }),
        ),
        row(
            "idp-consume-down",
            IdpFaults,
            Both,
            unavailable("consume"),
            Case::Std(|c| consume_fault(c, Fault::Down)),
        ),
        row(
            "idp-consume-hang",
            IdpFaults,
            Both,
            unavailable("consume"),
            Case::Std(|c| consume_fault(c, Fault::Hang)),
        ),
        row(
            "idp-consume-slowloris",
            IdpFaults,
            Both,
            unavailable("consume"),
            // The IdP consumes, then dribbles its answer: the grant is spent
            // at the issuer, but nothing may run (about consume itself).
            Case::Std(|c| consume_fault_n(c, Fault::Dribble(Duration::from_millis(100)), 1)),
        ),
        row(
            "idp-consume-500",
            IdpFaults,
            Both,
            unavailable("consume"),
            Case::Std(|c| consume_fault(c, Fault::Status(500))),
        ),
        row(
            "idp-consume-garbage",
            IdpFaults,
            Both,
            unavailable("consume"),
            Case::Std(|c| consume_fault(c, Fault::Garbage)),
        ),
        row(
            "idp-consume-100mib-body",
            IdpFaults,
            Both,
            unavailable("consume"),
            Case::Std(|c| consume_fault(c, Fault::BigBody(100 * 1024 * 1024))),
        ),
        row(
            "idp-consume-redirect-elsewhere",
            IdpFaults,
            Both,
            unavailable("consume"),
            Case::Std(|c| {
                let d = Decoy::start();
                let i = consume_fault(c, Fault::Redirect(format!("{}/consume", d.url())));
                c.untouched(d, "a redirect was followed");
                i
            }),
        ),
        row(
            "idp-consume-200-empty-object",
            IdpFaults,
            Both,
            refused("consume"),
            Case::Std(|c| consume_fault(c, Fault::EmptyObject)),
        ),
        row(
            "idp-consume-valid-for-once-grant",
            IdpFaults,
            Both,
            refused("consume"),
            Case::Std(|c| consume_fault(c, Fault::Body(200, r#"{"status":"valid"}"#.into()))),
        ),
        row(
            "idp-consume-201-consumed",
            IdpFaults,
            Both,
            refused("consume"),
            Case::Std(|c| consume_fault(c, Fault::Body(201, r#"{"status":"consumed"}"#.into()))),
        ),
        row(
            "idp-consume-consumed-and-error",
            IdpFaults,
            Both,
            refused("consume"),
            Case::Std(|c| {
                consume_fault(
                    c,
                    Fault::Body(200, r#"{"status":"consumed","error":"revoked"}"#.into()),
                )
            }),
        ),
        row(
            "idp-consume-revoked",
            IdpFaults,
            Both,
            refused("consume"),
            Case::Std(|c| {
                let g = c.issue(&c.spec(&c.marker_cmd()));
                c.idp.revoke(&g.grant_id);
                c.input(g.jwt)
            }),
        ),
        row(
            "idp-consume-grant-id-path-chars",
            IdpFaults,
            Both,
            refused("consume"),
            Case::Std(|c| {
                let mut claims = c.claims(&c.marker_cmd());
                claims["grant_id"] = json!("../../_test/rotate?x=1#y");
                claims["jti"] = claims["grant_id"].clone();
                c.check(|c, _| {
                    let reqs = c.idp.requests();
                    if reqs.iter().any(|(_, p)| {
                        p.contains("/../") || p.contains('?') || p.starts_with("/_test")
                    }) {
                        return Err(format!("grant_id reached the URL unescaped: {reqs:?}"));
                    }
                    if !reqs
                        .iter()
                        .any(|(_, p)| p.contains("..%2F..%2F_test%2Frotate%3Fx%3D1%23y"))
                    {
                        return Err(format!("no percent-encoded consume request: {reqs:?}"));
                    }
                    Ok(())
                });
                let t = c.sign(claims);
                c.input(t)
            }),
        ),
        row(
            "tls-untrusted-certificate",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| tls_row(c, Tls::Untrusted)),
        ),
        row(
            "tls-ca-bundle-names-another-ca",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| tls_row(c, Tls::OtherCa)),
        ),
        row(
            "tls-certificate-for-another-name",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| tls_row(c, Tls::WrongName)),
        ),
        row(
            "tls-expired-certificate",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| tls_row(c, Tls::Expired)),
        ),
        row(
            "tls-caller-ssl-cert-file",
            IdpFaults,
            Both,
            unavailable("key"),
            Case::Std(|c| tls_row(c, Tls::CallerCa)),
        ),
        row(
            "tls-control-right-ca-bundle",
            IdpFaults,
            Both,
            Expect::Granted,
            Case::Std(|c| tls_row(c, Tls::Right)),
        ),
        // -------------------------------------------------------- filesystem
        row(
            "fs-config-world-writable",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let i = config_at(c, c.path("etc/config.toml"));
                set_owner_mode(&c.path("etc/config.toml"), 0, 0, 0o666);
                i
            }),
        ),
        row(
            "fs-config-owned-by-caller",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let i = config_at(c, c.path("etc/config.toml"));
                let u = test_user();
                set_owner_mode(&c.path("etc/config.toml"), u.uid, u.gid, 0o600);
                i
            }),
        ),
        row(
            "fs-config-group-writable-by-caller",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let i = config_at(c, c.path("etc/config.toml"));
                set_owner_mode(&c.path("etc/config.toml"), 0, test_user().extra_gid, 0o660);
                i
            }),
        ),
        row(
            "fs-config-in-caller-writable-dir",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let d = c.user_dir("userconf");
                config_at(c, d.join("config.toml"))
            }),
        ),
        row(
            "fs-config-is-a-symlink",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let real = c.path("etc/real.toml");
                let i = config_at(c, real.clone());
                let dir = c.path("etc-with-link");
                fs::create_dir(&dir).unwrap();
                set_owner_mode(&dir, 0, 0, 0o755);
                let link = dir.join("config.toml");
                std::os::unix::fs::symlink(&real, &link).unwrap();
                c.set_config_path(link);
                i
            }),
        ),
        row(
            "fs-config-dir-symlink-to-caller-dir",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let d = c.user_dir("userconf");
                let i = config_at(c, d.join("config.toml"));
                let link = c.path("etc-link");
                std::os::unix::fs::symlink(&d, &link).unwrap();
                c.set_config_path(link.join("config.toml"));
                i
            }),
        ),
        row(
            "fs-audit-log-is-a-symlink",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let target = c.path("log/elsewhere");
                std::os::unix::fs::symlink(&target, c.audit_path()).unwrap();
                c.hostile(target);
                let t = c.grant(&c.marker_cmd());
                c.input(t)
            }),
        ),
        row(
            "fs-audit-dir-missing",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                c.cfg.borrow_mut().audit_log = c.path("no-such-dir/audit.log");
                c.write_config();
                let t = c.grant(&c.marker_cmd());
                c.input(t)
            }),
        ),
        row(
            "fs-audit-dir-owned-by-caller",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let d = c.user_dir("userlog");
                c.cfg.borrow_mut().audit_log = d.join("audit.log");
                c.write_config();
                let t = c.grant(&c.marker_cmd());
                c.input(t)
            }),
        ),
        row(
            "fs-audit-log-owned-by-caller",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(|c| {
                let u = test_user();
                fs::write(c.audit_path(), b"").unwrap();
                set_owner_mode(&c.audit_path(), u.uid, u.gid, 0o600);
                let t = c.grant(&c.marker_cmd());
                c.input(t)
            }),
        ),
        row(
            "fs-audit-disk-full",
            Filesystem,
            Both,
            UNTRUSTED,
            Case::Std(full_disk),
        ),
        row(
            "fs-jwks-cache-dir-owned-by-caller",
            Filesystem,
            Both,
            split(1, Audit::Step("key"), PAM_SERVICE_ERR, Audit::Step("key")),
            Case::Std(|c| {
                // The caller plants a cache with their own key for the issuer.
                let attacker = foreign_idp();
                let d = c.user_dir("usercache");
                let issuer = c.idp.issuer();
                let x: Value = serde_json::from_str(&attacker.jwks_json()).unwrap();
                let cache = json!({"issuer": issuer, "fetched_at": now(), "keys": [{"kid": attacker.kid(), "x": x["keys"][0]["x"]}]});
                let name = format!(
                    "jwks-{}.json",
                    openape_hex(&Sha256::digest(issuer.as_bytes()))
                );
                c.user_file(
                    &format!("usercache/{name}"),
                    cache.to_string().as_bytes(),
                    0o600,
                );
                c.cfg.borrow_mut().cache_dir = d;
                c.write_config();
                let t = attacker.sign(json!({"kid": attacker.kid()}), c.claims(&c.marker_cmd()));
                c.secret(&t);
                c.keep(attacker);
                c.input(t)
            }),
        ),
        row(
            "fs-grant-file-etc-shadow",
            Filesystem,
            Esc,
            split(1, Audit::Step("grant"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Std(|c| grant_file(c, PathBuf::from("/etc/shadow"))),
        ),
        row(
            "fs-grant-file-symlink-to-shadow",
            Filesystem,
            Esc,
            split(1, Audit::Step("grant"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Std(|c| {
                c.user_dir("g");
                let link = c.path("g/grant");
                std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
                grant_file(c, link)
            }),
        ),
        row(
            "fs-grant-file-fifo",
            Filesystem,
            Esc,
            split(1, Audit::Step("grant"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Std(|c| {
                c.user_dir("g");
                let fifo = c.path("g/fifo");
                let cpath = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
                // SAFETY: mkfifo with a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o666) }, 0);
                let u = test_user();
                set_owner_mode(&fifo, u.uid, u.gid, 0o666);
                grant_file(c, fifo)
            }),
        ),
        row(
            "fs-grant-file-dev-zero",
            Filesystem,
            Esc,
            split(1, Audit::Step("grant"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Std(|c| grant_file(c, PathBuf::from("/dev/zero"))),
        ),
        // ------------------------------------------------------- concurrency
        row(
            "conc-50-parallel-once-grant",
            Concurrency,
            Esc,
            Expect::Custom("1 × exit 0, 49 × exit 5 at consume"),
            Case::Custom(|c| parallel(c, GrantType::Once)),
        ),
        row(
            "conc-50-parallel-timed-grant",
            Concurrency,
            Esc,
            Expect::Custom("50 × exit 0, 50 whole grant_run lines"),
            Case::Custom(|c| parallel(c, GrantType::Timed)),
        ),
        row(
            "conc-50-parallel-once-grant-pam",
            Concurrency,
            Doors::Pam,
            Expect::Custom("1 × PAM 0, 49 × PAM 7 at consume"),
            Case::Custom(|c| parallel(c, GrantType::Once)),
        ),
        // ----------------------------------------------------------- request
        row(
            "req-idp-token-for-another-command",
            Request,
            Esc,
            refused("command"),
            Case::Custom(|c| {
                let other = vec!["touch".to_string(), c.p("marker-other")];
                c.hostile(c.path("marker-other"));
                req_swapped(
                    c,
                    TokenSwap {
                        command: Some(other),
                        ..TokenSwap::default()
                    },
                )
            }),
        ),
        row(
            "req-idp-token-for-another-host",
            Request,
            Esc,
            refused("host"),
            Case::Custom(|c| {
                req_swapped(
                    c,
                    TokenSwap {
                        target_host: Some("elsewhere".into()),
                        ..TokenSwap::default()
                    },
                )
            }),
        ),
        row(
            "req-idp-token-for-another-user",
            Request,
            Esc,
            refused("target_user"),
            Case::Custom(|c| {
                req_swapped(
                    c,
                    TokenSwap {
                        run_as: Some("nobody".into()),
                        ..TokenSwap::default()
                    },
                )
            }),
        ),
        row(
            "req-idp-token-self-approved",
            Request,
            Esc,
            refused("approver"),
            Case::Custom(|c| {
                req_swapped(
                    c,
                    TokenSwap {
                        decided_by: Some(REQ_AGENT.into()),
                        ..TokenSwap::default()
                    },
                )
            }),
        ),
        row(
            "req-idp-hands-back-the-agent-login-token",
            Request,
            Esc,
            refused("parse"),
            Case::Custom(|c| {
                let login = c.idp.login_token(REQ_AGENT);
                c.secret(&login);
                req_token_body(c, json!({"authz_jwt": login}).to_string())
            }),
        ),
        row(
            "req-idp-token-over-16k",
            Request,
            Esc,
            unavailable("request"),
            Case::Custom(|c| {
                let huge = format!("{}.{}.{}", "a".repeat(9000), "b".repeat(9000), "c");
                req_token_body(c, json!({"authz_jwt": huge}).to_string())
            }),
        ),
        row(
            "req-idp-grant-id-path-traversal",
            Request,
            Esc,
            unavailable("request"),
            Case::Custom(|c| {
                let ns = req_setup(c, true);
                c.idp.set_fault_for(
                    "/api/grants",
                    Fault::Body(
                        201,
                        json!({"id": "../../x/consume", "status": "pending"}).to_string(),
                    ),
                );
                vec![req_run(c, &ns, &[], &c.marker_cmd())]
            }),
        ),
        row(
            "req-idp-redirects-the-request",
            Request,
            Esc,
            unavailable("request"),
            Case::Custom(|c| {
                let decoy = Decoy::start();
                let ns = req_setup(c, true);
                c.idp
                    .set_fault_for("/api/grants", Fault::Redirect(decoy.url()));
                let obs = vec![req_run(c, &ns, &[], &c.marker_cmd())];
                c.untouched(decoy, "redirect target");
                obs
            }),
        ),
        row(
            "req-key-symlink-to-shadow",
            Request,
            Esc,
            split(1, Audit::Step("request"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Custom(|c| {
                let ns = req_setup(c, false);
                c.user_dir("home/.ssh");
                std::os::unix::fs::symlink("/etc/shadow", c.path("home/.ssh/id_ed25519")).unwrap();
                c.no_traffic();
                vec![req_run(c, &ns, &[], &c.marker_cmd())]
            }),
        ),
        row(
            "req-key-root-only",
            Request,
            Esc,
            split(1, Audit::Step("request"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Custom(|c| {
                let ns = req_setup(c, false);
                let k = c.root_file("rootkey", b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\n-----END PRIVATE KEY-----\n", 0o600);
                c.no_traffic();
                let key = k.to_string_lossy().into_owned();
                vec![req_run(
                    c,
                    &ns,
                    &["--key", &key, "--agent-email", REQ_AGENT],
                    &c.marker_cmd(),
                )]
            }),
        ),
        row(
            "req-session-of-another-idp-is-not-sent",
            Request,
            Esc,
            split(2, Audit::Step("grant"), PAM_AUTH_ERR, Audit::Nothing),
            Case::Custom(|c| {
                let ns = req_setup(c, false);
                let decoy = Decoy::start();
                let token = c.idp.login_token(REQ_AGENT);
                c.secret(&token);
                c.user_dir("home/.config/apes");
                c.user_file(
                    "home/.config/apes/auth.json",
                    json!({"idp": decoy.url(), "access_token": token, "email": REQ_AGENT, "expires_at": now() + 3600})
                        .to_string()
                        .as_bytes(),
                    0o600,
                );
                c.no_traffic();
                let obs = vec![req_run(c, &ns, &["-n"], &c.marker_cmd())];
                c.untouched(decoy, "another IdP");
                obs
            }),
        ),
        row(
            "req-grant-id-path-traversal",
            Request,
            Esc,
            split(2, Audit::Nothing, PAM_AUTH_ERR, Audit::Nothing),
            Case::Custom(|c| {
                let ns = req_setup(c, true);
                c.no_traffic();
                vec![req_run(
                    c,
                    &ns,
                    &["--grant-id", "../../consume"],
                    &c.marker_cmd(),
                )]
            }),
        ),
        // ----------------------------------------------------------- signals
        row(
            "sig-sigint-during-consume",
            Signals,
            Esc,
            Expect::Custom("killed by SIGINT or exit 1; next run works"),
            Case::Custom(|c| signal_row(c, libc::SIGINT)),
        ),
        row(
            "sig-sigterm-during-consume",
            Signals,
            Esc,
            Expect::Custom("killed by SIGTERM or exit 1; next run works"),
            Case::Custom(|c| signal_row(c, libc::SIGTERM)),
        ),
        row(
            "sig-sigkill-during-consume",
            Signals,
            Esc,
            Expect::Custom("killed by SIGKILL; next run works"),
            Case::Custom(|c| signal_row(c, libc::SIGKILL)),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Request mode (no grant given; escapes asks the row's IdP for one)
// ---------------------------------------------------------------------------

/// The agent of the request rows.
const REQ_AGENT: &str = "agent@example.com";

/// Request mode for this row: a home for the test user (`<row>/home`,
/// shown at the user's passwd home in the row's config namespace), with
/// an enrolled Ed25519 key at `~/.ssh/id_ed25519` when `key` is set.
fn req_setup(c: &Ctx, key: bool) -> Arc<ConfigNs> {
    let home = c.user_dir("home");
    if key {
        let mut seed = [0u8; 32];
        fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut seed)
            .unwrap();
        let k = ed25519_dalek::SigningKey::from_bytes(&seed);
        c.user_dir("home/.ssh");
        c.user_file(
            "home/.ssh/id_ed25519",
            pam_openape::request::keys::pkcs8_pem(&k).as_bytes(),
            0o600,
        );
        c.user_file(
            "home/.ssh/id_ed25519.pub",
            pam_openape::request::keys::ssh_public_line(&k, Some(REQ_AGENT)).as_bytes(),
            0o644,
        );
        c.idp
            .register_agent(REQ_AGENT, k.verifying_key().to_bytes());
    }
    let cfg = c.config_path.borrow().clone();
    Arc::new(ConfigNs::with_home(
        &c.path("ns"),
        cfg.parent().expect("config has a directory"),
        &home,
        Path::new(&passwd_home(TEST_USER)),
    ))
}

/// `escapes OPTS -- ARGV` with no grant, as the test user, in `ns`.
fn req_run(c: &Ctx, ns: &Arc<ConfigNs>, opts: &[&str], argv: &[String]) -> Obs {
    let esc = c.lab.escapes();
    let out = Run::new(&esc)
        .arg0(&esc)
        .args(opts)
        .arg("--")
        .args(argv)
        .as_test_user()
        .cwd(&c.dir)
        .config_ns(Arc::clone(ns))
        .timeout(RUN_LIMIT)
        .output();
    as_obs(Door::Escapes, out)
}

/// The IdP approves at once but signs a token that says something else.
fn req_swapped(c: &Ctx, swap: TokenSwap) -> Vec<Obs> {
    let ns = req_setup(c, true);
    c.idp.set_auto_approve(Some(APPROVER));
    c.idp.set_token_swap(Some(swap));
    vec![req_run(c, &ns, &[], &c.marker_cmd())]
}

/// The IdP answers the token request with `body` (auto-approved grant).
fn req_token_body(c: &Ctx, body: String) -> Vec<Obs> {
    let ns = req_setup(c, true);
    c.idp.set_auto_approve(Some(APPROVER));
    c.idp.set_fault_for("/api/grants/", Fault::Body(200, body));
    vec![req_run(c, &ns, &[], &c.marker_cmd())]
}

fn openape_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
