//! The command line, parsed the way sudo parses it: options stop at `--`
//! or at the first argument that is not an option; short options may be
//! clustered (`-nu root`, `-uroot`); long options take `--opt=value` or
//! `--opt value`. Anything unknown is a usage error (exit 2), including
//! the sudo options escapes deliberately does not have (`-s`, `-i`, `-e`,
//! `-R`, `-h HOST`, `-C`, `-T`, `-b`, `VAR=value`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Where the grant comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantSource {
    /// `--grant JWT` (visible in /proc/*/cmdline; prefer the others).
    Arg(String),
    /// `--grant-stdin` or `-S`.
    Stdin,
    /// `--grant-file PATH`, read with the caller's rights.
    File(PathBuf),
}

/// Options shared by running and `verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opts {
    pub config: Option<PathBuf>,
    pub grant: Option<GrantSource>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub non_interactive: bool,
    pub chdir: Option<PathBuf>,
    pub preserve_env: Vec<String>,
    pub command: Vec<OsString>,
    /// Request mode (no grant given): how to ask for one.
    pub request: RequestOpts,
}

/// Options of request mode (DESIGN.md, "Request-and-wait").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOpts {
    pub reason: Option<String>,
    pub grant_type: Option<String>,
    pub duration: Option<u64>,
    pub wait_timeout: Option<u32>,
    pub no_wait: bool,
    pub grant_id: Option<String>,
    pub key: Option<PathBuf>,
    pub agent_email: Option<String>,
}

impl RequestOpts {
    /// Was any request-only option given?
    pub fn any(&self) -> bool {
        *self != RequestOpts::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Run(Opts),
    Verify(Opts),
    Trust(Vec<OsString>),
    Update(Vec<OsString>),
    Enroll(Vec<OsString>),
    Help,
    Version,
}

/// A usage error: the message, shown with a hint to `--help`; exit 2.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

fn usage(msg: impl Into<String>) -> Usage {
    Usage(msg.into())
}

/// Options that take a value.
fn takes_value(name: &str) -> bool {
    matches!(
        name,
        "u" | "user"
            | "run-as"
            | "g"
            | "group"
            | "D"
            | "chdir"
            | "config"
            | "grant"
            | "grant-file"
            | "reason"
            | "grant-type"
            | "duration"
            | "wait-timeout"
            | "grant-id"
            | "key"
            | "agent-email"
    )
}

fn long_name(short: char) -> Option<&'static str> {
    Some(match short {
        'u' => "user",
        'g' => "group",
        'n' => "non-interactive",
        'D' => "chdir",
        'E' => "preserve-env",
        'S' => "grant-stdin",
        'V' => "version",
        'h' => "help",
        _ => return None,
    })
}

fn refused_sudo_option(name: &str) -> Option<&'static str> {
    Some(match name {
        "s" | "shell" => "-s/--shell is not supported: a grant names an exact command, not a shell",
        "i" | "login" => {
            "-i/--login is not supported: a grant names an exact command, not a login shell"
        }
        "e" | "edit" => "-e/--edit (sudoedit) is not supported",
        "R" | "chroot" => "-R/--chroot is not supported",
        "h" | "host" => {
            "-h HOST is not supported: the target host comes from the configuration only"
        }
        "C" | "close-from" => "-C is not supported: escapes always closes descriptors above 2",
        "T" | "command-timeout" => "-T is not supported",
        "b" | "background" => "-b is not supported",
        "l" | "list" => "-l/--list is not supported: grants live at the IdP",
        "k" | "reset-timestamp" | "K" | "remove-timestamp" | "v" | "validate" => {
            "escapes keeps no timestamp: every command needs its own grant"
        }
        "P" | "preserve-groups" => {
            "-P is not supported: the command gets the target user's groups only"
        }
        "H" | "set-home" => "-H is always on: HOME is the target user's",
        _ => return None,
    })
}

fn utf8(v: &OsStr, what: &str) -> Result<String, Usage> {
    v.to_str()
        .map(str::to_string)
        .ok_or_else(|| usage(format!("{what} is not valid UTF-8")))
}

/// Parse `args` (without argv[0]).
pub fn parse(args: &[OsString]) -> Result<Action, Usage> {
    let first = args.first().map(|a| a.as_bytes());
    match first {
        Some(b"verify") => {
            return parse_opts(args.get(1..).unwrap_or_default()).map(Action::Verify);
        }
        Some(b"trust") => return Ok(Action::Trust(args.get(1..).unwrap_or_default().to_vec())),
        Some(b"update") => return Ok(Action::Update(args.get(1..).unwrap_or_default().to_vec())),
        Some(b"enroll") => return Ok(Action::Enroll(args.get(1..).unwrap_or_default().to_vec())),
        Some(b"--update") if args.len() == 1 => return Ok(Action::Update(Vec::new())),
        Some(b"-h" | b"--help") if args.len() == 1 => return Ok(Action::Help),
        Some(b"-V" | b"--version") if args.len() == 1 => return Ok(Action::Version),
        _ => {}
    }
    let opts = parse_opts(args)?;
    if opts.command.is_empty() {
        return Err(usage(
            "no command given (escapes [options] -- COMMAND [ARGS...])",
        ));
    }
    Ok(Action::Run(opts))
}

fn set_grant(opts: &mut Opts, src: GrantSource) -> Result<(), Usage> {
    if opts.grant.is_some() {
        return Err(usage(
            "give the grant only once (--grant, --grant-stdin or --grant-file)",
        ));
    }
    opts.grant = Some(src);
    Ok(())
}

fn apply(opts: &mut Opts, name: &str, value: Option<&OsStr>) -> Result<(), Usage> {
    let val = |what: &str| -> Result<String, Usage> {
        let v = value.ok_or_else(|| usage(format!("option {what} needs a value")))?;
        utf8(v, what)
    };
    match name {
        "user" | "run-as" => {
            if opts.user.is_some() {
                return Err(usage("give the target user only once"));
            }
            opts.user = Some(val("--user")?);
        }
        "group" => opts.group = Some(val("--group")?),
        "non-interactive" => opts.non_interactive = true,
        "chdir" => {
            opts.chdir = Some(PathBuf::from(
                value.ok_or_else(|| usage("option --chdir needs a value"))?,
            ))
        }
        "preserve-env" => {
            if let Some(list) = value {
                for name in utf8(list, "--preserve-env")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                {
                    opts.preserve_env.push(name.to_string());
                }
            }
        }
        "config" => {
            opts.config = Some(PathBuf::from(
                value.ok_or_else(|| usage("option --config needs a value"))?,
            ))
        }
        "grant" => set_grant(opts, GrantSource::Arg(val("--grant")?))?,
        "grant-stdin" => set_grant(opts, GrantSource::Stdin)?,
        "grant-file" => set_grant(
            opts,
            GrantSource::File(PathBuf::from(
                value.ok_or_else(|| usage("option --grant-file needs a value"))?,
            )),
        )?,
        "reason" => {
            let r = val("--reason")?;
            if r.len() > 1000 || r.chars().any(char::is_control) {
                return Err(usage("--reason must be one line of at most 1000 bytes"));
            }
            opts.request.reason = Some(r);
        }
        "grant-type" => {
            let t = val("--grant-type")?;
            if !matches!(t.as_str(), "once" | "timed" | "always") {
                return Err(usage("--grant-type must be once, timed or always"));
            }
            opts.request.grant_type = Some(t);
        }
        "duration" => {
            opts.request.duration = Some(
                val("--duration")?
                    .parse::<u64>()
                    .ok()
                    .filter(|d| (1..=31_536_000).contains(d))
                    .ok_or_else(|| {
                        usage("--duration must be a number of seconds (1 to one year)")
                    })?,
            )
        }
        "wait-timeout" => {
            let max = pam_openape::config::MAX_REQUEST_TIMEOUT;
            opts.request.wait_timeout = Some(
                val("--wait-timeout")?
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=max).contains(d))
                    .ok_or_else(|| {
                        usage(format!(
                            "--wait-timeout must be a number of seconds (1 to {max})"
                        ))
                    })?,
            )
        }
        "no-wait" => opts.request.no_wait = true,
        "grant-id" => {
            let id = val("--grant-id")?;
            if !pam_openape::request::proto::grant_id_ok(&id) {
                return Err(usage("--grant-id is not a grant id"));
            }
            opts.request.grant_id = Some(id);
        }
        "key" => {
            opts.request.key = Some(PathBuf::from(
                value.ok_or_else(|| usage("option --key needs a value"))?,
            ))
        }
        "agent-email" => {
            let e = val("--agent-email")?;
            if !pam_openape::request::identity::email_ok(&e) {
                return Err(usage("--agent-email is not an email address"));
            }
            opts.request.agent_email = Some(e);
        }
        "help" | "version" => {
            return Err(usage(format!(
                "--{name} cannot be combined with other arguments"
            )));
        }
        other => {
            return Err(usage(match refused_sudo_option(other) {
                Some(why) => why.to_string(),
                None => format!("unknown option --{other}"),
            }));
        }
    }
    Ok(())
}

fn parse_opts(args: &[OsString]) -> Result<Opts, Usage> {
    let mut opts = Opts::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            opts.command = args.get(i + 1..).unwrap_or_default().to_vec();
            return Ok(opts);
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    long.get(..eq).unwrap_or_default(),
                    long.get(eq + 1..).map(OsStr::from_bytes),
                ),
                None => (long, None),
            };
            let name =
                std::str::from_utf8(name).map_err(|_| usage("option name is not valid UTF-8"))?;
            let value = if takes_value(name) && inline.is_none() {
                i += 1;
                Some(
                    args.get(i)
                        .ok_or_else(|| usage(format!("option --{name} needs a value")))?
                        .as_os_str(),
                )
            } else {
                if inline.is_some() && !takes_value(name) && name != "preserve-env" {
                    return Err(usage(format!("option --{name} takes no value")));
                }
                inline
            };
            apply(&mut opts, name, value)?;
            i += 1;
            continue;
        }
        if bytes.len() > 1 && bytes.first() == Some(&b'-') {
            // A cluster of short options; a value-taking one ends it.
            let cluster = bytes.get(1..).unwrap_or_default();
            let mut j = 0;
            while let Some(&b) = cluster.get(j) {
                let c = char::from(b);
                let Some(name) = long_name(c) else {
                    return Err(usage(match refused_sudo_option(&c.to_string()) {
                        Some(why) => why.to_string(),
                        None => format!("unknown option -{}", c.escape_default()),
                    }));
                };
                if name == "help" || name == "version" {
                    return Err(usage(format!(
                        "-{c} cannot be combined with other arguments"
                    )));
                }
                if takes_value(name) {
                    let rest = cluster.get(j + 1..).unwrap_or_default();
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i)
                            .ok_or_else(|| usage(format!("option -{c} needs a value")))?
                            .as_os_str()
                    } else {
                        OsStr::from_bytes(rest)
                    };
                    apply(&mut opts, name, Some(value))?;
                    break;
                }
                apply(&mut opts, name, None)?;
                j += 1;
            }
            i += 1;
            continue;
        }
        // First non-option: the command. `VAR=value` is refused (sudo
        // would set an environment variable).
        if pam_openape::invocation::is_env_assignment(bytes) {
            return Err(usage(
                "VAR=value arguments are not supported; configure [env] keep instead",
            ));
        }
        opts.command = args.get(i..).unwrap_or_default().to_vec();
        return Ok(opts);
    }
    Ok(opts)
}

/// The options of a subcommand (`trust`, `update`), in order, as
/// (name, value): `--name value` and `--name=value` for the names in
/// `with_value`, bare flags otherwise. Arguments must be UTF-8.
pub fn subcommand_options(
    args: &[OsString],
    with_value: &[&str],
) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let text = arg
            .to_str()
            .ok_or_else(|| "arguments must be valid UTF-8".to_string())?;
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (text, None),
        };
        let value = if with_value.contains(&name) {
            match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    let v = args.get(i).and_then(|v| v.to_str());
                    Some(
                        v.ok_or_else(|| format!("option {name} needs a value"))?
                            .to_string(),
                    )
                }
            }
        } else {
            if inline.is_some() {
                return Err(format!("option {name} takes no value"));
            }
            None
        };
        out.push((name.to_string(), value));
        i += 1;
    }
    Ok(out)
}

pub use pam_openape::invocation::UserSpec;

/// A user given with `-u` (see [`pam_openape::invocation::user_spec`]).
pub fn user_spec(s: &str) -> Result<UserSpec, Usage> {
    pam_openape::invocation::user_spec(s).map_err(Usage)
}

pub const HELP: &str = "\
escapes: run one command as another user (root by default), only with a
human-approved OpenApe grant for exactly that command on this host.

Usage:
  escapes [options] [--] COMMAND [ARGS...]
  escapes verify [options] [--] [COMMAND [ARGS...]]   dry run: check, consume nothing, run nothing
  escapes trust [--idp URL] [--approvers A,B] [--replace] [--skip-validation]
                           set the trusted IdP and approvers (root only;
                           escapes trust --help)
  escapes enroll --idp URL --name NAME [--key PATH] [--agent-email EMAIL]
                           create an agent key and enroll it at the IdP
                           (runs with your own rights only)
  escapes update [--check] [--force] [--manifest-url URL]   (old form: --update)
                           checksum-verified self-update from the release
                           manifest (root only; escapes update --help)
  escapes -h | --help      this text
  escapes -V | --version   version

Grant (first found wins; never echoed, never logged):
  --grant-stdin, -S        read the grant from standard input
  --grant-file PATH        read it from PATH, with your own file permissions
  --grant JWT              give it on the command line (visible to other local
                           users in the process list: prefer the two above)
  ESCAPES_GRANT, OPENAPE_GRANT   environment variables, read and then dropped
  otherwise a prompt on the terminal (no echo), unless -n

No grant given? With an OpenApe identity (an apes session, or an Ed25519
key: --key, [agent] key in ~/.config/apes/config.toml, ~/.ssh/id_ed25519),
escapes asks the IdP for one, prints 'Approve at: URL', waits for the
approver and runs the command once it is approved:
  --reason TEXT            why (shown to the approver)
  --grant-type TYPE        once (default), timed or always
  --duration SECS          lifetime of a timed grant
  --wait-timeout SECS      how long to wait (default [request] timeout, 300)
  --no-wait                ask, print the URL and grant id, exit 75
  --grant-id ID            pick up an earlier request: run if approved, 75
                           if still pending
  --key PATH               the agent key to log in with
  --agent-email EMAIL      the agent's email (default [agent] email, or the
                           comment of KEY.pub)
Ctrl-C, Ctrl-\\, SIGTERM or SIGHUP while waiting cancel the request at the IdP.

Options:
  -u, --user USER          run as USER (name or #UID); alias --run-as. Must be
                           the grant's run_as. Without it: the grant's run_as,
                           else run_as from the configuration (root)
  -g, --group GROUP        primary group, one of the target user's groups
  -n, --non-interactive    never prompt
  -D, --chdir DIR          change to DIR (as the target user) before running
  -E, --preserve-env[=LIST]  keep the listed variables; each must be allowed
                           by [env] keep in the configuration
  --config PATH            configuration (default /etc/openape/config.toml); it
                           and every directory above it must be root-owned and
                           not writable by group or others

The command is looked up on secure_path from the configuration, never on
your PATH. Its environment is reset: TERM, COLORTERM, LANG, LANGUAGE, LC_*,
DISPLAY and [env] keep pass; HOME, USER, LOGNAME, SHELL, PATH and SUDO_USER,
SUDO_UID, SUDO_GID, SUDO_COMMAND are set.

Exit status: the command's own, or 1 configuration, network or I/O error,
2 usage error, 5 grant refused (locally or by the IdP; denied, expired or
not approved in time), 75 request still pending, 126 cannot run or cannot
change user, 127 command not found, 129/130/131/143 interrupted while waiting
(SIGHUP/SIGINT/SIGQUIT/SIGTERM; the request was cancelled).

Every run and every refusal is appended to the audit log (JSONL). See
escapes(8) and openape.toml(5).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn run(v: &[&str]) -> Result<Opts, Usage> {
        match parse(&a(v))? {
            Action::Run(o) => Ok(o),
            other => Err(usage(format!("not run: {other:?}"))),
        }
    }

    #[test]
    fn old_cli_is_accepted() {
        let o = run(&["--grant", "J", "--", "systemctl", "restart", "nginx"]);
        assert_eq!(
            o.as_ref().map(|o| o.grant.clone()),
            Ok(Some(GrantSource::Arg("J".into())))
        );
        assert_eq!(
            o.map(|o| o.command),
            Ok(a(&["systemctl", "restart", "nginx"]))
        );
        let o = run(&[
            "--config",
            "/c.toml",
            "--run-as",
            "nobody",
            "--grant-file",
            "/g",
            "--",
            "id",
        ]);
        assert_eq!(
            o.as_ref().map(|o| o.user.clone()),
            Ok(Some("nobody".into()))
        );
        assert_eq!(
            o.as_ref().map(|o| o.config.clone()),
            Ok(Some(PathBuf::from("/c.toml")))
        );
        assert_eq!(o.map(|o| o.grant), Ok(Some(GrantSource::File("/g".into()))));
        assert_eq!(
            run(&["--grant-stdin", "--", "id"]).map(|o| o.grant),
            Ok(Some(GrantSource::Stdin))
        );
        assert_eq!(parse(&a(&["--update"])), Ok(Action::Update(vec![])));
    }

    #[test]
    fn sudo_style_clusters_and_first_non_option() {
        let o = run(&["-nuroot", "id", "-u"]);
        assert_eq!(
            o.as_ref().map(|o| (o.non_interactive, o.user.clone())),
            Ok((true, Some("root".into())))
        );
        assert_eq!(o.map(|o| o.command), Ok(a(&["id", "-u"])));
        let o = run(&["-n", "-u", "nobody", "--user=x"]);
        assert!(o.is_err(), "two users");
        let o = run(&["--user=nobody", "ls", "--", "-l"]);
        assert_eq!(o.map(|o| o.command), Ok(a(&["ls", "--", "-l"])));
        let o = run(&["-E", "--preserve-env=A,B", "-D", "/srv", "id"]);
        assert_eq!(
            o.as_ref().map(|o| o.preserve_env.clone()),
            Ok(vec!["A".to_string(), "B".to_string()])
        );
        assert_eq!(o.map(|o| o.chdir), Ok(Some(PathBuf::from("/srv"))));
    }

    #[test]
    fn refuses_what_escapes_does_not_do() {
        for bad in [
            &["-s", "id"][..],
            &["-i"],
            &["-e", "/etc/shadow"],
            &["-R", "/tmp", "id"],
            &["-h", "other", "id"],
            &["--chroot=/x", "id"],
            &["-C", "5", "id"],
            &["-T", "5", "id"],
            &["-b", "id"],
            &["-l"],
            &["-k", "id"],
            &["--bogus", "id"],
            &["-x", "id"],
            &["FOO=bar", "id"],
            &["LD_PRELOAD=/x.so", "id"],
            &["_X=a/b", "id"],
            &["--grant", "a", "--grant-stdin", "id"],
            &["--non-interactive=yes", "id"],
            &["-u"],
            &[],
            &["-n"],
            &["--help", "id"],
        ] {
            assert!(parse(&a(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&a(&["-h"])), Ok(Action::Help));
        assert_eq!(parse(&a(&["--version"])), Ok(Action::Version));
    }

    #[test]
    fn subcommands_and_the_escape_hatch() {
        assert!(matches!(
            parse(&a(&["verify", "--grant-stdin", "--", "id"])),
            Ok(Action::Verify(_))
        ));
        assert!(matches!(
            parse(&a(&["verify", "--grant-stdin"])),
            Ok(Action::Verify(_))
        ));
        // A program named like a subcommand runs after `--`.
        assert_eq!(
            run(&["--", "verify"]).map(|o| o.command),
            Ok(a(&["verify"]))
        );
    }
}
