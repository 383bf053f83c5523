//! Step 11: is this argv the one the approver saw?
//!
//! Every binding the grant carries must match: `command` compared element
//! by element, byte-exact; `execution_context.argv` likewise and its
//! `argv_hash` (`"SHA-256:"` + hex SHA-256 of the JSON array); `cmd_hash`
//! (hex SHA-256 of the space-joined argv) only when the argv is unambiguous
//! under that join (no argument empty or containing whitespace), because
//! `["rm","-rf /x"]` and `["rm","-rf","/x"]` join to the same string. A grant
//! with no binding at all is refused where a command is being run.

use sha2::{Digest, Sha256};

use crate::token::{Claims, hex};

/// Hex SHA-256 of `argv.join(" ")`, as the IdP computes `cmd_hash`.
pub fn cmd_hash(argv: &[String]) -> String {
    hex(&Sha256::digest(argv.join(" ").as_bytes()))
}

/// `"SHA-256:"` + hex SHA-256 of the compact JSON array of argv.
pub fn argv_hash(argv: &[String]) -> String {
    let json = serde_json::to_string(argv).unwrap_or_default();
    format!("SHA-256:{}", hex(&Sha256::digest(json.as_bytes())))
}

/// Could two different argvs share this argv's `cmd_hash`?
pub fn join_is_ambiguous(argv: &[String]) -> bool {
    argv.iter()
        .any(|a| a.is_empty() || a.chars().any(char::is_whitespace))
}

/// Does the grant carry any command binding?
pub fn has_binding(c: &Claims) -> bool {
    c.command.is_some()
        || c.cmd_hash.is_some()
        || c.execution_context
            .as_ref()
            .is_some_and(|e| e.argv.is_some() || e.argv_hash.is_some())
}

/// Which binding decided, for the audit line and `escapes verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    Argv,
    ArgvHash,
    CmdHash,
}

impl Matched {
    /// How `escapes verify` and the logs name it.
    pub fn describe(self) -> &'static str {
        match self {
            Matched::Argv => "exact argv (command)",
            Matched::ArgvHash => "execution_context.argv_hash",
            Matched::CmdHash => "cmd_hash (unambiguous argv)",
        }
    }
}

/// Check `argv` against every binding the grant has, with a grant bound by
/// `cmd_hash` alone refused (the default). `Err` is the reason.
pub fn check(c: &Claims, argv: &[String]) -> Result<Matched, String> {
    check_with(c, argv, false)
}

/// [`check`], where `cmd_hash_only` (`[security] allow_cmd_hash_only`)
/// lets a grant bound by `cmd_hash` alone pass for an argv the space join
/// cannot confuse. The join hides which argv the approver saw, so this is
/// off by default; the real IdP always signs `command` too.
pub fn check_with(c: &Claims, argv: &[String], cmd_hash_only: bool) -> Result<Matched, String> {
    if argv.is_empty() {
        return Err("no command given".into());
    }
    if !has_binding(c) {
        return Err("grant is not bound to a command; it cannot run one".into());
    }
    let mut strongest = None;
    if let Some(cmd) = &c.command {
        if cmd.as_slice() != argv {
            return Err("command does not match the approved command".into());
        }
        strongest = Some(Matched::Argv);
    }
    if let Some(ctx) = &c.execution_context {
        if let Some(a) = &ctx.argv {
            if a.as_slice() != argv {
                return Err("command does not match the approved execution_context.argv".into());
            }
            strongest = strongest.or(Some(Matched::Argv));
        }
        if let Some(h) = &ctx.argv_hash {
            if !h.eq_ignore_ascii_case(&argv_hash(argv)) {
                return Err("command does not match the approved argv_hash".into());
            }
            strongest = strongest.or(Some(Matched::ArgvHash));
        }
    }
    if let Some(h) = &c.cmd_hash {
        let h = h
            .strip_prefix("sha256:")
            .or_else(|| h.strip_prefix("SHA-256:"))
            .unwrap_or(h);
        if !h.eq_ignore_ascii_case(&cmd_hash(argv)) {
            return Err("command does not match the approved cmd_hash".into());
        }
        if strongest.is_none() && !cmd_hash_only {
            return Err(
                "grant binds the command only by cmd_hash, which cannot tell which argv was approved; refused unless [security] allow_cmd_hash_only = true"
                    .into(),
            );
        }
        if strongest.is_none() && join_is_ambiguous(argv) {
            return Err(
                "grant binds the command only by cmd_hash, which is ambiguous for arguments that are empty or contain spaces"
                    .into(),
            );
        }
        strongest = strongest.or(Some(Matched::CmdHash));
    }
    strongest.ok_or_else(|| "grant is not bound to a command".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Audience, ExecutionContext, GrantType};

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn claims() -> Claims {
        Claims {
            iss: "i".into(),
            sub: "s".into(),
            aud: Audience::One("escapes".into()),
            exp: 0,
            nbf: None,
            iat: None,
            jti: None,
            grant_id: "g".into(),
            grant_type: GrantType::Once,
            target_host: "h".into(),
            decided_by: None,
            run_as: None,
            command: None,
            cmd_hash: None,
            execution_context: None,
            permissions: None,
        }
    }

    #[test]
    fn hashes_match_the_idp_definition() {
        // sha256("systemctl restart nginx")
        assert_eq!(
            cmd_hash(&v(&["systemctl", "restart", "nginx"])),
            hex(&Sha256::digest(b"systemctl restart nginx"))
        );
        assert_eq!(
            argv_hash(&v(&["id", "-u"])),
            format!("SHA-256:{}", hex(&Sha256::digest(br#"["id","-u"]"#)))
        );
    }

    #[test]
    fn exact_argv_binding() {
        let mut c = claims();
        c.command = Some(v(&["id", "-u"]));
        assert_eq!(check(&c, &v(&["id", "-u"])), Ok(Matched::Argv));
        for bad in [
            &["id"][..],
            &["id", "-u", "-g"],
            &["-u", "id"],
            &["id", "-u "],
            &["/usr/bin/id", "-u"],
        ] {
            assert!(check(&c, &v(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cmd_hash_only_when_allowed_and_unambiguous() {
        let mut c = claims();
        c.cmd_hash = Some(cmd_hash(&v(&["rm", "-rf", "/x"])));
        // Refused by default, whatever the argv.
        let e = check(&c, &v(&["rm", "-rf", "/x"]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("allow_cmd_hash_only"), "{e}");
        let allowed = |c: &Claims, a: &[&str]| check_with(c, &v(a), true);
        assert_eq!(allowed(&c, &["rm", "-rf", "/x"]), Ok(Matched::CmdHash));
        // Same join, different argv: refused as ambiguous even when allowed.
        assert!(allowed(&c, &["rm", "-rf /x"]).is_err());
        c.cmd_hash = Some(cmd_hash(&v(&["echo", ""])));
        assert!(allowed(&c, &["echo", ""]).is_err());
        c.cmd_hash = Some(format!("sha256:{}", cmd_hash(&v(&["id"]))));
        assert_eq!(allowed(&c, &["id"]), Ok(Matched::CmdHash));
        // Beside `command` it must agree, and then it is not "alone".
        c.command = Some(v(&["id"]));
        assert_eq!(check(&c, &v(&["id"])), Ok(Matched::Argv));
        c.cmd_hash = Some(cmd_hash(&v(&["id", "-u"])));
        assert!(check(&c, &v(&["id"])).is_err());
    }

    #[test]
    fn argv_hash_binding_and_every_binding_must_agree() {
        let mut c = claims();
        c.execution_context = Some(ExecutionContext {
            argv: None,
            argv_hash: Some(argv_hash(&v(&["echo", "a b"]))),
        });
        assert_eq!(check(&c, &v(&["echo", "a b"])), Ok(Matched::ArgvHash));
        assert!(check(&c, &v(&["echo", "a", "b"])).is_err());
        // A matching command with a contradicting cmd_hash is refused.
        c.command = Some(v(&["echo", "a b"]));
        c.cmd_hash = Some(cmd_hash(&v(&["true"])));
        assert!(check(&c, &v(&["echo", "a b"])).is_err());
    }

    #[test]
    fn no_binding_no_command() {
        assert!(check(&claims(), &v(&["id"])).is_err());
        let mut c = claims();
        c.command = Some(vec![]);
        assert!(check(&c, &[]).is_err());
    }
}
