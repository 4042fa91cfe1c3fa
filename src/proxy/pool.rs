//! Connections to backends: a pooled hyper-util client per TLS setting
//! (routes without `upstream_tls` share one), HTTP/1.1, and h2 when a TLS
//! backend offers it by ALPN. Upgrade requests (WebSocket) always go on an
//! HTTP/1.1 connection of a pool of their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body_scan::Guarded;
use super::reload::FileBacked;
use super::tls::{self, Connect};
use super::RequestBody;
use crate::config::{PoolConfig, UpstreamTlsConfig};
use crate::metrics::Counters;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Https = HttpsConnector<HttpConnector>;

/// Opens a backend connection with the TLS settings of the moment.
#[derive(Clone)]
pub enum Connector {
    Fixed(Https),
    /// The route's TLS settings, rebuilt when its CA or client certificate
    /// files change (shared by its two pools), and how to connect.
    Reloading {
        tls: Arc<FileBacked<rustls::ClientConfig>>,
        connect: Connect,
        server_name: Option<Arc<str>>,
    },
}

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both inner connectors are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self {
            Connector::Fixed(c) => c.call(uri),
            Connector::Reloading { tls, connect, server_name } => {
                tls::connector(&tls.get(), connect.clone(), server_name.as_deref()).call(uri)
            }
        }
    }
}

pub type UpstreamHttp = Client<Connector, Guarded<RequestBody>>;

/// The pools of one TLS setting.
pub struct UpstreamClient {
    /// What it was built from (a reload keeps a client whose settings did not change).
    pub settings: (Option<UpstreamTlsConfig>, PoolConfig),
    any: UpstreamHttp,
    /// HTTP/1.1 only, for upgrades; the same as `any` without TLS settings.
    h1: Option<UpstreamHttp>,
}

impl UpstreamClient {
    /// `tls`: the route's name and its `upstream_tls`, or none (web PKI).
    pub fn new(tls: Option<(&str, &UpstreamTlsConfig)>, pool: PoolConfig, reloads: &Counters) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(pool.connect_timeout));
        let files = match tls {
            Some((route, cfg)) => {
                Some(Arc::new(tls::upstream(format!("routes[{route}].upstream_tls"), cfg, reloads.clone())?))
            }
            None => None,
        };
        let server_name: Option<Arc<str>> = tls.and_then(|(_, cfg)| cfg.server_name.as_deref()).map(Arc::from);
        let connector = |h2: bool| -> Result<Connector, String> {
            let connect = Connect { http: http.clone(), h2 };
            Ok(match &files {
                None => Connector::Fixed(tls::default_connector(connect)),
                Some(files) => Connector::Reloading { tls: files.clone(), connect, server_name: server_name.clone() },
            })
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let any = builder.build(connector(true)?);
        let h1 = match tls {
            None => None,
            Some(_) => Some(builder.build(connector(false)?)),
        };
        Ok(UpstreamClient { settings: (tls.map(|(_, t)| t.clone()), pool), any, h1 })
    }

    /// The client for a request; `upgrade`: it asks for a protocol upgrade.
    pub fn http(&self, upgrade: bool) -> &UpstreamHttp {
        match (&self.h1, upgrade) {
            (Some(h1), true) => h1,
            _ => &self.any,
        }
    }
}
