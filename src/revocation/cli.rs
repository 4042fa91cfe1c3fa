//! `tokex purge`: asks a running gateway's admin listener to purge cached
//! tokens (`POST /cache/purge`) and prints what it removed. Where the admin
//! listener is and the token it wants come from the configuration
//! (`admin.address`, `admin.token_file`) or from the flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};

/// Exit code for unusable flags or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Time allowed for the whole request (a purge of everything walks the store).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Flags of `tokex purge`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["sub", "email", "route", "token_sha256", "all"])))]
pub struct PurgeArgs {
    /// Purge the entries exchanged for this subject (`sub`).
    #[arg(long)]
    pub sub: Option<String>,
    /// Purge the entries of the subject with this `email` (when its token carries one).
    #[arg(long)]
    pub email: Option<String>,
    /// Purge one route's entries.
    #[arg(long)]
    pub route: Option<String>,
    /// Purge the entries of one subject token, named by its SHA-256 (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub token_sha256: Option<String>,
    /// Purge everything.
    #[arg(long)]
    pub all: bool,
    /// The admin listener, e.g. `http://127.0.0.1:9901` [default: from `admin.address` of -c].
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// The admin token file [default: `admin.token_file` of -c].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// `tokex purge`: exit 0 when the gateway purged (the counts on stdout), 1
/// when it refused or could not be reached, 64 for unusable flags.
pub fn run(args: PurgeArgs, config: Option<&Path>) -> ExitCode {
    let (url, token, body) = match request(&args, config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = match crate::oneshot::block_on(send(&url, &token, body)) {
        Ok(o) => o,
        Err(code) => return code,
    };
    match outcome {
        Ok(answer) => {
            let n = |k: &str| answer.get(k).and_then(Value::as_u64);
            let shared = n("shared").map_or_else(|| "-".to_owned(), |s| s.to_string());
            println!(
                "purged {} cached token(s); introspection answers: {}; shared store keys: {shared}",
                n("purged").unwrap_or(0),
                n("introspection").unwrap_or(0)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The purge URL, the admin token and the JSON body.
fn request(args: &PurgeArgs, config: Option<&Path>) -> Result<(url::Url, String, Value), String> {
    let loaded = match (config, &args.admin, &args.token_file) {
        (_, Some(_), Some(_)) => None,
        (Some(path), _, _) => Some(crate::config::load(path).map_err(|e| format!("{}: {e}", path.display()))?),
        (None, _, _) => return Err("pass -c FILE (or TOKEX_CONFIG), or both --admin and --token-file".into()),
    };
    let base = match (&args.admin, loaded.as_ref().and_then(|c| c.admin)) {
        (Some(u), _) => u.clone(),
        (None, Some(addr)) => format!("http://{}", reachable(addr)),
        (None, None) => return Err("the configuration has no admin.address (or pass --admin)".into()),
    };
    let token_file = match (&args.token_file, loaded.as_ref().and_then(|c| c.admin_token.clone())) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => return Err("the configuration has no admin.token_file (or pass --token-file)".into()),
    };
    let source = crate::config::SecretSource::File(token_file.clone());
    let token = crate::secret::Secret::from_source(&source)
        .get()
        .map_err(|e| format!("admin token {}: {e}", token_file.display()))?
        .expose()
        .to_owned();
    let mut url = url::Url::parse(&base).map_err(|e| format!("--admin {base}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("--admin {base}: an http(s) URL"));
    }
    // Errors print the URL: it carries no credentials (the token comes from the file).
    if !url.username().is_empty() || url.password().is_some() {
        return Err("--admin: no credentials in the URL (the admin token comes from the token file)".into());
    }
    url.set_path("/cache/purge");
    if args.token_sha256.as_deref().is_some_and(|h| super::Selector::token_hex(h).is_none()) {
        return Err("--token-sha256: the SHA-256 of the subject token, 64 hex digits".into());
    }
    let body = match args {
        PurgeArgs { sub: Some(s), .. } => json!({ "sub": s }),
        PurgeArgs { email: Some(e), .. } => json!({ "email": e }),
        PurgeArgs { route: Some(r), .. } => json!({ "route": r }),
        PurgeArgs { token_sha256: Some(h), .. } => json!({ "token_sha256": h }),
        _ => json!({}),
    };
    Ok((url, token, body))
}

/// An address a client can connect to: an unspecified bind address means this host.
fn reachable(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        a => a.to_string(),
    }
}

async fn send(url: &url::Url, token: &str, body: Value) -> Result<Value, String> {
    let tls = crate::exchange::client::tls_config(None)?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .post(url.clone())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::telemetry::error_chain(&e)))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER_BYTES)]).into_owned();
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match status {
        200 => Ok(answer),
        401 => Err(format!("{url}: 401: the admin token was refused")),
        404 if answer.get("error").and_then(Value::as_str) == Some("not_found") => {
            Err(format!("{url}: 404: purging is disabled (the gateway has no admin.token_file)"))
        }
        _ => {
            let why = answer.get("error_description").and_then(Value::as_str).unwrap_or(text.trim());
            Err(format!("{url}: {status}: {}", why.chars().take(300).collect::<String>()))
        }
    }
}
