//! `tokex dev-sts`: runs the development authorization server alone, prints
//! where it listens and ready-to-paste commands, and stops on SIGINT/SIGTERM.
//! `tokex dev-sts mint` asks a running one for a user token (`POST /mint`)
//! and prints only the token; `tokex dev-sts revoke` asks it to revoke a
//! subject and push a Security Event Token to a receiver (`POST /ssf/emit`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;

use super::mint_cli::{mint, MintArgs};
use super::revoke_cli::{revoke, RevokeArgs};
use super::{start, ClientSpec, DevStsConfig, TrustedIssuer};

/// Exit code for unusable flags or files (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Flags of `tokex dev-sts` (no `Debug`: `--client` values hold secrets).
/// Without a subcommand it runs the server.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevStsArgs {
    #[command(subcommand)]
    pub command: Option<DevStsCommand>,
    /// Address to listen on. DEVELOPMENT ONLY: keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub listen: SocketAddr,
    /// `iss` of issued tokens and base of the advertised endpoints [default: http://<listen address>].
    #[arg(long)]
    pub issuer: Option<String>,
    /// A client, repeatable: `id=ID,secret=SECRET,audiences=A|B,scopes=S1|S2`
    /// (or `public_key_file=PEM` for private_key_jwt, which Txn-Token requests need; `*` allows any
    /// audience/scope).
    #[arg(long = "client", value_name = "SPEC")]
    pub clients: Vec<String>,
    /// A YAML file of clients (`clients: [{id, secret, public_key_file, audiences, scopes}]`).
    #[arg(long, value_name = "FILE")]
    pub clients_file: Option<PathBuf>,
    /// Lifetime of issued tokens.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub expires_in: Duration,
    /// PKCS#8 PEM signing key (EC P-256/P-384 or RSA) [default: a fresh P-256 key per start].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Demand DPoP nonces (RFC 9449 §8): a token request whose DPoP proof lacks the current nonce
    /// is answered 400 use_dpop_nonce with a DPoP-Nonce header.
    #[arg(long)]
    pub dpop_nonce: bool,
    /// Accept JWTs of this issuer as jwt-bearer grants (RFC 7523; identity chaining), repeatable:
    /// `ISSUER=JWKS_URL`, both absolute http(s) URLs, e.g.
    /// `http://127.0.0.1:9400=http://127.0.0.1:9400/jwks.json`. The assertion's `iss` must equal
    /// ISSUER exactly; its keys are fetched from JWKS_URL. No issuer is trusted by default, this
    /// server's own neither (list it to trust it).
    #[arg(long = "trust-issuer", value_name = "ISSUER=JWKS_URL")]
    pub trust_issuers: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum DevStsCommand {
    /// Mint a user (subject) token at a running dev-sts (POST /mint) and print only the token.
    ///
    /// For hand testing: `TOKEN=$(tokex dev-sts mint --client-id ID --sub alice --aud tokex)`
    /// with the client's secret in TOKEX_DEV_CLIENT_SECRET. Any client registered at the
    /// dev-sts may mint a token for any sub, audience and scope. Exit 0 with the token on
    /// stdout, 1 when the dev-sts refuses or cannot be reached (its error on stderr), 64 for
    /// bad flags.
    Mint(Box<MintArgs>),
    /// Revoke a subject at a running dev-sts and push a Security Event Token about it to a receiver.
    ///
    /// The dev-sts (POST /ssf/emit) refuses later token exchanges of the subject's tokens issued
    /// until now, and pushes a signed SET (RFC 8417: CAEP session-revoked by default, or
    /// another CAEP / RISC event) to --push with Content-Type application/secevent+jwt
    /// (RFC 8935), e.g. `tokex dev-sts revoke --client-id ID --sub alice --audience tokex
    /// --push http://127.0.0.1:8080/.well-known/ssf/push`. Exit 0 when the receiver answered
    /// 202 (one line on stdout), 1 when the receiver or the dev-sts refused or could not be
    /// reached (why on stderr), 64 for bad flags.
    Revoke(Box<RevokeArgs>),
}

/// Runs the server until SIGINT or SIGTERM, or the subcommand. Logging
/// must already be set up.
pub fn run(mut args: DevStsArgs) -> ExitCode {
    match args.command.take() {
        Some(DevStsCommand::Mint(m)) => return mint(*m),
        Some(DevStsCommand::Revoke(r)) => return revoke(*r),
        None => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run_async(args))
}

/// Where a client's secret came from, which decides whether the hint
/// prints it: flags and generated secrets are already on the terminal.
enum Origin {
    Flag,
    File,
    Generated,
}

async fn run_async(args: DevStsArgs) -> ExitCode {
    // Before anything is printed: a signal right after the banner must stop us cleanly.
    let mut signals = match crate::app::StopSignals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut clients: Vec<(ClientSpec, Origin)> = Vec::new();
    for flag in &args.clients {
        match ClientSpec::parse_flag(flag) {
            Ok(c) => clients.push((c, Origin::Flag)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if let Some(path) = &args.clients_file {
        match ClientSpec::load_file(path) {
            Ok(list) => clients.extend(list.into_iter().map(|c| (c, Origin::File))),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let mut trusted_issuers = Vec::new();
    for flag in &args.trust_issuers {
        match TrustedIssuer::parse_flag(flag) {
            Ok(t) => trusted_issuers.push(t),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if clients.is_empty() {
        let secret: String = std::iter::repeat_with(fastrand::alphanumeric).take(24).collect();
        let any = vec!["*".to_owned()];
        let dev = ClientSpec {
            id: "dev".into(),
            secret: Some(secret),
            audiences: any.clone(),
            scopes: any,
            ..Default::default()
        };
        clients.push((dev, Origin::Generated));
        eprintln!("note: no --client given; created client `dev` (any audience, any scope) with a random secret");
    }
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "\n!!! WARNING: the DEVELOPMENT authorization server is binding {}, a non-loopback address.",
            args.listen
        );
        eprintln!(
            "!!! Anyone who can reach it can obtain tokens, and any registered client can mint a user token for\n!!! any subject at /mint. It is not meant for real use; prefer 127.0.0.1.\n"
        );
    }
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let hint = curl_hint(&clients);
    let mint_hint = mint_hint(&clients);
    let summary: Vec<String> = clients
        .iter()
        .map(|(c, _)| {
            let methods = match (c.secret.is_some(), c.public_key_pem.is_some()) {
                (true, true) => "client_secret, private_key_jwt",
                (true, false) => "client_secret",
                _ => "private_key_jwt",
            };
            format!("{} ({methods})", c.id)
        })
        .collect();
    let cfg = DevStsConfig {
        issuer: args.issuer,
        clients: clients.into_iter().map(|(c, _)| c).collect(),
        expires_in: args.expires_in,
        key_file: args.key_file,
        trusted_issuers: trusted_issuers.clone(),
    };
    let sts = match start(cfg, listener).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    sts.set_dpop_nonce(args.dpop_nonce);
    let issuer = sts.issuer().to_owned();
    println!("tokex dev-sts: DEVELOPMENT authorization server listening on {}", sts.addr());
    println!("  issuer          {issuer}");
    println!("  token endpoint  {}", sts.token_endpoint());
    println!("  jwks            {}", sts.jwks_uri());
    println!("  revocation      {}", sts.revocation_endpoint());
    println!("  metadata        {issuer}/.well-known/oauth-authorization-server");
    println!("  clients         {}", summary.join("; "));
    println!("  token lifetime  {}", humantime::format_duration(args.expires_in));
    println!(
        "  txn tokens      token exchange with requested_token_type={}, for private_key_jwt clients",
        super::TXN_TOKEN_TYPE
    );
    let trusted: Vec<&str> = trusted_issuers.iter().map(|t| t.issuer.as_str()).collect();
    if trusted.is_empty() {
        println!("  jwt-bearer      off (no --trust-issuer)");
    } else {
        println!("  jwt-bearer      assertions of {}", trusted.join(", "));
    }
    println!(
        "  dpop            proofs at /token bind the token to their key ({}){}",
        super::dpop::signing_alg_names().join(" "),
        if args.dpop_nonce { "; nonces demanded" } else { "" }
    );
    if let Some(hint) = hint {
        println!("try:\n  {hint} {}", sts.token_endpoint());
    }
    if let Some(hint) = mint_hint {
        println!("{}", hint.render(&issuer));
    }

    signals.recv().await;
    tracing::info!("dev-sts: shutting down");
    sts.shutdown().await;
    ExitCode::SUCCESS
}

/// A `curl` for client_credentials with the first client that has a
/// secret (without the URL).
fn curl_hint(clients: &[(ClientSpec, Origin)]) -> Option<String> {
    let (client, origin) = clients.iter().find(|(c, _)| c.secret.is_some())?;
    let mut cmd = curl_with_credentials(client, origin);
    cmd.push_str(" -d grant_type=client_credentials");
    let scopes: Vec<&str> = client.scopes.iter().map(String::as_str).filter(|s| *s != "*").collect();
    if !scopes.is_empty() {
        cmd.push_str(&format!(" --data-urlencode {}", shell_quote(&format!("scope={}", scopes.join(" ")))));
    }
    Some(cmd)
}

/// `curl -s` and the client's credentials; a secret from a file is not
/// printed.
fn curl_with_credentials(client: &ClientSpec, origin: &Origin) -> String {
    let secret = match origin {
        Origin::Flag | Origin::Generated => client.secret.clone().unwrap_or_default(),
        Origin::File => "<secret from the clients file>".to_owned(),
    };
    let mut cmd = String::from("curl -s");
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if plain(&client.id) && plain(&secret) {
        // client_secret_basic; curl does not form-encode, so only for plain values.
        cmd.push_str(&format!(" -u {}", shell_quote(&format!("{}:{secret}", client.id))));
    } else {
        cmd.push_str(&format!(" --data-urlencode {}", shell_quote(&format!("client_id={}", client.id))));
        cmd.push_str(&format!(" --data-urlencode {}", shell_quote(&format!("client_secret={secret}"))));
    }
    cmd
}

/// The audience of the sample user token: the demo's, and
/// `examples/dev/config.yaml`'s `inbound.jwt.audiences`.
const HINT_AUDIENCE: &str = "tokex";

/// Ready-to-paste commands that mint a user token (`curl` and
/// `tokex dev-sts mint`), with the first client that has a secret.
struct MintHint {
    /// Without the URL.
    curl: String,
    /// Without `--url`; `--client-secret` only when it may be printed.
    command: String,
    secret_from_file: bool,
}

impl MintHint {
    fn render(&self, issuer: &str) -> String {
        let mut out = String::from(
            "mint a user token for hand testing (choose sub, aud, scope; lifetime 1 h unless -d expires_in=SECONDS):\n",
        );
        out.push_str(&format!("  {} {issuer}/mint\n", self.curl));
        if self.secret_from_file {
            out.push_str("  (set TOKEX_DEV_CLIENT_SECRET to the client's secret from the clients file)\n");
        }
        out.push_str(&format!("  TOKEN=$(tokex dev-sts mint --url {} {})", shell_quote(issuer), self.command));
        out
    }
}

fn mint_hint(clients: &[(ClientSpec, Origin)]) -> Option<MintHint> {
    let (client, origin) = clients.iter().find(|(c, _)| c.secret.is_some())?;
    let scopes: Vec<&str> = client.scopes.iter().map(String::as_str).filter(|s| *s != "*").collect();
    let scope = scopes.join(" ");
    let mut curl = curl_with_credentials(client, origin);
    curl.push_str(&format!(" -d sub=alice -d aud={HINT_AUDIENCE}"));
    if !scope.is_empty() {
        curl.push_str(&format!(" --data-urlencode {}", shell_quote(&format!("scope={scope}"))));
    }
    let mut command = format!("--client-id {}", shell_quote(&client.id));
    let secret_from_file = matches!(origin, Origin::File);
    if !secret_from_file {
        if let Some(secret) = &client.secret {
            command.push_str(&format!(" --client-secret {}", shell_quote(secret)));
        }
    }
    command.push_str(&format!(" --sub alice --aud {HINT_AUDIENCE}"));
    if !scope.is_empty() {
        command.push_str(&format!(" --scope {}", shell_quote(&scope)));
    }
    Some(MintHint { curl, command, secret_from_file })
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevStsArgs,
    }

    #[test]
    fn trust_issuer_is_repeatable_and_documented() {
        let cli = Cli::try_parse_from([
            "dev-sts",
            "--trust-issuer",
            "http://127.0.0.1:9400=http://127.0.0.1:9400/jwks.json",
            "--trust-issuer",
            "https://as.example=https://as.example/keys",
        ])
        .unwrap();
        let parsed: Vec<TrustedIssuer> =
            cli.args.trust_issuers.iter().map(|f| TrustedIssuer::parse_flag(f).unwrap()).collect();
        assert_eq!(parsed[0].jwks_uri, "http://127.0.0.1:9400/jwks.json");
        assert_eq!(parsed[1].issuer, "https://as.example");
        assert!(Cli::try_parse_from(["dev-sts"]).unwrap().args.trust_issuers.is_empty());
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--trust-issuer <ISSUER=JWKS_URL>"), "{help}");
        assert!(help.contains("this server's own neither"), "{help}");
    }

    #[test]
    fn curl_hint_uses_basic_for_plain_credentials() {
        let c = ClientSpec::parse_flag("id=demo,secret=demo-secret,scopes=orders:read|billing:read").unwrap();
        let hint = curl_hint(&[(c, Origin::Flag)]).unwrap();
        assert_eq!(
            hint,
            "curl -s -u 'demo:demo-secret' -d grant_type=client_credentials --data-urlencode 'scope=orders:read billing:read'"
        );
    }

    #[test]
    fn curl_hint_posts_odd_credentials_and_hides_file_secrets() {
        let c = ClientSpec::parse_flag("id=demo,secret=it's:odd").unwrap();
        let hint = curl_hint(&[(c.clone(), Origin::Flag)]).unwrap();
        assert!(hint.contains(r"--data-urlencode 'client_secret=it'\''s:odd'"), "{hint}");
        let hint = curl_hint(&[(c, Origin::File)]).unwrap();
        assert!(!hint.contains("odd"), "{hint}");
        assert!(curl_hint(&[]).is_none());
    }

    #[test]
    fn mint_hint_prints_curl_and_the_command() {
        let c =
            ClientSpec::parse_flag("id=tokex,secret=dev-secret,audiences=orders-api,scopes=orders:read|orders:write")
                .unwrap();
        let text = mint_hint(&[(c, Origin::Flag)]).unwrap().render("http://127.0.0.1:9400");
        assert!(text.contains(
            "  curl -s -u 'tokex:dev-secret' -d sub=alice -d aud=tokex --data-urlencode 'scope=orders:read orders:write' http://127.0.0.1:9400/mint\n"
        ), "{text}");
        assert!(text.ends_with(
            "  TOKEN=$(tokex dev-sts mint --url 'http://127.0.0.1:9400' --client-id 'tokex' --client-secret 'dev-secret' --sub alice --aud tokex --scope 'orders:read orders:write')"
        ), "{text}");
    }

    #[test]
    fn mint_hint_never_prints_a_secret_from_a_file() {
        let c = ClientSpec::parse_flag("id=gw,secret=from-the-file,scopes=*").unwrap();
        let text = mint_hint(&[(c, Origin::File)]).unwrap().render("http://127.0.0.1:9400");
        assert!(!text.contains("from-the-file"), "{text}");
        assert!(!text.contains("--client-secret"), "{text}");
        assert!(text.contains("set TOKEX_DEV_CLIENT_SECRET"), "{text}");
        assert!(!text.contains("--scope") && !text.contains("scope="), "a wildcard is no sample scope: {text}");
        assert!(mint_hint(&[]).is_none());
    }
}
