//! Request mode: no grant in hand, so ask the IdP for one, wait for the
//! approver, and hand the grant to the unchanged verification chain
//! (DESIGN.md, "Request-and-wait").
//!
//! "Where does a token come from" is kept apart from "is this token good
//! enough": this module only fetches a JWT. The caller of [`start`] then
//! runs [`crate::verify::check`] and [`crate::verify::consume`] on it as on
//! any other grant; nothing here can make a token pass.
//!
//! Everything that touches the caller's identity files, the network or the
//! IdP's answers runs in a child that has become the caller
//! ([`privsep`]). The privileged side gets lines over a pipe: the
//! requester's email, the grant id, then the JWT or an outcome, and builds
//! the approval URL itself.
//!
//! Line protocol, child to parent (one `TAG TEXT` per line):
//! `none` (no identity: old behaviour), `who EMAIL`, `grant ID`,
//! `jwt TOKEN`, `pending` (still pending, not waiting), `cancelled ok` or
//! `cancelled failed`, `fail KIND MESSAGE` (KIND: `refused`, `timeout`,
//! `unavailable`, `identity`, `io`).

pub mod identity;
pub mod keys;
pub mod privsep;
pub mod proto;

use std::time::{Duration, Instant};

use crate::error::{Denial, Kind, Step, sanitize};
use crate::http::Client;
use identity::{Credential, Hints};
use proto::{Api, GrantRequest, Poll, Status};

/// Consecutive failed polls (IdP down, 5xx) before giving up.
pub const MAX_POLL_FAILURES: u32 = 5;

/// Everything the child needs.
#[derive(Clone, Debug)]
pub struct Params {
    pub hints: Hints,
    /// The grant to ask for; `requester` is filled in by the child from
    /// the identity it finds.
    pub request: GrantRequest,
    /// Pick up this earlier request instead of making a new one.
    pub grant_id: Option<String>,
    /// Do not wait: report the grant id and whether it is pending.
    pub no_wait: bool,
    /// How long to wait for a decision.
    pub wait: Duration,
    /// Deadline of each single HTTP request.
    pub http_timeout: Duration,
}

/// The refusal when no decision came within `wait`: both front ends stop
/// the request child and say this.
pub fn no_decision(wait: Duration) -> Denial {
    Denial::refused(
        Step::Request,
        format!(
            "no decision within {} s; the request helper was stopped",
            wait.as_secs()
        ),
    )
}

/// The poll interval after `elapsed` of waiting: 1 s for the first
/// minute (the command starts about a second after the approval), then 2 s
/// up to five minutes, then 5 s. Never more than 60 polls a minute.
pub fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(60) {
        Duration::from_secs(1)
    } else if elapsed < Duration::from_secs(300) {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    }
}

/// Wait after `failures` failed polls in a row: 2, 4, 8, 16 s, at most 30.
pub fn failure_backoff(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.min(5)).min(30))
}

/// What the privileged side learns.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// No identity at all: fall back to the old behaviour.
    NoIdentity,
    /// The requester the child logged in as (caller-controlled; for the
    /// audit line only).
    Requester(String),
    /// The grant exists; approve it at `url`.
    Grant { id: String, url: String },
    /// The approved grant's JWT: now run the chain on it.
    Token(String),
    /// Still pending and not waiting (`--no-wait`, `--grant-id`).
    Pending,
    /// The request was cancelled at the IdP (`true`), or cancelling failed.
    Cancelled(bool),
    /// The request ended without a grant.
    Failed(Denial),
}

fn fail(chan: &mut privsep::Channel, kind: &str, msg: &str) -> i32 {
    chan.send("fail", &format!("{kind} {msg}"));
    1
}

fn fail_with(chan: &mut privsep::Channel, d: &Denial) -> i32 {
    let kind = match d.kind {
        Kind::Refused => "refused",
        Kind::Unavailable => "unavailable",
        _ => "io",
    };
    fail(chan, kind, &d.reason)
}

/// The child's whole job, as the caller.
fn child_main(p: &Params, mut client: Client, chan: &mut privsep::Channel) -> i32 {
    // A hard end for the child whatever happens: the whole wait, a few
    // requests (login, create, token, cancel) and some slack. The parent
    // normally stops it long before; if the parent dies (sudo killed by
    // Ctrl-C), the closed control pipe makes the child cancel the request
    // and exit, and this alarm bounds even that.
    let backstop = p.wait + p.http_timeout * 6 + Duration::from_secs(10);
    privsep::end_after(backstop);
    let id = match identity::discover(&p.hints, crate::time::now_unix()) {
        Ok(Some(id)) => id,
        Ok(None) => {
            chan.send("none", "");
            return 0;
        }
        Err(e) => return fail(chan, "identity", &format!("identity unusable: {e}")),
    };
    let mut api = Api {
        client: &mut client,
        idp: p.hints.idp.clone(),
        timeout: p.http_timeout,
    };
    // Who asks, for the audit line: the requester the IdP binds to the
    // grant; else, after a key login, the email that key logged in as. A
    // session file's `email` is only what the caller wrote there.
    let (bearer, logged_in) = match &id.credential {
        Credential::Session(t) => (t.clone(), None),
        Credential::Key(k) => match api.login(&id.email, k) {
            Ok(t) => (t, Some(id.email.clone())),
            Err(d) => return fail(chan, "identity", &d.reason),
        },
    };
    let first = match &p.grant_id {
        Some(gid) => match api.status(&bearer, gid, None) {
            Ok(Poll::Fresh(g, _)) => g,
            Ok(_) => {
                return fail(
                    chan,
                    "unavailable",
                    "the IdP is busy (429); try again later",
                );
            }
            Err(d) => return fail_with(chan, &d),
        },
        None => {
            let mut req = p.request.clone();
            req.requester = id.email.clone();
            match api.create(&bearer, &req) {
                Ok(g) => g,
                Err(d) => return fail_with(chan, &d),
            }
        }
    };
    if let Some(who) = first.requester.as_ref().or(logged_in.as_ref()) {
        chan.send("who", who);
    }
    chan.send("grant", &first.id);
    match first.status {
        Status::Approved => return fetch(&mut api, &bearer, &first.id, chan),
        Status::Final(s) => return fail(chan, "refused", &format!("grant {} is {s}", first.id)),
        // --no-wait, and picking up an earlier request, never wait.
        Status::Pending if p.no_wait || p.grant_id.is_some() => {
            chan.send("pending", "");
            return 0;
        }
        Status::Pending => {}
    }
    wait(p, &mut api, &bearer, &first.id, chan)
}

fn fetch(api: &mut Api<'_>, bearer: &str, id: &str, chan: &mut privsep::Channel) -> i32 {
    match api.token(bearer, id) {
        Ok(jwt) => {
            chan.send("jwt", &jwt);
            0
        }
        Err(d) => fail_with(chan, &d),
    }
}

/// Cancel at the IdP; the words for a message.
fn cancel(api: &mut Api<'_>, bearer: &str, id: &str) -> &'static str {
    if api.cancel(bearer, id).is_ok() {
        "request cancelled"
    } else {
        "the request could not be cancelled"
    }
}

/// Poll until a decision, the deadline, or a stop from the parent.
fn wait(p: &Params, api: &mut Api<'_>, bearer: &str, id: &str, chan: &mut privsep::Channel) -> i32 {
    let start = Instant::now();
    let deadline = start + p.wait;
    let mut etag: Option<String> = None;
    let mut failures = 0u32;
    let mut delay = poll_interval(Duration::ZERO);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let done = cancel(api, bearer, id);
            return fail(
                chan,
                "timeout",
                &format!(
                    "grant {id} was not approved within {} s; {done}",
                    p.wait.as_secs()
                ),
            );
        }
        if chan.stop_requested(delay.min(left)) {
            let ok = api.cancel(bearer, id).is_ok();
            chan.send("cancelled", if ok { "ok" } else { "failed" });
            return 0;
        }
        if Instant::now() >= deadline {
            continue;
        }
        let elapsed = start.elapsed();
        match api.status(bearer, id, etag.as_deref()) {
            Ok(Poll::Fresh(g, tag)) => {
                failures = 0;
                etag = tag;
                match g.status {
                    Status::Approved => return fetch(api, bearer, id, chan),
                    Status::Final(s) => {
                        return fail(chan, "refused", &format!("grant {id} was {s}"));
                    }
                    Status::Pending => delay = poll_interval(elapsed),
                }
            }
            Ok(Poll::Unchanged) => {
                failures = 0;
                delay = poll_interval(elapsed);
            }
            Ok(Poll::SlowDown(d)) => delay = d.max(poll_interval(elapsed)),
            Err(d) if d.kind == Kind::Refused => return fail_with(chan, &d),
            Err(d) => {
                failures += 1;
                if failures >= MAX_POLL_FAILURES {
                    let done = cancel(api, bearer, id);
                    return fail(chan, "unavailable", &format!("{}; {done}", d.reason));
                }
                delay = failure_backoff(failures);
            }
        }
    }
}

/// A running request: the child, seen from the privileged side.
pub struct Requester {
    child: privsep::Child,
    idp: String,
    finished: bool,
}

/// Start the request child as `caller`. `client` is built by the
/// privileged side (its TLS roots come from the root-owned configuration)
/// and handed to the child by the fork.
pub fn start(
    caller: &privsep::Caller,
    params: Params,
    client: Client,
) -> Result<Requester, Denial> {
    let idp = params.hints.idp.clone();
    let child = privsep::spawn(caller, move |chan| child_main(&params, client, chan))?;
    Ok(Requester {
        child,
        idp,
        finished: false,
    })
}

fn helper_error(msg: &str) -> Denial {
    Denial::new(
        Step::Request,
        Kind::Unavailable,
        format!("request helper: {msg}"),
    )
}

impl Requester {
    /// The next event, waiting at most `wait` (`None`: nothing yet, or a
    /// signal arrived). A malformed line kills the child and is an error.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Event>, Denial> {
        if self.finished {
            return Ok(None);
        }
        let (tag, text) = match self.child.next(wait)? {
            privsep::Next::Idle => return Ok(None),
            privsep::Next::Closed => {
                self.finished = true;
                self.child.finish(Duration::from_millis(200));
                return Err(helper_error("ended without an answer"));
            }
            privsep::Next::Line(tag, text) => (tag, text),
        };
        let event = match tag.as_str() {
            "none" => Event::NoIdentity,
            "who" if identity::email_ok(&text) => Event::Requester(text),
            "grant" if proto::grant_id_ok(&text) => Event::Grant {
                url: proto::approval_url(&self.idp, &text),
                id: text,
            },
            "jwt" if proto::jwt_shaped(&text) => Event::Token(text),
            "pending" => Event::Pending,
            "cancelled" => Event::Cancelled(text == "ok"),
            "fail" => {
                let (kind, msg) = text.split_once(' ').unwrap_or((text.as_str(), ""));
                let kind = match kind {
                    "refused" | "timeout" => Kind::Refused,
                    "unavailable" => Kind::Unavailable,
                    "identity" | "io" => Kind::Io,
                    _ => {
                        self.child.kill();
                        return Err(helper_error("sent an unknown failure"));
                    }
                };
                Event::Failed(Denial::new(Step::Request, kind, sanitize(msg, 400)))
            }
            _ => {
                self.child.kill();
                return Err(helper_error("sent an unexpected line"));
            }
        };
        if matches!(
            event,
            Event::NoIdentity
                | Event::Token(_)
                | Event::Pending
                | Event::Cancelled(_)
                | Event::Failed(_)
        ) {
            self.finished = true;
        }
        Ok(Some(event))
    }

    /// Ask the child to cancel the request at the IdP; it answers with
    /// [`Event::Cancelled`].
    pub fn cancel(&mut self) {
        self.child.request_stop();
        self.finished = false;
    }

    /// Let the child exit (up to `wait`), then kill it.
    pub fn finish(mut self, wait: Duration) {
        self.child.finish(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_is_fast_first_then_slower_and_never_over_60_a_minute() {
        assert_eq!(poll_interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            poll_interval(Duration::from_secs(59)),
            Duration::from_secs(1)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(60)),
            Duration::from_secs(2)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(400)),
            Duration::from_secs(5)
        );
        // Polls in any minute of waiting: at most one per interval.
        for start in (0..600).step_by(7) {
            let mut t = Duration::from_secs(start);
            let end = t + Duration::from_secs(60);
            let mut polls = 0;
            while t < end {
                polls += 1;
                t += poll_interval(t);
            }
            assert!(polls <= 60, "{polls} polls in the minute from {start} s");
        }
        assert_eq!(failure_backoff(1), Duration::from_secs(2));
        assert_eq!(failure_backoff(9), Duration::from_secs(30));
    }
}
