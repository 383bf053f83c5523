//! `openape-test-idp`: the in-process test IdP as a program, for the README
//! demo and benchmarks. Test double only — never run it as a real IdP.
//!
//! ```text
//! openape-test-idp [--port N] [--lifetime SECS] [--max-requests N] [--refusal-status 403|200]
//! ```
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

fn main() -> ExitCode {
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
