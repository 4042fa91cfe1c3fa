//! The `tokex` binary: CLI, logging set-up, exit codes. Everything else is
//! in the library.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokex::config::{self, Config};
use tokex::telemetry::{self, LogFormat};

/// Exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "tokex", version, about = "Token exchange gateway (RFC 8693)")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file.
    #[arg(short, long, env = "TOKEX_CONFIG", global = true, display_order = 100)]
    config: Option<PathBuf>,
    /// Log filter (EnvFilter syntax), e.g. `info` or `debug,hyper=info`
    /// [default: info; warn for `demo`].
    #[arg(long, env = "TOKEX_LOG", global = true, display_order = 100)]
    log: Option<String>,
    /// Log format.
    #[arg(long, env = "TOKEX_LOG_FORMAT", value_enum, default_value = "text", global = true, display_order = 100)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default): the proxy listener (`listen:`) and the
    /// check listeners another proxy asks (`authz:`), as configured.
    Run,
    /// Validate a configuration: exit 0, or print every error and exit 1.
    Check {
        /// Check structure and references only: do not read secret, key,
        /// certificate or actor-token files and do not require `${VAR}`s to
        /// be set (for CI, where those exist only in the pod).
        #[arg(long)]
        offline: bool,
        /// Also print, per route, the token request it will send (grant,
        /// every form parameter, client authentication with secrets
        /// redacted) and how the authorization server's refusals map.
        #[arg(long)]
        explain: bool,
    },
    /// Run the DEVELOPMENT authorization server alone (RFC 8693, client_credentials, Txn-Tokens,
    /// RFC 7523 jwt-bearer from trusted issuers, RFC 7009 revocation, JWKS, discovery); `dev-sts mint` gets a user token from a running one, `dev-sts
    /// revoke` revokes a subject there and pushes a Security Event Token to a receiver.
    DevSts(tokex::dev_sts::cli::DevStsArgs),
    /// Purge cached tokens of a running gateway (`POST /cache/purge` on its admin listener):
    /// by subject, route or subject token, or all; they are revoked at the AS when it has a
    /// revocation endpoint.
    Purge(tokex::revocation::cli::PurgeArgs),
    /// Walk through a token exchange: dev authorization server, echo backend and gateway, all on 127.0.0.1.
    Demo {
        /// Keep everything running afterwards and print curl commands.
        #[arg(long)]
        serve: bool,
    },
}

fn main() -> ExitCode {
    let code = command();
    // Log lines are written in batches: the last ones before leaving.
    telemetry::flush();
    code
}

fn command() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_answer(&e),
    };
    let log = |default: &str| cli.log.clone().unwrap_or_else(|| default.to_owned());
    let command = cli.command.unwrap_or(Command::Run);
    let path = match command {
        Command::DevSts(args) => return dev_sts(args, &log("info"), cli.log_format),
        Command::Demo { serve } => return demo(serve, &log("warn"), cli.log_format),
        Command::Purge(args) => return tokex::revocation::cli::run(args, cli.config.as_deref()),
        Command::Run | Command::Check { .. } => match cli.config {
            Some(p) => p,
            None => {
                eprintln!("error: no configuration file: pass -c FILE or set TOKEX_CONFIG");
                // `check` answers 0 or 1; `run` exits 64 on an unusable config.
                let code = if matches!(command, Command::Check { .. }) { 1 } else { EXIT_CONFIG };
                return ExitCode::from(code);
            }
        },
    };
    match command {
        Command::Check { offline, explain } => check(&path, (offline, explain), cli.log_format),
        _ => run(&path, &log("info"), cli.log_format),
    }
}

/// Help and version (exit 0) or a usage error (clap's exit 2, except
/// under `purge`, `dev-sts mint` and `dev-sts revoke`, whose exit codes are
/// 0 done, 1 refused, 64 bad flags: a script tells a mistyped flag from a refusal).
fn clap_answer(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let client = args.windows(2).any(|w| w[0] == "dev-sts" && (w[1] == "mint" || w[1] == "revoke"))
        || args.get(1).is_some_and(|a| a == "purge");
    let code = if client { EXIT_CONFIG } else { u8::try_from(e.exit_code()).unwrap_or(2) };
    ExitCode::from(code)
}

fn demo(serve: bool, log: &str, format: LogFormat) -> ExitCode {
    if let Err(e) = telemetry::init(log, format) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let mut signals = match tokex::app::StopSignals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let demo = match tokex::demo::start().await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = tokex::demo::walkthrough(&demo).await;
        let code = match result {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
        if serve && code == ExitCode::SUCCESS {
            println!("\n{}", tokex::demo::curl_help(&demo));
            signals.recv().await;
        }
        demo.stop().await;
        code
    })
}

fn dev_sts(args: tokex::dev_sts::cli::DevStsArgs, log: &str, format: LogFormat) -> ExitCode {
    if let Err(e) = telemetry::init(log, format) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    tokex::dev_sts::cli::run(args)
}

/// `tokex check`: every problem on its own line, as text or (with
/// `--log-format json`) one JSON object per line, then a summary line.
fn check(path: &Path, (offline, explain): (bool, bool), format: LogFormat) -> ExitCode {
    let out = Report { format, file: path.display().to_string() };
    let config = match config::load_with(path, config::Options { offline }) {
        Ok(c) => c,
        Err(e) => {
            for d in &e.errors {
                out.diagnostic("error", d);
            }
            out.summary(false, &format!("{} error(s)", e.errors.len()));
            return ExitCode::from(1);
        }
    };
    for w in &config.warnings {
        out.diagnostic("warning", w);
    }
    // Offline, nothing is read; otherwise build what `run` would build
    // (clients, secret and actor files, TLS files), without binding. The
    // first failure stops the build; it names its setting.
    let mut problems: Vec<(String, String)> = Vec::new();
    if !offline {
        if let Some(tls) = config.listen.as_ref().and_then(|l| l.tls.as_ref()) {
            if let Err(e) = tokex::proxy::tls::listener(tls, Default::default()) {
                problems.push(("listen.tls".into(), e));
            }
        }
        if let Some(shared) = &config.cache.shared {
            if let Err(e) = tokex::exchange::shared::SharedStore::check(shared) {
                problems.push(("cache.shared".into(), e));
            }
        }
        match tokex::app::build_runtime(&config, &tokex::metrics::Metrics::new(), None) {
            Err(tokex::app::StartError::At { path, message }) => problems.push((path, message)),
            Err(e) => problems.push((String::new(), e.to_string())),
            Ok(_) => {}
        }
    }
    let text = if problems.is_empty() { String::new() } else { std::fs::read_to_string(path).unwrap_or_default() };
    for (at, message) in &problems {
        let line = config::line_of(&text, at);
        out.diagnostic("error", &config::Diagnostic { path: at.clone(), line, message: message.clone() });
    }
    if explain {
        for e in tokex::exchange::explain::explain(&config) {
            match format {
                LogFormat::Text => e.lines.iter().for_each(|l| println!("{l}")),
                LogFormat::Json => {
                    println!("{}", serde_json::json!({"level": "info", "file": out.file, "explain": e.json}))
                }
            }
        }
    }
    let counts = format!(
        "{} routes, {} authorization servers, {} warnings{}",
        config.routes.len(),
        config.servers.len(),
        config.warnings.len(),
        if offline { "; offline: files and environment not read" } else { "" }
    );
    out.summary(problems.is_empty(), &counts);
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Where `check` writes (stdout), in the chosen format.
struct Report {
    format: LogFormat,
    file: String,
}

impl Report {
    fn diagnostic(&self, level: &str, d: &config::Diagnostic) {
        match self.format {
            LogFormat::Text => println!("{level}: {}", one_line(&d.to_string())),
            LogFormat::Json => println!(
                "{}",
                serde_json::json!({"level": level, "file": self.file, "path": d.path, "line": d.line, "message": d.message})
            ),
        }
    }

    fn summary(&self, ok: bool, detail: &str) {
        match self.format {
            LogFormat::Text if ok => println!("{}: ok ({detail})", self.file),
            LogFormat::Text => println!("{}: {detail}", self.file),
            LogFormat::Json => println!(
                "{}",
                serde_json::json!({"level": if ok { "info" } else { "error" }, "file": self.file, "result": if ok { "ok" } else { "invalid" }, "message": detail})
            ),
        }
    }
}

/// Text for one log line: line breaks become `; `.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

fn run(path: &Path, log: &str, format: LogFormat) -> ExitCode {
    if let Err(e) = telemetry::init(log, format) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            // One event per problem, in the log format asked for.
            for d in &e.errors {
                tracing::error!(path = %d.path, line = d.line, "config: {}", d.message);
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for w in &config.warnings {
        tracing::warn!(path = %w.path, line = w.line, "config: {}", w.message);
    }
    let workers = config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A current-thread runtime (no work-stealing machinery, no cross-thread
    // wake-ups). With more than one worker, it accepts and runs the control
    // plane, and each worker thread serves connections on a runtime of its
    // own (proxy/workers.rs).
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(path.to_owned(), config, workers))
}

async fn serve(path: PathBuf, config: Config, workers: usize) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the listeners announce themselves.
    let (Ok(mut stop), Ok(mut hup)) = (tokex::app::StopSignals::install(), signal(SignalKind::hangup())) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let running = match tokex::app::start_with_workers(config, workers).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // One edit is one reload: triggers (SIGHUP, the file's content changing)
    // are gathered for DEBOUNCE, the file is read once, and a SIGHUP that
    // follows a reload of the same content within a poll interval (the
    // edit's own SIGHUP, when the poll saw the edit first) is not repeated.
    const POLL: Duration = Duration::from_secs(2);
    const DEBOUNCE: Duration = Duration::from_millis(300);
    let mut loaded = file_digest(&path);
    let mut last_reload: Option<Instant> = None;
    let mut poll = tokio::time::interval(POLL);
    loop {
        let mut reason = tokio::select! {
            _ = stop.recv() => break,
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                if file_digest(&path) == loaded { continue; }
                "file change"
            }
        };
        let settle = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                _ = hup.recv() => reason = "SIGHUP",
                _ = stop.recv() => return shut_down(running, &mut stop).await,
            }
        }
        let digest = file_digest(&path);
        if reason == "SIGHUP" && digest == loaded && last_reload.is_some_and(|t| t.elapsed() < POLL + DEBOUNCE) {
            tracing::debug!("SIGHUP right after a reload of the same file: nothing more to do");
            continue;
        }
        loaded = digest;
        last_reload = Some(Instant::now());
        running.reload(&path, reason);
    }
    shut_down(running, &mut stop).await
}

async fn shut_down(running: tokex::app::Running, stop: &mut tokex::app::StopSignals) -> ExitCode {
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        _ = running.shutdown() => {}
        _ = stop.recv() => { tracing::warn!("second signal: exiting now"); return ExitCode::FAILURE; }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// What the configuration file holds now (a changed mtime alone is not a change).
fn file_digest(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    std::fs::read(path).ok().map(|b| sha2::Sha256::digest(&b).into())
}
