//! Who the caller and the target are: passwd and group data at the edges
//! (uids and gids above INT_MAX, the value 4294967295, two entries for one
//! name or one uid), for `escapes` and for `pam_openape.so` under the real
//! sudo 1.9, sudo-rs and su.
//!
//! Each scenario appends its entries to `/etc/passwd` and `/etc/group`
//! inside a private mount namespace, where `/etc` is an overlay whose
//! upper layer is a tmpfs (`harness::ConfigNs`): the machine's files are
//! never written. The caller is then set with setpriv (root may take any
//! uid, also one above INT_MAX, without a user namespace).
//!
//! Needs root; without it every test prints the skip notice and passes.
//! Run after `cargo build --workspace`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use openape_tests::against_both_sudos;
use openape_tests::harness::{self, HOST, Output, Run, Sandbox, test_user};
use openape_tests::idp::{GrantSpec, Issued, TestIdp};
use openape_tests::sudo_ns::{GRANT_OR_DENY_STACK, PamSandbox, SudoImpl, require_root};
use serde_json::Value;

/// Extra passwd and group lines of a scenario, and the caller's ids.
struct Ids<'a> {
    passwd: &'a str,
    group: &'a str,
    uid: u32,
    gid: u32,
}

/// The shell lines that add `ids`' entries to the namespace's passwd and
/// group files, then become the caller and run `"$@"`.
const BECOME: &str = "\
set -e
printf '%s' \"$1\" >> /etc/passwd
case $2 in /*) cat \"$2\" >> /etc/group ;; *) printf '%s' \"$2\" >> /etc/group ;; esac
uid=$3 gid=$4
shift 4
exec /usr/bin/setpriv --reuid=\"$uid\" --regid=\"$gid\" --clear-groups -- \"$@\"
";

fn become_args(ids: &Ids) -> Vec<String> {
    vec![
        ids.passwd.to_string(),
        ids.group.to_string(),
        ids.uid.to_string(),
        ids.gid.to_string(),
    ]
}

// ---------------------------------------------------------------------------
// escapes
// ---------------------------------------------------------------------------

struct T {
    idp: TestIdp,
    sb: Sandbox,
}

fn setup(name: &str) -> Option<T> {
    if !harness::require_root() {
        return None;
    }
    test_user();
    let idp = TestIdp::start();
    let sb = Sandbox::new(name);
    sb.write_config(&sb.config(&idp.issuer()).render());
    Some(T { idp, sb })
}

impl T {
    fn issue(&self, argv: &[&str], run_as: &str) -> Issued {
        let mut spec = GrantSpec::new(HOST, argv);
        spec.run_as = Some(run_as.to_string());
        self.idp.issue(&spec)
    }

    /// `escapes [opts] --grant-stdin -- argv` as `ids`' caller, in the
    /// sandbox's namespace with `ids`' entries added.
    fn run(&self, ids: &Ids, jwt: &str, opts: &[&str], argv: &[&str]) -> Output {
        let mut r = Run::new("/bin/sh")
            .args(["-c", BECOME, "sh"])
            .args(become_args(ids))
            .arg(self.sb.escapes())
            .args(opts)
            .args(["--grant-stdin", "--"])
            .args(argv)
            .config_ns(self.sb.config_ns())
            .cwd(self.sb.root())
            .stdin(jwt);
        r = r.env("LANG", "C");
        r.output()
    }

    fn last(&self) -> Value {
        self.sb.last_audit()
    }
}

/// The scenario's accounts. `big` (the caller) and `top` have ids above
/// INT_MAX; `neg`, `neggid` and `neguid` carry 4294967295 (-1) as uid,
/// gid or both; `svc` is one name on two uids (a local account and a
/// directory's under `passwd: files ldap` look the same); `toor` is a
/// second name of uid 0.
const IDS: Ids = Ids {
    passwd: "big:x:3000000000:3000000000:big:/:/bin/sh\n\
             top:x:4294967294:4294967294:top:/:/bin/sh\n\
             neg:x:4294967295:4294967295:neg:/:/bin/sh\n\
             neggid:x:3000000001:4294967295:neggid:/:/bin/sh\n\
             neguid:x:4294967295:3000000000:neguid:/:/bin/sh\n\
             svc:x:3000000002:3000000000:svc:/:/bin/sh\n\
             svc:x:3000000003:3000000000:svc too:/:/bin/sh\n\
             toor:x:0:0:toor:/root:/bin/sh\n\
             nologin:x:3000000017:3000000000:nologin:/:/usr/sbin/nologin\n",
    group: "big:x:3000000000:\ntop:x:4294967294:big\nneg:x:4294967295:\n",
    uid: 3_000_000_000,
    gid: 3_000_000_000,
};

/// CVE-2018-19788 class: ids above INT_MAX are ordinary ids. A caller with
/// uid 3000000000 runs a grant as root and is logged with its exact uid
/// and name; a target with uid and gid 4294967294 is reached by its name,
/// by `-u '#4294967294'` and with `-g '#4294967294'`, and gets exactly its
/// own ids.
#[test]
fn ids_above_int_max_are_callers_and_targets_like_any_other() {
    let Some(t) = setup("id-big") else { return };
    let g = t.issue(&["id"], "root");
    let out = t.run(&IDS, &g.jwt, &[], &["id"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout, "uid=0(root) gid=0(root) groups=0(root)\n",
        "{out}"
    );
    let l = t.last();
    assert_eq!(l["event"], "grant_run", "{l}");
    assert_eq!(l["real_uid"], 3_000_000_000_u64, "{l}");
    assert_eq!(l["user"], "big", "{l}");
    assert_eq!(l["run_as"], "root", "{l}");
    let top = "uid=4294967294(top) gid=4294967294(top) groups=4294967294(top)\n";
    for opts in [
        &[][..],
        &["-u", "#4294967294"][..],
        &["-u", "top", "-g", "#4294967294"][..],
    ] {
        let g = t.issue(&["id"], "top");
        let out = t.run(&IDS, &g.jwt, opts, &["id"]);
        assert_eq!(out.code, 0, "{opts:?}: {out}");
        assert_eq!(out.stdout, top, "{opts:?}: {out}");
        assert_eq!(t.last()["run_as"], "top");
        assert_eq!(t.idp.consume_count(&g.grant_id), 1);
    }
}

/// 4294967295 is "no change" to setresuid/setresgid and invalid in a group
/// list: never a target, whether named by `#`, by `-g`, or by a passwd
/// entry that carries it as uid or gid (the grant names the user). Refused
/// at the target step before the grant is used (it was refused before only
/// by the checks after the switch, at step exec, exit 126).
#[test]
fn an_id_of_4294967295_is_never_a_target() {
    let Some(t) = setup("id-minus-one") else {
        return;
    };
    for (opts, code) in [
        (&["-u", "#4294967295"][..], 2),
        (&["-g", "#4294967295"][..], 2),
    ] {
        let g = t.issue(&["id"], "root");
        let out = t.run(&IDS, &g.jwt, opts, &["id"]);
        assert_eq!(out.code, code, "{opts:?}: {out}");
        assert_eq!(out.stdout, "", "{out}");
        assert_eq!(t.idp.consume_count(&g.grant_id), 0);
    }
    for user in ["neg", "neggid", "neguid"] {
        for by_option in [false, true] {
            let g = t.issue(&["id"], user);
            let opts: &[&str] = if by_option { &["-u", user] } else { &[] };
            let out = t.run(&IDS, &g.jwt, opts, &["id"]);
            assert_eq!(out.code, 1, "{user} {opts:?}: {out}");
            assert_eq!(out.stdout, "", "{out}");
            assert!(out.stderr.contains("4294967295"), "{out}");
            let l = t.last();
            assert_eq!(l["event"], "denied", "{l}");
            assert_eq!(l["step"], "target_user", "{user} {opts:?}: {l}");
            assert_eq!(t.idp.consume_count(&g.grant_id), 0);
        }
    }
}

/// A grant names a user; what runs is a uid. A second name of uid 0
/// (`toor`) ran a grant for "toor" as root, and `-u '#3000000003'` found
/// the name "svc" (the second entry of that name) and ran a grant for
/// "svc" as uid 3000000003 while the name svc is uid 3000000002. Both are
/// refused now before the grant is used; the first name of a uid and the
/// first entry of a name still work.
#[test]
fn a_target_must_be_the_one_account_its_name_names() {
    let Some(t) = setup("id-ambiguous") else {
        return;
    };
    for (run_as, opts) in [
        ("toor", &[][..]),
        ("toor", &["-u", "toor"][..]),
        ("root", &["-u", "toor"][..]),
        ("svc", &["-u", "#3000000003"][..]),
    ] {
        let g = t.issue(&["id", "-u"], run_as);
        let out = t.run(&IDS, &g.jwt, opts, &["id", "-u"]);
        assert_eq!(out.code, 1, "{run_as} {opts:?}: {out}");
        assert_eq!(out.stdout, "", "{run_as} {opts:?}: {out}");
        let l = t.last();
        assert_eq!(l["event"], "denied", "{l}");
        assert_eq!(l["step"], "target_user", "{l}");
        assert_eq!(t.idp.consume_count(&g.grant_id), 0, "{run_as} {opts:?}");
    }
    for (run_as, opts, uid) in [
        ("svc", &[][..], "3000000002"),
        ("svc", &["-u", "svc"][..], "3000000002"),
        ("svc", &["-u", "#3000000002"][..], "3000000002"),
        ("root", &["-u", "#0"][..], "0"),
    ] {
        let g = t.issue(&["id", "-u"], run_as);
        let out = t.run(&IDS, &g.jwt, opts, &["id", "-u"]);
        assert_eq!(out.code, 0, "{run_as} {opts:?}: {out}");
        assert_eq!(out.stdout.trim(), uid, "{run_as} {opts:?}: {out}");
    }
}

// ---------------------------------------------------------------------------
// pam_openape.so under sudo and su
// ---------------------------------------------------------------------------

fn pam_setup(imp: SudoImpl, name: &str, idp: &TestIdp) -> PamSandbox {
    let mut ps = PamSandbox::new(name, &idp.issuer());
    ps.use_sudo(imp);
    ps.write_pam("sudo", GRANT_OR_DENY_STACK);
    ps.write_pam("su", openape_tests::sudo_ns::GRANT_OR_DENY_STACK);
    ps.write_pam(
        "su-l",
        "auth include su\naccount include su\nsession include su\n",
    );
    ps.write_sudoers(
        "Defaults !lecture\n\
         Defaults timestamp_timeout=0\n\
         Defaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         ALL ALL=(ALL:ALL) ALL\n",
    );
    ps
}

/// `argv` (sudo or su) as `ids`' caller with the grant in OPENAPE_GRANT,
/// in the PAM sandbox's namespace with `ids`' entries added.
fn pam_run(ps: &PamSandbox, ids: &Ids, jwt: &str, argv: &[&str]) -> Output {
    let script = format!("{}{BECOME}", ps.mounts());
    Run::new("/bin/sh")
        .args(["-c", &script, "sh"])
        .args(become_args(ids))
        .args(["/usr/bin/env", &format!("OPENAPE_GRANT={jwt}")])
        .args(argv)
        .config_ns(ps.sb.config_ns())
        .cwd(ps.sb.root())
        .output()
}

fn pam_issue(idp: &TestIdp, argv: &[&str], run_as: &str) -> Issued {
    let mut spec = GrantSpec::new("testhost", argv);
    spec.run_as = Some(run_as.to_string());
    idp.issue(&spec)
}

fn count(ps: &PamSandbox, event: &str) -> usize {
    ps.audit().iter().filter(|l| l["event"] == event).count()
}

/// Under sudo 1.9 and sudo-rs: a caller with uid 3000000000 (logged with
/// it), a target with uid 4294967294 by name and by `#`; and the targets
/// escapes refuses are refused by the module too, before the consume
/// (`toor` ran a grant for "toor" as root, `#3000000003` a grant for
/// "svc" as the other svc, and sudo spent a grant on a uid of 4294967295
/// that it could not run).
fn sudo_ids_above_int_max_and_ambiguous_targets(imp: SudoImpl) {
    let idp = TestIdp::start();
    let ps = pam_setup(imp, "id-pam-sudo", &idp);
    let g = pam_issue(&idp, &["id", "-u"], "root");
    let out = pam_run(&ps, &IDS, &g.jwt, &["sudo", "id", "-u"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "0\n"), "{out}");
    let l = ps.last_audit();
    assert_eq!(l["event"], "grant_run", "{l}");
    assert_eq!(l["real_uid"], 3_000_000_000_u64, "{l}");
    assert_eq!(l["user"], "big", "{l}");
    for target in ["top", "#4294967294"] {
        let g = pam_issue(&idp, &["id", "-u"], "top");
        let out = pam_run(&ps, &IDS, &g.jwt, &["sudo", "-u", target, "id", "-u"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "4294967294\n"),
            "{}: {target}: {out}",
            imp.label()
        );
        assert_eq!(ps.last_audit()["run_as"], "top");
    }
    for (run_as, target) in [
        ("toor", "toor"),
        ("svc", "#3000000003"),
        ("neguid", "neguid"),
        ("neggid", "neggid"),
    ] {
        let g = pam_issue(&idp, &["id", "-u"], run_as);
        let out = pam_run(&ps, &IDS, &g.jwt, &["sudo", "-u", target, "id", "-u"]);
        assert_ne!(out.code, 0, "{}: {target}: {out}", imp.label());
        assert_eq!(out.stdout, "", "{}: {target}: {out}", imp.label());
        assert_eq!(
            idp.consume_count(&g.grant_id),
            0,
            "{}: {target}: the grant was spent",
            imp.label()
        );
    }
    assert_eq!(count(&ps, "grant_run"), 3, "{}", ps.sb.audit_text());
}

against_both_sudos!(sudo_ids_above_int_max_and_ambiguous_targets);

/// The same under util-linux su: a caller above INT_MAX, a target at
/// 4294967294; `su - toor` with a grant for "toor" ran as root, and a
/// target with 4294967295 as uid or gid had the grant consumed and a
/// grant_run line written before su failed to set the ids; a target whose
/// login shell is nologin had the grant consumed and logged as run while
/// su ran only "This account is currently not available". All refused now
/// at the target step, nothing consumed.
#[test]
fn su_ids_above_int_max_and_ambiguous_targets() {
    if !require_root() {
        return;
    }
    let idp = TestIdp::start();
    let ps = pam_setup(SudoImpl::Ogsudo, "id-pam-su", &idp);
    let g = pam_issue(&idp, &["id -u"], "root");
    let out = pam_run(&ps, &IDS, &g.jwt, &["su", "-", "-c", "id -u"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "0\n"), "{out}");
    let l = ps.last_audit();
    assert_eq!(l["real_uid"], 3_000_000_000_u64, "{l}");
    assert_eq!(l["user"], "big", "{l}");
    let g = pam_issue(&idp, &["id -u"], "top");
    let out = pam_run(&ps, &IDS, &g.jwt, &["su", "-", "-c", "id -u", "top"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "4294967294\n"),
        "{out}"
    );
    for target in ["toor", "neg", "neggid", "neguid", "nologin"] {
        let g = pam_issue(&idp, &["id -u"], target);
        let out = pam_run(&ps, &IDS, &g.jwt, &["su", "-", "-c", "id -u", target]);
        assert_ne!(out.code, 0, "{target}: {out}");
        assert_eq!(out.stdout, "", "{target}: {out}");
        let l = ps.last_audit();
        assert_eq!(l["event"], "denied", "{target}: {l}");
        assert_eq!(l["step"], "target_user", "{target}: {l}");
        assert_eq!(idp.consume_count(&g.grant_id), 0, "{target}: spent");
    }
    assert_eq!(count(&ps, "grant_run"), 2, "{}", ps.sb.audit_text());
}
