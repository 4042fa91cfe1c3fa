//! Agent-era route settings (SPEC §6): RFC 9728 protected-resource
//! metadata, transaction tokens and identity chaining.

use http::HeaderName;
use url::Url;

use super::matcher::PathMatch;

/// The `requested_token_type` of a Txn-Token request
/// (draft-ietf-oauth-transaction-tokens).
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";

/// Where RFC 9728 metadata documents live (§3).
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// `routes[].resource_metadata`: what the route tells clients about itself
/// (RFC 9728 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceMetadataConfig {
    /// The resource identifier: an absolute http(s) URL without fragment.
    pub resource: Url,
    /// The identifier as written: the document names it so (RFC 9728 §3.3
    /// compares it with what the client used, character for character).
    pub resource_id: String,
    /// Issuer URLs of the servers that issue tokens for it.
    pub authorization_servers: Vec<String>,
    /// Scopes clients may ask for (default: the route's `require_scopes`).
    pub scopes_supported: Vec<String>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<Url>,
}

impl ResourceMetadataConfig {
    /// The path of the document for `resource` (RFC 9728 §3.1: the
    /// well-known prefix, then the resource's path; a path that is only the
    /// `/` after the host is left out).
    pub fn well_known_path(&self) -> String {
        match self.resource.path() {
            "/" => METADATA_PREFIX.to_owned(),
            path => format!("{METADATA_PREFIX}{path}"),
        }
    }

    /// Where the document is served: the resource's well-known path, and
    /// the well-known prefix plus the route's own path when that differs.
    pub fn paths(&self, route_path: &PathMatch) -> Vec<String> {
        let mut out = vec![self.well_known_path()];
        let own = match route_path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) if p != "/" => format!("{METADATA_PREFIX}{p}"),
            PathMatch::Exact(_) | PathMatch::Prefix(_) => METADATA_PREFIX.to_owned(),
            PathMatch::Any => METADATA_PREFIX.to_owned(),
        };
        if !out.contains(&own) {
            out.push(own);
        }
        out
    }

    /// The document's URL, as `401` challenges name it (`resource_metadata`).
    pub fn url(&self) -> String {
        let mut u = self.resource.clone();
        u.set_path(&self.well_known_path());
        u.set_query(None);
        u.to_string()
    }
}

/// `routes[].transaction_token` (with `auth: transaction_token`): one
/// Txn-Token per request from the token service, never cached.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionTokenConfig {
    pub authorization_server: String,
    /// The trust domain the token is for.
    pub audience: String,
    pub scope: Vec<String>,
    /// The `subject_token_type` of the caller's token.
    pub subject_token_type: String,
    /// Where the Txn-Token goes (`txn-token` by default), as it is: no scheme.
    pub header: HeaderName,
    /// Txn-Token requests this route may make (every request makes one).
    pub max_rate: super::RateConfig,
}

/// `routes[].exchange.chain`: after the exchange at the route's server
/// (for a JWT authorization grant whose audience is this server), an RFC
/// 7523 `jwt-bearer` grant here (draft-ietf-oauth-identity-chaining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    pub authorization_server: String,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(resource: &str) -> ResourceMetadataConfig {
        ResourceMetadataConfig {
            resource: Url::parse(resource).unwrap(),
            resource_id: resource.to_owned(),
            authorization_servers: vec![],
            scopes_supported: vec![],
            resource_name: None,
            resource_documentation: None,
        }
    }

    #[test]
    fn documents_are_where_rfc_9728_puts_them() {
        // §3.1: the prefix goes between the host and the path; only a
        // terminating `/` right after the host is removed.
        for (resource, path) in [
            ("https://gw.example.com", METADATA_PREFIX),
            ("https://gw.example.com/", METADATA_PREFIX),
            ("https://gw.example.com/mcp", "/.well-known/oauth-protected-resource/mcp"),
            ("https://gw.example.com/mcp/", "/.well-known/oauth-protected-resource/mcp/"),
            ("https://gw.example.com:8443/a/b", "/.well-known/oauth-protected-resource/a/b"),
        ] {
            let m = metadata(resource);
            assert_eq!(m.well_known_path(), path, "{resource}");
            assert!(m.url().ends_with(path), "{}", m.url());
        }
        assert_eq!(
            metadata("https://gw.example.com:8443/a").url(),
            "https://gw.example.com:8443/.well-known/oauth-protected-resource/a"
        );
        let m = metadata("https://gw.example.com/v1/mail");
        assert_eq!(
            m.paths(&PathMatch::Prefix("/mail".into())),
            ["/.well-known/oauth-protected-resource/v1/mail", "/.well-known/oauth-protected-resource/mail"]
        );
        assert_eq!(m.paths(&PathMatch::Prefix("/v1/mail".into())).len(), 1, "the same path once");
        assert_eq!(m.paths(&PathMatch::Any)[1], METADATA_PREFIX);
    }
}
