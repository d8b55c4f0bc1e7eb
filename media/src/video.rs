//! The video encoder port of the WebRTC path: the desktop's pixels in,
//! compressed frames out. [`crate::vp8::Vp8Encoder`] is the adapter on
//! libvpx; tests use fakes behind the same trait.

use bytes::Bytes;

/// How the WebRTC path encodes video (from the gate's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoSettings {
    /// Target bitrate in bits per second (constant bitrate).
    pub bitrate_bps: u32,
    /// Most frames per second sent; damage in between waits for the next slot.
    pub max_fps: u32,
    /// A keyframe at least every this many frames, so a viewer that lost
    /// one recovers even if its picture-loss request is lost too.
    pub keyframe_interval: u32,
}

impl Default for VideoSettings {
    fn default() -> Self {
        Self {
            bitrate_bps: 2_500_000,
            max_fps: 30,
            keyframe_interval: 300,
        }
    }
}

/// One compressed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The codec's bitstream for the frame (one VP8 frame).
    pub data: Bytes,
    /// Whether the frame decodes on its own.
    pub keyframe: bool,
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoder could not be set up (library missing the codec, bad size).
    #[error("cannot open the video encoder: {0}")]
    Open(String),
    /// The encoder refused a frame.
    #[error("cannot encode a frame: {0}")]
    Encode(String),
}

/// Port: turns desktop pixels into compressed video frames.
pub trait VideoEncoder: Send {
    /// The codec's MIME type as WebRTC names it, e.g. `video/VP8`.
    fn mime_type(&self) -> &'static str;

    /// Encodes one frame of `width`×`height` pixels, row-major `0x00RRGGBB`
    /// words (the [`crate::Framebuffer`] layout); `keyframe` forces a
    /// keyframe. A size different from the last frame's starts a new stream
    /// (its first frame is a keyframe). Returns `None` when the encoder
    /// produced nothing for this frame (rate control dropped it).
    fn encode(
        &mut self,
        pixels: &[u32],
        width: u16,
        height: u16,
        keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError>;
}
