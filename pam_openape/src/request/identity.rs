//! Who is asking: the caller's OpenApe identity, from the same files the
//! `apes` client uses, under the caller's passwd home directory.
//!
//! Read only inside the request child, which has already become the
//! caller: a file the caller cannot read fails with the caller's own
//! permission error and is never read with root's rights.
//!
//! 1. `~/.config/apes/auth.json` (`{idp, access_token, email,
//!    expires_at}`): used when its `idp` is the request IdP and it expires
//!    more than 30 s from now (skipped when `--key` is given, or when
//!    `--agent-email` names someone else);
//! 2. else an Ed25519 key: `--key`, else `[agent] key` in
//!    `~/.config/apes/config.toml`, else `~/.ssh/id_ed25519`. The email is
//!    `--agent-email`, else `[agent] email`, else the comment of the
//!    key's `.pub` file.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::Value;

use super::keys;

/// Largest identity file read (auth.json, config.toml, keys).
pub const MAX_IDENTITY_FILE: u64 = 64 * 1024;
/// A session must outlive this many seconds to be used.
pub const SESSION_MARGIN: i64 = 30;

/// How the caller proves who they are to the IdP.
pub enum Credential {
    /// A bearer token from the apes session file.
    Session(String),
    /// An Ed25519 key for the agent challenge login.
    Key(SigningKey),
}

/// The caller's identity: the agent email and how to log in.
pub struct Identity {
    pub email: String,
    pub credential: Credential,
    /// Where it came from (for messages; never a secret).
    pub source: String,
}

/// What [`discover`] looks at.
#[derive(Clone, Debug, Default)]
pub struct Hints {
    /// The caller's home directory from passwd (never from `$HOME`).
    pub home: PathBuf,
    /// The IdP requests go to.
    pub idp: String,
    /// `--key PATH`.
    pub key: Option<PathBuf>,
    /// `--agent-email EMAIL`.
    pub email: Option<String>,
}

/// Read a small regular file. `Ok(None)` when it does not exist; an error
/// (permission, not a regular file, too large) names the path.
pub fn read_small(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {}",
                path.display(),
                describe_io(&e)
            ));
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {}", path.display(), describe_io(&e)))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut buf = Vec::new();
    file.take(MAX_IDENTITY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {}: {}", path.display(), describe_io(&e)))?;
    if buf.len() as u64 > MAX_IDENTITY_FILE {
        return Err(format!("{} is too large", path.display()));
    }
    Ok(Some(buf))
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => crate::error::sanitize(&e.to_string(), 100),
    }
}

/// `~/x` → `<home>/x`; other paths as they are. A relative path is taken
/// relative to the home directory (the child runs in `/`).
pub fn expand(path: &str, home: &Path) -> PathBuf {
    if path == "~" {
        return home.to_path_buf();
    }
    if let Some(rest) = path.strip_prefix("~/") {
        return home.join(rest);
    }
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        home.join(p)
    }
}

/// A plausible agent email: one `@`, no whitespace or control
/// characters, at most 254 bytes.
pub fn email_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 254
        && s.matches('@').count() == 1
        && !s.starts_with('@')
        && !s.ends_with('@')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn same_idp(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The usable apes session, if any.
fn session(h: &Hints, now: i64) -> Result<Option<Identity>, String> {
    let path = h.home.join(".config/apes/auth.json");
    let Some(bytes) = read_small(&path)? else {
        return Ok(None);
    };
    // apes writes an empty file on logout.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let expires = v.get("expires_at").and_then(Value::as_i64).unwrap_or(0);
    let (idp, token, email) = (s("idp"), s("access_token"), s("email"));
    let usable = same_idp(idp, &h.idp)
        && expires > now.saturating_add(SESSION_MARGIN)
        && !token.is_empty()
        && token.len() <= crate::token::MAX_TOKEN_LEN
        && token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
        && email_ok(email)
        && h.email.as_deref().is_none_or(|e| e == email);
    Ok(usable.then(|| Identity {
        email: email.to_string(),
        credential: Credential::Session(token.to_string()),
        source: path.display().to_string(),
    }))
}

/// `[agent] key` and `[agent] email` of `~/.config/apes/config.toml`.
fn apes_agent_config(home: &Path) -> Result<(Option<String>, Option<String>), String> {
    let path = home.join(".config/apes/config.toml");
    let Some(bytes) = read_small(&path)? else {
        return Ok((None, None));
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{} is not valid UTF-8", path.display()))?;
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        format!(
            "{}: {}",
            path.display(),
            crate::error::sanitize(e.message(), 120)
        )
    })?;
    let agent = table.get("agent").and_then(toml::Value::as_table);
    let get = |k: &str| {
        agent
            .and_then(|a| a.get(k))
            .and_then(toml::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok((get("key"), get("email")))
}

/// Find the caller's identity. `Ok(None)`: none at all (no session, no
/// key anywhere) — the caller then gets the old behaviour. `Err`: an
/// identity is there but unusable (unreadable, malformed, no email).
pub fn discover(h: &Hints, now: i64) -> Result<Option<Identity>, String> {
    if let Some(e) = &h.email
        && !email_ok(e)
    {
        return Err("--agent-email is not an email address".into());
    }
    if h.key.is_none()
        && let Some(id) = session(h, now)?
    {
        return Ok(Some(id));
    }
    let (cfg_key, cfg_email) = apes_agent_config(&h.home)?;
    let (path, explicit) = match (&h.key, &cfg_key) {
        (Some(p), _) => (expand(&p.to_string_lossy(), &h.home), true),
        (None, Some(k)) => (expand(k, &h.home), true),
        (None, None) => (h.home.join(".ssh/id_ed25519"), false),
    };
    let Some(bytes) = read_small(&path)? else {
        if explicit {
            return Err(format!("key {} does not exist", path.display()));
        }
        return Ok(None);
    };
    let key =
        keys::parse_private_key(&bytes).map_err(|e| format!("key {}: {e}", path.display()))?;
    let email = match h.email.clone().or(cfg_email) {
        Some(e) => e,
        None => pub_comment(&path, &key)?,
    };
    if !email_ok(&email) {
        return Err(format!(
            "agent email {:?} is not an email address",
            crate::error::sanitize(&email, 80)
        ));
    }
    Ok(Some(Identity {
        email,
        credential: Credential::Key(key),
        source: path.display().to_string(),
    }))
}

/// The email in the comment of `<key>.pub`, which must hold this key.
fn pub_comment(key_path: &Path, key: &SigningKey) -> Result<String, String> {
    let mut pub_path = key_path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let no_email = || {
        format!(
            "no agent email for key {}: pass --agent-email, set [agent] email in ~/.config/apes/config.toml, or run escapes enroll",
            key_path.display()
        )
    };
    let Some(bytes) = read_small(&pub_path)? else {
        return Err(no_email());
    };
    let text = String::from_utf8_lossy(&bytes);
    let (public, comment) =
        keys::parse_public_line(&text).map_err(|e| format!("{}: {e}", pub_path.display()))?;
    if public != key.verifying_key().to_bytes() {
        return Err(format!(
            "{} does not belong to {}",
            pub_path.display(),
            key_path.display()
        ));
    }
    comment.ok_or_else(no_email)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;

    fn home(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("openape-id-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join(".config/apes")).unwrap();
        fs::create_dir_all(d.join(".ssh")).unwrap();
        d
    }

    fn hints(home: &Path) -> Hints {
        Hints {
            home: home.to_path_buf(),
            idp: "https://id.example".into(),
            key: None,
            email: None,
        }
    }

    #[test]
    fn session_file_is_used_only_for_this_idp_and_when_fresh() {
        let h = home("session");
        let write = |idp: &str, exp: i64| {
            fs::write(
                h.join(".config/apes/auth.json"),
                format!(r#"{{"idp":"{idp}","access_token":"tok.en","email":"a@example.com","expires_at":{exp}}}"#),
            )
            .unwrap();
        };
        write("https://id.example/", 1000 + 31);
        let id = discover(&hints(&h), 1000).unwrap().unwrap();
        assert!(matches!(id.credential, Credential::Session(ref t) if t == "tok.en"));
        assert_eq!(id.email, "a@example.com");
        write("https://id.example", 1000 + 30);
        assert!(discover(&hints(&h), 1000).unwrap().is_none());
        write("https://other.example", 5000);
        assert!(discover(&hints(&h), 1000).unwrap().is_none());
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn key_email_comes_from_flag_config_or_pub_comment() {
        let h = home("key");
        let k = SigningKey::from_bytes(&[9u8; 32]);
        fs::write(h.join(".ssh/id_ed25519"), keys::pkcs8_pem(&k)).unwrap();
        // No email anywhere.
        assert!(discover(&hints(&h), 0).is_err());
        fs::write(
            h.join(".ssh/id_ed25519.pub"),
            keys::ssh_public_line(&k, Some("pub@example.com")),
        )
        .unwrap();
        assert_eq!(
            discover(&hints(&h), 0).unwrap().unwrap().email,
            "pub@example.com"
        );
        fs::write(
            h.join(".config/apes/config.toml"),
            "[defaults]\nidp = \"x\"\n[agent]\nemail = \"cfg@example.com\"\n",
        )
        .unwrap();
        assert_eq!(
            discover(&hints(&h), 0).unwrap().unwrap().email,
            "cfg@example.com"
        );
        let mut with_flag = hints(&h);
        with_flag.email = Some("flag@example.com".into());
        assert_eq!(
            discover(&with_flag, 0).unwrap().unwrap().email,
            "flag@example.com"
        );
        // A .pub of another key is refused.
        fs::remove_file(h.join(".config/apes/config.toml")).unwrap();
        let other = SigningKey::from_bytes(&[10u8; 32]);
        fs::write(
            h.join(".ssh/id_ed25519.pub"),
            keys::ssh_public_line(&other, Some("pub@example.com")),
        )
        .unwrap();
        assert!(discover(&hints(&h), 0).is_err());
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn nothing_there_is_no_identity_but_a_missing_named_key_is_an_error() {
        let h = home("none");
        assert!(discover(&hints(&h), 0).unwrap().is_none());
        let mut named = hints(&h);
        named.key = Some("~/missing".into());
        assert!(discover(&named, 0).is_err());
        // A directory where the key should be: an error, not a hang.
        fs::create_dir(h.join(".ssh/id_ed25519")).unwrap();
        assert!(discover(&hints(&h), 0).is_err());
        let _ = fs::remove_dir_all(&h);
    }

    #[test]
    fn expand_and_email_rules() {
        let home = Path::new("/home/u");
        assert_eq!(expand("~/.ssh/k", home), PathBuf::from("/home/u/.ssh/k"));
        assert_eq!(expand("/k", home), PathBuf::from("/k"));
        assert_eq!(expand("k", home), PathBuf::from("/home/u/k"));
        assert!(email_ok("a@b"));
        for bad in ["", "a", "@b", "a@", "a@b@c", "a b@c", "a\n@b"] {
            assert!(!email_ok(bad), "{bad:?}");
        }
    }
}
