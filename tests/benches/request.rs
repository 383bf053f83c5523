//! Benchmark (c): request mode, the real setuid `escapes` run by the
//! non-root test user with no grant, against the loopback test IdP.
//!
//! * approval-to-exec latency: the bench approves the pending grant after
//!   a random 0.2–1.4 s pause and the command prints the wall-clock time
//!   it started (`date +%s%N`); the difference is the latency (median and
//!   worst of 20 runs);
//! * IdP requests per waiting minute: one request left pending for
//!   `SAMPLE` seconds (the first minute is the fastest-polling phase, so
//!   this is the worst case); status polls and all requests counted and
//!   scaled to 60 s.
//!
//! Needs root; run with `make bench`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openape_tests::harness::{Sandbox, require_root, test_user};
use openape_tests::idp::TestIdp;
use openape_tests::sudo_ns::PamSandbox;

const RUNS: usize = 20;
const SAMPLE: u64 = 15;
const AGENT: &str = "agent@example.com";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u32::from_le_bytes(b)
}

/// Approve the grant that `start` makes after a random 0.2–1.4 s pause;
/// `run` prints the wall-clock start of the command (`date +%s%N`). The
/// latency in ms.
fn one_latency(idp: &TestIdp, run: impl FnOnce() -> openape_tests::harness::Output + Send) -> f64 {
    let before = idp.grant_ids().len();
    let (approved_at, out) = std::thread::scope(|s| {
        let h = s.spawn(run);
        let start = Instant::now();
        let id = loop {
            let ids = idp.grant_ids();
            if ids.len() > before {
                break ids[before].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no request");
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(200 + u64::from(random_u32() % 1200)));
        let t = now_ns();
        assert!(idp.approve(&id, openape_tests::harness::APPROVER));
        (t, h.join().unwrap())
    });
    assert_eq!(out.code, 0, "{out}");
    // sudo prints its PAM messages on stdout too: take the number.
    let started: u128 = out
        .stdout
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no start time: {out}"));
    (started.saturating_sub(approved_at)) as f64 / 1e6
}

fn median_worst(mut lat: Vec<f64>) -> (f64, f64) {
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[lat.len() / 2], lat[lat.len() - 1])
}

fn main() {
    if !require_root() {
        return;
    }
    let user = test_user();
    let idp = TestIdp::start();
    let mut sb = Sandbox::new("bench-request");
    let home = sb.with_user_home();
    let mut cfg = sb.config(&idp.issuer());
    cfg.tail = "[request]\ntimeout = 120\n".into();
    sb.write_config(&cfg.render());
    let key = idp.enrol_agent_key(&home, user, AGENT, None);

    // Approval-to-exec latency: escapes, then real sudo with `request`.
    let lat: Vec<f64> = (0..RUNS)
        .map(|_| {
            one_latency(&idp, || {
                sb.escapes_run(&["--", "date", "+%s%N"])
                    .as_test_user()
                    .timeout(Duration::from_secs(60))
                    .output()
            })
        })
        .collect();
    let (median, worst) = median_worst(lat);

    let mut ps = PamSandbox::new("bench-sudo-request", &idp.issuer());
    let sudo_home = ps.with_user_home();
    let mut scfg = ps.sb.config(&idp.issuer());
    scfg.tail = "[request]\ntimeout = 120\n".into();
    ps.sb.write_config(&scfg.render());
    idp.enrol_agent_key(&sudo_home, user, AGENT, Some(&key));
    ps.write_pam(
        "sudo",
        "auth sufficient @SO@ config=@CFG@ request nonint\nauth required pam_deny.so\naccount required @SO@ config=@CFG@ grant_only\nsession required pam_permit.so\n",
    );
    ps.write_sudoers(&format!(
        "Defaults !lecture, timestamp_timeout=0, passwd_tries=1\n{} ALL=(ALL:ALL) ALL\n",
        openape_tests::harness::TEST_USER
    ));
    let slat: Vec<f64> = (0..RUNS)
        .map(|_| one_latency(&idp, || ps.run(&["sudo", "date", "+%s%N"], &[], None)))
        .collect();
    let (smedian, sworst) = median_worst(slat);

    // Requests per waiting minute.
    let before_all = idp.requests().len();
    let out = sb
        .escapes_run(&["--wait-timeout", &SAMPLE.to_string(), "--", "true"])
        .as_test_user()
        .timeout(Duration::from_secs(SAMPLE + 20))
        .output();
    assert_eq!(out.code, 5, "{out}");
    let reqs: Vec<(String, String)> = idp.requests().split_off(before_all);
    let id = idp.grant_ids().last().cloned().unwrap();
    let polls = reqs
        .iter()
        .filter(|(m, p)| m == "GET" && p == &format!("/api/grants/{id}"))
        .count();
    let per_min = |n: usize| n as f64 * 60.0 / SAMPLE as f64;
    assert!(per_min(polls) <= 60.0, "{polls} polls in {SAMPLE} s");

    println!("request mode (escapes, loopback test IdP, {RUNS} runs):");
    println!("  approval-to-exec latency        median {median:7.1} ms   worst {worst:7.1} ms");
    println!(
        "  same through sudo (pam_openape request) median {smedian:7.1} ms   worst {sworst:7.1} ms"
    );
    println!(
        "  IdP requests per waiting minute {:5.0} ({polls} status polls in a {SAMPLE} s wait, scaled to 60 s; the first minute polls fastest), plus {} once per request (login, create, cancel)",
        per_min(polls),
        reqs.len() - polls
    );
}
