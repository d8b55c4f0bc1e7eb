//! The WebRTC stream of one desktop: an RFB client keeps a copy of the
//! desktop, changed pixels are encoded to video at most `max_fps` times a
//! second, and input from the browser's data channel goes back as RFB
//! events.
//!
//! Three things run in one task, so dropping the future (the
//! [`crate::MediaActor`] closing) ends them all:
//!
//! - the **decoder** reads the desktop's updates, one incremental request per
//!   frame interval, and copies the damaged rectangles into a shared frame
//!   (with the screen id a resize must name); the desktop's clipboard text
//!   goes to the loop, which sends it to the browser;
//! - the **desktop writer** sends whole RFB messages (update requests and
//!   input) to the desktop through one queue, so they never interleave;
//! - the **loop** reacts to the peer (connected, input — pointer, keys,
//!   clipboard, resize —, keyframe requests, congestion feedback, failed,
//!   closed) and encodes the shared frame when it changed; the feedback
//!   moves the encoder's bitrate ([`crate::bitrate`]). An idle desktop
//!   answers no update request, so nothing is encoded and no frame is sent;
//!   a keyframe request is answered unless the last frame sent was a
//!   keyframe and nothing changed since.
//!
//! Why one long file: the three parts share one select loop and its state;
//! over half of the file is its tests, with a fake desktop, encoder
//! and peer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::PollSender;

use crate::bitrate::BitrateController;
use crate::framebuffer::Rect;
use crate::input::InputEvent;
use crate::relay::{MediaPath, RelayEnd, StreamCounters};
use crate::rfb_client::{RfbClient, RfbClientError, ServerMessage};
use crate::video::{EncodeError, MIN_BITRATE_BPS, VideoEncoder, VideoSettings};
use crate::webrtc_peer::{IceFailure, PeerError, PeerEvent, VideoPeer};

/// RFB messages queued towards the desktop.
const DESKTOP_QUEUE: usize = 64;
/// Desktop clipboard texts queued towards the browser; more are dropped
/// (the newest one that fits wins soon enough: clipboards are replaced).
const CLIPBOARD_QUEUE: usize = 4;
/// Time the browser has to connect after its offer was answered (and the
/// desktop to finish its RFB set-up); a stream that never starts would
/// otherwise hold a desktop connection until the session ends.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait before a keyframe request on an idle desktop is answered
/// again; doubles with each answer until the picture changes.
const IDLE_KEYFRAME_WAIT: Duration = Duration::from_secs(10);
/// Largest desktop encoded (4K UHD): each viewer holds three copies of it,
/// and VP8 cannot code beyond 16383 pixels a side anyway.
pub const MAX_VIDEO_PIXELS: usize = 3840 * 2160;

/// Why a WebRTC stream stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The desktop's RFB stream failed.
    #[error("desktop: {0}")]
    Desktop(#[from] RfbClientError),
    /// The encoder failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The peer connection failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The connection to the browser failed (logged and counted by the peer).
    #[error("ICE failed ({0})")]
    IceFailed(IceFailure),
    /// The browser (or the desktop's RFB set-up) did not connect in time.
    #[error("the stream did not start within {0:?}")]
    NotConnected(Duration),
    /// The desktop is larger than [`MAX_VIDEO_PIXELS`].
    #[error("the desktop is {0}x{1}, larger than the video path encodes (3840x2160)")]
    TooLarge(u16, u16),
}

/// The desktop as last decoded, shared between the decoder and the loop.
#[derive(Debug, Default)]
struct SharedFrame {
    pixels: Vec<u32>,
    width: u16,
    height: u16,
    /// Changed since the loop last took a copy.
    dirty: bool,
    /// The desktop's screen id, which a resize must name; `None` until the
    /// desktop has sent its layout.
    screen_id: Option<u32>,
}

impl SharedFrame {
    /// Copies `rects` of `source` (`width`×`height`); a new size copies all.
    fn update(&mut self, source: &[u32], width: u16, height: u16, rects: &[Rect]) {
        if (width, height) != (self.width, self.height) {
            self.pixels.clear();
            self.pixels.extend_from_slice(source);
            self.width = width;
            self.height = height;
        } else {
            let stride = usize::from(width);
            for rect in rects {
                let (x, w) = (usize::from(rect.x), usize::from(rect.width));
                for row in usize::from(rect.y)..rect.bottom() as usize {
                    let at = row * stride + x;
                    self.pixels[at..at + w].copy_from_slice(&source[at..at + w]);
                }
            }
        }
        self.dirty = true;
    }
}

/// Streams the desktop behind `desktop` (an authenticated RFB stream, see
/// [`crate::rfb::authenticate`]) to `peer` until either ends.
pub async fn stream_desktop<D, P>(
    desktop: D,
    mut peer: P,
    encoder: Box<dyn VideoEncoder>,
    settings: VideoSettings,
    counters: &StreamCounters,
) -> Result<RelayEnd, StreamError>
where
    D: AsyncRead + AsyncWrite + Send + 'static,
    P: VideoPeer,
{
    let path = MediaPath::WebRtc;
    let interval = Duration::from_secs(1) / settings.max_fps.max(1);
    let (read_half, write_half) = tokio::io::split(desktop);
    let (to_desktop, queued) = mpsc::channel::<Bytes>(DESKTOP_QUEUE);
    let connect_by = Instant::now() + CONNECT_TIMEOUT;
    let writing = write_desktop(write_half, queued);
    tokio::pin!(writing);
    // The handshake's own messages go through the writer, so it runs too.
    let connecting = RfbClient::connect(tokio::io::join(
        read_half,
        MessageWriter(PollSender::new(to_desktop.clone())),
    ));
    let client = tokio::select! {
        client = connecting => client?,
        result = &mut writing => return desktop_ended(result.map_err(|e| StreamError::Desktop(e.into()))),
        () = tokio::time::sleep_until(connect_by) => {
            return Err(StreamError::NotConnected(CONNECT_TIMEOUT));
        }
    };
    let shared = Arc::new(Mutex::new(SharedFrame::default()));
    let changed = Arc::new(Notify::new());
    let (clipboard_tx, mut clipboard) = mpsc::channel::<String>(CLIPBOARD_QUEUE);
    let decoding = decode_desktop(
        client,
        shared.clone(),
        changed.clone(),
        clipboard_tx,
        interval,
    );
    tokio::pin!(decoding);

    // Encoding runs on the blocking pool; the job (encoder and the pixels
    // it encodes) is shared with it rather than moved back and forth.
    let job = Arc::new(Mutex::new(EncodeJob {
        encoder,
        pixels: Vec::new(),
    }));
    let mut connected = false;
    let mut pending = false;
    let mut keyframe = true;
    let mut next_slot = Instant::now();
    // The last frame sent, if it was a keyframe: when it was sent.
    let mut last_keyframe: Option<Instant> = None;
    let mut idle_keyframe_wait = IDLE_KEYFRAME_WAIT;
    // Set up with the first frame's size; its changes reach the encoder
    // with the next frame.
    let mut bitrate: Option<(BitrateController, (u16, u16))> = None;
    let mut new_bitrate: Option<u32> = None;
    loop {
        tokio::select! {
            event = peer.next_event() => match event {
                None | Some(PeerEvent::Closed) => return Ok(RelayEnd::BrowserClosed),
                Some(PeerEvent::Failed(reason)) => return Err(StreamError::IceFailed(reason)),
                Some(PeerEvent::Feedback(feedback)) => {
                    if let Some((controller, _)) = &mut bitrate {
                        let now = Instant::now().into_std();
                        new_bitrate = controller.on_feedback(feedback, now).or(new_bitrate);
                    }
                }
                Some(PeerEvent::Connected) => {
                    connected = true;
                    pending = true;
                    keyframe = true;
                }
                Some(PeerEvent::KeyframeRequested) => {
                    // Chromium asks for a keyframe whenever no frame has come
                    // for 3 s, which on an idle desktop is always. If the last
                    // frame was a keyframe and nothing changed since, the
                    // browser most likely has it, so the request waits,
                    // twice as long each time: an idle desktop stays quiet,
                    // and a viewer that lost the keyframe's last packet (which
                    // no NACK can notice) still gets it again, a little later.
                    let idle_since_keyframe = last_keyframe
                        .filter(|_| !pending && !lock(&shared).dirty)
                        .map(|sent| sent.elapsed());
                    match idle_since_keyframe {
                        Some(waited) if waited < idle_keyframe_wait => {
                            tracing::trace!(?waited, "keyframe request while idle after a keyframe: not answered yet");
                        }
                        Some(_) => {
                            idle_keyframe_wait = idle_keyframe_wait.saturating_mul(2);
                            pending = true;
                            keyframe = true;
                        }
                        None => {
                            pending = true;
                            keyframe = true;
                        }
                    }
                }
                Some(PeerEvent::Input(message)) => match InputEvent::parse(&message) {
                    Ok(input) => {
                        let screen_id = lock(&shared).screen_id;
                        let Some(rfb) = input.to_rfb(screen_id) else {
                            metrics::counter!("deskgate_media_refused_total", "reason" => "input").increment(1);
                            tracing::debug!("resize asked of a desktop that sent no screen layout");
                            continue;
                        };
                        let rfb = Bytes::from(rfb);
                        counters.add_up(path, rfb.len());
                        counters.add_input(path, input.count());
                        // A full queue waits for the desktop; the writer and
                        // the decoder keep running meanwhile, or a desktop that
                        // stalled once would never be drained again.
                        tokio::select! {
                            sent = to_desktop.send(rfb) => if sent.is_err() {
                                return Ok(RelayEnd::DesktopClosed);
                            },
                            result = &mut decoding => return desktop_ended(result),
                            result = &mut writing => return desktop_ended(result.map_err(|e| StreamError::Desktop(e.into()))),
                        }
                    }
                    Err(err) => {
                        metrics::counter!("deskgate_media_refused_total", "reason" => "input").increment(1);
                        tracing::debug!(error = %err, "input message dropped");
                    }
                },
            },
            result = &mut decoding => return desktop_ended(result),
            result = &mut writing => return desktop_ended(result.map_err(|e| StreamError::Desktop(e.into()))),
            Some(text) = clipboard.recv() => {
                let message = serde_json::json!({ "type": "clipboard", "text": text }).to_string();
                counters.add_down(path, message.len());
                // A browser whose channel is gone misses the clipboard; the
                // picture goes on.
                if let Err(err) = peer.send_text(message).await {
                    tracing::debug!(error = %err, "desktop clipboard not sent to the browser");
                }
            }
            () = changed.notified() => pending = true,
            () = tokio::time::sleep_until(connect_by), if !connected => {
                return Err(StreamError::NotConnected(CONNECT_TIMEOUT));
            }
            () = tokio::time::sleep_until(next_slot), if pending && connected => {
                pending = false;
                let Some((width, height)) = take_frame(&shared, &job, keyframe) else {
                    continue;
                };
                let started = Instant::now();
                next_slot = started + interval;
                let (floor, cap) = (MIN_BITRATE_BPS, settings.cap_bitrate(width, height));
                match &mut bitrate {
                    None => {
                        let start = settings.start_bitrate(width, height);
                        let controller = BitrateController::new(start, floor, cap, started.into_std());
                        bitrate = Some((controller, (width, height)));
                    }
                    Some((controller, size)) if *size != (width, height) => {
                        *size = (width, height);
                        new_bitrate = controller.set_bounds(floor, cap, started.into_std()).or(new_bitrate);
                    }
                    Some(_) => {}
                }
                let force = keyframe;
                let set_bitrate = new_bitrate.take();
                let encoding = job.clone();
                let encoded = tokio::task::spawn_blocking(move || {
                    let mut job = lock(&encoding);
                    let EncodeJob { encoder, pixels } = &mut *job;
                    if let Some(bps) = set_bitrate {
                        encoder.set_bitrate(bps);
                    }
                    encoder.encode(pixels, width, height, force)
                })
                .await
                .map_err(|err| EncodeError::Encode(format!("the encoder thread failed: {err}")))?;
                metrics::histogram!("deskgate_media_encode_seconds")
                    .record(started.elapsed().as_secs_f64());
                let Some(frame) = encoded? else {
                    // Rate control dropped the frame to hold the bitrate:
                    // the picture is still owed to the viewer.
                    lock(&shared).dirty = true;
                    pending = true;
                    continue;
                };
                let bytes = frame.data.len();
                peer.send_frame(frame.data, started.into_std()).await?;
                counters.add_frame(path, bytes);
                if frame.keyframe {
                    last_keyframe = Some(started);
                } else {
                    last_keyframe = None;
                    idle_keyframe_wait = IDLE_KEYFRAME_WAIT;
                }
                keyframe = false;
            }
        }
    }
}

/// The encoder and the pixels of the frame it encodes next.
struct EncodeJob {
    encoder: Box<dyn VideoEncoder>,
    pixels: Vec<u32>,
}

/// Locks `mutex`; a panic elsewhere while it was held left plain data, which
/// is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Copies the shared frame into the job if it changed or a keyframe is
/// due; returns its size, or `None` when there is nothing to encode.
fn take_frame(
    shared: &Mutex<SharedFrame>,
    job: &Mutex<EncodeJob>,
    keyframe: bool,
) -> Option<(u16, u16)> {
    let mut frame = lock(shared);
    if frame.pixels.is_empty() || !(frame.dirty || keyframe) {
        return None;
    }
    frame.dirty = false;
    let mut job = lock(job);
    job.pixels.clear();
    job.pixels.extend_from_slice(&frame.pixels);
    Some((frame.width, frame.height))
}

/// The desktop's end of the stream: a closed connection is an ordinary end.
fn desktop_ended(result: Result<(), StreamError>) -> Result<RelayEnd, StreamError> {
    match result {
        Ok(()) => Ok(RelayEnd::DesktopClosed),
        Err(StreamError::Desktop(RfbClientError::Io(err)))
            if matches!(
                err.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(RelayEnd::DesktopClosed)
        }
        Err(err) => Err(err),
    }
}

/// Asks for the whole desktop, then for what changed at most once per
/// `interval`, and copies each update into `shared`; passes the desktop's
/// clipboard texts to `clipboard`.
async fn decode_desktop<S>(
    mut client: RfbClient<S>,
    shared: Arc<Mutex<SharedFrame>>,
    changed: Arc<Notify>,
    clipboard: mpsc::Sender<String>,
    interval: Duration,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    client.request_update(false).await?;
    loop {
        let requested = Instant::now();
        let update = loop {
            match client.next_message().await? {
                ServerMessage::Update(update) => break update,
                ServerMessage::CutText(text) => {
                    let _ = clipboard.try_send(text);
                }
            }
        };
        lock(&shared).screen_id = client.screen_id();
        let damage = client.take_damage();
        if update.resized || !damage.is_empty() {
            let fb = client.framebuffer();
            if usize::from(fb.width()) * usize::from(fb.height()) > MAX_VIDEO_PIXELS {
                return Err(StreamError::TooLarge(fb.width(), fb.height()));
            }
            lock(&shared).update(fb.pixels(), fb.width(), fb.height(), &damage);
            changed.notify_one();
        }
        tokio::time::sleep_until(requested + interval).await;
        client.request_update(true).await?;
    }
}

/// Sends queued RFB messages to the desktop until the queue closes.
async fn write_desktop<W>(mut desktop: W, mut queued: mpsc::Receiver<Bytes>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some(message) = queued.recv().await {
        desktop.write_all(&message).await?;
        desktop.flush().await?;
    }
    Ok(())
}

/// The RFB client's write side: each write becomes one queued message (the
/// client writes each of its messages in one call), so its messages and the
/// input's never interleave.
struct MessageWriter(PollSender<Bytes>);

impl AsyncWrite for MessageWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the desktop writer stopped");
        ready!(self.0.poll_reserve(cx)).map_err(|_| closed())?;
        self.0
            .send_item(Bytes::copy_from_slice(buf))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::EncodedFrame;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, DuplexStream};

    const WIDTH: u16 = 4;
    const HEIGHT: u16 = 2;

    /// Encodes a frame as its first pixel's bytes; counts its calls and
    /// records which were keyframes.
    struct FakeEncoder {
        calls: Arc<AtomicUsize>,
        keyframes: Arc<Mutex<Vec<bool>>>,
        /// Frames still to drop, as rate control would.
        drops: Arc<AtomicUsize>,
        /// The bitrates it was set to.
        bitrates: Arc<Mutex<Vec<u32>>>,
    }

    impl VideoEncoder for FakeEncoder {
        fn mime_type(&self) -> &'static str {
            "video/VP8"
        }

        fn encode(
            &mut self,
            pixels: &[u32],
            width: u16,
            height: u16,
            keyframe: bool,
        ) -> Result<Option<EncodedFrame>, EncodeError> {
            assert_eq!(pixels.len(), usize::from(width) * usize::from(height));
            self.calls.fetch_add(1, Ordering::SeqCst);
            let dropped = self
                .drops
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if dropped {
                return Ok(None);
            }
            self.keyframes.lock().unwrap().push(keyframe);
            Ok(Some(EncodedFrame {
                data: Bytes::copy_from_slice(&pixels[0].to_be_bytes()),
                keyframe,
            }))
        }

        fn set_bitrate(&mut self, bps: u32) {
            self.bitrates.lock().unwrap().push(bps);
        }
    }

    /// A peer driven by the test: it pushes events and reads sent frames.
    struct FakePeer {
        events: mpsc::Receiver<PeerEvent>,
        sent: mpsc::UnboundedSender<Bytes>,
        texts: mpsc::UnboundedSender<String>,
    }

    impl VideoPeer for FakePeer {
        async fn send_frame(
            &mut self,
            frame: Bytes,
            _captured: std::time::Instant,
        ) -> Result<(), PeerError> {
            let _ = self.sent.send(frame);
            Ok(())
        }

        async fn next_event(&mut self) -> Option<PeerEvent> {
            self.events.recv().await
        }

        async fn send_text(&mut self, text: String) -> Result<(), PeerError> {
            let _ = self.texts.send(text);
            Ok(())
        }
    }

    /// The VNC server's end, after authentication.
    struct FakeDesktop(DuplexStream);

    impl FakeDesktop {
        /// ClientInit in, ServerInit out, the client's set-up messages in.
        async fn accept(&mut self) {
            assert_eq!(self.0.read_u8().await.unwrap(), 1, "ClientInit, shared");
            let mut init = Vec::new();
            init.extend_from_slice(&WIDTH.to_be_bytes());
            init.extend_from_slice(&HEIGHT.to_be_bytes());
            init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
            init.extend_from_slice(&4u32.to_be_bytes());
            init.extend_from_slice(b"test");
            self.0.write_all(&init).await.unwrap();
            let mut setup = [0u8; 20 + 4 + 4 * 5];
            self.0.read_exact(&mut setup).await.unwrap();
            assert_eq!(
                (setup[0], setup[20]),
                (0, 2),
                "SetPixelFormat, SetEncodings"
            );
        }

        /// Reads one client message: an update request (10 bytes), a
        /// pointer event (6) or a key event (8).
        async fn message(&mut self) -> Vec<u8> {
            let kind = self.0.read_u8().await.unwrap();
            let len = match kind {
                3 => 10,
                5 => 6,
                4 => 8,
                251 => 24, // SetDesktopSize with one screen
                6 => {
                    // ClientCutText: the header, then its text.
                    let mut header = [6u8; 8];
                    self.0.read_exact(&mut header[1..]).await.unwrap();
                    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    let mut message = header.to_vec();
                    message.resize(8 + len as usize, 0);
                    self.0.read_exact(&mut message[8..]).await.unwrap();
                    return message;
                }
                other => panic!("unexpected client message {other}"),
            };
            let mut message = vec![kind; len];
            self.0.read_exact(&mut message[1..]).await.unwrap();
            message
        }

        /// Answers with the whole desktop in one Raw rectangle of `colour`.
        async fn paint(&mut self, colour: u32) {
            let mut update = vec![0, 0, 0, 1];
            for v in [0, 0, WIDTH, HEIGHT] {
                update.extend_from_slice(&v.to_be_bytes());
            }
            update.extend_from_slice(&0i32.to_be_bytes());
            for _ in 0..usize::from(WIDTH) * usize::from(HEIGHT) {
                update.extend_from_slice(&colour.to_le_bytes());
            }
            self.0.write_all(&update).await.unwrap();
        }
    }

    struct Harness {
        desktop: FakeDesktop,
        events: mpsc::Sender<PeerEvent>,
        sent: mpsc::UnboundedReceiver<Bytes>,
        /// What the stream sent the browser on the data channel.
        texts: mpsc::UnboundedReceiver<String>,
        encodes: Arc<AtomicUsize>,
        keyframes: Arc<Mutex<Vec<bool>>>,
        drops: Arc<AtomicUsize>,
        bitrates: Arc<Mutex<Vec<u32>>>,
        counters: Arc<StreamCounters>,
        stream: tokio::task::JoinHandle<Result<RelayEnd, StreamError>>,
    }

    /// Starts a stream at `max_fps` and completes the RFB set-up.
    async fn start(max_fps: u32) -> Harness {
        start_with(VideoSettings {
            max_fps,
            ..VideoSettings::default()
        })
        .await
    }

    /// Starts a stream with `settings` and completes the RFB set-up.
    async fn start_with(settings: VideoSettings) -> Harness {
        let (gate_end, desktop_end) = tokio::io::duplex(64 * 1024);
        let (events, peer_events) = mpsc::channel(16);
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let encodes = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(StreamCounters::default());
        let (texts_tx, texts) = mpsc::unbounded_channel();
        let peer = FakePeer {
            events: peer_events,
            sent: sent_tx,
            texts: texts_tx,
        };
        let keyframes = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(AtomicUsize::new(0));
        let bitrates = Arc::new(Mutex::new(Vec::new()));
        let encoder = Box::new(FakeEncoder {
            calls: encodes.clone(),
            keyframes: keyframes.clone(),
            drops: drops.clone(),
            bitrates: bitrates.clone(),
        });
        let stream_counters = counters.clone();
        let stream = tokio::spawn(async move {
            stream_desktop(gate_end, peer, encoder, settings, &stream_counters).await
        });
        let mut desktop = FakeDesktop(desktop_end);
        desktop.accept().await;
        Harness {
            desktop,
            events,
            sent,
            texts,
            encodes,
            keyframes,
            drops,
            bitrates,
            counters,
            stream,
        }
    }

    async fn next_frame(sent: &mut mpsc::UnboundedReceiver<Bytes>) -> Bytes {
        tokio::time::timeout(Duration::from_secs(5), sent.recv())
            .await
            .expect("a frame within 5 s")
            .expect("the stream is running")
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_desktop_sends_no_frames_after_the_first() {
        let mut h = start(30).await;
        let first = h.desktop.message().await;
        assert_eq!(&first[..2], [3, 0], "a full update request first");
        h.desktop.paint(0x00ff_8000).await;
        h.events.send(PeerEvent::Connected).await.unwrap();
        assert_eq!(next_frame(&mut h.sent).await[..], [0, 0xff, 0x80, 0]);

        // The next request is incremental; an idle desktop never answers it.
        let next = h.desktop.message().await;
        assert_eq!(&next[..2], [3, 1]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(h.sent.try_recv().is_err(), "a frame was sent while idle");
        assert_eq!(h.encodes.load(Ordering::SeqCst), 1);
        assert_eq!(h.counters.snapshot().frames, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_sent_at_most_max_fps_times_a_second() {
        let mut h = start(10).await;
        h.events.send(PeerEvent::Connected).await.unwrap();
        let started = Instant::now();
        // The desktop changes on every request for two seconds.
        let mut colour = 0;
        while started.elapsed() < Duration::from_secs(2) {
            assert_eq!(h.desktop.message().await[0], 3);
            colour += 1;
            h.desktop.paint(colour).await;
        }
        let mut frames = 0;
        while h.sent.try_recv().is_ok() {
            frames += 1;
        }
        assert!(
            (15..=21).contains(&frames),
            "{frames} frames in 2 s at 10 fps"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_keyframe_request_is_answered_unless_the_last_frame_was_one() {
        let mut h = start(30).await;
        h.desktop.message().await;
        h.desktop.paint(0x0000_40ff).await;
        h.events.send(PeerEvent::Connected).await.unwrap();
        next_frame(&mut h.sent).await; // the first frame is a keyframe
        h.desktop.message().await;

        // Nothing changed since that keyframe: the request is not answered.
        h.events.send(PeerEvent::KeyframeRequested).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.sent.try_recv().is_err(), "an idle keyframe was resent");

        // A change goes out as a delta frame; a request after it is answered
        // with the unchanged picture as a keyframe, once.
        h.desktop.paint(0x00ff_8000).await;
        assert_eq!(next_frame(&mut h.sent).await[..], [0, 0xff, 0x80, 0]);
        h.desktop.message().await;
        h.events.send(PeerEvent::KeyframeRequested).await.unwrap();
        assert_eq!(next_frame(&mut h.sent).await[..], [0, 0xff, 0x80, 0]);
        h.events.send(PeerEvent::KeyframeRequested).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            h.sent.try_recv().is_err(),
            "a second idle keyframe was sent"
        );

        // Still idle: requests are answered again after 10 s, then 20 s, so
        // a viewer that lost the keyframe's tail recovers.
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.events.send(PeerEvent::KeyframeRequested).await.unwrap();
        next_frame(&mut h.sent).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        h.events.send(PeerEvent::KeyframeRequested).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(h.sent.try_recv().is_err(), "the wait did not double");
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.events.send(PeerEvent::KeyframeRequested).await.unwrap();
        next_frame(&mut h.sent).await;
        assert_eq!(
            *h.keyframes.lock().unwrap(),
            [true, false, true, true, true]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_dropped_by_rate_control_is_encoded_again() {
        let mut h = start(30).await;
        h.drops.store(2, Ordering::SeqCst);
        h.desktop.message().await;
        h.desktop.paint(0x00ff_8000).await;
        h.events.send(PeerEvent::Connected).await.unwrap();
        // Two drops, then the same picture goes out, still as a keyframe.
        assert_eq!(next_frame(&mut h.sent).await[..], [0, 0xff, 0x80, 0]);
        assert_eq!(h.encodes.load(Ordering::SeqCst), 3);
        assert_eq!(*h.keyframes.lock().unwrap(), [true]);
        assert_eq!(h.counters.snapshot().frames, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_browsers_estimate_sets_the_bitrate_of_the_next_frame() {
        let mut h = start_with(VideoSettings {
            bitrate_bps: 2_000_000,
            ..VideoSettings::default()
        })
        .await;
        h.desktop.message().await;
        h.desktop.paint(0x00ff_8000).await;
        h.events.send(PeerEvent::Connected).await.unwrap();
        next_frame(&mut h.sent).await;
        assert!(
            h.bitrates.lock().unwrap().is_empty(),
            "the start needs no change"
        );
        let remb = crate::bitrate::Feedback {
            remb_bps: Some(1_000_000),
            fraction_lost: None,
        };
        h.events.send(PeerEvent::Feedback(remb)).await.unwrap();
        h.desktop.message().await;
        h.desktop.paint(0x0000_80ff).await;
        next_frame(&mut h.sent).await;
        assert_eq!(*h.bitrates.lock().unwrap(), [1_000_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connection_ends_the_stream_with_its_reason() {
        let h = start(30).await;
        h.events
            .send(PeerEvent::Failed(IceFailure::NoPair))
            .await
            .unwrap();
        let ended = h.stream.await.unwrap();
        let err = ended.expect_err("a failed connection is an error");
        assert!(matches!(err, StreamError::IceFailed(IceFailure::NoPair)));
        assert_eq!(err.to_string(), "ICE failed (no candidate pair succeeded)");
    }

    #[tokio::test(start_paused = true)]
    async fn input_from_the_data_channel_reaches_the_desktop_as_rfb_events() {
        let mut h = start(30).await;
        h.desktop.message().await; // the first update request
        let input = |json: &str| PeerEvent::Input(Bytes::copy_from_slice(json.as_bytes()));
        h.events
            .send(input(r#"{"type":"pointer","x":321,"y":123,"buttons":1}"#))
            .await
            .unwrap();
        assert_eq!(h.desktop.message().await, [5, 1, 0x01, 0x41, 0, 0x7b]);
        // Malformed input is dropped; the stream goes on.
        h.events.send(input("{nonsense")).await.unwrap();
        h.events
            .send(input(r#"{"type":"key","keysym":65505,"down":false}"#))
            .await
            .unwrap();
        assert_eq!(h.desktop.message().await, [4, 0, 0, 0, 0, 0, 0xff, 0xe1]);
        let counts = h.counters.snapshot();
        assert_eq!((counts.pointer, counts.keys), (1, 1));
        assert_eq!(counts.bytes_up, 14);
    }

    #[tokio::test]
    async fn the_clipboard_goes_both_ways_and_a_resize_names_the_desktops_screen() {
        let mut h = start(30).await;
        h.desktop.message().await; // the first update request
        let input = |json: &str| PeerEvent::Input(Bytes::copy_from_slice(json.as_bytes()));
        // The desktop's layout (ExtendedDesktopSize, screen id 42), then
        // its clipboard.
        let mut layout = vec![0, 0, 0, 1];
        for v in [0u16, 0, WIDTH, HEIGHT] {
            layout.extend_from_slice(&v.to_be_bytes());
        }
        layout.extend_from_slice(&(-308i32).to_be_bytes());
        layout.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 0]);
        layout.extend_from_slice(&WIDTH.to_be_bytes());
        layout.extend_from_slice(&HEIGHT.to_be_bytes());
        layout.extend_from_slice(&[0, 0, 0, 0]);
        layout.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 5, b'h', b'\xe9', b'l', b'l', b'o']);
        h.desktop.0.write_all(&layout).await.unwrap();
        let text = tokio::time::timeout(Duration::from_secs(5), h.texts.recv())
            .await
            .expect("the desktop's clipboard reached the browser")
            .unwrap();
        let sent: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"type": "clipboard", "text": "h\u{e9}llo"})
        );

        h.events
            .send(input(r#"{"type":"clipboard","text":"caf\u00e9"}"#))
            .await
            .unwrap();
        h.events
            .send(input(r#"{"type":"resize","width":8,"height":4}"#))
            .await
            .unwrap();
        let mut messages = Vec::new();
        while messages.len() < 2 {
            let message = h.desktop.message().await;
            if message[0] != 3 {
                messages.push(message);
            }
        }
        assert_eq!(messages[0], crate::rfb_client::client_cut_text("café"));
        assert_eq!(messages[1], crate::rfb_client::set_desktop_size(8, 4, 42));
        let counts = h.counters.snapshot();
        assert_eq!((counts.keys, counts.pointer), (1, 0), "a paste is typing");
    }

    #[tokio::test]
    async fn input_waits_out_a_stalled_desktop_without_freezing_the_stream() {
        let mut h = start(30).await;
        h.desktop.message().await; // the first update request
        // The desktop reads nothing while far more input arrives than the
        // queue and the pipe hold; then it reads again.
        let pointer = |x: u16| {
            PeerEvent::Input(Bytes::from(format!(
                r#"{{"type":"pointer","x":{x},"y":1}}"#
            )))
        };
        let events = h.events.clone();
        let sender = tokio::spawn(async move {
            for x in 0..20_000 {
                events.send(pointer(x)).await.unwrap();
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let desktop = &mut h.desktop;
        tokio::time::timeout(Duration::from_secs(20), async {
            for x in 0..20_000u16 {
                let [hi, lo] = x.to_be_bytes();
                assert_eq!(desktop.message().await, [5, 0, hi, lo, 0, 1]);
            }
        })
        .await
        .expect("the input reached the desktop once it read again");
        sender.await.unwrap();
        h.events.send(PeerEvent::Closed).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), h.stream)
            .await
            .expect("the stream saw the peer close");
        assert_eq!(ended.unwrap().unwrap(), RelayEnd::BrowserClosed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_desktop_larger_than_4k_ends_the_stream() {
        let (gate_end, desktop_end) = tokio::io::duplex(64 * 1024);
        let (_events, peer_events) = mpsc::channel(16);
        let (sent, _frames) = mpsc::unbounded_channel();
        let (texts, _texts) = mpsc::unbounded_channel();
        let peer = FakePeer {
            events: peer_events,
            sent,
            texts,
        };
        let encoder = Box::new(FakeEncoder {
            calls: Arc::default(),
            keyframes: Arc::default(),
            drops: Arc::default(),
            bitrates: Arc::default(),
        });
        let stream = tokio::spawn(async move {
            let counters = StreamCounters::default();
            stream_desktop(gate_end, peer, encoder, VideoSettings::default(), &counters).await
        });
        let mut desktop = FakeDesktop(desktop_end);
        desktop.accept().await;
        desktop.message().await;
        // A DesktopSize pseudo-rectangle to 4096x2304.
        let mut update = vec![0, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0x09, 0];
        update.extend_from_slice(&(-223i32).to_be_bytes());
        desktop.0.write_all(&update).await.unwrap();
        let ended = stream.await.unwrap();
        assert!(
            matches!(ended, Err(StreamError::TooLarge(4096, 2304))),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_browser_that_never_connects_is_given_up() {
        let h = start(30).await;
        let ended = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), h.stream)
            .await
            .expect("the stream ended")
            .unwrap();
        assert!(
            matches!(ended, Err(StreamError::NotConnected(_))),
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_ends_with_the_peer_or_the_desktop() {
        let h = start(30).await;
        h.events.send(PeerEvent::Closed).await.unwrap();
        assert_eq!(h.stream.await.unwrap().unwrap(), RelayEnd::BrowserClosed);

        let h = start(30).await;
        drop(h.desktop);
        assert_eq!(h.stream.await.unwrap().unwrap(), RelayEnd::DesktopClosed);
    }
}
