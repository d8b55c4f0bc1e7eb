//! The VP8 adapter of the [`VideoEncoder`] port: libavcodec's "libvpx"
//! encoder (Debian's libavcodec linked to libvpx) through `ffmpeg-next`'s
//! safe API, set up for real-time screen streaming.
//!
//! Per frame: the framebuffer's `0x00RRGGBB` words are converted to I420
//! (BT.601, limited range: what a browser assumes for VP8, which carries no
//! colour description) into reused buffers, copied into the encoder's frame
//! and encoded. The libavcodec encoder is opened on the first frame and again
//! whenever the size changes; the first frame of each stream is a keyframe.
//! See `docs/webrtc-choice.md` for why this encoder and these settings.

use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use ff::codec;
use ff::format::Pixel;
use ff::{Codec, Dictionary, Packet, Rational, frame, picture};
use ffmpeg_next as ff;
use tracing::{debug, warn};
use yuv::{
    BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix,
    bgra_to_yuv420,
};

use crate::video::{EncodeError, EncodedFrame, VideoEncoder, VideoSettings};

// The framebuffer's `0x00RRGGBB` words are read as B,G,R,X bytes, which holds
// on little-endian hosts only.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "the BGRA view of the framebuffer assumes a little-endian host"
);

/// libavcodec's name for its libvpx-based VP8 encoder.
const ENCODER_NAME: &str = "libvpx";

/// Presentation timestamps are in milliseconds.
const TIME_BASE: (i32, i32) = (1, 1000);

/// Quantiser bounds (libvpx's 0–63 scale). 4 keeps a static picture from
/// being refined byte-hungrily towards lossless; 56 (WebRTC's VP8 default)
/// bounds how blurred heavy changes get, at the price that CBR overshoots on
/// them unless frames are dropped (see [`DROP_FRAME_THRESHOLD`]).
const QMIN: i32 = 4;
const QMAX: i32 = 56;

/// libvpx VP8 takes `cpu-used` in -16..=16. In real-time mode a negative
/// value pins the speed to its magnitude (a positive one makes libvpx pick
/// the speed from a CPU budget): -10 is fast and predictable, and keeps 720p
/// within a frame slot on a loaded 2-core host.
const CPU_USED: &str = "-10";

/// libvpx drops a frame when its rate-control buffer falls below this
/// percentage, so heavy motion costs frames rather than bandwidth: without it
/// a 2.5 Mbit/s stream ran at 5 Mbit/s for a moving window and 10–15 Mbit/s
/// for full-screen changes. The caller encodes the picture again at its next
/// frame slot, so a dropped change still arrives.
const DROP_FRAME_THRESHOLD: &str = "30";

/// libvpx codes no residual for a macroblock whose prediction error is below
/// this (its "encode breakout"), so unchanged areas cost next to nothing; the
/// decision record's figures were measured with it.
const STATIC_THRESH: &str = "100";

/// Initialises libav once per process: error-code tables, and its logging cut
/// down to errors so the encoder does not chatter on stderr.
fn init_libav() -> Result<(), EncodeError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ff::init().map_err(|e| e.to_string())?;
        ff::util::log::set_level(ff::util::log::Level::Error);
        Ok(())
    })
    .clone()
    .map_err(|e| EncodeError::Open(format!("cannot initialise libavcodec: {e}")))
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
    /// Origin of the millisecond clock the timestamps come from.
    clock: Instant,
    /// The last timestamp given, so the next one is strictly greater.
    last_pts: Option<i64>,
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
            .field("last_pts", &self.last_pts)
            .finish_non_exhaustive()
    }
}

impl Vp8Encoder {
    /// An encoder for `settings`; nothing is opened until the first frame.
    ///
    /// Fails with [`EncodeError::Open`] when libavcodec was built without
    /// its libvpx VP8 encoder.
    pub fn new(settings: VideoSettings) -> Result<Self, EncodeError> {
        init_libav()?;
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
            clock: Instant::now(),
            last_pts: None,
            stream: None,
            packet: Packet::empty(),
        })
    }

    /// The next timestamp: milliseconds since creation, and always past the
    /// last one, even for frames less than a millisecond apart. libvpx's rate
    /// control takes the frame rate from these, so they follow the real clock
    /// rather than a frame counter.
    fn next_pts(&mut self) -> i64 {
        let now = i64::try_from(self.clock.elapsed().as_millis()).unwrap_or(i64::MAX);
        let pts = match self.last_pts {
            Some(last) if now <= last => last + 1,
            _ => now,
        };
        self.last_pts = Some(pts);
        pts
    }
}

/// One open encoder: a stream of frames of one size.
struct Stream {
    encoder: ff::encoder::Video,
    /// The frame handed to the encoder, reused (the encoder has released it
    /// by the time `receive_packet` has drained).
    frame: frame::Video,
    /// I420 planes the conversion writes, with the frame's strides.
    planes: [Vec<u8>; 3],
    width: u16,
    height: u16,
    /// No frame sent yet: the next one must be a keyframe.
    fresh: bool,
}

impl Stream {
    /// Opens a libvpx encoder for `width` × `height` with the real-time
    /// settings.
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
        let bitrate = settings.bitrate_bps;
        enc.set_width(u32::from(width));
        enc.set_height(u32::from(height));
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(Rational::from(TIME_BASE));
        enc.set_colorspace(ff::color::Space::BT470BG);
        enc.set_color_range(ff::color::Range::MPEG);
        enc.set_bit_rate(bitrate as usize);
        enc.set_max_bit_rate(bitrate as usize);
        // libvpx's kf_max_dist; 0 would mean a keyframe every frame anyway.
        enc.set_gop(settings.keyframe_interval.max(1));
        enc.set_qmin(QMIN);
        enc.set_qmax(QMAX);

        let mut opts = Dictionary::new();
        opts.set("deadline", "realtime");
        opts.set("cpu-used", CPU_USED);
        // No look-ahead: every frame comes out of the call that sent it.
        opts.set("lag-in-frames", "0");
        // No entropy-context updates carried across frames, so a lost packet
        // damages less of what follows.
        opts.set("error-resilient", "default");
        opts.set("static-thresh", STATIC_THRESH);
        // More threads stalled on the loaded 2-core host (decision record).
        opts.set("threads", "1");
        // minrate == maxrate == bitrate is how libavcodec selects libvpx CBR.
        let rate = bitrate.to_string();
        opts.set("minrate", &rate);
        // A 1 s buffer starting half full, WebRTC's choice for real-time VP8.
        opts.set("bufsize", &rate);
        opts.set("rc_init_occupancy", &(bitrate / 2).to_string());
        opts.set("drop-threshold", DROP_FRAME_THRESHOLD);

        let encoder = enc.open_as_with(codec, opts).map_err(open_err)?;
        let frame = frame::Video::new(Pixel::YUV420P, u32::from(width), u32::from(height));
        // Conversion buffers laid out like the frame's planes (same strides),
        // so each plane goes over in one copy.
        let planes = [0, 1, 2].map(|i| vec![0u8; frame.stride(i) * frame.plane_height(i) as usize]);
        debug!(width, height, bitrate, "opened the VP8 encoder");
        Ok(Self {
            encoder,
            frame,
            planes,
            width,
            height,
            fresh: true,
        })
    }

    /// Converts `pixels` (exactly `width` × `height` words) into the frame.
    fn load(&mut self, pixels: &[u32]) -> Result<(), EncodeError> {
        let [y, u, v] = &mut self.planes;
        let mut image = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(y),
            y_stride: stride_u32(self.frame.stride(0))?,
            u_plane: BufferStoreMut::Borrowed(u),
            u_stride: stride_u32(self.frame.stride(1))?,
            v_plane: BufferStoreMut::Borrowed(v),
            v_stride: stride_u32(self.frame.stride(2))?,
            width: u32::from(self.width),
            height: u32::from(self.height),
        };
        // Odd sizes need nothing special: VP8 codes any size, and `yuv`
        // gives the last column / row a chroma sample of its own.
        bgra_to_yuv420(
            &mut image,
            bytemuck::cast_slice(pixels),
            u32::from(self.width) * 4,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .map_err(|e| EncodeError::Encode(format!("colour conversion: {e}")))?;
        for (i, plane) in self.planes.iter().enumerate() {
            self.frame.data_mut(i).copy_from_slice(plane);
        }
        Ok(())
    }
}

fn stride_u32(stride: usize) -> Result<u32, EncodeError> {
    u32::try_from(stride).map_err(|_| EncodeError::Encode(format!("plane stride {stride}")))
}

impl VideoEncoder for Vp8Encoder {
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
        if width == 0 || height == 0 {
            return Err(EncodeError::Encode(format!("empty frame {width}x{height}")));
        }
        let expected = usize::from(width) * usize::from(height);
        if pixels.len() != expected {
            return Err(EncodeError::Encode(format!(
                "{} pixels for a {width}x{height} frame (expected {expected})",
                pixels.len()
            )));
        }

        let pts = self.next_pts();
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
    stream.load(pixels)?;
    stream.frame.set_pts(Some(pts));
    // The frame is reused, so the type is set every time: I forces a
    // keyframe (VPX_EFLAG_FORCE_KF), None lets the encoder decide.
    stream.frame.set_kind(if keyframe || stream.fresh {
        picture::Type::I
    } else {
        picture::Type::None
    });
    stream
        .encoder
        .send_frame(&stream.frame)
        .map_err(|e| EncodeError::Encode(format!("libvpx refused the frame: {e}")))?;

    // With lag-in-frames=0 and no alt-ref, one frame in gives at most one
    // packet out (none when rate control dropped it).
    let mut out: Option<EncodedFrame> = None;
    loop {
        match stream.encoder.receive_packet(packet) {
            Ok(()) => {
                if out.is_some() {
                    return Err(EncodeError::Encode(
                        "libvpx returned more than one packet for a frame".into(),
                    ));
                }
                out = Some(EncodedFrame {
                    data: Bytes::copy_from_slice(packet.data().unwrap_or_default()),
                    keyframe: packet.is_key(),
                });
            }
            Err(ff::Error::Other { errno }) if errno == ff::error::EAGAIN => break,
            Err(ff::Error::Eof) => break,
            Err(e) => return Err(EncodeError::Encode(format!("libvpx: {e}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a sequence of VP8 frames with libavcodec's own (native) VP8
    /// decoder, not libvpx, so the bitstream is checked by a second
    /// implementation.
    struct Decoder(ff::decoder::Video);

    impl Decoder {
        fn new() -> Self {
            init_libav().unwrap();
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

    #[test]
    fn timestamps_strictly_increase() {
        let mut enc = encoder();
        let pts: Vec<i64> = (0..50).map(|_| enc.next_pts()).collect();
        assert!(pts.windows(2).all(|p| p[1] > p[0]), "{pts:?}");
    }
}
