//! End-to-end suite for the admin subcommands of `escapes`:
//!
//! - `escapes trust` against the test IdP: validation (discovery + JWKS),
//!   merge, `--replace`, `--skip-validation`, the prompt on a terminal,
//!   refusal for a non-root caller of the setuid binary, and a written
//!   file that loads and then runs a grant.
//! - `escapes update` against the test IdP's loopback release routes
//!   (`/_test/release/manifest`, `/_test/release/bin`): the sandbox's
//!   setuid copy, run as root, replaces itself (`/proc/self/exe` is that
//!   copy); every failure (bad checksum, cut download, oversized body,
//!   other origin, garbage manifest, full disk, non-root caller) leaves
//!   the old binary byte-identical, still 4755 root, and no temp file.
//!
//! Needs root; without it every test prints a skip notice and passes.
//! Run after `cargo build --workspace`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openape_tests::harness::{
    self, APPROVER, HOST, Output, Run, SANE_PATH, Sandbox, escapes_bin, test_user,
};
use openape_tests::idp::{GrantSpec, ReleaseMode, TestIdp};
use pam_openape::config::Config;
use serde_json::json;
use sha2::{Digest, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// escapes' own cap on the binary it downloads.
const MAX_BINARY: usize = 64 * 1024 * 1024;

struct W {
    idp: TestIdp,
    sb: Sandbox,
}

/// `None` (after the skip notice) when not root. The sandbox has no
/// config file yet.
fn setup(name: &str) -> Option<W> {
    if !harness::require_root() {
        return None;
    }
    test_user();
    Some(W {
        idp: TestIdp::start(),
        sb: Sandbox::new(name),
    })
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Everything that must not change about a file on refusal.
#[derive(Debug, PartialEq, Eq)]
struct Snap {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    mtime: (i64, i64),
}

fn snap(p: &Path) -> Snap {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Snap {
        bytes: fs::read(p).unwrap(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        ino: m.ino(),
        mtime: (m.mtime(), m.mtime_nsec()),
    }
}

/// Names in `dir` other than `keep`: temp files left behind.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

fn assert_mode_root(p: &Path, mode: u32) {
    let m = fs::metadata(p).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (mode, 0, 0),
        "{}: mode {:o} owner {}:{}",
        p.display(),
        m.mode() & 0o7777,
        m.uid(),
        m.gid()
    );
}

/// Run to completion. An exec that fails with ETXTBSY is retried: a
/// sandbox copy of escapes was just written, and a program forked by
/// another test thread can still hold that write descriptor between its
/// fork and its exec. It shows as a failed spawn (a panic in the harness)
/// or, for runs as the test user, as `setpriv` exiting 126.
fn output(r: Run) -> Output {
    for _ in 0..100 {
        match std::panic::catch_unwind(AssertUnwindSafe(|| r.clone().output())) {
            Ok(o) if o.code == 126 && o.stderr.contains("setpriv: failed to execute") => {
                assert!(o.stderr.contains("Text file busy"), "{o}");
            }
            Ok(o) => return o,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                if !msg.contains("Text file busy") {
                    std::panic::resume_unwind(p);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("still ETXTBSY after 100 attempts: {r:?}");
}

/// A loopback URL nobody listens on.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------
// escapes trust
// ---------------------------------------------------------------------------

impl W {
    /// `bin/escapes args...` as the test user (through the setuid bit).
    fn as_user(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut r = self.sb.escapes_run(args).as_test_user();
        if let Some(s) = stdin {
            r = r.stdin(s);
        }
        output(r)
    }

    /// `bin/escapes trust --config <cfg> args...` as root.
    fn trust(&self, cfg: &Path, args: &[&str]) -> Output {
        // The test IdP listens on a loopback port above 1024.
        let mut a: Vec<String> = vec![
            "trust".into(),
            "--allow-unprivileged-loopback".into(),
            "--config".into(),
        ];
        a.push(cfg.to_string_lossy().into_owned());
        a.extend(args.iter().map(|s| (*s).to_string()));
        output(self.sb.escapes_run(&a))
    }

    fn load(&self, cfg: &Path) -> Config {
        Config::load(cfg, 0).unwrap_or_else(|d| panic!("{}: {}", cfg.display(), d.reason))
    }
}

/// A fresh file in a directory that does not exist yet: the IdP is
/// validated (discovery and JWKS fetched), the directory is created 0755
/// root, the file is 0600 root, it loads, and no temp file is left.
#[test]
fn trust_validates_the_idp_and_writes_a_new_config() {
    let Some(w) = setup("trust-new") else { return };
    let iss = w.idp.issuer();
    let cfg = w.sb.path("etc/openape/config.toml");
    let out = w.trust(
        &cfg,
        &[
            "--idp",
            &iss,
            "--approvers",
            "alice@example.com,bob@example.com",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("discovery ok"), "{out}");
    assert!(out.stdout.contains("+ alice@example.com"), "{out}");
    assert_eq!(w.idp.request_count("/.well-known/openid-configuration"), 1);
    assert_eq!(w.idp.request_count("/.well-known/jwks.json"), 1);
    assert_mode_root(&w.sb.path("etc/openape"), 0o755);
    assert_mode_root(&cfg, 0o600);
    let c = w.load(&cfg);
    assert_eq!(c.allowed_issuers, vec![iss]);
    assert_eq!(
        c.allowed_approvers,
        vec!["alice@example.com", "bob@example.com"]
    );
    assert_eq!(
        leftovers(&w.sb.path("etc/openape"), &["config.toml"]),
        Vec::<String>::new()
    );
}

/// A JWKS with keys, none of them usable (RSA, a short Ed25519 key, an
/// encryption key): refused, exit 1, nothing written; the same for a JWKS
/// that is not a key set at all.
#[test]
fn trust_refuses_an_idp_without_usable_keys() {
    let Some(w) = setup("trust-nokeys") else {
        return;
    };
    let cfg = w.sb.path("etc/config.toml");
    for doc in [
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa1", "n": "AQAB", "e": "AQAB", "alg": "RS256"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]})
        .to_string(),
        json!({"keys": []}).to_string(),
        "<html>not json".to_string(),
    ] {
        w.idp.set_jwks_override(Some(doc.clone()));
        let out = w.trust(&cfg, &["--idp", &w.idp.issuer(), "--approvers", APPROVER]);
        assert_eq!(out.code, 1, "{doc}: {out}");
        assert!(out.stderr.contains("nothing written"), "{out}");
        assert!(!cfg.exists(), "written despite {doc}");
    }
    assert_eq!(leftovers(&w.sb.path("etc"), &[]), Vec::<String>::new());
}

/// Discovery naming another issuer (the IdP is asked as `localhost` but
/// calls itself `127.0.0.1`): grants would never match, so refused.
#[test]
fn trust_refuses_an_idp_whose_discovery_names_another_issuer() {
    let Some(w) = setup("trust-issuer") else {
        return;
    };
    let cfg = w.sb.path("etc/config.toml");
    let alias = format!("http://localhost:{}", w.idp.port());
    let out = w.trust(&cfg, &["--idp", &alias, "--approvers", APPROVER]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("names the issuer"), "{out}");
    assert!(!cfg.exists());
}

/// Merge (the default): the existing approver and issuer stay, the new
/// ones are added once, every other key and every comment is kept byte
/// for byte. A second identical run changes nothing. The file then loads
/// and escapes runs a grant from that IdP with it.
#[test]
fn trust_merges_keeps_comments_and_the_result_runs_a_grant() {
    let Some(w) = setup("trust-merge") else {
        return;
    };
    let iss = w.idp.issuer();
    let cfg = w.sb.config_path();
    let head = format!(
        "# site policy: keep this line\nhost = \"{HOST}\"\naudit_log = \"{}\"\n\n[security]\n# approvers are reviewed quarterly\nallowed_issuers = [\"https://old.example.com\"]\nallowed_approvers = [\"bob@example.com\"]  # bob is on call\nclock_skew = 20\n",
        w.sb.audit_path().display()
    );
    let tail = format!(
        "\n[cache]\ndir = \"{}\"\njwks_min_refresh = 0\n\n[http]\ntimeout = 2\n",
        w.sb.cache_dir().display()
    );
    w.sb.write_config(&format!("{head}{tail}"));

    let out = w.trust(
        &cfg,
        &[
            "--idp",
            &iss,
            "--approvers",
            &format!("{APPROVER},bob@example.com"),
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    let text = fs::read_to_string(&cfg).unwrap();
    // Only the lists change, plus the one line that
    // --allow-unprivileged-loopback adds below the header.
    let want = format!(
        "# site policy: keep this line\nhost = \"{HOST}\"\naudit_log = \"{}\"\n\n[security]\nallow_unprivileged_loopback = true   # http issuer on a port >= 1024: tests and demos only\n# approvers are reviewed quarterly\nallowed_issuers = [\"https://old.example.com\", \"{iss}\"]\nallowed_approvers = [\"bob@example.com\", \"{APPROVER}\"]  # bob is on call\nclock_skew = 20\n{tail}",
        w.sb.audit_path().display()
    );
    assert_eq!(text, want);
    assert_mode_root(&cfg, 0o600);
    let c = w.load(&cfg);
    assert_eq!(c.allowed_approvers, vec!["bob@example.com", APPROVER]);
    assert_eq!(c.clock_skew, 20);

    // Same again: nothing to change, the file is not rewritten.
    let before = snap(&cfg);
    let out = w.trust(&cfg, &["--idp", &iss, "--approvers", APPROVER]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("nothing to change"), "{out}");
    assert_eq!(snap(&cfg), before);

    // The written trust root works: a grant from this IdP runs.
    let argv = w.sb.marker_cmd("merged");
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let g = w.idp.issue(&GrantSpec::new(HOST, &argv_ref));
    let mut args = vec!["--grant-stdin".to_string(), "--".to_string()];
    args.extend(argv.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w.as_user(&args, Some(g.jwt.as_bytes()));
    assert_eq!(out.code, 0, "{out}");
    assert!(w.sb.marker_exists("merged"));
}

/// A file with only top-level keys (no [security] yet) gets the table
/// appended; the keys and the comment stay.
#[test]
fn trust_adds_a_security_table_to_a_file_without_one() {
    let Some(w) = setup("trust-addtable") else {
        return;
    };
    let cfg = w.sb.config_path();
    w.sb.write_config("# comment\nrun_as = \"root\"\n");
    let out = w.trust(&cfg, &["--idp", &w.idp.issuer(), "--approvers", APPROVER]);
    assert_eq!(out.code, 0, "{out}");
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(
        text.starts_with("# comment\nrun_as = \"root\"\n\n[security]\n"),
        "{text}"
    );
    assert_eq!(w.load(&cfg).allowed_approvers, vec![APPROVER]);
}

/// `--replace` overwrites both lists (and needs both); other keys stay.
#[test]
fn trust_replace_overwrites_both_lists() {
    let Some(w) = setup("trust-replace") else {
        return;
    };
    let iss = w.idp.issuer();
    let cfg = w.sb.config_path();
    w.sb.write_config(
        "host = \"h1\"\n[security]\nallowed_issuers = [\"https://old.example.com\"]\nallowed_approvers = [\"bob@example.com\", \"eve@example.com\"]\n",
    );
    // Half a replacement is a usage error and changes nothing.
    let before = snap(&cfg);
    let out = w.trust(&cfg, &["--replace", "--idp", &iss]);
    assert_eq!(out.code, 2, "{out}");
    assert_eq!(snap(&cfg), before);

    let out = w.trust(
        &cfg,
        &[
            "--replace",
            "--idp",
            &iss,
            "--approvers",
            "carol@example.com",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("- eve@example.com"), "{out}");
    let c = w.load(&cfg);
    assert_eq!(c.allowed_issuers, vec![iss]);
    assert_eq!(c.allowed_approvers, vec!["carol@example.com"]);
    assert_eq!(c.host, "h1");
    assert_mode_root(&cfg, 0o600);
}

/// An unreachable IdP is refused (nothing written), unless
/// `--skip-validation`, which writes without any request.
#[test]
fn trust_skip_validation_writes_for_an_unreachable_idp() {
    let Some(w) = setup("trust-skip") else {
        return;
    };
    let cfg = w.sb.config_path();
    let dead = dead_url();
    let out = w.trust(&cfg, &["--idp", &dead, "--approvers", APPROVER]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("--skip-validation"), "{out}");
    assert!(!cfg.exists());

    let out = w.trust(
        &cfg,
        &["--idp", &dead, "--approvers", APPROVER, "--skip-validation"],
    );
    assert_eq!(out.code, 0, "{out}");
    assert_mode_root(&cfg, 0o600);
    assert_eq!(w.load(&cfg).allowed_issuers, vec![dead]);
}

/// The setuid binary run by a user (euid 0, real uid not 0) never edits
/// the trust root: exit 1, the file unchanged (content, mode, inode,
/// mtime), no new file, and the IdP is not even asked.
#[test]
fn trust_by_a_non_root_user_is_refused() {
    let Some(w) = setup("trust-nonroot") else {
        return;
    };
    let cfg = w.sb.config_path();
    w.sb.write_config(&w.sb.config(&w.idp.issuer()).render());
    let before = snap(&cfg);
    let evil = "mallory@example.com";
    for args in [
        vec![
            "trust",
            "--config",
            cfg.to_str().unwrap(),
            "--approvers",
            evil,
        ],
        vec![
            "trust",
            "--config",
            cfg.to_str().unwrap(),
            "--replace",
            "--idp",
            "http://127.0.0.1:9",
            "--approvers",
            evil,
            "--skip-validation",
        ],
    ] {
        let out = w.as_user(&args, None);
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr.contains("must be run by root"), "{out}");
        assert_eq!(snap(&cfg), before);
    }
    let fresh = w.sb.path("etc/new/config.toml");
    let out = w.as_user(
        &[
            "trust",
            "--config",
            fresh.to_str().unwrap(),
            "--idp",
            &w.idp.issuer(),
            "--approvers",
            evil,
        ],
        None,
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(!w.sb.path("etc/new").exists());
    assert_eq!(w.idp.requests().len(), 0, "{:?}", w.idp.requests());
    assert_eq!(
        leftovers(&w.sb.path("etc"), &["config.toml"]),
        Vec::<String>::new()
    );
}

/// An existing file someone else could have written is not blessed into
/// a root-owned trust root; a result that would not load (an unknown key
/// in the old file) is never written.
#[test]
fn trust_refuses_untrusted_or_invalid_existing_files() {
    let Some(w) = setup("trust-untrusted") else {
        return;
    };
    let u = test_user();
    let cfg = w.sb.config_path();
    let text = w.sb.config(&w.idp.issuer()).render();
    for (uid, mode) in [(u.uid, 0o600), (0, 0o666)] {
        w.sb.write_file("etc/config.toml", text.as_bytes(), uid, 0, mode);
        let before = snap(&cfg);
        let out = w.trust(
            &cfg,
            &["--approvers", "bob@example.com", "--skip-validation"],
        );
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr.contains("refusing to edit"), "{out}");
        assert_eq!(snap(&cfg), before);
    }

    w.sb.write_config(&format!("{text}\nbogus_key = 1\n"));
    let before = snap(&cfg);
    let out = w.trust(
        &cfg,
        &["--approvers", "bob@example.com", "--skip-validation"],
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains("refusing to write an invalid configuration"),
        "{out}"
    );
    assert_eq!(snap(&cfg), before);
    assert_eq!(
        leftovers(&w.sb.path("etc"), &["config.toml"]),
        Vec::<String>::new()
    );
}

/// A missing config directory below a directory someone else may write
/// is refused before anything is made there. It was created first (root,
/// 0755) and its chain checked only after, by path: the other user could
/// swap the new directory for a symlink in between, and the chown and the
/// chmod 0755 that follow the mkdir landed on the symlink's target.
#[test]
fn trust_creates_nothing_below_a_directory_others_may_write() {
    let Some(w) = setup("trust-mkdir") else {
        return;
    };
    let theirs = w.sb.user_dir("theirs");
    let cfg = theirs.join("openape/config.toml");
    let out = w.trust(
        &cfg,
        &[
            "--idp",
            "https://id.example.com",
            "--approvers",
            "bob@example.com",
            "--skip-validation",
        ],
    );
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("unsafe directory"), "{out}");
    assert_eq!(
        leftovers(&theirs, &[]),
        Vec::<String>::new(),
        "made in a directory of another user: {out}"
    );
}

/// Usage errors (exit 2, nothing written): no flags without a terminal,
/// a plain-http non-loopback IdP, an approver with a space, an unknown flag.
#[test]
fn trust_usage_errors() {
    let Some(w) = setup("trust-usage") else {
        return;
    };
    let cfg = w.sb.config_path();
    for args in [
        vec![],
        vec!["--idp", "http://id.example.com", "--approvers", APPROVER],
        vec!["--idp", "https://id.example.com", "--approvers", "a b@x"],
        vec!["--frobnicate"],
    ] {
        let out = w.trust(&cfg, &args);
        assert_eq!(out.code, 2, "{args:?}: {out}");
        assert!(!cfg.exists());
    }
    let out = output(w.sb.escapes_run(&["trust", "--help"]));
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("--skip-validation"), "{out}");
}

/// Without flags on a terminal, both values are asked for (plain echo)
/// and the IdP is validated as with flags. `script` provides the pty.
#[test]
fn trust_prompts_on_a_terminal() {
    let Some(w) = setup("trust-prompt") else {
        return;
    };
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("skipped: /usr/bin/script (util-linux) is needed for a pty");
        return;
    }
    let cfg = w.sb.config_path();
    let cmd = format!(
        "{} trust --allow-unprivileged-loopback --config {}",
        w.sb.escapes().display(),
        cfg.display()
    );
    let answers = format!("{}\n{APPROVER}, bob@example.com\n", w.idp.issuer());
    let out = output(
        Run::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("PATH", SANE_PATH)
            .stdin(answers),
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("IdP URL"), "{out}");
    assert!(out.stdout.contains("Approver emails"), "{out}");
    let c = w.load(&cfg);
    assert_eq!(c.allowed_issuers, vec![w.idp.issuer()]);
    assert_eq!(c.allowed_approvers, vec![APPROVER, "bob@example.com"]);
}

// ---------------------------------------------------------------------------
// escapes update
// ---------------------------------------------------------------------------

/// The "new release": the built binary plus a trailer (still a valid ELF
/// that runs), so the replacement is visible byte for byte.
fn new_release() -> Vec<u8> {
    let mut b = fs::read(escapes_bin()).unwrap();
    b.extend_from_slice(
        format!(
            "\n-- escapes update test release {} --\n",
            std::process::id()
        )
        .as_bytes(),
    );
    b
}

/// A small release for the refusal tests (the debug escapes is ~50 MB and
/// unoptimised SHA-256 is slow): `true`, an ELF for this machine, plus a
/// trailer.
fn small_release() -> Vec<u8> {
    let src = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("true(1) is installed");
    let mut b = fs::read(src).unwrap();
    b.extend_from_slice(b"\n-- escapes update test release --\n");
    b
}

fn manifest(version: &str, url: &str, sha: &str) -> Vec<u8> {
    json!({"version": version, "url": url, "sha256": sha})
        .to_string()
        .into_bytes()
}

impl W {
    /// Sandbox config for this IdP (with `extra` appended) and a release.
    fn release(&self, version: &str, binary: Vec<u8>, extra: &str) {
        let mut c = self.sb.config(&self.idp.issuer());
        c.tail = extra.to_string();
        self.sb.write_config(&c.render());
        let m = manifest(version, &self.idp.release_bin_url(), &sha256_hex(&binary));
        self.idp.set_release(&m, binary);
    }

    /// `bin/escapes update --config <sandbox config> args...` as root: the
    /// sandbox copy updates itself.
    fn update(&self, args: &[&str]) -> Output {
        let cfg = self.sb.config_path();
        let mut a = vec!["update", "--config", cfg.to_str().unwrap()];
        a.extend_from_slice(args);
        output(self.sb.escapes_run(&a))
    }

    fn update_from_idp(&self, args: &[&str]) -> Output {
        let url = self.idp.release_manifest_url();
        let mut a = vec!["--manifest-url", url.as_str()];
        a.extend_from_slice(args);
        self.update(&a)
    }

    /// The old binary is exactly as it was and no temp file is left.
    fn assert_untouched(&self, before: &Snap, out: &Output) {
        let bin = self.sb.escapes();
        assert_eq!(snap(&bin), *before, "binary changed: {out}");
        assert_eq!(before.mode, 0o4755);
        assert_eq!(
            leftovers(&self.sb.path("bin"), &["escapes"]),
            Vec::<String>::new(),
            "{out}"
        );
    }
}

/// The sandbox's setuid copy, run as root, replaces itself: new content,
/// 4755 root:root, a new inode (renamed into place), nothing left over,
/// and the new binary runs.
#[test]
fn update_replaces_the_running_copy_keeping_setuid_root() {
    let Some(w) = setup("update-ok") else { return };
    let new = new_release();
    w.release("99.0.0", new.clone(), "");
    let bin = w.sb.escapes();
    let old_ino = snap(&bin).ino;
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!("{VERSION} -> 99.0.0")),
        "{out}"
    );
    let now = snap(&bin);
    assert!(now.bytes == new, "the binary is not the release");
    assert_eq!((now.mode, now.uid, now.gid), (0o4755, 0, 0));
    assert_ne!(now.ino, old_ino);
    assert_eq!(
        leftovers(&w.sb.path("bin"), &["escapes"]),
        Vec::<String>::new()
    );
    assert_eq!(w.idp.request_count("/_test/release/bin"), 1);
    let v = output(Run::new(&bin).arg("--version"));
    assert_eq!(
        (v.code, v.stdout.trim()),
        (0, format!("escapes {VERSION}").as_str()),
        "{v}"
    );
}

/// An update killed (or a crash) between its chmod and its rename left
/// its temp file: a setuid-root copy of that release beside the binary,
/// which outlived every later update (an old, perhaps vulnerable, setuid
/// program). The next update removes such files of runs that are gone,
/// and leaves anything else alone.
#[test]
fn update_removes_a_setuid_copy_an_interrupted_update_left() {
    let Some(w) = setup("update-leftover") else {
        return;
    };
    w.release("99.0.0", small_release(), "");
    let bin_dir = w.sb.path("bin");
    // pid_max is at most 2^22: no process has this pid.
    let left = bin_dir.join(".escapes-update.tmp-4999999-12345");
    fs::copy(w.sb.escapes(), &left).unwrap();
    fs::set_permissions(&left, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let unrelated = bin_dir.join(".escapes-other.tmp-4999999-1");
    fs::write(&unrelated, b"x").unwrap();
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        !left.exists(),
        "the leftover setuid copy is still there: {out}"
    );
    assert!(
        out.stderr.contains(".escapes-update.tmp-4999999-12345")
            && out.stderr.contains("interrupted update"),
        "{out}"
    );
    assert!(unrelated.exists());
    assert_eq!(
        leftovers(&bin_dir, &["escapes", ".escapes-other.tmp-4999999-1"]),
        Vec::<String>::new(),
        "{out}"
    );
}

/// A hard link to the installed binary (one a user made where the file
/// system and `fs.protected_hardlinks = 0` allow it, to keep a release
/// with a known hole) is no setuid-root program after `escapes update`:
/// the replaced inode is left 0600, as dpkg leaves a replaced setuid file.
/// Before, the link kept mode 4755 and ran the old release as root.
#[test]
fn update_leaves_no_setuid_hard_link_to_the_old_release() {
    let Some(w) = setup("update-hardlink") else {
        return;
    };
    let new = small_release();
    w.release("99.0.0", new.clone(), "");
    let bin = w.sb.escapes();
    let kept = w.sb.path("kept-escapes");
    fs::hard_link(&bin, &kept).unwrap();
    assert_eq!(snap(&kept).mode, 0o4755);
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 0, "{out}");
    let now = snap(&bin);
    assert!(now.bytes == new, "the binary is not the release: {out}");
    assert_eq!((now.mode, now.uid), (0o4755, 0), "{out}");
    let old = snap(&kept);
    assert_eq!(
        old.mode, 0o600,
        "the hard link to the replaced binary kept mode {:o}: {out}",
        old.mode
    );
}

/// An admin who narrowed who may run the setuid binary (mode 4750, a
/// group of its own: README, "To let only one group run escapes") keeps
/// that across `escapes update`: the new binary takes the old one's group
/// and permission bits (never a write bit for group or others). It was
/// made root:root 4755, so every local user could run it again.
#[test]
fn update_keeps_the_installed_group_and_mode() {
    let Some(w) = setup("update-keeps-mode") else {
        return;
    };
    let new = small_release();
    w.release("99.0.0", new.clone(), "");
    let bin = w.sb.escapes();
    let gid = test_user().gid;
    std::os::unix::fs::chown(&bin, Some(0), Some(gid)).unwrap();
    fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o4750)).unwrap();
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 0, "{out}");
    let now = snap(&bin);
    assert!(now.bytes == new, "the binary is not the release: {out}");
    assert_eq!((now.mode, now.uid, now.gid), (0o4750, 0, gid), "{out}");
}

/// `[update] manifest_url` in the config; `--check` only reports (the
/// binary is not even downloaded); then the real update; the old
/// `escapes --update` spelling is the same command.
#[test]
fn update_from_config_and_check_only_reports() {
    let Some(w) = setup("update-config") else {
        return;
    };
    let new = small_release();
    let extra = format!(
        "[update]\nmanifest_url = \"{}\"\n",
        w.idp.release_manifest_url()
    );
    w.release("99.0.0", new.clone(), &extra);
    let before = snap(&w.sb.escapes());
    let out = w.update(&["--check"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("available: escapes 99.0.0"), "{out}");
    assert!(out.stdout.contains("update is available"), "{out}");
    w.assert_untouched(&before, &out);
    assert_eq!(w.idp.request_count("/_test/release/bin"), 0);

    let out = w.update(&[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(snap(&w.sb.escapes()).bytes == new);
}

/// Not configured: exit 1 with a hint, nothing fetched.
#[test]
fn update_not_configured_is_an_error() {
    let Some(w) = setup("update-unconf") else {
        return;
    };
    w.sb.write_config(&w.sb.config(&w.idp.issuer()).render());
    let before = snap(&w.sb.escapes());
    let out = w.update(&[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("not configured"), "{out}");
    w.assert_untouched(&before, &out);
    // The old spelling reads /etc/openape/config.toml; only checked where
    // that file does not exist (it would be this machine's real config).
    if !Path::new("/etc/openape/config.toml").exists() {
        let out = output(w.sb.escapes_run(&["--update"]));
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr.contains("not configured"), "{out}");
        w.assert_untouched(&before, &out);
    }
}

/// Same version: up to date, nothing downloaded. Older: refused as a
/// downgrade. `--force` installs the same version anyway.
#[test]
fn update_up_to_date_and_downgrade() {
    let Some(w) = setup("update-same") else {
        return;
    };
    let new = small_release();
    w.release(VERSION, new.clone(), "");
    let before = snap(&w.sb.escapes());
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("up to date"), "{out}");
    w.assert_untouched(&before, &out);

    w.release("0.0.1", new.clone(), "");
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("downgrade"), "{out}");
    w.assert_untouched(&before, &out);
    assert_eq!(w.idp.request_count("/_test/release/bin"), 0);

    w.release(VERSION, new.clone(), "");
    let out = w.update_from_idp(&["--force"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(snap(&w.sb.escapes()).bytes == new);
}

/// A checksum that does not match the download: refused, old binary
/// byte-identical and still 4755 root, temp file removed.
#[test]
fn update_refuses_a_bad_checksum() {
    let Some(w) = setup("update-sha") else { return };
    let new = small_release();
    let mut c = w.sb.config(&w.idp.issuer());
    c.tail = String::new();
    w.sb.write_config(&c.render());
    let wrong = sha256_hex(b"something else");
    w.idp
        .set_release(&manifest("99.0.0", &w.idp.release_bin_url(), &wrong), new);
    let before = snap(&w.sb.escapes());
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("checksum mismatch"), "{out}");
    w.assert_untouched(&before, &out);
}

/// The server announces the whole binary and closes half-way: refused,
/// old binary untouched, no temp file.
#[test]
fn update_refuses_a_download_cut_midway() {
    let Some(w) = setup("update-cut") else { return };
    let new = small_release();
    let half = new.len() / 2;
    w.release("99.0.0", new, "");
    w.idp.set_release_mode(ReleaseMode::CutAfter(half));
    let before = snap(&w.sb.escapes());
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("cannot download"), "{out}");
    w.assert_untouched(&before, &out);
}

/// More than 64 MiB, announced (refused before reading) or not (refused
/// when the cap is passed): old binary untouched, no temp file.
#[test]
fn update_refuses_an_oversized_download() {
    let Some(w) = setup("update-big") else { return };
    w.release("99.0.0", small_release(), "");
    let before = snap(&w.sb.escapes());
    for announce in [true, false] {
        w.idp.set_release_mode(ReleaseMode::Filler {
            bytes: MAX_BINARY + 1,
            announce,
        });
        let out = w.update_from_idp(&[]);
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr.contains("larger than"), "{out}");
        w.assert_untouched(&before, &out);
    }
}

/// A manifest whose binary URL is on another origin (another port) is
/// refused before anything is fetched from there.
#[test]
fn update_refuses_a_binary_on_another_origin() {
    let Some(w) = setup("update-origin") else {
        return;
    };
    let other = TestIdp::start();
    let new = small_release();
    other.set_release(b"{}", new.clone());
    let mut c = w.sb.config(&w.idp.issuer());
    c.tail = String::new();
    w.sb.write_config(&c.render());
    w.idp.set_release(
        &manifest("99.0.0", &other.release_bin_url(), &sha256_hex(&new)),
        Vec::new(),
    );
    let before = snap(&w.sb.escapes());
    let out = w.update_from_idp(&[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("origin"), "{out}");
    w.assert_untouched(&before, &out);
    assert_eq!(other.requests().len(), 0, "{:?}", other.requests());
}

/// Garbage manifests and a non-executable "binary" with a matching
/// checksum: refused, old binary untouched.
#[test]
fn update_refuses_garbage() {
    let Some(w) = setup("update-garbage") else {
        return;
    };
    let mut c = w.sb.config(&w.idp.issuer());
    c.tail = String::new();
    w.sb.write_config(&c.render());
    let before = snap(&w.sb.escapes());
    let bin_url = w.idp.release_bin_url();
    let script = b"#!/bin/sh\necho pwned\n".to_vec();
    let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (b"<html>not json".to_vec(), Vec::new(), "not JSON"),
        (b"{}".to_vec(), Vec::new(), "no string"),
        (
            manifest("latest", &bin_url, &sha256_hex(b"")),
            Vec::new(),
            "MAJOR.MINOR.PATCH",
        ),
        (manifest("99.0.0", &bin_url, "1234"), Vec::new(), "64 hex"),
        (
            manifest(
                "99.0.0",
                &bin_url.replace("http://127.0.0.1", "http://example.com"),
                &sha256_hex(b""),
            ),
            Vec::new(),
            "https",
        ),
        (
            manifest("99.0.0", &bin_url, &sha256_hex(&script)),
            script.clone(),
            "not an ELF",
        ),
    ];
    for (m, bin, why) in cases {
        w.idp.set_release(&m, bin);
        let out = w.update_from_idp(&[]);
        assert_eq!(out.code, 1, "{why}: {out}");
        assert!(out.stderr.contains(why), "{why}: {out}");
        w.assert_untouched(&before, &out);
    }
    // A plain-http, non-loopback manifest URL is a usage error.
    let out = w.update(&["--manifest-url", "http://example.com/m.json"]);
    assert_eq!(out.code, 2, "{out}");
    w.assert_untouched(&before, &out);
}

/// What a terminal could act on: a control character other than the
/// newline that ends a line, or a bidi control that reorders the text.
fn terminal_active(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A manifest server's binary url reaches root's terminal only escaped.
/// It was echoed raw in the refusal ("the manifest's binary url <url>
/// must start with https://"): an OSC that sets the window title, a
/// screen clear and a CR overwriting the line with a fake "updated"; and
/// a same-origin url with a bidi override passed the URL rule and was
/// printed as the available release. Now a URL is printable ASCII only
/// and a refused one is shown escaped.
#[test]
fn update_shows_a_hostile_manifest_url_only_escaped() {
    let Some(w) = setup("update-manifest-url-bytes") else {
        return;
    };
    let mut c = w.sb.config(&w.idp.issuer());
    c.tail = String::new();
    w.sb.write_config(&c.render());
    let before = snap(&w.sb.escapes());
    let bin_url = w.idp.release_bin_url();
    let sha = sha256_hex(b"");
    let fake = "\u{1b}]0;root@host\u{7}\u{1b}[2J\u{1b}[1;32mupdated: 99.0.0\u{1b}[0m\r";
    for (url, why) in [
        (format!("{fake}{bin_url}"), "must start with https://"),
        (
            format!("{}{fake}", bin_url.replace("127.0.0.1", "example.com")),
            "must use https",
        ),
        (format!("{bin_url}/{fake}"), "not a plain https URL"),
        (
            format!("{bin_url}/\u{202e}exe.hsilbup"),
            "not a plain https URL",
        ),
        (format!("{bin_url}/\u{85}x"), "not a plain https URL"),
    ] {
        w.idp
            .set_release(&manifest("99.0.0", &url, &sha), Vec::new());
        let out = w.update_from_idp(&[]);
        assert_eq!(out.code, 1, "{url:?}: {out}");
        assert!(out.stderr.contains(why), "{url:?}: {out}");
        for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.chars().any(terminal_active),
                "{url:?}: raw control or bidi character on {name}: {text:?}"
            );
        }
        w.assert_untouched(&before, &out);
    }
    assert_eq!(w.idp.request_count("/_test/release/bin"), 0);
}

/// A manifest on plain http at a loopback port at or above 1024 is served
/// by whoever binds that port first (any local user, while the real
/// service is down or before it starts), and its binary becomes the
/// setuid-root escapes. Like an issuer there, it is refused unless the
/// config says `allow_unprivileged_loopback = true` or the command line
/// `--allow-unprivileged-loopback`. Here the config names an https issuer
/// (so it needs no such flag) and the test IdP's release routes play the
/// server on an unprivileged port.
#[test]
fn update_refuses_an_unprivileged_loopback_manifest_without_a_yes() {
    let Some(w) = setup("update-unpriv-loopback") else {
        return;
    };
    let manifest_url = w.idp.release_manifest_url();
    let cfg = format!(
        "host = \"{HOST}\"\naudit_log = \"{}\"\n[security]\nallowed_issuers = [\"https://id.example.com\"]\nallowed_approvers = [\"{APPROVER}\"]\n[update]\nmanifest_url = \"{manifest_url}\"\n",
        w.sb.audit_path().display()
    );
    w.sb.write_config(&cfg);
    let new = small_release();
    w.idp.set_release(
        &manifest("99.0.0", &w.idp.release_bin_url(), &sha256_hex(&new)),
        new.clone(),
    );
    let before = snap(&w.sb.escapes());
    // From the config, and the same URL from the command line.
    for args in [vec![], vec!["--manifest-url", manifest_url.as_str()]] {
        let out = w.update(&args);
        assert_eq!(out.code, 1, "{args:?}: {out}");
        assert!(
            out.stderr.contains("allow-unprivileged-loopback"),
            "{args:?}: {out}"
        );
        w.assert_untouched(&before, &out);
    }
    assert_eq!(w.idp.requests().len(), 0, "{:?}", w.idp.requests());
    // The explicit yes on the command line installs it.
    let out = w.update(&["--allow-unprivileged-loopback"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(snap(&w.sb.escapes()).bytes == new, "{out}");
}

/// `install.sh` (run by root, it installs whatever the release server
/// sends: SHA256SUMS comes from the same server) allowed plain http "only
/// to loopback" by matching a prefix: `http://127.0.0.1@host/` (userinfo),
/// `http://127.host.example/` and `http://localhost:80@host/` went to a
/// remote host over plain http, where anyone on the path chooses the
/// setuid binary. The whole authority is checked now, and a loopback port
/// of 1024 or above (any local user's to bind) needs
/// `--allow-unprivileged-loopback`. A stand-in `curl` first on PATH
/// records any download attempt.
#[test]
fn install_sh_allows_plain_http_to_loopback_only() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh");
    let dir = std::env::temp_dir().join(format!("openape-install-sh-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin")).unwrap();
    let curl = dir.join("bin/curl");
    fs::write(
        &curl,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}/fetched\nexit 22\n",
            dir.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&curl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // install.sh with `args`, started by `launcher` (its last word is the
    // shell that runs the script).
    let run_in = |launcher: &[&str], args: &[&str]| {
        let _ = fs::remove_file(dir.join("fetched"));
        let out = Command::new(launcher[0])
            .args(&launcher[1..])
            .arg(&script)
            .args(args)
            .arg("--destdir")
            .arg(dir.join("dest"))
            .env("PATH", format!("{}:{SANE_PATH}", dir.join("bin").display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.code(), text, dir.join("fetched").exists())
    };
    let run = |args: &[&str]| run_in(&["sh"], args);
    for url in [
        "http://127.0.0.1@example.invalid/rel",
        "http://localhost:80@example.invalid/rel",
        "http://[::1]@example.invalid/rel",
        "http://127.example.invalid/rel",
        "http://127.0.0.1?@example.invalid/rel",
        "http://127.0.0.1:8000/rel",
    ] {
        let (code, text, fetched) = run(&["--base-url", url]);
        assert_ne!(code, Some(0), "{url}: {text}");
        assert!(text.contains("refusing"), "{url}: {text}");
        assert!(!fetched, "{url}: curl was run: {text}");
    }
    // Loopback on a privileged port, and an unprivileged one with the
    // explicit yes, are fetched (the stand-in curl then fails).
    for args in [
        vec!["--base-url", "http://127.0.0.1/rel"],
        vec!["--base-url", "http://[::1]:80/rel"],
        vec!["--base-url", "http://localhost/rel"],
        vec![
            "--allow-unprivileged-loopback",
            "--base-url",
            "http://127.0.0.1:8000/rel",
        ],
    ] {
        let (code, text, fetched) = run(&args);
        assert_ne!(code, Some(0), "{args:?}: {text}");
        assert!(fetched, "{args:?}: not fetched: {text}");
    }
    // Where the kernel leaves every port to users (a network namespace
    // with net.ipv4.ip_unprivileged_port_start = 0, as container runtimes
    // set it), port 80 is no longer root's: refused without the yes.
    if harness::require_root_because(
        "skipped the ip_unprivileged_port_start = 0 case: needs root (a network namespace)",
    ) {
        for (url, yes) in [
            ("http://127.0.0.1/rel", ""),
            ("http://localhost:80/rel", ""),
            // The control: the same URL with the explicit yes is fetched.
            ("http://127.0.0.1/rel", "--allow-unprivileged-loopback"),
        ] {
            let refused = yes.is_empty();
            let mut args: Vec<&str> = Some(yes).filter(|y| !y.is_empty()).into_iter().collect();
            args.extend(["--base-url", url]);
            let (code, text, fetched) = run_in(
                &[
                    "unshare",
                    "--net",
                    "--",
                    "sh",
                    "-c",
                    "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start && exec sh \"$0\" \"$@\"",
                ],
                &args,
            );
            assert_ne!(code, Some(0), "{url}: {text}");
            assert_eq!(
                text.contains("which any local user can bind"),
                refused,
                "{url}: {text}"
            );
            assert_eq!(fetched, !refused, "{url} {yes}: fetched or not: {text}");
        }
    }
    assert!(!dir.join("dest").exists());
    let _ = fs::remove_dir_all(&dir);
}

/// The setuid binary run by a user is refused before any request: exit
/// 1, old binary untouched, the release server not contacted.
#[test]
fn update_by_a_non_root_user_is_refused() {
    let Some(w) = setup("update-nonroot") else {
        return;
    };
    w.release("99.0.0", small_release(), "");
    let before = snap(&w.sb.escapes());
    let cfg = w.sb.config_path();
    let url = w.idp.release_manifest_url();
    for args in [
        vec![
            "update",
            "--config",
            cfg.to_str().unwrap(),
            "--manifest-url",
            &url,
        ],
        vec!["update", "--manifest-url", &url, "--check"],
        vec!["--update"],
    ] {
        let out = w.as_user(&args, None);
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr.contains("must be run by root"), "{out}");
        w.assert_untouched(&before, &out);
    }
    assert_eq!(w.idp.requests().len(), 0, "{:?}", w.idp.requests());
}

/// Unmounts a tmpfs on drop (before the sandbox removes its tree).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("/bin/umount").arg(&self.0).status();
    }
}

/// The disk fills up during the download: refused, the old binary (on
/// that full file system) untouched, the partial temp file removed.
/// Skipped where tmpfs cannot be mounted.
#[test]
fn update_on_a_full_disk_leaves_the_old_binary() {
    let Some(w) = setup("update-full") else {
        return;
    };
    // 8 MiB announced and streamed; the file system has 256 KiB left.
    w.release("99.0.0", small_release(), "");
    w.idp.set_release_mode(ReleaseMode::Filler {
        bytes: 8 << 20,
        announce: true,
    });
    let dir = w.sb.path("small");
    fs::create_dir(&dir).unwrap();
    let size = fs::metadata(escapes_bin()).unwrap().len() + 256 * 1024;
    let st = Command::new("/bin/mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size},mode=0755,uid=0,gid=0"))
        .arg("tmpfs")
        .arg(&dir)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(dir.clone());
    let bin = w.sb.install_setuid(&escapes_bin(), "small/escapes");
    let before = snap(&bin);
    let cfg = w.sb.config_path();
    let url = w.idp.release_manifest_url();
    let out = output(Run::new(&bin).args([
        "update",
        "--config",
        cfg.to_str().unwrap(),
        "--manifest-url",
        &url,
    ]));
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("No space left"), "{out}");
    assert_eq!(snap(&bin), before);
    assert_eq!(leftovers(&dir, &["escapes"]), Vec::<String>::new());
}

/// A binary that dpkg lists as a package's file is not replaced: the
/// package manager owns it. Run in a private mount namespace where
/// /var/lib/dpkg/info holds one .list naming the sandbox's escapes.
#[test]
fn update_refuses_a_binary_owned_by_a_package() {
    let Some(w) = setup("update-dpkg") else {
        return;
    };
    if !Path::new("/var/lib/dpkg/info").is_dir() {
        eprintln!("skipped: no /var/lib/dpkg/info (not a dpkg system)");
        return;
    }
    w.release("99.0.0", small_release(), "");
    let info = w.sb.path("dpkg-info");
    std::fs::create_dir(&info).unwrap();
    let list = format!("/.\n/usr\n{}\n", w.sb.escapes().display());
    w.sb.write_file(
        "dpkg-info/openape-escapes.list",
        list.as_bytes(),
        0,
        0,
        0o644,
    );
    let before = snap(&w.sb.escapes());
    let script = format!(
        "mount --bind {} /var/lib/dpkg/info && exec {} update --config {} --manifest-url {}",
        info.display(),
        w.sb.escapes().display(),
        w.sb.config_path().display(),
        w.idp.release_manifest_url()
    );
    let out = output(Run::new("/usr/bin/unshare").args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]));
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains("belongs to the package openape-escapes"),
        "{out}"
    );
    w.assert_untouched(&before, &out);
    assert_eq!(w.idp.request_count("/_test/release/bin"), 0);
}

/// Issue 10 item 13: trusting a plain-http IdP on a loopback port >= 1024
/// (which any local user could bind) needs the explicit flag.
#[test]
fn trust_refuses_an_unprivileged_loopback_idp_without_the_flag() {
    let Some(w) = setup("trust-loopback") else {
        return;
    };
    let cfg = w.sb.config_path();
    let before = fs::read(&cfg).ok();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let iss = w.idp.issuer();
    let out = output(w.sb.escapes_run(&[
        "trust",
        "--config",
        &cfg_s,
        "--idp",
        &iss,
        "--approvers",
        APPROVER,
    ]));
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr.contains("--allow-unprivileged-loopback"),
        "{out}"
    );
    assert_eq!(fs::read(&cfg).ok(), before, "nothing written");
    assert!(w.idp.requests().is_empty());
}
