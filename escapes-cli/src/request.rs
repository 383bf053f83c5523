//! Request mode of `escapes` (DESIGN.md, "Request-and-wait"): no grant
//! given, but the caller has an OpenApe identity, so ask the IdP for the
//! grant, show where to approve it, wait, and hand the JWT back to the
//! normal flow, which runs the unchanged chain (steps 1–12) on it.
//!
//! All of the asking and waiting happens in the unprivileged request
//! child of `pam_openape::request`; this side only starts it, writes the
//! `grant_requested` audit line, shows the URL and the elapsed time,
//! turns Ctrl-C / Ctrl-\ / SIGTERM / SIGHUP into a cancel at the IdP, and
//! kills the child at the deadline. The signal handler below is the one
//! `unsafe` place of this file.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::User;
use pam_openape::audit::Record;
use pam_openape::http::Client;
use pam_openape::request::identity::Hints;
use pam_openape::request::privsep;
use pam_openape::request::proto::GrantRequest;
use pam_openape::request::{self, Event, Params};
use pam_openape::{Denial, Kind, Step};

use crate::cli::Opts;
use crate::{Ctx, ROOT, sys};

/// The signal that interrupted the wait (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT (the terminal's Ctrl-\, which
/// otherwise ended escapes with no line) recorded (not acted on) while
/// waiting; the old dispositions come back on drop.
struct Signals {
    old: Vec<(Signal, SigAction)>,
}

impl Signals {
    fn catch() -> Signals {
        SIGNAL.store(0, Ordering::SeqCst);
        let handler = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        let mut old = Vec::new();
        for sig in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; without SA_RESTART a wait returns early.
            if let Ok(prev) = unsafe { sigaction(sig, &handler) } {
                old.push((sig, prev));
            }
        }
        Signals { old }
    }

    fn caught() -> i32 {
        SIGNAL.load(Ordering::SeqCst)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (sig, prev) in self.old.drain(..) {
            // SAFETY: puts back the disposition that was there before.
            let _ = unsafe { sigaction(sig, &prev) };
        }
    }
}

/// The elapsed-time line on a terminal, cleared when dropped.
struct Status {
    tty: bool,
    shown: bool,
    start: Instant,
    last: u64,
}

impl Status {
    fn new() -> Status {
        Status {
            tty: std::io::stderr().is_terminal(),
            shown: false,
            start: Instant::now(),
            last: u64::MAX,
        }
    }

    fn tick(&mut self) {
        if !self.tty {
            return;
        }
        let secs = self.start.elapsed().as_secs();
        if secs == self.last {
            return;
        }
        self.last = secs;
        self.shown = true;
        let _ = write!(
            std::io::stderr().lock(),
            "\r\x1b[Kwaiting for approval… {}:{:02} (Ctrl-C cancels)",
            secs / 60,
            secs % 60
        );
    }

    fn clear(&mut self) {
        if self.tty && self.shown {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        self.clear();
    }
}

fn usage(msg: &str) -> Denial {
    Denial::new(Step::Usage, Kind::Usage, msg)
}

/// Request mode, if it applies: `Ok(Some(jwt))` for an approved grant,
/// `Ok(None)` to fall back to the old ways of finding a grant (prompt, or
/// exit 2 with `-n`), `Err` for every other outcome (denied, timeout,
/// pending, interrupted, IdP or identity trouble).
pub fn grant_from_idp(
    opts: &Opts,
    snapshot: &[(OsString, OsString)],
    caller: &sys::Caller,
    ctx: &mut Ctx,
    argv: &[String],
    target_user: Option<&str>,
) -> Result<Option<String>, Denial> {
    let from_env = ["ESCAPES_GRANT", "OPENAPE_GRANT"]
        .iter()
        .any(|n| snapshot.iter().any(|(k, _)| k == n));
    let ropts = &opts.request;
    if opts.grant.is_some() || from_env {
        if ropts.any() {
            return Err(usage(
                "request options (--reason, --grant-id, --no-wait, ...) are for request mode: give no grant",
            ));
        }
        return Ok(None);
    }
    let rc = &ctx.cfg.request;
    let idp = match (&rc.idp, rc.enabled) {
        (Some(idp), true) => idp.clone(),
        _ if ropts.any() => {
            return Err(Denial::new(
                Step::Config,
                Kind::Config,
                format!(
                    "request mode is off in {} ([request] enabled = false, or several issuers and no [request] idp)",
                    ctx.cfg.path.display()
                ),
            ));
        }
        _ => return Ok(None),
    };
    if ropts.duration.is_some() && ropts.grant_type.as_deref().unwrap_or(&rc.grant_type) != "timed"
    {
        return Err(usage("--duration is only for --grant-type timed"));
    }
    if ropts.grant_id.is_some() && ropts.no_wait {
        return Err(usage("--grant-id and --no-wait do not go together"));
    }

    let home = User::from_uid(nix::unistd::Uid::from_raw(caller.uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
        .ok_or_else(|| Denial::new(Step::Caller, Kind::Io, "your user has no passwd entry"))?;
    let wait = Duration::from_secs(u64::from(ropts.wait_timeout.unwrap_or(rc.timeout)));
    let cfg = &ctx.cfg;
    let params = Params {
        hints: Hints {
            home,
            idp: idp.clone(),
            key: ropts.key.clone(),
            email: ropts.agent_email.clone(),
        },
        request: GrantRequest {
            requester: String::new(),
            target_host: cfg.host.clone(),
            audience: cfg
                .allowed_audiences
                .first()
                .cloned()
                .unwrap_or_else(|| "escapes".into()),
            grant_type: ropts
                .grant_type
                .clone()
                .unwrap_or_else(|| rc.grant_type.clone()),
            command: argv.to_vec(),
            run_as: target_user.map_or_else(|| cfg.run_as.clone(), str::to_string),
            reason: ropts
                .reason
                .clone()
                .unwrap_or_else(|| format!("escapes on {} by {}", cfg.host, caller.name)),
            duration: ropts.duration,
        },
        grant_id: ropts.grant_id.clone(),
        no_wait: ropts.no_wait,
        wait,
        http_timeout: cfg.http_timeout,
    };
    let client = Client::new(cfg.http_timeout, cfg.ca_bundle.as_deref(), ROOT)?;
    // The child may need the whole wait plus a few requests (login,
    // create, token, cancel) of up to http.timeout each.
    let limit = wait + cfg.http_timeout * 5 + Duration::from_secs(2);
    let who = privsep::Caller {
        uid: caller.uid,
        gid: caller.gid,
        name: caller.name.clone(),
    };

    let signals = Signals::catch();
    let mut child = request::start(&who, params, client)?;
    let started = Instant::now();
    let mut status = Status::new();
    let mut requester: Option<String> = None;
    let mut grant: Option<String> = None;
    let mut stopping: Option<(i32, Instant)> = None;
    loop {
        let sig = Signals::caught();
        if sig != 0 && stopping.is_none() {
            status.clear();
            child.cancel();
            stopping = Some((sig, Instant::now()));
        }
        let overdue = match stopping {
            Some((_, since)) => since.elapsed() > cfg.http_timeout + Duration::from_secs(1),
            None => started.elapsed() > limit,
        };
        if overdue {
            child.finish(Duration::ZERO);
            return Err(match stopping {
                Some((sig, _)) => interrupted(sig, grant.as_deref(), false),
                None => pam_openape::request::no_decision(wait),
            });
        }
        let event = match child.next(Duration::from_millis(250)) {
            Ok(Some(e)) => e,
            Ok(None) => {
                if grant.is_some() && stopping.is_none() {
                    status.tick();
                }
                continue;
            }
            Err(d) => {
                status.clear();
                return Err(match stopping {
                    Some((sig, _)) => interrupted(sig, grant.as_deref(), false),
                    None => d,
                });
            }
        };
        match event {
            Event::NoIdentity => {
                child.finish(Duration::from_millis(200));
                drop(signals);
                if ropts.any() {
                    return Err(Denial::new(
                        Step::Request,
                        Kind::Io,
                        "no OpenApe identity found (no apes session for this IdP, no ~/.ssh/id_ed25519); run escapes enroll, or pass --key",
                    ));
                }
                return Ok(None);
            }
            Event::Requester(email) => requester = Some(email),
            Event::Grant { id, url } => {
                if ropts.grant_id.is_none() {
                    let rec = Record {
                        grant_id: Some(id.clone()),
                        agent: requester.clone(),
                        issuer: Some(idp.clone()),
                        run_as: Some(
                            target_user.map_or_else(|| cfg.run_as.clone(), str::to_string),
                        ),
                        ..ctx.base("grant_requested")
                    };
                    if let Err(e) = ctx.audit.append(&rec) {
                        // Nothing will run or wait for it: cancel the
                        // request at the IdP before giving up.
                        status.clear();
                        child.cancel();
                        let until = Instant::now() + cfg.http_timeout + Duration::from_secs(1);
                        while let Some(left) = until.checked_duration_since(Instant::now()) {
                            match child.next(left.min(Duration::from_millis(250))) {
                                Ok(None | Some(Event::Requester(_) | Event::Grant { .. })) => {}
                                _ => break,
                            }
                        }
                        child.finish(Duration::ZERO);
                        return Err(e);
                    }
                }
                let _ = writeln!(std::io::stderr().lock(), "Approve at: {url}");
                if ropts.no_wait {
                    let _ = writeln!(std::io::stderr().lock(), "Grant id: {id}");
                }
                grant = Some(id);
                status.tick();
            }
            Event::Token(jwt) => {
                status.clear();
                child.finish(Duration::from_millis(500));
                // An interrupt that crossed the approval (the child was
                // already fetching the token) still means stop: the
                // caller asked for nothing to run. From here on signals
                // are held (the default actions come back behind the
                // hold), so none can slip in after this look: one that
                // comes later is found before the consume, or delivered
                // after the line that logs it.
                sys::hold_signals();
                drop(signals);
                let late = Signals::caught();
                if let Some(sig) = stopping.map(|(s, _)| s).or((late != 0).then_some(late)) {
                    return Err(interrupted(sig, grant.as_deref(), false));
                }
                return Ok(Some(jwt));
            }
            Event::Pending => {
                let id = grant.unwrap_or_default();
                return Err(Denial::new(
                    Step::Request,
                    Kind::Pending,
                    format!(
                        "grant {id} is pending; once approved run: escapes --grant-id {id} -- ..."
                    ),
                ));
            }
            Event::Cancelled(ok) => {
                status.clear();
                child.finish(Duration::from_millis(500));
                let sig = stopping.map_or(libc::SIGTERM, |(s, _)| s);
                return Err(interrupted(sig, grant.as_deref(), ok));
            }
            Event::Failed(d) => {
                status.clear();
                child.finish(Duration::from_millis(500));
                return Err(match stopping {
                    Some((sig, _)) => interrupted(sig, grant.as_deref(), false),
                    None => d,
                });
            }
        }
    }
}

/// The user a requested grant must run as: `-u` if given, else the
/// configured `run_as` (what the request named), so an IdP cannot pick
/// another target through the token's `run_as`.
pub fn pinned_target(
    requested: Option<User>,
    cfg: &pam_openape::config::Config,
) -> Result<User, Denial> {
    if let Some(u) = requested {
        return Ok(u);
    }
    sys::target_by(
        &pam_openape::invocation::UserSpec::Name(cfg.run_as.clone()),
        &cfg.run_as,
    )
}

fn interrupted(sig: i32, grant: Option<&str>, cancelled: bool) -> Denial {
    let name = match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "a signal",
    };
    let what = match (grant, cancelled) {
        (Some(id), true) => format!("request {id} cancelled at the IdP"),
        (Some(id), false) => format!("request {id} could not be cancelled at the IdP"),
        (None, _) => "no request was made".to_string(),
    };
    Denial::new(
        Step::Request,
        Kind::Interrupted(sig),
        format!("interrupted by {name}: {what}; nothing ran"),
    )
}
