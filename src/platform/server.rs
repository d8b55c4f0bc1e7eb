//! Running HTTP services: binding (with the loopback guard already applied
//! by the configuration), plain or TLS, the metrics listener, and graceful
//! shutdown on SIGTERM/SIGINT.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum_server::Handle;
// Browser sockets carry the desktop: without TCP_NODELAY, Nagle holds the
// tail of each relayed frame for an ACK (the relay bench measured a third
// of the downstream throughput and a p99 round trip ten times longer).
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

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

/// Binds the main service (HTTPS when `tls` is set) and, when given, the
/// metrics service (plain HTTP, on its own address); serves until SIGTERM or SIGINT, then lets open requests
/// finish for at most `grace`.
pub async fn run(
    main: Service,
    tls: Option<&TlsFiles>,
    metrics: Option<(SocketAddr, Router)>,
    grace: Duration,
) -> Result<(), ServeError> {
    let handle: Handle<SocketAddr> = Handle::new();
    let main_listener = bind(main.addr, main.variable)?;
    let metrics_listener = match &metrics {
        Some((addr, _)) => Some(bind(*addr, "DESKGATE_METRICS_ADDR")?),
        None => None,
    };

    let scheme = if tls.is_some() { "https" } else { "http" };
    let main_server = async {
        let service = main.app.into_make_service_with_connect_info::<SocketAddr>();
        match tls {
            Some(files) => {
                let config = RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .map_err(|source| ServeError::Tls {
                        cert: files.cert.display().to_string(),
                        key: files.key.display().to_string(),
                        source,
                    })?;
                tracing::info!(addr = %main.addr, %scheme, "listening");
                let acceptor = RustlsAcceptor::new(config).acceptor(NoDelayAcceptor::new());
                axum_server::from_tcp(main_listener)?
                    .acceptor(acceptor)
                    .handle(handle.clone())
                    .serve(service)
                    .await?;
            }
            None => {
                tracing::info!(addr = %main.addr, %scheme, "listening");
                axum_server::from_tcp(main_listener)?
                    .acceptor(NoDelayAcceptor::new())
                    .handle(handle.clone())
                    .serve(service)
                    .await?;
            }
        }
        Ok::<(), ServeError>(())
    };
    let metrics_server = async {
        if let (Some(listener), Some((addr, metrics_app))) = (metrics_listener, metrics) {
            tracing::info!(%addr, "metrics listening on /metrics");
            axum_server::from_tcp(listener)?
                .handle(handle.clone())
                .serve(metrics_app.into_make_service())
                .await?;
        }
        Ok::<(), ServeError>(())
    };
    let shutdown_handle = handle.clone();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!(grace_seconds = grace.as_secs(), "shutting down");
        shutdown_handle.graceful_shutdown(Some(grace));
    };
    tokio::spawn(shutdown);
    // Stop the other listener if one fails to start.
    let result = tokio::try_join!(main_server, metrics_server);
    if result.is_err() {
        handle.shutdown();
    }
    result.map(drop)
}

fn bind(addr: SocketAddr, variable: &'static str) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
        addr,
        variable,
        source,
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
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
