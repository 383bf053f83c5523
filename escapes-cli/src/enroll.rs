//! `escapes enroll --idp URL --name NAME [--key PATH] [--agent-email EMAIL]`:
//! set up the agent identity that request mode uses, the way `apes
//! enroll` does, entirely with the caller's rights (the setuid binary
//! drops root for good before it reads an option).
//!
//! Creates the key if it is missing (PKCS#8 PEM, 0600, and `KEY.pub` as
//! `ssh-ed25519 … EMAIL`, 0644), prints `Enroll at: {idp}/enroll?name=…&key=…`,
//! asks for the agent email the IdP shows (unless given), polls the agent
//! login until it works (every 2 s, at most 10 minutes), then writes
//! `[agent] key` and `email` into `~/.config/apes/config.toml`, keeping
//! everything else in that file.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use pam_openape::http::{self, Client};
use pam_openape::request::identity::{email_ok, expand, read_small};
use pam_openape::request::keys;
use pam_openape::request::proto::Api;

use crate::{cli, outln, say, sys};

/// How long enroll waits for the IdP to know the agent.
const ENROLL_WAIT: Duration = Duration::from_secs(600);
const POLL_EVERY: Duration = Duration::from_secs(2);

pub const HELP: &str = "\
escapes enroll --idp URL --name NAME [--key PATH] [--agent-email EMAIL]

Creates an Ed25519 agent key if KEY (default ~/.ssh/id_ed25519) is missing,
prints the IdP page where the key is enrolled, waits until the agent can log
in, and writes [agent] key and email into ~/.config/apes/config.toml. Runs
with your own rights only. Afterwards `escapes -- COMMAND` asks for grants.
Exit 0 enrolled, 1 error, 2 usage.
";

struct Args {
    idp: String,
    name: String,
    key: Option<String>,
    email: Option<String>,
}

fn parse(args: &[OsString]) -> Result<Option<Args>, String> {
    let opts = cli::subcommand_options(args, &["--idp", "--name", "--key", "--agent-email"])?;
    let (mut idp, mut name, mut key, mut email) = (None, None, None, None);
    for (flag, value) in opts {
        match (flag.as_str(), value) {
            ("-h" | "--help", None) => return Ok(None),
            ("--idp", Some(v)) => idp = Some(v),
            ("--name", Some(v)) => name = Some(v),
            ("--key", Some(v)) => key = Some(v),
            ("--agent-email", Some(v)) => email = Some(v),
            (other, _) => return Err(format!("unknown option {other}")),
        }
    }
    let idp = idp.ok_or("--idp URL is required")?;
    pam_openape::config::issuer_url_ok(&idp)?;
    let name = name.ok_or("--name NAME is required")?;
    if name.is_empty()
        || name.len() > 100
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("--name must be one word of at most 100 characters".into());
    }
    if let Some(e) = &email
        && !email_ok(e)
    {
        return Err("--agent-email is not an email address".into());
    }
    Ok(Some(Args {
        idp: idp.trim_end_matches('/').to_string(),
        name,
        key,
        email,
    }))
}

/// `escapes enroll`. Drops privileges first, then works as the caller,
/// with the caller's umask again (escapes set 077 for itself at start).
pub fn run(args: &[OsString], caller_umask: u32) -> i32 {
    // First thing: become the caller for good (real, effective and saved
    // ids; the groups this process holds, never one the caller dropped).
    // Nothing below runs as root.
    let me = match sys::user_by_uid(nix::unistd::getuid().as_raw()) {
        Ok(Some(u)) => u,
        _ => {
            say("enroll: your user id has no passwd entry");
            return 1;
        }
    };
    let who = pam_openape::request::privsep::Caller {
        uid: me.uid.as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        name: me.name.clone(),
    };
    if let Err(e) = pam_openape::request::privsep::become_caller(&who) {
        say(&format!("enroll: cannot drop privileges: {e}"));
        return 1;
    }
    // The files below are the caller's own, made as the caller would make
    // them (the modes asked for are at most 0600 / 0644 / 0700).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        (caller_umask & 0o777) as libc::mode_t,
    ));
    let a = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            crate::out!("{HELP}");
            return 0;
        }
        Err(e) => {
            say(&format!("enroll: {e}\nTry 'escapes enroll --help'."));
            return 2;
        }
    };
    match enroll(&a, &me.dir) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("enroll: {e}"));
            1
        }
    }
}

fn random_seed() -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(seed)
}

/// Create `path` with `mode`, never over an existing file or a symlink.
fn create_new(path: &Path, mode: u32, content: &[u8]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn make_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

use std::os::unix::fs::DirBuilderExt as _;

fn enroll(a: &Args, home: &Path) -> Result<(), String> {
    let key_path = expand(a.key.as_deref().unwrap_or("~/.ssh/id_ed25519"), home);
    let pub_path = PathBuf::from(format!("{}.pub", key_path.display()));
    let key = match read_small(&key_path)? {
        Some(bytes) => {
            let k = keys::parse_private_key(&bytes)
                .map_err(|e| format!("key {}: {e}", key_path.display()))?;
            outln!("Using the existing key {}", key_path.display());
            k
        }
        None => {
            if let Some(dir) = key_path.parent() {
                make_dir(dir)?;
            }
            let k = SigningKey::from_bytes(&random_seed()?);
            create_new(&key_path, 0o600, keys::pkcs8_pem(&k).as_bytes())?;
            outln!("Created a new Ed25519 key {} (0600)", key_path.display());
            k
        }
    };
    let existing_pub = read_small(&pub_path)?;
    let public_line = match &existing_pub {
        Some(b) => {
            let text = String::from_utf8_lossy(b);
            let (pk, _) = keys::parse_public_line(&text)
                .map_err(|e| format!("{}: {e}", pub_path.display()))?;
            if pk != key.verifying_key().to_bytes() {
                return Err(format!(
                    "{} does not belong to {}",
                    pub_path.display(),
                    key_path.display()
                ));
            }
            text.trim().to_string()
        }
        None => keys::ssh_public_line(&key, a.email.as_deref()),
    };
    outln!(
        "Enroll at: {}?name={}&key={}",
        http::join(&a.idp, "/enroll"),
        http::encode_segment(&a.name),
        http::encode_segment(&public_line)
    );
    let email = match &a.email {
        Some(e) => e.clone(),
        None => ask_email()?,
    };
    if existing_pub.is_none() {
        create_new(
            &pub_path,
            0o644,
            format!("{}\n", keys::ssh_public_line(&key, Some(&email))).as_bytes(),
        )?;
        outln!("Wrote {}", pub_path.display());
    }
    outln!("Waiting until {} can log in as {email} …", a.idp);
    wait_for_login(&a.idp, &email, &key)?;
    let written = write_agent_config(home, &key_path, &email)?;
    outln!(
        "Enrolled: {email}; [agent] key and email written to {}",
        written.display()
    );
    outln!("Now `escapes -- COMMAND` asks {} for each grant.", a.idp);
    Ok(())
}

fn ask_email() -> Result<String, String> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| "no terminal to ask for the agent email on: pass --agent-email".to_string())?;
    let _ = tty.write_all(b"Agent email (shown by the IdP after enrollment): ");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 300 {
        match tty.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    let email = String::from_utf8_lossy(&line).trim().to_string();
    if !email_ok(&email) {
        return Err("that is not an email address".into());
    }
    Ok(email)
}

fn wait_for_login(idp: &str, email: &str, key: &SigningKey) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < ENROLL_WAIT {
        let mut client = Client::new(Duration::from_secs(10), None, 0).map_err(|d| d.reason)?;
        let mut api = Api {
            client: &mut client,
            idp: idp.to_string(),
            timeout: Duration::from_secs(10),
        };
        match api.login(email, key) {
            Ok(_) => return Ok(()),
            Err(d) => last = d.reason,
        }
        std::thread::sleep(POLL_EVERY);
    }
    Err(format!(
        "the IdP did not accept the key within {} s ({last})",
        ENROLL_WAIT.as_secs()
    ))
}

/// Set `[agent] key` and `email` in the apes config text, keeping every
/// other line (other tables, comments, other keys of `[agent]`).
pub fn set_agent(text: &str, key: &str, email: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let new_lines = [format!("key = {}", q(key)), format!("email = {}", q(email))];
    let mut out: Vec<String> = Vec::new();
    let mut in_agent = false;
    let mut placed = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_agent = t == "[agent]";
            out.push(line.to_string());
            if in_agent && !placed {
                out.extend(new_lines.iter().cloned());
                placed = true;
            }
            continue;
        }
        if in_agent {
            let name = t.split('=').next().unwrap_or("").trim();
            if name == "key" || name == "email" {
                continue;
            }
        }
        out.push(line.to_string());
    }
    if !placed {
        if out.last().is_some_and(|l| !l.trim().is_empty()) {
            out.push(String::new());
        }
        out.push("[agent]".into());
        out.extend(new_lines.iter().cloned());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn write_agent_config(home: &Path, key_path: &Path, email: &str) -> Result<PathBuf, String> {
    let dir = home.join(".config/apes");
    make_dir(&dir)?;
    let path = dir.join("config.toml");
    let old = match read_small(&path)? {
        Some(b) => String::from_utf8(b).map_err(|_| format!("{} is not UTF-8", path.display()))?,
        None => String::new(),
    };
    let new = set_agent(&old, &key_path.to_string_lossy(), email);
    if toml::from_str::<toml::Table>(&new).is_err() {
        return Err(format!(
            "{} would not be valid TOML afterwards; left as it is",
            path.display()
        ));
    }
    let tmp = dir.join(format!(".config.toml.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    create_new(&tmp, 0o600, new.as_bytes())?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace {}: {e}", path.display())
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_section_is_set_and_the_rest_kept() {
        let old = "# mine\n[defaults]\nidp = \"https://id.example\"\n\n[agent]\nkey = \"old\"\nother = \"x\"\nemail = \"old@x\"\n[notifications]\npending_command = \"y\"\n";
        let new = set_agent(old, "/h/.ssh/k", "a@example.com");
        let t: toml::Table = toml::from_str(&new).unwrap_or_default();
        assert_eq!(t["agent"]["key"].as_str(), Some("/h/.ssh/k"));
        assert_eq!(t["agent"]["email"].as_str(), Some("a@example.com"));
        assert_eq!(t["agent"]["other"].as_str(), Some("x"));
        assert_eq!(t["defaults"]["idp"].as_str(), Some("https://id.example"));
        assert_eq!(t["notifications"]["pending_command"].as_str(), Some("y"));
        assert!(new.starts_with("# mine\n"));
        let fresh = set_agent("", "k", "a@b");
        assert_eq!(fresh, "[agent]\nkey = \"k\"\nemail = \"a@b\"\n");
        let appended = set_agent("[defaults]\nidp = \"i\"\n", "k", "a@b");
        assert!(appended.ends_with("\n\n[agent]\nkey = \"k\"\nemail = \"a@b\"\n"));
    }
}
