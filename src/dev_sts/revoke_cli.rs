//! `tokex dev-sts revoke`: asks a running development authorization server
//! to revoke a subject and push a Security Event Token about it to a
//! receiver (`POST /ssf/emit`, see `emit.rs`), and says in one line what
//! the receiver answered.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::emit::{EmitRequest, PUSH_TIMEOUT};
use super::endpoint::Params;
use super::outbound::{post_form, printable, sts_endpoint};
use super::{SecurityEvent, SubjectFormat};

/// Exit code for unusable flags (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Time allowed for the whole request: the dev-sts waits for the receiver.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(PUSH_TIMEOUT.as_secs() + 10);

/// Flags of `tokex dev-sts revoke` (no `Debug`: the secret).
#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The dev-sts: its issuer URL (or its /token URL).
    #[arg(long = "sts", visible_alias = "url", value_name = "URL", default_value = "http://127.0.0.1:9400")]
    pub sts: String,
    /// A client registered at the dev-sts (authenticates with client_secret_basic).
    #[arg(long, default_value = "dev")]
    pub client_id: String,
    /// That client's secret.
    #[arg(long, env = "TOKEX_DEV_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
    /// The subject to revoke, and the `sub_id` of the event.
    #[arg(long)]
    pub sub: String,
    /// `aud` of the event: the receiver's audience (e.g. the gateway's revocation.ssf.audience).
    #[arg(long)]
    pub audience: String,
    /// The receiver's RFC 8935 push endpoint, e.g. http://127.0.0.1:8080/.well-known/ssf/push.
    #[arg(long, value_name = "URL")]
    pub push: String,
    /// The event.
    #[arg(long, value_enum, default_value_t = SecurityEvent::SessionRevoked)]
    pub event: SecurityEvent,
    /// How `sub_id` names the subject (RFC 9493).
    #[arg(long, value_enum, default_value_t = SubjectFormat::IssSub)]
    pub format: SubjectFormat,
}

/// `tokex dev-sts revoke`: exit 0 when the receiver answered 202 (the line
/// on stdout); 1 when it refused or could not be reached, or the dev-sts
/// refused or could not be reached (on stderr); 64 for unusable flags.
pub fn revoke(args: RevokeArgs) -> ExitCode {
    let (endpoint, form) = match emit_form(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome =
        crate::oneshot::block_on(post_form(&endpoint, &args.client_id, &args.client_secret, form, REVOKE_TIMEOUT));
    let outcome = match outcome {
        Ok(o) => o,
        Err(code) => return code,
    };
    let what = format!("{} for {}", args.event, printable(&args.sub));
    let answer = match outcome {
        Ok(a) if a.status.is_success() => a,
        Ok(a) => {
            eprintln!("error: {}", a.refusal(&endpoint, "--sts"));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match report(answer.json.as_ref()) {
        Ok(status) => {
            println!("pushed {what}: receiver answered {status}");
            ExitCode::SUCCESS
        }
        Err(None) => {
            eprintln!("error: {endpoint} answered {} without a push report: is it a tokex dev-sts?", answer.status);
            ExitCode::FAILURE
        }
        Err(Some(why)) => {
            eprintln!("error: {what} not pushed: {why} (the dev-sts has revoked the subject all the same)");
            ExitCode::FAILURE
        }
    }
}

/// The receiver's status when the push succeeded; otherwise why not, or
/// `None` when the answer is not a push report.
fn report(json: Option<&Value>) -> Result<u16, Option<String>> {
    let json = json.ok_or(None)?;
    let pushed = json.get("pushed").and_then(Value::as_bool).ok_or(None)?;
    let status = json.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
    let error = json.get("error").and_then(Value::as_str).map(printable);
    match (pushed, status) {
        (true, Some(s)) => Ok(s),
        (_, Some(s)) => Err(Some(format!("receiver answered {s}: {}", error.unwrap_or_else(|| "-".into())))),
        (_, None) => Err(Some(error.unwrap_or_else(|| "the receiver could not be reached".into()))),
    }
}

/// The `/ssf/emit` URL and the form body, checked as the dev-sts checks it.
fn emit_form(args: &RevokeArgs) -> Result<(url::Url, String), String> {
    let endpoint = sts_endpoint("--sts", &args.sts, "/ssf/emit")?;
    if args.client_id.is_empty() {
        return Err("--client-id must not be empty".into());
    }
    if args.client_secret.is_empty() {
        return Err("--client-secret (or TOKEX_DEV_CLIENT_SECRET) must not be empty".into());
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("sub", &args.sub)
        .append_pair("event", args.event.name())
        .append_pair("audience", &args.audience)
        .append_pair("format", args.format.name())
        .append_pair("push", &args.push)
        .finish();
    EmitRequest::from_params(&Params::parse(body.as_bytes())).map_err(|e| format!("bad flags: {}", e.description()))?;
    Ok((endpoint, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args() -> RevokeArgs {
        RevokeArgs {
            sts: "http://127.0.0.1:9400/token".into(),
            client_id: "dev".into(),
            client_secret: "s".into(),
            sub: "alice".into(),
            audience: "tokex".into(),
            push: "http://127.0.0.1:8080/.well-known/ssf/push".into(),
            event: SecurityEvent::CredentialChange,
            format: SubjectFormat::Email,
        }
    }

    #[test]
    fn flags_make_the_form() {
        let (url, body) = emit_form(&args()).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9400/ssf/emit");
        assert_eq!(
            body,
            "sub=alice&event=credential-change&audience=tokex&format=email&push=http%3A%2F%2F127.0.0.1%3A8080%2F.well-known%2Fssf%2Fpush"
        );
    }

    #[test]
    fn bad_flags_are_refused_before_sending() {
        let refused = |a: RevokeArgs| emit_form(&a).err().unwrap_or_else(|| panic!("accepted"));
        assert!(refused(RevokeArgs { push: "ftp://x/".into(), ..args() }).contains("push"));
        assert!(refused(RevokeArgs { push: String::new(), ..args() }).contains("push"));
        assert!(refused(RevokeArgs { sub: String::new(), ..args() }).contains("sub is required"));
        assert!(refused(RevokeArgs { audience: "a b".into(), ..args() }).contains("audience"));
        assert!(refused(RevokeArgs { client_secret: String::new(), ..args() }).contains("--client-secret"));
        assert!(refused(RevokeArgs { sts: "ftp://x".into(), ..args() }).contains("--sts"));
    }

    #[test]
    fn reports_are_read() {
        assert_eq!(report(Some(&json!({"pushed": true, "status": 202, "jti": "j"}))), Ok(202));
        let refused = report(Some(&json!({"pushed": false, "status": 400, "error": "invalid_audience: no\n"})));
        assert_eq!(refused, Err(Some("receiver answered 400: invalid_audience: no".into())));
        let unreachable = report(Some(&json!({"pushed": false, "status": null, "error": "cannot reach x"})));
        assert_eq!(unreachable, Err(Some("cannot reach x".into())));
        assert_eq!(report(Some(&json!({"access_token": "x"}))), Err(None));
        assert_eq!(report(None), Err(None));
    }
}
