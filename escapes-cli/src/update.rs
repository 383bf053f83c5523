//! `escapes update` (and the old `escapes --update`): replace the running
//! binary with the release a manifest names, checksum-verified and
//! atomically, keeping owner root and the installed group and mode.
//!
//! The manifest (JSON, at most 1 MiB, from `[update] manifest_url` or
//! `--manifest-url`):
//!
//! ```json
//! {"version": "0.5.1",
//!  "url": "https://dl.example.com/escapes/escapes-0.5.1-x86_64-linux",
//!  "sha256": "<64 hex digits>"}
//! ```
//!
//! Other members are ignored. `version` is `MAJOR.MINOR.PATCH` with an
//! optional `-pre` and `+build`; `url` must pass the issuer URL rule
//! (https, or http only to a loopback address) and be on the same origin
//! (scheme, host, port) as the manifest; `sha256` is the hex SHA-256 of
//! the binary. The binary (at most 64 MiB, 5 minutes) is streamed into a
//! temp file next to the running binary (`/proc/self/exe`), created 0700
//! root with `O_EXCL`; after the checksum and an ELF header check (same
//! class, byte order and machine as the running binary) it gets the
//! running binary's group and permission bits (owner root, never a write
//! bit for group or others: an installed 4750 root:openape stays so; a
//! plain install is 4755 root:root), is fsynced and renamed over the
//! running binary, and the directory is fsynced. Until that rename nothing touches the old
//! binary; on any failure the temp file is removed. After it, the replaced
//! inode is made 0600 (no set-id, no exec bit), so that a hard link to it
//! made elsewhere is not left a setuid-root copy of the old release. One left by an update
//! that was killed or crashed between its chmod and its rename (a setuid
//! copy of that release) is removed by the next update.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pam_openape::config::{
    Config, DEFAULT_CONFIG_PATH, unprivileged_loopback_port, url_ok, url_origin,
};
use pam_openape::http::Client;
use pam_openape::trust;

use crate::atomic::Temp;
use crate::say;

const ROOT: u32 = 0;
/// Temp files of an update are `.escapes-update.tmp-PID-N`.
const UPDATE_STEM: &str = "escapes-update";
/// Largest binary accepted.
pub const MAX_BINARY: u64 = 64 * 1024 * 1024;
/// Deadline for downloading the binary.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const OURS: &str = env!("CARGO_PKG_VERSION");

pub const HELP: &str = "\
Usage: escapes update [--config PATH] [--manifest-url URL] [--check] [--force]
                      [--allow-unprivileged-loopback]
       escapes --update

Replace this escapes binary with the release named by the manifest at
[update] manifest_url in the configuration (or --manifest-url). Run as root.

  --check              only report the installed and the available version
  --force              install even if the version is the same or older
  --manifest-url URL   use this manifest instead of the configured one
  --config PATH        configuration to read (default /etc/openape/config.toml)
  --allow-unprivileged-loopback
                       accept a manifest on plain http at a loopback port
                       >= 1024 (any local user can bind such a port and
                       would choose the binary: tests and demos only; also
                       [security] allow_unprivileged_loopback = true)

The manifest is JSON: {\"version\": \"0.5.1\", \"url\": \"https://.../escapes\",
\"sha256\": \"<64 hex>\"}; the binary must be on the manifest's origin. The
download is checked against sha256 before anything changes; the running
binary is then replaced atomically (owner root; group and mode as installed,
e.g. 4755 or 4750). On any failure the installed binary is left as it was.
Exit status: 0 updated, up to date or checked, 1 error (nothing changed),
2 usage error.
";

#[derive(Debug, Default, PartialEq, Eq)]
struct Opts {
    config: Option<PathBuf>,
    manifest_url: Option<String>,
    check: bool,
    force: bool,
    unprivileged_loopback: bool,
    help: bool,
}

fn parse(args: &[OsString]) -> Result<Opts, String> {
    let mut o = Opts::default();
    for (name, value) in crate::cli::subcommand_options(args, &["--config", "--manifest-url"])? {
        match (name.as_str(), value) {
            ("--config", Some(v)) if o.config.is_none() => o.config = Some(PathBuf::from(v)),
            ("--manifest-url", Some(v)) if o.manifest_url.is_none() => o.manifest_url = Some(v),
            ("--config" | "--manifest-url", _) => {
                return Err(format!("give {name} only once"));
            }
            ("--check", None) => o.check = true,
            ("--force", None) => o.force = true,
            ("--allow-unprivileged-loopback", None) => o.unprivileged_loopback = true,
            ("-h" | "--help", None) => o.help = true,
            (other, _) => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// A release manifest, validated.
#[derive(Debug, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    pub url: String,
    /// Lowercase hex.
    pub sha256: String,
}

/// Parse and check a manifest fetched from `manifest_url`.
pub fn parse_manifest(body: &[u8], manifest_url: &str) -> Result<Manifest, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the manifest is not JSON".to_string())?;
    let field = |k: &str| -> Result<String, String> {
        doc.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("the manifest has no string \"{k}\""))
    };
    let version = field("version")?;
    if version_key(&version).is_none() {
        return Err(format!(
            "the manifest's version {:?} is not MAJOR.MINOR.PATCH",
            pam_openape::error::sanitize(&version, 64)
        ));
    }
    let url = field("url")?;
    url_ok(&url, "the manifest's binary url")?;
    if url_origin(&url).is_none() || url_origin(&url) != url_origin(manifest_url) {
        return Err(format!(
            "the manifest's binary url {url} is not on the manifest's origin ({}); refused",
            url_origin(manifest_url).unwrap_or_default()
        ));
    }
    let sha256 = field("sha256")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the manifest's sha256 is not 64 hex digits".into());
    }
    Ok(Manifest {
        version,
        url,
        sha256,
    })
}

/// Ordering key of `MAJOR.MINOR.PATCH[-pre][+build]` (build ignored; a
/// pre-release sorts before its release). `None` if malformed.
fn version_key(v: &str) -> Option<(u64, u64, u64, bool, String)> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    {
        return None;
    }
    let core_pre = v.split('+').next().unwrap_or("");
    let (core, pre) = match core_pre.split_once('-') {
        Some((c, p)) if !p.is_empty() => (c, Some(p)),
        Some(_) => return None,
        None => (core_pre, None),
    };
    let mut parts = core.split('.').map(|p| {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            p.parse::<u64>().ok()
        }
    });
    let (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((a, b, c, pre.is_none(), pre.unwrap_or("").to_string()))
}

fn usage(msg: &str) -> i32 {
    say(&format!(
        "{msg}\nTry 'escapes update --help' for more information."
    ));
    2
}

pub fn run(args: &[OsString]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(m) => return usage(&m),
    };
    if o.help {
        crate::out!("{HELP}");
        return 0;
    }
    if let Err(uid) = crate::sys::require_real_root() {
        say(&format!(
            "escapes update replaces a setuid-root binary and must be run by root (you are uid {uid}); try: sudo escapes update"
        ));
        return 1;
    }
    if let Some(u) = &o.manifest_url
        && let Err(e) = url_ok(u, "manifest URL")
    {
        return usage(&e);
    }
    match update(&o) {
        Ok(()) => 0,
        Err(m) => {
            say(&m);
            1
        }
    }
}

fn update(o: &Opts) -> Result<(), String> {
    let path = o
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    // The config is optional when the URL comes from the command line,
    // but a config that exists must be a good one (it may name a CA).
    let cfg = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && o.config.is_none() => None,
        _ => Some(Config::load(&path, ROOT).map_err(|d| d.reason)?),
    };
    let url = match (
        &o.manifest_url,
        cfg.as_ref().and_then(|c| c.update_manifest_url.clone()),
    ) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => u,
        (None, None) => {
            return Err(format!(
                "escapes update is not configured: set manifest_url in the [update] table of {} (or pass --manifest-url URL)",
                path.display()
            ));
        }
    };
    // Plain http on a loopback port >= 1024 is whoever binds it first,
    // and what they serve would become the setuid-root binary (the binary
    // url is on the manifest's origin, so this covers both).
    if let Some(port) = unprivileged_loopback_port(&url)
        && !o.unprivileged_loopback
        && !cfg.as_ref().is_some_and(|c| c.allow_unprivileged_loopback)
    {
        return Err(format!(
            "the manifest {url} is plain http on port {port}, which any local user can bind (and so choose the setuid-root binary); use https or a port below 1024, or add --allow-unprivileged-loopback (tests and demos only); nothing changed"
        ));
    }
    let timeout = cfg.as_ref().map_or(DEFAULT_TIMEOUT, |c| c.http_timeout);
    let ca = cfg.as_ref().and_then(|c| c.ca_bundle.clone());
    let client = Client::new(timeout, ca.as_deref(), ROOT).map_err(|d| d.reason)?;

    let resp = client
        .get(&url)
        .map_err(|e| format!("cannot fetch the manifest {url}: {e}"))?;
    if resp.status != 200 {
        return Err(format!(
            "cannot fetch the manifest {url}: answered HTTP {}",
            resp.status
        ));
    }
    let m =
        parse_manifest(&resp.body, &url).map_err(|e| format!("{e} ({url}); nothing changed"))?;
    let ours = version_key(OURS).ok_or("this build has no comparable version")?;
    let theirs = version_key(&m.version).ok_or("the manifest's version is malformed")?;
    crate::outln!("installed: escapes {OURS}");
    crate::outln!("available: escapes {} ({})", m.version, m.url);
    if o.check {
        crate::outln!(
            "{}",
            if theirs > ours {
                "an update is available; run: escapes update"
            } else if theirs == ours {
                "up to date"
            } else {
                "the available version is older than the installed one"
            }
        );
        return Ok(());
    }
    if theirs == ours && !o.force {
        crate::outln!("escapes {OURS} is up to date");
        return Ok(());
    }
    if theirs < ours && !o.force {
        return Err(format!(
            "the manifest offers {}, older than the installed {OURS}; refusing to downgrade (--force installs it anyway)",
            m.version
        ));
    }
    let (target, installed) = running_binary()?;
    if let Some(pkg) = dpkg_owner(&target) {
        return Err(format!(
            "{} belongs to the package {pkg}: upgrade the package instead (apt install ./openape-escapes_<version>_amd64.deb); replacing it here would leave dpkg's record stale",
            target.display()
        ));
    }
    install(&client, &m, &target, installed)?;
    crate::sys::syslog_change(&format!(
        "{} updated from {OURS} to {} (sha256 {})",
        target.display(),
        m.version,
        m.sha256
    ));
    crate::outln!(
        "updated {}: {OURS} -> {} (sha256 {})",
        target.display(),
        m.version,
        m.sha256
    );
    Ok(())
}

/// The dpkg package that lists `path` among its files, if any.
fn dpkg_owner(path: &std::path::Path) -> Option<String> {
    let want = path.to_string_lossy();
    let dir = std::fs::read_dir("/var/lib/dpkg/info").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pkg) = name.strip_suffix(".list") else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if text.lines().any(|l| l == want) {
            return Some(pkg.to_string());
        }
    }
    None
}

/// Group and permission bits the new binary takes over from the old.
#[derive(Clone, Copy, Debug)]
struct Installed {
    gid: u32,
    /// `mode & 0o4755`: the setuid bit and read/execute bits as the admin
    /// left them, never a write bit for group or others.
    mode: u32,
}

/// The running binary's real path, in a directory only root can write,
/// and the group and mode it is installed with.
fn running_binary() -> Result<(PathBuf, Installed), String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot find the running binary: {e}"))?;
    if !exe.is_absolute() || exe.as_os_str().to_string_lossy().ends_with(" (deleted)") {
        return Err(format!(
            "the running binary {} is gone or replaced; run the installed escapes",
            exe.display()
        ));
    }
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    trust::check_dir_chain(dir, ROOT)
        .map_err(|e| format!("refusing to update a binary in an unsafe directory: {e}"))?;
    let meta = std::fs::symlink_metadata(&exe)
        .map_err(|e| format!("cannot examine {}: {e}", exe.display()))?;
    if !meta.is_file() || meta.uid() != ROOT {
        return Err(format!(
            "{} is not a regular file owned by root; not updating it",
            exe.display()
        ));
    }
    let installed = Installed {
        gid: meta.gid(),
        mode: meta.mode() & 0o4755,
    };
    Ok((exe, installed))
}

/// Class, byte order and machine from an ELF header (`None`: not ELF).
fn elf_kind(head: &[u8]) -> Option<[u8; 4]> {
    match head {
        [
            0x7f,
            b'E',
            b'L',
            b'F',
            class,
            data,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            m0,
            m1,
            ..,
        ] => Some([*class, *data, *m0, *m1]),
        _ => None,
    }
}

fn head_of(r: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::with_capacity(20);
    let _ = r.take(20).read_to_end(&mut head);
    head
}

fn install(
    client: &Client,
    m: &Manifest,
    target: &Path,
    installed: Installed,
) -> Result<(), String> {
    let dir = target
        .parent()
        .ok_or_else(|| format!("{} has no directory", target.display()))?;
    // The binary being replaced, held open: once the new one is in place
    // its set-id bits are cleared (below), so that a hard link someone
    // made to it elsewhere on this file system does not stay a setuid-root
    // copy of this release (as dpkg and rpm do with replaced files).
    let mut old = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .ok();
    let ours = old.as_mut().and_then(|f| elf_kind(&head_of(f)));

    for name in crate::atomic::sweep(dir, UPDATE_STEM) {
        say(&format!(
            "removed {name} from {}: a copy left by an interrupted update",
            dir.display()
        ));
    }
    let mut tmp = Temp::create(dir, UPDATE_STEM, 0o700)
        .map_err(|e| format!("cannot create a temp file in {}: {e}", dir.display()))?;
    let f = tmp.file().map_err(|e| format!("temp file: {e}"))?;
    std::os::unix::fs::fchown(&*f, Some(ROOT), Some(ROOT))
        .map_err(|e| format!("cannot chown the temp file: {e}"))?;
    let got = client
        .download(&m.url, MAX_BINARY, DOWNLOAD_DEADLINE, f)
        .map_err(|e| format!("cannot download {}: {e}; nothing changed", m.url))?;
    if got.sha256 != m.sha256 {
        return Err(format!(
            "checksum mismatch for {}: the manifest says {}, the download is {}; nothing changed",
            m.url, m.sha256, got.sha256
        ));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read back the download: {e}"))?;
    let theirs = elf_kind(&head_of(f));
    match (theirs, ours) {
        (None, _) => return Err("the download is not an ELF executable; nothing changed".into()),
        (Some(t), Some(o)) if t != o => {
            return Err(
                "the download is built for another architecture than this escapes; nothing changed"
                    .into(),
            );
        }
        _ => {}
    }
    // chown first (it clears set-id bits), then the mode: the group and
    // mode the admin gave the installed binary (e.g. 4750 for one group
    // only) are kept, never widened.
    std::os::unix::fs::fchown(&*f, Some(ROOT), Some(installed.gid))
        .map_err(|e| format!("cannot chown the new binary: {e}"))?;
    f.set_permissions(std::fs::Permissions::from_mode(installed.mode))
        .map_err(|e| format!("cannot chmod the new binary: {e}"))?;
    let durable = tmp
        .commit(target)
        .map_err(|e| format!("cannot replace {}: {e}; nothing changed", target.display()))?;
    if !durable {
        say(&format!(
            "warning: {} is replaced, but syncing {} failed",
            target.display(),
            dir.display()
        ));
    }
    if let Some(f) = old
        && let Err(e) = retire(&f)
    {
        say(&format!(
            "warning: cannot clear the set-id bits of the replaced binary ({e}); a hard link to it would still run it as root"
        ));
    }
    Ok(())
}

/// Clear the set-id and every exec bit of the replaced binary's inode
/// (0600 root, what dpkg leaves of a replaced setuid file). Nothing at the
/// old path changes: that is the new binary by now.
fn retire(old: &std::fs::File) -> std::io::Result<()> {
    let meta = old.metadata()?;
    if !meta.file_type().is_file() || meta.mode() & 0o6111 == 0 {
        return Ok(());
    }
    old.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab34567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
    const M: &str = "https://dl.example.com/escapes/manifest.json";

    fn manifest(v: &str, url: &str, sha: &str) -> Result<Manifest, String> {
        let body = serde_json::json!({"version": v, "url": url, "sha256": sha, "notes": "x"});
        parse_manifest(body.to_string().as_bytes(), M)
    }

    #[test]
    fn a_good_manifest() {
        let m = manifest(
            "0.5.1",
            "https://dl.example.com/escapes/escapes-0.5.1",
            &SHA.to_uppercase(),
        );
        assert_eq!(
            m,
            Ok(Manifest {
                version: "0.5.1".into(),
                url: "https://dl.example.com/escapes/escapes-0.5.1".into(),
                sha256: SHA.into(),
            })
        );
        // An explicit default port is the same origin.
        assert!(manifest("1.0.0", "https://dl.example.com:443/e", SHA).is_ok());
    }

    #[test]
    fn bad_manifests_are_refused() {
        let ok_url = "https://dl.example.com/e";
        for (v, u, s) in [
            ("0.5", ok_url, SHA),
            ("v0.5.1", ok_url, SHA),
            ("0.5.1-", ok_url, SHA),
            ("0.5.1;rm", ok_url, SHA),
            ("0.5.1", "https://evil.example.com/e", SHA),
            ("0.5.1", "https://dl.example.com:8443/e", SHA),
            ("0.5.1", "http://dl.example.com/e", SHA),
            ("0.5.1", "https://dl.example.com/e?x", SHA),
            ("0.5.1", "/relative", SHA),
            ("0.5.1", ok_url, "abc"),
            ("0.5.1", ok_url, &SHA.replace('a', "g")),
        ] {
            assert!(manifest(v, u, s).is_err(), "{v} {u} {s}");
        }
        assert!(parse_manifest(b"<html>", M).is_err());
        assert!(parse_manifest(b"{}", M).is_err());
        assert!(parse_manifest(b"{\"version\":1,\"url\":\"x\",\"sha256\":\"y\"}", M).is_err());
    }

    #[test]
    fn versions_order_like_semver() {
        let k = |v: &str| version_key(v);
        assert!(k("0.5.1") > k("0.5.0"));
        assert!(k("0.10.0") > k("0.9.9"));
        assert!(k("1.0.0") > k("1.0.0-rc.1"));
        assert!(k("1.0.0-rc.2") > k("1.0.0-rc.1"));
        assert_eq!(k("1.0.0+abc"), k("1.0.0"));
        assert!(k("1.0").is_none() && k("1.0.0.0").is_none() && k("1..0").is_none());
        assert!(k(OURS).is_some());
    }

    #[test]
    fn elf_headers() {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.extend_from_slice(&[0; 10]);
        h.extend_from_slice(&[0x3e, 0]);
        assert_eq!(elf_kind(&h), Some([2, 1, 0x3e, 0]));
        assert_eq!(elf_kind(b"#!/bin/sh\nrm -rf /\n"), None);
        assert_eq!(elf_kind(&h[..10]), None);
    }

    #[test]
    fn flags() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            parse(&a(&["--check", "--manifest-url=https://x/m", "--force"])),
            Ok(Opts {
                manifest_url: Some("https://x/m".into()),
                check: true,
                force: true,
                ..Opts::default()
            })
        );
        assert_eq!(
            parse(&a(&["--allow-unprivileged-loopback"])).map(|o| o.unprivileged_loopback),
            Ok(true)
        );
        assert!(parse(&a(&["--allow-unprivileged-loopback=yes"])).is_err());
        assert!(parse(&a(&["--manifest-url"])).is_err());
        assert!(parse(&a(&["--check=1"])).is_err());
        assert!(parse(&a(&["now"])).is_err());
    }
}
