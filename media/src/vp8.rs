//! The VP8 adapter of the [`VideoEncoder`] port: libavcodec's "libvpx"
//! encoder (Debian's libavcodec linked to libvpx 1.12) through
//! `ffmpeg-next`'s safe API, set up for real-time desktop streaming on a
//! small host.
//!
//! Per frame: the framebuffer's `0x00RRGGBB` words are converted to I420
//! (`yuv420.rs`), handed to libvpx with a timestamp, and the one
//! packet it returns (or none: rate control dropped the frame) comes back.
//! The libavcodec encoder is opened on the first frame and again whenever
//! the size changes; the first frame of each stream is a keyframe.
//!
//! Bitrate adaptation without a keyframe: libavcodec's libvpx wrapper cannot
//! change the bitrate of an open encoder, so the encoder is opened at the
//! stream's cap ([`VideoSettings::cap_bitrate`]) and runs on a virtual
//! clock. libvpx sizes a frame as bitrate × the time since the last one; the
//! timestamps it is given advance by the real gap × target / cap, so it
//! hands out target / cap of the cap's bits per real second — the target —
//! with its buffer model and frame dropping scaled alike. The RTP
//! timestamps the browser sees come from the capture clock, not from these.
//!
//! See `docs/webrtc-choice.md` for why this encoder and these settings
//! (measured with `cargo bench -p deskgate-media --bench video_encode`).

use std::fmt;
use std::time::Instant;

use ff::codec;
use ff::format::Pixel;
use ff::{Codec, Dictionary, Packet, Rational, picture};
use ffmpeg_next as ff;
use tracing::{debug, warn};

use crate::av;
use crate::video::{EncodeError, EncodedFrame, MIN_BITRATE_BPS, VideoEncoder, VideoSettings};
use crate::yuv420::{Planes, check_size};

/// libavcodec's name for its libvpx-based VP8 encoder.
const ENCODER_NAME: &str = "libvpx";

/// Timestamps count the 90 kHz clock, fine enough for the virtual clock's
/// scaled gaps.
const TIME_BASE: (i32, i32) = (1, 90_000);
const TICKS_PER_SECOND: f64 = 90_000.0;
/// The smallest share of the cap the virtual clock goes down to.
const MIN_RATE_SCALE: f64 = 0.02;

/// Quantiser bounds (libvpx's 0–63 scale). A floor of 12 is libwebrtc's for
/// screen sharing: a static picture stops being refined there instead of
/// spending the whole CBR budget (and encode time) on invisible detail. The
/// ceiling is the scale's end: under heavy motion a coarser frame is better
/// than a dropped one, and once the motion stops the picture is refined
/// again.
const QMIN: i32 = 12;
const QMAX: i32 = 63;

/// libvpx VP8 takes `cpu-used` in -16..=16. In real-time mode a negative
/// value pins the speed to its magnitude (a positive one makes libvpx pick
/// it from a CPU budget, which wanders on a loaded host): -16 is the fastest.
const CPU_USED: &str = "-16";

/// libvpx drops a frame when its rate-control buffer falls below this
/// percentage, so heavy motion costs frames rather than bandwidth. The
/// caller encodes the picture again at its next frame slot, so a dropped
/// change still arrives.
const DROP_FRAME_THRESHOLD: &str = "30";

/// libvpx codes no residual for a macroblock whose 16×16 prediction error
/// (sum of squares) is below this (its "encode breakout"): unchanged areas
/// cost next to nothing, and refining an area stops once it is within about
/// two levels of the source.
const STATIC_THRESH: &str = "1000";

// No `max-intra-rate`: libvpx takes the first frame's rate from the time
// base (90 kHz here, so 90 000 fps), which capped the first keyframe at a
// few bytes, and a blurred keyframe of an idle desktop is never refined
// (nothing more is encoded until something changes). Keyframes are sized by
// the rate-control buffer instead.

/// Encoder threads for a `width`×`height` stream on this host, libwebrtc's
/// rule: VP8's row threads wait on each other by spinning, and on a 2-core
/// host at load 2 a second thread made encodes stall for 100–300 ms, so more
/// than one thread only with cores to spare.
fn threads_for(width: u16, height: u16) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pixels = usize::from(width) * usize::from(height);
    match pixels {
        p if p >= 1920 * 1080 && cores > 8 => 4,
        p if p >= 1280 * 720 && cores > 6 => 3,
        p if p >= 640 * 480 && cores > 3 => 2,
        _ => 1,
    }
}

/// The libavcodec options (`key`, `value`) the encoder of a `width`×`height`
/// stream is opened with, besides size, pixel format and time base. Their
/// names are the `ffmpeg` command line's too (`-key value`), which is how the
/// bench runs the CLI with the same settings.
pub fn libvpx_options(
    settings: &VideoSettings,
    width: u16,
    height: u16,
) -> Vec<(&'static str, String)> {
    let bitrate = settings.cap_bitrate(width, height);
    let threads = threads_for(width, height).to_string();
    vec![
        // minrate == maxrate == b is how libavcodec selects libvpx CBR.
        ("b", bitrate.to_string()),
        ("minrate", bitrate.to_string()),
        ("maxrate", bitrate.to_string()),
        // A 1 s buffer starting half full, WebRTC's choice for real-time VP8.
        ("bufsize", bitrate.to_string()),
        ("rc_init_occupancy", (bitrate / 2).to_string()),
        // libvpx's kf_max_dist; 0 would mean a keyframe every frame anyway.
        ("g", settings.keyframe_interval.max(1).to_string()),
        ("qmin", QMIN.to_string()),
        ("qmax", QMAX.to_string()),
        ("deadline", "realtime".into()),
        ("cpu-used", CPU_USED.into()),
        // No look-ahead: every frame comes out of the call that sent it.
        ("lag-in-frames", "0".into()),
        ("auto-alt-ref", "0".into()),
        // No entropy-context updates carried across frames, so a lost packet
        // damages less of what follows.
        ("error-resilient", "default".into()),
        ("static-thresh", STATIC_THRESH.into()),
        // Desktops have no camera noise to filter.
        ("noise-sensitivity", "0".into()),
        ("threads", threads.clone()),
        // One token partition per thread (libvpx packs them in parallel);
        // libavcodec passes `slices` on as VP8E_SET_TOKEN_PARTITIONS.
        ("slices", threads),
        ("drop-threshold", DROP_FRAME_THRESHOLD.into()),
        // libwebrtc's rate-control tolerances: frames may come in well under
        // the target, and over it by 15 %.
        ("undershoot-pct", "100".into()),
        ("overshoot-pct", "15".into()),
    ]
}

/// VP8 encoder on libavcodec's libvpx wrapper.
///
/// Built with [`Vp8Encoder::new`]; the codec itself is opened lazily on the
/// first frame and re-opened on a size change. After any encode error the
/// stream is dropped, so the next frame starts a fresh one with a keyframe
/// instead of a delta the viewer cannot decode.
pub struct Vp8Encoder {
    settings: VideoSettings,
    codec: Codec,
    /// When the last frame was given, and the timestamp it got.
    last: Option<(Instant, i64)>,
    /// The target from [`VideoEncoder::set_bitrate`]; until then the
    /// stream's starting bitrate.
    target_bps: Option<u32>,
    /// The open encoder and its buffers for the current size, if any.
    stream: Option<Stream>,
    /// Reused for every packet the encoder returns.
    packet: Packet,
}

impl fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vp8Encoder")
            .field("settings", &self.settings)
            .field("stream", &self.stream.as_ref().map(|s| (s.width, s.height)))
            .field("target_bps", &self.target_bps)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Vp8Encoder {
    /// An encoder for `settings`; nothing is opened until the first frame.
    ///
    /// Fails with [`EncodeError::Open`] when libavcodec was built without
    /// its libvpx VP8 encoder.
    pub fn new(settings: VideoSettings) -> Result<Self, EncodeError> {
        av::init()?;
        let codec = ff::encoder::find_by_name(ENCODER_NAME)
            .filter(|c| c.id() == codec::Id::VP8)
            .ok_or_else(|| {
                EncodeError::Open(format!(
                    "libavcodec has no \"{ENCODER_NAME}\" VP8 encoder \
                     (install a libavcodec built with libvpx)"
                ))
            })?;
        Ok(Self {
            settings,
            codec,
            last: None,
            target_bps: None,
            stream: None,
            packet: Packet::empty(),
        })
    }

    /// The share of the open encoder's bitrate (the cap) the target is.
    fn rate_scale(&self, width: u16, height: u16) -> f64 {
        let cap = self.settings.cap_bitrate(width, height);
        let target = self
            .target_bps
            .unwrap_or_else(|| self.settings.start_bitrate(width, height))
            .clamp(MIN_BITRATE_BPS.min(cap), cap);
        (f64::from(target) / f64::from(cap.max(1))).clamp(MIN_RATE_SCALE, 1.0)
    }

    /// The timestamp of a frame given at `now`: the last one plus the real
    /// gap times `scale`, and always past the last one.
    fn next_pts(&mut self, now: Instant, scale: f64) -> i64 {
        let pts = match self.last {
            None => 0,
            Some((at, pts)) => {
                let gap = now.saturating_duration_since(at).as_secs_f64();
                pts + ((gap * scale * TICKS_PER_SECOND).round() as i64).max(1)
            }
        };
        self.last = Some((now, pts));
        pts
    }
}

/// One open encoder: a stream of frames of one size.
struct Stream {
    encoder: ff::encoder::Video,
    planes: Planes,
    width: u16,
    height: u16,
    /// No frame sent yet: the next one must be a keyframe.
    fresh: bool,
}

impl Stream {
    /// Opens a libvpx encoder for `width` × `height` at the settings' cap
    /// with the real-time settings.
    fn open(
        codec: Codec,
        settings: &VideoSettings,
        width: u16,
        height: u16,
    ) -> Result<Self, EncodeError> {
        let open_err = |e: ff::Error| {
            EncodeError::Open(format!("libvpx VP8 encoder at {width}x{height}: {e}"))
        };
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(open_err)?;
        let bitrate = settings.cap_bitrate(width, height);
        let threads = threads_for(width, height);
        enc.set_width(u32::from(width));
        enc.set_height(u32::from(height));
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(Rational::from(TIME_BASE));
        enc.set_colorspace(ff::color::Space::BT470BG);
        enc.set_color_range(ff::color::Range::MPEG);
        let mut opts = Dictionary::new();
        for (key, value) in libvpx_options(settings, width, height) {
            opts.set(key, &value);
        }

        let encoder = enc.open_as_with(codec, opts).map_err(open_err)?;
        debug!(width, height, bitrate, threads, "opened the VP8 encoder");
        Ok(Self {
            encoder,
            planes: Planes::new(width, height),
            width,
            height,
            fresh: true,
        })
    }
}

impl VideoEncoder for Vp8Encoder {
    fn mime_type(&self) -> &'static str {
        "video/VP8"
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
        self.encode_at(pixels, width, height, keyframe, Instant::now())
    }
}

impl Vp8Encoder {
    /// [`VideoEncoder::encode`] of a picture given at `now`.
    fn encode_at(
        &mut self,
        pixels: &[u32],
        width: u16,
        height: u16,
        keyframe: bool,
        now: Instant,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        check_size(pixels, width, height)?;
        let scale = self.rate_scale(width, height);
        let pts = self.next_pts(now, scale);
        let stream = match &mut self.stream {
            Some(s) if (s.width, s.height) == (width, height) => s,
            slot => {
                // Drop the old encoder before opening its successor.
                *slot = None;
                slot.insert(Stream::open(self.codec, &self.settings, width, height)?)
            }
        };

        let result = encode_frame(stream, &mut self.packet, pixels, pts, keyframe);
        match result {
            Ok(out) => {
                // Until a frame actually comes out, the next must be a keyframe.
                stream.fresh &= out.is_none();
                Ok(out)
            }
            Err(e) => {
                // The encoder's state is unknown: restart the stream (with a
                // keyframe) on the next frame.
                warn!(error = %e, width, height, "VP8 encode failed; the stream restarts");
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// Sends one frame through `stream`'s encoder and collects its packet.
fn encode_frame(
    stream: &mut Stream,
    packet: &mut Packet,
    pixels: &[u32],
    pts: i64,
    keyframe: bool,
) -> Result<Option<EncodedFrame>, EncodeError> {
    stream.planes.load(pixels)?;
    let frame = &mut stream.planes.frame;
    frame.set_pts(Some(pts));
    // The frame is reused, so the type is set every time: I forces a
    // keyframe (VPX_EFLAG_FORCE_KF), None lets the encoder decide.
    frame.set_kind(if keyframe || stream.fresh {
        picture::Type::I
    } else {
        picture::Type::None
    });
    stream
        .encoder
        .send_frame(frame)
        .map_err(|e| EncodeError::Encode(format!("libvpx refused the frame: {e}")))?;
    av::receive_one(&mut stream.encoder, packet, "libvpx")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ff::frame;

    /// Decodes a sequence of VP8 frames with libavcodec's own (native) VP8
    /// decoder, not libvpx, so the bitstream is checked by a second
    /// implementation.
    struct Decoder(ff::decoder::Video);

    impl Decoder {
        fn new() -> Self {
            crate::av::init().unwrap();
            let codec = ff::decoder::find(codec::Id::VP8).expect("libavcodec VP8 decoder");
            let dec = codec::context::Context::new_with_codec(codec)
                .decoder()
                .video()
                .expect("open the VP8 decoder");
            Self(dec)
        }

        fn decode(&mut self, data: &[u8]) -> frame::Video {
            self.0
                .send_packet(&Packet::copy(data))
                .expect("send_packet");
            let mut out = frame::Video::empty();
            self.0.receive_frame(&mut out).expect("a decoded frame");
            out
        }
    }

    /// The RGB of pixel (`x`, `y`) of a decoded I420 frame, by the BT.601
    /// limited-range inverse.
    fn rgb_at(f: &frame::Video, x: usize, y: usize) -> [i32; 3] {
        assert_eq!(f.format(), Pixel::YUV420P);
        let luma = i32::from(f.data(0)[y * f.stride(0) + x]) - 16;
        let cb = i32::from(f.data(1)[(y / 2) * f.stride(1) + x / 2]) - 128;
        let cr = i32::from(f.data(2)[(y / 2) * f.stride(2) + x / 2]) - 128;
        let l = 1.164 * f64::from(luma);
        let (cb, cr) = (f64::from(cb), f64::from(cr));
        let clamp = |v: f64| v.round().clamp(0.0, 255.0) as i32;
        [
            clamp(l + 1.596 * cr),
            clamp(l - 0.392 * cb - 0.813 * cr),
            clamp(l + 2.017 * cb),
        ]
    }

    fn channels(p: u32) -> [i32; 3] {
        [(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff].map(|c| c as i32)
    }

    fn assert_close(got: [i32; 3], want: u32, what: &str) {
        let want = channels(want);
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 8,
                "{what}: decoded {got:?}, expected {want:?} (±8)"
            );
        }
    }

    fn encoder() -> Vp8Encoder {
        Vp8Encoder::new(VideoSettings::default()).expect("libvpx encoder")
    }

    fn solid(w: u16, h: u16, colour: u32) -> Vec<u32> {
        vec![colour; usize::from(w) * usize::from(h)]
    }

    #[test]
    fn mime_type_is_vp8() {
        assert_eq!(encoder().mime_type(), "video/VP8");
    }

    #[test]
    fn solid_colour_round_trips() {
        let (w, h) = (320, 240);
        let colour = 0x00ff_8000;
        let mut enc = encoder();
        let out = enc
            .encode(&solid(w, h, colour), w, h, false)
            .unwrap()
            .unwrap();
        assert!(out.keyframe);
        let f = Decoder::new().decode(&out.data);
        assert_eq!((f.width(), f.height()), (320, 240));
        assert_close(rgb_at(&f, 160, 120), colour, "centre");
    }

    #[test]
    fn first_and_forced_frames_are_keyframes() {
        let (w, h) = (320, 240);
        let pixels: Vec<u32> = (0..u32::from(w) * u32::from(h))
            .map(|i| ((i % 320) * 0x0001_0203) & 0x00ff_ffff)
            .collect();
        let mut enc = encoder();
        let mut dec = Decoder::new();
        let first = enc.encode(&pixels, w, h, false).unwrap().unwrap();
        assert!(first.keyframe, "the first frame must be a keyframe");
        dec.decode(&first.data);
        let second = enc.encode(&pixels, w, h, false).unwrap().unwrap();
        assert!(!second.keyframe, "an unchanged picture needs no keyframe");
        dec.decode(&second.data);
        let forced = enc.encode(&pixels, w, h, true).unwrap().unwrap();
        assert!(forced.keyframe, "a forced keyframe must be one");
        // A forced keyframe decodes on its own.
        Decoder::new().decode(&forced.data);
        let after = enc.encode(&pixels, w, h, false).unwrap().unwrap();
        assert!(!after.keyframe);
        dec.decode(&forced.data);
        dec.decode(&after.data);
    }

    #[test]
    fn size_change_starts_a_new_stream() {
        let mut enc = encoder();
        let mut dec = Decoder::new();
        let colour = 0x0020_40c0;
        for _ in 0..3 {
            let out = enc
                .encode(&solid(320, 240, colour), 320, 240, false)
                .unwrap()
                .unwrap();
            dec.decode(&out.data);
        }
        let out = enc
            .encode(&solid(640, 360, colour), 640, 360, false)
            .unwrap()
            .unwrap();
        assert!(out.keyframe, "a new size starts with a keyframe");
        // The same decoder follows the change, as a browser's would.
        let f = dec.decode(&out.data);
        assert_eq!((f.width(), f.height()), (640, 360));
        assert_close(rgb_at(&f, 320, 180), colour, "centre after resize");
        let next = enc
            .encode(&solid(640, 360, colour), 640, 360, false)
            .unwrap()
            .unwrap();
        assert!(!next.keyframe);
        dec.decode(&next.data);
    }

    #[test]
    fn odd_dimensions_encode_at_their_size() {
        // Left part one colour, the last column and last row another, so a
        // mishandled edge shows.
        let (w, h) = (161u16, 91u16);
        let (body, edge) = (0x0010_80f0, 0x00f0_f010);
        let pixels: Vec<u32> = (0..usize::from(h))
            .flat_map(|y| {
                (0..usize::from(w)).map(move |x| {
                    if x + 16 >= usize::from(w) || y + 16 >= usize::from(h) {
                        edge
                    } else {
                        body
                    }
                })
            })
            .collect();
        let mut enc = encoder();
        let out = enc.encode(&pixels, w, h, false).unwrap().unwrap();
        assert!(out.keyframe);
        let f = Decoder::new().decode(&out.data);
        assert_eq!((f.width(), f.height()), (161, 91));
        assert_close(rgb_at(&f, 40, 40), body, "body");
        assert_close(rgb_at(&f, 160, 90), edge, "bottom-right pixel");
        assert_close(rgb_at(&f, 160, 40), edge, "last column");
        assert_close(rgb_at(&f, 40, 90), edge, "last row");
        // And the next frame of the same odd size is an ordinary delta.
        let next = enc.encode(&pixels, w, h, false).unwrap().unwrap();
        assert!(!next.keyframe);
    }

    #[test]
    fn wrong_pixel_count_is_an_error() {
        let mut enc = encoder();
        let short = vec![0u32; 320 * 240 - 1];
        assert!(matches!(
            enc.encode(&short, 320, 240, false),
            Err(EncodeError::Encode(_))
        ));
        assert!(matches!(
            enc.encode(&[], 0, 240, false),
            Err(EncodeError::Encode(_))
        ));
        // The encoder still works afterwards.
        let out = enc
            .encode(&solid(320, 240, 0), 320, 240, false)
            .unwrap()
            .unwrap();
        assert!(out.keyframe);
    }

    /// Bytes of `frames` frames of a scrolling pattern at 30 fps (on a
    /// made-up clock) after `target` was set.
    fn bytes_at(target: Option<u32>, frames: u32) -> (usize, usize) {
        let (w, h) = (640u16, 360u16);
        let mut enc = encoder();
        if let Some(bps) = target {
            enc.set_bitrate(bps);
        }
        let start = Instant::now();
        let (mut bytes, mut sent) = (0, 0);
        for f in 0..frames {
            let pixels: Vec<u32> = (0..u32::from(w) * u32::from(h))
                .map(|i| {
                    let (x, y) = (i % u32::from(w), i / u32::from(w));
                    ((x * 7 + y * 13 + f * 5) ^ (x * y + f)).wrapping_mul(0x0001_0101) & 0x00ff_ffff
                })
                .collect();
            let at = start + std::time::Duration::from_millis(u64::from(f) * 1000 / 30);
            if let Some(out) = enc.encode_at(&pixels, w, h, false, at).unwrap()
                && f >= 30
            {
                bytes += out.data.len();
                sent += 1;
            }
        }
        (bytes, sent)
    }

    #[test]
    fn a_lower_target_lowers_the_bitrate_without_a_keyframe() {
        let cap = VideoSettings::default().cap_bitrate(640, 360);
        let (full, full_sent) = bytes_at(None, 90);
        let (quarter, quarter_sent) = bytes_at(Some(cap / 4), 90);
        // 60 frames (2 s) measured after the first second.
        let full_bps = full * 8 / 2;
        let quarter_bps = quarter * 8 / 2;
        assert!(
            quarter_bps < full_bps / 2,
            "a quarter of the cap gave {quarter_bps} bit/s against {full_bps} ({quarter_sent} and {full_sent} frames)"
        );
        assert!(
            quarter_bps < cap as usize / 4 * 3 / 2,
            "{quarter_bps} bit/s for a target of {}",
            cap / 4
        );
        // Changing the target mid-stream costs no keyframe.
        let mut enc = encoder();
        let pixels = solid(320, 240, 0x0040_8020);
        assert!(
            enc.encode(&pixels, 320, 240, false)
                .unwrap()
                .unwrap()
                .keyframe
        );
        enc.set_bitrate(400_000);
        let next = enc.encode(&solid(320, 240, 0x0041_8020), 320, 240, false);
        assert!(!next.unwrap().unwrap().keyframe);
    }

    #[test]
    fn timestamps_strictly_increase() {
        let mut enc = encoder();
        let pts: Vec<i64> = (0..50).map(|_| enc.next_pts(Instant::now(), 1.0)).collect();
        assert!(pts.windows(2).all(|p| p[1] > p[0]), "{pts:?}");
    }
}
