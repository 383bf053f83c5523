//! Request mode of the PAM module (module argument `request`): no grant
//! presented, so the caller asks the IdP for one for exactly the command
//! sudo or su is about to run, the approval URL reaches the user through
//! the conversation, and the module waits. The JWT that comes back then
//! goes through the same [`super::accept`] as any presented grant.
//!
//! The asking and waiting run in the privilege-separated request child of
//! [`crate::request`] (it has become the caller before it opens a file or
//! a socket); this side only starts it, relays the URL, writes the
//! `grant_requested` line and bounds the wait. When the host dies while
//! waiting (Ctrl-C kills sudo), the child sees its control pipe close and
//! cancels the request at the IdP before it exits.

use std::time::{Duration, Instant};

use pam::constants::{PAM_ERROR_MSG, PAM_SILENT, PAM_TEXT_INFO, PamFlag, PamResultCode};
use pam::module::PamHandle;

use super::args::Args;
use super::{append_held, base_record, caller, ffi, load, refuse, what_is_authorised};
use crate::audit::Record;
use crate::error::{Denial, Kind, Step};
use crate::http::Client;
use crate::request::identity::Hints;
use crate::request::proto::GrantRequest;
use crate::request::{self as core, Event, Params, privsep};

/// What request mode came to.
pub enum Outcome {
    /// An approved grant's JWT: verify and consume it, with the
    /// interrupts still held (drop it once the grant's line is written).
    Token(String, ffi::HeldInterrupts),
    /// Request mode does not apply (no identity, no command, request mode
    /// off in the config): go on as without `request`.
    Skip,
    /// Refused or failed; logged and told already. The code to return.
    Done(PamResultCode),
}

/// One line to the user through the conversation. Informational lines go
/// out even under PAM_SILENT: the URL is the prompt of this method.
/// `false` when the host could not show it.
fn tell(pamh: &PamHandle, style: pam::constants::PamMessageStyle, text: &str) -> bool {
    match pamh.get_item::<pam::conv::Conv>() {
        Ok(Some(conv)) => conv.send(style, text).is_ok(),
        _ => false,
    }
}

/// The style for the link and the waiting line. With a controlling
/// terminal that is also the host's stdout, PAM_TEXT_INFO: sudo, sudo-rs
/// and su show it there. Otherwise PAM_ERROR_MSG: su (libpam_misc) prints
/// informational messages on its stdout whatever the terminal, and sudo
/// 1.9 does too without a terminal; that stdout belongs to the command
/// (`sudo -n cmd | jq`, or `su - -c 'cat f' root > copy` typed at a
/// terminal, would get the link as output), while error messages go to
/// stderr. sudo 1.9 and sudo-rs show both styles on the terminal when
/// there is one; sudo-rs needs a terminal for either.
fn prompt_style() -> pam::constants::PamMessageStyle {
    use std::os::unix::fs::OpenOptionsExt;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/tty");
    let stdout_is_a_terminal = nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
    if tty.is_ok() && stdout_is_a_terminal {
        PAM_TEXT_INFO
    } else {
        PAM_ERROR_MSG
    }
}

/// Which PAM phase asks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Auth,
    Account,
}

pub fn grant(
    pamh: &mut PamHandle,
    args: &Args,
    service: &str,
    flags: PamFlag,
    phase: Phase,
) -> Outcome {
    let (cfg, audit) = match load(pamh, args) {
        Ok(x) => x,
        Err(code) => return Outcome::Done(code),
    };
    let idp = match (&cfg.request.idp, cfg.request.enabled) {
        (Some(idp), true) => idp.clone(),
        _ => return Outcome::Skip,
    };
    let mut rec = base_record(&cfg, service, "denied");
    let prepared = (|| -> Result<Option<(Params, privsep::Caller)>, Denial> {
        let name = caller(pamh)?;
        let (target, argv) = what_is_authorised(pamh, args, service)?;
        let Some(argv) = argv else {
            // An interactive su shell: nothing to ask for.
            return Ok(None);
        };
        rec.command = argv.clone();
        rec.run_as = Some(target.clone());
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .ok_or_else(|| {
                Denial::refused(Step::Caller, format!("uid {uid} has no passwd entry"))
            })?;
        let wait = Duration::from_secs(u64::from(
            args.request_timeout.unwrap_or(cfg.request.timeout),
        ));
        let params = Params {
            hints: Hints {
                home: user.dir.clone(),
                idp: idp.clone(),
                key: None,
                email: None,
            },
            request: GrantRequest {
                requester: String::new(),
                target_host: cfg.host.clone(),
                audience: cfg
                    .allowed_audiences
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "escapes".into()),
                grant_type: cfg.request.grant_type.clone(),
                command: argv,
                run_as: target,
                reason: format!("{service} on {} by {name}", cfg.host),
                duration: None,
            },
            grant_id: None,
            no_wait: false,
            wait,
            http_timeout: cfg.http_timeout,
        };
        // The gid the host process holds (sudo and su keep the caller's),
        // never passwd's primary group: a caller whose process dropped
        // that group must not get it back in the child (privsep keeps
        // only held supplementary groups for the same reason).
        let who = privsep::Caller {
            uid: user.uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            name,
        };
        Ok(Some((params, who)))
    })();
    let (params, who) = match prepared {
        Ok(Some(p)) => p,
        Ok(None) => return Outcome::Skip,
        Err(d) => return Outcome::Done(refuse(pamh, &audit, rec, flags, &d)),
    };
    // From here a Ctrl-C (or SIGTERM, SIGHUP) is seen by the loop below
    // whatever the host does with it, and reaches the host only after the
    // line for the outcome.
    let held = ffi::HeldInterrupts::enter();
    let wait = params.wait;
    let limit = wait + cfg.http_timeout * 5 + Duration::from_secs(2);
    let client = match Client::new(cfg.http_timeout, cfg.ca_bundle.as_deref(), super::ROOT) {
        Ok(c) => c,
        Err(d) => return Outcome::Done(refuse(pamh, &audit, rec, flags, &d)),
    };
    let mut child = match core::start(&who, params, client) {
        Ok(c) => c,
        Err(d) => return Outcome::Done(refuse(pamh, &audit, rec, flags, &d)),
    };
    let started = Instant::now();
    let mut requester: Option<String> = None;
    let mut grant_id: Option<String> = None;
    let mut stopping: Option<(i32, Instant)> = None;
    let failed = loop {
        if stopping.is_none()
            && let Some(sig) = ffi::pending_interrupt()
        {
            // Ctrl-C at the sudo prompt: cancel at the IdP, then refuse.
            child.cancel();
            stopping = Some((sig, Instant::now()));
        }
        if let Some((sig, since)) = stopping
            && since.elapsed() > cfg.http_timeout + Duration::from_secs(1)
        {
            child.finish(Duration::ZERO);
            break Denial::new(
                Step::Request,
                Kind::Interrupted(sig),
                "interrupted; the request could not be cancelled at the IdP",
            );
        }
        if started.elapsed() > limit {
            child.finish(Duration::ZERO);
            break crate::request::no_decision(wait);
        }
        let event = match child.next(Duration::from_millis(250)) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(d) => break d,
        };
        match event {
            Event::NoIdentity => {
                child.finish(Duration::from_millis(200));
                return Outcome::Skip;
            }
            Event::Requester(email) => requester = Some(email),
            Event::Grant { id, url } => {
                let line = Record {
                    event: "grant_requested",
                    grant_id: Some(id.clone()),
                    agent: requester.clone(),
                    issuer: Some(idp.clone()),
                    step: None,
                    reason: None,
                    ..rec.clone()
                };
                if let Err(e) = append_held(&audit, &line) {
                    child.cancel();
                    let _ = child.next(cfg.http_timeout + Duration::from_secs(1));
                    child.finish(Duration::ZERO);
                    return Outcome::Done(refuse(pamh, &audit, rec, flags, &e));
                }
                ffi::syslog(
                    pamh,
                    libc::LOG_NOTICE,
                    &format!(
                        "grant {id} requested for {:?} as {:?}",
                        rec.command, rec.run_as
                    ),
                );
                let style = prompt_style();
                let shown = tell(pamh, style, &format!("Approve at: {url}"));
                if !shown && phase == Phase::Auth {
                    // The host cannot show the link (sudo-rs without a
                    // terminal), and may then fail the authentication even
                    // after a success: never let an approval be spent on a
                    // run that will not happen. Cancel and stay out of it.
                    child.cancel();
                    let _ = child.next(cfg.http_timeout + Duration::from_secs(1));
                    child.finish(Duration::ZERO);
                    rec.grant_id = Some(id);
                    let d = Denial::new(
                        Step::Request,
                        Kind::Refused,
                        "the host program cannot show the approval link (no terminal?); request cancelled",
                    );
                    let _ = refuse(pamh, &audit, rec, flags, &d);
                    return Outcome::Done(PamResultCode::PAM_IGNORE);
                }
                tell(
                    pamh,
                    style,
                    &format!("Waiting up to {} s for approval…", wait.as_secs()),
                );
                grant_id = Some(id);
            }
            Event::Token(jwt) => {
                child.finish(Duration::from_millis(500));
                // An interrupt that crossed the approval (the child was
                // already fetching the token) still means stop.
                if let Some(sig) = stopping.map(|(s, _)| s).or_else(ffi::pending_interrupt) {
                    break Denial::new(
                        Step::Request,
                        Kind::Interrupted(sig),
                        "interrupted; the grant was approved as the interrupt came and is left unused; nothing ran",
                    );
                }
                return Outcome::Token(jwt, held);
            }
            Event::Pending => {
                break Denial::refused(Step::Request, "the request is still pending");
            }
            Event::Cancelled(ok) => {
                child.finish(Duration::from_millis(500));
                let what = if ok {
                    "request cancelled at the IdP"
                } else {
                    "request could not be cancelled at the IdP"
                };
                break match stopping {
                    Some((sig, _)) => Denial::new(
                        Step::Request,
                        Kind::Interrupted(sig),
                        format!("interrupted; {what}; nothing ran"),
                    ),
                    None => Denial::refused(Step::Request, what),
                };
            }
            Event::Failed(d) => {
                child.finish(Duration::from_millis(500));
                break d;
            }
        }
    };
    rec.grant_id = grant_id;
    // The line first: the host's conversation may let a held interrupt
    // through (sudo-rs unblocks signals around it), and the host may die
    // of it there.
    let code = refuse(pamh, &audit, rec, flags, &failed);
    if flags & PAM_SILENT != 0 {
        // refuse() stays quiet under PAM_SILENT; the user who was shown a
        // URL must still learn why nothing happens.
        tell(
            pamh,
            PAM_ERROR_MSG,
            &format!("OpenApe: {}", crate::error::sanitize(&failed.reason, 300)),
        );
    }
    Outcome::Done(code)
}
