//! The typed refusal every layer returns: which step of the chain said no,
//! what kind of failure it was (this decides the exit code or PAM code), and
//! the one sentence the user sees. The sentence never contains a token.

use std::fmt;

/// One step of the verification chain (DESIGN.md, "Verification chain"),
/// plus the steps around it that can also refuse an elevation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Command line or module arguments.
    Usage,
    /// Loading or trusting the configuration file.
    Config,
    /// Who is asking: the real uid and its passwd entry.
    Caller,
    /// Finding the grant (flag, stdin, file, environment, prompt).
    Grant,
    /// Opening or writing the audit log.
    Audit,
    /// 1. Size, segments, header, JSON payload.
    Parse,
    /// 2. `iss` is allowlisted.
    Issuer,
    /// 3. The signing key from the issuer's JWKS.
    Key,
    /// 4. The Ed25519 signature.
    Signature,
    /// 5. `exp`, `nbf`, `iat`.
    Time,
    /// 6. `decided_by`.
    Approver,
    /// 7. `aud`.
    Audience,
    /// 8. `target_host`.
    Host,
    /// 9. `[subjects]` binding of the caller.
    Subject,
    /// 10. `run_as` against the user being switched to.
    TargetUser,
    /// 11. The command binding.
    Command,
    /// 12. Consumption at the issuer.
    Consume,
    /// Privilege change or exec after the verdict.
    Exec,
    /// Asking the IdP for a grant and waiting for the decision
    /// (request mode: denied, expired, timed out, cancelled).
    Request,
}

impl Step {
    /// The stable name used in audit lines (`"step"`) and in `escapes verify`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Usage => "usage",
            Step::Config => "config",
            Step::Caller => "caller",
            Step::Grant => "grant",
            Step::Audit => "audit",
            Step::Parse => "parse",
            Step::Issuer => "issuer",
            Step::Key => "key",
            Step::Signature => "signature",
            Step::Time => "time",
            Step::Approver => "approver",
            Step::Audience => "audience",
            Step::Host => "host",
            Step::Subject => "subject",
            Step::TargetUser => "target_user",
            Step::Command => "command",
            Step::Consume => "consume",
            Step::Exec => "exec",
            Step::Request => "request",
        }
    }
}

/// What kind of failure: this, not the step, decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The grant is not good enough, or the IdP refused it. Exit 5, PAM_AUTH_ERR.
    Refused,
    /// The IdP could not be reached or answered nonsense. Exit 1, PAM_AUTHINFO_UNAVAIL.
    Unavailable,
    /// The configuration is missing, unsafe or invalid. Exit 1, PAM_SERVICE_ERR.
    Config,
    /// A local I/O or system failure (audit log, cache, passwd). Exit 1.
    Io,
    /// Bad command line. Exit 2.
    Usage,
    /// The program could not be executed or privileges not changed. Exit 126.
    Exec,
    /// The program was not found on secure_path. Exit 127.
    NotFound,
    /// A requested grant is still pending (`--no-wait`, `--grant-id`).
    /// Exit 75 (EX_TEMPFAIL), as `apes` does.
    Pending,
    /// Waiting was interrupted by this signal; the request was cancelled.
    /// Exit 128 + the signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
    Interrupted(i32),
}

/// A refusal: nothing runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub step: Step,
    pub kind: Kind,
    pub reason: String,
}

impl Denial {
    pub fn new(step: Step, kind: Kind, reason: impl Into<String>) -> Self {
        Denial {
            step,
            kind,
            reason: reason.into(),
        }
    }

    /// A grant that is not good enough (exit 5).
    pub fn refused(step: Step, reason: impl Into<String>) -> Self {
        Self::new(step, Kind::Refused, reason)
    }

    /// The exit code of `escapes` for this refusal (DESIGN.md, exit codes).
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Refused => 5,
            Kind::Unavailable | Kind::Config | Kind::Io => 1,
            Kind::Usage => 2,
            Kind::Exec => 126,
            Kind::NotFound => 127,
            Kind::Pending => 75,
            Kind::Interrupted(sig) => 128 + sig.clamp(1, 64),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Denial {}

/// Characters a terminal or log viewer acts on instead of showing them:
/// control characters (C0, DEL and C1; U+009B is CSI on the Linux
/// console), the bidi controls that reorder the text around them, and the
/// line and paragraph separators some viewers break lines at.
pub fn is_terminal_active(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Make text from the token, the IdP or the caller safe to put in one line of
/// a terminal, syslog or audit message: control characters become `\xNN`,
/// the other [`is_terminal_active`] characters `\u{NNNN}`, and the result
/// is cut at `max` characters.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c) & 0xff));
        } else if is_terminal_active(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        assert_eq!(Denial::refused(Step::Time, "x").exit_code(), 5);
        assert_eq!(
            Denial::new(Step::Consume, Kind::Unavailable, "x").exit_code(),
            1
        );
        assert_eq!(Denial::new(Step::Config, Kind::Config, "x").exit_code(), 1);
        assert_eq!(Denial::new(Step::Usage, Kind::Usage, "x").exit_code(), 2);
        assert_eq!(Denial::new(Step::Exec, Kind::Exec, "x").exit_code(), 126);
        assert_eq!(
            Denial::new(Step::Exec, Kind::NotFound, "x").exit_code(),
            127
        );
    }

    /// Bidi controls reorder the text around them on a terminal or in a
    /// log viewer (a refusal can be made to read as something else), and
    /// some viewers break lines at U+2028/U+2029: escaped like controls.
    #[test]
    fn sanitize_escapes_bidi_controls_and_line_separators() {
        assert_eq!(
            sanitize(
                "ok \u{202e}deifirev ton\u{202c} x\u{2028}y\u{2066}\u{200f}",
                100
            ),
            "ok \\u{202e}deifirev ton\\u{202c} x\\u{2028}y\\u{2066}\\u{200f}"
        );
        assert_eq!(sanitize("\u{9b}2J\u{85}", 100), "\\x9b2J\\x85");
        assert_eq!(sanitize("é ü 日本", 100), "é ü 日本");
    }

    #[test]
    fn sanitize_escapes_control_characters_and_cuts() {
        assert_eq!(sanitize("a\nb\x1b[2J", 100), "a\\x0ab\\x1b[2J");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }
}
