//! Replays the committed fuzz corpus on the stable toolchain, without
//! cargo-fuzz: every file in `fuzz/corpus/<target>/` goes through the same
//! `pam_openape::fuzzing::<target>` function the libFuzzer harness calls.
//! A panic (including a failed property assertion) fails the test and names
//! the file, so a regression input added to the corpus keeps failing CI
//! until the bug is fixed.
//!
//! The named seeds (`seed-*`) are written by the ignored test
//! `write_seed_corpus`; the files named by a SHA-1 are inputs the fuzzer
//! found that add coverage (merged in with `libFuzzer -merge=1`):
//!
//! ```text
//! cargo test -p openape-tests --test fuzz_corpus -- --ignored write_seed_corpus
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pam_openape::fuzzing::{self, HEADER, HOST, ISSUER, ISSUER_DOWN, ISSUER_GARBAGE, NOW};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

type Target = fn(&[u8]);
/// Named seed inputs of one target.
type Seeds = Vec<(String, Vec<u8>)>;

const TARGETS: &[(&str, Target)] = &[
    ("token", fuzzing::token),
    ("sudo_argv", fuzzing::sudo_argv),
    ("su_argv", fuzzing::su_argv),
    ("config", fuzzing::config),
    ("idp_responses", fuzzing::idp_responses),
];

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_directory_is_a_target_and_not_empty() {
    let root = corpus_root();
    for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            !path.is_dir() || TARGETS.iter().any(|(t, _)| *t == name),
            "{} is not a fuzz target; a corpus there would never be replayed",
            path.display()
        );
    }
    for (name, _) in TARGETS {
        let n = inputs(&root.join(name)).len();
        assert!(n > 0, "fuzz/corpus/{name} is empty");
    }
}

#[test]
fn every_corpus_input_replays_cleanly() {
    let root = corpus_root();
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, target) in TARGETS {
        for file in inputs(&root.join(name)) {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            total += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let base = file.file_name().and_then(|n| n.to_str()).unwrap_or("?");
                failures.push(format!("fuzz/corpus/{name}/{base}: {msg}"));
            }
        }
    }
    assert!(total > 0);
    assert!(
        failures.is_empty(),
        "{} of {total} corpus inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Without this the token fuzzer never gets past the key step and its
/// figures mean nothing.
#[test]
fn the_fuzzing_chain_accepts_its_good_grant() {
    assert_eq!(fuzzing::self_test(), Ok(()));
}

// ---------------------------------------------------------------------------
// Seed corpus
// ---------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn argv_hash(argv: &[&str]) -> String {
    format!("SHA-256:{}", sha256_hex(json!(argv).to_string().as_bytes()))
}

fn cmd_hash(argv: &[&str]) -> String {
    sha256_hex(argv.join(" ").as_bytes())
}

/// A grant in the shape the OpenApe IdP (and tests/src/idp.rs) issues.
fn grant() -> Value {
    let argv = ["systemctl", "restart", "nginx"];
    json!({
        "iss": ISSUER, "sub": "deploy-agent@example.com", "aud": "escapes",
        "target_host": HOST, "iat": NOW - 10, "exp": NOW + 290,
        "jti": "6f1c2a9e-0b7d-4c1e-9a53-2f4d8e7b1c60",
        "grant_id": "6f1c2a9e-0b7d-4c1e-9a53-2f4d8e7b1c60",
        "grant_type": "once", "approval": "once",
        "command": argv, "cmd_hash": cmd_hash(&argv),
        "execution_context": {"argv": argv, "argv_hash": argv_hash(&argv)},
        "decided_by": "alice@example.com", "run_as": "root"
    })
}

fn with(mut v: Value, changes: &[(&str, Value)]) -> Value {
    for (k, val) in changes {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(*k);
        } else {
            v[*k] = val.clone();
        }
    }
    v
}

fn without_binding(v: Value) -> Value {
    with(
        v,
        &[
            ("command", Value::Null),
            ("cmd_hash", Value::Null),
            ("execution_context", Value::Null),
        ],
    )
}

fn sign(header: &Value, claims: &Value) -> Vec<u8> {
    fuzzing::sign(header.to_string().as_bytes(), claims.to_string().as_bytes())
        .unwrap()
        .into_bytes()
}

fn sign_raw(header: &str, claims: &str) -> Vec<u8> {
    fuzzing::sign(header.as_bytes(), claims.as_bytes())
        .unwrap()
        .into_bytes()
}

fn unsigned(header: &Value, claims: &Value, sig: &str) -> Vec<u8> {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
    .into_bytes()
}

fn token_seeds() -> Seeds {
    let g = grant();
    let h = json!({"alg":"EdDSA","typ":"JWT","kid":"fuzz-1"});
    let hk = |kid: &str| json!({"alg":"EdDSA","typ":"JWT","kid":kid});
    let long_once = with(g.clone(), &[("exp", json!(NOW + 7200))]);
    let ambiguous = ["echo", "a b"];
    let claims: Vec<(&str, Value)> = vec![
        ("good", g.clone()),
        (
            "good-command-only",
            serde_json::from_str(&fuzzing::good_claims()).unwrap(),
        ),
        (
            "timed",
            with(
                g.clone(),
                &[
                    ("grant_type", json!("timed")),
                    ("approval", json!("timed")),
                    ("exp", json!(NOW + 86_400)),
                ],
            ),
        ),
        (
            "always",
            with(
                g.clone(),
                &[("grant_type", json!("always")), ("exp", json!(NOW + 3600))],
            ),
        ),
        ("once-too-long", long_once),
        ("expired", with(g.clone(), &[("exp", json!(NOW - 100))])),
        (
            "nbf-future",
            with(g.clone(), &[("nbf", json!(NOW + 86_400))]),
        ),
        ("iat-future", with(g.clone(), &[("iat", json!(NOW + 600))])),
        (
            "no-approver",
            with(g.clone(), &[("decided_by", Value::Null)]),
        ),
        (
            "approver-not-allowed",
            with(g.clone(), &[("decided_by", json!("mallory@example.com"))]),
        ),
        (
            "self-approved",
            with(
                g.clone(),
                &[
                    ("decided_by", json!("alice@example.com")),
                    ("sub", json!("alice@example.com")),
                ],
            ),
        ),
        (
            "aud-array-with-ours",
            with(g.clone(), &[("aud", json!(["other", "escapes"]))]),
        ),
        (
            "aud-array-without-ours",
            with(g.clone(), &[("aud", json!(["other", "apes-cli"]))]),
        ),
        ("aud-sudo", with(g.clone(), &[("aud", json!("sudo"))])),
        (
            "other-host",
            with(g.clone(), &[("target_host", json!("otherhost"))]),
        ),
        (
            "subject-not-allowed",
            with(g.clone(), &[("sub", json!("other-agent@example.com"))]),
        ),
        (
            "run-as-www-data",
            with(g.clone(), &[("run_as", json!("www-data"))]),
        ),
        ("run-as-absent", with(g.clone(), &[("run_as", Value::Null)])),
        (
            "cmd-hash-only",
            with(
                without_binding(g.clone()),
                &[(
                    "cmd_hash",
                    json!(cmd_hash(&["systemctl", "restart", "nginx"])),
                )],
            ),
        ),
        (
            "cmd-hash-ambiguous",
            with(
                without_binding(g.clone()),
                &[("cmd_hash", json!(cmd_hash(&ambiguous)))],
            ),
        ),
        (
            "cmd-hash-prefixed",
            with(
                without_binding(g.clone()),
                &[(
                    "cmd_hash",
                    json!(format!(
                        "sha256:{}",
                        cmd_hash(&["systemctl", "restart", "nginx"])
                    )),
                )],
            ),
        ),
        (
            "argv-hash-only",
            with(
                without_binding(g.clone()),
                &[(
                    "execution_context",
                    json!({"argv_hash": argv_hash(&ambiguous)}),
                )],
            ),
        ),
        (
            "context-argv-only",
            with(
                without_binding(g.clone()),
                &[("execution_context", json!({"argv": ambiguous}))],
            ),
        ),
        ("no-binding", without_binding(g.clone())),
        (
            "command-extra-arg",
            with(
                g.clone(),
                &[("command", json!(["systemctl", "restart", "nginx", "-f"]))],
            ),
        ),
        (
            "command-hostile-args",
            with(
                without_binding(g.clone()),
                &[(
                    "command",
                    json!(["echo", "a\nb", "", "\u{1b}[2J", "{\"event\":\"grant_run\"}"]),
                )],
            ),
        ),
        (
            "exp-string",
            with(g.clone(), &[("exp", json!("1750000290"))]),
        ),
        ("exp-float", with(g.clone(), &[("exp", json!(1.75e9))])),
        ("nbf-null", {
            let mut v = g.clone();
            v["nbf"] = Value::Null;
            v
        }),
        (
            "iss-array",
            with(g.clone(), &[("iss", json!([ISSUER, ISSUER]))]),
        ),
        (
            "agent-login-token",
            json!({"iss": ISSUER, "sub": "deploy-agent@example.com", "aud": "apes-cli",
                   "iat": NOW - 10, "exp": NOW + 28_800, "act": "agent"}),
        ),
        (
            "issuer-not-allowed",
            with(g.clone(), &[("iss", json!("https://evil.example"))]),
        ),
        (
            "issuer-down",
            with(g.clone(), &[("iss", json!(ISSUER_DOWN))]),
        ),
        (
            "issuer-garbage",
            with(g.clone(), &[("iss", json!(ISSUER_GARBAGE))]),
        ),
        (
            "grant-id-path-chars",
            with(g.clone(), &[("grant_id", json!("../x?y#%2e/.."))]),
        ),
        (
            "extra-claims",
            with(
                g.clone(),
                &[
                    ("permissions", json!(["run", "ünïcödé", "\u{7}"])),
                    ("unknown", json!({"deep": [[[[{"x": null}]]]]})),
                ],
            ),
        ),
    ];

    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    // Claims mode: the harness signs the payload itself.
    for (name, c) in &claims {
        out.push((format!("seed-claims-{name}"), c.to_string().into_bytes()));
    }
    out.push((
        "seed-claims-duplicate-exp".into(),
        g.to_string()
            .replacen('{', &format!("{{\"exp\":{},", NOW + 100), 1)
            .into_bytes(),
    ));
    out.push((
        "seed-claims-deep".into(),
        format!("{{\"deep\":{}{}}}", "[".repeat(200), "]".repeat(200)).into_bytes(),
    ));
    // Token mode: compact JWS as presented by the caller.
    for (name, c) in claims.iter().take(6) {
        out.push((format!("seed-jws-{name}"), sign(&h, c)));
    }
    for kid in [
        "fuzz-2",
        "short",
        "long",
        "rsa",
        "hmac",
        "x25519",
        "enc",
        "es",
        "unknown",
        "../../etc/passwd",
    ] {
        out.push((
            format!("seed-jws-kid-{}", kid.replace(['.', '/'], "_")),
            sign(&hk(kid), &g),
        ));
    }
    let good = sign(&h, &g);
    let good_s = String::from_utf8(good.clone()).unwrap();
    let mut flipped = good_s.clone().into_bytes();
    if let Some(last) = flipped.last_mut() {
        *last = if *last == b'A' { b'B' } else { b'A' };
    }
    out.extend([
        ("seed-jws-good".to_string(), good.clone()),
        ("seed-jws-sig-flipped".into(), flipped),
        ("seed-jws-padded".into(), format!("{good_s}=").into_bytes()),
        (
            "seed-jws-newline".into(),
            format!("{good_s}\n").into_bytes(),
        ),
        (
            "seed-jws-std-alphabet".into(),
            good_s.replace('-', "+").replace('_', "/").into_bytes(),
        ),
        (
            "seed-jws-four-parts".into(),
            format!("{good_s}.e30").into_bytes(),
        ),
        (
            "seed-jws-two-parts".into(),
            good_s
                .rsplit_once('.')
                .map_or("", |(head, _)| head)
                .as_bytes()
                .to_vec(),
        ),
        (
            "seed-jws-alg-none".into(),
            unsigned(&json!({"alg":"none","typ":"JWT"}), &g, ""),
        ),
        (
            "seed-jws-alg-none-kid".into(),
            unsigned(&json!({"alg":"none","kid":"fuzz-1"}), &g, "c2ln"),
        ),
        (
            "seed-jws-hs256".into(),
            unsigned(
                &json!({"alg":"HS256","typ":"JWT","kid":"fuzz-1"}),
                &g,
                "c2ln",
            ),
        ),
        (
            "seed-jws-crit".into(),
            sign(&json!({"alg":"EdDSA","kid":"fuzz-1","crit":["exp"]}), &g),
        ),
        (
            "seed-jws-jku-x5u".into(),
            sign(
                &json!({"alg":"EdDSA","kid":"fuzz-1","jku":"https://evil.example/jwks.json",
                        "x5u":"https://evil.example/c.pem","jwk":{"kty":"OKP"}}),
                &g,
            ),
        ),
        (
            "seed-jws-typ-at-jwt".into(),
            sign(&json!({"alg":"EdDSA","kid":"fuzz-1","typ":"at+jwt"}), &g),
        ),
        (
            "seed-jws-no-kid".into(),
            sign(&json!({"alg":"EdDSA","typ":"JWT"}), &g),
        ),
        (
            "seed-jws-header-duplicate-alg".into(),
            sign_raw(
                r#"{"alg":"EdDSA","kid":"fuzz-1","alg":"none"}"#,
                &g.to_string(),
            ),
        ),
        (
            "seed-jws-header-raw".into(),
            sign_raw(HEADER, &fuzzing::good_claims()),
        ),
        ("seed-jws-garbage".into(), b"hello".to_vec()),
        (
            "seed-jws-not-json".into(),
            format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode("not json"),
                URL_SAFE_NO_PAD.encode("[1,2]")
            )
            .into_bytes(),
        ),
    ]);
    out
}

fn nul(args: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for a in args {
        v.extend_from_slice(a.as_bytes());
        v.push(0);
    }
    v
}

fn sudo_seeds() -> Seeds {
    let cases: &[(&str, &[&str])] = &[
        ("plain", &["sudo", "id", "-u"]),
        ("user", &["sudo", "-u", "root", "id"]),
        (
            "n-S-dashdash",
            &[
                "/usr/bin/sudo",
                "-n",
                "-S",
                "--",
                "systemctl",
                "restart",
                "nginx",
            ],
        ),
        ("cluster-nu", &["sudo", "-nu", "nobody", "id"]),
        ("cluster-attached", &["sudo", "-unobody", "id"]),
        ("cluster-long", &["sudo", "-Snunobody", "id"]),
        ("long-user-eq", &["sudo", "--user=nobody", "id"]),
        ("long-user", &["sudo", "--user", "nobody", "--", "id"]),
        (
            "long-flags",
            &["sudo", "--non-interactive", "--stdin", "id"],
        ),
        ("uid-0", &["sudo", "-u#0", "id"]),
        ("uid-minus-1", &["sudo", "-u", "#-1", "id"]),
        ("uid-max", &["sudo", "-u#4294967295", "id"]),
        ("uid-hex", &["sudo", "-u", "#0x0", "id"]),
        ("uid-space", &["sudo", "-u", "# 0", "id"]),
        ("user-twice", &["sudo", "-u", "root", "-u", "nobody", "id"]),
        ("shell", &["sudo", "-s"]),
        ("login", &["sudo", "-i", "id"]),
        ("edit", &["sudo", "-e", "/etc/shadow"]),
        (
            "sudoedit-baron-samedit",
            &["sudoedit", "-s", "\\", "AAAAAAAAAAAAAAAA"],
        ),
        ("preserve-env", &["sudo", "-E", "id"]),
        ("preserve-env-list", &["sudo", "--preserve-env=PATH", "id"]),
        ("chdir", &["sudo", "-D", "/", "id"]),
        ("chroot", &["sudo", "-R", "/tmp", "id"]),
        ("host", &["sudo", "-h", "other", "id"]),
        ("close-from", &["sudo", "-C", "3", "id"]),
        ("timeout", &["sudo", "-T", "5", "id"]),
        ("group", &["sudo", "-g", "root", "id"]),
        ("var-assignment", &["sudo", "FOO=bar", "id"]),
        ("path-with-equals", &["sudo", "/opt/a=b/run", "x"]),
        (
            "env-command",
            &["sudo", "/usr/bin/env", "LD_PRELOAD=/tmp/x.so", "id"],
        ),
        (
            "sudo-rs",
            &["/usr/bin/sudo-rs", "-u", "www-data", "ls", "-l"],
        ),
        ("options-after-command", &["sudo", "ls", "-s", "--", "-i"]),
        ("dash-command", &["sudo", "-", "id"]),
        ("dashdash-option", &["sudo", "--", "-u", "root"]),
        ("comm-with-spaces", &["x ) 1 2", "id"]),
        ("no-command", &["sudo", "-n"]),
        ("hostile-args", &["sudo", "echo", "a\nb", "", "\u{1b}[2J"]),
    ];
    let mut out: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(n, a)| (format!("seed-{n}"), nul(a)))
        .collect();
    out.push(("seed-non-utf8".into(), b"sudo\0id\0\xff\xfe\0".to_vec()));
    out.push((
        "seed-no-trailing-nul".into(),
        b"sudo\0-u\0root\0id".to_vec(),
    ));
    out.push((
        "seed-environ".into(),
        b"A=1\0OPENAPE_GRANT=x.y.z\0OPENAPE_GRANT=second\0OPENAPE_GRANTX=no\0".to_vec(),
    ));
    out
}

fn su_seeds() -> Seeds {
    let cases: &[(&str, &[&str])] = &[
        ("plain", &["su"]),
        ("dash", &["su", "-"]),
        ("login-root", &["/bin/su", "-l", "root"]),
        ("command-user", &["su", "-c", "id -u", "root"]),
        ("command-long-eq", &["su", "-", "--command=id -u"]),
        (
            "command-long",
            &[
                "su",
                "--login",
                "--command",
                "systemctl restart nginx",
                "root",
            ],
        ),
        ("command-attached", &["su", "-cid", "--", "nobody"]),
        ("shell", &["su", "-s", "/bin/sh", "-c", "id"]),
        ("preserve", &["su", "-m", "-c", "id"]),
        ("p", &["su", "-p"]),
        ("command-twice", &["su", "-c", "a", "-c", "b"]),
        ("extra-operand", &["su", "root", "extra"]),
        ("group", &["su", "-g", "root"]),
        ("uid-minus-1", &["su", "#-1"]),
        ("uid-0", &["su", "#0"]),
        ("empty-user", &["su", ""]),
        ("user-space", &["su", "root "]),
        ("dashdash-dash-c", &["su", "--", "-c"]),
        ("sudo-name", &["sudo", "-c", "id"]),
        ("whitelist-env", &["su", "-w", "PATH", "-c", "id"]),
        (
            "hostile-command",
            &["su", "-c", "echo a\nb; \u{1b}[2J", "root"],
        ),
    ];
    let mut out: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(n, a)| (format!("seed-{n}"), nul(a)))
        .collect();
    out.push(("seed-non-utf8".into(), b"su\0-c\0\xff\0".to_vec()));
    out.push(("seed-environ".into(), b"OPENAPE_GRANT=a.b.c\0".to_vec()));
    out
}

fn config_seeds() -> Seeds {
    const MIN: &str = "[security]\nallowed_issuers = [\"https://id.openape.at\"]\nallowed_approvers = [\"alice@example.com\"]\n";
    let old = "host = \"macmini\"\nrun_as = \"root\"\naudit_log = \"/var/log/openape/audit.log\"\n\n[security]\nallowed_issuers = [\"https://id.openape.at\"]\nallowed_approvers = [\"phofmann@delta-mind.at\"]\nallowed_audiences = [\"escapes\"]\n\n[tls]\nca_bundle = \"/etc/ssl/certs/ca-certificates.crt\"\n";
    let full = "host = \"web-1\"\nrun_as = \"root\"\naudit_log = \"/var/log/openape/audit.log\"\n\n[security]\nallowed_issuers = [\"https://id.openape.at\", \"http://127.0.0.1:8080\", \"http://[::1]:9\"]\nallowed_approvers = [\"alice@example.com\", \"bob@example.com\"]\nallowed_audiences = [\"escapes\", \"sudo\"]\nclock_skew = 30\nallow_self_approval = false\n\n[subjects]\ndeploy = [\"deploy-agent@example.com\"]\n\"odd name\" = [\"x@example.com\"]\n\n[tls]\nca_bundle = \"/etc/ssl/certs/ca-certificates.crt\"\n\n[http]\ntimeout = 10\n\n[env]\nkeep = [\"SSH_AUTH_SOCK\", \"TZ\"]\nsecure_path = \"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\n[cache]\ndir = \"/var/cache/openape\"\njwks_max_age = 300\njwks_min_refresh = 10\n";
    let mut out: Vec<(String, Vec<u8>)> = vec![
        ("seed-minimal".into(), MIN.into()),
        ("seed-old-escapes".into(), old.into()),
        ("seed-full".into(), full.into()),
        ("seed-fuzzing-config".into(), fuzzing::CONFIG.into()),
        ("seed-host-only".into(), "host = \"x\"\n".into()),
        ("seed-empty".into(), Vec::new()),
        (
            "seed-no-approvers".into(),
            "[security]\nallowed_issuers = [\"https://a\"]\n".into(),
        ),
        (
            "seed-empty-lists".into(),
            "[security]\nallowed_issuers = []\nallowed_approvers = []\n".into(),
        ),
        (
            "seed-inline-tables".into(),
            "host = \"h\"\nsecurity = { allowed_issuers = [\"https://a\"], allowed_approvers = [\"b\"] }\nhttp = { timeout = 120 }\n".into(),
        ),
        (
            "seed-module-args".into(),
            "config=/etc/openape/config.toml audience=sudo grant_env=OPENAPE_GRANT prompt=Grant:_ nonint command=auto grant_only debug".into(),
        ),
        (
            "seed-module-args-bad".into(),
            "command=none grant_env=1BAD bogus config=relative".into(),
        ),
    ];
    let bad: &[(&str, &str)] = &[
        (
            "http-issuer",
            "[security]\nallowed_issuers = [\"http://id.openape.at\"]\nallowed_approvers = [\"a\"]\n",
        ),
        (
            "loopback-lookalike",
            "[security]\nallowed_issuers = [\"http://127.0.0.1.evil.com\"]\nallowed_approvers = [\"a\"]\n",
        ),
        (
            "userinfo-issuer",
            "[security]\nallowed_issuers = [\"https://user@id.openape.at/?x#y\"]\nallowed_approvers = [\"a\"]\n",
        ),
        (
            "blank-approver",
            "[security]\nallowed_issuers = [\"https://a\"]\nallowed_approvers = [\" \"]\n",
        ),
    ];
    for (n, t) in bad {
        out.push((format!("seed-{n}"), t.as_bytes().to_vec()));
    }
    let tails: &[(&str, &str)] = &[
        ("keep-ld-preload", "[env]\nkeep = [\"LD_PRELOAD\"]\n"),
        ("keep-bash-env", "[env]\nkeep = [\"BASH_ENV\", \"PATH\"]\n"),
        ("keep-bad-name", "[env]\nkeep = [\"A-B\", \"1X\"]\n"),
        ("timeout-0", "[http]\ntimeout = 0\n"),
        ("timeout-huge", "[http]\ntimeout = 4294967296\n"),
        (
            "relative-secure-path",
            "[env]\nsecure_path = \"/bin:bin\"\n",
        ),
        ("empty-secure-path", "[env]\nsecure_path = \"\"\n"),
        (
            "relative-cache",
            "[cache]\ndir = \"cache\"\njwks_max_age = -1\n",
        ),
        ("relative-ca", "[tls]\nca_bundle = \"ca.pem\"\n"),
        ("skew-301", "clock_skew = 301\n"),
        ("skew-string", "clock_skew = \"30\"\n"),
        ("unknown-key", "allowed_approver = [\"x\"]\n"),
        ("subjects-empty", "[subjects]\ndeploy = []\n"),
        (
            "duplicate-section",
            "[security]\nallowed_issuers = [\"https://b\"]\n",
        ),
        ("array-of-tables", "[[cache]]\ndir = \"/x\"\n"),
        (
            "self-approval",
            "allow_self_approval = true\nallowed_audiences = []\n",
        ),
    ];
    for (n, t) in tails {
        out.push((format!("seed-{n}"), format!("{MIN}{t}").into_bytes()));
    }
    let heads: &[(&str, &str)] = &[
        ("host-space", "host = \"a b\"\n"),
        ("host-empty", "host = \"\"\n"),
        ("run-as-empty", "run_as = \"\"\n"),
        ("audit-relative", "audit_log = \"log\"\n"),
        ("host-duplicate", "host = \"a\"\nhost = \"b\"\n"),
        ("nested-arrays", "x = [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]\n"),
        (
            "multiline-strings",
            "host = '''\nmulti'''\nrun_as = \"\"\"\\u0000\"\"\"\n",
        ),
    ];
    for (n, t) in heads {
        out.push((format!("seed-{n}"), format!("{t}{MIN}").into_bytes()));
    }
    out
}

fn idp_seeds() -> Seeds {
    // First byte: HTTP status (index into fuzzing's table: 0 = 200,
    // 3 = 201, 7 = 401, 8 = 403, 9 = 404, 12 = 500); second: grant type
    // (0 once, 1 timed, 2 always).
    let cases: &[(&str, u8, u8, &str)] = &[
        ("consumed", 0, 0, r#"{"status":"consumed"}"#),
        ("valid-timed", 0, 1, r#"{"status":"valid"}"#),
        ("valid-always", 0, 2, r#"{"status":"valid"}"#),
        ("valid-once", 0, 0, r#"{"status":"valid"}"#),
        ("empty-object", 0, 0, "{}"),
        ("status-null", 0, 0, r#"{"status":null}"#),
        ("status-ok", 0, 0, r#"{"status":"ok"}"#),
        (
            "status-and-error",
            0,
            0,
            r#"{"status":"consumed","error":"revoked"}"#,
        ),
        (
            "status-twice",
            0,
            0,
            r#"{"status":"consumed","status":"consumed"}"#,
        ),
        ("error-null", 0, 1, r#"{"status":"valid","error":null}"#),
        (
            "already-consumed-200",
            0,
            0,
            r#"{"error":"already_consumed"}"#,
        ),
        (
            "already-consumed-403",
            8,
            0,
            r#"{"error":"already_consumed"}"#,
        ),
        ("revoked", 8, 1, r#"{"error":"revoked"}"#),
        ("denied", 0, 2, r#"{"error":"denied"}"#),
        ("expired", 8, 1, r#"{"error":"expired"}"#),
        ("not-approved", 8, 0, r#"{"error":"not_approved"}"#),
        (
            "other-error",
            0,
            0,
            r#"{"error":"\u001b[2J\n{\"event\":\"grant_run\"}"}"#,
        ),
        ("401", 7, 0, ""),
        ("404", 9, 0, "{}"),
        ("500", 12, 0, "oops"),
        ("201-consumed", 3, 0, r#"{"status":"consumed"}"#),
        ("html", 0, 0, "<html><body>Bad Gateway</body></html>"),
        ("jwks-empty", 0, 0, r#"{"keys":[]}"#),
        ("jwks-not-array", 0, 0, r#"{"keys":{"kty":"OKP"}}"#),
        (
            "jwks-rsa-only",
            0,
            0,
            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"fuzz-1"}]}"#,
        ),
        (
            "jwks-hmac",
            0,
            0,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"fuzz-1","alg":"HS256"}]}"#,
        ),
        (
            "jwks-short-key",
            0,
            0,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AQEBAQEBAQEBAQEBAQEBAQ","kid":"fuzz-1"}]}"#,
        ),
        (
            "jwks-padded-key",
            0,
            0,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"aWHl9G3AyL4RDuiajxM5jiLqgN23Ge0fdiyuCnLQcDY=","kid":"fuzz-1"}]}"#,
        ),
        (
            "jwks-wrong-key",
            0,
            0,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"Ao64eY0yYNCU0aLE-79KgRFhDnfUm-7adgi_6j5Ht2o","kid":"fuzz-1"}]}"#,
        ),
        (
            "jwks-null-fields",
            0,
            0,
            r#"{"keys":[{"kty":null,"crv":null,"x":null,"kid":"fuzz-1"}]}"#,
        ),
        (
            "jwks-enc-use",
            0,
            0,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"aWHl9G3AyL4RDuiajxM5jiLqgN23Ge0fdiyuCnLQcDY","kid":"fuzz-1","use":"enc"}]}"#,
        ),
    ];
    let mut out: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(n, s, g, body)| {
            let mut v = vec![*s, *g];
            v.extend_from_slice(body.as_bytes());
            (format!("seed-{n}"), v)
        })
        .collect();
    let mut jwks = vec![0u8, 0];
    jwks.extend_from_slice(fuzzing::jwks_document().as_bytes());
    out.push(("seed-jwks-fuzz-issuer".into(), jwks));
    let mut idp_shape = vec![0u8, 0];
    idp_shape.extend_from_slice(
        json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":fuzzing::X,"kid":"fuzz-1","alg":"EdDSA","use":"sig"},
                       {"kty":"OKP","crv":"Ed25519","x":fuzzing::X2,"kid":"test-0011223344556677","alg":"EdDSA","use":"sig"}]})
        .to_string()
        .as_bytes(),
    );
    out.push(("seed-jwks-rotated".into(), idp_shape));
    out
}

/// Write the named seeds into fuzz/corpus/<target>/ (overwriting seeds of
/// the same name, leaving every other file alone).
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the seeds"]
fn write_seed_corpus() {
    let root = corpus_root();
    let sets: [(&str, Seeds); 5] = [
        ("token", token_seeds()),
        ("sudo_argv", sudo_seeds()),
        ("su_argv", su_seeds()),
        ("config", config_seeds()),
        ("idp_responses", idp_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(&name), &data).unwrap();
        }
    }
}
