//! Benchmark (a): the verification chain (steps 1–11) with a warm JWKS
//! cache, per call. No network: after one warm-up fetch, the fetcher in
//! the measured loop refuses every request, so a run that needed the IdP
//! would fail instead of being timed. Run with `make bench`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

use openape_tests::idp::{GrantSpec, GrantType, TestIdp};
use pam_openape::config::Config;
use pam_openape::http::Client;
use pam_openape::jwks::{Fetch, KeyCache};
use pam_openape::time::now_unix;
use pam_openape::verify::{Request, check};

struct NoNetwork(Cell<u32>);

impl Fetch for NoNetwork {
    fn fetch(&self, _url: &str) -> Result<Vec<u8>, String> {
        self.0.set(self.0.get() + 1);
        Err("the warm path must not touch the network".into())
    }
}

fn main() {
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let base =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-chain-{}", std::process::id()));
    std::fs::create_dir_all(base.join("cache")).unwrap();
    let idp = TestIdp::start();
    let text = format!(
        "host = \"benchhost\"\naudit_log = \"{0}/audit.log\"\n[security]\nallowed_issuers = [\"{1}\"]\nallowed_approvers = [\"alice@example.com\"]\nallow_unprivileged_loopback = true\n[cache]\ndir = \"{0}/cache\"\n",
        base.display(),
        idp.issuer()
    );
    let mut cfg = Config::parse(&base.join("config.toml"), &text, me).unwrap();
    cfg.trusted_owner = me;
    let mut spec = GrantSpec::new("benchhost", &["systemctl", "restart", "nginx"]);
    spec.grant_type = GrantType::Timed;
    let jwt = idp.issue(&spec).jwt;
    let argv: Vec<String> = ["systemctl", "restart", "nginx"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let req = Request {
        caller: "root",
        target_user: None,
        argv: Some(&argv),
    };

    // Warm the cache with one real fetch.
    let client = Client::new(cfg.http_timeout, None, me).unwrap();
    let mut keys = KeyCache::new(&cfg);
    if let Err(e) = check(
        &jwt,
        &req,
        &cfg,
        &mut keys,
        &client,
        now_unix(),
        &mut |_, _| {},
    ) {
        panic!("warm-up failed (is {} trusted?): {e}", base.display());
    }

    let offline = NoNetwork(Cell::new(0));
    let rounds = 30;
    let per_round = 200;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            let mut keys = KeyCache::new(&cfg);
            let v = check(
                &jwt,
                &req,
                &cfg,
                &mut keys,
                &offline,
                now_unix(),
                &mut |_, _| {},
            );
            assert!(v.is_ok(), "{v:?}");
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
    }
    assert_eq!(offline.0.get(), 0, "the warm path fetched the JWKS");
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = samples[samples.len() / 2];
    println!(
        "chain (steps 1-11, warm JWKS cache, includes reading the cache file): median {median:.1} µs per call, min {:.1}, max {:.1} ({} calls); target <= 100 µs",
        samples[0],
        samples[samples.len() - 1],
        rounds * per_round as usize
    );
    let _ = std::fs::remove_dir_all(&base);
}
