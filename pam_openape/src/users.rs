//! The target account: one passwd entry that a grant's user name names
//! without doubt, for `escapes` and the PAM hooks alike.
//!
//! A grant binds a user *name* (`run_as`); what runs is a *uid*. The two
//! only mean the same when the name and the uid point at each other: the
//! name's entry has that uid, and the first entry of that uid has that
//! name. Otherwise one of them picks an account the approver did not see:
//!
//! * `toor:x:0:0` (a second name for uid 0): a grant for "toor" looks like
//!   any service account and runs as root;
//! * the same name twice (a local `svc` and a directory's `svc` under
//!   `passwd: files ldap`, or an edit left behind): `-u '#<second uid>'`
//!   finds the name "svc" and a grant for "svc" would run as the other
//!   uid;
//! * a name that is not UTF-8: it is read as text with U+FFFD in place of
//!   the odd bytes, so two such names read the same.
//!
//! Such a target is refused; the canonical name (the first entry of the
//! uid, e.g. root) still works. So is a uid or gid of 4294967295: as an id
//! to set it means "leave it unchanged" (`setresuid(-1, ...)`), and the
//! kernel refuses it in group lists; no host can run a command as it.

use nix::unistd::{Uid, User};

/// The id that `setresuid`/`setresgid` read as "no change".
pub const NO_ID: u32 = u32::MAX;

/// Why a target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// No such user.
    Unknown,
    /// The account exists, but the name does not name it without doubt,
    /// or its ids cannot be set; the text says why.
    Ambiguous(String),
    /// The user database could not be read.
    Lookup(String),
}

impl TargetError {
    /// A message for the caller and the log; `asked` is what was asked
    /// for (shown escaped).
    pub fn message(&self, asked: &str) -> String {
        let asked = crate::error::sanitize(asked, 64);
        match self {
            TargetError::Unknown => format!("unknown user {asked}"),
            TargetError::Ambiguous(why) => format!("target user {asked}: {why}"),
            TargetError::Lookup(e) => format!("cannot look up user {asked}: {e}"),
        }
    }
}

/// The target named `name`, if it names one account without doubt.
pub fn by_name(name: &str) -> Result<User, TargetError> {
    let user = User::from_name(name)
        .map_err(|e| TargetError::Lookup(e.to_string()))?
        .ok_or(TargetError::Unknown)?;
    if user.name != name {
        // A case-folding or aliasing directory answered for another name.
        return Err(TargetError::Ambiguous(format!(
            "the user database answers with the entry of {}",
            crate::error::sanitize(&user.name, 64)
        )));
    }
    unambiguous(user)
}

/// The target with uid `uid` (`-u '#N'`), if its name names it without
/// doubt.
pub fn by_uid(uid: u32) -> Result<User, TargetError> {
    if uid == NO_ID {
        return Err(TargetError::Ambiguous(format!(
            "uid {NO_ID} means \"no change\" to the kernel"
        )));
    }
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|e| TargetError::Lookup(e.to_string()))?
        .ok_or(TargetError::Unknown)?;
    unambiguous(user)
}

/// Check both directions: the name's entry has this uid, the uid's first
/// entry has this name; and neither id is [`NO_ID`].
fn unambiguous(user: User) -> Result<User, TargetError> {
    let uid = user.uid.as_raw();
    let gid = user.gid.as_raw();
    if uid == NO_ID || gid == NO_ID {
        return Err(TargetError::Ambiguous(format!(
            "uid {uid} / gid {gid}: {NO_ID} means \"no change\" to the kernel; no command can run as it"
        )));
    }
    let shown = crate::error::sanitize(&user.name, 64);
    let by_name = User::from_name(&user.name)
        .map_err(|e| TargetError::Lookup(e.to_string()))?
        .map(|u| u.uid.as_raw());
    if by_name != Some(uid) {
        return Err(TargetError::Ambiguous(match by_name {
            Some(other) => format!(
                "the name {shown} belongs to uid {other} first, not to uid {uid}; a grant for {shown} cannot tell them apart"
            ),
            None => format!(
                "the name of uid {uid} is not text ({shown}); a grant cannot name it exactly"
            ),
        }));
    }
    let first = User::from_uid(user.uid)
        .map_err(|e| TargetError::Lookup(e.to_string()))?
        .map(|u| u.name);
    if first.as_deref() != Some(user.name.as_str()) {
        return Err(TargetError::Ambiguous(format!(
            "{shown} is a second name of uid {uid} (its first name is {}); grants must name it by that",
            first
                .as_deref()
                .map_or_else(|| "unknown".into(), |n| crate::error::sanitize(n, 64))
        )));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_unambiguous_and_minus_one_is_not_an_id() {
        let root = by_name("root").map(|u| u.uid.as_raw());
        assert_eq!(root, Ok(0));
        assert_eq!(by_uid(0).map(|u| u.name), Ok("root".to_string()));
        assert!(matches!(by_uid(NO_ID), Err(TargetError::Ambiguous(_))));
        assert_eq!(
            by_name("no-such-user-openape").map(|u| u.name),
            Err(TargetError::Unknown)
        );
    }

    #[test]
    fn messages_escape_what_was_asked() {
        let m = TargetError::Unknown.message("x\u{1b}[2J");
        assert!(!m.contains('\u{1b}'), "{m}");
    }
}
