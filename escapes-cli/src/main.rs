//! `escapes`: a setuid-root, sudo-compatible front end that runs one
//! command as another user only with a human-approved OpenApe grant for
//! exactly that command on this host.
//!
//! The flow reads top to bottom in [`run`]: clear the environment, parse
//! the command line, load the trusted configuration, open the audit log,
//! find the grant, run the verification chain, resolve user and program,
//! consume the grant, log, drop privileges, exec. Every refusal on the way
//! writes a `denied` audit line and exits with the code from DESIGN.md.

#![deny(clippy::print_stdout, clippy::print_stderr)]
// escapes starts at the C `main` below, not through std's runtime start-up
// (its stack-guard probe reads /proc/self/maps and maps an alternate signal
// stack on every run; about 0.1 ms of each elevation on the bench VM). The
// test harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

mod atomic;
mod cli;
mod enroll;
mod env;
mod request;
mod sys;
mod trust;
mod update;

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, User};
use pam_openape::audit::{AuditLog, Record};
use pam_openape::command;
use pam_openape::config::{Config, DEFAULT_CONFIG_PATH, LoadError};
use pam_openape::http::Client;
use pam_openape::jwks::KeyCache;
use pam_openape::time::{now_unix, rfc3339_utc};
use pam_openape::token::{MAX_TOKEN_LEN, fingerprint};
use pam_openape::verify::{self, Approved, Request, Verdict, Verified};
use pam_openape::{Denial, Kind, Step};

use cli::{Action, GrantSource, Opts, UserSpec};

/// Owner every trust root must have.
const ROOT: u32 = 0;

/// The process entry point. What std's start-up did and escapes relies on
/// is done here or first thing in [`escapes_main`]: descriptors 0-2 open
/// (glibc already sees to it for a set-user-ID start), SIGPIPE ignored
/// (`sys::take_process_state`), a panic caught and turned into exit code
/// 101, std's code for it, never unwound into the C caller. The arguments
/// come from `std::env::args_os`, which glibc fills before `main`.
#[cfg(not(test))]
// SAFETY: the one C `main` of this binary (no std `main` is generated under
// `no_main`); it has the C signature and never unwinds (catch_unwind).
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let code = std::panic::catch_unwind(escapes_main).unwrap_or(101);
    // Flushes standard output (std's own exit path), then exits.
    std::process::exit(code)
}

// Under the test harness nothing calls it; it still roots the code below.
#[cfg_attr(test, allow(dead_code))]
fn escapes_main() -> i32 {
    // First thing: nothing of the caller's environment stays in ours, and
    // nothing of the caller's umask, limits or signal state either.
    if !sys::open_standard_fds() {
        // Nothing can be said: there is no standard error to say it on.
        return 1;
    }
    let snapshot = sys::take_environment();
    let state = sys::take_process_state();
    let args: Vec<OsString> = std::env::args_os().collect();
    run(args, snapshot, &state)
}

/// Standard output that never panics (a closed or full pipe is ignored).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use outln;

/// Standard output without a newline, never panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use out;

fn say(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "escapes: {msg}");
}

/// A refusal: to the terminal and to syslog (the audit log gets its own
/// line where it is known).
fn refuse(msg: &str) {
    say(msg);
    sys::syslog_refusal(msg);
}

fn run(args: Vec<OsString>, snapshot: Vec<(OsString, OsString)>, state: &sys::CallerState) -> i32 {
    // argc == 0 (or an empty argv[0], which the kernel makes of it) is how
    // PwnKit smuggled environment variables back in: refuse outright.
    match args.first() {
        None => {
            refuse("refusing to run with an empty argument vector");
            return 2;
        }
        Some(a0) if a0.is_empty() => {
            refuse("refusing to run with an empty argv[0]");
            return 2;
        }
        Some(_) => {}
    }
    let action = match cli::parse(args.get(1..).unwrap_or_default()) {
        Ok(a) => a,
        Err(cli::Usage(msg)) => {
            say(&format!(
                "{msg}\nTry 'escapes --help' for more information."
            ));
            return 2;
        }
    };
    match action {
        Action::Help => {
            out!("{}", cli::HELP);
            0
        }
        Action::Version => {
            outln!("escapes {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Action::Trust(args) => trust::run(&args),
        Action::Update(args) => update::run(&args),
        Action::Enroll(args) => enroll::run(&args, state.umask),
        Action::Run(opts) => elevate(&opts, &snapshot, state),
        Action::Verify(opts) => dry_run(&opts, &snapshot),
    }
}

/// What every path after the config needs.
struct Ctx {
    cfg: Config,
    audit: AuditLog,
    real_uid: u32,
    user: Option<String>,
    command: Vec<String>,
    token_fp: Option<String>,
    /// Set once the grant passed every check (its claims are trusted
    /// then): refusals after that name the grant.
    grant_id: Option<String>,
}

impl Ctx {
    fn base(&self, event: &'static str) -> Record {
        Record {
            ts: rfc3339_utc(now_unix()),
            event,
            via: "escapes".into(),
            real_uid: self.real_uid,
            user: self.user.clone(),
            command: self.command.clone(),
            host: self.cfg.host.clone(),
            token_fp: self.token_fp.clone(),
            grant_id: self.grant_id.clone(),
            ..Record::default()
        }
    }

    /// Refuse: one `denied` line, one message, the exit code.
    fn deny(&self, d: &Denial) -> i32 {
        let rec = Record {
            step: Some(d.step.name()),
            reason: Some(d.reason.clone()),
            ..self.base("denied")
        };
        if let Err(e) = self.audit.append(&rec) {
            refuse(&e.reason);
        }
        say(&d.reason);
        sys::syslog_refusal(&format!("refused at {}: {}", d.step.name(), d.reason));
        d.exit_code()
    }
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Load the configuration; the caller cannot bring their own trust root.
fn load_config(opts: &Opts) -> Result<Config, i32> {
    if !sys::euid_is_root() {
        say(
            "must run as root: install it owned by root with mode 4755 (setuid), or run it as root",
        );
        return Err(1);
    }
    // Like sudo: only the real root may pick the policy. Everyone else gets
    // the default file, never another root-owned one (an old copy, a
    // PAM-only config, a device).
    let path = match &opts.config {
        Some(p) if !nix::unistd::getuid().is_root() => {
            say(&format!(
                "--config {}: only root may choose the configuration; without it {DEFAULT_CONFIG_PATH} is used",
                p.display()
            ));
            return Err(2);
        }
        Some(p) => p.clone(),
        None => PathBuf::from(DEFAULT_CONFIG_PATH),
    };
    Config::load_checked(&path, ROOT).map_err(|e| match e {
        LoadError::Untrusted(d) => {
            refuse(&d.reason);
            d.exit_code()
        }
        // The file is root's alone: a caller learns that it is broken,
        // not what it holds (a parse error quotes values).
        LoadError::Invalid(d) => {
            sys::syslog_refusal(&d.reason);
            if nix::unistd::getuid().is_root() {
                say(&d.reason);
            } else {
                say(&format!(
                    "config {} is not a valid configuration; root sees why (escapes verify, or the system log)",
                    path.display()
                ));
            }
            d.exit_code()
        }
    })
}

fn elevate(opts: &Opts, snapshot: &[(OsString, OsString)], state: &sys::CallerState) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let audit = match AuditLog::open(&cfg.audit_log, ROOT) {
        Ok(a) => a,
        Err(e) => {
            say(&format!(
                "{}; refusing to run anything that cannot be logged",
                e.reason
            ));
            return 1;
        }
    };
    let mut ctx = Ctx {
        real_uid: nix::unistd::getuid().as_raw(),
        user: None,
        command: lossy(&opts.command),
        token_fp: None,
        grant_id: None,
        cfg,
        audit,
    };
    match elevate_logged(opts, snapshot, state, &mut ctx) {
        Ok(never) => match never {},
        // A signal still held over the consume (sys::hold_signals) is
        // dropped with the exit: nothing ran, and the line says why.
        Err(d) => ctx.deny(&d),
    }
}

enum Never {}

fn elevate_logged(
    opts: &Opts,
    snapshot: &[(OsString, OsString)],
    state: &sys::CallerState,
    ctx: &mut Ctx,
) -> Result<Never, Denial> {
    let caller = sys::caller().map_err(|e| Denial::new(Step::Caller, Kind::Io, e))?;
    ctx.user = Some(caller.name.clone());

    // Things that need no grant to be refused.
    let mut requested = requested_user(opts)?;
    check_preserve_env(opts, &ctx.cfg)?;
    let argv = utf8_argv(&opts.command)?;

    // No grant given but an OpenApe identity: ask the IdP (request.rs).
    let asked = request::grant_from_idp(
        opts,
        snapshot,
        &caller,
        ctx,
        &argv,
        requested.as_ref().map(|u| u.name.as_str()),
    )?;
    let asked_idp = asked.is_some();
    let token = match asked {
        Some(t) => {
            // A requested grant runs as the user it was requested for,
            // whatever run_as the IdP put in it.
            requested = Some(request::pinned_target(requested, &ctx.cfg)?);
            t
        }
        None => read_grant(opts, snapshot, &caller)?,
    };
    ctx.token_fp = Some(fingerprint(&token));

    let cfg = &ctx.cfg;
    let now = now_unix();
    let client = Client::new(cfg.http_timeout, cfg.ca_bundle.as_deref(), ROOT)?;
    let mut keys = KeyCache::new(cfg);
    let req = Request {
        caller: &caller.name,
        target_user: requested.as_ref().map(|u| u.name.as_str()),
        argv: Some(&argv),
    };
    let verified = verify::check(&token, &req, cfg, &mut keys, &client, now, &mut |_, _| {})?;
    ctx.grant_id = Some(verified.claims.grant_id.clone());

    // Resolve everything that could still fail before the grant is used.
    let target = target_user(&verified, requested)?;
    let primary = primary_group(opts, &target)?;
    let program = resolve_program(&opts.command, &cfg.secure_path)?;

    let env = env::target_env(
        snapshot,
        &cfg.env_keep,
        &cfg.secure_path
            .iter()
            .map(|p| p.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":"),
        &env::Identity {
            target_name: &target.name,
            target_home: target.dir.as_os_str(),
            target_shell: target.shell.as_os_str(),
            caller_name: &caller.name,
            caller_uid: caller.uid,
            caller_gid: caller.gid,
            command: &opts.command,
        },
    );
    // Become the target now, before the grant is used: a directory or
    // program the target cannot use is found while the grant is still
    // unspent, and the network step below runs without root (unless root
    // is the target). The audit log stays open for writing.
    sys::cloexec_from_3().map_err(|e| Denial::new(Step::Exec, Kind::Exec, e))?;
    sys::become_user(&target, primary).map_err(|e| {
        Denial::new(
            Step::Exec,
            Kind::Exec,
            format!("cannot become {}: {e}", target.name),
        )
    })?;
    sys::new_session_keyring().map_err(|e| Denial::new(Step::Exec, Kind::Exec, e))?;
    if let Some(dir) = &opts.chdir {
        std::env::set_current_dir(dir).map_err(|e| {
            Denial::new(
                Step::Exec,
                Kind::Io,
                format!("cannot change to directory {}: {e}", dir.display()),
            )
        })?;
    }
    // Where the command really runs (after -D), for the audit line.
    let cwd = std::env::current_dir()
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    if nix::unistd::access(program.as_path(), nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(Denial::new(
            Step::Exec,
            Kind::Exec,
            format!("{}: {} may not execute it", program.display(), target.name),
        ));
    }

    // The exec is built now, and checked against the kernel's size limit
    // for the caller's stack limit (which the command gets back): a kept
    // environment that fits escapes' own exec may not fit the command's,
    // which adds SUDO_COMMAND and the identity variables (E2BIG after
    // consume would spend the grant on nothing).
    let prepared = sys::prepare(&program, &opts.command, &env, state, cfg.umask)
        .and_then(|p| sys::exec_fits(&p).map(|()| p))
        .map_err(|e| exec_denial(&program, e))?;

    // The grant_run line is built now, and room for it reserved on disk,
    // so a full disk refuses before the grant is used, not after.
    let mut rec = Record {
        run_as: Some(target.name.clone()),
        cmd_hash: Some(command::cmd_hash(&argv)),
        grant_id: Some(verified.claims.grant_id.clone()),
        grant_type: Some(verified.claims.grant_type.as_str()),
        agent: Some(verified.claims.sub.clone()),
        issuer: Some(verified.claims.iss.clone()),
        decided_by: verified.claims.decided_by.clone(),
        audience: Some(verified.audience.clone()),
        target_host: Some(verified.claims.target_host.clone()),
        cwd,
        ..ctx.base("grant_run")
    };
    ctx.audit.reserve_for(&rec)?;

    // From here until the line for the outcome is written, the terminal's
    // signals are held (a request held them from its approval on): one
    // that came before the consume stops the run unspent, one that comes
    // during it is delivered after the line.
    sys::hold_signals();
    if let Some(sig) = sys::pending_interrupt() {
        let step = if asked_idp {
            Step::Request
        } else {
            Step::Consume
        };
        return Err(interrupted_before_consume(sig, step));
    }
    let approved = verify::consume(verified, &token, cfg, &client, now_unix())?;
    drop(client);
    drop(token);
    rec.ts = rfc3339_utc(now_unix());
    ctx.audit.append(&rec)?;
    run_approved(&approved, &program, &prepared, state)
}

/// A stop asked for (Ctrl-C, SIGTERM, ...) that was held until just
/// before the consume: refused there, the grant unspent.
fn interrupted_before_consume(sig: i32, step: Step) -> Denial {
    let name = nix::sys::signal::Signal::try_from(sig).map_or("a signal", |s| s.as_str());
    Denial::new(
        step,
        Kind::Interrupted(sig),
        format!("interrupted by {name} before the grant was used; nothing ran"),
    )
}

/// A failed exec (or one that cannot succeed) as a refusal: 127 when the
/// program is missing, else 126.
fn exec_denial(program: &Path, err: nix::errno::Errno) -> Denial {
    let kind = if err == nix::errno::Errno::ENOENT {
        Kind::NotFound
    } else {
        Kind::Exec
    };
    Denial::new(
        Step::Exec,
        kind,
        format!("cannot execute {}: {}", program.display(), err.desc()),
    )
}

/// The one place that executes. Identity was changed before consume.
/// For a target other than root, when the caller has a controlling
/// terminal (even with every fd piped) or a terminal on stdio, the command
/// runs detached from it (no TIOCSTI into the caller's shell); otherwise
/// escapes replaces itself with it.
fn run_approved(
    approved: &Approved,
    program: &Path,
    prepared: &sys::Prepared,
    state: &sys::CallerState,
) -> Result<Never, Denial> {
    if !approved.allows() || approved.verdict != Verdict::Allow {
        return Err(Denial::refused(Step::Exec, "internal error: no approval"));
    }
    let failed = |err: nix::errno::Errno| exec_denial(program, err);
    // The grant_run line is written: a signal held over the consume is
    // delivered now (the caller asked to stop), before anything runs.
    sys::release_signals();
    if !nix::unistd::Uid::effective().is_root() && (state.has_ctty || sys::stdio_is_tty()) {
        let code = sys::run_detached(prepared).map_err(failed)?;
        std::process::exit(code);
    }
    Err(failed(sys::exec(prepared)))
}

fn utf8_argv(cmd: &[OsString]) -> Result<Vec<String>, Denial> {
    cmd.iter()
        .map(|a| {
            a.to_str().map(str::to_string).ok_or_else(|| {
                Denial::refused(
                    Step::Command,
                    "command has an argument that is not valid UTF-8; no grant can name it",
                )
            })
        })
        .collect()
}

/// The `-u` user, looked up now (exit 1 if unknown or not named without
/// doubt, 2 if malformed).
fn requested_user(opts: &Opts) -> Result<Option<User>, Denial> {
    let Some(asked) = &opts.user else {
        return Ok(None);
    };
    let spec =
        cli::user_spec(asked).map_err(|cli::Usage(m)| Denial::new(Step::Usage, Kind::Usage, m))?;
    sys::target_by(&spec, asked).map(Some)
}

/// The user the verified grant runs as.
fn target_user(v: &Verified, requested: Option<User>) -> Result<User, Denial> {
    if let Some(u) = requested {
        return Ok(u);
    }
    // The requester chose this name and the IdP signed it as is: any
    // message shows it escaped, like every other claim.
    match sys::lookup_target(&UserSpec::Name(v.run_as.clone())) {
        Ok(u) => Ok(u),
        Err(pam_openape::users::TargetError::Unknown) => Err(Denial::new(
            Step::TargetUser,
            Kind::Io,
            format!(
                "the grant's user {} does not exist here",
                pam_openape::error::sanitize(&v.run_as, 64)
            ),
        )),
        Err(e) => Err(sys::target_denial(&e, &v.run_as)),
    }
}

fn primary_group(opts: &Opts, target: &User) -> Result<Gid, Denial> {
    let Some(g) = &opts.group else {
        return Ok(target.gid);
    };
    let gid = sys::group_by_name(g)
        .map_err(|e| Denial::new(Step::Usage, Kind::Usage, e))?
        .ok_or_else(|| Denial::new(Step::TargetUser, Kind::Io, format!("unknown group {g}")))?;
    let groups = sys::groups_of(target).map_err(|e| Denial::new(Step::TargetUser, Kind::Io, e))?;
    if !groups.contains(&gid) {
        return Err(Denial::refused(
            Step::TargetUser,
            format!(
                "{} is not a member of group {g}; -g may only pick one of the target user's groups",
                target.name
            ),
        ));
    }
    Ok(gid)
}

fn check_preserve_env(opts: &Opts, cfg: &Config) -> Result<(), Denial> {
    for name in &opts.preserve_env {
        if !env::preserve_allowed(name, &cfg.env_keep) {
            return Err(Denial::new(
                Step::Usage,
                Kind::Config,
                format!(
                    "--preserve-env: {name} is not allowed by [env] keep in {}",
                    cfg.path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Look the program up on secure_path only (never the caller's PATH). A
/// name with a slash must be absolute.
fn resolve_program(cmd: &[OsString], secure_path: &[PathBuf]) -> Result<PathBuf, Denial> {
    let Some(name) = cmd.first() else {
        return Err(Denial::new(Step::Usage, Kind::Usage, "no command given"));
    };
    let runnable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if name.as_bytes().contains(&b'/') {
        let p = Path::new(name);
        if !p.is_absolute() {
            return Err(Denial::new(
                Step::Usage,
                Kind::Usage,
                "the command must be a bare name (looked up on secure_path) or an absolute path",
            ));
        }
        if !p.exists() {
            return Err(Denial::new(
                Step::Exec,
                Kind::NotFound,
                format!("{}: command not found", p.display()),
            ));
        }
        if !runnable(p) {
            return Err(Denial::new(
                Step::Exec,
                Kind::Exec,
                format!("{}: not an executable file", p.display()),
            ));
        }
        return Ok(p.to_path_buf());
    }
    secure_path
        .iter()
        .map(|d| d.join(name))
        .find(|p| runnable(p))
        .ok_or_else(|| {
            Denial::new(
                Step::Exec,
                Kind::NotFound,
                format!(
                    "{}: command not found on secure_path",
                    OsStr::new(name).to_string_lossy()
                ),
            )
        })
}

/// Find the grant: flag, stdin, file, environment, then a terminal prompt.
fn read_grant(
    opts: &Opts,
    snapshot: &[(OsString, OsString)],
    caller: &sys::Caller,
) -> Result<String, Denial> {
    let too_big = || {
        Denial::refused(
            Step::Parse,
            format!("grant is larger than {MAX_TOKEN_LEN} bytes"),
        )
    };
    let from_env = |name: &str| {
        snapshot
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.to_str())
            .map(str::to_string)
    };
    let raw = match &opts.grant {
        Some(GrantSource::Arg(t)) => t.clone(),
        Some(GrantSource::Stdin) => read_bounded(std::io::stdin().lock()).map_err(|_| {
            Denial::new(
                Step::Grant,
                Kind::Io,
                "cannot read the grant from standard input",
            )
        })?,
        Some(GrantSource::File(path)) => sys::as_caller_fs(caller, || read_grant_file(path))
            .unwrap_or(Err(()))
            .map_err(|()| {
                Denial::new(
                    Step::Grant,
                    Kind::Io,
                    "cannot read the grant file (it must be a regular file you can read)",
                )
            })?,
        None => match from_env("ESCAPES_GRANT").or_else(|| from_env("OPENAPE_GRANT")) {
            Some(t) => t,
            None if opts.non_interactive => {
                return Err(Denial::new(
                    Step::Grant,
                    Kind::Usage,
                    "no grant given (use --grant-stdin, --grant-file or ESCAPES_GRANT) and -n forbids prompting",
                ));
            }
            None => sys::prompt_no_echo("OpenApe grant: ", MAX_TOKEN_LEN + 1).map_err(|e| {
                Denial::new(Step::Grant, Kind::Usage, format!("no grant given ({e})"))
            })?,
        },
    };
    // One trailing newline is dropped from stdin and files only (what
    // `echo`/editors add); a grant given any other way is taken as is.
    let from_stream = matches!(opts.grant, Some(GrantSource::Stdin | GrantSource::File(_)));
    let token = if from_stream {
        raw.strip_suffix('\n').unwrap_or(&raw)
    } else {
        raw.as_str()
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(too_big());
    }
    if token.is_empty() {
        return Err(Denial::new(Step::Grant, Kind::Usage, "the grant is empty"));
    }
    Ok(token.to_string())
}

/// Read at most 16 KiB + 1 byte (room for one newline); anything longer
/// is cut off there and then refused by the size check.
fn read_bounded(r: impl Read) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.take(MAX_TOKEN_LEN as u64 + 2).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_grant_file(path: &Path) -> Result<String, ()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|_| ())?;
    if !file.metadata().map_err(|_| ())?.is_file() {
        return Err(());
    }
    read_bounded(file).map_err(|_| ())
}

/// `escapes verify`: every local check with its verdict; nothing consumed,
/// nothing run, nothing logged.
fn dry_run(opts: &Opts, snapshot: &[(OsString, OsString)]) -> i32 {
    let cfg = match load_config(opts) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = (|| -> Result<(), Denial> {
        let caller = sys::caller().map_err(|e| Denial::new(Step::Caller, Kind::Io, e))?;
        let requested = requested_user(opts)?;
        // What a run would refuse before the grant is read, refused here too.
        check_preserve_env(opts, &cfg)?;
        let argv = utf8_argv(&opts.command)?;
        let token = read_grant(opts, snapshot, &caller)?;
        outln!(
            "checking grant {} against {}",
            fingerprint(&token),
            cfg.path.display()
        );
        let client = Client::new(cfg.http_timeout, cfg.ca_bundle.as_deref(), ROOT)?;
        let mut keys = KeyCache::new(&cfg);
        let req = Request {
            caller: &caller.name,
            target_user: requested.as_ref().map(|u| u.name.as_str()),
            argv: (!argv.is_empty()).then_some(argv.as_slice()),
        };
        let mut report = |step: Step, what: String| {
            outln!(
                "  ok    {:<12} {}",
                step.name(),
                pam_openape::error::sanitize(&what, 200)
            );
        };
        let verified = verify::check(
            &token,
            &req,
            &cfg,
            &mut keys,
            &client,
            now_unix(),
            &mut report,
        )?;
        let target = target_user(&verified, requested)?;
        outln!(
            "  ok    {:<12} {} (uid {})",
            "user",
            target.name,
            target.uid
        );
        if opts.group.is_some() {
            let gid = primary_group(opts, &target)?;
            outln!("  ok    {:<12} gid {gid}", "group");
        }
        if !opts.command.is_empty() {
            let program = resolve_program(&opts.command, &cfg.secure_path)?;
            outln!("  ok    {:<12} {}", "program", program.display());
        }
        outln!(
            "  skip  {:<12} dry run: nothing consumed, nothing run",
            "consume"
        );
        Ok(())
    })();
    match result {
        Ok(()) => {
            outln!("grant passes every local check");
            0
        }
        Err(d) => {
            outln!("  FAIL  {:<12} {}", d.step.name(), d.reason);
            say(&d.reason);
            d.exit_code()
        }
    }
}
