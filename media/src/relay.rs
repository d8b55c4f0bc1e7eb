//! The VNC relay: a browser's WebSocket on one side, the session's desktop
//! (already authenticated, see [`crate::rfb::authenticate`]) on the other.
//!
//! Memory per connection is bounded: towards the browser at most one chunk
//! (`RelayLimits::chunk_bytes`) is in flight, and the relay reads no more
//! from the desktop until the browser's socket has taken it, so a slow browser
//! slows the desktop down (TCP back-pressure) instead of growing a queue.
//! Towards the desktop only whole client messages are forwarded, each at most
//! `RelayLimits::max_client_message` bytes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};

use crate::rfb::{ClientMessages, InputCount, RfbError, accept_browser};

/// Size limits and timeouts of one relayed connection.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Most bytes read from the desktop and sent as one WebSocket message.
    pub chunk_bytes: usize,
    /// Longest client message forwarded (clipboard text is the long one).
    pub max_client_message: usize,
    /// Time the browser has to finish its side of the handshake.
    pub handshake_timeout: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            chunk_bytes: 64 * 1024,
            max_client_message: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Which media path a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaPath {
    /// RFB over WebSocket (noVNC).
    Vnc,
    /// Encoded video over a WebRTC peer connection.
    WebRtc,
}

impl MediaPath {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vnc => "vnc",
            Self::WebRtc => "webrtc",
        }
    }
}

/// Live counts of one stream, shared with whoever watches it.
#[derive(Debug, Default)]
pub struct StreamCounters {
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    keys: AtomicU64,
    pointer: AtomicU64,
    frames: AtomicU64,
}

/// A copy of [`StreamCounters`] at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Bytes from the browser to the desktop.
    pub bytes_up: u64,
    /// Bytes from the desktop to the browser.
    pub bytes_down: u64,
    /// Key events from the browser.
    pub keys: u64,
    /// Pointer events from the browser.
    pub pointer: u64,
    /// Video frames sent (WebRTC only).
    pub frames: u64,
}

impl StreamCounters {
    /// The counts now.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            keys: self.keys.load(Ordering::Relaxed),
            pointer: self.pointer.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
        }
    }

    /// Counts bytes sent towards the desktop.
    pub fn add_up(&self, path: MediaPath, bytes: usize) {
        self.bytes_up.fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("deskgate_media_bytes_total", "path" => path.as_str(), "direction" => "up")
            .increment(bytes as u64);
    }

    /// Counts bytes sent towards the browser.
    pub fn add_down(&self, path: MediaPath, bytes: usize) {
        self.bytes_down.fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("deskgate_media_bytes_total", "path" => path.as_str(), "direction" => "down")
            .increment(bytes as u64);
    }

    /// Counts one video frame of `bytes` sent towards the browser.
    pub fn add_frame(&self, path: MediaPath, bytes: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("deskgate_media_frames_total", "path" => path.as_str()).increment(1);
        self.add_down(path, bytes);
    }

    /// Counts input events from the browser.
    pub fn add_input(&self, path: MediaPath, input: InputCount) {
        if input.keys > 0 {
            self.keys.fetch_add(input.keys, Ordering::Relaxed);
            metrics::counter!("deskgate_media_input_events_total", "path" => path.as_str(), "kind" => "key")
                .increment(input.keys);
        }
        if input.pointer > 0 {
            self.pointer.fetch_add(input.pointer, Ordering::Relaxed);
            metrics::counter!("deskgate_media_input_events_total", "path" => path.as_str(), "kind" => "pointer")
                .increment(input.pointer);
        }
    }
}

/// Which side ended a relayed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The browser closed its socket.
    BrowserClosed,
    /// The desktop closed its connection.
    DesktopClosed,
}

/// Relays one browser connection to an authenticated desktop until either
/// side closes. `browser_in` yields the payloads of the browser's binary
/// messages; `browser_out` sends one binary message per item.
pub async fn relay_vnc<D, In, Out>(
    desktop: D,
    browser_in: In,
    mut browser_out: Out,
    counters: &StreamCounters,
    limits: &RelayLimits,
) -> Result<RelayEnd, RfbError>
where
    D: AsyncRead + AsyncWrite + Unpin,
    In: Stream<Item = io::Result<Bytes>> + Unpin,
    Out: Sink<Bytes, Error = io::Error> + Unpin,
{
    let mut browser_in = StreamReader::new(browser_in);
    {
        let mut writer = SinkWriter::new(CopyToBytes::new(&mut browser_out));
        tokio::time::timeout(
            limits.handshake_timeout,
            accept_browser(&mut browser_in, &mut writer),
        )
        .await
        .map_err(|_| RfbError::Timeout(limits.handshake_timeout))??;
    }
    let (mut desktop_in, mut desktop_out) = tokio::io::split(desktop);
    let path = MediaPath::Vnc;

    let upstream = async {
        // ClientInit (the shared flag) is one byte and not a framed message.
        let shared = browser_in.read_u8().await?;
        desktop_out.write_all(&[shared]).await?;
        counters.add_up(path, 1);
        let mut framer = ClientMessages::new(limits.max_client_message);
        loop {
            let received = browser_in.fill_buf().await?;
            if received.is_empty() {
                return Ok(RelayEnd::BrowserClosed);
            }
            let n = received.len();
            framer.push(received);
            browser_in.consume(n);
            // Until nothing whole is left: a refused message after whole
            // ones is an error on the call after they are forwarded.
            loop {
                let (whole, input) = framer.take_complete()?;
                if whole.is_empty() {
                    break;
                }
                desktop_out.write_all(&whole).await?;
                desktop_out.flush().await?;
                counters.add_up(path, whole.len());
                counters.add_input(path, input);
            }
        }
    };
    let downstream = async {
        let mut buf = BytesMut::with_capacity(limits.chunk_bytes);
        loop {
            buf.reserve(limits.chunk_bytes);
            let n = (&mut desktop_in)
                .take(limits.chunk_bytes as u64)
                .read_buf(&mut buf)
                .await?;
            if n == 0 {
                return Ok(RelayEnd::DesktopClosed);
            }
            browser_out.send(buf.split().freeze()).await?;
            counters.add_down(path, n);
        }
    };
    tokio::select! {
        end = upstream => end,
        end = downstream => end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfb::VERSION_3_8;
    use futures::StreamExt;
    use futures::channel::mpsc;

    /// What the relay reads from the browser.
    type BrowserIn = mpsc::Receiver<io::Result<Bytes>>;

    /// A browser made of two channels, as the gate makes one of a WebSocket:
    /// (test → relay, relay's input, relay's output, relay → test).
    fn browser() -> (
        mpsc::Sender<io::Result<Bytes>>,
        BrowserIn,
        mpsc::Sender<Bytes>,
        mpsc::Receiver<Bytes>,
    ) {
        let (to_relay, relay_in) = mpsc::channel(4);
        let (relay_out, from_relay) = mpsc::channel(1);
        (to_relay, relay_in, relay_out, from_relay)
    }

    async fn next_bytes(rx: &mut mpsc::Receiver<Bytes>, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            got.extend_from_slice(&rx.next().await.expect("relay closed"));
        }
        got
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_only_input_is_counted() {
        let (mut to_relay, relay_in, relay_out, mut from_relay) = browser();
        let (desktop, mut vnc) = tokio::io::duplex(64 * 1024);
        let counters = std::sync::Arc::new(StreamCounters::default());
        let relay_counters = counters.clone();
        let relay = tokio::spawn(async move {
            relay_vnc(
                desktop,
                relay_in,
                relay_out.sink_map_err(|_| io::Error::other("browser gone")),
                &relay_counters,
                &RelayLimits::default(),
            )
            .await
        });
        // Handshake: version, None offered, result.
        assert_eq!(next_bytes(&mut from_relay, 12).await, VERSION_3_8);
        to_relay
            .send(Ok(Bytes::from_static(VERSION_3_8)))
            .await
            .unwrap();
        assert_eq!(next_bytes(&mut from_relay, 2).await, [1, 1]);
        to_relay.send(Ok(Bytes::from_static(&[1]))).await.unwrap();
        assert_eq!(next_bytes(&mut from_relay, 4).await, [0, 0, 0, 0]);
        // ClientInit and a framebuffer request reach the desktop; nothing is input yet.
        to_relay
            .send(Ok(Bytes::from_static(&[1, 3, 0, 0, 0, 0, 0, 0, 16, 0, 16])))
            .await
            .unwrap();
        let mut seen = [0u8; 11];
        vnc.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen[0], 1);
        assert_eq!(counters.snapshot().pointer + counters.snapshot().keys, 0);
        // A pointer event split over two WebSocket messages arrives whole.
        to_relay
            .send(Ok(Bytes::from_static(&[5, 0, 0])))
            .await
            .unwrap();
        to_relay
            .send(Ok(Bytes::from_static(&[7, 0, 9])))
            .await
            .unwrap();
        let mut pointer = [0u8; 6];
        vnc.read_exact(&mut pointer).await.unwrap();
        assert_eq!(pointer, [5, 0, 0, 7, 0, 9]);
        // Desktop bytes reach the browser.
        vnc.write_all(b"server-bytes").await.unwrap();
        assert_eq!(next_bytes(&mut from_relay, 12).await, b"server-bytes");
        let counts = counters.snapshot();
        assert_eq!((counts.pointer, counts.keys), (1, 0));
        assert_eq!(counts.bytes_up, 11 + 6);
        assert_eq!(counts.bytes_down, 12);
        // The desktop closing ends the relay.
        drop(vnc);
        assert_eq!(relay.await.unwrap().unwrap(), RelayEnd::DesktopClosed);
    }

    #[tokio::test]
    async fn whole_messages_before_a_refused_one_reach_the_desktop_then_it_ends() {
        let (mut to_relay, relay_in, relay_out, mut from_relay) = browser();
        let (desktop, mut vnc) = tokio::io::duplex(64 * 1024);
        let counters = std::sync::Arc::new(StreamCounters::default());
        let relay_counters = counters.clone();
        let relay = tokio::spawn(async move {
            relay_vnc(
                desktop,
                relay_in,
                relay_out.sink_map_err(|_| io::Error::other("browser gone")),
                &relay_counters,
                &RelayLimits::default(),
            )
            .await
        });
        next_bytes(&mut from_relay, 12).await;
        to_relay
            .send(Ok(Bytes::from_static(VERSION_3_8)))
            .await
            .unwrap();
        next_bytes(&mut from_relay, 2).await;
        to_relay.send(Ok(Bytes::from_static(&[1]))).await.unwrap();
        next_bytes(&mut from_relay, 4).await;
        // ClientInit, a key release and an unknown message type in one
        // WebSocket message, and the browser stays: the release reaches the
        // desktop (else the key would stay pressed there) and the relay ends
        // with the error at once.
        let key_up = [4u8, 0, 0, 0, 0, 0, 0, 0x61];
        let sent = [&[1u8][..], &key_up, &[7, 0, 0]].concat();
        to_relay.send(Ok(Bytes::from(sent))).await.unwrap();
        let err = relay.await.unwrap().unwrap_err();
        assert!(matches!(err, RfbError::UnsupportedMessage(7)), "{err}");
        let mut seen = [0u8; 9];
        vnc.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen[1..], key_up);
        assert_eq!(counters.snapshot().keys, 1);
        drop(to_relay);
    }

    #[tokio::test]
    async fn a_slow_browser_stops_the_relay_reading_the_desktop() {
        let (mut to_relay, relay_in, relay_out, mut from_relay) = browser();
        let (desktop, mut vnc) = tokio::io::duplex(8 * 1024);
        let limits = RelayLimits {
            chunk_bytes: 4096,
            ..RelayLimits::default()
        };
        let counters = std::sync::Arc::new(StreamCounters::default());
        let relay_counters = counters.clone();
        tokio::spawn(async move {
            relay_vnc(
                desktop,
                relay_in,
                relay_out.sink_map_err(|_| io::Error::other("browser gone")),
                &relay_counters,
                &limits,
            )
            .await
        });
        next_bytes(&mut from_relay, 12).await;
        to_relay
            .send(Ok(Bytes::from_static(VERSION_3_8)))
            .await
            .unwrap();
        next_bytes(&mut from_relay, 2).await;
        to_relay.send(Ok(Bytes::from_static(&[1]))).await.unwrap();
        next_bytes(&mut from_relay, 4).await;
        // The browser reads nothing more: the desktop can push only what the
        // pipe, one channel slot and one chunk in hand hold, then blocks.
        let blocked = tokio::time::timeout(Duration::from_millis(500), async {
            let block = vec![0u8; 1024];
            loop {
                vnc.write_all(&block).await.unwrap();
            }
        })
        .await;
        assert!(blocked.is_err(), "the desktop was never held back");
        let relayed = counters.snapshot().bytes_down;
        assert!(
            relayed <= 3 * 4096,
            "relay took {relayed} bytes from the desktop with no reader"
        );
    }
}
