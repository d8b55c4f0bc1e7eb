//! The H.264 adapter of the [`VideoEncoder`] port, for hosts whose NVIDIA GPU
//! has NVENC: libavcodec's `h264_nvenc` through `ffmpeg-next`'s safe API,
//! set up for real-time streaming (fastest preset, ultra-low-latency tune,
//! zero latency, CBR, no B-frames, IDR on demand).
//!
//! Invariants of the output, which the WebRTC side relies on
//! (packetization-mode 1 packetizes Annex-B access units): each
//! [`EncodedFrame`] is one access unit in Annex-B form (start codes), and
//! every IDR carries its SPS and PPS in-band (no global header is asked
//! for), so a viewer can join at any keyframe. A forced keyframe is an IDR
//! (`forced-idr`), not merely an I-frame.
//!
//! The encoder's libavcodec name is a parameter ([`H264Encoder::with_encoder`])
//! so the same code path runs in the tests on libx264 where there is no GPU.
//! [`nvenc_available`] probes once per process whether `h264_nvenc` opens
//! and encodes here; [`crate::video::host_encoder`] uses it to fall back to
//! VP8.
//!
//! Bitrate changes go to the open encoder (libavcodec's NVENC and x264
//! wrappers reconfigure on a changed `bit_rate`), so adapting costs no
//! keyframe.

use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

use ff::codec;
use ff::format::Pixel;
use ff::{Codec, Dictionary, Packet, Rational, picture};
use ffmpeg_next as ff;
use tracing::{debug, info, warn};

use crate::av;
use crate::video::{EncodeError, EncodedFrame, MIN_BITRATE_BPS, VideoEncoder, VideoSettings};
use crate::yuv420::{Planes, check_size};

/// WebRTC's MIME type of the codec.
pub const MIME_TYPE: &str = "video/H264";
/// libavcodec's NVENC H.264 encoder.
pub const NVENC: &str = "h264_nvenc";
/// The format parameters the answer registers: Constrained Baseline (what
/// every browser decodes, in hardware where it can), packetization-mode 1
/// (FU-A fragments, so frames larger than a packet), and any level the
/// picture needs (`level-asymmetry-allowed`).
pub const FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// Timestamps count the 90 kHz clock.
const TIME_BASE: (i32, i32) = (1, 90_000);
const TICKS_PER_SECOND: f64 = 90_000.0;
/// The size the NVENC probe encodes (NVENC's minimum is 145×49 or so).
const PROBE_SIZE: u16 = 256;

/// Whether `h264_nvenc` opens and encodes a frame on this host: an NVIDIA
/// GPU with NVENC, its driver, and a libavcodec built with NVENC. Probed
/// once per process (the first call takes up to a second on a GPU host);
/// the answer is logged.
pub fn nvenc_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let probed = probe(NVENC);
        match &probed {
            Ok(()) => info!("NVENC opens here: H.264 on the GPU for browsers that take it"),
            Err(err) => info!(reason = %err, "no NVENC here: video is VP8 on libvpx"),
        }
        probed.is_ok()
    })
}

/// Opens encoder `name` at a small size and encodes one frame with it.
pub(crate) fn probe(name: &'static str) -> Result<(), EncodeError> {
    av::init()?;
    // A host without the GPU makes libavcodec log errors while it tries;
    // that is the expected answer, not something to show.
    ff::util::log::set_level(ff::util::log::Level::Fatal);
    let result = H264Encoder::with_encoder(name, VideoSettings::default()).and_then(|mut enc| {
        let pixels = vec![0x0080_8080; usize::from(PROBE_SIZE) * usize::from(PROBE_SIZE)];
        match enc.encode(&pixels, PROBE_SIZE, PROBE_SIZE, true)? {
            Some(frame) if frame.keyframe => Ok(()),
            _ => Err(EncodeError::Encode(format!(
                "{name} gave no keyframe for its first frame"
            ))),
        }
    });
    ff::util::log::set_level(ff::util::log::Level::Error);
    result
}

/// H.264 encoder on a libavcodec encoder (`h264_nvenc` in production).
///
/// Built with [`H264Encoder::nvenc`]; the codec is opened lazily on the
/// first frame and re-opened on a size change. After an encode error the
/// stream is dropped, so the next frame starts a fresh one with an IDR.
pub struct H264Encoder {
    settings: VideoSettings,
    codec: Codec,
    name: &'static str,
    /// Origin of the timestamps.
    clock: Instant,
    last_pts: Option<i64>,
    /// The target from [`VideoEncoder::set_bitrate`].
    target_bps: Option<u32>,
    stream: Option<Stream>,
    packet: Packet,
}

impl fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H264Encoder")
            .field("encoder", &self.name)
            .field("settings", &self.settings)
            .field("stream", &self.stream.as_ref().map(|s| (s.width, s.height)))
            .field("target_bps", &self.target_bps)
            .finish_non_exhaustive()
    }
}

impl H264Encoder {
    /// The NVENC encoder; fails when libavcodec has no `h264_nvenc` (whether
    /// it opens shows only on the first frame: see [`nvenc_available`]).
    pub fn nvenc(settings: VideoSettings) -> Result<Self, EncodeError> {
        Self::with_encoder(NVENC, settings)
    }

    /// An encoder on libavcodec's H.264 encoder `name` (`h264_nvenc`, or
    /// `libx264` where the tests have no GPU).
    pub fn with_encoder(name: &'static str, settings: VideoSettings) -> Result<Self, EncodeError> {
        av::init()?;
        let codec = ff::encoder::find_by_name(name)
            .filter(|c| c.id() == codec::Id::H264)
            .ok_or_else(|| {
                EncodeError::Open(format!("libavcodec has no \"{name}\" H.264 encoder"))
            })?;
        Ok(Self {
            settings,
            codec,
            name,
            clock: Instant::now(),
            last_pts: None,
            target_bps: None,
            stream: None,
            packet: Packet::empty(),
        })
    }

    /// The libavcodec encoder this uses.
    pub fn encoder_name(&self) -> &'static str {
        self.name
    }

    /// The next timestamp: the real clock, always past the last one.
    fn next_pts(&mut self) -> i64 {
        let now = (self.clock.elapsed().as_secs_f64() * TICKS_PER_SECOND) as i64;
        let pts = match self.last_pts {
            Some(last) if now <= last => last + 1,
            _ => now,
        };
        self.last_pts = Some(pts);
        pts
    }

    /// The bitrate a `width`×`height` stream should run at now.
    fn target(&self, width: u16, height: u16) -> u32 {
        let cap = self.settings.cap_bitrate(width, height);
        self.target_bps
            .unwrap_or_else(|| self.settings.start_bitrate(width, height))
            .clamp(MIN_BITRATE_BPS.min(cap), cap)
    }
}

/// One open encoder: a stream of frames of one size.
struct Stream {
    encoder: ff::encoder::Video,
    planes: Planes,
    width: u16,
    height: u16,
    /// The bitrate the encoder runs at.
    bitrate: u32,
    /// No frame out yet: the next one must be an IDR.
    fresh: bool,
}

impl Stream {
    fn open(
        codec: Codec,
        name: &str,
        settings: &VideoSettings,
        width: u16,
        height: u16,
        bitrate: u32,
    ) -> Result<Self, EncodeError> {
        let open_err = |e: ff::Error| EncodeError::Open(format!("{name} at {width}x{height}: {e}"));
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(open_err)?;
        enc.set_width(u32::from(width));
        enc.set_height(u32::from(height));
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(Rational::from(TIME_BASE));
        enc.set_frame_rate(Some(Rational::new(settings.max_fps.max(1) as i32, 1)));
        enc.set_colorspace(ff::color::Space::BT470BG);
        enc.set_color_range(ff::color::Range::MPEG);
        enc.set_bit_rate(bitrate as usize);
        enc.set_max_bit_rate(bitrate as usize);
        enc.set_gop(settings.keyframe_interval.max(1));
        enc.set_max_b_frames(0);

        let mut opts = Dictionary::new();
        // Half a second of buffer: a keyframe fits, and rate control reacts
        // within a few frames.
        opts.set("bufsize", &(bitrate / 2).to_string());
        // An I picture asked for is an IDR (a decoder can start there).
        opts.set("forced-idr", "1");
        opts.set("profile", "baseline");
        if name == NVENC {
            opts.set("preset", "p1");
            opts.set("tune", "ull");
            opts.set("zerolatency", "1");
            opts.set("rc", "cbr");
            // Packets out of the call that sent the frame.
            opts.set("delay", "0");
            opts.set("rc-lookahead", "0");
        } else {
            // libx264, the stand-in: its fastest real-time settings.
            opts.set("preset", "ultrafast");
            opts.set("tune", "zerolatency");
        }
        let encoder = enc.open_as_with(codec, opts).map_err(open_err)?;
        debug!(
            encoder = name,
            width, height, bitrate, "opened the H.264 encoder"
        );
        Ok(Self {
            encoder,
            planes: Planes::new(width, height),
            width,
            height,
            bitrate,
            fresh: true,
        })
    }
}

impl VideoEncoder for H264Encoder {
    fn mime_type(&self) -> &'static str {
        MIME_TYPE
    }

    fn set_bitrate(&mut self, bps: u32) {
        self.target_bps = Some(bps);
    }

    fn encode(
        &mut self,
        pixels: &[u32],
        width: u16,
        height: u16,
        keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        check_size(pixels, width, height)?;
        let pts = self.next_pts();
        let target = self.target(width, height);
        let stream = match &mut self.stream {
            Some(s) if (s.width, s.height) == (width, height) => s,
            slot => {
                *slot = None;
                slot.insert(Stream::open(
                    self.codec,
                    self.name,
                    &self.settings,
                    width,
                    height,
                    target,
                )?)
            }
        };
        if stream.bitrate != target {
            // Read by the wrapper before the next frame (x264_encoder_reconfig,
            // NVENC's nvEncReconfigureEncoder).
            stream.encoder.set_bit_rate(target as usize);
            stream.encoder.set_max_bit_rate(target as usize);
            stream.bitrate = target;
        }
        let name = self.name;
        let result = encode_frame(stream, &mut self.packet, pixels, pts, keyframe, name);
        match result {
            Ok(out) => {
                stream.fresh &= out.is_none();
                Ok(out)
            }
            Err(e) => {
                warn!(error = %e, encoder = name, width, height, "H.264 encode failed; the stream restarts");
                self.stream = None;
                Err(e)
            }
        }
    }
}

fn encode_frame(
    stream: &mut Stream,
    packet: &mut Packet,
    pixels: &[u32],
    pts: i64,
    keyframe: bool,
    name: &str,
) -> Result<Option<EncodedFrame>, EncodeError> {
    stream.planes.load(pixels)?;
    let frame = &mut stream.planes.frame;
    frame.set_pts(Some(pts));
    frame.set_kind(if keyframe || stream.fresh {
        picture::Type::I
    } else {
        picture::Type::None
    });
    stream
        .encoder
        .send_frame(frame)
        .map_err(|e| EncodeError::Encode(format!("{name} refused the frame: {e}")))?;
    av::receive_one(&mut stream.encoder, packet, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stand-in for NVENC on hosts without a GPU.
    const X264: &str = "libx264";

    fn x264_here() -> bool {
        av::init().unwrap();
        ff::encoder::find_by_name(X264).is_some()
    }

    /// The NAL unit types of an Annex-B access unit, in order; panics if it
    /// does not start with a start code.
    fn nal_types(data: &[u8]) -> Vec<u8> {
        assert!(
            data.starts_with(&[0, 0, 0, 1]) || data.starts_with(&[0, 0, 1]),
            "not Annex-B: {:02x?}",
            &data[..data.len().min(8)]
        );
        let mut types = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i..i + 3] == [0, 0, 1] {
                if let Some(header) = data.get(i + 3) {
                    types.push(header & 0x1f);
                }
                i += 3;
            } else {
                i += 1;
            }
        }
        types
    }

    fn pattern(w: u16, h: u16, shift: u32) -> Vec<u32> {
        (0..u32::from(w) * u32::from(h))
            .map(|i| ((i % u32::from(w) + shift) * 0x0001_0307) & 0x00ff_ffff)
            .collect()
    }

    /// Decodes with libavcodec's own H.264 decoder.
    fn decode_all(frames: &[EncodedFrame]) -> usize {
        let codec = ff::decoder::find(codec::Id::H264).expect("an H.264 decoder");
        let mut dec = codec::context::Context::new_with_codec(codec)
            .decoder()
            .video()
            .unwrap();
        let mut decoded = 0;
        for f in frames {
            dec.send_packet(&Packet::copy(&f.data)).unwrap();
            let mut out = ff::frame::Video::empty();
            while dec.receive_frame(&mut out).is_ok() {
                decoded += 1;
            }
        }
        decoded
    }

    #[test]
    fn the_nvenc_probe_answers_and_agrees_with_the_encoder_choice() {
        // Without a GPU (this development machine, CI) the probe says no and
        // the host encoder is VP8; with one it is H.264. Either way the
        // answer is consistent.
        let available = nvenc_available();
        let auto = crate::video::host_encoder(VideoSettings::default()).unwrap();
        let forced = crate::video::host_encoder(VideoSettings {
            encoder: crate::video::EncoderChoice::H264Nvenc,
            ..VideoSettings::default()
        });
        if available {
            assert_eq!(auto.mime_type(), MIME_TYPE);
            assert!(forced.is_ok());
        } else {
            assert_eq!(auto.mime_type(), "video/VP8");
            let err = forced.err().expect("forcing NVENC where it is not fails");
            assert!(err.to_string().contains("h264-nvenc"), "{err}");
        }
        let vp8 = crate::video::host_encoder(VideoSettings {
            encoder: crate::video::EncoderChoice::Vp8,
            ..VideoSettings::default()
        })
        .unwrap();
        assert_eq!(vp8.mime_type(), "video/VP8");
    }

    #[test]
    fn an_encoder_libavcodec_lacks_is_an_open_error() {
        assert!(matches!(
            H264Encoder::with_encoder("no_such_h264_encoder", VideoSettings::default()),
            Err(EncodeError::Open(_))
        ));
        assert!(probe("no_such_h264_encoder").is_err());
    }

    #[test]
    fn idrs_carry_sps_and_pps_in_annex_b_and_deltas_do_not() {
        if !x264_here() {
            eprintln!("this libavcodec has no libx264: the H.264 path is not exercised");
            return;
        }
        probe(X264).expect("libx264 passes the probe");
        let (w, h) = (320, 240);
        let mut enc = H264Encoder::with_encoder(X264, VideoSettings::default()).unwrap();
        assert_eq!(enc.mime_type(), MIME_TYPE);
        let mut frames = Vec::new();
        for i in 0..6 {
            let forced = i == 3;
            let out = enc
                .encode(&pattern(w, h, i), w, h, forced)
                .unwrap()
                .expect("zero latency: a packet per frame");
            let types = nal_types(&out.data);
            if i == 0 || forced {
                assert!(out.keyframe, "frame {i} must be a keyframe");
                for (nal, what) in [(7, "SPS"), (8, "PPS"), (5, "IDR slice")] {
                    assert!(
                        types.contains(&nal),
                        "frame {i} lacks its {what}: {types:?}"
                    );
                }
            } else {
                assert!(!out.keyframe, "frame {i} is not a keyframe");
                assert!(!types.contains(&5), "frame {i} has an IDR slice: {types:?}");
                assert!(types.contains(&1), "frame {i} has no slice: {types:?}");
            }
            frames.push(out);
        }
        assert_eq!(decode_all(&frames), frames.len());
        // A decoder that joins at the forced IDR decodes from there.
        assert_eq!(decode_all(&frames[3..]), 3);
    }

    #[test]
    fn a_size_change_starts_with_an_idr_and_bitrate_changes_need_none() {
        if !x264_here() {
            eprintln!("this libavcodec has no libx264: the H.264 path is not exercised");
            return;
        }
        let mut enc = H264Encoder::with_encoder(X264, VideoSettings::default()).unwrap();
        let first = enc
            .encode(&pattern(320, 240, 0), 320, 240, false)
            .unwrap()
            .unwrap();
        assert!(first.keyframe);
        enc.set_bitrate(400_000);
        let after = enc
            .encode(&pattern(320, 240, 1), 320, 240, false)
            .unwrap()
            .unwrap();
        assert!(!after.keyframe, "a bitrate change must not cost a keyframe");
        let resized = enc
            .encode(&pattern(160, 96, 0), 160, 96, false)
            .unwrap()
            .unwrap();
        assert!(resized.keyframe);
        assert!(nal_types(&resized.data).contains(&7));
        assert!(matches!(
            enc.encode(&[0; 10], 160, 96, false),
            Err(EncodeError::Encode(_))
        ));
    }
}
