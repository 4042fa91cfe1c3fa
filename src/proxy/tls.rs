//! TLS on the listener: rustls (ring), HTTP/1.1 and h2 by ALPN, and optional
//! client-certificate verification against `listen.tls.client_ca_file`.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::config::ListenTls;
use crate::exchange::client_auth::client_certificate;

/// Builds the listener's TLS settings; errors name the file at fault.
pub fn server_config(tls: &ListenTls) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = client_certificate(&tls.cert_file, &tls.key_file).map_err(|e| format!("listen.tls: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("listen.tls: {e}"))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("listen.tls.client_ca_file {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("listen.tls.client_ca_file {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("listen.tls.client_ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("listen.tls.client_ca_file {} holds no PEM certificate", path.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("listen.tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("listen.tls: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
