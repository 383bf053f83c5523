//! Module arguments from the PAM stack line, parsed strictly: an unknown
//! argument or a bad value is an error (PAM_SERVICE_ERR), never a silent
//! default.

#![forbid(unsafe_code)]

use std::path::PathBuf;

/// How the module finds the command being authorised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandMode {
    /// sudo/sudo-rs: from the host's argv; su: from `-c`; else none.
    Auto,
    /// Never a command: only grants without a command binding pass.
    None,
}

/// Parsed arguments, every default documented here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// `config=PATH`, default `/etc/openape/config.toml`.
    pub config: PathBuf,
    /// `audience=NAME`: accept this audience instead of the configured ones.
    pub audience: Option<String>,
    /// `grant_env=NAME`, default `OPENAPE_GRANT`.
    pub grant_env: String,
    /// `prompt=TEXT`, default `OpenApe grant: ` (underscores become spaces,
    /// since a PAM line splits on spaces).
    pub prompt: String,
    /// `nonint`: never prompt through the conversation.
    pub nonint: bool,
    /// `command=auto|none`, default auto.
    pub command: CommandMode,
    /// `grant_only`: in the account phase, refuse unless this very handle
    /// verified a grant for this very command (closes sudo's timestamp).
    pub grant_only: bool,
    /// `allow_service=NAME[,NAME…]` (repeatable): PAM services other than
    /// sudo, sudo-rs and su in which a grant without a command binding may
    /// authenticate PAM_USER (e.g. `sshd`, `login`). Any other service is
    /// refused, and elevation programs (doas, polkit, run0, …) always are.
    pub allow_services: Vec<String>,
    /// `request`: with no grant presented, ask the IdP for one as the
    /// caller (their apes identity), show the approval URL, wait, verify.
    pub request: bool,
    /// `request_timeout=SECS` (1–3600): how long to wait for a decision;
    /// default `[request] timeout` of the config.
    pub request_timeout: Option<u32>,
    /// `debug`: log every passed step to syslog.
    pub debug: bool,
    /// `fault_panic` (fault-injection builds only): panic in authenticate.
    #[cfg(feature = "fault-injection")]
    pub fault_panic: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            config: PathBuf::from(crate::config::DEFAULT_CONFIG_PATH),
            audience: None,
            grant_env: "OPENAPE_GRANT".into(),
            prompt: "OpenApe grant: ".into(),
            nonint: false,
            command: CommandMode::Auto,
            grant_only: false,
            allow_services: Vec::new(),
            request: false,
            request_timeout: None,
            debug: false,
            #[cfg(feature = "fault-injection")]
            fault_panic: false,
        }
    }
}

fn env_name_ok(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x == '_' || x.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

pub fn parse(args: &[&str]) -> Result<Args, String> {
    let mut out = Args::default();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (*arg, None),
        };
        let need = |what: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("argument {what} needs a value"))
        };
        match key {
            "config" => {
                let p = PathBuf::from(need("config=")?);
                if !p.is_absolute() {
                    return Err("config= must be an absolute path".into());
                }
                out.config = p;
            }
            "audience" => out.audience = Some(need("audience=")?.to_string()),
            "grant_env" => {
                let n = need("grant_env=")?;
                if !env_name_ok(n) {
                    return Err(format!("grant_env={n} is not a variable name"));
                }
                out.grant_env = n.to_string();
            }
            "prompt" => out.prompt = need("prompt=")?.replace('_', " "),
            "allow_service" => {
                for name in need("allow_service=")?.split(',') {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        return Err(format!(
                            "allow_service={}: not a PAM service name",
                            crate::error::sanitize(name, 40)
                        ));
                    }
                    out.allow_services.push(name.to_string());
                }
            }
            "command" => {
                out.command = match need("command=")? {
                    "auto" => CommandMode::Auto,
                    "none" => CommandMode::None,
                    other => return Err(format!("command={other}: use auto or none")),
                }
            }
            "request_timeout" => {
                let v = need("request_timeout=")?;
                let secs = v
                    .parse::<u32>()
                    .ok()
                    .filter(|s| (1..=3600).contains(s))
                    .ok_or_else(|| format!("request_timeout={v}: seconds from 1 to 3600"))?;
                out.request_timeout = Some(secs);
            }
            "nonint" | "grant_only" | "debug" | "request" if value.is_some() => {
                return Err(format!("argument {key} takes no value"));
            }
            "nonint" => out.nonint = true,
            "grant_only" => out.grant_only = true,
            "debug" => out.debug = true,
            "request" => out.request = true,
            #[cfg(feature = "fault-injection")]
            "fault_panic" => out.fault_panic = true,
            other => {
                return Err(format!(
                    "unknown argument {}",
                    crate::error::sanitize(other, 40)
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(feature = "fault-injection"))]
    fn defaults_and_values() {
        assert_eq!(parse(&[]), Ok(Args::default()));
        let a = parse(&[
            "config=/etc/x.toml",
            "audience=sudo",
            "grant_env=G",
            "prompt=Grant:_",
            "nonint",
            "command=none",
            "grant_only",
            "allow_service=sshd,login",
            "allow_service=gdm-password",
            "request",
            "request_timeout=90",
            "debug",
        ]);
        assert_eq!(
            a,
            Ok(Args {
                config: "/etc/x.toml".into(),
                audience: Some("sudo".into()),
                grant_env: "G".into(),
                prompt: "Grant: ".into(),
                nonint: true,
                command: CommandMode::None,
                grant_only: true,
                allow_services: vec!["sshd".into(), "login".into(), "gdm-password".into()],
                request: true,
                request_timeout: Some(90),
                debug: true,
            })
        );
    }

    #[test]
    fn unknown_or_bad_arguments_are_errors() {
        for bad in [
            &["bogus"][..],
            &["config=rel.toml"],
            &["config="],
            &["command=maybe"],
            &["grant_env=A-B"],
            &["nonint=1"],
            &["use_first_pass"],
            &["allow_service="],
            &["allow_service=a b"],
            &["allow_service=sshd,"],
            &["allow_service=../x"],
            &["request=yes"],
            &["request_timeout=0"],
            &["request_timeout=3601"],
            &["request_timeout=x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
