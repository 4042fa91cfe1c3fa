//! Wiring: configuration → clients, policies and routes → listeners, admin,
//! reload and shutdown. `start` is used by `main` and by the tests alike.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::auth::scopes::RequiredScopes;
use crate::auth::{DpopInbound, Inbound};
use crate::config::{AuthMode, Config, ListenConfig, MachineConfig, SecretSource};
use crate::exchange::client::AsClient;
use crate::exchange::guard::AsGuard;
use crate::exchange::{Exchanger, MachinePolicy, Policy, TxnPolicy};
use crate::metrics::Metrics;
use crate::proxy::authz::Checks;
use crate::proxy::forward::{Forwarder, Upstream};
use crate::proxy::grpc_authz::GrpcChecks;
use crate::proxy::handler::{Gateway, Runtime};
use crate::proxy::metadata::{Challenge, Documents};
use crate::proxy::pool::UpstreamClient;
use crate::proxy::routes::{Route, RouteAuth, RouteTable};
use crate::proxy::server::{serve, Limits, Listening, Phase};
use crate::proxy::workers::Workers;
use crate::readiness::Readiness;
use crate::revocation::push::{MainListener, Push};
use crate::revocation::ssf::Receiver;
use crate::revocation::Purger;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
    /// A setting whose files or values cannot be used: its YAML path.
    #[error("{path}: {message}")]
    At { path: String, message: String },
}

impl StartError {
    /// Names the setting that failed (`routes[2]`), unless already named.
    fn at(path: impl Into<String>) -> impl FnOnce(StartError) -> StartError {
        let path = path.into();
        move |e| match e {
            StartError::Setup(message) => StartError::At { path, message },
            named => named,
        }
    }
}

/// Builds the routes of `config`: exchange clients, policies (actor tokens
/// and secret files are read here), upstreams and metric handles. No I/O
/// beyond reading local files, so `tokex check` runs it too. On a reload,
/// `previous` is the running configuration: an authorization server's
/// breaker and concurrency bound, and a route's rate limit, carry over
/// when their settings are unchanged.
pub fn build_runtime(config: &Config, metrics: &Metrics, previous: Option<&Runtime>) -> Result<Runtime, StartError> {
    if config.offline {
        return Err(StartError::Setup("a configuration checked --offline cannot be run".into()));
    }
    if let Some(path) = &config.admin_token {
        let token = Secret::from_source(&SecretSource::File(path.clone()));
        token.get().map_err(|e| StartError::At { path: "admin.token_file".into(), message: e.to_string() })?;
    }
    let mut clients = BTreeMap::new();
    for (name, server) in &config.servers {
        let kept = previous.and_then(|p| p.servers.get(name)).map(|c| c.guard()).filter(|g| g.same_settings(server));
        let guard = match kept {
            Some(g) => g.clone(),
            None => Arc::new(AsGuard::new(server, metrics.server(name))),
        };
        let mut client = AsClient::new(server, guard)
            .map_err(StartError::Setup)
            .map_err(StartError::at(format!("authorization_servers.{name}")))?;
        // Its DPoP key (a generated one too) and nonce stay when `dpop:` is unchanged.
        if let Some(before) = previous.and_then(|p| p.servers.get(name)) {
            client.keep_dpop(before);
        }
        clients.insert(name.clone(), Arc::new(client));
    }
    let client = |route: &str, server: &str| {
        clients.get(server).cloned().ok_or_else(|| format!("route {route}: unknown authorization server {server}"))
    };
    let machine = |route: &str, m: &MachineConfig| -> Result<Arc<MachinePolicy>, String> {
        Ok(Arc::new(MachinePolicy::new(m.clone(), client(route, &m.authorization_server)?)))
    };
    let inbound = match &config.inbound {
        Some(c) => Some(Arc::new(
            Inbound::new(c, metrics, &clients).map_err(StartError::Setup).map_err(StartError::at("inbound"))?,
        )),
        None => None,
    };
    // One pooled client per TLS setting, kept across a reload when unchanged.
    let mut upstream_clients: Vec<Arc<UpstreamClient>> = Vec::new();
    let reloads = metrics.tls_reloads("upstream");
    let mut upstream_client = |r: &crate::config::RouteConfig| -> Result<Arc<UpstreamClient>, StartError> {
        let settings = (r.upstream_tls.clone(), config.pool);
        let before =
            previous.into_iter().flat_map(|p| p.routes.iter()).filter_map(|r| r.upstream.as_ref()).map(|u| &u.client);
        if let Some(c) = upstream_clients.iter().chain(before).find(|c| c.settings == settings) {
            return Ok(c.clone());
        }
        let tls = r.upstream_tls.as_ref().map(|t| (r.name.as_str(), t));
        let client = Arc::new(UpstreamClient::new(tls, config.pool, &reloads).map_err(StartError::Setup)?);
        upstream_clients.push(client.clone());
        Ok(client)
    };
    // A route's policy before a reload (its rate limit carries over).
    let before_auth =
        |name: &str| previous.and_then(|p| p.routes.iter().find(|old| old.name == name)).map(|old| &old.auth);
    let mut routes = Vec::with_capacity(config.routes.len());
    for (i, r) in config.routes.iter().enumerate() {
        let exchange_path = format!("routes[{i}].exchange");
        let missing = || StartError::Setup(format!("route {}: no exchange section", r.name));
        let auth = match r.auth {
            AuthMode::None => RouteAuth::None,
            AuthMode::Exchange => {
                let x = r.exchange.as_ref().ok_or_else(missing)?;
                let as_client = client(&r.name, &x.authorization_server).map_err(StartError::Setup)?;
                let before = match before_auth(&r.name) {
                    Some(RouteAuth::Exchange(p)) => Some(p.clone()),
                    _ => None,
                };
                let policy = match &x.chain {
                    None => Policy::new(&r.name, x.clone(), as_client, |m| machine(&r.name, m), before.as_deref()),
                    Some(c) => {
                        let next = client(&r.name, &c.authorization_server).map_err(StartError::Setup)?;
                        let next_id = config.servers.get(&c.authorization_server).map(|s| s.location.identifier());
                        Policy::chained(
                            &r.name,
                            x.clone(),
                            (as_client, next, next_id.as_deref().unwrap_or_default()),
                            |m| machine(&r.name, m),
                            before.as_deref(),
                        )
                    }
                };
                RouteAuth::Exchange(Arc::new(policy.map_err(StartError::Setup).map_err(StartError::at(exchange_path))?))
            }
            AuthMode::TransactionToken => {
                let t = r.transaction_token.as_ref().ok_or_else(missing)?;
                let as_client = client(&r.name, &t.authorization_server).map_err(StartError::Setup)?;
                let before = match before_auth(&r.name) {
                    Some(RouteAuth::Transaction(p)) => Some(p.clone()),
                    _ => None,
                };
                RouteAuth::Transaction(Arc::new(TxnPolicy::new(&r.name, t.clone(), as_client, before.as_deref())))
            }
            AuthMode::ClientCredentials => {
                let m = r.machine.as_ref().ok_or_else(missing)?;
                RouteAuth::ClientCredentials(
                    machine(&r.name, m).map_err(StartError::Setup).map_err(StartError::at(exchange_path))?,
                )
            }
        };
        routes.push(Arc::new(Route {
            name: r.name.clone(),
            matcher: r.matcher.clone(),
            auth,
            require_scopes: RequiredScopes::new(&r.require_scopes),
            upstream: match &r.upstream {
                Some(url) => Some(
                    Upstream::new(
                        url,
                        upstream_client(r).map_err(StartError::at(format!("routes[{i}].upstream_tls")))?,
                    )
                    .map_err(StartError::Setup)
                    .map_err(StartError::at(format!("routes[{i}].upstream")))?,
                ),
                None => None,
            },
            forward_header: r.forward_header.clone(),
            remove_headers: r.remove_headers.clone().into(),
            timeout: r.timeout,
            retry_on_invalid_token: r.retry_on_invalid_token,
            max_body_bytes: r.max_body_bytes,
            metrics: metrics.route(&r.name),
            challenge: r.resource_metadata.as_ref().map(Challenge::new),
        }));
    }
    let scheme = if config.listen.as_ref().is_some_and(|l| l.tls.is_some()) { "https" } else { "http" };
    let dpop = DpopInbound::new(&config.dpop, scheme, previous.and_then(|p| p.dpop.as_deref()), metrics).map(Arc::new);
    let metadata = Documents::new(&config.routes, &routes, &config.dpop);
    Ok(Runtime { routes: RouteTable::new(routes), inbound, dpop, servers: clients, metadata })
}

/// A running gateway.
pub struct Running {
    /// The proxy listener's address; without `listen:`, the first check
    /// listener's.
    pub addr: SocketAddr,
    /// The HTTP check listener (`authz.address`).
    pub authz_addr: Option<SocketAddr>,
    /// The gRPC check listener (`authz.grpc_address`).
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    shutdown_delay: Duration,
    /// What a reload cannot change (warned about when it tries).
    started: crate::config::StartSettings,
    /// The listeners' phase (draining, then stopping).
    phase: watch::Sender<Phase>,
    /// Background tasks (JWKS refresh, ...) stop when this turns true.
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds the listeners and starts serving `config`, on `runtime.workers`
/// worker threads when it says more than one (else on the caller's runtime).
pub async fn start(config: Config) -> Result<Running, StartError> {
    let workers = config.workers.unwrap_or(1);
    start_with_workers(config, workers).await
}

/// [`start`] with the number of workers resolved by the caller (`tokex run`:
/// `runtime.workers`, or one per core when unset).
pub async fn start_with_workers(config: Config, workers: usize) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let runtime = build_runtime(&config, &metrics, None)?;
    // Purges by subject need the index: only when one can come.
    let purging = config.admin_token.is_some() || config.ssf.is_some() || config.cache.shared.is_some();
    let mut exchanger = Exchanger::new(config.cache.clone(), metrics.clone()).index_subjects(purging);
    if let Some(shared) = &config.cache.shared {
        let store = crate::exchange::shared::SharedStore::new(shared, metrics.clone()).map_err(StartError::Setup)?;
        exchanger = exchanger.with_shared(Arc::new(store));
    }
    metrics.started();
    let listen = config.listen.as_ref();
    let tls = match listen.and_then(|l| l.tls.as_ref()) {
        Some(t) => {
            let reloads = metrics.tls_reloads("listener");
            Some(Arc::new(crate::proxy::tls::listener(t, reloads).map_err(StartError::Setup)?))
        }
        None => None,
    };
    let proto = if tls.is_some() { "https" } else { "http" };
    // The check listeners take `listen:`'s limits, or the defaults.
    let limits_from = config.listen.clone().unwrap_or_else(|| ListenConfig::with_defaults(([0, 0, 0, 0], 0).into()));
    let authz = config.authz.as_ref();
    let listeners =
        [listen.is_some(), authz.is_some_and(|a| a.address.is_some()), authz.is_some_and(|a| a.grpc_address.is_some())];
    let listeners = listeners.into_iter().filter(|on| *on).count();
    let (max_connections, upstream_slots) = crate::proxy::server::fd_budget(limits_from.max_connections, listeners);
    let forwarder = Forwarder::new(proto, limits_from.idle_timeout, upstream_slots);
    let tracer = match &config.otlp {
        Some(c) => Some(crate::otel::Tracer::start(c).map_err(StartError::Setup)?),
        None => None,
    };
    let gateway = Arc::new(Gateway::new(runtime, exchanger.clone(), forwarder, metrics.route("-"), tracer));

    let bind = |addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        Ok::<_, StartError>((listener, bound))
    };
    let proxy_listener = match listen {
        Some(l) => Some(bind(l.address).await?),
        None => None,
    };
    let authz_listener = match authz.and_then(|a| a.address) {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let grpc_listener = match authz.and_then(|a| a.grpc_address) {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin_listener = match config.admin {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().map(|(_, a)| *a);
    let authz_addr = authz_listener.as_ref().map(|(_, a)| *a);
    let grpc_addr = grpc_listener.as_ref().map(|(_, a)| *a);
    // Validation requires `listen:` or `authz:` with a listener.
    let addr = [&proxy_listener, &authz_listener, &grpc_listener]
        .into_iter()
        .find_map(|l| l.as_ref().map(|(_, a)| *a))
        .ok_or_else(|| StartError::Setup("nothing to listen on: set listen: or authz:".into()))?;

    let (shutdown, rx) = watch::channel(false);
    let (phase, phase_rx) = watch::channel(Phase::Serving);
    let readiness = Readiness::new();
    // Not ready before every `issuer:` server's metadata has been discovered.
    crate::exchange::discovery::start(&gateway.runtime().servers, None, Some(&readiness));
    let limits = Limits {
        header_read_timeout: limits_from.header_read_timeout,
        max_header_bytes: limits_from.max_header_bytes,
        idle_timeout: limits_from.idle_timeout,
        max_connections,
        http2_max_concurrent_streams: limits_from.http2_max_concurrent_streams,
    };
    // Thread per core: one single-threaded runtime per worker serves the
    // proxy listener's connections (main.rs runs the rest on one thread).
    let workers = match workers {
        n if n > 1 => Some(Workers::start(n).map_err(|e| StartError::Setup(format!("cannot start the workers: {e}")))?),
        _ => None,
    };
    let mut tasks = Vec::new();
    let grace = config.shutdown_grace;
    let purger = Arc::new(Purger::new(gateway.clone(), metrics.clone()));
    tasks.extend(purger.follow(rx.clone()));
    let push = match &config.ssf {
        Some(ssf) => {
            let receiver = Receiver::new(ssf, &metrics, &gateway.runtime().servers).map_err(StartError::Setup)?;
            tasks.push(receiver.start(rx.clone()));
            Some(Arc::new(Push::new(receiver, purger.clone(), metrics.clone())))
        }
        None => None,
    };
    if let Some((listener, _)) = proxy_listener {
        let listening = Listening { tls, connections: Some(metrics.connections()), workers: workers.clone() };
        let phase = phase_rx.clone();
        tasks.push(match push {
            // The push endpoint answers at its path, before any route.
            Some(push) => {
                let main = Arc::new(MainListener { gateway: gateway.clone(), push });
                tokio::spawn(serve(listener, listening, limits, main, phase, grace))
            }
            None => tokio::spawn(serve(listener, listening, limits, gateway.clone(), phase, grace)),
        });
    }
    if let (Some((listener, _)), Some(a)) = (authz_listener, authz) {
        let checks = Arc::new(Checks::new(gateway.clone(), a));
        let listening = Listening { tls: None, connections: Some(metrics.connections()), workers: workers.clone() };
        tasks.push(tokio::spawn(serve(listener, listening, limits, checks, phase_rx.clone(), grace)));
    }
    if let Some((listener, _)) = grpc_listener {
        let checks = Arc::new(GrpcChecks::new(gateway.clone()));
        let listening = Listening { tls: None, connections: Some(metrics.connections()), workers };
        tasks.push(tokio::spawn(serve(listener, listening, limits, checks, phase_rx.clone(), grace)));
    }
    // Not ready before the inbound JWKS has been fetched once.
    if let Some(inbound) = &gateway.runtime().inbound {
        tasks.extend(inbound.start(&readiness, rx.clone()));
    }
    if let Some((l, _)) = admin_listener {
        let token = config.admin_token.as_ref().map(|p| Secret::from_source(&SecretSource::File(p.clone())));
        let purge = token.map(|t| (purger.clone(), t));
        let admin = Arc::new(Admin { metrics: metrics.clone(), exchanger, readiness: readiness.clone(), purge });
        let plain = Listening::plain();
        tasks.push(tokio::spawn(serve(l, plain, Limits::internal(16 * 1024), admin, phase_rx, Duration::from_secs(1))));
    }
    readiness.set_serving();
    let admin = admin_addr.map_or_else(|| "-".to_owned(), |a| a.to_string());
    // `addr`: the proxy listener (or, without one, the first check listener).
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let (authz, grpc) = (show(authz_addr), show(grpc_addr));
    tracing::info!(%addr, admin, authz, grpc, routes = config.routes.len(), "tokex listening");
    Ok(Running {
        addr,
        authz_addr,
        grpc_addr,
        admin_addr,
        gateway,
        metrics,
        readiness,
        shutdown_delay: config.shutdown_delay,
        started: config.start_settings(),
        phase,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Re-reads `path` and swaps in its routes and servers. A config that
    /// does not load or build is rejected and the running one kept.
    /// Listener addresses, cache settings and worker count need a restart.
    pub fn reload(&self, path: &std::path::Path, reason: &str) -> bool {
        let result = crate::config::load(path).map_err(|e| e.to_string()).and_then(|c| {
            let previous = self.gateway.runtime();
            build_runtime(&c, &self.metrics, Some(&previous)).map(|rt| (c, rt)).map_err(|e| e.to_string())
        });
        match result {
            Ok((config, mut runtime)) => {
                let old = self.gateway.runtime();
                crate::exchange::discovery::start(&runtime.servers, Some(&old.servers), None);
                runtime.inbound = Inbound::on_reload(
                    old.inbound.as_ref(),
                    runtime.inbound.take(),
                    &self.readiness,
                    self.shutdown.subscribe(),
                );
                for server in runtime.servers.values() {
                    server.guard().publish();
                }
                self.gateway.replace(runtime);
                self.metrics.reload(true);
                tracing::info!(reason, routes = config.routes.len(), "configuration reloaded");
                let ignored = self.started.changed(&config.start_settings());
                if !ignored.is_empty() {
                    tracing::warn!(
                        settings = ignored.join(", "),
                        "these settings changed but need a restart; the running values are kept"
                    );
                }
                true
            }
            Err(e) => {
                self.metrics.reload(false);
                // One event, one line: the problems `; `-joined.
                let problems = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
                tracing::error!(reason, problems, "new configuration rejected, keeping the old one");
                false
            }
        }
    }

    /// Marks not ready and keeps accepting for `runtime.shutdown_delay`
    /// while telling clients to move off (`Connection: close`, HTTP/2
    /// `GOAWAY`), then stops accepting and drains in-flight requests
    /// (bounded by `runtime.shutdown_grace`) and returns.
    pub async fn shutdown(self) {
        self.readiness.set_draining();
        let _ = self.phase.send(Phase::Draining);
        if !self.shutdown_delay.is_zero() {
            let delay_ms = u64::try_from(self.shutdown_delay.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(delay_ms, "not ready; still accepting until the shutdown delay ends");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        let _ = self.phase.send(Phase::Stopping);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        // Spans still queued go out (bounded by the exporter's timeout).
        if let Some(tracer) = self.gateway.tracer() {
            tracer.shutdown().await;
        }
    }
}

/// SIGTERM and SIGINT, installed before a process announces it is up, so an
/// early signal is handled rather than killing the process.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
