//! Fuzzes what deskgate parses from a VNC server (the desktop): the client
//! half of the handshake, `rfb::authenticate` (version, security types,
//! VNC-authentication challenge, result and reason; media/src/rfb.rs), then
//! the RFB client of the WebRTC path (media/src/rfb_client.rs):
//! `RfbClient::connect` (ServerInit) and `RfbClient::next_message` until the
//! bytes run out: FramebufferUpdate with Raw, CopyRect, ZRLE, DesktopSize
//! and ExtendedDesktopSize rectangles, SetColourMapEntries, Bell and
//! ServerCutText.
//!
//! Input: bit 0 of byte 0 says whether the stream starts with the handshake
//! (set) or at ServerInit (clear, as `authenticate` leaves it); the rest is
//! what the server sends. What the client sends goes to a sink.
//!
//! What must hold: no input panics, hangs or allocates without bound (the
//! client checks every size before spending memory on it); after every
//! message the framebuffer holds width × height pixels, at most
//! `MAX_PIXELS`, and its damage is non-empty rectangles inside it.
#![no_main]

use std::sync::OnceLock;

use deskgate_media::framebuffer::MAX_PIXELS;
use deskgate_media::rfb::authenticate;
use deskgate_media::rfb_client::RfbClient;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::{Builder, Runtime};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Builder::new_current_thread().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    let [flags, server @ ..] = data else {
        return;
    };
    let stream = tokio::io::join(server, tokio::io::sink());
    runtime().block_on(async move {
        let stream = if flags & 1 == 1 {
            match authenticate(stream, b"fuzzpass").await {
                Ok(stream) => stream,
                Err(_) => return,
            }
        } else {
            stream
        };
        let Ok(mut client) = RfbClient::connect(stream).await else {
            return;
        };
        while client.next_message().await.is_ok() {
            let framebuffer = client.framebuffer();
            let (width, height) = (framebuffer.width(), framebuffer.height());
            let pixels = usize::from(width) * usize::from(height);
            assert_eq!(framebuffer.pixels().len(), pixels, "pixels for the size");
            assert!(pixels <= MAX_PIXELS, "a framebuffer over the limit");
            let bounds = framebuffer.bounds();
            for rect in client.take_damage() {
                assert!(!rect.is_empty(), "empty damage {rect:?}");
                assert!(
                    bounds.contains(&rect),
                    "damage {rect:?} outside {width}x{height}"
                );
            }
        }
    });
});
