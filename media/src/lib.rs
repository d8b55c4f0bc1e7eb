//! The deskgate media path: a session's desktop streamed to a browser.
//!
//! - [`rfb`]: the RFB (VNC) handshakes the relay performs itself: VNC
//!   authentication towards the desktop with the session's secret, security
//!   type None towards the browser, and framing of the browser's messages.
//! - [`relay`]: the VNC relay between a browser's WebSocket and the desktop,
//!   with bounded buffers and input counts.
//! - [`media_actor`]: the actor that runs one browser stream and closes it
//!   when the session ends.
//! - [`framebuffer`]: a copy of the desktop's pixels with damage tracking,
//!   what the WebRTC path encodes to video.
//! - [`rfb_client`]: the RFB client that keeps that framebuffer up to date
//!   (Raw, CopyRect, ZRLE, DesktopSize) and sends input to the desktop.
//! - [`desktop_video`]: the WebRTC stream of a desktop: framebuffer damage
//!   encoded by a [`VideoEncoder`] ([`vp8`] on libvpx, or [`h264`] on NVENC
//!   where the host has it; [`video::host_encoder`] picks) and sent to a
//!   [`VideoPeer`] ([`webrtc_peer`] on the `webrtc` crate), with input
//!   ([`input`]) from the browser's data channel going back to the desktop
//!   and the browser's congestion feedback setting the bitrate
//!   ([`bitrate`]).
//!
//! The crate knows nothing of wallets, billing or sessions beyond an id for
//! logs: the gate hands it an authorised browser stream and a connection to
//! the desktop.

mod av;
pub mod bitrate;
pub mod desktop_video;
pub mod framebuffer;
pub mod h264;
pub mod ice;
pub mod input;
pub mod media_actor;
pub mod relay;
pub mod rfb;
pub mod rfb_client;
mod rtcp_feedback;
mod sdp;
pub mod video;
pub mod vp8;
pub mod webrtc_peer;
mod yuv420;

pub use desktop_video::{StreamError, stream_desktop};
pub use framebuffer::{Framebuffer, Rect};
pub use input::InputEvent;
pub use media_actor::{MediaActor, MediaArgs, MediaMsg, StreamOutcome};
pub use relay::{CounterSnapshot, MediaPath, RelayEnd, RelayLimits, StreamCounters, relay_vnc};
pub use rfb::{RfbError, authenticate};
pub use rfb_client::{FrameUpdate, RfbClient, RfbClientError};
pub use video::{
    EncodeError, EncodedFrame, EncoderChoice, VideoEncoder, VideoSettings, encoder_for_offer,
    host_encoder,
};
pub use webrtc_peer::{
    IceFailure, IceServer, PeerError, PeerEvent, PeerOptions, PeerSettings, VideoPeer, WebRtcPeer,
    answer_offer, answer_offer_with,
};
