//! Encode-time and delivered-frame figures for the VP8 path, beside the
//! ffmpeg command line's libvpx real-time encode of the same frames
//! (`cargo bench -p deskgate-media --bench video_encode`).
//!
//! Per scene (a small changing rectangle, a moving 480×320 window, a
//! full-screen change) and size (1280×720, 1920×1080), at the default
//! settings (auto bitrate), with the machine otherwise idle and again under
//! load 2 (two busy-looping threads of this process):
//!
//! - ours: `encode()` wall time per frame, p50 and p95 (and the calling
//!   thread's on-CPU time, which shows what is waiting on the CPU under
//!   load), frames kept by rate control, frames delivered: the measured
//!   frames libavcodec's own VP8 decoder decodes, per second of stream
//!   time, and their mean luma PSNR against the source (what the speed
//!   settings cost in quality);
//! - the ffmpeg CLI (`ffmpeg -f rawvideo -pix_fmt bgr0 … -c:v libvpx` with the
//!   same libvpx options, [`deskgate_media::vp8::libvpx_options`]): the time
//!   from writing a frame to its stdin to reading its packet from the IVF on
//!   its stdout (`-flush_packets 1`), which includes the pipe and swscale's
//!   conversion as ours includes our conversion; dropped frames have no
//!   packet and no time;
//! - the ratio ours / ffmpeg of p50 and p95.
//!
//! Frames are drawn before the run and paced at `max_fps` (30), as the media
//! path sends them: libvpx's rate control sizes frames from their
//! timestamps. The goal (DESIGN.md §10): 1080p p95 ≤ 16 ms for the small
//! rectangle and the moving window, and the moving window delivered at
//! ≥ 24 fps.
//!
//! Knobs: `BENCH_LOADS` (default `0,2`), `BENCH_SIZES` (default
//! `720,1080`), `BENCH_SCENES` (substrings of scene names).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deskgate_media::vp8::{Vp8Encoder, libvpx_options};
use deskgate_media::{EncodedFrame, VideoEncoder, VideoSettings};
use ffmpeg_next as ff;
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
/// The goals, for the marks on the 1080p lines.
const GOAL_P95_MS: f64 = 16.0;
const GOAL_FPS: f64 = 24.0;

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
#[derive(Clone)]
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scene {
    /// A 120×24 field (a clock, a status line) redrawn every frame.
    SmallRect,
    /// A 480×320 window of scrolling text sliding across the desktop.
    MovingWindow,
    /// A new full-screen page of text over a shifting gradient every frame.
    FullScreen,
}

impl Scene {
    fn name(self) -> &'static str {
        match self {
            Self::SmallRect => "small rect 120x24",
            Self::MovingWindow => "moving window 480x320",
            Self::FullScreen => "full-screen change",
        }
    }

    /// Whether the goal applies ("typical desktop changes").
    fn typical(self) -> bool {
        self != Self::FullScreen
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

    /// Every frame of the scene, drawn before the run.
    fn frames(self, width: usize, height: usize) -> Vec<Vec<u32>> {
        let base = Canvas::desktop(width, height);
        let mut canvas = base.clone();
        (0..WARM_UP + MEASURED)
            .map(|f| {
                self.draw(&mut canvas, &base, f);
                canvas.pixels.clone()
            })
            .collect()
    }
}

/// p50 and p95, in milliseconds (0 for no samples).
fn percentiles(mut times: Vec<Duration>) -> (f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = times.len();
    (ms(times[n / 2]), ms(times[(n * 95).div_ceil(100) - 1]))
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Sleeps until `slot`, then returns the next frame's slot.
fn pace(slot: Instant, interval: Duration) -> Instant {
    let now = Instant::now();
    if slot > now {
        std::thread::sleep(slot - now);
    }
    Instant::now().max(slot) + interval
}

struct Ours {
    p50: f64,
    p95: f64,
    cpu_p50: f64,
    cpu_p95: f64,
    kept: usize,
    delivered_fps: f64,
    kbps: f64,
    /// Mean luma PSNR of the delivered measured frames, dB.
    psnr: f64,
}

/// Our encoder over `frames`, paced at `max_fps`.
fn run_ours(settings: VideoSettings, width: u16, height: u16, frames: &[Vec<u32>]) -> Ours {
    let mut enc = Vp8Encoder::new(settings).expect("libvpx VP8 encoder");
    let interval = Duration::from_secs(1) / settings.max_fps.max(1);
    let (mut times, mut cpu, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let mut slot = Instant::now();
    let mut measure_start = Instant::now();
    for (f, pixels) in frames.iter().enumerate() {
        slot = pace(slot, interval);
        if f == WARM_UP {
            measure_start = Instant::now();
        }
        let force = f == WARM_UP + FORCED_KEY_AT;
        let (t, c) = (Instant::now(), thread_cpu());
        let frame = enc.encode(pixels, width, height, force).expect("encode");
        if f >= WARM_UP {
            times.push(t.elapsed());
            cpu.push(thread_cpu().saturating_sub(c));
        }
        out.push(frame);
    }
    // Stream time of the measured frames: their slots.
    let wall = (Instant::now().max(slot) - measure_start).as_secs_f64();
    let measured = &out[WARM_UP..];
    let kept = measured.iter().flatten().count();
    let bytes: usize = measured.iter().flatten().map(|f| f.data.len()).sum();
    let (delivered, psnr) = decodable(&out, frames, width);
    let (p50, p95) = percentiles(times);
    let (cpu_p50, cpu_p95) = percentiles(cpu);
    Ours {
        p50,
        p95,
        cpu_p50,
        cpu_p95,
        kept,
        delivered_fps: delivered as f64 / wall,
        kbps: bytes as f64 * 8.0 / wall / 1e3,
        psnr,
    }
}

/// How many of the measured frames libavcodec's (native) VP8 decoder
/// decodes, fed the whole stream in order as a browser would be.
fn decodable(frames: &[Option<EncodedFrame>], sources: &[Vec<u32>], width: u16) -> (usize, f64) {
    let codec = ff::decoder::find(ff::codec::Id::VP8).expect("a VP8 decoder");
    let mut dec = ff::codec::context::Context::new_with_codec(codec)
        .decoder()
        .video()
        .expect("open the VP8 decoder");
    let (mut decoded, mut psnr_sum) = (0, 0.0);
    let mut picture = ff::frame::Video::empty();
    for (f, frame) in frames.iter().enumerate() {
        let Some(frame) = frame else { continue };
        if dec.send_packet(&ff::Packet::copy(&frame.data)).is_err() {
            continue;
        }
        while dec.receive_frame(&mut picture).is_ok() {
            if f >= WARM_UP {
                decoded += 1;
                psnr_sum += luma_psnr(&picture, &sources[f], usize::from(width));
            }
        }
    }
    (decoded, psnr_sum / decoded.max(1) as f64)
}

/// PSNR of a decoded picture's luma against the source's BT.601
/// limited-range luma, in dB (capped at 99 for an exact match).
fn luma_psnr(picture: &ff::frame::Video, source: &[u32], width: usize) -> f64 {
    let (stride, luma) = (picture.stride(0), picture.data(0));
    let mut sse = 0f64;
    for (i, &p) in source.iter().enumerate() {
        let (x, y) = (i % width, i / width);
        let [r, g, b] = [(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff].map(f64::from);
        let want = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
        let diff = f64::from(luma[y * stride + x]) - want;
        sse += diff * diff;
    }
    let mse = sse / source.len() as f64;
    if mse <= 1e-10 {
        99.0
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

struct Cli {
    p50: f64,
    p95: f64,
    kept: usize,
}

/// The ffmpeg command line for `width`×`height` frames with our options.
fn ffmpeg_command(settings: &VideoSettings, width: u16, height: u16) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr0",
        "-s",
        &format!("{width}x{height}"),
        "-framerate",
        &settings.max_fps.to_string(),
        "-i",
        "pipe:0",
        "-c:v",
        "libvpx",
        "-pix_fmt",
        "yuv420p",
    ]
    .map(str::to_owned)
    .to_vec();
    for (key, value) in libvpx_options(settings, width, height) {
        args.push(format!("-{key}"));
        args.push(value);
    }
    args.extend(
        [
            "-force_key_frames",
            &format!("expr:eq(n,{})", WARM_UP + FORCED_KEY_AT),
            "-flush_packets",
            "1",
            "-f",
            "ivf",
            "pipe:1",
        ]
        .map(str::to_owned),
    );
    args
}

/// The ffmpeg CLI over `frames`, paced at `max_fps`.
fn run_ffmpeg(settings: VideoSettings, width: u16, height: u16, frames: &[Vec<u32>]) -> Cli {
    let mut child = Command::new("ffmpeg")
        .args(ffmpeg_command(&settings, width, height))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ffmpeg");
    let mut stdout = child.stdout.take().expect("ffmpeg's stdout");
    // The reader notes when each packet (by its frame number) arrives.
    let reader = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let mut header = [0u8; 32];
        if stdout.read_exact(&mut header).is_err() {
            return arrivals;
        }
        let mut frame_header = [0u8; 12];
        let mut data = Vec::new();
        while stdout.read_exact(&mut frame_header).is_ok() {
            let size = u32::from_le_bytes(frame_header[..4].try_into().unwrap()) as usize;
            let pts = u64::from_le_bytes(frame_header[4..].try_into().unwrap());
            data.resize(size, 0);
            if stdout.read_exact(&mut data).is_err() {
                break;
            }
            arrivals.push((pts as usize, Instant::now()));
        }
        arrivals
    });
    let mut stdin = child.stdin.take().expect("ffmpeg's stdin");
    let interval = Duration::from_secs(1) / settings.max_fps.max(1);
    let mut written = Vec::with_capacity(frames.len());
    let mut slot = Instant::now();
    for pixels in frames {
        slot = pace(slot, interval);
        written.push(Instant::now());
        stdin
            .write_all(bytemuck::cast_slice(pixels))
            .expect("write a frame to ffmpeg");
    }
    drop(stdin);
    let arrivals = reader.join().expect("the IVF reader");
    let status = child.wait().expect("ffmpeg ran");
    assert!(status.success(), "ffmpeg failed: {status}");
    let measured: Vec<_> = arrivals
        .iter()
        .filter(|(f, _)| (WARM_UP..WARM_UP + MEASURED).contains(f))
        .map(|&(f, at)| at.saturating_duration_since(written[f]))
        .collect();
    let kept = measured.len();
    let (p50, p95) = percentiles(measured);
    Cli { p50, p95, kept }
}

/// Times the BGRA → I420 conversion alone (the encoders' call and
/// parameters), into reused planes.
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
    let (p50, p95) = percentiles(times);
    println!("{width}x{height} BGRA->I420 conversion alone: p50 {p50:.2} ms, p95 {p95:.2} ms");
}

/// `threads` threads spinning until dropped: the "load 2" of the issue.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn new(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() {
    let started = Instant::now();
    match Command::new("ffmpeg").arg("-version").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "the ffmpeg command line is not installed; the bench compares against it. \
             Install it with `scripts/services.sh up` (Debian package ffmpeg) or \
             `apt-get install ffmpeg`"
        ),
    }
    ff::init().expect("libav");
    let settings = VideoSettings::default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loads: Vec<usize> = list("BENCH_LOADS", "0,2")
        .iter()
        .map(|l| l.parse().expect("BENCH_LOADS: numbers"))
        .collect();
    let sizes: Vec<(u16, u16)> = list("BENCH_SIZES", "720,1080")
        .iter()
        .map(|s| match s.as_str() {
            "720" => (1280, 720),
            "1080" => (1920, 1080),
            other => panic!("BENCH_SIZES: 720 or 1080, not {other}"),
        })
        .collect();
    let scene_filter = list("BENCH_SCENES", "");
    let scenes: Vec<Scene> = [Scene::SmallRect, Scene::MovingWindow, Scene::FullScreen]
        .into_iter()
        .filter(|s| scene_filter.is_empty() || scene_filter.iter().any(|f| s.name().contains(f)))
        .collect();

    println!("deskgate-media VP8 encode benchmark: ours beside the ffmpeg CLI on the same frames");
    println!(
        "machine: {cores} cores, load average (1 min) {} at start",
        load_average()
    );
    println!(
        "per scene: {WARM_UP} warm-up frames, {MEASURED} measured, paced at {} fps, keyframe forced at measured frame {FORCED_KEY_AT}",
        settings.max_fps
    );
    println!(
        "ours: encode() wall time incl. conversion (cpu: on-CPU time of the calling thread); delivered = measured frames that decode, per second"
    );
    println!(
        "ffmpeg CLI: write of the frame to stdin → its IVF packet on stdout (pipe + swscale + libvpx); frames it dropped have no time"
    );
    for &(width, height) in &sizes {
        let bitrate = settings.start_bitrate(width, height);
        println!(
            "{width}x{height}: default bitrate {:.2} Mbit/s (auto); ffmpeg {}",
            f64::from(bitrate) / 1e6,
            ffmpeg_command(&settings, width, height).join(" ")
        );
        run_conversion(width, height);
    }

    for &load in &loads {
        println!();
        let _load = (load > 0).then(|| Load::new(load));
        if load > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        println!(
            "== load {load} ({} busy threads; load average now {})",
            load,
            load_average()
        );
        for &(width, height) in &sizes {
            for &scene in &scenes {
                let frames = scene.frames(usize::from(width), usize::from(height));
                let ours = run_ours(settings, width, height, &frames);
                let cli = run_ffmpeg(settings, width, height, &frames);
                let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
                let goal = if width == 1920 && scene.typical() {
                    let met = ours.p95 <= GOAL_P95_MS
                        && (scene != Scene::MovingWindow || ours.delivered_fps >= GOAL_FPS);
                    if met { " | goal met" } else { " | GOAL MISSED" }
                } else {
                    ""
                };
                println!(
                    "{width}x{height} {:<22} ours p50 {:5.2} p95 {:5.2} ms (cpu {:5.2}/{:5.2}) kept {:2}/{MEASURED} delivered {:4.1} fps {:5.0} kbit/s {:4.1} dB | ffmpeg CLI p50 {:5.2} p95 {:5.2} ms kept {:2}/{MEASURED} | ours/ffmpeg p50 {:4.2} p95 {:4.2}{goal}",
                    scene.name(),
                    ours.p50,
                    ours.p95,
                    ours.cpu_p50,
                    ours.cpu_p95,
                    ours.kept,
                    ours.delivered_fps,
                    ours.kbps,
                    ours.psnr,
                    cli.p50,
                    cli.p95,
                    cli.kept,
                    ratio(ours.p50, cli.p50),
                    ratio(ours.p95, cli.p95),
                );
            }
        }
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
