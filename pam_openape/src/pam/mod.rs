//! `pam_openape.so`: stock sudo, sudo-rs and su accept an OpenApe grant.
//!
//! The hooks only gather inputs (grant, caller, target user, argv) and act
//! on the verdict of [`crate::verify`]. Every hook is wrapped in
//! `catch_unwind` (a panic is a refusal, never an abort of the host);
//! nothing outlives a hook (no thread, no descriptor, no global state);
//! per-handle state lives in `pam_set_data`. Return codes:
//!
//! * no grant found → `PAM_IGNORE` (a `sufficient` line falls through);
//! * grant refused → `PAM_AUTH_ERR`;
//! * IdP unreachable → `PAM_AUTHINFO_UNAVAIL`;
//! * configuration or module arguments broken → `PAM_SERVICE_ERR`.

pub mod args;
pub(crate) mod ffi;
mod request;

use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use pam::constants::{PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_SILENT, PamFlag, PamResultCode};
use pam::module::{PamHandle, PamHooks};

use self::args::{Args, CommandMode};
use crate::audit::{AuditLog, Record};
use crate::config::Config;
use crate::error::{Denial, Kind, Step, sanitize};
use crate::http::Client;
use crate::invocation::{self, UserSpec};
use crate::jwks::KeyCache;
use crate::time::{now_unix, rfc3339_utc};
use crate::token::fingerprint;
use crate::verify::{self, Request};

/// Trust roots must be owned by root.
const ROOT: u32 = 0;

/// What authentication left in the handle for the account and session
/// phases.
pub struct HandleState {
    argv: Option<Vec<String>>,
    target: String,
    grant_id: String,
}

struct OpenApe;

pam::pam_hooks!(OpenApe);

impl PamHooks for OpenApe {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        guarded(|| authenticate(pamh, &args, flags))
    }

    fn acct_mgmt(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        guarded(|| account(pamh, &args))
    }

    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }

    fn sm_open_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        guarded(|| session(pamh, &args, "session_open"))
    }

    fn sm_close_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        guarded(|| session(pamh, &args, "session_close"))
    }
}

/// A panic inside a hook is a refusal, decided here on purpose.
fn guarded(f: impl FnOnce() -> PamResultCode) -> PamResultCode {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(PamResultCode::PAM_AUTH_ERR)
}

fn code_for(d: &Denial) -> PamResultCode {
    match d.kind {
        Kind::Refused | Kind::Usage | Kind::Pending | Kind::Interrupted(_) => {
            PamResultCode::PAM_AUTH_ERR
        }
        Kind::Unavailable => PamResultCode::PAM_AUTHINFO_UNAVAIL,
        Kind::Config | Kind::Io | Kind::Exec | Kind::NotFound => PamResultCode::PAM_SERVICE_ERR,
    }
}

fn parse_args(pamh: &PamHandle, raw: &[&CStr]) -> Result<Args, PamResultCode> {
    let strs: Option<Vec<&str>> = raw.iter().map(|a| a.to_str().ok()).collect();
    let parsed = strs
        .ok_or_else(|| "module argument is not UTF-8".to_string())
        .and_then(|s| args::parse(&s));
    parsed.map_err(|e| {
        ffi::syslog(
            pamh,
            libc::LOG_ERR,
            &format!("refusing: bad module arguments: {e}"),
        );
        PamResultCode::PAM_SERVICE_ERR
    })
}

fn item<'a, T: pam::items::Item<'a>>(
    pamh: &'a PamHandle,
    get: impl Fn(T) -> &'a CStr,
) -> Option<String> {
    let v = pamh.get_item::<T>().ok().flatten()?;
    get(v).to_str().ok().map(str::to_string)
}

fn service(pamh: &PamHandle) -> String {
    item::<pam::items::Service>(pamh, |s| s.0).unwrap_or_default()
}

/// Append one audit line where the caller can neither signal nor stop the
/// host while it is written (see [`ffi::Critical`]): a SIGKILL in the
/// middle of a long line would cut it.
fn append_held(audit: &AuditLog, rec: &Record) -> Result<(), Denial> {
    let _held = ffi::Critical::enter();
    audit.append(rec)
}

/// Load the configuration (with the `audience=` override) and open the log.
fn load(pamh: &PamHandle, args: &Args) -> Result<(Config, AuditLog), PamResultCode> {
    let mut cfg = Config::load(&args.config, ROOT).map_err(|e| {
        ffi::syslog(pamh, libc::LOG_ERR, &format!("refusing: {}", e.reason));
        PamResultCode::PAM_SERVICE_ERR
    })?;
    if let Some(aud) = &args.audience {
        cfg.allowed_audiences = vec![aud.clone()];
    }
    let audit = AuditLog::open(&cfg.audit_log, ROOT).map_err(|e| {
        ffi::syslog(pamh, libc::LOG_ERR, &format!("refusing: {}", e.reason));
        PamResultCode::PAM_SERVICE_ERR
    })?;
    Ok((cfg, audit))
}

fn base_record(cfg: &Config, service: &str, event: &'static str) -> Record {
    let real_uid = nix::unistd::getuid().as_raw();
    Record {
        ts: rfc3339_utc(now_unix()),
        event,
        via: format!("pam:{service}"),
        real_uid,
        user: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(real_uid))
            .ok()
            .flatten()
            .map(|u| u.name),
        host: cfg.host.clone(),
        ..Record::default()
    }
}

/// Answers longer than this are refused by sudo's conversation (Linux-PAM
/// `PAM_MAX_RESP_SIZE` is 512), so a grant typed or piped at a prompt comes
/// in lines of exactly this many characters (`fold -w 500`), the last one
/// shorter.
pub const CHUNK: usize = 500;

/// Where the grant comes from: the caller's environment as it was at exec
/// (`/proc/self/environ`; sudo hides it from `getenv`), the PAM
/// environment, else a no-echo prompt (unless `nonint`). `None`: no grant.
fn find_grant(pamh: &mut PamHandle, args: &Args, may_prompt: bool) -> Option<String> {
    let nonempty = |s: String| {
        let t = s.strip_suffix('\n').unwrap_or(&s).to_string();
        (!t.is_empty()).then_some(t)
    };
    if let Some(t) = invocation::initial_env(&args.grant_env).and_then(nonempty) {
        return Some(t);
    }
    if let Some(t) = ffi::getenv(pamh, &args.grant_env).and_then(nonempty) {
        return Some(t);
    }
    if args.nonint || !may_prompt {
        return None;
    }
    let conv = pamh.get_item::<pam::conv::Conv>().ok().flatten()?;
    let mut token = String::new();
    for part in 0..=(crate::token::MAX_TOKEN_LEN / CHUNK + 1) {
        let prompt = if part == 0 {
            args.prompt.as_str()
        } else {
            "OpenApe grant (continued): "
        };
        let answer = match conv.send(PAM_PROMPT_ECHO_OFF, prompt) {
            Ok(Some(a)) => a.as_str().map(str::to_string).unwrap_or_default(),
            Ok(None) => String::new(),
            Err(_) if part == 0 => {
                ffi::syslog(
                    pamh,
                    libc::LOG_NOTICE,
                    "conversation failed; if the grant was typed or piped in one line, split it into lines of 500 characters (fold -w 500): sudo refuses longer answers",
                );
                return None;
            }
            Err(_) => break,
        };
        let line = answer.trim_end_matches(['\r', '\n']);
        token.push_str(line);
        if line.len() != CHUNK {
            break;
        }
    }
    nonempty(token)
}

/// What this host process is about to do: target user and argv.
fn what_is_authorised(
    pamh: &PamHandle,
    args: &Args,
    service: &str,
) -> Result<(String, Option<Vec<String>>), Denial> {
    let refuse = |m: String| Denial::refused(Step::Command, m);
    let pam_user = || {
        item::<pam::items::User>(pamh, |u| u.0)
            .ok_or_else(|| Denial::new(Step::TargetUser, Kind::Refused, "PAM_USER is not set"))
    };
    let host = invocation::host_kind(&invocation::own_exe_name(), service);
    if args.command == CommandMode::None && host != invocation::Host::Other {
        // Under sudo or su, "no command" would let a grant for the caller
        // themselves authenticate any root command (sudo -i, su -).
        return Err(Denial::new(
            Step::Usage,
            Kind::Config,
            "module argument command=none cannot be used in a sudo or su stack",
        ));
    }
    match host {
        invocation::Host::Sudo => {
            let inv = invocation::own_cmdline()
                .and_then(|a| invocation::parse_sudo(&a))
                .map_err(refuse)?;
            let target = match inv.user {
                None => "root".to_string(),
                Some(spec) => resolve_user(&spec)?.name,
            };
            Ok((target, inv.argv))
        }
        invocation::Host::Su => {
            let inv = invocation::own_cmdline()
                .and_then(|a| invocation::parse_su(&a))
                .map_err(refuse)?;
            if !inv.login {
                // Without a login environment su keeps the caller's PATH,
                // BASH_ENV, ENV, SHELLOPTS…: the approved string would run
                // the caller's own programs and start-up scripts as root.
                return Err(Denial::refused(
                    Step::Command,
                    "su without - (or -l, --login) keeps your environment; grants need su - or su -l",
                ));
            }
            let target = pam_user()?;
            let named = inv.user.map(|spec| resolve_user(&spec)).transpose()?;
            let named_name = named.as_ref().map_or("root", |u| u.name.as_str());
            if named_name != target {
                return Err(Denial::refused(
                    Step::TargetUser,
                    format!(
                        "su command line names {} but PAM_USER is {}",
                        sanitize(named_name, 64),
                        sanitize(&target, 64)
                    ),
                ));
            }
            if inv.argv.is_some() {
                // The entry the command line named, looked up once.
                let user = match named {
                    Some(u) => u,
                    None => resolve_user(&UserSpec::Name(target.clone()))?,
                };
                su_shell_runs_commands(&user)?;
            }
            Ok((target, inv.argv))
        }
        invocation::Host::Other => {
            other_service_allowed(args, service)?;
            // The account the service logs in: the one its name names, by
            // the rule sudo's and su's targets follow (a second name of
            // uid 0 such as "toor" would take a grant for "toor" to uid 0).
            let user = resolve_user(&UserSpec::Name(pam_user()?))?;
            Ok((user.name, None))
        }
    }
}

/// A service other than sudo, sudo-rs and su: only with the admin's
/// explicit `allow_service=` for it, and never for a program that hands
/// out other users' rights (its command line is not understood here, so a
/// grant without a command would authorise anything it runs).
fn other_service_allowed(args: &Args, service: &str) -> Result<(), Denial> {
    let exe = invocation::own_exe_name();
    let name = sanitize(service, 40);
    if invocation::is_other_elevation(&exe, service) {
        return Err(Denial::refused(
            Step::Usage,
            format!(
                "service {name} ({}) elevates privileges in a way this module does not understand; grants are never accepted there",
                sanitize(&exe, 40)
            ),
        ));
    }
    if !args.allow_services.iter().any(|s| s == service) {
        return Err(Denial::refused(
            Step::Usage,
            format!(
                "service {name} is not sudo, sudo-rs or su; grants are accepted there only with allow_service={name} on the module line"
            ),
        ));
    }
    Ok(())
}

/// The target named on the command line, if it names one account without
/// doubt (a second name of uid 0, a name two uids share, an id of
/// 4294967295 are refused: see [`crate::users`]).
fn resolve_user(spec: &UserSpec) -> Result<nix::unistd::User, Denial> {
    let found = match spec {
        UserSpec::Name(n) => crate::users::by_name(n),
        UserSpec::Uid(u) => crate::users::by_uid(*u),
    };
    match found {
        Ok(u) => Ok(u),
        Err(crate::users::TargetError::Unknown) => Err(Denial::new(
            Step::TargetUser,
            Kind::Refused,
            "unknown target user",
        )),
        Err(e) => {
            let asked = match spec {
                UserSpec::Name(n) => n.clone(),
                UserSpec::Uid(u) => format!("#{u}"),
            };
            Err(Denial::refused(Step::TargetUser, e.message(&asked)))
        }
    }
}

/// su runs the approved `-c` string with the target's login shell from
/// passwd (`SHELL -c STRING`). A shell that is not a login shell
/// (`nologin`, `false`) runs nothing, and the grant would be spent and
/// logged as run: such a target is refused before the consume. A login
/// shell is one listed in `/etc/shells` (an empty field is `/bin/sh` to
/// su; without the file only `/bin/sh` counts, as getusershell(3) has it).
fn su_shell_runs_commands(user: &nix::unistd::User) -> Result<(), Denial> {
    let shell = user.shell.to_string_lossy().into_owned();
    if shell.is_empty() {
        return Ok(());
    }
    let listed = match std::fs::read_to_string("/etc/shells") {
        Ok(text) => text.lines().any(|l| l.trim() == shell),
        Err(_) => shell == "/bin/sh",
    };
    if listed {
        return Ok(());
    }
    Err(Denial::refused(
        Step::TargetUser,
        format!(
            "the login shell of {} ({}) is not in /etc/shells; su would run the command with it, so nothing would run",
            sanitize(&user.name, 64),
            sanitize(&shell, 64)
        ),
    ))
}

/// The caller is the real uid; PAM_RUSER must name the same user.
fn caller(pamh: &PamHandle) -> Result<String, Denial> {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| {
            Denial::new(
                Step::Caller,
                Kind::Refused,
                format!("uid {uid} has no passwd entry"),
            )
        })?;
    match item::<pam::items::RUser>(pamh, |r| r.0) {
        Some(ruser) if ruser == name => Ok(name),
        Some(ruser) => Err(Denial::refused(
            Step::Caller,
            format!(
                "PAM_RUSER {} is not the real user {name}",
                sanitize(&ruser, 64)
            ),
        )),
        None => Err(Denial::refused(
            Step::Caller,
            "PAM_RUSER is not set; cannot tell who asks",
        )),
    }
}

fn authenticate(pamh: &mut PamHandle, raw: &[&CStr], flags: PamFlag) -> PamResultCode {
    let args = match parse_args(pamh, raw) {
        Ok(a) => a,
        Err(code) => return code,
    };
    #[cfg(feature = "fault-injection")]
    if args.fault_panic {
        #[allow(clippy::panic)]
        {
            panic!("fault injection: panic inside pam_sm_authenticate");
        }
    }
    let service = service(pamh);
    // A service this module does not serve is never prompted for a grant;
    // a grant that arrives anyway (environment) is refused and logged.
    let served = invocation::host_kind(&invocation::own_exe_name(), &service)
        != invocation::Host::Other
        || other_service_allowed(&args, &service).is_ok();
    // In request mode a missing grant is asked for at the IdP before any
    // prompt; the prompt stays the fallback for a caller without identity.
    let (token, held) = match find_grant(pamh, &args, served && !args.request) {
        Some(t) => (t, None),
        None if served && args.request => {
            match request::grant(pamh, &args, &service, flags, request::Phase::Auth) {
                request::Outcome::Token(t, held) => (t, Some(held)),
                request::Outcome::Skip => match find_grant(pamh, &args, true) {
                    Some(t) => (t, None),
                    None => return PamResultCode::PAM_IGNORE,
                },
                request::Outcome::Done(code) => return code,
            }
        }
        None => return PamResultCode::PAM_IGNORE,
    };
    let code = accept(pamh, &args, &service, flags, &token, held.is_some());
    // A requested grant's interrupts reach the host after its line.
    drop(held);
    code
}

/// Verify `token` for what this host is about to do, consume it, log it
/// and remember it in the handle. The one place both a presented and a
/// requested grant go through. For a `requested` grant an interrupt held
/// since the wait (the user gave up as the approver said yes) refuses the
/// consume: nothing is spent.
fn accept(
    pamh: &mut PamHandle,
    args: &Args,
    service: &str,
    flags: PamFlag,
    token: &str,
    requested: bool,
) -> PamResultCode {
    let (cfg, audit) = match load(pamh, args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut rec = base_record(&cfg, service, "denied");
    rec.token_fp = Some(fingerprint(token));
    // Held from just before the consume until its line is written.
    let mut critical: Option<ffi::Critical> = None;

    let result = (|| -> Result<(verify::Approved, String, Option<Vec<String>>), Denial> {
        let caller = caller(pamh)?;
        let (target, argv) = what_is_authorised(pamh, args, service)?;
        rec.command = argv.clone().unwrap_or_default();
        rec.run_as = Some(target.clone());
        let client = Client::new(cfg.http_timeout, cfg.ca_bundle.as_deref(), ROOT)?;
        let mut keys = KeyCache::new(&cfg);
        let req = Request {
            caller: &caller,
            target_user: Some(&target),
            argv: argv.as_deref(),
        };
        let debug = args.debug;
        let verified = verify::check(
            token,
            &req,
            &cfg,
            &mut keys,
            &client,
            now_unix(),
            &mut |step, what| {
                if debug {
                    ffi::syslog(
                        pamh,
                        libc::LOG_DEBUG,
                        &format!("ok {}: {what}", step.name()),
                    );
                }
            },
        )?;
        // Every check passed: its claims are trusted, and a refusal from
        // here on (the consume) names the grant.
        rec.grant_id = Some(verified.claims.grant_id.clone());
        // Room for the grant_run line is reserved before the grant is used.
        let c = &verified.claims;
        audit.reserve_for(&Record {
            event: "grant_run",
            cmd_hash: argv.as_deref().map(crate::command::cmd_hash),
            grant_id: Some(c.grant_id.clone()),
            agent: Some(c.sub.clone()),
            issuer: Some(c.iss.clone()),
            decided_by: c.decided_by.clone(),
            target_host: Some(c.target_host.clone()),
            ..rec.clone()
        })?;
        critical = Some(ffi::Critical::enter());
        if requested && let Some(sig) = ffi::pending_interrupt() {
            return Err(Denial::new(
                Step::Request,
                Kind::Interrupted(sig),
                "interrupted after the approval; the grant is left unused; nothing ran",
            ));
        }
        let approved = verify::consume(verified, token, &cfg, &client, now_unix())?;
        Ok((approved, target, argv))
    })();

    match result {
        Ok((approved, target, argv)) if approved.allows() => {
            let c = &approved.verified.claims;
            let ok = Record {
                event: "grant_run",
                cmd_hash: argv.as_deref().map(crate::command::cmd_hash),
                grant_id: Some(c.grant_id.clone()),
                grant_type: Some(c.grant_type.as_str()),
                agent: Some(c.sub.clone()),
                issuer: Some(c.iss.clone()),
                decided_by: c.decided_by.clone(),
                audience: Some(approved.verified.audience.clone()),
                target_host: Some(c.target_host.clone()),
                ..rec
            };
            let logged = audit.append(&ok);
            drop(critical);
            if let Err(e) = logged {
                ffi::syslog(pamh, libc::LOG_ERR, &format!("refusing: {}", e.reason));
                return PamResultCode::PAM_SERVICE_ERR;
            }
            ffi::syslog(
                pamh,
                libc::LOG_NOTICE,
                &format!(
                    "grant {} ({}) approved by {} accepted: {} as {target}: {:?}",
                    c.grant_id,
                    c.grant_type.as_str(),
                    c.decided_by.as_deref().unwrap_or("?"),
                    ok.user.as_deref().unwrap_or("?"),
                    ok.command
                ),
            );
            let state = HandleState {
                argv,
                target,
                grant_id: c.grant_id.clone(),
            };
            if !ffi::put_state(pamh, state) {
                return PamResultCode::PAM_SERVICE_ERR;
            }
            PamResultCode::PAM_SUCCESS
        }
        Ok(_) => PamResultCode::PAM_AUTH_ERR,
        Err(d) => {
            // A refusal after the consume was tried is logged before the
            // host may be stopped (the message to the user goes out too).
            let code = refuse(pamh, &audit, rec, flags, &d);
            drop(critical);
            code
        }
    }
}

/// A refusal: the `denied` line, syslog, a message unless PAM_SILENT, and
/// the return code for its kind.
fn refuse(
    pamh: &PamHandle,
    audit: &AuditLog,
    rec: Record,
    flags: PamFlag,
    d: &Denial,
) -> PamResultCode {
    let line = Record {
        step: Some(d.step.name()),
        reason: Some(d.reason.clone()),
        ..rec
    };
    if let Err(e) = append_held(audit, &line) {
        ffi::syslog(pamh, libc::LOG_ERR, &e.reason);
    }
    ffi::syslog(
        pamh,
        libc::LOG_WARNING,
        &format!("grant refused at {}: {}", d.step.name(), d.reason),
    );
    if flags & PAM_SILENT == 0
        && let Ok(Some(conv)) = pamh.get_item::<pam::conv::Conv>()
    {
        let _ = conv.send(
            PAM_ERROR_MSG,
            &format!("OpenApe: {}", sanitize(&d.reason, 300)),
        );
    }
    code_for(d)
}

/// Account phase. A handle this module authenticated passes; in
/// `grant_only` mode everything else is refused, so sudo's cached
/// timestamp can never stand in for a grant.
fn account(pamh: &mut PamHandle, raw: &[&CStr]) -> PamResultCode {
    let args = match parse_args(pamh, raw) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let service = service(pamh);
    let verdict: Result<(), String> = match ffi::get_state(pamh) {
        Some(state) => match what_is_authorised(pamh, &args, &service) {
            Ok((target, argv)) if target == state.target && argv == state.argv => Ok(()),
            Ok(_) => Err(format!(
                "grant {} was verified for another command or user",
                state.grant_id
            )),
            Err(d) => Err(d.reason),
        },
        None if args.grant_only => {
            // sudo skips authentication for NOPASSWD rules (and `sudo -n`
            // agents rely on that), but still runs this phase: a grant in
            // the environment, or with `request` one asked for now, is
            // verified and consumed here, for exactly this argv.
            let token = match find_grant(pamh, &args, false) {
                Some(t) => Some((t, None)),
                None if args.request => {
                    match request::grant(pamh, &args, &service, 0, request::Phase::Account) {
                        request::Outcome::Token(t, held) => Some((t, Some(held))),
                        request::Outcome::Skip => None,
                        request::Outcome::Done(_) => return PamResultCode::PAM_PERM_DENIED,
                    }
                }
                None => None,
            };
            match token {
                Some((t, held)) => {
                    let code = accept(pamh, &args, &service, 0, &t, held.is_some());
                    drop(held);
                    return match code {
                        PamResultCode::PAM_SUCCESS => PamResultCode::PAM_SUCCESS,
                        _ => PamResultCode::PAM_PERM_DENIED,
                    };
                }
                None => Err("no grant was verified for this command (grant_only)".into()),
            }
        }
        None => return PamResultCode::PAM_IGNORE,
    };
    match verdict {
        Ok(()) => PamResultCode::PAM_SUCCESS,
        Err(reason) => {
            if let Ok((cfg, audit)) = load(pamh, &args) {
                let command = what_is_authorised(pamh, &args, &service)
                    .ok()
                    .and_then(|(_, a)| a)
                    .unwrap_or_default();
                let line = Record {
                    command,
                    step: Some("account"),
                    reason: Some(reason.clone()),
                    ..base_record(&cfg, &service, "denied")
                };
                let _ = append_held(&audit, &line);
            }
            ffi::syslog(
                pamh,
                libc::LOG_WARNING,
                &format!("account refused: {reason}"),
            );
            PamResultCode::PAM_PERM_DENIED
        }
    }
}

/// Session phase: an audit line when this handle carries a verified grant.
fn session(pamh: &mut PamHandle, raw: &[&CStr], event: &'static str) -> PamResultCode {
    let args = match parse_args(pamh, raw) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let Some(state) = ffi::get_state(pamh) else {
        return PamResultCode::PAM_IGNORE;
    };
    let (argv, target, grant_id) = (
        state.argv.clone(),
        state.target.clone(),
        state.grant_id.clone(),
    );
    let service = service(pamh);
    match load(pamh, &args) {
        Ok((cfg, audit)) => {
            let line = Record {
                command: argv.unwrap_or_default(),
                run_as: Some(target),
                grant_id: Some(grant_id),
                ..base_record(&cfg, &service, event)
            };
            match append_held(&audit, &line) {
                Ok(()) => PamResultCode::PAM_SUCCESS,
                Err(e) => {
                    ffi::syslog(pamh, libc::LOG_ERR, &e.reason);
                    PamResultCode::PAM_SESSION_ERR
                }
            }
        }
        Err(code) => code,
    }
}
