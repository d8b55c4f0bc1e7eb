//! The video encoder port of the WebRTC path: the desktop's pixels in,
//! compressed frames out, and the settings every encoder shares.
//!
//! Adapters: [`crate::vp8::Vp8Encoder`] (libvpx, everywhere) and
//! [`crate::h264::H264Encoder`] (NVENC where an NVIDIA GPU has it); tests
//! use fakes behind the same trait. [`host_encoder`] and
//! [`encoder_for_offer`] pick one for this host, and NVENC only where it
//! actually opens ([`crate::h264::nvenc_available`]).
//!
//! Bitrate: [`VideoSettings::bitrate_bps`] `0` means "from the picture size"
//! ([`auto_bitrate`]); the stream then moves the encoder's target between
//! [`MIN_BITRATE_BPS`] and [`VideoSettings::cap_bitrate`] as the browser's
//! congestion feedback says (see [`crate::bitrate`]).

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::h264::{self, H264Encoder};
use crate::vp8::Vp8Encoder;

/// The bitrate the auto rule gives a 1920×1080 picture at 30 frames per
/// second: "several Mbit/s", what browsers' own screen sharing starts at.
pub const AUTO_BITRATE_1080P30: u32 = 6_000_000;
/// The auto rule's exponent on the pixel rate: bits grow slower than pixels
/// (a larger desktop shows the same windows, with more margin around them),
/// so 720p30 gets about 4.3 Mbit/s and 2160p30 about 10.4 Mbit/s. Measured:
/// at 720p a moving 480×320 window kept 23 of 30 frames a second at
/// 3.7 Mbit/s and 27 at 4.4 (`benches/video_encode.rs`).
const AUTO_BITRATE_EXPONENT: f64 = 0.4;
/// The least the adaptation lowers the bitrate to: below it a desktop is
/// unreadable anyway, and frame drops take over.
pub const MIN_BITRATE_BPS: u32 = 300_000;
/// The most the auto rule gives, whatever the size.
const MAX_AUTO_BITRATE_BPS: u32 = 20_000_000;

/// Which encoder the host uses (configuration: `auto`, `vp8`, `h264-nvenc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncoderChoice {
    /// H.264 on NVENC where the GPU has it and the browser takes H.264
    /// (packetization-mode 1); VP8 otherwise.
    #[default]
    Auto,
    /// VP8 on libvpx, always.
    Vp8,
    /// H.264 on NVENC, or an error where NVENC does not open.
    H264Nvenc,
}

impl FromStr for EncoderChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "vp8" => Ok(Self::Vp8),
            "h264-nvenc" | "h264_nvenc" | "nvenc" => Ok(Self::H264Nvenc),
            other => Err(format!(
                "unknown video encoder {other:?}: expected auto, vp8 or h264-nvenc"
            )),
        }
    }
}

impl fmt::Display for EncoderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Vp8 => "vp8",
            Self::H264Nvenc => "h264-nvenc",
        })
    }
}

/// How the WebRTC path encodes video (from the gate's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoSettings {
    /// Starting target bitrate in bits per second; `0` (the default) picks
    /// one from the picture size and `max_fps` ([`auto_bitrate`]).
    pub bitrate_bps: u32,
    /// The most the target may rise to when the browser's estimate allows;
    /// `0` (the default) means the starting bitrate. A starting bitrate
    /// above a non-zero cap is lowered to it.
    pub max_bitrate_bps: u32,
    /// Most frames per second sent; damage in between waits for the next slot.
    pub max_fps: u32,
    /// A keyframe at least every this many frames, so a viewer that lost
    /// one recovers even if its picture-loss request is lost too.
    pub keyframe_interval: u32,
    /// Which encoder [`host_encoder`] and [`encoder_for_offer`] build.
    pub encoder: EncoderChoice,
}

impl Default for VideoSettings {
    fn default() -> Self {
        Self {
            bitrate_bps: 0,
            max_bitrate_bps: 0,
            max_fps: 30,
            keyframe_interval: 300,
            encoder: EncoderChoice::Auto,
        }
    }
}

impl VideoSettings {
    /// The target a stream of `width`×`height` starts at.
    pub fn start_bitrate(&self, width: u16, height: u16) -> u32 {
        let start = match self.bitrate_bps {
            0 => auto_bitrate(width, height, self.max_fps),
            set => set,
        };
        match self.max_bitrate_bps {
            0 => start,
            cap => start.min(cap),
        }
    }

    /// The most a stream of `width`×`height` may be given.
    pub fn cap_bitrate(&self, width: u16, height: u16) -> u32 {
        match self.max_bitrate_bps {
            0 => self.start_bitrate(width, height),
            cap => cap,
        }
    }
}

/// The default bitrate for a `width`×`height` desktop sent at up to `fps`
/// frames a second: [`AUTO_BITRATE_1080P30`] scaled by the pixel rate to
/// the power 0.4, rounded to 10 kbit/s, between [`MIN_BITRATE_BPS`] and
/// 20 Mbit/s.
pub fn auto_bitrate(width: u16, height: u16, fps: u32) -> u32 {
    let pixel_rate = f64::from(width) * f64::from(height) * f64::from(fps.clamp(1, 120));
    let reference = 1920.0 * 1080.0 * 30.0;
    let bps =
        f64::from(AUTO_BITRATE_1080P30) * (pixel_rate / reference).powf(AUTO_BITRATE_EXPONENT);
    let rounded = (bps / 10_000.0).round() * 10_000.0;
    (rounded as u32).clamp(MIN_BITRATE_BPS, MAX_AUTO_BITRATE_BPS)
}

/// One compressed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The codec's bitstream for the frame: one VP8 frame, or one H.264
    /// access unit in Annex-B form (start codes; SPS and PPS before each
    /// IDR).
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

    /// Moves the target bitrate to `bps` (the congestion estimate) from the
    /// next frame on, without a keyframe. Encoders that cannot adapt ignore
    /// it, which is the default.
    fn set_bitrate(&mut self, bps: u32) {
        let _ = bps;
    }
}

/// The encoder `settings.encoder` asks for on this host, whatever the
/// browser takes: with [`EncoderChoice::Auto`], H.264 on NVENC where it
/// opens, VP8 elsewhere. Prefer [`encoder_for_offer`] when the offer is at
/// hand: it also falls back to VP8 for a browser without H.264.
///
/// Fails where the choice cannot be had: [`EncoderChoice::H264Nvenc`] on a
/// host without a working NVENC, or a libavcodec without libvpx.
pub fn host_encoder(settings: VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
    build(settings, true)
}

/// The encoder for a browser whose SDP offer is `offer_sdp`: as
/// [`host_encoder`], except that [`EncoderChoice::Auto`] takes H.264 only
/// when the offer receives it with packetization-mode 1.
pub fn encoder_for_offer(
    settings: VideoSettings,
    offer_sdp: &str,
) -> Result<Box<dyn VideoEncoder>, EncodeError> {
    let takes_h264 = crate::webrtc_peer::check_offer(offer_sdp, h264::MIME_TYPE).is_ok();
    build(settings, takes_h264)
}

fn build(settings: VideoSettings, h264_wanted: bool) -> Result<Box<dyn VideoEncoder>, EncodeError> {
    match settings.encoder {
        EncoderChoice::Vp8 => Ok(Box::new(Vp8Encoder::new(settings)?)),
        EncoderChoice::H264Nvenc => {
            if !h264::nvenc_available() {
                return Err(EncodeError::Open(
                    "the video encoder is set to h264-nvenc, but NVENC does not open on this \
                     host (no NVIDIA GPU, no driver, or a libavcodec without h264_nvenc); \
                     set it to auto or vp8"
                        .into(),
                ));
            }
            Ok(Box::new(H264Encoder::nvenc(settings)?))
        }
        EncoderChoice::Auto if h264_wanted && h264::nvenc_available() => {
            Ok(Box::new(H264Encoder::nvenc(settings)?))
        }
        EncoderChoice::Auto => Ok(Box::new(Vp8Encoder::new(settings)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_bitrate_is_several_mbits_at_1080p_and_less_below() {
        assert_eq!(auto_bitrate(1920, 1080, 30), 6_000_000);
        let hd = auto_bitrate(1280, 720, 30);
        assert!((4_200_000..=4_500_000).contains(&hd), "{hd}");
        let uhd = auto_bitrate(3840, 2160, 30);
        assert!((10_000_000..=11_000_000).contains(&uhd), "{uhd}");
        assert_eq!(auto_bitrate(16, 16, 1), MIN_BITRATE_BPS);
        assert!(auto_bitrate(1920, 1080, 60) > auto_bitrate(1920, 1080, 30));
    }

    #[test]
    fn zero_means_auto_and_the_cap_bounds_the_start() {
        let auto = VideoSettings::default();
        assert_eq!(auto.start_bitrate(1920, 1080), 6_000_000);
        assert_eq!(auto.cap_bitrate(1920, 1080), 6_000_000);
        let fixed = VideoSettings {
            bitrate_bps: 2_500_000,
            ..VideoSettings::default()
        };
        assert_eq!(fixed.start_bitrate(1920, 1080), 2_500_000);
        assert_eq!(fixed.cap_bitrate(1920, 1080), 2_500_000);
        let capped = VideoSettings {
            max_bitrate_bps: 5_000_000,
            ..VideoSettings::default()
        };
        assert_eq!(capped.start_bitrate(1920, 1080), 5_000_000);
        assert_eq!(capped.start_bitrate(1280, 720), auto_bitrate(1280, 720, 30));
        assert_eq!(capped.cap_bitrate(1280, 720), 5_000_000);
    }

    #[test]
    fn encoder_choice_parses_its_names() {
        for choice in [
            EncoderChoice::Auto,
            EncoderChoice::Vp8,
            EncoderChoice::H264Nvenc,
        ] {
            assert_eq!(choice.to_string().parse::<EncoderChoice>(), Ok(choice));
        }
        assert_eq!("NVENC".parse(), Ok(EncoderChoice::H264Nvenc));
        assert!("h265".parse::<EncoderChoice>().is_err());
    }
}
