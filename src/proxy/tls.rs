//! TLS with rustls (ring): the listener (HTTP/1.1 and h2 by ALPN, optional
//! client-certificate verification against `listen.tls.client_ca_file`) and
//! a route's backend (`upstream_tls`: its own CAs, a client certificate, a
//! server name). Both are re-read when their files change (`reload.rs`).

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::reload::FileBacked;
use crate::config::{ListenTls, UpstreamTlsConfig};
use crate::metrics::Counters;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(certs)
}

fn key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("{what}: not a PEM file: {e}"))?
        .ok_or_else(|| format!("{what} holds no PEM private key"))
}

fn roots(pem: &[u8], what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem, what)? {
        roots.add(cert).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(roots)
}

/// The listener's TLS: `cert_file`, `key_file` and `client_ca_file`, re-read
/// when they change. New handshakes use the new set; open connections keep theirs.
pub fn listener(tls: &ListenTls, reloads: Counters) -> Result<FileBacked<tokio_rustls::TlsAcceptor>, String> {
    let mut paths = vec![tls.cert_file.clone(), tls.key_file.clone()];
    paths.extend(tls.client_ca_file.clone());
    FileBacked::new("listen.tls", paths, reloads, |files| {
        server_config(&files[0], &files[1], files.get(2).map(Vec::as_slice)).map(tokio_rustls::TlsAcceptor::from)
    })
}

fn server_config(chain: &[u8], key_pem: &[u8], client_ca: Option<&[u8]>) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(chain, "cert_file")?;
    let key = key(key_pem, "key_file")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(pem, "client_ca_file")?), provider())
                    .build()
                    .map_err(|e| format!("client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Refuses a key that does not match the certificate.
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("cert_file and key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How connections to backends are opened: TCP settings, then TLS for https.
#[derive(Clone)]
pub struct Connect {
    pub http: HttpConnector,
    /// Offer h2 by ALPN (upgrade requests use a connection without it).
    pub h2: bool,
}

/// The connector of a route without `upstream_tls`: web PKI roots, SNI from
/// the URL. Nothing to re-read.
pub fn default_connector(connect: Connect) -> HttpsConnector<HttpConnector> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(webpki_roots()).with_no_client_auth());
    // The ring provider supports the safe defaults: the error arm is unreachable.
    let config =
        config.unwrap_or_else(|_| ClientConfig::builder().with_root_certificates(webpki_roots()).with_no_client_auth());
    https(config, connect, None)
}

fn webpki_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

fn https(config: ClientConfig, connect: Connect, server_name: Option<&str>) -> HttpsConnector<HttpConnector> {
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
    // Checked by `check` and by `upstream`.
    let b = match server_name.and_then(|n| ServerName::try_from(n.to_owned()).ok()) {
        Some(name) => b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
        None => b,
    };
    if connect.h2 {
        b.enable_http1().enable_http2().wrap_connector(connect.http)
    } else {
        b.enable_http1().wrap_connector(connect.http)
    }
}

/// The TLS settings of a route with `upstream_tls`, rebuilt when its files
/// change. `ca_file` replaces the web PKI roots: only those CAs are trusted.
pub fn upstream(what: String, cfg: &UpstreamTlsConfig, reloads: Counters) -> Result<FileBacked<ClientConfig>, String> {
    let mut paths = Vec::new();
    paths.extend(cfg.ca_file.clone());
    paths.extend(cfg.cert_file.clone());
    paths.extend(cfg.key_file.clone());
    let has_ca = cfg.ca_file.is_some();
    let has_cert = cfg.cert_file.is_some() && cfg.key_file.is_some();
    if let Some(name) = &cfg.server_name {
        ServerName::try_from(name.as_str()).map_err(|e| format!("server_name {name:?}: {e}"))?;
    }
    FileBacked::new(what, paths, reloads, move |files| {
        let mut files = files.iter();
        let roots = match has_ca {
            true => roots(files.next().map_or(&[][..], Vec::as_slice), "ca_file")?,
            false => webpki_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match has_cert {
            true => {
                let chain = certs(files.next().map_or(&[][..], Vec::as_slice), "cert_file")?;
                let key = key(files.next().map_or(&[][..], Vec::as_slice), "key_file")?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("cert_file and key_file: {e}"))
            }
            false => Ok(builder.with_no_client_auth()),
        }
    })
}

/// A connector with the route's TLS settings of the moment.
pub fn connector(config: &ClientConfig, connect: Connect, server_name: Option<&str>) -> HttpsConnector<HttpConnector> {
    https(config.clone(), connect, server_name)
}
