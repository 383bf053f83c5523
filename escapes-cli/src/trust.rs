//! `escapes trust`: write the trust root (`[security] allowed_issuers` and
//! `allowed_approvers`) of the config file, compatible with the existing
//! escapes tool: `--idp`, `--approvers a,b`, `--replace`,
//! `--skip-validation`, prompts on a terminal, merge by default.
//!
//! Only the real root may run it (a setuid `escapes` run by a user must
//! never edit its own trust root). The IdP is checked first (discovery
//! names the same issuer; the JWKS has a usable Ed25519 key). Only the two
//! list values of an existing file change (see
//! [`pam_openape::config::edit`]); the new text must pass
//! [`Config::parse`] before anything is written, and it is written
//! atomically (0600 root, temp file + fsync + rename + directory fsync).

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pam_openape::config::edit::{self, TrustLists};
use pam_openape::config::{Config, DEFAULT_CONFIG_PATH, issuer_url_ok, unprivileged_loopback_port};
use pam_openape::http::{self, Client};
use pam_openape::jwks;
use pam_openape::trust;

use crate::atomic::Temp;
use crate::say;

const ROOT: u32 = 0;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub const HELP: &str = "\
Usage: escapes trust [--config PATH] [--idp URL]... [--approvers A,B,...]
                     [--replace] [--skip-validation]
                     [--allow-unprivileged-loopback]

Set which IdP and which approvers this host trusts, in the [security]
table of the configuration (default /etc/openape/config.toml). Run as root.

  --idp URL            issuer URL to trust (https, or http to a loopback address)
  --approvers A,B      comma-separated approver identifiers (e-mail addresses)
  --replace            replace both lists instead of adding to them (needs
                       --idp and --approvers)
  --skip-validation    do not contact the IdP (offline bootstrap)
  --config PATH        the configuration file to edit
  --allow-unprivileged-loopback
                       accept an http IdP on a loopback port >= 1024 (any
                       local user can bind such a port: tests and demos
                       only); writes allow_unprivileged_loopback = true

Without --idp and --approvers, on a terminal, both are asked for.

Unless --skip-validation, the IdP must answer
{idp}/.well-known/openid-configuration with the same issuer and publish
at least one usable Ed25519 key at {idp}/.well-known/jwks.json.
Other keys and comments of an existing file are kept. The file is written
owned by root, mode 0600, atomically. Exit status: 0 done (or nothing to
change), 1 error (nothing written), 2 usage error.
";

#[derive(Debug, Default, PartialEq, Eq)]
struct Opts {
    config: Option<PathBuf>,
    idps: Vec<String>,
    approvers: Vec<String>,
    replace: bool,
    skip_validation: bool,
    unprivileged_loopback: bool,
    help: bool,
}

/// Split `--name=value` / `--name value`.
fn parse(args: &[OsString]) -> Result<Opts, String> {
    let mut o = Opts::default();
    for (name, value) in
        crate::cli::subcommand_options(args, &["--config", "--idp", "--approvers"])?
    {
        match (name.as_str(), value) {
            ("--config", Some(v)) => {
                if o.config.is_some() {
                    return Err("give --config only once".into());
                }
                o.config = Some(PathBuf::from(v));
            }
            ("--idp", Some(v)) => o.idps.push(v.trim().to_string()),
            ("--approvers", Some(v)) => o.approvers.extend(split_list(&v)),
            ("--replace", None) => o.replace = true,
            ("--skip-validation", None) => o.skip_validation = true,
            ("--allow-unprivileged-loopback", None) => o.unprivileged_loopback = true,
            ("-h" | "--help", None) => o.help = true,
            (other, _) => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn approver_ok(a: &str) -> Result<(), String> {
    if a.is_empty() || a.len() > 320 || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "approver {:?} is not a valid identifier (an e-mail address without spaces)",
            pam_openape::error::sanitize(a, 80)
        ));
    }
    Ok(())
}

fn usage(msg: &str) -> i32 {
    say(&format!(
        "{msg}\nTry 'escapes trust --help' for more information."
    ));
    2
}

pub fn run(args: &[OsString]) -> i32 {
    let mut o = match parse(args) {
        Ok(o) => o,
        Err(m) => return usage(&m),
    };
    if o.help {
        crate::out!("{HELP}");
        return 0;
    }
    if let Err(uid) = crate::sys::require_real_root() {
        say(&format!(
            "escapes trust changes who may grant root on this host and must be run by root (you are uid {uid}); try: sudo escapes trust ..."
        ));
        return 1;
    }
    if o.idps.is_empty() && o.approvers.is_empty() {
        match prompt_both() {
            Ok((idps, approvers)) => {
                o.idps = idps;
                o.approvers = approvers;
            }
            Err(m) => return usage(&m),
        }
    }
    if o.replace && (o.idps.is_empty() || o.approvers.is_empty()) {
        return usage("--replace needs both --idp and --approvers (it replaces both lists)");
    }
    for idp in &o.idps {
        if let Err(e) = issuer_url_ok(idp) {
            return usage(&e);
        }
        if let Some(port) = unprivileged_loopback_port(idp)
            && !o.unprivileged_loopback
        {
            return usage(&format!(
                "{idp} is plain http on port {port}, which any local user can bind; use https or a port below 1024, or add --allow-unprivileged-loopback (tests and demos only)"
            ));
        }
    }
    for a in &o.approvers {
        if let Err(e) = approver_ok(a) {
            return usage(&e);
        }
    }
    let path = o
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if !path.is_absolute() || path.file_name().is_none() {
        return usage("--config must be an absolute path to a file");
    }
    match apply(&o, &path) {
        Ok(()) => 0,
        Err(m) => {
            say(&m);
            1
        }
    }
}

/// Ask for the IdP and the approvers on the terminal (plain echo: neither
/// is a secret).
fn prompt_both() -> Result<(Vec<String>, Vec<String>), String> {
    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    if !tty {
        return Err(
            "nothing to do: give --idp URL and/or --approvers LIST (or run it on a terminal to be asked)"
                .into(),
        );
    }
    let idp = ask("IdP URL (e.g. https://id.openape.at): ")?;
    if idp.is_empty() {
        return Err("no IdP URL given".into());
    }
    let approvers = split_list(&ask("Approver emails (comma-separated): ")?);
    Ok((vec![idp], approvers))
}

fn ask(prompt: &str) -> Result<String, String> {
    let mut err = std::io::stderr();
    let _ = err.write_all(prompt.as_bytes());
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(4096)
        .read_line(&mut line)
        .map_err(|_| "cannot read the answer".to_string())?;
    Ok(line.trim().to_string())
}

/// Create the config's directory if it is missing (root, 0755), then
/// check that it and every directory above it are root's alone. The
/// directory above a missing one is checked before anything is made: in a
/// directory someone else may write, they could swap the new directory for
/// a symlink before the chown and chmod below.
fn prepare_dir(path: &Path) -> Result<PathBuf, String> {
    let refuse = |e: trust::Untrusted| {
        format!("refusing to write the trust root below an unsafe directory: {e}")
    };
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    if std::fs::symlink_metadata(dir).is_err() {
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Err(format!("{} cannot be created", dir.display()));
        };
        let dir = &trust::check_dir_chain(parent, ROOT)
            .map_err(refuse)?
            .join(name);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::os::unix::fs::chown(dir, Some(ROOT), Some(ROOT))
            .map_err(|e| format!("cannot chown {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
        crate::outln!("created {} (root, 0755)", dir.display());
    }
    trust::check_dir_chain(dir, ROOT).map_err(refuse)
}

/// The existing file's text, `None` if there is none. A file someone
/// other than root could have written is not merged into a root-owned
/// trust root.
fn read_existing(path: &Path) -> Result<Option<String>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot examine {}: {e}", path.display())),
        Ok(_) => {}
    }
    let bytes = trust::read_trusted(path, ROOT).map_err(|e| {
        format!("refusing to edit {e}; fix it (chown root, chmod 0600) or move it away")
    })?;
    String::from_utf8(bytes).map(Some).map_err(|_| {
        format!(
            "{} is not valid UTF-8; fix it or move it away",
            path.display()
        )
    })
}

fn apply(o: &Opts, path: &Path) -> Result<(), String> {
    let dir = prepare_dir(path)?;
    // Write into the resolved directory (the chain just checked).
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let target = dir.join(name);
    let existing = read_existing(&target)?;
    let before = match &existing {
        Some(t) => edit::read_lists(t).map_err(|e| {
            format!(
                "{} {e}; fix it or move it away, nothing written",
                target.display()
            )
        })?,
        None => TrustLists::default(),
    };
    let current = existing
        .as_deref()
        .and_then(|t| Config::parse(&target, t, ROOT).ok());

    let mut idps = o.idps.clone();
    if o.skip_validation {
        if !idps.is_empty() {
            crate::outln!("skipping validation of the IdP (--skip-validation)");
        }
    } else {
        let timeout = current.as_ref().map_or(DEFAULT_TIMEOUT, |c| c.http_timeout);
        let ca = current.as_ref().and_then(|c| c.ca_bundle.clone());
        let client = Client::new(timeout, ca.as_deref(), ROOT).map_err(|d| d.reason)?;
        for idp in &mut idps {
            *idp = validate(&client, idp).map_err(|e| {
                format!("{e}; nothing written (use --skip-validation to trust it without checking)")
            })?;
        }
    }

    let want = if o.replace {
        TrustLists {
            issuers: edit::merged(&[], &idps),
            approvers: edit::merged(&[], &o.approvers),
        }
    } else {
        TrustLists {
            issuers: edit::merged(&before.issuers, &idps),
            approvers: edit::merged(&before.approvers, &o.approvers),
        }
    };
    let text = match &existing {
        Some(t) => edit::set_lists(t, &want)
            .map_err(|e| format!("{} {e}; nothing written", target.display()))?,
        None => edit::Edited {
            text: edit::new_config(&want),
            before: TrustLists::default(),
            after: want.clone(),
        },
    };
    let text = if o.unprivileged_loopback {
        edit::Edited {
            text: edit::with_unprivileged_loopback(&text.text)
                .map_err(|e| format!("{} {e}; nothing written", target.display()))?,
            ..text
        }
    } else {
        text
    };
    // Never write a trust root that would not load.
    Config::parse(&target, &text.text, ROOT)
        .map_err(|d| format!("refusing to write an invalid configuration: {}", d.reason))?;

    report(&before, &want);
    if text.unchanged(existing.as_deref()) {
        crate::outln!("{}: nothing to change", target.display());
        return Ok(());
    }
    write_atomically(&dir, &target, text.text.as_bytes())?;
    Config::load(&target, ROOT).map_err(|d| {
        format!(
            "wrote {}, but it does not load: {}",
            target.display(),
            d.reason
        )
    })?;
    crate::outln!("wrote {} (owner root, mode 0600)", target.display());
    crate::sys::syslog_change(&format!(
        "trust root {} rewritten by escapes trust",
        target.display()
    ));
    Ok(())
}

/// Discovery must name exactly this issuer and the JWKS must hold a
/// usable key. Returns the issuer as the IdP spells it (a trailing slash
/// the IdP does not use is dropped).
fn validate(client: &Client, idp: &str) -> Result<String, String> {
    let fail = |what: &str, e: String| format!("cannot validate the IdP {idp}: {what} {e}");
    let disc_url = http::join(idp, "/.well-known/openid-configuration");
    let resp = client.get(&disc_url).map_err(|e| fail(&disc_url, e))?;
    if resp.status != 200 {
        return Err(fail(&disc_url, format!("answered HTTP {}", resp.status)));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&resp.body).map_err(|_| fail(&disc_url, "is not JSON".into()))?;
    let issuer = doc
        .get("issuer")
        .and_then(|v| v.as_str())
        .ok_or_else(|| fail(&disc_url, "names no issuer".into()))?;
    let same = issuer == idp || idp.strip_suffix('/') == Some(issuer);
    if !same {
        return Err(fail(
            &disc_url,
            format!(
                "names the issuer {:?}, not {idp}; grants from it would carry that issuer",
                pam_openape::error::sanitize(issuer, 200)
            ),
        ));
    }
    let issuer = issuer.to_string();
    let jwks_url = http::join(&issuer, "/.well-known/jwks.json");
    let resp = client.get(&jwks_url).map_err(|e| fail(&jwks_url, e))?;
    if resp.status != 200 {
        return Err(fail(&jwks_url, format!("answered HTTP {}", resp.status)));
    }
    let set = jwks::parse_jwks(&resp.body).map_err(|e| fail(&jwks_url, e))?;
    if set.keys.is_empty() {
        let why: Vec<String> = set
            .unusable
            .iter()
            .map(|(kid, why)| format!("{}: {why}", pam_openape::error::sanitize(kid, 60)))
            .collect();
        return Err(fail(
            &jwks_url,
            format!(
                "has no usable Ed25519 signing key{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", why.join("; "))
                }
            ),
        ));
    }
    let kids: Vec<String> = set
        .keys
        .iter()
        .map(|k| pam_openape::error::sanitize(&k.kid, 60))
        .collect();
    crate::outln!(
        "IdP {issuer}: discovery ok, {} usable signing key(s) ({})",
        set.keys.len(),
        kids.join(", ")
    );
    Ok(issuer)
}

fn report(before: &TrustLists, after: &TrustLists) {
    let show = |label: &str, old: &[String], new: &[String]| {
        let mut first = true;
        let mut line = |mark: &str, item: &str, note: &str| {
            let head = if first { label } else { "" };
            first = false;
            crate::outln!("  {head:<11}{mark} {item}{note}");
        };
        for s in new {
            if old.contains(s) {
                line(" ", s, "");
            } else {
                line("+", s, "   (added)");
            }
        }
        for s in old {
            if !new.contains(s) {
                line("-", s, "   (removed)");
            }
        }
    };
    show("issuers:", &before.issuers, &after.issuers);
    show("approvers:", &before.approvers, &after.approvers);
}

fn write_atomically(dir: &Path, target: &Path, content: &[u8]) -> Result<(), String> {
    let stem = target
        .file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_else(|| "config".into());
    let err = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", target.display());
    let mut tmp = Temp::create(dir, &stem, 0o600).map_err(|e| err("create a temp file for", e))?;
    let f = tmp.file().map_err(|e| err("write", e))?;
    std::os::unix::fs::fchown(&*f, Some(ROOT), Some(ROOT)).map_err(|e| err("chown", e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("chmod", e))?;
    f.write_all(content).map_err(|e| err("write", e))?;
    let durable = tmp.commit(target).map_err(|e| err("replace", e))?;
    if !durable {
        say(&format!(
            "warning: {} is written, but syncing {} failed",
            target.display(),
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_old_flags_in_both_forms() {
        let o = parse(&a(&[
            "--idp",
            "https://id.example",
            "--approvers=alice@x, bob@x,,",
            "--replace",
            "--skip-validation",
            "--config=/etc/o/c.toml",
        ]));
        assert_eq!(
            o,
            Ok(Opts {
                config: Some(PathBuf::from("/etc/o/c.toml")),
                idps: vec!["https://id.example".into()],
                approvers: vec!["alice@x".into(), "bob@x".into()],
                replace: true,
                skip_validation: true,
                unprivileged_loopback: false,
                help: false,
            })
        );
        assert_eq!(parse(&a(&[])), Ok(Opts::default()));
        assert!(parse(&a(&["--idp"])).is_err());
        assert!(parse(&a(&["--replace=yes"])).is_err());
        assert!(parse(&a(&["--bogus"])).is_err());
        assert!(parse(&a(&["--config", "/a", "--config", "/b"])).is_err());
        assert_eq!(parse(&a(&["-h"])).map(|o| o.help), Ok(true));
    }

    #[test]
    fn approver_names_are_checked() {
        assert!(approver_ok("alice@example.com").is_ok());
        assert!(approver_ok("a b@x").is_err());
        assert!(approver_ok("").is_err());
        assert!(approver_ok("x\u{7}y").is_err());
    }
}
