//! One listener's accept loop and the life of each connection on it: admit
//! (or close at once), TLS handshake, then HTTP/1.1 under the header
//! deadline and size limit until the client leaves, the deadline passes or
//! the server shuts down.
//!
//! Invariants: no connection is served without an [`Admission`]; every wait
//! on the client before a request head is complete — the TLS handshake, the
//! first request line, a keep-alive pause, a header trickled a byte at a
//! time — ends at the header deadline; a request head larger than the limit
//! is answered 431 and the connection closed. Drop reasons are a closed set
//! of metric labels.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::ConnectionLimits;
use super::connections::{Admission, Admissions};

/// Connections closed before or instead of being served, by `reason`.
const DROPPED_METRIC: &str = "deskgate_http_dropped_connections_total";

/// One listening socket and how to serve it.
pub(super) struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// What answers requests.
    pub app: Router,
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
    /// Shared with every other listener of the process.
    pub admissions: Arc<Admissions>,
}

impl Listener {
    /// Accepts connections until `shutdown`, serving each as its own task on
    /// `tracker`.
    pub async fn serve(
        self,
        limits: &ConnectionLimits,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let http = Arc::new(http1_builder(limits));
        let header_timeout = limits.header_timeout;
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.tcp.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset while
                    // queued: wait a moment rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admission = match self.admissions.admit(peer.ip()) {
                Ok(admission) => admission,
                Err(refusal) => {
                    tracing::debug!(%peer, reason = refusal.label(), "connection refused");
                    metrics::counter!(DROPPED_METRIC, "reason" => refusal.label()).increment(1);
                    continue;
                }
            };
            // Browser sockets carry the desktop: without TCP_NODELAY, Nagle
            // holds the tail of each relayed frame for an ACK (the relay
            // bench measured a third of the downstream throughput and a p99
            // round trip ten times longer).
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
            }
            let stream = AdmittedStream {
                stream,
                _admission: admission,
            };
            let connection = Connection {
                peer,
                app: self.app.clone(),
                http: Arc::clone(&http),
                shutdown: shutdown.clone(),
            };
            let tls = self.tls.clone();
            tracker.spawn(async move {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => connection.serve(tls_stream).await,
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                                metrics::counter!(DROPPED_METRIC, "reason" => "tls_handshake")
                                    .increment(1);
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake not done by the header deadline");
                                metrics::counter!(DROPPED_METRIC, "reason" => "header_timeout")
                                    .increment(1);
                            }
                        }
                    }
                    None => connection.serve(stream).await,
                }
            });
        }
    }
}

/// The HTTP/1.1 settings every connection shares.
fn http1_builder(limits: &ConnectionLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper starts this clock whenever it waits for a request head: on
        // a new connection and after each response, so it also bounds how
        // long a keep-alive connection may sit idle.
        .header_read_timeout(limits.header_timeout)
        // The read buffer must hold the whole request head; past it hyper
        // answers 431.
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
}

/// An admitted connection, ready to speak HTTP.
struct Connection {
    peer: SocketAddr,
    app: Router,
    http: Arc<http1::Builder>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            app,
            http,
            shutdown,
        } = self;
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = shutdown.cancelled() => {
                // Finish the request in flight, then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = result {
            let reason = if err.is_timeout() {
                Some("header_timeout")
            } else if err.is_parse_too_large() {
                Some("header_too_large")
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    tracing::debug!(%peer, reason, "connection closed");
                    metrics::counter!(DROPPED_METRIC, "reason" => reason).increment(1);
                }
                None => tracing::debug!(%peer, error = %err, "connection ended with an error"),
            }
        }
    }
}

/// A TCP stream that holds its place under the connection caps for as long
/// as it lives, upgraded to a WebSocket or not.
struct AdmittedStream {
    stream: TcpStream,
    _admission: Admission,
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
