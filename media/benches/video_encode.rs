//! Encode-time figures for the VP8 adapter (`cargo bench -p deskgate-media
//! --bench video_encode`): per-frame `encode()` time (median, p95, max),
//! colour conversion on its own, and bytes per keyframe and delta frame, at
//! 1280×720 and 1920×1080 for three desktop scenes.
//!
//! Frames are paced at the settings' `max_fps`, as the media path sends them,
//! because libvpx's rate control sizes frames from their timestamps: frames
//! sent back to back would look like a very high frame rate and come out
//! unrealistically small.

use std::time::{Duration, Instant};

use deskgate_media::VideoEncoder;
use deskgate_media::VideoSettings;
use deskgate_media::vp8::Vp8Encoder;
use yuv::{
    BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix,
    bgra_to_yuv420,
};

/// Frames per scene before measuring (the first is the stream's keyframe).
const WARM_UP: usize = 8;
/// Frames measured per scene.
const MEASURED: usize = 72;
/// The measured frame at which a keyframe is forced (a viewer's PLI).
const FORCED_KEY_AT: usize = MEASURED / 2;
/// Conversion-only repetitions per resolution.
const CONVERSIONS: usize = 40;

const DESKTOP: u32 = 0x003a_6ea5;
const WINDOW: u32 = 0x00f0_f0f0;
const TITLE: u32 = 0x0030_3040;
const INK: u32 = 0x0020_2020;

/// Small deterministic hash, so every run draws the same pictures.
fn hash(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

/// Whether pixel (`x`, `y`) of a text page is ink: 8×16 character cells,
/// most of them holding a glyph-like 6×10 pattern chosen by (`line`, column).
fn ink(line: u64, x: usize, y: usize, seed: u64) -> bool {
    let (col, cx, cy) = ((x / 8) as u64, x % 8, y % 16);
    let glyph = hash(line ^ seed, col);
    // About one cell in six is a space; rows 0–2 and 13–15 are leading.
    if glyph.is_multiple_of(6) || !(1..7).contains(&cx) || !(3..13).contains(&cy) {
        return false;
    }
    let bit = (cy - 3) * 6 + (cx - 1);
    (glyph >> (bit % 60)) & 1 == 1
}

/// A picture being drawn: `width` × `height` words, `0x00RRGGBB`.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u32>,
}

impl Canvas {
    /// A desktop: background and a few overlapping text windows.
    fn desktop(width: usize, height: usize) -> Self {
        let mut c = Self {
            width,
            height,
            pixels: vec![DESKTOP; width * height],
        };
        for win in 0..4 {
            let (x0, y0) = (40 + win * width / 5, 40 + win * height / 8);
            let (w, h) = (width / 3, height / 2);
            c.window(x0, y0, w, h, win as u64, 0);
        }
        c
    }

    /// Draws a window: title bar, then text starting at text line `first_line`.
    fn window(&mut self, x0: usize, y0: usize, w: usize, h: usize, seed: u64, first_line: u64) {
        for y in y0..(y0 + h).min(self.height) {
            let row = &mut self.pixels[y * self.width..(y + 1) * self.width];
            for (x, p) in row
                .iter_mut()
                .enumerate()
                .take((x0 + w).min(self.width))
                .skip(x0)
            {
                let (wx, wy) = (x - x0, y - y0);
                *p = if wy < 24 {
                    TITLE
                } else if ink(first_line + ((wy - 24) / 16) as u64, wx, wy - 24, seed) {
                    INK
                } else {
                    WINDOW
                };
            }
        }
    }

    /// Copies a rectangle back from `base`.
    fn restore(&mut self, base: &Canvas, x0: usize, y0: usize, w: usize, h: usize) {
        for y in y0..(y0 + h).min(self.height) {
            let r = y * self.width + x0..y * self.width + (x0 + w).min(self.width);
            self.pixels[r.clone()].copy_from_slice(&base.pixels[r]);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Scene {
    /// A 480×320 window of scrolling text sliding across the desktop.
    MovingWindow,
    /// A 120×24 field (a clock, a status line) redrawn every frame.
    SmallRect,
    /// A new full-screen page of text over a shifting gradient every frame.
    FullScreen,
}

impl Scene {
    fn name(self) -> &'static str {
        match self {
            Self::MovingWindow => "moving window 480x320",
            Self::SmallRect => "small rect 120x24",
            Self::FullScreen => "full-screen change",
        }
    }

    /// Draws frame `f` of the scene into `canvas` (`base` is the desktop).
    fn draw(self, canvas: &mut Canvas, base: &Canvas, f: usize) {
        let (w, h) = (canvas.width, canvas.height);
        match self {
            Self::MovingWindow => {
                let span = w - 480 - 100;
                let x = |f: usize| 50 + (f * 12) % span;
                if f > 0 {
                    canvas.restore(base, x(f - 1), 200, 480, 320);
                }
                canvas.window(x(f), 200, 480, 320, 99, f as u64);
            }
            Self::SmallRect => {
                let (x0, y0) = (w - 200, h - 40);
                for y in 0..24 {
                    let row = (y0 + y) * w;
                    for x in 0..120 {
                        canvas.pixels[row + x0 + x] =
                            if ink(f as u64, x, y, 7) { INK } else { WINDOW };
                    }
                }
            }
            Self::FullScreen => {
                for y in 0..h {
                    let row = &mut canvas.pixels[y * w..(y + 1) * w];
                    for (x, p) in row.iter_mut().enumerate() {
                        *p = if ink((y / 16) as u64, x, y, f as u64 + 1000) {
                            INK
                        } else {
                            let r = ((x + f * 4) * 255 / w) as u32 & 0xff;
                            let g = ((y + f * 2) * 255 / h) as u32 & 0xff;
                            (r << 16) | (g << 8) | 0xc0
                        };
                    }
                }
            }
        }
    }
}

/// Median, 95th percentile and maximum, in milliseconds.
fn stats(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = times.len();
    (
        ms(times[n / 2]),
        ms(times[(n * 95).div_ceil(100) - 1]),
        ms(times[n - 1]),
    )
}

fn median(mut v: Vec<usize>) -> usize {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs one scene at one size; prints one line.
fn run_scene(settings: VideoSettings, width: u16, height: u16, scene: Scene) {
    let (w, h) = (usize::from(width), usize::from(height));
    let base = Canvas::desktop(w, h);
    let mut canvas = Canvas::desktop(w, h);
    let mut enc = Vp8Encoder::new(settings).expect("libvpx VP8 encoder");
    let slot = Duration::from_secs(1) / settings.max_fps.max(1);

    let (mut times, mut key_bytes, mut delta_bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut dropped = 0;
    let mut measured_bytes = 0usize;
    let mut measure_start = Instant::now();
    let mut next_slot = Instant::now();
    for f in 0..WARM_UP + MEASURED {
        scene.draw(&mut canvas, &base, f);
        // Wait for the frame's slot, as the media path's max_fps pacing does.
        let now = Instant::now();
        if next_slot > now {
            std::thread::sleep(next_slot - now);
        }
        next_slot = Instant::now().max(next_slot) + slot;

        if f == WARM_UP {
            measure_start = Instant::now();
        }
        let force = f == WARM_UP + FORCED_KEY_AT;
        let t = Instant::now();
        let out = enc
            .encode(&canvas.pixels, width, height, force)
            .expect("encode");
        let took = t.elapsed();
        let out_len = out.as_ref().map_or(0, |frame| frame.data.len());
        match out {
            Some(frame) if frame.keyframe => key_bytes.push(frame.data.len()),
            Some(frame) if f >= WARM_UP => delta_bytes.push(frame.data.len()),
            Some(_) => {}
            None => dropped += 1,
        }
        if f >= WARM_UP {
            times.push(took);
            measured_bytes += out_len;
        }
    }

    let wall = measure_start.elapsed().as_secs_f64();
    let fps = MEASURED as f64 / wall;
    let kbps = measured_bytes as f64 * 8.0 / wall / 1000.0;
    let (med, p95, max) = stats(times);
    let mean_delta = delta_bytes.iter().sum::<usize>() / delta_bytes.len().max(1);
    println!(
        "{width}x{height} {:<22} encode ms med {med:6.2} p95 {p95:6.2} max {max:6.2} | \
         delta B med {:>6} mean {mean_delta:>6} | key B {key_bytes:?} | \
         {fps:4.1} fps {kbps:5.0} kbit/s{}",
        scene.name(),
        median(delta_bytes),
        if dropped > 0 {
            format!(" | dropped {dropped}")
        } else {
            String::new()
        },
    );
}

/// Times the BGRA → I420 conversion alone (same call and parameters as the
/// encoder's), into reused planes.
fn run_conversion(width: u16, height: u16) {
    let (w, h) = (usize::from(width), usize::from(height));
    let canvas = Canvas::desktop(w, h);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (mut y, mut u, mut v) = (vec![0u8; w * h], vec![0u8; cw * ch], vec![0u8; cw * ch]);
    let mut times = Vec::with_capacity(CONVERSIONS);
    for i in 0..CONVERSIONS + 3 {
        let t = Instant::now();
        let mut image = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(&mut y),
            y_stride: w as u32,
            u_plane: BufferStoreMut::Borrowed(&mut u),
            u_stride: cw as u32,
            v_plane: BufferStoreMut::Borrowed(&mut v),
            v_stride: cw as u32,
            width: w as u32,
            height: h as u32,
        };
        bgra_to_yuv420(
            &mut image,
            bytemuck::cast_slice(&canvas.pixels),
            w as u32 * 4,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .expect("conversion");
        if i >= 3 {
            times.push(t.elapsed());
        }
    }
    let (med, p95, max) = stats(times);
    println!(
        "{width}x{height} {:<22} conv   ms med {med:6.2} p95 {p95:6.2} max {max:6.2}",
        "BGRA->I420 (yuv crate)"
    );
}

fn main() {
    let started = Instant::now();
    let settings = VideoSettings::default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    println!("deskgate-media VP8 encode benchmark");
    println!("machine: {cores} cores, load average (1 min) {load}");
    println!(
        "settings: {} bit/s CBR, max {} fps (frames paced at that rate), keyframe every {} frames",
        settings.bitrate_bps, settings.max_fps, settings.keyframe_interval
    );
    println!(
        "encoder: libavcodec libvpx VP8, deadline=realtime cpu-used=-10 threads=1 \
         lag-in-frames=0 error-resilient static-thresh=100 q 4-56, 1 s buffer"
    );
    println!(
        "per scene: {WARM_UP} warm-up frames (stream keyframe) not timed, {MEASURED} timed, \
         keyframe forced at timed frame {FORCED_KEY_AT}; encode = encode() incl. conversion"
    );
    for (width, height) in [(1280, 720), (1920, 1080)] {
        run_conversion(width, height);
        for scene in [Scene::MovingWindow, Scene::SmallRect, Scene::FullScreen] {
            run_scene(settings, width, height, scene);
        }
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
