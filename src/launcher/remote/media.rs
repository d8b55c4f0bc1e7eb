//! [`RemoteDesktops`]: the [`DesktopMedia`] port over the media routes of
//! each host's `deskgate launcher` (see [`super::service`]), for a gate with
//! `DESKGATE_LAUNCHER_URLS`. The gate needs no Docker socket and never sees
//! a VNC secret: the launcher authenticates to the desktop and encodes its
//! video; the gate relays the RFB bytes and signals WebRTC.
//!
//! - VNC: a WebSocket to the launcher carries the authenticated RFB stream;
//!   [`splice`] copies it to an in-memory pipe that the gate's relay reads
//!   like any desktop connection. A launcher that dies ends the pipe, so the
//!   browser's stream ends too.
//! - WebRTC: a WebSocket per stream: the offer goes up, the answer comes
//!   back, then counts (the gate's presence) and the end. The stream lives as
//!   long as that socket: dropping [`WebRtcStream::run`] closes it, and the
//!   launcher stops the stream.
//!
//! Invariant: a host that vanishes without closing its sockets (power cut,
//! partition) is noticed within [`DEAD_PEER_AFTER`]: each socket has a
//! connect and handshake deadline, TCP keepalive and a TCP user timeout, so a
//! frozen stream ends with a reason instead of holding a viewer place for the
//! minutes TCP would retransmit.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deskgate_media::rfb::InputCount;
use deskgate_media::{MediaPath, RelayEnd, StreamCounters};
use futures::{SinkExt, StreamExt, future};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::client::RemoteLauncher;
use super::splice::splice;
use super::wire::{WebRtcOfferMsg, WebRtcReport, WireIceServer, ice_failure_of};
use crate::launcher::desktop::{
    AuthenticatedRfb, DesktopError, DesktopMedia, DesktopRef, ServedOutcome, StreamFailure,
    WebRtcRequest, WebRtcStream,
};

/// How long reaching a launcher may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a launcher may take to accept a media socket: its VNC route
/// reaches and authenticates the desktop first (up to 10 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// A launcher that acknowledges nothing for this long is gone: unacknowledged
/// data (TCP user timeout) or unanswered keepalive probes on an idle socket
/// (5 s idle, then 3 probes 2 s apart) end the socket.
pub const DEAD_PEER_AFTER: Duration = Duration::from_secs(12);

/// Bytes buffered in the pipe between the launcher's socket and the relay.
const PIPE_BYTES: usize = 256 * 1024;
/// Longest message a launcher may send: a frame update's worth of RFB.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long a launcher may take to answer an offer: it reaches the desktop
/// (up to 10 s) and gathers its ICE candidates (up to 3 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A TCP connection to `request`'s host that notices a vanished peer (see
/// the module docs).
async fn dial(request: &tungstenite::handshake::client::Request) -> io::Result<TcpStream> {
    let uri = request.uri();
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no connection within 3 s"))??;
    tcp.set_nodelay(true)?;
    let socket = socket2::SockRef::from(&tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(5))
            .with_interval(Duration::from_secs(2))
            .with_retries(3),
    )?;
    socket.set_tcp_user_timeout(Some(DEAD_PEER_AFTER))?;
    Ok(tcp)
}

/// The desktops of every host's launcher, by host number. Clones share the
/// hosts, so discovery adds and removes them for every user at once.
#[derive(Clone, Debug, Default)]
pub struct RemoteDesktops {
    hosts: Arc<RwLock<BTreeMap<u16, RemoteLauncher>>>,
}

impl RemoteDesktops {
    /// Host `n`'s launcher is the `n`th.
    pub fn new(hosts: Vec<RemoteLauncher>) -> Self {
        let desktops = Self::default();
        for (host, remote) in (0..=u16::MAX).zip(hosts) {
            desktops.add(host, remote);
        }
        desktops
    }

    /// Host `host`'s desktops are reached through `remote` from now on.
    pub fn add(&self, host: u16, remote: RemoteLauncher) {
        self.hosts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(host, remote);
    }

    /// Host `host` was declared gone.
    pub fn remove(&self, host: u16) {
        self.hosts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&host);
    }

    fn host(&self, desktop: DesktopRef) -> Result<RemoteLauncher, DesktopError> {
        self.hosts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&desktop.host)
            .cloned()
            .ok_or(DesktopError::Unknown)
    }

    /// Opens the WebSocket `v1/sessions/{id}/{path}` on the desktop's host.
    async fn connect(&self, desktop: DesktopRef, path: &str) -> Result<Socket, DesktopError> {
        let remote = self.host(desktop)?;
        let request = remote
            .socket_request(&format!("v1/sessions/{}/{path}", desktop.session), &[])
            .map_err(|e| DesktopError::Unreachable(e.0))?;
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES));
        metrics::counter!("deskgate_media_desktop_dials_total").increment(1);
        let unreachable = |why: String| {
            DesktopError::Unreachable(format!(
                "the session's host {} did not answer: {why}",
                remote.base()
            ))
        };
        let tcp = dial(&request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let handshake =
            tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config), None);
        let answered = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| unreachable("no answer within 15 s".into()))?;
        match answered {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let detail = response
                    .body()
                    .as_deref()
                    .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                    .and_then(|p| p.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                Err(match status.as_u16() {
                    404 => DesktopError::Unknown,
                    503 => DesktopError::VideoUnavailable(detail),
                    _ => DesktopError::Unreachable(format!(
                        "launcher {} answered {status}: {detail}",
                        remote.base()
                    )),
                })
            }
            Err(err) => Err(unreachable(err.to_string())),
        }
    }
}

#[async_trait]
impl DesktopMedia for RemoteDesktops {
    async fn open_vnc(&self, desktop: DesktopRef) -> Result<AuthenticatedRfb, DesktopError> {
        let socket = self.connect(desktop, "vnc").await?;
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let session = desktop.session;
        tokio::spawn(async move {
            let (sink, stream) = socket.split();
            let incoming = stream
                .take_while(|m| future::ready(!matches!(m, Ok(Message::Close(_)))))
                .filter_map(|m| {
                    future::ready(match m {
                        Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                        Ok(_) => None,
                        Err(err) => Some(Err(io::Error::other(err))),
                    })
                });
            let outgoing = sink
                .sink_map_err(io::Error::other)
                .with(|bytes: Bytes| future::ready(Ok::<_, io::Error>(Message::Binary(bytes))));
            match splice(theirs, std::pin::pin!(incoming), std::pin::pin!(outgoing)).await {
                Ok(end) => tracing::debug!(%session, ?end, "launcher VNC socket closed"),
                Err(err) => {
                    tracing::warn!(%session, error = %err, "the launcher's VNC socket broke");
                }
            }
        });
        Ok(Box::pin(ours))
    }

    async fn answer_webrtc(
        &self,
        desktop: DesktopRef,
        request: WebRtcRequest,
    ) -> Result<WebRtcStream, DesktopError> {
        let mut socket = self.connect(desktop, "webrtc").await?;
        let offer = WebRtcOfferMsg {
            offer: request.offer,
            ice_servers: request
                .ice_servers
                .into_iter()
                .map(WireIceServer::from)
                .collect(),
        };
        let text = serde_json::to_string(&offer).unwrap_or_default();
        socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| DesktopError::Unreachable(format!("sending the offer: {e}")))?;
        let first = tokio::time::timeout(ANSWER_TIMEOUT, next_report(&mut socket))
            .await
            .map_err(|_| DesktopError::Unreachable("the launcher did not answer the offer".into()))?
            .map_err(DesktopError::Unreachable)?;
        let answer = match first {
            WebRtcReport::Answer { sdp } => sdp,
            WebRtcReport::Refused { refusal, detail } => return Err(refusal.to_error(detail)),
            other => {
                return Err(DesktopError::Failed(format!(
                    "the launcher sent {other:?} before its answer"
                )));
            }
        };
        let counters = Arc::new(StreamCounters::default());
        let run = Box::pin(follow_stream(socket, counters.clone(), desktop));
        Ok(WebRtcStream {
            answer,
            counters,
            run,
        })
    }
}

/// The next report on `socket`, or why there is none.
async fn next_report(socket: &mut Socket) -> Result<WebRtcReport, String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .map_err(|e| format!("unreadable report from the launcher: {e}"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("the launcher closed the stream ({frame:?})"));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("lost the launcher: {err}")),
            None => return Err("lost the launcher".into()),
        }
    }
}

/// Follows a running stream's reports into `counters` until it ends; an ICE
/// failure on the launcher is logged and counted here too, with its reason.
async fn follow_stream(
    mut socket: Socket,
    counters: Arc<StreamCounters>,
    desktop: DesktopRef,
) -> ServedOutcome {
    let lost = |detail: String| StreamFailure { ice: None, detail };
    let path = MediaPath::WebRtc;
    let mut seen = deskgate_media::CounterSnapshot::default();
    loop {
        match next_report(&mut socket).await.map_err(lost)? {
            WebRtcReport::Counts {
                keys,
                pointer,
                bytes_up,
                bytes_down,
            } => {
                counters.add_input(
                    path,
                    InputCount {
                        keys: keys.saturating_sub(seen.keys),
                        pointer: pointer.saturating_sub(seen.pointer),
                    },
                );
                counters.add_up(
                    path,
                    usize::try_from(bytes_up.saturating_sub(seen.bytes_up)).unwrap_or(usize::MAX),
                );
                counters.add_down(
                    path,
                    usize::try_from(bytes_down.saturating_sub(seen.bytes_down))
                        .unwrap_or(usize::MAX),
                );
                seen = deskgate_media::CounterSnapshot {
                    keys,
                    pointer,
                    bytes_up,
                    bytes_down,
                    frames: 0,
                };
            }
            WebRtcReport::Ended {
                reason,
                ice_failure,
            } => {
                let _ = socket.close(None).await;
                let ice = ice_failure.as_deref().and_then(ice_failure_of);
                if let Some(failure) = ice {
                    metrics::counter!("deskgate_media_ice_failures_total", "reason" => failure.label())
                        .increment(1);
                    tracing::warn!(
                        session = %desktop.session,
                        host = desktop.host,
                        reason = failure.label(),
                        detail = %reason,
                        "a browser's WebRTC connection to the session's host failed"
                    );
                }
                return match reason.as_str() {
                    "browser" => Ok(RelayEnd::BrowserClosed),
                    "desktop" => Ok(RelayEnd::DesktopClosed),
                    _ => Err(StreamFailure {
                        ice,
                        detail: reason,
                    }),
                };
            }
            other => return Err(lost(format!("the launcher sent {other:?} mid-stream"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use deskgate_actors::ports::SessionId;
    use deskgate_actors::testing::FakeLauncher;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::{mpsc, oneshot};
    use url::Url;

    use super::*;
    use crate::config::GpuSelection;
    use crate::http::Limits;
    use crate::launcher::remote::service::{ExitLog, LauncherState, router};
    use crate::platform::secret::Secret;

    const TOKEN: &str = "5d1e9c3a7b2f4e6d8c0a1b3e5f7d9c2a4b6e8f0d1c3a5b7e9f2d4c6a8b0e1f3d";

    /// A host's desktops as the test drives them: VNC hands the test the
    /// desktop's end of a pipe; WebRTC runs until the test ends it.
    #[derive(Default)]
    struct FakeDesktops {
        known: Mutex<Option<SessionId>>,
        desktop_ends: Mutex<Option<mpsc::UnboundedSender<DuplexStream>>>,
        webrtc: Mutex<Option<(Arc<StreamCounters>, oneshot::Receiver<ServedOutcome>)>>,
        webrtc_dropped: Arc<AtomicBool>,
    }

    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl DesktopMedia for FakeDesktops {
        async fn open_vnc(&self, desktop: DesktopRef) -> Result<AuthenticatedRfb, DesktopError> {
            if *self.known.lock().unwrap() != Some(desktop.session) {
                return Err(DesktopError::Unknown);
            }
            let (ours, theirs) = tokio::io::duplex(4096);
            let sink = self.desktop_ends.lock().unwrap();
            sink.as_ref().unwrap().send(theirs).unwrap();
            Ok(Box::pin(ours))
        }

        async fn answer_webrtc(
            &self,
            desktop: DesktopRef,
            request: WebRtcRequest,
        ) -> Result<WebRtcStream, DesktopError> {
            if *self.known.lock().unwrap() != Some(desktop.session) {
                return Err(DesktopError::Unknown);
            }
            if !request.offer.starts_with("v=0") {
                return Err(DesktopError::BadOffer("not SDP".into()));
            }
            let (counters, ended) = self.webrtc.lock().unwrap().take().unwrap();
            let dropped = SetOnDrop(self.webrtc_dropped.clone());
            let run = Box::pin(async move {
                let _dropped = dropped;
                ended.await.unwrap_or(Err(StreamFailure {
                    ice: None,
                    detail: "abandoned".into(),
                }))
            });
            let turn = request.ice_servers.first().map(|s| s.username.clone());
            Ok(WebRtcStream {
                answer: format!("answer with {turn:?}"),
                counters,
                run,
            })
        }
    }

    /// A launcher service with `desktops` on a loopback port, and the gate's
    /// side of it as host 0.
    async fn launcher_with(desktops: Arc<FakeDesktops>) -> RemoteDesktops {
        let state = Arc::new(LauncherState {
            token: Secret::new(TOKEN),
            gpus: GpuSelection::Fake(1),
            name: None,
            gpu_indices: BTreeSet::from([0]),
            launcher: Arc::new(FakeLauncher::new()),
            exits: Arc::new(ExitLog::default()),
            desktops,
        });
        let limits = Limits {
            max_body_bytes: 1 << 16,
            request_timeout: Duration::from_secs(30),
        };
        let app = router(state, limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = Url::parse(&format!("http://{addr}/")).unwrap();
        RemoteDesktops::new(vec![RemoteLauncher::new(base, Secret::new(TOKEN)).unwrap()])
    }

    fn on_host_0(session: SessionId) -> DesktopRef {
        DesktopRef { session, host: 0 }
    }

    #[tokio::test]
    async fn vnc_bytes_cross_the_launcher_both_ways_and_a_closed_desktop_ends_the_stream() {
        let session = SessionId::new();
        let (ends, mut desktop_ends) = mpsc::unbounded_channel();
        let desktops = Arc::new(FakeDesktops::default());
        *desktops.known.lock().unwrap() = Some(session);
        *desktops.desktop_ends.lock().unwrap() = Some(ends);
        let remote = launcher_with(desktops).await;

        let mut rfb = remote.open_vnc(on_host_0(session)).await.unwrap();
        let mut desktop = desktop_ends.recv().await.unwrap();
        rfb.write_all(b"ClientInit").await.unwrap();
        let mut got = [0u8; 10];
        desktop.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ClientInit");
        desktop.write_all(b"ServerInit").await.unwrap();
        rfb.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ServerInit");

        drop(desktop);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), rfb.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the gate's stream ends with the desktop's: {read:?}"
        );
    }

    #[tokio::test]
    async fn webrtc_answers_then_reports_input_and_the_end() {
        let session = SessionId::new();
        let desktops = Arc::new(FakeDesktops::default());
        *desktops.known.lock().unwrap() = Some(session);
        let launcher_counters = Arc::new(StreamCounters::default());
        let (end, ended) = oneshot::channel();
        *desktops.webrtc.lock().unwrap() = Some((launcher_counters.clone(), ended));
        let remote = launcher_with(desktops.clone()).await;

        let request = WebRtcRequest {
            offer: "v=0 offer".into(),
            ice_servers: vec![deskgate_media::IceServer {
                urls: vec!["turn:turn.example:3478".into()],
                username: "1700000000:viewer".into(),
                credential: "c".into(),
            }],
        };
        let stream = remote
            .answer_webrtc(on_host_0(session), request)
            .await
            .unwrap();
        assert_eq!(stream.answer, r#"answer with Some("1700000000:viewer")"#);

        launcher_counters.add_input(
            MediaPath::WebRtc,
            InputCount {
                keys: 3,
                pointer: 5,
            },
        );
        let gate_counters = stream.counters.clone();
        let mut run = stream.run;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while gate_counters.snapshot().keys < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "counts never arrived"
            );
            tokio::select! {
                outcome = &mut run => panic!("the stream ended early: {outcome:?}"),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        assert_eq!(gate_counters.snapshot().pointer, 5);

        end.send(Ok(RelayEnd::BrowserClosed)).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), run).await;
        assert!(
            matches!(outcome, Ok(Ok(RelayEnd::BrowserClosed))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_ice_failure_on_the_launcher_reaches_the_gate_with_its_reason() {
        let session = SessionId::new();
        let desktops = Arc::new(FakeDesktops::default());
        *desktops.known.lock().unwrap() = Some(session);
        let (end, ended) = oneshot::channel();
        *desktops.webrtc.lock().unwrap() = Some((Arc::default(), ended));
        let remote = launcher_with(desktops).await;
        let request = WebRtcRequest {
            offer: "v=0".into(),
            ice_servers: Vec::new(),
        };
        let stream = remote
            .answer_webrtc(on_host_0(session), request)
            .await
            .unwrap();
        let failure = StreamFailure {
            ice: Some(deskgate_media::IceFailure::NoPair),
            detail: "ICE failed (no candidate pair succeeded)".into(),
        };
        end.send(Err(failure.clone())).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), stream.run).await;
        assert_eq!(outcome.expect("the end arrives"), Err(failure));
    }

    #[tokio::test]
    async fn dropping_the_gates_side_stops_the_launchers_stream() {
        let session = SessionId::new();
        let desktops = Arc::new(FakeDesktops::default());
        *desktops.known.lock().unwrap() = Some(session);
        let (_end, ended) = oneshot::channel();
        *desktops.webrtc.lock().unwrap() = Some((Arc::default(), ended));
        let remote = launcher_with(desktops.clone()).await;
        let request = WebRtcRequest {
            offer: "v=0".into(),
            ice_servers: Vec::new(),
        };
        let stream = remote
            .answer_webrtc(on_host_0(session), request)
            .await
            .unwrap();
        assert!(!desktops.webrtc_dropped.load(Ordering::SeqCst));
        drop(stream);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !desktops.webrtc_dropped.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the launcher kept streaming"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn refusals_keep_their_meaning_across_the_wire() {
        let desktops = Arc::new(FakeDesktops::default());
        let known = SessionId::new();
        *desktops.known.lock().unwrap() = Some(known);
        let remote = launcher_with(desktops).await;
        let stranger = on_host_0(SessionId::new());
        assert!(matches!(
            remote.open_vnc(stranger).await,
            Err(DesktopError::Unknown)
        ));
        let offer = |sdp: &str| WebRtcRequest {
            offer: sdp.into(),
            ice_servers: Vec::new(),
        };
        assert!(matches!(
            remote.answer_webrtc(stranger, offer("v=0")).await,
            Err(DesktopError::Unknown)
        ));
        assert!(matches!(
            remote.answer_webrtc(on_host_0(known), offer("garbage")).await,
            Err(DesktopError::BadOffer(detail)) if detail.contains("not SDP")
        ));
        // A host the gate does not have, and a host that does not answer.
        let elsewhere = DesktopRef {
            session: known,
            host: 7,
        };
        assert!(matches!(
            remote.open_vnc(elsewhere).await,
            Err(DesktopError::Unknown)
        ));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", closed.local_addr().unwrap())).unwrap();
        drop(closed);
        let gone =
            RemoteDesktops::new(vec![RemoteLauncher::new(base, Secret::new(TOKEN)).unwrap()]);
        assert!(matches!(
            gone.open_vnc(on_host_0(known)).await,
            Err(DesktopError::Unreachable(detail)) if detail.contains("did not answer")
        ));
    }
}
