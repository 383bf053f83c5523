//! `/etc/openape/config.toml`: a superset of the existing escapes config.
//!
//! Loading checks the trust root first (the file and every directory above
//! it owned by root and writable by nobody else), then parses strictly: an
//! unknown key is an error naming the key, never silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Denial, Kind, Step};
use crate::trust;

pub mod edit;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/openape/config.toml";
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/openape/audit.log";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/openape";
pub const DEFAULT_SECURE_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const DEFAULT_AUDIENCE: &str = "escapes";
pub const DEFAULT_RUN_AS: &str = "root";

/// Variables that `env.keep` may never name: they change how shells,
/// loaders, interpreters or libraries behave (where they load code, config
/// or terminal descriptions from), name a program that an approved command
/// starts (`EDITOR`, `PAGER`, askpass helpers), or carry grants. The command runs as
/// root without AT_SECURE, so nothing below escapes filters them.
const NEVER_KEEP: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "CDPATH",
    "GLOBIGNORE",
    "PROMPT_COMMAND",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "FPATH",
    "NULLCMD",
    "READNULLCMD",
    "ZDOTDIR",
    "TMPPREFIX",
    "GCONV_PATH",
    "NLSPATH",
    "LOCPATH",
    "PATH_LOCALE",
    "TZDIR",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "GLIBC_TUNABLES",
    "GETCONF_DIR",
    "NIS_PATH",
    "RESOLV_HOST_CONF",
    "TMPDIR",
    "TERMINFO",
    "TERMINFO_DIRS",
    "TERMCAP",
    "TERMPATH",
    "CLASSPATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "TCLLIBPATH",
    "OPENSSL_CONF",
    "OPENSSL_MODULES",
    "OPENSSL_ENGINES",
    "KRB5_CONFIG",
    "KRB5_KTNAME",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_HOME",
    "XDG_DATA_DIRS",
    "EDITOR",
    "VISUAL",
    "SUDO_EDITOR",
    "PAGER",
    "MANPAGER",
    "SYSTEMD_PAGER",
    "SYSTEMD_EDITOR",
    "BROWSER",
    "SUDO_ASKPASS",
    "SSH_ASKPASS",
    "VIMINIT",
    "EXINIT",
    "MYVIMRC",
    "HISTFILE",
    "WGETRC",
    "CURL_HOME",
    "ESCAPES_GRANT",
    "OPENAPE_GRANT",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "SUDO_USER",
    "SUDO_UID",
    "SUDO_GID",
    "SUDO_COMMAND",
];
/// Whole families: the dynamic loader and allocator, shells (`BASH_ENV`,
/// `BASH_XTRACEFD`, …), and the interpreters' search paths and startup
/// hooks (`PERLLIB`, `PERL5DB`, `PYTHONUSERBASE`, `PYTHONWARNINGS`,
/// `PYTHONSTARTUP`, `RUBYLIB`, `NODE_PATH`, `LUA_INIT`, `GEM_PATH`,
/// `GIT_EXEC_PATH`, …), each of which runs the caller's code in an
/// approved root command of that language, and less's (`LESSOPEN` runs a
/// command for every file an approved `less` shows, even into a pipe).
const NEVER_KEEP_PREFIX: &[&str] = &[
    "LD_", "MALLOC_", "DYLD_", "BASH_", "PERL", "PYTHON", "RUBY", "NODE_", "LUA_", "GEM_",
    "BUNDLE_", "GIT_", "LESS",
];
/// Plain data inside a refused family, kept working for configs that pass
/// them (commits made as root under etckeeper, for one).
const KEEP_DESPITE_PREFIX: &[&str] = &[
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: Option<String>,
    run_as: Option<String>,
    audit_log: Option<PathBuf>,
    umask: Option<String>,
    security: RawSecurity,
    #[serde(default)]
    subjects: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    env: RawEnv,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    update: RawUpdate,
    #[serde(default)]
    request: RawRequest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    allowed_issuers: Vec<String>,
    allowed_approvers: Vec<String>,
    allowed_audiences: Option<Vec<String>>,
    clock_skew: Option<u32>,
    allow_self_approval: Option<bool>,
    allow_unprivileged_loopback: Option<bool>,
    allow_cmd_hash_only: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_bundle: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    timeout: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    keep: Option<Vec<String>>,
    secure_path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    dir: Option<PathBuf>,
    jwks_max_age: Option<u32>,
    jwks_min_refresh: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    manifest_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    enabled: Option<bool>,
    idp: Option<String>,
    timeout: Option<u32>,
    grant_type: Option<String>,
}

/// Longest wait for a decision that `[request] timeout` or
/// `--wait-timeout` may ask for (one day).
pub const MAX_REQUEST_TIMEOUT: u32 = 86_400;

/// `[request]`: asking the IdP for a grant when none is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestConfig {
    /// `false`: never request, only accept grants.
    pub enabled: bool,
    /// The IdP to ask: `[request] idp`, else the single allowed issuer;
    /// `None` when there are several issuers and none is named (then
    /// request mode is off). Always one of `allowed_issuers`.
    pub idp: Option<String>,
    /// Seconds to wait for a decision.
    pub timeout: u32,
    /// Default grant type of a request: `once`, `timed` or `always`.
    pub grant_type: String,
}

/// The validated configuration, every default filled in.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// This machine's name as grants must name it in `target_host`.
    pub host: String,
    /// Target user when the grant names none.
    pub run_as: String,
    pub audit_log: PathBuf,
    pub allowed_issuers: Vec<String>,
    pub allowed_approvers: Vec<String>,
    pub allowed_audiences: Vec<String>,
    /// Leeway in seconds on `exp`, `nbf` and `iat`.
    pub clock_skew: i64,
    pub allow_self_approval: bool,
    /// `[security] allow_unprivileged_loopback`: a plain-http loopback
    /// issuer may use a port at or above 1024 (tests and demos only).
    pub allow_unprivileged_loopback: bool,
    /// `[security] allow_cmd_hash_only`: accept a grant bound by `cmd_hash`
    /// alone (old issuers; only for a whitespace-free argv).
    pub allow_cmd_hash_only: bool,
    /// Top-level `umask` (octal, default 0022): the bits always masked for
    /// the command, on top of the caller's own umask (sudo's rule).
    pub umask: u32,
    /// Local caller name → grant subjects that caller may use.
    pub subjects: BTreeMap<String, Vec<String>>,
    pub ca_bundle: Option<PathBuf>,
    /// Whole-request deadline for every IdP request.
    pub http_timeout: Duration,
    pub env_keep: Vec<String>,
    pub secure_path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub jwks_max_age: i64,
    /// Seconds per JWKS refresh token: each issuer may refresh
    /// `jwks::REFRESH_BURST` times in a row, then once per this many
    /// seconds (0: no limit, for tests).
    pub jwks_min_refresh: i64,
    /// Owner every trusted file must have (0 in production).
    pub trusted_owner: u32,
    /// `[update] manifest_url`: where `escapes update` finds the release
    /// manifest (https, or http only to a loopback address). `None`: not
    /// configured.
    pub update_manifest_url: Option<String>,
    /// `[request]`.
    pub request: RequestConfig,
}

fn config_err(path: &Path, msg: impl std::fmt::Display) -> Denial {
    Denial::new(
        Step::Config,
        Kind::Config,
        format!("config {}: {msg}", path.display()),
    )
}

/// Is `url` an issuer URL we can talk to safely: `https://…`, or `http://`
/// only to a loopback address. No userinfo, query or fragment.
pub fn issuer_url_ok(url: &str) -> Result<(), String> {
    url_ok(url, "issuer")
}

/// The rule of [`issuer_url_ok`] for any URL the project fetches (issuers,
/// the update manifest and the binary it names); `what` names it in the
/// message.
///
/// A URL is printable ASCII only (RFC 3986; an IDN host is written in
/// punycode): no control character, no space, nothing a terminal could
/// take for a command or reorder (bidi controls). A refused URL may come
/// from a server (the update manifest's binary url), so the message shows
/// it escaped (`\u{1b}`), never raw.
pub fn url_ok(url: &str, what: &str) -> Result<(), String> {
    let shown = || crate::error::sanitize(&url.escape_default().to_string(), 200);
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = authority_host(r.split('/').next().unwrap_or(""));
        if !is_loopback_host(host) {
            return Err(format!(
                "{what} {} must use https (http is allowed only to a loopback address)",
                shown()
            ));
        }
        r
    } else {
        return Err(format!("{what} {} must start with https://", shown()));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty()
        || authority.contains('@')
        || rest.contains('?')
        || rest.contains('#')
        || !rest.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!("{what} {} is not a plain https URL", shown()));
    }
    Ok(())
}

/// `scheme://authority` of a URL accepted by [`url_ok`], lower-cased and
/// without a default port (`:443` for https, `:80` for http): two URLs are
/// on the same origin when this is equal.
pub fn url_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
    if authority.is_empty() {
        return None;
    }
    let default = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

fn authority_host(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The port of a plain-http loopback URL when any local user may bind it
/// (at or above [`unprivileged_port_start`]; 1024 by default), so an
/// issuer there is trusted only on explicit request. `None` for https
/// URLs and privileged ports.
pub fn unprivileged_loopback_port(url: &str) -> Option<u16> {
    // https (production) needs no look at /proc on every config load.
    if !url.starts_with("http://") {
        return None;
    }
    unprivileged_loopback_port_from(url, unprivileged_port_start())
}

/// The lowest port an unprivileged process may bind in this process's
/// network namespace: `net.ipv4.ip_unprivileged_port_start` (it governs
/// IPv6 too). 1024 is only the kernel's default; container runtimes set
/// 0. When it cannot be read or parsed: 0, every port unprivileged.
pub fn unprivileged_port_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// [`unprivileged_loopback_port`] where ports from `start` up need no
/// privilege.
pub fn unprivileged_loopback_port_from(url: &str, start: u32) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next().unwrap_or("");
    let port_text = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => authority.split_once(':').map(|(_, p)| p),
    };
    let port = match port_text {
        None => 80,
        Some(p) => p.parse::<u32>().ok().unwrap_or(u32::MAX),
    };
    (port >= start).then(|| u16::try_from(port).unwrap_or(u16::MAX))
}

/// Parse an octal umask such as `"0022"` or `"027"`.
fn parse_umask(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o777)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// This machine's host name, as the kernel reports it (`gethostname`).
pub fn system_hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = raw.trim_end_matches('\n').to_string();
    (!name.is_empty()).then_some(name)
}

fn request_config(
    path: &Path,
    raw: RawRequest,
    issuers: &[String],
) -> Result<RequestConfig, Denial> {
    let idp = match raw.idp {
        Some(idp) => {
            if !issuers.iter().any(|i| i == &idp) {
                return Err(config_err(
                    path,
                    format!("[request] idp {idp} must be one of [security] allowed_issuers"),
                ));
            }
            Some(idp)
        }
        None => match issuers {
            [only] => Some(only.clone()),
            _ => None,
        },
    };
    let timeout = raw.timeout.unwrap_or(300);
    if !(1..=MAX_REQUEST_TIMEOUT).contains(&timeout) {
        return Err(config_err(
            path,
            format!("[request] timeout must be between 1 and {MAX_REQUEST_TIMEOUT} seconds"),
        ));
    }
    let grant_type = raw.grant_type.unwrap_or_else(|| "once".to_string());
    if !matches!(grant_type.as_str(), "once" | "timed" | "always") {
        return Err(config_err(
            path,
            "[request] grant_type must be \"once\", \"timed\" or \"always\"",
        ));
    }
    Ok(RequestConfig {
        enabled: raw.enabled.unwrap_or(true),
        idp,
        timeout,
        grant_type,
    })
}

/// Why [`Config::load_checked`] failed.
#[derive(Debug)]
pub enum LoadError {
    /// The file, or a directory above it, is not a trust root. The reason
    /// names the path and the problem, nothing of the content.
    Untrusted(Denial),
    /// The content is not a valid configuration. The reason may quote it
    /// (a value of the wrong type, a refused name): for root's eyes only.
    Invalid(Denial),
}

impl Config {
    /// Load and validate a config file after the trust-root check.
    pub fn load(path: &Path, trusted_owner: u32) -> Result<Config, Denial> {
        Self::load_checked(path, trusted_owner).map_err(|e| match e {
            LoadError::Untrusted(d) | LoadError::Invalid(d) => d,
        })
    }

    /// [`Config::load`], telling a file that is not trusted from one whose
    /// content is wrong (whose message must not reach an unprivileged
    /// caller: the file is root's alone).
    pub fn load_checked(path: &Path, trusted_owner: u32) -> Result<Config, LoadError> {
        let bytes = trust::read_trusted(path, trusted_owner).map_err(|e| {
            LoadError::Untrusted(Denial::new(
                Step::Config,
                Kind::Config,
                format!("config {e}"),
            ))
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| LoadError::Invalid(config_err(path, "is not valid UTF-8")))?;
        Self::parse(path, text, trusted_owner).map_err(LoadError::Invalid)
    }

    /// Parse and validate config text (no file-system checks).
    pub fn parse(path: &Path, text: &str, trusted_owner: u32) -> Result<Config, Denial> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text
                        .get(..span.start)
                        .map_or(0, |t| t.matches('\n').count())
                        + 1;
                    config_err(path, format!("line {line}: {msg}"))
                }
                None => config_err(path, msg),
            }
        })?;

        let host = match raw.host {
            Some(h) => h,
            None => system_hostname().ok_or_else(|| {
                config_err(path, "no host set and the system host name is unknown")
            })?,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(config_err(
                path,
                "host must be a non-empty name without spaces",
            ));
        }

        let sec = raw.security;
        if sec.allowed_issuers.is_empty() {
            return Err(config_err(
                path,
                "[security] allowed_issuers is empty; name at least one IdP (escapes trust --idp URL)",
            ));
        }
        let allow_unprivileged_loopback = sec.allow_unprivileged_loopback.unwrap_or(false);
        for iss in &sec.allowed_issuers {
            issuer_url_ok(iss)
                .map_err(|e| config_err(path, format!("[security] allowed_issuers: {e}")))?;
            if let Some(port) = unprivileged_loopback_port(iss)
                && !allow_unprivileged_loopback
            {
                return Err(config_err(
                    path,
                    format!(
                        "[security] allowed_issuers: {iss} is plain http on port {port}, which any local user can bind; use https, a port below 1024, or set allow_unprivileged_loopback = true (tests and demos only)"
                    ),
                ));
            }
        }
        if sec.allowed_approvers.is_empty()
            || sec.allowed_approvers.iter().any(|a| a.trim().is_empty())
        {
            return Err(config_err(
                path,
                "[security] allowed_approvers must list at least one approver and no empty names",
            ));
        }
        let allowed_audiences = sec
            .allowed_audiences
            .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_string()]);
        if allowed_audiences.is_empty() || allowed_audiences.iter().any(|a| a.is_empty()) {
            return Err(config_err(
                path,
                "[security] allowed_audiences must not be empty",
            ));
        }
        let clock_skew = sec.clock_skew.unwrap_or(30);
        if clock_skew > 300 {
            return Err(config_err(
                path,
                "[security] clock_skew must be at most 300 seconds",
            ));
        }

        let umask = match &raw.umask {
            None => 0o022,
            Some(t) => parse_umask(t).ok_or_else(|| {
                config_err(path, format!("umask {t:?} must be octal, e.g. \"0022\""))
            })?,
        };

        let run_as = raw.run_as.unwrap_or_else(|| DEFAULT_RUN_AS.to_string());
        if run_as.is_empty() {
            return Err(config_err(path, "run_as must not be empty"));
        }

        let audit_log = raw
            .audit_log
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_LOG));
        if !audit_log.is_absolute() {
            return Err(config_err(path, "audit_log must be an absolute path"));
        }

        if let Some(ca) = &raw.tls.ca_bundle
            && !ca.is_absolute()
        {
            return Err(config_err(path, "[tls] ca_bundle must be an absolute path"));
        }

        let timeout = raw.http.timeout.unwrap_or(10);
        if !(1..=120).contains(&timeout) {
            return Err(config_err(
                path,
                "[http] timeout must be between 1 and 120 seconds",
            ));
        }

        let env_keep = raw.env.keep.unwrap_or_default();
        for name in &env_keep {
            if !valid_env_name(name) {
                return Err(config_err(
                    path,
                    format!("[env] keep: {name:?} is not a variable name"),
                ));
            }
            if NEVER_KEEP.contains(&name.as_str())
                || (NEVER_KEEP_PREFIX.iter().any(|p| name.starts_with(p))
                    && !KEEP_DESPITE_PREFIX.contains(&name.as_str()))
            {
                return Err(config_err(
                    path,
                    format!("[env] keep: {name} may not be passed to privileged commands"),
                ));
            }
        }
        let secure_path_text = raw
            .env
            .secure_path
            .unwrap_or_else(|| DEFAULT_SECURE_PATH.to_string());
        let secure_path: Vec<PathBuf> = secure_path_text.split(':').map(PathBuf::from).collect();
        if secure_path.iter().any(|p| !p.is_absolute()) {
            return Err(config_err(
                path,
                "[env] secure_path must list only absolute directories",
            ));
        }

        let cache_dir = raw
            .cache
            .dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        if !cache_dir.is_absolute() {
            return Err(config_err(path, "[cache] dir must be an absolute path"));
        }

        if let Some(url) = &raw.update.manifest_url {
            url_ok(url, "manifest_url").map_err(|e| config_err(path, format!("[update] {e}")))?;
        }

        for (caller, subs) in &raw.subjects {
            if subs.is_empty() {
                return Err(config_err(
                    path,
                    format!("[subjects] {caller} lists no subject (remove the line to allow any)"),
                ));
            }
        }

        let request = request_config(path, raw.request, &sec.allowed_issuers)?;

        Ok(Config {
            path: path.to_path_buf(),
            host,
            run_as,
            audit_log,
            allowed_issuers: sec.allowed_issuers,
            allowed_approvers: sec.allowed_approvers,
            allowed_audiences,
            clock_skew: i64::from(clock_skew),
            allow_self_approval: sec.allow_self_approval.unwrap_or(false),
            allow_unprivileged_loopback,
            allow_cmd_hash_only: sec.allow_cmd_hash_only.unwrap_or(false),
            umask,
            subjects: raw.subjects,
            ca_bundle: raw.tls.ca_bundle,
            http_timeout: Duration::from_secs(u64::from(timeout)),
            env_keep,
            secure_path,
            cache_dir,
            jwks_max_age: i64::from(raw.cache.jwks_max_age.unwrap_or(300)),
            jwks_min_refresh: i64::from(raw.cache.jwks_min_refresh.unwrap_or(20)),
            trusted_owner,
            update_manifest_url: raw.update.manifest_url,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[security]\nallowed_issuers = [\"https://id.openape.at\"]\nallowed_approvers = [\"alice@example.com\"]\n";

    fn parse(text: &str) -> Result<Config, Denial> {
        Config::parse(Path::new("/etc/openape/config.toml"), text, 0)
    }

    #[test]
    fn the_old_escapes_config_keeps_working() {
        let old = "host = \"macmini\"\nrun_as = \"root\"\naudit_log = \"/var/log/openape/audit.log\"\n\n[security]\nallowed_issuers = [\"https://id.openape.at\"]\nallowed_approvers = [\"phofmann@delta-mind.at\"]\nallowed_audiences = [\"escapes\"]\n\n[tls]\nca_bundle = \"/etc/ssl/certs/ca-certificates.crt\"\n";
        let c = parse(old).map_err(|e| e.reason);
        let c = c.as_ref().map(|c| {
            (
                c.host.as_str(),
                c.run_as.as_str(),
                c.allowed_audiences.clone(),
            )
        });
        assert_eq!(c, Ok(("macmini", "root", vec!["escapes".to_string()])));
    }

    #[test]
    fn request_section_defaults_and_checks() {
        let c = parse(MIN).map(|c| c.request).map_err(|e| e.reason);
        assert_eq!(
            c,
            Ok(RequestConfig {
                enabled: true,
                idp: Some("https://id.openape.at".into()),
                timeout: 300,
                grant_type: "once".into(),
            })
        );
        let two = "[security]\nallowed_issuers = [\"https://a.example\", \"https://b.example\"]\nallowed_approvers = [\"x\"]\n";
        assert_eq!(parse(two).map(|c| c.request.idp).ok(), Some(None));
        let named = format!(
            "{two}[request]\nidp = \"https://b.example\"\nenabled = false\ntimeout = 60\ngrant_type = \"timed\"\n"
        );
        let c = parse(&named).map(|c| c.request).map_err(|e| e.reason);
        assert_eq!(
            c,
            Ok(RequestConfig {
                enabled: false,
                idp: Some("https://b.example".into()),
                timeout: 60,
                grant_type: "timed".into(),
            })
        );
        for bad in [
            "[request]\nidp = \"https://other.example\"\n",
            "[request]\ntimeout = 0\n",
            "[request]\ntimeout = 86401\n",
            "[request]\ngrant_type = \"forever\"\n",
            "[request]\nwait = 3\n",
        ] {
            assert!(parse(&format!("{MIN}{bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let c = parse(MIN).map_err(|e| e.reason);
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            assert_eq!(c.allowed_audiences, vec!["escapes"]);
            assert_eq!(c.clock_skew, 30);
            assert!(!c.allow_self_approval);
            assert_eq!(c.http_timeout, Duration::from_secs(10));
            assert_eq!(c.audit_log, PathBuf::from(DEFAULT_AUDIT_LOG));
            assert_eq!(c.secure_path.len(), 6);
            assert_eq!(c.run_as, "root");
        }
    }

    #[test]
    fn refuses_unknown_keys_naming_them() {
        let e = parse(&format!("{MIN}allowed_approver = [\"x\"]\n"))
            .err()
            .map(|e| e.reason);
        assert!(
            e.as_deref().is_some_and(
                |r| r.contains("allowed_approver") && r.contains("/etc/openape/config.toml")
            ),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_missing_required_sections() {
        assert!(parse("host = \"x\"\n").is_err());
        assert!(parse("[security]\nallowed_issuers = [\"https://a\"]\n").is_err());
        assert!(parse("[security]\nallowed_issuers = []\nallowed_approvers = [\"a\"]\n").is_err());
        assert!(
            parse("[security]\nallowed_issuers = [\"https://a\"]\nallowed_approvers = []\n")
                .is_err()
        );
    }

    #[test]
    fn issuer_urls_must_be_https_or_loopback_http() {
        assert!(issuer_url_ok("https://id.openape.at").is_ok());
        assert!(issuer_url_ok("http://127.0.0.1:8080").is_ok());
        assert!(issuer_url_ok("http://[::1]:8080").is_ok());
        assert!(issuer_url_ok("http://localhost:1").is_ok());
        assert!(issuer_url_ok("http://id.openape.at").is_err());
        assert!(issuer_url_ok("http://127.0.0.1.evil.com").is_err());
        assert!(issuer_url_ok("https://user@id.openape.at").is_err());
        assert!(issuer_url_ok("https://id.openape.at/?x").is_err());
        assert!(issuer_url_ok("ftp://x").is_err());
    }

    #[test]
    fn urls_are_printable_ascii_and_shown_escaped_when_refused() {
        for bad in [
            "\u{1b}]0;t\u{7}https://id.openape.at",
            "http://evil.example\u{1b}[2J",
            "https://id.openape.at/\u{1b}[2J\r",
            "https://id.openape.at/\u{202e}x",
            "https://id.openape.at/\u{85}",
            "https://id.openape.at/caf\u{e9}",
        ] {
            let msg = url_ok(bad, "manifest url").err().unwrap_or_default();
            assert!(!msg.is_empty(), "{bad:?} accepted");
            assert!(
                msg.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn unprivileged_loopback_issuers_need_an_explicit_yes() {
        let with = |iss: &str, extra: &str| {
            parse(&format!(
                "[security]\nallowed_issuers = [\"{iss}\"]\nallowed_approvers = [\"a\"]\n{extra}"
            ))
            .map(|c| c.allow_unprivileged_loopback)
            .map_err(|e| e.reason)
        };
        for high in [
            "http://127.0.0.1:8080",
            "http://[::1]:1024",
            "http://localhost:65535",
            "http://127.0.0.1:99999",
        ] {
            let e = with(high, "").err().unwrap_or_default();
            assert!(e.contains("allow_unprivileged_loopback"), "{high}: {e}");
            assert_eq!(
                with(high, "allow_unprivileged_loopback = true\n"),
                Ok(true),
                "{high}"
            );
        }
        // Below 1024 only where this host's kernel says so (a container
        // may set ip_unprivileged_port_start to 0).
        let privileged = unprivileged_port_start() > 1023;
        for (fine, port) in [
            ("http://127.0.0.1", Some(80)),
            ("http://127.0.0.1:80/", Some(80)),
            ("http://[::1]:1023", Some(1023)),
            ("https://127.0.0.1:8443", None),
            ("https://id.example:9999", None),
        ] {
            if port.is_none() || privileged {
                assert_eq!(with(fine, ""), Ok(false), "{fine}");
            }
        }
    }

    #[test]
    fn a_port_is_privileged_only_below_the_kernels_start() {
        let at = unprivileged_loopback_port_from;
        assert_eq!(at("http://127.0.0.1", 1024), None);
        assert_eq!(at("http://127.0.0.1", 0), Some(80));
        assert_eq!(at("http://127.0.0.1:80/", 80), Some(80));
        assert_eq!(at("http://127.0.0.1:80/", 81), None);
        assert_eq!(at("http://[::1]:443", 0), Some(443));
        assert_eq!(at("http://localhost:1023", 1024), None);
        assert_eq!(at("http://localhost:1024", 1024), Some(1024));
        assert_eq!(at("http://127.0.0.1:99999", 70000), Some(u16::MAX));
        assert_eq!(at("https://127.0.0.1:443", 0), None);
        // This host's value is a number (0 when unreadable).
        assert!(unprivileged_port_start() <= 65536);
    }

    #[test]
    fn umask_is_octal_with_a_022_default() {
        assert_eq!(parse(MIN).map(|c| c.umask).ok(), Some(0o022));
        assert_eq!(
            parse(&format!("umask = \"077\"\n{MIN}"))
                .map(|c| c.umask)
                .ok(),
            Some(0o077)
        );
        for bad in ["\"\"", "\"8\"", "\"0x22\"", "\"01777\"", "22"] {
            assert!(parse(&format!("umask = {bad}\n{MIN}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_keep_cannot_smuggle_loader_or_shell_variables() {
        for bad in [
            "LD_PRELOAD",
            "BASH_ENV",
            "PATH",
            "OPENAPE_GRANT",
            "MALLOC_CHECK_",
            "PERLLIB",
            "PERL5DB",
            "PYTHONUSERBASE",
            "PYTHONWARNINGS",
            "PYTHONSTARTUP",
            "RUBYOPT",
            "NODE_PATH",
            "LUA_INIT",
            "BASH_XTRACEFD",
            "TERMINFO",
            "JAVA_TOOL_OPTIONS",
            "OPENSSL_CONF",
            "GIT_EXEC_PATH",
            "LESSOPEN",
            "TMPDIR",
            "PAGER",
            "EDITOR",
            "XDG_CONFIG_HOME",
            "1X",
            "A-B",
        ] {
            let text = format!("{MIN}[env]\nkeep = [\"{bad}\"]\n");
            assert!(parse(&text).is_err(), "{bad} accepted");
        }
        assert!(parse(&format!("{MIN}[env]\nkeep = [\"SSH_AUTH_SOCK\"]\n")).is_ok());
        assert!(
            parse(&format!(
                "{MIN}[env]\nkeep = [\"GIT_AUTHOR_NAME\", \"GIT_COMMITTER_EMAIL\"]\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn update_manifest_url_is_optional_and_checked() {
        assert_eq!(parse(MIN).ok().and_then(|c| c.update_manifest_url), None);
        let ok = format!(
            "{MIN}[update]\nmanifest_url = \"https://dl.example.com/escapes/manifest.json\"\n"
        );
        assert_eq!(
            parse(&ok)
                .ok()
                .and_then(|c| c.update_manifest_url)
                .as_deref(),
            Some("https://dl.example.com/escapes/manifest.json")
        );
        assert!(
            parse(&format!(
                "{MIN}[update]\nmanifest_url = \"http://dl.example.com/m\"\n"
            ))
            .is_err()
        );
        assert!(
            parse(&format!(
                "{MIN}[update]\nmanifest_url = \"http://127.0.0.1:9/m\"\n"
            ))
            .is_ok()
        );
        assert!(parse(&format!("{MIN}[update]\nchannel = \"beta\"\n")).is_err());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(
            url_origin("https://DL.example.com:443/a/b").as_deref(),
            Some("https://dl.example.com")
        );
        assert_eq!(
            url_origin("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_ne!(
            url_origin("https://a.example/x"),
            url_origin("https://a.example:8443/x")
        );
        assert_ne!(
            url_origin("https://a.example/x"),
            url_origin("http://a.example/x")
        );
        assert_eq!(url_origin("https://"), None);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&format!("{MIN}[http]\ntimeout = 0\n")).is_err());
        assert!(parse(&format!("{MIN}[env]\nsecure_path = \"/bin:bin\"\n")).is_err());
        assert!(parse(&format!("audit_log = \"log\"\n{MIN}")).is_err());
        assert!(parse(&format!("host = \"a b\"\n{MIN}")).is_err());
        assert!(parse(&format!("{MIN}clock_skew = \"30\"\n")).is_err());
    }
}
