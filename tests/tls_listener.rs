//! TLS on the listener: HTTP/1.1 and h2 by ALPN, X-Forwarded-Proto https,
//! and client certificates when `client_ca_file` is set.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    dir: PathBuf,
    ca: rustls_pki_types::CertificateDer<'static>,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_pem: PathBuf,
    client_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    client_key_der: Vec<u8>,
}

fn pki() -> Pki {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tokex-tls-listener-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tokex listener test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, "caller");
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        ca_pem: write("ca.pem", ca_cert.pem()),
        ca: ca_cert.der().clone(),
        client_chain: vec![client.der().clone()],
        client_key_der: client_key.serialize_der(),
        dir,
    }
}

fn https_client(pki: &Pki, with_cert: bool, h2: bool) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = if with_cert {
        let key = rustls_pki_types::PrivateKeyDer::try_from(pki.client_key_der.clone()).unwrap();
        builder.with_client_auth_cert(pki.client_chain.clone(), key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    tls.alpn_protocols = if h2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let b = reqwest::Client::builder().use_preconfigured_tls(tls);
    if h2 { b.http2_prior_knowledge() } else { b.http1_only() }.build().unwrap()
}

fn listen(pki: &Pki, client_ca: Option<&Path>) -> String {
    let ca = client_ca.map(|p| format!(", client_ca_file: {}", p.display())).unwrap_or_default();
    format!(
        "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert_file: {}, key_file: {}{ca} }} }}\n",
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

#[tokio::test]
async fn https_listener_serves_http1_and_h2_and_sets_forwarded_proto() {
    let pki = pki();
    let backend = echo_backend().await;
    let auth_server = RecordingAs::start().await;
    let yaml =
        listen(&pki, None) + &config_with(&auth_server.token_url(), BASIC_AUTH, &exchange_route("a", "/", backend, ""));
    let gw = TestGateway::start(&yaml).await;
    let url = format!("https://localhost:{}/x", gw.running.addr.port());
    for h2 in [false, true] {
        let resp = https_client(&pki, false, h2).get(&url).bearer_auth("broad").send().await.unwrap();
        assert_eq!(resp.version(), if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
        assert_eq!(resp.status(), 200);
        let echo = echoed(&resp.text().await.unwrap());
        assert_eq!(seen(&echo, "x-forwarded-proto"), vec!["https"]);
        assert_eq!(seen(&echo, "authorization"), vec!["Bearer exchanged-1"]);
    }
    // Plain HTTP on the TLS port does not get through.
    assert!(client().get(format!("http://127.0.0.1:{}/x", gw.running.addr.port())).send().await.is_err());
    std::fs::remove_dir_all(&pki.dir).unwrap();
}

/// A connection that never starts its TLS handshake holds a slot like any
/// silent connection, and is shed at the cap like one (it would otherwise
/// hold it for the whole handshake timeout).
#[tokio::test]
async fn silent_tls_connections_are_shed_at_the_cap() {
    let pki = pki();
    let backend = echo_backend().await;
    let listen = listen(&pki, None).replace(" } }\n", " }, max_connections: 6, header_read_timeout: 30s }\n");
    let yaml = listen + &format!("routes:\n  - name: open\n    auth: none\n    upstream: http://{backend}\n");
    let gw = TestGateway::start(&yaml).await;
    let mut hold = Vec::new();
    for _ in 0..6 {
        hold.push(tokio::net::TcpStream::connect(gw.running.addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    let url = format!("https://localhost:{}/x", gw.running.addr.port());
    let resp =
        tokio::time::timeout(std::time::Duration::from_secs(5), https_client(&pki, false, false).get(&url).send())
            .await
            .expect("served within 5 s")
            .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    std::fs::remove_dir_all(&pki.dir).unwrap();
}

#[tokio::test]
async fn client_ca_file_requires_a_client_certificate() {
    let pki = pki();
    let backend = echo_backend().await;
    let yaml = listen(&pki, Some(&pki.ca_pem))
        + &format!("routes:\n  - name: open\n    auth: none\n    upstream: http://{backend}\n");
    let gw = TestGateway::start(&yaml).await;
    let url = format!("https://localhost:{}/x", gw.running.addr.port());
    assert!(https_client(&pki, false, false).get(&url).send().await.is_err(), "no client certificate: refused");
    let resp = https_client(&pki, true, false).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    std::fs::remove_dir_all(&pki.dir).unwrap();
}

#[test]
fn check_reports_an_unusable_certificate() {
    let pki = pki();
    // The key of another certificate does not match.
    let other = KeyPair::generate().unwrap();
    let wrong_key = pki.dir.join("wrong.key");
    std::fs::write(&wrong_key, other.serialize_pem()).unwrap();
    let file = pki.dir.join("c.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: {{ address: \"127.0.0.1:0\", tls: {{ cert_file: {}, key_file: {} }} }}\nroutes:\n  - name: r\n    auth: none\n    upstream: http://127.0.0.1:1\n",
            pki.server_cert.display(),
            wrong_key.display()
        ),
    )
    .unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_tokex")).args(["check", "-c"]).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("listen.tls"), "{text}");
    std::fs::remove_dir_all(&pki.dir).unwrap();
}
