//! The command's environment, sudo-style: start empty, copy a short
//! allowlist from the caller's snapshot (values checked), then set the
//! identity variables. Nothing else of the caller's environment reaches
//! the command (no `LD_*`, `BASH_ENV`, `PATH`, `IFS`, `TZ`, grants, …).

#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Passed from the caller when the value looks harmless.
const DEFAULT_KEEP: &[&str] = &["TERM", "COLORTERM", "LANG", "LANGUAGE", "DISPLAY"];

fn name_kept(name: &str, keep: &[String]) -> bool {
    DEFAULT_KEEP.contains(&name)
        || (name.starts_with("LC_")
            && name.len() > 3
            && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        || keep.iter().any(|k| k == name)
}

/// A value is refused when it could steer a loader or shell: a path or
/// format in a locale/terminal name, or an exported shell function.
fn value_ok(name: &str, value: &OsStr) -> bool {
    let v = value.as_bytes();
    if v.starts_with(b"() ") || v.len() > 4096 {
        return false;
    }
    if name == "TZ" {
        return tz_ok(v);
    }
    let checked =
        matches!(name, "TERM" | "COLORTERM" | "LANG" | "LANGUAGE") || name.starts_with("LC_");
    !(checked && v.iter().any(|&b| b == b'/' || b == b'%'))
}

/// Where the C library looks up a zone name that is not a path.
const ZONEINFO: &[u8] = b"/usr/share/zoneinfo/";

/// `TZ` (only ever passed when `[env] keep` names it) as sudo's env_check
/// takes it: a zone name below the zoneinfo directory, a path inside it,
/// or a POSIX rule (`EST5EDT,M3.2.0/2,M11.1.0/2`); printable, no white
/// space, no `..` element, shorter than PATH_MAX. Anything else would make
/// the root command open and parse a file of the caller's choosing (its
/// own, a FIFO that blocks, a device that acts when opened).
fn tz_ok(v: &[u8]) -> bool {
    let v = v.strip_prefix(b":").unwrap_or(v);
    v.len() < 4096
        && (v.first() != Some(&b'/') || v.starts_with(ZONEINFO))
        && v.iter().all(u8::is_ascii_graphic)
        && !v.split(|&b| b == b'/').any(|part| part == b"..")
}

/// Who and what, for the identity variables.
pub struct Identity<'a> {
    pub target_name: &'a str,
    pub target_home: &'a OsStr,
    pub target_shell: &'a OsStr,
    pub caller_name: &'a str,
    pub caller_uid: u32,
    pub caller_gid: u32,
    pub command: &'a [OsString],
}

/// Build the command's environment.
pub fn target_env(
    snapshot: &[(OsString, OsString)],
    keep: &[String],
    secure_path: &str,
    id: &Identity<'_>,
) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = Vec::new();
    for (k, v) in snapshot {
        let Some(name) = k.to_str() else { continue };
        if name_kept(name, keep) && value_ok(name, v) && !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    let command = id
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let set: [(&str, OsString); 10] = [
        ("HOME", id.target_home.to_owned()),
        ("USER", id.target_name.into()),
        ("LOGNAME", id.target_name.into()),
        ("SHELL", id.target_shell.to_owned()),
        ("PATH", secure_path.into()),
        ("SUDO_USER", id.caller_name.into()),
        ("SUDO_UID", id.caller_uid.to_string().into()),
        ("SUDO_GID", id.caller_gid.to_string().into()),
        ("SUDO_COMMAND", command.into()),
        ("TERM", OsString::new()),
    ];
    for (k, v) in set {
        if k == "TERM" {
            if !out.iter().any(|(o, _)| o == "TERM") {
                out.push(("TERM".into(), "unknown".into()));
            }
            continue;
        }
        out.retain(|(o, _)| o != k);
        out.push((k.into(), v));
    }
    out
}

/// Is `name` allowed for `--preserve-env`? Only what the configuration
/// keeps anyway (or the default allowlist): the flag can never widen it.
pub fn preserve_allowed(name: &str, keep: &[String]) -> bool {
    name_kept(name, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a str> {
        env.iter()
            .find(|(o, _)| o == k)
            .and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn only_the_allowlist_passes() {
        let s = snap(&[
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("LD_LIBRARY_PATH", "/tmp"),
            ("BASH_ENV", "/tmp/x"),
            ("ENV", "/tmp/x"),
            ("IFS", "x"),
            ("PATH", "/evil:/usr/bin"),
            ("TZ", "../../../../etc/shadow"),
            ("ESCAPES_GRANT", "eyJ..."),
            ("OPENAPE_GRANT", "eyJ..."),
            ("HOME", "/home/mallory"),
            ("SOMETHING", "x"),
            ("TERM", "xterm-256color"),
            ("LANG", "de_AT.UTF-8"),
            ("LC_ALL", "../../../tmp/x"),
            ("LANGUAGE", "%n%n"),
            ("DISPLAY", ":0"),
            ("SSH_AUTH_SOCK", "/run/user/1000/ssh"),
            ("FUNC", "() { :; }; echo pwned"),
        ]);
        let cmd = [OsString::from("id"), OsString::from("-u")];
        let id = Identity {
            target_name: "root",
            target_home: OsStr::new("/root"),
            target_shell: OsStr::new("/bin/bash"),
            caller_name: "alice",
            caller_uid: 1000,
            caller_gid: 1000,
            command: &cmd,
        };
        let env = target_env(
            &s,
            &["SSH_AUTH_SOCK".to_string(), "FUNC".to_string()],
            "/usr/bin:/bin",
            &id,
        );
        for gone in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "ENV",
            "IFS",
            "TZ",
            "ESCAPES_GRANT",
            "OPENAPE_GRANT",
            "SOMETHING",
            "LC_ALL",
            "LANGUAGE",
            "FUNC",
        ] {
            assert_eq!(get(&env, gone), None, "{gone} passed");
        }
        assert_eq!(get(&env, "PATH"), Some("/usr/bin:/bin"));
        assert_eq!(get(&env, "HOME"), Some("/root"));
        assert_eq!(get(&env, "USER"), Some("root"));
        assert_eq!(get(&env, "LOGNAME"), Some("root"));
        assert_eq!(get(&env, "SHELL"), Some("/bin/bash"));
        assert_eq!(get(&env, "SUDO_USER"), Some("alice"));
        assert_eq!(get(&env, "SUDO_UID"), Some("1000"));
        assert_eq!(get(&env, "SUDO_COMMAND"), Some("id -u"));
        assert_eq!(get(&env, "TERM"), Some("xterm-256color"));
        assert_eq!(get(&env, "LANG"), Some("de_AT.UTF-8"));
        assert_eq!(get(&env, "DISPLAY"), Some(":0"));
        assert_eq!(get(&env, "SSH_AUTH_SOCK"), Some("/run/user/1000/ssh"));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }

    #[test]
    fn a_name_given_twice_passes_once_with_the_value_that_was_checked() {
        let s = snap(&[
            ("LANG", "../../tmp/x"),
            ("LANG", "C.UTF-8"),
            ("LANG", "de_AT.UTF-8"),
            ("TERM", "/tmp/t"),
            ("HOME", "/tmp/a"),
            ("HOME", "/tmp/b"),
        ]);
        let cmd = [OsString::from("id")];
        let id = Identity {
            target_name: "root",
            target_home: OsStr::new("/root"),
            target_shell: OsStr::new("/bin/sh"),
            caller_name: "alice",
            caller_uid: 1000,
            caller_gid: 1000,
            command: &cmd,
        };
        let env = target_env(&s, &[], "/usr/bin", &id);
        for name in ["LANG", "TERM", "HOME"] {
            assert_eq!(env.iter().filter(|(k, _)| k == name).count(), 1, "{name}");
        }
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(get(&env, "TERM"), Some("unknown"));
        assert_eq!(get(&env, "HOME"), Some("/root"));
    }

    #[test]
    fn a_kept_tz_is_a_zone_or_a_rule_never_a_path_of_the_callers() {
        for ok in [
            "Europe/Vienna",
            ":Europe/Vienna",
            "UTC",
            "/usr/share/zoneinfo/Asia/Tokyo",
            ":/usr/share/zoneinfo/UTC",
            "EST5EDT,M3.2.0/2,M11.1.0/2",
            "<+0330>-3:30",
        ] {
            assert!(value_ok("TZ", OsStr::new(ok)), "{ok} refused");
        }
        for bad in [
            "../../../../etc/shadow",
            ":/etc/shadow",
            "/tmp/zone",
            "/usr/share/zoneinfo/../../../tmp/zone",
            "Europe/../../../../tmp/zone",
            "..",
            "/usr/share/zoneinfoX/UTC",
            "Europe/Vienna ",
            "Europe/Vi\nenna",
            &"A".repeat(4096),
        ] {
            assert!(!value_ok("TZ", OsStr::new(bad)), "{bad:?} passed");
        }
    }

    #[test]
    fn preserve_env_cannot_widen_the_config() {
        assert!(preserve_allowed("LANG", &[]));
        assert!(!preserve_allowed("LD_PRELOAD", &[]));
        assert!(!preserve_allowed("SSH_AUTH_SOCK", &[]));
        assert!(preserve_allowed(
            "SSH_AUTH_SOCK",
            &["SSH_AUTH_SOCK".to_string()]
        ));
    }
}
