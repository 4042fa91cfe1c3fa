//! `authorization_servers.NAME.dpop` (tokex's DPoP key) and `inbound.dpop`
//! / `inbound.dpop_proof` (callers' DPoP proofs).

use std::str::FromStr;

use jsonwebtoken::Algorithm;

use super::super::dpop::{DpopInboundConfig, DpopKeyConfig, DpopMode};
use super::super::raw::{RawDpopKey, RawDpopProof};
use super::*;

pub(super) fn server_key(cx: &mut Ctx, base: &str, raw: RawDpopKey) -> Option<DpopKeyConfig> {
    let base = format!("{base}.dpop");
    let key_file = raw.key_file.as_ref().map(|f| existing_file(cx, &format!("{base}.key_file"), f));
    let algorithm = match raw.algorithm.as_ref().map(|a| a.as_str()) {
        None => Algorithm::ES256,
        Some(a) => match Algorithm::from_str(a) {
            Ok(a @ (Algorithm::ES256 | Algorithm::EdDSA)) => a,
            _ => {
                cx.err(format!("{base}.algorithm"), "ES256 (EC P-256) or EdDSA (Ed25519)");
                return None;
            }
        },
    };
    if key_file.is_some() && raw.algorithm.is_some() {
        cx.warn(format!("{base}.algorithm"), "ignored: the key file's key decides the algorithm");
    }
    Some(DpopKeyConfig { key_file, algorithm })
}

pub(super) fn inbound(cx: &mut Ctx, mode: Option<Text>, proof: Option<RawDpopProof>) -> DpopInboundConfig {
    let mode = match mode.as_ref().map(|m| m.as_str()) {
        None | Some("off") => DpopMode::Off,
        Some("allow") => DpopMode::Allow,
        Some("require") => DpopMode::Require,
        Some(_) => {
            cx.err("inbound.dpop", "allow, require or off");
            DpopMode::Off
        }
    };
    let mut cfg = DpopInboundConfig { mode, ..DpopInboundConfig::default() };
    let Some(p) = proof else { return cfg };
    const BASE: &str = "inbound.dpop_proof";
    if cfg.mode == DpopMode::Off {
        cx.warn(BASE, "unused while inbound.dpop is off");
    }
    if let Some(algs) = inbound::algorithm_list(cx, &format!("{BASE}.algorithms"), p.algorithms, &["ES256", "EdDSA"]) {
        cfg.algorithms = algs;
    }
    if let Some(d) = p.max_age {
        if d.0 < Duration::from_secs(1) || d.0 > Duration::from_secs(600) {
            cx.err(format!("{BASE}.max_age"), "between 1s and 10m (it is also how long proofs are remembered)");
        }
        cfg.max_age = d.0;
    }
    if let Some(d) = p.leeway {
        if d.0 > Duration::from_secs(60) {
            cx.err(format!("{BASE}.leeway"), "at most 1m");
        }
        cfg.leeway = d.0;
    }
    cfg.trust_forwarded = p.trust_forwarded.unwrap_or(false);
    for (i, o) in p.origins.unwrap_or_default().iter().enumerate() {
        let path = format!("{BASE}.origins[{i}]");
        match Url::parse(o.as_str()) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                // `url` has lower-cased the host and dropped a default port.
                cfg.origins.push(u.as_str().trim_end_matches('/').to_owned());
            }
            _ => cx.err(path, "an origin: http(s)://host[:port], without path, query or credentials"),
        }
    }
    if cfg.trust_forwarded && !cfg.origins.is_empty() {
        cx.warn(format!("{BASE}.trust_forwarded"), "unused: origins name where proofs may point");
    }
    if let Some(n) = p.replay_cache_entries {
        if !(1_000..=100_000_000).contains(&n) {
            cx.err(format!("{BASE}.replay_cache_entries"), "between 1000 and 100000000");
        }
        cfg.replay_cache_entries = n;
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::super::super::{parse, DpopMode};

    const ROUTES: &str =
        "routes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: http://127.0.0.1:9\n    auth: none\n";

    fn with(yaml: &str) -> String {
        format!("listen: {{ address: \"127.0.0.1:8080\" }}\n{yaml}{ROUTES}")
    }

    #[test]
    fn dpop_settings_parse_and_are_checked() {
        let c = parse(&with("inbound:\n  dpop: require\n  dpop_proof: { algorithms: [ES256, PS256], max_age: 30s, trust_forwarded: true, origins: [\"HTTPS://API.example.com:443/\"] }\nauthorization_servers:\n  corp:\n    token_endpoint: https://as/token\n    dpop: { algorithm: EdDSA }\n")).unwrap();
        assert_eq!(c.dpop.mode, DpopMode::Require);
        assert_eq!(c.dpop.algorithms, [jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::PS256]);
        assert_eq!(c.dpop.max_age, std::time::Duration::from_secs(30));
        assert!(c.dpop.trust_forwarded);
        assert_eq!(c.dpop.origins, ["https://api.example.com"]);
        assert!(c.inbound.is_none(), "dpop alone configures no token check");
        let key = c.servers["corp"].dpop.as_ref().unwrap();
        assert_eq!((key.key_file.as_ref(), key.algorithm), (None, jsonwebtoken::Algorithm::EdDSA));
        assert_eq!(parse(&with("")).unwrap().dpop.mode, DpopMode::Off);

        let errs = parse(&with("inbound:\n  dpop: maybe\n  dpop_proof: { algorithms: [HS256], max_age: 1h, replay_cache_entries: 5, origins: [\"https://a/x\"] }\nauthorization_servers:\n  corp:\n    token_endpoint: https://as/token\n    dpop: { algorithm: RS256, key_file: /nonexistent/dpop.pem }\n")).unwrap_err();
        let errs = errs.errors.iter().map(|d| d.unlined()).collect::<Vec<_>>().join("\n");
        for want in [
            "inbound.dpop: allow, require or off",
            "inbound.dpop_proof.algorithms[0]: HS256 is refused",
            "inbound.dpop_proof.max_age",
            "inbound.dpop_proof.replay_cache_entries",
            "inbound.dpop_proof.origins[0]: an origin",
            "authorization_servers.corp.dpop.key_file: cannot read",
            "authorization_servers.corp.dpop.algorithm: ES256 (EC P-256) or EdDSA",
        ] {
            assert!(errs.contains(want), "{want} in\n{errs}");
        }
    }
}
