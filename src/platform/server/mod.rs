//! Running HTTP services: binding (with the loopback guard already applied
//! by the configuration), plain or TLS, the metrics listener, the limits on
//! connections, and graceful shutdown on SIGTERM/SIGINT.
//!
//! The connection loop is hyper's HTTP/1.1 server driven here rather than a
//! ready-made one, because the ready-made loops wait for a client's first
//! bytes (to choose between HTTP/1 and HTTP/2) without any deadline: a
//! client that connects and says nothing would hold its socket for ever.
//!
//! Invariants: each listener counts its connections against its own caps
//! (the metrics listener must answer while the gate's is flooded); at
//! shutdown neither accepts again, and open connections get `grace` to
//! finish.

mod connection;
pub mod connections;
mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use connection::Listener;
use connections::Admissions;
/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is taken or not ours.
    #[error(
        "cannot listen on {addr}: {source} (is another process using it? choose another address with {variable})"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The variable that set it.
        variable: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The certificate or key could not be loaded.
    #[error(
        "cannot load the TLS certificate or key (DESKGATE_TLS_CERT={cert}, DESKGATE_TLS_KEY={key}): {source}"
    )]
    Tls {
        /// Certificate path.
        cert: String,
        /// Key path.
        key: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A service to run: its router, address and the variable that set it.
#[derive(Debug)]
pub struct Service {
    /// The router.
    pub app: Router,
    /// Where to listen.
    pub addr: SocketAddr,
    /// The configuration variable naming `addr`, for error messages.
    pub variable: &'static str,
}

/// Certificate and key for HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// What a connection may cost the server before it has sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client has to complete a request head (and a TLS
    /// handshake), counted from connecting or from the previous response —
    /// so also how long a keep-alive connection may sit idle.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers); 431 above it.
    pub max_header_bytes: usize,
    /// Open connections one client address (IPv6: one /64) may hold.
    pub max_per_client: u32,
    /// Open connections in all on one listener.
    pub max_total: u32,
}

/// How to run the services: TLS, the metrics listener, limits, shutdown.
#[derive(Debug)]
pub struct ServeOptions<'a> {
    /// HTTPS files for the main service; plain HTTP when `None`.
    pub tls: Option<&'a TlsFiles>,
    /// The metrics listener (always plain HTTP), when wanted.
    pub metrics: Option<(SocketAddr, Router)>,
    /// How long open requests may finish after SIGTERM.
    pub grace: Duration,
    /// Connection limits.
    pub limits: &'a ConnectionLimits,
    /// Peers counted only against the total connection cap (the trusted
    /// reverse proxies, whose address every browser behind them shares).
    pub uncapped_peers: &'a [IpNet],
}

/// Binds the main service (HTTPS when `options.tls` is set) and, when given,
/// the metrics service; serves until SIGTERM or SIGINT, then lets open
/// requests finish for at most `options.grace`.
pub async fn run(main: Service, options: ServeOptions<'_>) -> Result<(), ServeError> {
    let limits = options.limits;
    raise_open_files_limit(limits.max_total);
    let admissions = Admissions::new(
        limits.max_per_client,
        limits.max_total,
        options.uncapped_peers.to_vec(),
    );
    let tls = match options.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(files)?)),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut listeners = vec![Listener {
        tcp: bind(main.addr, main.variable)?,
        app: main.app,
        tls,
        admissions: admissions.clone(),
    }];
    tracing::info!(addr = %main.addr, %scheme, "listening");
    if let Some((addr, app)) = options.metrics {
        listeners.push(Listener {
            tcp: bind(addr, "DESKGATE_METRICS_ADDR")?,
            app,
            tls: None,
            // Its own count, so that a flood on the gate's listener does not
            // stop the scrapes that would show it.
            admissions: Admissions::new(
                limits.max_per_client,
                limits.max_total,
                options.uncapped_peers.to_vec(),
            ),
        });
        tracing::info!(%addr, "metrics listening on /metrics");
    }

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accepting = futures::future::join_all(
        listeners
            .into_iter()
            .map(|listener| listener.serve(limits, shutdown.clone(), tracker.clone())),
    );
    tokio::select! {
        _ = accepting => {}
        () = wait_for_signal() => {}
    }
    let grace = options.grace;
    tracing::info!(
        grace_seconds = grace.as_secs(),
        open_connections = admissions.open(),
        "shutting down"
    );
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::info!(
            open_connections = admissions.open(),
            "grace period over; closing the remaining connections"
        );
    }
    Ok(())
}

fn bind(addr: SocketAddr, variable: &'static str) -> Result<tokio::net::TcpListener, ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        addr,
        variable,
        source,
    })?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

/// Raises the soft limit on open files to the hard limit (the default soft
/// limit, often 1024, is below the connection cap), and warns when even the
/// hard limit leaves no room for `max_connections`.
fn raise_open_files_limit(max_connections: u32) {
    // Database pool, Docker, chain RPC, logs: what the process holds besides
    // client connections.
    const OTHER_FILES: u64 = 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < u64::from(max_connections) + OTHER_FILES => tracing::warn!(
            open_files_limit = limit,
            max_connections,
            "the open-files limit is below the connection cap: accepts will fail before the cap is reached (raise `ulimit -n` or lower DESKGATE_MAX_CONNECTIONS)"
        ),
        Ok(limit) => tracing::debug!(open_files_limit = limit, "open-files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-files limit"),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::warn!(%err, "cannot watch SIGTERM; only Ctrl-C stops the server");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
