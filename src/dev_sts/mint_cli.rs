//! `tokex dev-sts mint`: asks a running development authorization server
//! for a user token (`POST /mint`, see `mint.rs`) and prints only the token,
//! so that `TOKEN=$(tokex dev-sts mint ...)` works.

use std::process::ExitCode;
use std::time::Duration;

use super::endpoint::Params;
use super::mint::MintRequest;
use super::outbound::{post_form, sts_endpoint};
use super::MAX_MINT_LIFETIME;

/// Exit code for unusable flags (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// Flags of `tokex dev-sts mint` (no `Debug`: the secret).
#[derive(clap::Args)]
pub struct MintArgs {
    /// The dev-sts: its issuer URL (or its /mint or /token URL).
    #[arg(long, default_value = "http://127.0.0.1:9400")]
    pub url: String,
    /// A client registered at the dev-sts (authenticates with client_secret_basic).
    #[arg(long, default_value = "dev")]
    pub client_id: String,
    /// That client's secret.
    #[arg(long, env = "TOKEX_DEV_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
    /// `sub` of the token: the user.
    #[arg(long)]
    pub sub: String,
    /// `aud`; repeatable, at least one (e.g. what the gateway's inbound.jwt.audiences expects).
    #[arg(long, required = true, value_name = "AUD")]
    pub aud: Vec<String>,
    /// Scopes, space-separated; repeatable.
    #[arg(long, value_name = "SCOPES")]
    pub scope: Vec<String>,
    /// Lifetime, from 1s to 24h [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
    /// An actor's `sub`: the token is already delegated (`act: {sub}`).
    #[arg(long, value_name = "SUB")]
    pub act: Option<String>,
    /// Bind the token to a DPoP key (`cnf.jkt`, RFC 9449): the key's RFC 7638 SHA-256 thumbprint.
    #[arg(long, value_name = "THUMBPRINT")]
    pub jkt: Option<String>,
}

/// Time allowed for the whole mint request.
const MINT_TIMEOUT: Duration = Duration::from_secs(10);

/// `tokex dev-sts mint`: only the token goes to stdout (exit 0); a refusal
/// or an unreachable dev-sts exits 1, unusable flags 64, messages on stderr.
pub fn mint(args: MintArgs) -> ExitCode {
    let (endpoint, form) = match mint_form(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let minted = crate::oneshot::block_on(request_mint(&endpoint, &args.client_id, &args.client_secret, form));
    let minted = match minted {
        Ok(m) => m,
        Err(code) => return code,
    };
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `/mint` URL and the form body, checked as the dev-sts checks it.
fn mint_form(args: &MintArgs) -> Result<(url::Url, String), String> {
    let endpoint = mint_endpoint(&args.url)?;
    if args.client_id.is_empty() {
        return Err("--client-id must not be empty".into());
    }
    if args.client_secret.is_empty() {
        return Err("--client-secret (or TOKEX_DEV_CLIENT_SECRET) must not be empty".into());
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("sub", &args.sub);
    for a in &args.aud {
        form.append_pair("aud", a);
    }
    let scope = args.scope.join(" ");
    if !scope.trim().is_empty() {
        form.append_pair("scope", &scope);
    }
    if let Some(d) = args.expires_in {
        if d.subsec_nanos() != 0 || d.is_zero() || d > MAX_MINT_LIFETIME {
            return Err("--expires-in must be whole seconds from 1s to 24h".into());
        }
        form.append_pair("expires_in", &d.as_secs().to_string());
    }
    if let Some(a) = &args.act {
        form.append_pair("act", a);
    }
    if let Some(j) = &args.jkt {
        form.append_pair("jkt", j);
    }
    let body = form.finish();
    MintRequest::from_params(&Params::parse(body.as_bytes())).map_err(|e| format!("bad flags: {}", e.description()))?;
    Ok((endpoint, body))
}

/// `--url`: the issuer URL, or its `/mint` URL (or its `/token` URL,
/// which is what a gateway configuration names).
fn mint_endpoint(url: &str) -> Result<url::Url, String> {
    sts_endpoint("--url", url, "/mint")
}

/// Posts the form with client_secret_basic and returns the token, or what
/// to tell the user.
async fn request_mint(endpoint: &url::Url, id: &str, secret: &str, form: String) -> Result<String, String> {
    let answer = post_form(endpoint, id, secret, form, MINT_TIMEOUT).await?;
    if !answer.status.is_success() {
        return Err(answer.refusal(endpoint, "--url"));
    }
    answer
        .field("access_token")
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .ok_or_else(|| format!("{endpoint} answered {} without an access_token: is it a tokex dev-sts?", answer.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_url_is_the_issuer_or_an_endpoint() {
        for (given, want) in [
            ("http://127.0.0.1:9400", "http://127.0.0.1:9400/mint"),
            ("http://127.0.0.1:9400/", "http://127.0.0.1:9400/mint"),
            ("http://127.0.0.1:9400/mint", "http://127.0.0.1:9400/mint"),
            ("http://127.0.0.1:9400/token", "http://127.0.0.1:9400/mint"),
            ("https://sts.example/dev/", "https://sts.example/dev/mint"),
            ("https://sts.example/dev/token", "https://sts.example/dev/mint"),
        ] {
            assert_eq!(mint_endpoint(given).unwrap().as_str(), want, "{given}");
        }
        for bad in ["ftp://x", "http://x/?a=b", "http://x/#f", "http://u:p@x/", "not a url"] {
            assert!(mint_endpoint(bad).is_err(), "{bad}");
        }
    }

    fn mint_args() -> MintArgs {
        MintArgs {
            url: "http://127.0.0.1:9400".into(),
            client_id: "dev".into(),
            client_secret: "s".into(),
            sub: "alice".into(),
            aud: vec!["tokex".into(), "orders-api".into()],
            scope: vec!["orders:read".into(), "orders:write billing:read".into()],
            expires_in: Some(Duration::from_secs(600)),
            act: Some("agent-7".into()),
            jkt: None,
        }
    }

    #[test]
    fn mint_flags_make_the_form() {
        let (url, body) = mint_form(&mint_args()).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9400/mint");
        assert_eq!(
            body,
            "sub=alice&aud=tokex&aud=orders-api&scope=orders%3Aread+orders%3Awrite+billing%3Aread&expires_in=600&act=agent-7"
        );
        let bare = MintArgs { scope: vec![], expires_in: None, act: None, ..mint_args() };
        assert_eq!(mint_form(&bare).unwrap().1, "sub=alice&aud=tokex&aud=orders-api");
        let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let bound = MintArgs { jkt: Some(jkt.into()), ..bare };
        assert_eq!(mint_form(&bound).unwrap().1, format!("sub=alice&aud=tokex&aud=orders-api&jkt={jkt}"));
    }

    #[test]
    fn bad_mint_flags_are_refused_before_sending() {
        let refused = |a: MintArgs| mint_form(&a).err().unwrap_or_else(|| panic!("accepted"));
        for d in [Duration::from_millis(1500), Duration::ZERO, Duration::from_secs(86_401)] {
            assert!(refused(MintArgs { expires_in: Some(d), ..mint_args() }).contains("--expires-in"));
        }
        assert!(refused(MintArgs { client_secret: String::new(), ..mint_args() }).contains("--client-secret"));
        assert!(refused(MintArgs { client_id: String::new(), ..mint_args() }).contains("--client-id"));
        assert!(refused(MintArgs { sub: String::new(), ..mint_args() }).contains("sub is required"));
        assert!(refused(MintArgs { sub: "a\u{7}".into(), ..mint_args() }).contains("sub"));
        assert!(refused(MintArgs { aud: vec![" ".into()], ..mint_args() }).contains("aud"));
        assert!(refused(MintArgs { jkt: Some("not-a-thumbprint".into()), ..mint_args() }).contains("jkt"));
        assert!(refused(MintArgs { scope: vec!["a\"b".into()], ..mint_args() }).contains("scope"));
        assert!(refused(MintArgs { url: "ftp://x".into(), ..mint_args() }).contains("--url"));
        let ok = mint_form(&MintArgs { expires_in: Some(Duration::from_secs(86_400)), ..mint_args() });
        assert!(ok.is_ok());
    }
}
