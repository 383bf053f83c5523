//! `openape-test-idp`: the in-process test IdP as a program, for the README
//! demo and benchmarks. Test double only — never run it as a real IdP.
//!
//! ```text
//! openape-test-idp [--port N] [--lifetime SECS] [--max-requests N] [--refusal-status 403|200]
//! openape-test-idp approve|deny ID|--latest --as EMAIL --issuer URL
//! openape-test-idp register-agent --email EMAIL --public-key-file FILE.pub --issuer URL
//! openape-test-idp switch --issuer URL [--auto-approve EMAIL|off] [--reuse-grants on|off]
//! ```
//!
//! The second to fourth forms talk to a running test IdP over its
//! loopback control routes: play the approver from another terminal,
//! enroll an agent key, flip the auto-approval and grant-reuse switches.
//!
//! Binds 127.0.0.1 only, prints `issuer=http://127.0.0.1:PORT` once listening,
//! and exits after `--lifetime` seconds (default 600), after `--max-requests`
//! connections (default 100000), or on SIGTERM/SIGINT (default disposition).
//! Besides the real protocol it serves the test-only routes `POST /_test/grant`,
//! `POST /_test/fault` and `POST /_test/rotate` (see `openape_tests::idp`).

use std::io::Write as _;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use openape_tests::idp::{DEFAULT_MAX_CONNECTIONS, IdpOptions, TestIdp};

const USAGE: &str = "usage: openape-test-idp [--port N] [--lifetime SECS] [--max-requests N] [--refusal-status 403|200]";

struct Args {
    port: u16,
    lifetime: Duration,
    max_requests: usize,
    refusal_status: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        lifetime: Duration::from_secs(600),
        max_requests: DEFAULT_MAX_CONNECTIONS,
        refusal_status: 403,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--port" => a.port = value.parse().map_err(|_| bad())?,
            "--lifetime" => a.lifetime = Duration::from_secs(value.parse().map_err(|_| bad())?),
            "--max-requests" => {
                a.max_requests = value.parse().map_err(|_| bad())?;
                if a.max_requests == 0 {
                    return Err(bad());
                }
            }
            "--refusal-status" => {
                a.refusal_status = match value.as_str() {
                    "403" => 403,
                    "200" => 200,
                    _ => return Err(bad()),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

/// `http://127.0.0.1:PORT` → `127.0.0.1:PORT` (loopback only).
fn loopback_addr(issuer: &str) -> Result<String, String> {
    let rest = issuer
        .strip_prefix("http://")
        .ok_or("--issuer must be the test IdP's http://127.0.0.1:PORT")?;
    let addr = rest.trim_end_matches('/');
    let ip = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    if ip != "127.0.0.1" {
        return Err("--issuer must be on 127.0.0.1".into());
    }
    Ok(addr.to_string())
}

fn call(issuer: &str, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
    let addr = loopback_addr(issuer)?;
    match openape_tests::http_client::request(
        addr.as_str(),
        method,
        path,
        &[],
        body,
        Duration::from_secs(10),
    ) {
        Ok((s, b)) if (200..300).contains(&s) => Ok(b),
        Ok((s, b)) => Err(format!("{method} {path}: HTTP {s} {b}")),
        Err(e) => Err(format!("{method} {path}: {e}")),
    }
}

/// The control subcommands; `None` when `argv[1]` is not one.
fn control(argv: &[String]) -> Option<Result<String, String>> {
    let cmd = argv.get(1)?.clone();
    if !matches!(
        cmd.as_str(),
        "approve" | "deny" | "register-agent" | "switch"
    ) {
        return None;
    }
    let mut flags = std::collections::HashMap::new();
    let mut positional = Vec::new();
    let mut it = argv.iter().skip(2);
    while let Some(a) = it.next() {
        if a.starts_with("--") && a != "--latest" {
            match it.next() {
                Some(v) => {
                    flags.insert(a.clone(), v.clone());
                }
                None => return Some(Err(format!("{a} needs a value"))),
            }
        } else {
            positional.push(a.clone());
        }
    }
    let run = || -> Result<String, String> {
        let issuer = flags.get("--issuer").ok_or("--issuer URL is required")?;
        match cmd.as_str() {
            "approve" | "deny" => {
                let who = flags.get("--as").ok_or("--as EMAIL is required")?;
                let id = match positional.first().map(String::as_str) {
                    Some("--latest") | None => {
                        let body = call(issuer, "GET", "/_test/pending", None)?;
                        let v: serde_json::Value =
                            serde_json::from_str(&body).map_err(|e| e.to_string())?;
                        v["pending"]
                            .as_array()
                            .and_then(|a| a.last())
                            .and_then(|x| x.as_str())
                            .map(str::to_string)
                            .ok_or("no pending grant")?
                    }
                    Some(id) => id.to_string(),
                };
                let body = serde_json::json!({"decided_by": who}).to_string();
                call(
                    issuer,
                    "POST",
                    &format!("/api/grants/{id}/{cmd}"),
                    Some(&body),
                )?;
                Ok(format!("{cmd}d grant {id} as {who}").replace("denyd", "denied"))
            }
            "register-agent" => {
                let email = flags.get("--email").ok_or("--email is required")?;
                let file = flags
                    .get("--public-key-file")
                    .ok_or("--public-key-file is required")?;
                let key = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
                let body = serde_json::json!({"email": email, "public_key": key}).to_string();
                call(issuer, "POST", "/_test/agent", Some(&body))?;
                Ok(format!("enrolled agent {email}"))
            }
            _ => {
                let mut m = serde_json::Map::new();
                if let Some(a) = flags.get("--auto-approve") {
                    m.insert(
                        "auto_approve".into(),
                        if a == "off" {
                            serde_json::Value::Null
                        } else {
                            a.clone().into()
                        },
                    );
                }
                if let Some(r) = flags.get("--reuse-grants") {
                    m.insert("reuse_grants".into(), (r == "on").into());
                }
                call(
                    issuer,
                    "POST",
                    "/_test/switch",
                    Some(&serde_json::Value::Object(m).to_string()),
                )?;
                Ok("switched".into())
            }
        }
    };
    Some(run())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(result) = control(&argv) {
        return match result {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("openape-test-idp: {e}");
                ExitCode::from(1)
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("openape-test-idp: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let idp = match TestIdp::start_with(IdpOptions {
        port: args.port,
        max_connections: args.max_requests,
        refusal_status: args.refusal_status,
    }) {
        Ok(idp) => idp,
        Err(e) => {
            eprintln!(
                "openape-test-idp: cannot listen on 127.0.0.1:{}: {e}",
                args.port
            );
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "issuer={}", idp.issuer())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    let start = Instant::now();
    while start.elapsed() < args.lifetime && !idp.finished() {
        thread::sleep(Duration::from_millis(50));
    }
    // Dropping the IdP stops the server and joins its threads.
    drop(idp);
    ExitCode::SUCCESS
}
