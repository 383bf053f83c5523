#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use openape_tests::harness::{TEST_USER, artefact};
use openape_tests::idp::{GrantSpec, TestIdp};
use openape_tests::sudo_ns::{
    GRANT_OR_DENY_STACK, PamSandbox, SudoImpl, require_root, shell_quote,
};
const SU_L: &str = "auth include su\naccount include su\nsession include su\n";
fn sweep(imp: Option<SudoImpl>, label: &str, states: &[&str]) {
    let idp = TestIdp::start();
    let mut ps = PamSandbox::new(&format!("ex-sw-{label}"), &idp.issuer());
    ps.write_pam("sudo", GRANT_OR_DENY_STACK);
    ps.write_pam("su", GRANT_OR_DENY_STACK);
    ps.write_pam("su-l", SU_L);
    ps.write_sudoers(&format!(
        "Defaults !lecture, timestamp_timeout=0, passwd_tries=1\n{TEST_USER} ALL=(ALL:ALL) ALL\n"
    ));
    if let Some(i) = imp {
        ps.use_sudo(i);
    }
    let bin = std::fs::read(artefact("state-exec")).unwrap();
    ps.sb.write_file("bin/state-exec", &bin, 0, 0, 0o755);
    let se = ps.sb.path("bin/state-exec").to_string_lossy().into_owned();
    let (argv, cmd): (Vec<&str>, Vec<&str>) = match imp {
        Some(_) => (vec!["id", "-u"], vec!["sudo", "id", "-u"]),
        None => (vec!["id -u"], vec!["su", "-", "-c", "id -u", "root"]),
    };
    for st in states {
        let g = idp.issue(&GrantSpec::new("testhost", &argv));
        let q: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
        let out = ps.run(
            &[
                "/bin/sh",
                "-c",
                &format!("exec timeout -s KILL 8 {se} {st} -- {}", q.join(" ")),
            ],
            &[("OPENAPE_GRANT", &g.jwt)],
            None,
        );
        let runs = ps
            .audit()
            .iter()
            .filter(|l| l["event"] == "grant_run" && l["grant_id"] == g.grant_id.as_str())
            .count();
        eprintln!(
            "{label:7} {st:40} code {:3} out {:?} consumed {} runs {runs} err {:?}",
            out.code,
            out.stdout.trim(),
            idp.consume_count(&g.grant_id),
            out.stderr.chars().take(120).collect::<String>()
        );
    }
}
#[test]
fn explore() {
    if !require_root() {
        return;
    }
    let st = [
        "",
        "--rlimit nproc 0 0",
        "--rlimit nproc 1 1",
        "--block-all",
        "--rlimit cpu 1 1",
        "--umask 777",
        "--close 0 --close 1 --close 2",
    ];
    sweep(Some(SudoImpl::Ogsudo), "og", &st);
    sweep(Some(SudoImpl::SudoRs), "rs", &st);
    sweep(None, "su", &st);
}
