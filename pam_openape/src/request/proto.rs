//! The IdP side of request mode (DESIGN.md, "Request-and-wait"): agent
//! login, grant request, status, token and cancel. Field names are the
//! real IdP's. Every answer is parsed strictly and bounded; nothing from
//! the IdP is trusted to be well formed, and no token ever reaches an
//! error message.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};

use crate::error::{Denial, Kind, Step, sanitize};
use crate::http::{self, Client, Method, Reply};
use crate::token::MAX_TOKEN_LEN;

/// Longest grant id accepted from the IdP (the real one uses UUIDs).
pub const MAX_GRANT_ID: usize = 128;

/// What the caller asks for.
#[derive(Clone, Debug, Default)]
pub struct GrantRequest {
    pub requester: String,
    pub target_host: String,
    pub audience: String,
    pub grant_type: String,
    pub command: Vec<String>,
    pub run_as: String,
    pub reason: String,
    /// Seconds, `timed` grants only.
    pub duration: Option<u64>,
}

impl GrantRequest {
    /// The JSON body of `POST /api/grants`.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "requester": self.requester,
            "target_host": self.target_host,
            "audience": self.audience,
            "grant_type": self.grant_type,
            "command": self.command,
            "run_as": self.run_as,
            "reason": self.reason,
            "execution_context": {
                "argv": self.command,
                "argv_hash": crate::command::argv_hash(&self.command),
            },
        });
        if self.grant_type == "timed"
            && let (Some(d), Some(obj)) = (self.duration, v.as_object_mut())
        {
            obj.insert("duration".into(), json!(d));
        }
        v
    }
}

/// Where a grant stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    /// Final: denied, revoked, expired or used.
    Final(&'static str),
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Final("denied"),
            "revoked" => Status::Final("revoked"),
            "expired" => Status::Final("expired"),
            "used" => Status::Final("used"),
            _ => return None,
        })
    }
}

/// A grant as the IdP describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub status: Status,
    /// The requester the IdP bound to the grant (`request.requester`, or
    /// a top-level `requester`): the bearer's subject, unlike the email
    /// the caller's files name.
    pub requester: Option<String>,
}

/// One status poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// 200: the grant, and the validator for the next poll.
    Fresh(Grant, Option<String>),
    /// 304: nothing changed.
    Unchanged,
    /// 429: wait this long (`Retry-After`, else a default).
    SlowDown(Duration),
}

fn unavailable(msg: impl Into<String>) -> Denial {
    Denial::new(Step::Request, Kind::Unavailable, msg)
}

/// A grant id safe for a URL segment, a log line and the pipe.
pub fn grant_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_GRANT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && id != "."
        && id != ".."
}

/// A JWT-shaped token (three base64url segments, bounded).
pub fn jwt_shaped(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOKEN_LEN
        && t.split('.').count() == 3
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `{idp}/grant-approval?grant_id={id}`.
pub fn approval_url(idp: &str, id: &str) -> String {
    format!(
        "{}?grant_id={}",
        http::join(idp, "/grant-approval"),
        http::encode_segment(id)
    )
}

/// The IdP of one request, spoken to over one hardened client.
pub struct Api<'a> {
    pub client: &'a mut Client,
    pub idp: String,
    /// Deadline of each single request.
    pub timeout: Duration,
}

impl Api<'_> {
    fn call(
        &mut self,
        what: &str,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Reply, Denial> {
        self.client.renew(self.timeout);
        let url = http::join(&self.idp, path);
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.client
            .call(method, &url, bearer, bytes.as_deref(), etag)
            .map_err(|e| unavailable(format!("{what}: IdP {}: {e}", self.idp)))
    }

    fn json(what: &str, r: &Reply) -> Result<Value, Denial> {
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| unavailable(format!("{what}: the IdP's answer is not a JSON object")))
    }

    fn error_text(r: &Reply) -> String {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let msg = ["error", "title", "message"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .unwrap_or("");
        if msg.is_empty() {
            format!("HTTP {}", r.status)
        } else {
            format!("HTTP {} ({})", r.status, sanitize(msg, 80))
        }
    }

    /// Agent login: challenge, Ed25519 signature over the challenge
    /// string, bearer token. A refusal means the identity is unusable.
    pub fn login(&mut self, email: &str, key: &SigningKey) -> Result<String, Denial> {
        let r = self.call(
            "agent login",
            Method::Post,
            "/api/agent/challenge",
            None,
            Some(&json!({"agent_id": email})),
            None,
        )?;
        if r.status != 200 && r.status != 201 {
            return Err(unavailable(format!(
                "agent login as {email}: the IdP refused the challenge: {} (enrolled? run escapes enroll)",
                Self::error_text(&r)
            )));
        }
        let v = Self::json("agent login", &r)?;
        let challenge = v
            .get("challenge")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && c.len() <= 1024 && c.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| unavailable("agent login: the IdP sent no usable challenge"))?;
        let signature = STANDARD.encode(key.sign(challenge.as_bytes()).to_bytes());
        let r = self.call(
            "agent login",
            Method::Post,
            "/api/agent/authenticate",
            None,
            Some(&json!({"agent_id": email, "challenge": challenge, "signature": signature})),
            None,
        )?;
        if r.status != 200 && r.status != 201 {
            return Err(unavailable(format!(
                "agent login as {email}: the IdP refused the signature: {} (is this the enrolled key?)",
                Self::error_text(&r)
            )));
        }
        let v = Self::json("agent login", &r)?;
        v.get("token")
            .and_then(Value::as_str)
            .filter(|t| jwt_shaped(t))
            .map(str::to_string)
            .ok_or_else(|| unavailable("agent login: the IdP sent no usable token"))
    }

    fn grant_of(what: &str, v: &Value, want_id: Option<&str>) -> Result<Grant, Denial> {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| unavailable(format!("{what}: the IdP's answer has no grant id")))?;
        if !grant_id_ok(id) {
            return Err(unavailable(format!(
                "{what}: the IdP sent an unusable grant id"
            )));
        }
        if want_id.is_some_and(|w| w != id) {
            return Err(unavailable(format!(
                "{what}: the IdP answered about another grant"
            )));
        }
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .and_then(Status::parse)
            .ok_or_else(|| unavailable(format!("{what}: the IdP sent an unknown grant status")))?;
        let requester = v
            .get("request")
            .and_then(|r| r.get("requester"))
            .or_else(|| v.get("requester"))
            .and_then(Value::as_str)
            .filter(|r| super::identity::email_ok(r))
            .map(str::to_string);
        Ok(Grant {
            id: id.to_string(),
            status,
            requester,
        })
    }

    /// `POST /api/grants`: 201 pending, 201 approved (auto-approval) or
    /// 200 approved (an existing timed/always grant reused).
    pub fn create(&mut self, bearer: &str, req: &GrantRequest) -> Result<Grant, Denial> {
        let r = self.call(
            "grant request",
            Method::Post,
            "/api/grants",
            Some(bearer),
            Some(&req.body()),
            None,
        )?;
        if r.status != 200 && r.status != 201 {
            return Err(unavailable(format!(
                "grant request: the IdP refused it: {}",
                Self::error_text(&r)
            )));
        }
        Self::grant_of("grant request", &Self::json("grant request", &r)?, None)
    }

    /// `GET /api/grants/{id}` with `If-None-Match`.
    pub fn status(&mut self, bearer: &str, id: &str, etag: Option<&str>) -> Result<Poll, Denial> {
        let path = format!("/api/grants/{}", http::encode_segment(id));
        let r = self.call("grant status", Method::Get, &path, Some(bearer), None, etag)?;
        match r.status {
            200 => {
                let g = Self::grant_of("grant status", &Self::json("grant status", &r)?, Some(id))?;
                Ok(Poll::Fresh(g, r.etag))
            }
            304 if etag.is_some() => Ok(Poll::Unchanged),
            429 => Ok(Poll::SlowDown(Duration::from_secs(
                r.retry_after.unwrap_or(5).clamp(1, 300),
            ))),
            404 => Err(Denial::refused(
                Step::Request,
                format!("grant {id} is not known to the IdP"),
            )),
            _ => Err(unavailable(format!(
                "grant status: {}",
                Self::error_text(&r)
            ))),
        }
    }

    /// `POST /api/grants/{id}/token` → `{authz_jwt}` (requester only).
    pub fn token(&mut self, bearer: &str, id: &str) -> Result<String, Denial> {
        let path = format!("/api/grants/{}/token", http::encode_segment(id));
        let r = self.call("grant token", Method::Post, &path, Some(bearer), None, None)?;
        if r.status != 200 && r.status != 201 {
            return Err(unavailable(format!(
                "grant token: the IdP refused it: {}",
                Self::error_text(&r)
            )));
        }
        Self::json("grant token", &r)?
            .get("authz_jwt")
            .and_then(Value::as_str)
            .filter(|t| jwt_shaped(t))
            .map(str::to_string)
            .ok_or_else(|| unavailable("grant token: the IdP sent no usable grant"))
    }

    /// `POST /api/grants/{id}/deny` as the requester (cancel).
    pub fn cancel(&mut self, bearer: &str, id: &str) -> Result<(), Denial> {
        let path = format!("/api/grants/{}/deny", http::encode_segment(id));
        let r = self.call(
            "cancel",
            Method::Post,
            &path,
            Some(bearer),
            Some(&json!({})),
            None,
        )?;
        if (200..300).contains(&r.status) {
            Ok(())
        } else {
            Err(unavailable(format!("cancel: {}", Self::error_text(&r))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_tokens_and_urls() {
        assert!(grant_id_ok("3f2a0c1e-99aa-4b1c-8d2e-0123456789ab"));
        for bad in ["", ".", "..", "a/b", "a b", "a\n", &"x".repeat(129)] {
            assert!(!grant_id_ok(bad), "{bad:?}");
        }
        assert!(jwt_shaped("a.b.c"));
        assert!(!jwt_shaped("a.b"));
        assert!(!jwt_shaped("a.b.c\n"));
        assert_eq!(
            approval_url("https://id.example/", "g-1"),
            "https://id.example/grant-approval?grant_id=g-1"
        );
    }

    #[test]
    fn request_body_has_the_real_field_names() {
        let mut r = GrantRequest {
            requester: "a@example.com".into(),
            target_host: "h".into(),
            audience: "escapes".into(),
            grant_type: "once".into(),
            command: vec!["id".into(), "-u".into()],
            run_as: "root".into(),
            reason: "why".into(),
            duration: Some(60),
        };
        let b = r.body();
        assert_eq!(b["command"], json!(["id", "-u"]));
        assert_eq!(b["execution_context"]["argv"], json!(["id", "-u"]));
        assert!(
            b["execution_context"]["argv_hash"]
                .as_str()
                .is_some_and(|h| h.starts_with("SHA-256:"))
        );
        assert!(b.get("duration").is_none());
        r.grant_type = "timed".into();
        assert_eq!(r.body()["duration"], json!(60));
    }

    #[test]
    fn the_requester_is_the_one_the_idp_bound() {
        let id = "3f2a0c1e-99aa-4b1c-8d2e-0123456789ab";
        let who = |v: Value| Api::grant_of("t", &v, None).map(|g| g.requester);
        // The real IdP's shape: the request nested, its requester set from
        // the bearer.
        let nested = json!({"id": id, "status": "pending", "request": {"requester": "a@example.com"}, "requester": "b@example.com"});
        assert_eq!(who(nested), Ok(Some("a@example.com".into())));
        let flat = json!({"id": id, "status": "pending", "requester": "b@example.com"});
        assert_eq!(who(flat), Ok(Some("b@example.com".into())));
        let none = json!({"id": id, "status": "approved"});
        assert_eq!(who(none), Ok(None));
        let bad = json!({"id": id, "status": "pending", "request": {"requester": "x\n@y"}});
        assert_eq!(who(bad), Ok(None));
    }
}
