//! What is being authorised when a host program calls PAM: the target user
//! and the argv, read from the host's own command line
//! (`/proc/self/cmdline`, NUL-split; never `/proc/*/stat`).
//!
//! The parsers accept only a small, unambiguous subset and refuse the rest,
//! so they cannot disagree with sudo or su about what will run:
//!
//! * sudo / sudo-rs: `sudo [-n] [-S] [-u USER] [--] CMD ARGS…` (clustered
//!   short options such as `-nu root` and `-uroot`, and the long forms
//!   `--non-interactive`, `--stdin`, `--user=USER`, `--user USER`).
//!   Anything else (`-s`, `-i`, `-e`, `-E`, `-D`, `-R`, `-h`, `-C`, `-T`,
//!   `-g`, `-k`, `-v`, `-l`, `VAR=value`, `sudoedit`, a CMD that starts
//!   with `-` or whose last path component begins with `sudoedit`, also
//!   as `sudoedit/.`, a relative CMD with a slash such as `./x`) is
//!   refused.
//! * su: `su [-|-l|--login] [-c CMD|--command=CMD] [--] [USER]`, with
//!   nothing option-like after USER; the
//!   command is the `-c` string as one argument (what the target's shell
//!   will interpret), so only an exact binding can match it.

/// A user named on a command line: a name, or `#UID` in plain decimal below
/// 4294967295. `#-1`, `#4294967295`, `#0x0`, `# 0`, empty names and names
/// with spaces, control characters, `:` or `/` are refused (the sudo
/// CVE-2019-14287 class).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserSpec {
    Name(String),
    Uid(u32),
}

pub fn user_spec(s: &str) -> Result<UserSpec, String> {
    if let Some(num) = s.strip_prefix('#') {
        if num.is_empty() || num.len() > 10 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid user id {:?}: use #N with N in decimal",
                s.escape_debug().to_string()
            ));
        }
        return num
            .parse::<u64>()
            .ok()
            .filter(|n| *n < u64::from(u32::MAX))
            .and_then(|n| u32::try_from(n).ok())
            .map(UserSpec::Uid)
            .ok_or_else(|| format!("invalid user id {s:?}"));
    }
    if s.is_empty()
        || s.len() > 256
        || s.starts_with('-')
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/')
    {
        return Err(format!(
            "invalid user name {:?}",
            s.escape_debug().to_string()
        ));
    }
    Ok(UserSpec::Name(s.to_string()))
}

/// Does `arg` have the shape `NAME=value` with a valid variable name? sudo
/// takes such an argument before the command as an environment assignment,
/// whatever the value (`LD_PRELOAD=/x.so` too).
pub fn is_env_assignment(arg: &[u8]) -> bool {
    let Some(eq) = arg.iter().position(|&b| b == b'=') else {
        return false;
    };
    let name = arg.get(..eq).unwrap_or_default();
    matches!(name.first(), Some(c) if *c == b'_' || c.is_ascii_alphabetic())
        && name.iter().all(|c| *c == b'_' || c.is_ascii_alphanumeric())
}

/// What a sudo or su command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `None`: the program's default (root for sudo, PAM_USER for su).
    pub user: Option<UserSpec>,
    /// `None`: no command (an interactive su shell).
    pub argv: Option<Vec<String>>,
    /// su only: `-`, `-l` or `--login` was given, so su starts the target
    /// with a fresh login environment (always false for sudo, which resets
    /// the environment itself).
    pub login: bool,
}

fn base_name(argv0: &str) -> &str {
    argv0.rsplit('/').next().unwrap_or(argv0)
}

/// Does the command word name sudoedit? sudo-rs 0.2 switches to edit
/// mode when the command's last path component as `std::path` sees it
/// (`.` components and trailing `/` dropped) is `sudoedit` or
/// `sudoedit-rs`: `sudo /usr/bin/sudoedit/. FILE` edits FILE. And a sudo
/// started (as root, by the command) under any name beginning with
/// `sudoedit` is sudoedit (`/usr/bin/sudoedit/` resolves to it). So the
/// last component other than `.` and empty may not begin with `sudoedit`.
fn names_sudoedit(cmd: &str) -> bool {
    cmd.split('/')
        .rev()
        .find(|c| !c.is_empty() && *c != ".")
        .is_some_and(|c| c.starts_with("sudoedit"))
}

/// Parse sudo's (or sudo-rs's) argv, program name included.
pub fn parse_sudo(argv: &[String]) -> Result<Invocation, String> {
    let Some(a0) = argv.first() else {
        return Err("empty command line".into());
    };
    let name = base_name(a0);
    if name != "sudo" && name != "sudo-rs" {
        return Err(format!(
            "not invoked as sudo ({})",
            crate::error::sanitize(name, 40)
        ));
    }
    let mut user: Option<UserSpec> = None;
    let mut set_user = |v: &str| -> Result<(), String> {
        if user.is_some() {
            return Err("-u given twice".into());
        }
        user = Some(user_spec(v)?);
        Ok(())
    };
    let mut i = 1;
    while let Some(arg) = argv.get(i) {
        if arg == "--" {
            i += 1;
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            match long {
                "non-interactive" | "stdin" => {}
                "user" => {
                    i += 1;
                    set_user(argv.get(i).ok_or("--user needs a value")?)?;
                }
                _ => match long.strip_prefix("user=") {
                    Some(v) => set_user(v)?,
                    None => {
                        return Err(format!(
                            "sudo option --{} is not allowed with grants",
                            crate::error::sanitize(long, 40)
                        ));
                    }
                },
            }
            i += 1;
            continue;
        }
        if let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (pos, c) in cluster.char_indices() {
                match c {
                    'n' | 'S' => {}
                    'u' => {
                        let rest = cluster.get(pos + 1..).unwrap_or_default();
                        if rest.is_empty() {
                            i += 1;
                            set_user(argv.get(i).ok_or("-u needs a value")?)?;
                        } else {
                            set_user(rest)?;
                        }
                        break;
                    }
                    other => {
                        return Err(format!(
                            "sudo option -{} is not allowed with grants",
                            other.escape_default()
                        ));
                    }
                }
            }
            i += 1;
            continue;
        }
        break;
    }
    let cmd: Vec<String> = argv.get(i..).unwrap_or_default().to_vec();
    let Some(first) = cmd.first() else {
        return Err("no command given to sudo".into());
    };
    if is_env_assignment(first.as_bytes()) || (first.contains('=') && !first.starts_with('/')) {
        return Err("VAR=value before the command is not allowed with grants".into());
    }
    if first.starts_with('-') {
        // sudo-rs skips a lone `-` among its options: `sudo - id` runs
        // `id`, so a grant for ["-", "id"] would run another argv.
        return Err("a command starting with - is not allowed with grants".into());
    }
    if first.contains('/') && !first.starts_with('/') {
        // sudo runs `./x` or `bin/x` from the caller's working directory,
        // which no grant binds: the caller would pick the program. escapes
        // refuses the same (a bare name or an absolute path only).
        return Err(
            "a relative program with a slash is not allowed with grants (use a bare name or an absolute path)"
                .into(),
        );
    }
    if names_sudoedit(first) {
        // `sudo sudoedit FILE` puts sudo 1.9 and sudo-rs into edit mode.
        return Err("sudoedit is not allowed with grants".into());
    }
    Ok(Invocation {
        user,
        argv: Some(cmd),
        login: false,
    })
}

/// Parse su's argv, program name included.
pub fn parse_su(argv: &[String]) -> Result<Invocation, String> {
    let Some(a0) = argv.first() else {
        return Err("empty command line".into());
    };
    if base_name(a0) != "su" {
        return Err("not invoked as su".into());
    }
    let mut command: Option<String> = None;
    let mut set_cmd = |v: &str| -> Result<(), String> {
        if command.is_some() {
            return Err("-c given twice".into());
        }
        command = Some(v.to_string());
        Ok(())
    };
    let mut i = 1;
    let mut operands: Vec<&String> = Vec::new();
    let mut options_done = false;
    let mut login = false;
    while let Some(arg) = argv.get(i) {
        if options_done || !arg.starts_with('-') {
            operands.push(arg);
        } else if !operands.is_empty() {
            // util-linux su parses with GNU getopt: `-l`/`--login` after
            // the user is permuted to the front, but only unless
            // POSIXLY_CORRECT is set (then it goes to the shell), and a
            // `-` there is never the login flag (only as the first
            // operand). `su root -c CMD -` runs CMD without a login
            // environment while this loop saw `-`. Nothing that looks
            // like an option may follow the user name.
            return Err("options after the user name are not allowed with grants".into());
        } else if arg == "--" {
            options_done = true;
        } else if arg == "-" || arg == "-l" || arg == "--login" {
            // su takes only the first operand `-` as the login flag; a
            // second one becomes the user name (`su - -c CMD - root`).
            if login {
                return Err("the login flag given twice is not allowed with grants".into());
            }
            login = true;
        } else if arg == "-c" || arg == "--command" {
            i += 1;
            set_cmd(argv.get(i).ok_or("-c needs a value")?)?;
        } else if let Some(v) = arg.strip_prefix("--command=") {
            set_cmd(v)?;
        } else if let Some(v) = arg.strip_prefix("-c") {
            set_cmd(v)?;
        } else {
            return Err(format!(
                "su option {} is not allowed with grants",
                crate::error::sanitize(arg, 40)
            ));
        }
        i += 1;
    }
    let user = match operands.as_slice() {
        [] => None,
        // su looks up names only: `#0` is a user called "#0" to it.
        [u] if u.starts_with('#') => {
            return Err("su takes a user name, not #N, with grants".into());
        }
        [u] => Some(user_spec(u)?),
        _ => return Err("arguments after the user name are not allowed with grants".into()),
    };
    Ok(Invocation {
        user,
        argv: command.map(|c| vec![c]),
        login,
    })
}

/// Read `/proc/self/cmdline` (at most 1 MiB) split on NUL. Arguments that
/// are not UTF-8 make the whole command line unusable (no grant can name
/// them).
pub fn own_cmdline() -> Result<Vec<String>, String> {
    use std::io::Read;
    let f = std::fs::File::open("/proc/self/cmdline")
        .map_err(|e| format!("cannot read /proc/self/cmdline: {e}"))?;
    let mut buf = Vec::new();
    f.take(1024 * 1024 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read /proc/self/cmdline: {e}"))?;
    if buf.len() > 1024 * 1024 {
        return Err("command line is longer than 1 MiB".into());
    }
    split_cmdline(&buf)
}

/// A variable from this process's initial environment, as the kernel
/// handed it over at exec (`/proc/self/environ`), first occurrence wins.
/// sudo replaces `getenv()` for its plugins with a view of the environment
/// it has already reset for the command, so a PAM module under sudo must
/// read the caller's variables here.
pub fn initial_env(name: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open("/proc/self/environ").ok()?;
    let mut buf = Vec::new();
    f.take(1024 * 1024).read_to_end(&mut buf).ok()?;
    env_from_block(&buf, name)
}

/// Find `name` in a NUL-separated `NAME=value` block.
pub fn env_from_block(block: &[u8], name: &str) -> Option<String> {
    block.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(value.to_vec()).ok()
    })
}

/// The kind of program this process is, from its executable and the PAM
/// service: sudo and sudo-rs (any `sudo*` service, including `sudo-i`),
/// su, or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Sudo,
    Su,
    Other,
}

pub fn host_kind(exe_name: &str, service: &str) -> Host {
    if matches!(exe_name, "sudo" | "sudo-rs" | "sudoedit") || service.starts_with("sudo") {
        Host::Sudo
    } else if exe_name == "su" || service == "su" || service == "su-l" {
        Host::Su
    } else {
        Host::Other
    }
}

/// Programs (by executable name) and PAM services that hand out another
/// user's rights but whose command line this module does not read. A
/// grant can never authenticate them, even when an admin opts their
/// service in: a grant with no command would become a blank cheque (the
/// doas / polkit-agent-helper-1 class).
const ELEVATION_EXES: &[&str] = &[
    "doas",
    "pkexec",
    "polkit-agent-helper-1",
    "polkitd",
    "run0",
    "systemd-run",
    "runuser",
    "ksu",
    "please",
    "pleaseedit",
    "sg",
    "newgrp",
    "calife",
    "super",
    "op",
];
const ELEVATION_SERVICES: &[&str] = &[
    "doas",
    "pkexec",
    "polkit-1",
    "systemd-run0",
    "run0",
    "runuser",
    "runuser-l",
    "ksu",
    "please",
    "newgrp",
];

/// Is this an elevation program the module does not understand?
pub fn is_other_elevation(exe_name: &str, service: &str) -> bool {
    ELEVATION_EXES.contains(&exe_name) || ELEVATION_SERVICES.contains(&service)
}

/// Base name of `/proc/self/exe` ("" if unknown).
pub fn own_exe_name() -> String {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

pub fn split_cmdline(buf: &[u8]) -> Result<Vec<String>, String> {
    let body = buf.strip_suffix(b"\0").unwrap_or(buf);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == 0)
        .map(|a| {
            String::from_utf8(a.to_vec()).map_err(|_| "command line is not valid UTF-8".to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn sudo(a: &[&str]) -> Result<Invocation, String> {
        parse_sudo(&v(a))
    }

    #[test]
    fn user_specs_refuse_the_uid_minus_one_class() {
        assert_eq!(user_spec("root"), Ok(UserSpec::Name("root".into())));
        assert_eq!(user_spec("#0"), Ok(UserSpec::Uid(0)));
        assert_eq!(user_spec("#65534"), Ok(UserSpec::Uid(65534)));
        for bad in [
            "#-1",
            "#4294967295",
            "#4294967296",
            "#0x0",
            "# 0",
            "#",
            "#+1",
            "",
            "root ",
            " root",
            "a\nb",
            "-n",
            "a:b",
            "../x",
        ] {
            assert!(user_spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sudo_subset() {
        let root_id = Invocation {
            user: None,
            argv: Some(v(&["id", "-u"])),
            login: false,
        };
        assert_eq!(sudo(&["sudo", "id", "-u"]), Ok(root_id.clone()));
        assert_eq!(
            sudo(&["/usr/bin/sudo", "-n", "-S", "--", "id", "-u"]),
            Ok(root_id)
        );
        let nobody = Some(UserSpec::Name("nobody".into()));
        for form in [
            &["sudo", "-u", "nobody", "id"][..],
            &["sudo", "-unobody", "id"],
            &["sudo", "-nu", "nobody", "id"],
            &["sudo", "-Snunobody", "id"],
            &["sudo", "--user=nobody", "id"],
            &["sudo", "--user", "nobody", "--", "id"],
        ] {
            assert_eq!(sudo(form).map(|i| i.user), Ok(nobody.clone()), "{form:?}");
        }
        assert_eq!(
            sudo(&["sudo", "-u#0", "id"]).map(|i| i.user),
            Ok(Some(UserSpec::Uid(0)))
        );
        // Options after the command belong to the command.
        assert_eq!(
            sudo(&["sudo", "ls", "-s", "--", "-i"]).map(|i| i.argv),
            Ok(Some(v(&["ls", "-s", "--", "-i"])))
        );
    }

    #[test]
    fn sudo_refusals() {
        for bad in [
            &["sudo", "-s"][..],
            &["sudo", "-i"],
            &["sudo", "-s", "id"],
            &["sudo", "-e", "/etc/shadow"],
            &["sudoedit", "-s", "\\", "AAAA"],
            &["sudo", "-E", "id"],
            &["sudo", "--preserve-env=PATH", "id"],
            &["sudo", "-D", "/", "id"],
            &["sudo", "-R", "/tmp", "id"],
            &["sudo", "-h", "other", "id"],
            &["sudo", "-C", "3", "id"],
            &["sudo", "-T", "5", "id"],
            &["sudo", "-g", "root", "id"],
            &["sudo", "-b", "id"],
            &["sudo", "-k", "id"],
            &["sudo", "-v"],
            &["sudo", "-l"],
            &["sudo", "-u", "#-1", "id"],
            &["sudo", "-u#4294967295", "id"],
            &["sudo", "-u", "root", "-u", "nobody", "id"],
            &["sudo", "-u"],
            &["sudo"],
            &["sudo", "-n"],
            &["sudo", "FOO=bar", "id"],
            &["sudo", "LD_PRELOAD=/tmp/x.so", "id"],
            &["sudo", "-", "id"],
            &["sudo", "-n", "-", "id"],
            &["sudo", "--", "-", "id"],
            &["sudo", "--", "-x"],
            &["sudo", "./x"],
            &["sudo", "bin/x"],
            &["sudo", "-u", "root", "--", "../x", "y"],
            &["sudo", ".//x"],
            &["sudo", "sudoedit", "/etc/shadow"],
            &["sudo", "/usr/bin/sudoedit", "/etc/shadow"],
            &["sudo", "--", "sudoedit-rs", "/etc/shadow"],
            // The same once `.` and trailing `/` are normalised away, and
            // other names sudo-rs takes for sudoedit.
            &["sudo", "/usr/bin/sudoedit/.", "/etc/shadow"],
            &["sudo", "/usr/bin/sudoedit/./.", "/etc/shadow"],
            &["sudo", "sudoedit/.", "/etc/shadow"],
            &["sudo", "/usr/bin/sudoedit/", "/etc/shadow"],
            &["sudo", "/usr/bin//sudoedit//", "/etc/shadow"],
            &["sudo", "/usr/bin/sudoedit-rs/.", "/etc/shadow"],
            &["sudo", "/opt/sudoeditor", "/etc/shadow"],
            &["x ) 1 2", "id"],
            &[],
        ] {
            assert!(sudo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn su_subset() {
        let p = |a: &[&str]| parse_su(&v(a));
        assert_eq!(
            p(&["su", "-c", "id -u", "root"]),
            Ok(Invocation {
                user: Some(UserSpec::Name("root".into())),
                argv: Some(v(&["id -u"])),
                login: false,
            })
        );
        assert_eq!(
            p(&["su", "-", "--command=id -u"]).map(|i| (i.argv, i.login)),
            Ok((Some(v(&["id -u"])), true))
        );
        for login in [
            &["su", "-l"][..],
            &["su", "--login", "-c", "x"],
            &["su", "-", "root"],
        ] {
            assert_eq!(p(login).map(|i| i.login), Ok(true), "{login:?}");
        }
        // "-" after "--" is an operand (an invalid user name), not the
        // login flag.
        assert!(p(&["su", "--", "-"]).is_err());
        // A second login flag is su's user name; su knows no #N.
        assert!(p(&["su", "-", "-c", "x", "-", "root"]).is_err());
        assert!(p(&["su", "-l", "-"]).is_err());
        assert!(p(&["su", "-", "-c", "x", "#0"]).is_err());
        assert!(p(&["su", "-", "#0"]).is_err());
        assert_eq!(
            p(&["/bin/su", "-l"]),
            Ok(Invocation {
                user: None,
                argv: None,
                login: true,
            })
        );
        assert_eq!(
            p(&["su", "-cid", "--", "nobody"]).map(|i| i.user),
            Ok(Some(UserSpec::Name("nobody".into())))
        );
        for bad in [
            &["su", "-s", "/bin/sh", "-c", "id"][..],
            &["su", "-m", "-c", "id"],
            &["su", "-p"],
            &["su", "-c", "a", "-c", "b"],
            &["su", "root", "extra"],
            &["su", "-g", "root"],
            &["su", "#-1"],
            &["sudo", "-c", "id"],
            // After the user name `-` is not the login flag, and under
            // POSIXLY_CORRECT neither are `-l`/`--login`: su would keep
            // the caller's environment.
            &["su", "root", "-c", "id", "-"],
            &["su", "root", "-", "-c", "id"],
            &["su", "-c", "id", "root", "-"],
            &["su", "-c", "id", "root", "-l"],
            &["su", "-c", "id", "root", "--login"],
            &["su", "root", "-l", "-c", "id"],
            &["su", "-", "root", "-c", "id"],
            &["su", "-", "root", "--"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn environment_block_lookup() {
        let block = b"A=1\0OPENAPE_GRANT=x.y.z\0OPENAPE_GRANT=second\0OPENAPE_GRANTX=no\0";
        assert_eq!(env_from_block(block, "OPENAPE_GRANT"), Some("x.y.z".into()));
        assert_eq!(env_from_block(block, "OPENAPE"), None);
        assert_eq!(env_from_block(block, "B"), None);
    }

    #[test]
    fn sudo_i_and_sudo_executables_are_sudo() {
        assert_eq!(host_kind("sudo", "sudo-i"), Host::Sudo);
        assert_eq!(host_kind("sudo", "custom"), Host::Sudo);
        assert_eq!(host_kind("pam-driver", "sudo-i"), Host::Sudo);
        assert_eq!(host_kind("sudo-rs", "sudo"), Host::Sudo);
        assert_eq!(host_kind("su", "su-l"), Host::Su);
        assert_eq!(host_kind("su", "other"), Host::Su);
        assert_eq!(host_kind("sshd", "sshd"), Host::Other);
        assert_eq!(host_kind("doas", "doas"), Host::Other);
    }

    #[test]
    fn elevation_programs_are_known_by_exe_or_service() {
        assert!(is_other_elevation("doas", "doas"));
        assert!(is_other_elevation("polkit-agent-helper-1", "polkit-1"));
        assert!(is_other_elevation("renamed", "polkit-1"));
        assert!(is_other_elevation("doas", "login"));
        assert!(!is_other_elevation("sshd", "sshd"));
        assert!(!is_other_elevation("login", "login"));
    }

    #[test]
    fn cmdline_is_split_on_nul_only() {
        assert_eq!(
            split_cmdline(b"sudo\0id\0-u\0"),
            Ok(v(&["sudo", "id", "-u"]))
        );
        assert_eq!(
            split_cmdline(b"x ) 1 2\0a b\0\0"),
            Ok(v(&["x ) 1 2", "a b", ""]))
        );
        assert!(split_cmdline(b"sudo\0\xff\0").is_err());
    }
}
