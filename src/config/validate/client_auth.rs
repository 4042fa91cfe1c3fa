//! `client_auth:` of an authorization server (or of introspection): the
//! method and the credential it sends.

use super::*;

pub(super) fn client_auth(cx: &mut Ctx, base: &str, ca: RawClientAuth) -> Option<ClientAuthConfig> {
    let method = ca.method.as_str();
    let id = ca.client_id.map(|t| t.value);
    for (key, present, used_by) in [
        ("private_key_file", ca.private_key_file.is_some(), "private_key_jwt"),
        ("key_id", ca.key_id.is_some(), "private_key_jwt"),
        ("algorithm", ca.algorithm.is_some(), "private_key_jwt"),
        ("assertion_audience", ca.assertion_audience.is_some(), "private_key_jwt or client_secret_jwt"),
        ("cert_file", ca.cert_file.is_some(), "tls_client_auth"),
        ("key_file", ca.key_file.is_some(), "tls_client_auth"),
    ] {
        if present && !used_by.split(" or ").any(|m| m == method) {
            cx.err(format!("{base}.{key}"), format!("not used by method {method} (only by {used_by})"));
        }
    }
    if matches!(method, "private_key_jwt" | "tls_client_auth")
        && (ca.client_secret.is_some() || ca.client_secret_file.is_some())
    {
        cx.err(base, format!("method {method} sends no secret: remove client_secret / client_secret_file"));
    }
    let secret = |cx: &mut Ctx| -> Option<SecretSource> {
        let inline = ("client_secret", ca.client_secret.as_ref());
        match secret_source(cx, base, inline, ("client_secret_file", ca.client_secret_file.as_ref())) {
            Ok(Some(SecretSource::Inline(v))) if v.is_empty() => {
                cx.err(format!("{base}.client_secret"), "must not be empty");
                Some(SecretSource::Inline(v))
            }
            Ok(Some(source)) => Some(source),
            Ok(None) => {
                cx.err(base, format!("method {method} needs client_secret or client_secret_file"));
                None
            }
            Err(()) => None,
        }
    };
    let need_id = |cx: &mut Ctx, id: Option<String>| -> Option<String> {
        match id {
            Some(id) if !id.is_empty() => Some(id),
            _ => {
                cx.err(format!("{base}.client_id"), format!("method {method} needs client_id"));
                None
            }
        }
    };
    match method {
        "client_secret_basic" => {
            let client_id = need_id(cx, id);
            let secret = secret(cx);
            Some(ClientAuthConfig::SecretBasic { client_id: client_id?, secret: secret? })
        }
        "client_secret_post" => {
            let client_id = need_id(cx, id);
            let secret = secret(cx);
            Some(ClientAuthConfig::SecretPost { client_id: client_id?, secret: secret? })
        }
        "none" => {
            if ca.client_secret.is_some() || ca.client_secret_file.is_some() {
                cx.err(base, "method none sends no secret: remove client_secret / client_secret_file");
            }
            Some(ClientAuthConfig::None { client_id: id })
        }
        "private_key_jwt" => {
            let client_id = need_id(cx, id);
            let private_key_file = match &ca.private_key_file {
                Some(f) => Some(existing_file(cx, &format!("{base}.private_key_file"), f)),
                None => {
                    cx.err(base, "method private_key_jwt needs private_key_file (a PKCS#8 PEM key)");
                    None
                }
            };
            let algorithm = match ca.algorithm.as_ref().map(|t| t.as_str()) {
                None => Some(None),
                Some(a) => match a.parse::<jsonwebtoken::Algorithm>() {
                    Ok(alg) if super::limits::ASSERTION_ALGORITHMS.contains(&alg) => Some(Some(alg)),
                    _ => {
                        cx.err(
                            format!("{base}.algorithm"),
                            format!("unsupported algorithm {a:?}: expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"),
                        );
                        None
                    }
                },
            };
            let assertion_audience = assertion_audience(cx, base, &ca.assertion_audience);
            let key_id = ca.key_id.map(|t| t.value);
            if key_id.as_deref() == Some("") {
                cx.err(format!("{base}.key_id"), "must not be empty (omit it to send no kid)");
            }
            Some(ClientAuthConfig::PrivateKeyJwt {
                client_id: client_id?,
                private_key_file: private_key_file?,
                key_id,
                algorithm: algorithm?,
                assertion_audience: assertion_audience?,
            })
        }
        "client_secret_jwt" => {
            let client_id = need_id(cx, id);
            let secret = secret(cx);
            // RFC 7518 §3.2: an HS256 key at least as long as the hash.
            if let Some(SecretSource::Inline(v)) = &secret {
                if !v.is_empty() && v.len() < MIN_HS256_SECRET {
                    cx.err(
                        format!("{base}.client_secret"),
                        format!("method client_secret_jwt needs a secret of at least {MIN_HS256_SECRET} bytes (RFC 7518 §3.2)"),
                    );
                }
            }
            let assertion_audience = assertion_audience(cx, base, &ca.assertion_audience);
            Some(ClientAuthConfig::SecretJwt {
                client_id: client_id?,
                secret: secret?,
                assertion_audience: assertion_audience?,
            })
        }
        "tls_client_auth" => {
            let client_id = need_id(cx, id);
            let file = |cx: &mut Ctx, key: &str, t: &Option<Text>| match t {
                Some(f) => Some(existing_file(cx, &format!("{base}.{key}"), f)),
                None => {
                    cx.err(base, format!("method tls_client_auth needs {key} (PEM)"));
                    None
                }
            };
            let cert_file = file(cx, "cert_file", &ca.cert_file);
            let key_file = file(cx, "key_file", &ca.key_file);
            Some(ClientAuthConfig::TlsClientAuth { client_id: client_id?, cert_file: cert_file?, key_file: key_file? })
        }
        other => {
            cx.err(
                format!("{base}.method"),
                format!("unknown method {other:?}: expected client_secret_basic, client_secret_post, client_secret_jwt, private_key_jwt, tls_client_auth or none"),
            );
            None
        }
    }
}

/// The shortest `client_secret_jwt` secret: HS256's output size.
pub const MIN_HS256_SECRET: usize = 32;

/// `assertion_audience`: the token endpoint (default) or the issuer.
fn assertion_audience(cx: &mut Ctx, base: &str, raw: &Option<Text>) -> Option<AssertionAudience> {
    match raw.as_ref().map(|t| t.as_str()) {
        None | Some("token_endpoint") => Some(AssertionAudience::TokenEndpoint),
        Some("issuer") => Some(AssertionAudience::Issuer),
        Some(other) => {
            cx.err(
                format!("{base}.assertion_audience"),
                format!("unknown value {other:?}: expected token_endpoint or issuer"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::{parse, ClientAuthConfig, SecretSource};

    fn yaml(secret: &str) -> String {
        format!(
            "listen: {{ address: \"127.0.0.1:8080\" }}\nauthorization_servers:\n  corp:\n    token_endpoint: https://as.example.com/token\n    client_auth: {{ method: client_secret_post, client_id: x, client_secret: \"{secret}\" }}\nroutes:\n  - {{ name: r, upstream: \"http://127.0.0.1:1\", exchange: {{ authorization_server: corp }} }}\n"
        )
    }

    /// A Secret made `--from-file` often ends in a newline; as `${VAR}` it
    /// is trimmed, as a secret file is.
    #[test]
    fn an_inline_secret_is_trimmed_like_a_file() {
        let c = parse(&yaml("s3cret\\n")).unwrap();
        match &c.servers["corp"].client_auth {
            ClientAuthConfig::SecretPost { secret: SecretSource::Inline(s), .. } => assert_eq!(s, "s3cret"),
            other => panic!("{other:?}"),
        }
        let e = parse(&yaml(" \\n")).unwrap_err().to_string();
        assert!(e.contains("client_secret") && e.contains("must not be empty"), "{e}");
    }
}
