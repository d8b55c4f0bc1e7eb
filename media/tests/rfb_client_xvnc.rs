//! The RFB client against a real TigerVNC Xvnc on this host: VNC
//! authentication, the first full update, incremental updates after the
//! desktop changes (a solid colour, a two-colour pattern, a window that
//! appears and moves, checked against a fresh client's full update), and
//! pointer input that the X server sees. Xvnc prefers ZRLE, the first of the
//! client's encodings, and copies a moved window with CopyRect, so both are
//! decoded from a real server here.
//!
//! Needs the host tools that `make services` records in
//! `.deskgate/services.env` (DESKGATE_XVNC, DESKGATE_VNCPASSWD), plus
//! `xsetroot`, `xdotool` and `xmessage`, which draw on the desktop and read
//! the pointer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deskgate_media::authenticate;
use deskgate_media::framebuffer::Framebuffer;
use deskgate_media::rfb_client::{EncodingCounts, FrameUpdate, RfbClient, RfbClientError};
use tokio::net::TcpStream;

const WIDTH: u16 = 640;
const HEIGHT: u16 = 480;
const PASSWORD: &str = "dg-xvnc1";
/// Generous: Xvnc compiles its keymap with xkbcomp at start-up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `make services`, then `source .deskgate/services.env` \
             before `cargo test` (this test needs a real Xvnc and never skips)"
        )
    })
}

/// An Xvnc on a display and port of its own, killed on drop.
struct Xvnc {
    child: Child,
    display: String,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Xvnc {
    fn start() -> Self {
        let xvnc = required_env("DESKGATE_XVNC");
        let vncpasswd = required_env("DESKGATE_VNCPASSWD");
        // Spread parallel runs over display numbers; on a lost race for the
        // display or the port, try the next free one.
        let first = 40 + std::process::id() % 200;
        let mut last_log = String::new();
        for display_number in (first..first + 40).filter(|&n| display_is_free(n)).take(3) {
            let dir = tempfile::tempdir().unwrap();
            let password_file = dir.path().join("passwd");
            write_password_file(&vncpasswd, &password_file);
            let log = dir.path().join("xvnc.log");
            let port = free_port();
            let display = format!(":{display_number}");
            let child = Command::new(&xvnc)
                .arg(&display)
                .args(["-interface", "127.0.0.1", "-rfbport", &port.to_string()])
                .args(["-SecurityTypes", "VncAuth", "-PasswordFile"])
                .arg(&password_file)
                .args(["-geometry", &format!("{WIDTH}x{HEIGHT}"), "-depth", "24"])
                .args(["-nolisten", "tcp", "-desktop", "deskgate-test"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {xvnc}: {e}"));
            let mut server = Self {
                child,
                display,
                port,
                log,
                dir,
            };
            if server.wait_ready() {
                return server;
            }
            last_log = std::fs::read_to_string(&server.log).unwrap_or_default();
        }
        panic!("Xvnc did not come up within {START_TIMEOUT:?}; its last log:\n{last_log}");
    }

    /// Waits until the X display answers and the RFB port accepts; false if
    /// Xvnc exited or the time ran out.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let x_ready = Command::new("xdotool")
                .arg("getdisplaygeometry")
                .env("DISPLAY", &self.display)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if x_ready && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Paints the root window in one colour (`#rrggbb`).
    fn paint(&self, colour: &str) {
        self.x_command("xsetroot", &["-solid", colour]);
    }

    /// Tiles the root window with a two-colour bitmap (`pattern` says which
    /// pixels of a 16x16 tile are foreground).
    fn paint_pattern(&self, pattern: impl Fn(u16, u16) -> bool, fg: &str, bg: &str) {
        // XBM: rows of 2 bytes, leftmost pixel in the lowest bit. The values
        // go on their own line: Xmu's reader skips the rest of the `{` line.
        let bytes: Vec<String> = (0..16u16)
            .flat_map(|y| (0..2u16).map(move |half| (y, half)))
            .map(|(y, half)| {
                let byte = (0..8u16)
                    .filter(|bit| pattern(half * 8 + bit, y))
                    .fold(0u8, |byte, bit| byte | 1 << bit);
                format!("0x{byte:02x}")
            })
            .collect();
        let xbm = format!(
            "#define tile_width 16\n#define tile_height 16\n\
             static unsigned char tile_bits[] = {{\n{} }};\n",
            bytes.join(", ")
        );
        let path = self.dir.path().join("tile.xbm");
        std::fs::write(&path, xbm).unwrap();
        let path = path.to_str().unwrap();
        self.x_command("xsetroot", &["-bitmap", path, "-fg", fg, "-bg", bg]);
    }

    /// Opens an xmessage window at (`x`, `y`); returns it and its X window id.
    fn open_window(&self, x: u16, y: u16) -> (DesktopProgram, String) {
        let name = format!("deskgate-test-{}", std::process::id());
        let child = Command::new("xmessage")
            .args(["-geometry", &format!("+{x}+{y}"), "-name", &name])
            .arg("deskgate: a window to move (CopyRect)")
            .env("DISPLAY", &self.display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run xmessage: {e}"));
        let program = DesktopProgram(child);
        let id = self.x_command("xdotool", &["search", "--sync", "--name", &name]);
        let id = id
            .lines()
            .next()
            .expect("xdotool found no window")
            .to_owned();
        (program, id)
    }

    /// The pointer position the X server reports.
    fn pointer(&self) -> (u16, u16) {
        let out = self.x_command("xdotool", &["getmouselocation"]);
        // "x:123 y:234 screen:0 window:567"
        let field = |name: &str| {
            out.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unexpected xdotool output {out:?}"))
        };
        (field("x:"), field("y:"))
    }

    fn x_command(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("Xvnc {} log:\n{log}", self.display);
        }
    }
}

/// `vncpasswd -f` turns the password on stdin into Xvnc's password file,
/// so the password never appears on a command line.
fn write_password_file(vncpasswd: &str, path: &Path) {
    use std::io::Write;
    let mut child = Command::new(vncpasswd)
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {vncpasswd}: {e}"));
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && !output.stdout.is_empty(),
        "vncpasswd failed"
    );
    std::fs::write(path, output.stdout).unwrap();
}

fn display_is_free(number: u32) -> bool {
    !Path::new(&format!("/tmp/.X{number}-lock")).exists()
        && !Path::new(&format!("/tmp/.X11-unix/X{number}")).exists()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A program run on the desktop (a window), killed on drop.
struct DesktopProgram(Child);

impl Drop for DesktopProgram {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect_client(xvnc: &Xvnc) -> RfbClient<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", xvnc.port)).await.unwrap();
    let stream = authenticate(stream, PASSWORD.as_bytes()).await.unwrap();
    RfbClient::connect(stream).await.unwrap()
}

/// The desktop as a second, fresh client sees it in one full update.
async fn reference_framebuffer(xvnc: &Xvnc) -> Framebuffer {
    let mut reference = connect_client(xvnc).await;
    reference.request_update(false).await.unwrap();
    next_update(&mut reference).await;
    reference.framebuffer().clone()
}

/// Requests incremental updates until `client` shows the same pixels as a
/// fresh client does; returns the encodings it took.
async fn catch_up(client: &mut RfbClient<TcpStream>, xvnc: &Xvnc) -> EncodingCounts {
    // Let the X clients finish drawing before taking the reference.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reference = reference_framebuffer(xvnc).await;
    let before = client.encodings_seen();
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    loop {
        client.request_update(true).await.unwrap();
        next_update(client).await;
        let differing = client
            .framebuffer()
            .pixels()
            .iter()
            .zip(reference.pixels())
            .filter(|(a, b)| a != b)
            .count();
        if differing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{differing} pixels differ from a fresh client's full update"
        );
    }
    let after = client.encodings_seen();
    EncodingCounts {
        raw: after.raw - before.raw,
        copy_rect: after.copy_rect - before.copy_rect,
        zrle: after.zrle - before.zrle,
        desktop_size: after.desktop_size - before.desktop_size,
    }
}

fn parse_colour(hex: &str) -> u32 {
    u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap()
}

/// Pixels of `framebuffer` not equal to `colour`.
fn pixels_not(framebuffer: &Framebuffer, colour: u32) -> usize {
    framebuffer
        .pixels()
        .iter()
        .filter(|&&p| p != colour)
        .count()
}

/// The next update that changes pixels. Xvnc answers a full update request
/// with an update that only tells the screen layout (ExtendedDesktopSize)
/// and sends the pixels it owes on the next request.
async fn next_update(client: &mut RfbClient<TcpStream>) -> FrameUpdate {
    loop {
        let update = tokio::time::timeout(UPDATE_TIMEOUT, client.next_update())
            .await
            .expect("no update from Xvnc in time")
            .unwrap_or_else(|e: RfbClientError| panic!("reading an update: {e}"));
        if !update.changed.is_empty() || update.resized {
            return update;
        }
        assert!(
            client.screen_id().is_some(),
            "an update without pixels is the layout: {update:?}"
        );
        client.request_update(true).await.unwrap();
    }
}

#[tokio::test]
async fn the_client_mirrors_a_real_xvnc_desktop_and_moves_its_pointer() {
    let xvnc = Xvnc::start();
    let first = "#2050e0";
    xvnc.paint(first);

    let mut client = connect_client(&xvnc).await;
    assert_eq!(client.desktop_name(), "deskgate-test");
    assert_eq!(
        (client.framebuffer().width(), client.framebuffer().height()),
        (WIDTH, HEIGHT)
    );

    // The first full update covers the whole desktop, all in the first colour.
    client.request_update(false).await.unwrap();
    let update = next_update(&mut client).await;
    eprintln!("full update: {:?}", update.encodings);
    let framebuffer = client.framebuffer();
    assert_eq!(
        pixels_not(framebuffer, parse_colour(first)),
        0,
        "pixel (0,0) is {:06x}",
        framebuffer.pixel(0, 0).unwrap()
    );
    client.take_damage();

    // Repaint; incremental updates bring the change.
    let second = "#e08020";
    xvnc.paint(second);
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    loop {
        client.request_update(true).await.unwrap();
        let update = next_update(&mut client).await;
        eprintln!(
            "incremental update: {:?} {:?}",
            update.encodings, update.changed
        );
        if pixels_not(client.framebuffer(), parse_colour(second)) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the repaint never arrived completely"
        );
    }
    assert!(!client.take_damage().is_empty());

    // A two-colour pattern: tiles that are not solid (ZRLE palettes or runs).
    let (fg, bg) = ("#10c040", "#301020");
    let in_pattern = |x: u16, y: u16| (x / 3 + y) % 5 < 2 || x == y;
    xvnc.paint_pattern(in_pattern, fg, bg);
    let expected = |x: u16, y: u16| {
        if in_pattern(x % 16, y % 16) {
            parse_colour(fg)
        } else {
            parse_colour(bg)
        }
    };
    let wrong_pixels = |framebuffer: &Framebuffer| {
        (0..HEIGHT)
            .flat_map(|y| (0..WIDTH).map(move |x| (x, y)))
            .filter(|&(x, y)| framebuffer.pixel(x, y) != Some(expected(x, y)))
            .count()
    };
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    loop {
        client.request_update(true).await.unwrap();
        let update = next_update(&mut client).await;
        eprintln!("pattern update: {:?}", update.encodings);
        let wrong = wrong_pixels(client.framebuffer());
        if wrong == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{wrong} pixels still differ from the pattern"
        );
    }

    // A window appears, then moves: the server may copy its pixels
    // (CopyRect) instead of resending them. Either way the client must end up
    // with what a fresh client sees.
    let (_window, window_id) = xvnc.open_window(40, 50);
    let appeared = catch_up(&mut client, &xvnc).await;
    eprintln!("window appeared: {appeared:?}");
    xvnc.x_command("xdotool", &["windowmove", &window_id, "260", "200"]);
    let moved = catch_up(&mut client, &xvnc).await;
    eprintln!("window moved: {moved:?}");
    assert!(
        moved.copy_rect > 0,
        "Xvnc did not copy the moved window: {moved:?}"
    );

    // Pointer input reaches the X server.
    client.send_pointer(123, 234, 0).await.unwrap();
    let deadline = Instant::now() + UPDATE_TIMEOUT;
    while xvnc.pointer() != (123, 234) {
        assert!(
            Instant::now() < deadline,
            "the pointer is at {:?}",
            xvnc.pointer()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = client.encodings_seen();
    eprintln!("encodings used by Xvnc: {seen:?}");
    assert!(seen.zrle > 0, "Xvnc never used ZRLE: {seen:?}");
}
