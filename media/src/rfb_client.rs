//! An RFB client that keeps a copy of the desktop in a [`Framebuffer`]: the
//! source of the WebRTC path's video.
//!
//! It starts where [`crate::rfb::authenticate`] leaves the stream (just before
//! ClientInit), asks for one fixed pixel format (32 bits, depth 24,
//! little-endian true colour, `0x00RRGGBB`, the framebuffer's own layout) and
//! for the encodings ZRLE, CopyRect and Raw plus the DesktopSize and
//! ExtendedDesktopSize pseudo-encodings, and applies the server's updates to
//! the framebuffer. It passes the desktop's clipboard on (ServerCutText, at
//! most [`MAX_CLIPBOARD_BYTES`]) and builds the messages that set the
//! desktop's clipboard and size (ClientCutText, SetDesktopSize).
//!
//! Everything the server sends is checked before memory is spent on it:
//! sizes over [`crate::framebuffer::MAX_PIXELS`] and rectangles outside the
//! framebuffer are errors, and ZRLE data may not inflate to more than its
//! rectangle can hold.
//!
//! Why one long file: the client is one protocol state machine (set-up,
//! messages, encodings), and over 40 % of the file is its unit tests, which
//! build server byte streams from the same private constants.

use std::fmt;
use std::io;

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::framebuffer::{Framebuffer, FramebufferError, Rect};

/// Raw encoding: pixels as they are.
pub const ENCODING_RAW: i32 = 0;
/// CopyRect encoding: a copy from elsewhere in the framebuffer.
pub const ENCODING_COPY_RECT: i32 = 1;
/// ZRLE encoding: zlib-compressed run-length-encoded 64×64 tiles.
pub const ENCODING_ZRLE: i32 = 16;
/// DesktopSize pseudo-encoding: the framebuffer changed size.
pub const ENCODING_DESKTOP_SIZE: i32 = -223;
/// ExtendedDesktopSize pseudo-encoding: the size and the screen layout; a
/// server sends SetDesktopSize's answers with it.
pub const ENCODING_EXTENDED_DESKTOP_SIZE: i32 = -308;
/// Longest clipboard text passed on either way, in bytes of Latin-1 (RFB's
/// clipboard charset); a longer desktop clipboard is read and not passed on.
pub const MAX_CLIPBOARD_BYTES: usize = 64 * 1024;

/// The encodings asked for, most preferred first (servers pick the first
/// they support for ordinary updates and use CopyRect for moves).
const ENCODINGS: [i32; 5] = [
    ENCODING_ZRLE,
    ENCODING_COPY_RECT,
    ENCODING_RAW,
    ENCODING_EXTENDED_DESKTOP_SIZE,
    ENCODING_DESKTOP_SIZE,
];

/// The pixel format asked for: 32 bpp, depth 24, little-endian, true colour,
/// 255 per channel, red/green/blue shifts 16/8/0 (RFC 6143 §7.4).
const PIXEL_FORMAT: [u8; 16] = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];

/// Bytes of the desktop name kept; the rest is read and dropped.
const MAX_NAME_BYTES: u32 = 4096;
/// Longest clipboard text the client reads (and drops) before giving up.
const MAX_CUT_TEXT_BYTES: u32 = 16 * 1024 * 1024;
/// Bytes read from the socket at a time for Raw and ZRLE payloads.
const READ_CHUNK: usize = 64 * 1024;
/// ZRLE's tile edge.
const ZRLE_TILE: u16 = 64;
/// The largest ZRLE palette (palette RLE, subencoding 255).
const ZRLE_MAX_PALETTE: usize = 127;
/// Bytes of one ZRLE CPIXEL for the pixel format asked for.
const CPIXEL_BYTES: usize = 3;

/// The RFB PointerEvent message: the pointer at (`x`, `y`) with `buttons`
/// held (bit 0 left, bit 1 middle, bit 2 right, bits 3/4 the wheel).
pub fn pointer_event(x: u16, y: u16, buttons: u8) -> [u8; 6] {
    let [x_hi, x_lo] = x.to_be_bytes();
    let [y_hi, y_lo] = y.to_be_bytes();
    [5, buttons, x_hi, x_lo, y_hi, y_lo]
}

/// The RFB KeyEvent message: `keysym` (an X11 keysym) pressed or released.
pub fn key_event(keysym: u32, down: bool) -> [u8; 8] {
    let mut message = [4, u8::from(down), 0, 0, 0, 0, 0, 0];
    message[4..8].copy_from_slice(&keysym.to_be_bytes());
    message
}

/// The RFB ClientCutText message: `text` for the desktop's clipboard, in
/// Latin-1 (characters beyond it become `?`).
pub fn client_cut_text(text: &str) -> Vec<u8> {
    let latin1: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect();
    let mut message = Vec::with_capacity(8 + latin1.len());
    message.extend_from_slice(&[6, 0, 0, 0]);
    message.extend_from_slice(&(latin1.len() as u32).to_be_bytes());
    message.extend_from_slice(&latin1);
    message
}

/// The RFB SetDesktopSize message (ExtendedDesktopSize): one screen,
/// `screen_id` as the server named it, `width` × `height` at the origin.
pub fn set_desktop_size(width: u16, height: u16, screen_id: u32) -> [u8; 24] {
    let mut message = [0u8; 24];
    message[0] = 251;
    message[2..4].copy_from_slice(&width.to_be_bytes());
    message[4..6].copy_from_slice(&height.to_be_bytes());
    message[6] = 1; // screens
    message[8..12].copy_from_slice(&screen_id.to_be_bytes());
    // x, y = 0; then the screen's own size; flags = 0.
    message[16..18].copy_from_slice(&width.to_be_bytes());
    message[18..20].copy_from_slice(&height.to_be_bytes());
    message
}

/// What went wrong talking to the desktop.
#[derive(Debug, thiserror::Error)]
pub enum RfbClientError {
    /// The connection failed or closed early.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The server's sizes or rectangles do not fit the framebuffer.
    #[error(transparent)]
    Framebuffer(#[from] FramebufferError),
    /// The server sent a colour map although true colour was asked for.
    #[error("the server sent a colour map; true colour was asked for")]
    ColourMap,
    /// The server sent a message type the client does not know.
    #[error("server message type {0} is not supported")]
    UnknownMessage(u8),
    /// The server used an encoding the client did not ask for.
    #[error("the server used encoding {0}, which was not asked for")]
    UnsupportedEncoding(i32),
    /// The server's clipboard text is longer than the client reads.
    #[error("clipboard text of {0} bytes is over the limit of {MAX_CUT_TEXT_BYTES}")]
    CutTextTooLong(u32),
    /// The ZRLE zlib stream is corrupt.
    #[error("ZRLE zlib stream: {0}")]
    Zlib(#[from] flate2::DecompressError),
    /// ZRLE data that cannot describe the rectangle it came with.
    #[error("invalid ZRLE data: {0}")]
    InvalidZrle(&'static str),
    /// A ZRLE tile with a subencoding RFC 6143 §7.7.6 leaves unused.
    #[error("ZRLE subencoding {0} is not defined")]
    UnknownZrleSubencoding(u8),
}

/// How many rectangles arrived in each encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodingCounts {
    /// Raw rectangles.
    pub raw: u64,
    /// CopyRect rectangles.
    pub copy_rect: u64,
    /// ZRLE rectangles.
    pub zrle: u64,
    /// DesktopSize changes.
    pub desktop_size: u64,
}

impl EncodingCounts {
    fn add(&mut self, other: &Self) {
        self.raw += other.raw;
        self.copy_rect += other.copy_rect;
        self.zrle += other.zrle;
        self.desktop_size += other.desktop_size;
    }
}

/// One message from the desktop that matters to a viewer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// A FramebufferUpdate, applied.
    Update(FrameUpdate),
    /// The desktop's clipboard text (ServerCutText, Latin-1 decoded).
    CutText(String),
}

/// What one FramebufferUpdate changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameUpdate {
    /// The rectangles written, in the order received; after a resize the
    /// whole new framebuffer is among them.
    pub changed: Vec<Rect>,
    /// Whether the framebuffer changed size.
    pub resized: bool,
    /// The rectangles of this update by encoding.
    pub encodings: EncodingCounts,
}

/// An RFB client keeping a [`Framebuffer`] of the desktop (see the module docs).
///
/// Reads are not cancel-safe: a [`next_update`](Self::next_update) dropped
/// half-way (by a timeout, say) leaves the stream mid-message, and the client
/// must then be dropped too.
pub struct RfbClient<S> {
    stream: BufReader<S>,
    framebuffer: Framebuffer,
    desktop_name: String,
    /// One zlib stream for the whole connection: ZRLE rectangles continue
    /// the stream of the ones before.
    zlib: Decompress,
    /// The current ZRLE rectangle, inflated; kept to reuse its allocation.
    inflated: Vec<u8>,
    /// Socket bytes not yet decoded; kept to reuse its allocation.
    chunk: Vec<u8>,
    encodings_seen: EncodingCounts,
    /// The first screen's id from ExtendedDesktopSize (what SetDesktopSize
    /// must name); `None` until the server has sent a layout.
    screen_id: Option<u32>,
}

impl<S> fmt::Debug for RfbClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RfbClient")
            .field("desktop_name", &self.desktop_name)
            .field("width", &self.framebuffer.width())
            .field("height", &self.framebuffer.height())
            .field("encodings_seen", &self.encodings_seen)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RfbClient<S> {
    /// Starts the session on an authenticated stream: sends ClientInit
    /// (shared, so other viewers stay connected), reads ServerInit, and asks
    /// for the client's pixel format and encodings. No update is requested
    /// yet; see [`request_update`](Self::request_update).
    pub async fn connect(stream: S) -> Result<Self, RfbClientError> {
        let mut stream = BufReader::with_capacity(READ_CHUNK, stream);
        stream.write_all(&[1]).await?;
        stream.flush().await?;

        let width = stream.read_u16().await?;
        let height = stream.read_u16().await?;
        // The server's own pixel format is replaced by ours just below.
        let mut server_format = [0u8; 16];
        stream.read_exact(&mut server_format).await?;
        let name_len = stream.read_u32().await?;
        let mut name = vec![0u8; name_len.min(MAX_NAME_BYTES) as usize];
        stream.read_exact(&mut name).await?;
        discard(
            &mut stream,
            u64::from(name_len.saturating_sub(MAX_NAME_BYTES)),
        )
        .await?;
        let framebuffer = Framebuffer::new(width, height)?;

        let mut setup = Vec::with_capacity(20 + 4 + 4 * ENCODINGS.len());
        setup.extend_from_slice(&[0, 0, 0, 0]);
        setup.extend_from_slice(&PIXEL_FORMAT);
        setup.extend_from_slice(&[2, 0]);
        setup.extend_from_slice(&(ENCODINGS.len() as u16).to_be_bytes());
        for encoding in ENCODINGS {
            setup.extend_from_slice(&encoding.to_be_bytes());
        }
        stream.write_all(&setup).await?;
        stream.flush().await?;

        Ok(Self {
            stream,
            framebuffer,
            desktop_name: String::from_utf8_lossy(&name).into_owned(),
            zlib: Decompress::new(true),
            inflated: Vec::new(),
            chunk: vec![0; READ_CHUNK],
            encodings_seen: EncodingCounts::default(),
            screen_id: None,
        })
    }

    /// The id of the desktop's first screen, once the server has told it
    /// (ExtendedDesktopSize): a server that never does cannot be resized.
    pub fn screen_id(&self) -> Option<u32> {
        self.screen_id
    }

    /// The desktop's name from ServerInit (at most 4 KiB of it).
    pub fn desktop_name(&self) -> &str {
        &self.desktop_name
    }

    /// The desktop as last updated.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.framebuffer
    }

    /// The framebuffer's damage since the last call (see
    /// [`Framebuffer::take_damage`]).
    pub fn take_damage(&mut self) -> Vec<Rect> {
        self.framebuffer.take_damage()
    }

    /// Rectangles received so far, by encoding.
    pub fn encodings_seen(&self) -> EncodingCounts {
        self.encodings_seen
    }

    /// Asks for an update of the whole framebuffer: only what changed if
    /// `incremental`, otherwise all of it.
    pub async fn request_update(&mut self, incremental: bool) -> Result<(), RfbClientError> {
        let mut message = [0u8; 10];
        message[0] = 3;
        message[1] = u8::from(incremental);
        message[6..8].copy_from_slice(&self.framebuffer.width().to_be_bytes());
        message[8..10].copy_from_slice(&self.framebuffer.height().to_be_bytes());
        self.send(&message).await
    }

    /// Moves the pointer to (`x`, `y`) with `buttons` held (bit 0 left,
    /// bit 1 middle, bit 2 right, bits 3/4 the wheel).
    pub async fn send_pointer(
        &mut self,
        x: u16,
        y: u16,
        buttons: u8,
    ) -> Result<(), RfbClientError> {
        self.send(&pointer_event(x, y, buttons)).await
    }

    /// Presses (`down`) or releases the key `keysym` (an X11 keysym).
    pub async fn send_key(&mut self, keysym: u32, down: bool) -> Result<(), RfbClientError> {
        self.send(&key_event(keysym, down)).await
    }

    /// Reads server messages until a FramebufferUpdate has been applied and
    /// returns what it changed. Bells and clipboard text are read and
    /// dropped on the way.
    pub async fn next_update(&mut self) -> Result<FrameUpdate, RfbClientError> {
        loop {
            if let ServerMessage::Update(update) = self.next_message().await? {
                return Ok(update);
            }
        }
    }

    /// Reads server messages until an update has been applied or clipboard
    /// text has come, and returns it. Bells are dropped; clipboard text over
    /// [`MAX_CLIPBOARD_BYTES`] is read and dropped.
    pub async fn next_message(&mut self) -> Result<ServerMessage, RfbClientError> {
        loop {
            match self.stream.read_u8().await? {
                0 => {
                    let update = self.read_framebuffer_update().await?;
                    self.encodings_seen.add(&update.encodings);
                    return Ok(ServerMessage::Update(update));
                }
                1 => return Err(RfbClientError::ColourMap),
                2 => {} // Bell: nothing to show in a video.
                3 => {
                    let mut padding = [0u8; 3];
                    self.stream.read_exact(&mut padding).await?;
                    let len = self.stream.read_u32().await?;
                    if len > MAX_CUT_TEXT_BYTES {
                        return Err(RfbClientError::CutTextTooLong(len));
                    }
                    if len as usize > MAX_CLIPBOARD_BYTES {
                        tracing::debug!(bytes = len, "desktop clipboard too long to pass on");
                        discard(&mut self.stream, u64::from(len)).await?;
                        continue;
                    }
                    let mut latin1 = vec![0u8; len as usize];
                    self.stream.read_exact(&mut latin1).await?;
                    let text = latin1.iter().map(|&b| char::from(b)).collect();
                    return Ok(ServerMessage::CutText(text));
                }
                other => return Err(RfbClientError::UnknownMessage(other)),
            }
        }
    }

    async fn send(&mut self, message: &[u8]) -> Result<(), RfbClientError> {
        self.stream.write_all(message).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_framebuffer_update(&mut self) -> Result<FrameUpdate, RfbClientError> {
        let _padding = self.stream.read_u8().await?;
        let count = self.stream.read_u16().await?;
        let mut update = FrameUpdate::default();
        for _ in 0..count {
            let mut header = [0u8; 12];
            self.stream.read_exact(&mut header).await?;
            let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
            let rect = Rect::new(be16(0), be16(2), be16(4), be16(6));
            let encoding = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            match encoding {
                ENCODING_RAW => {
                    self.framebuffer.check_rect(rect)?;
                    self.read_raw(rect).await?;
                    update.encodings.raw += 1;
                }
                ENCODING_COPY_RECT => {
                    let src_x = self.stream.read_u16().await?;
                    let src_y = self.stream.read_u16().await?;
                    self.framebuffer.copy_rect(src_x, src_y, rect)?;
                    update.encodings.copy_rect += 1;
                }
                ENCODING_ZRLE => {
                    self.framebuffer.check_rect(rect)?;
                    self.read_zrle(rect).await?;
                    update.encodings.zrle += 1;
                }
                ENCODING_DESKTOP_SIZE => {
                    self.framebuffer.resize(rect.width, rect.height)?;
                    update.resized = true;
                    update.encodings.desktop_size += 1;
                    update.changed.push(self.framebuffer.bounds());
                    continue;
                }
                ENCODING_EXTENDED_DESKTOP_SIZE => {
                    self.read_screens().await?;
                    // Also an answer to a refused SetDesktopSize, with the
                    // size unchanged: only a new size is a resize.
                    if (rect.width, rect.height)
                        != (self.framebuffer.width(), self.framebuffer.height())
                    {
                        self.framebuffer.resize(rect.width, rect.height)?;
                        update.resized = true;
                        update.changed.push(self.framebuffer.bounds());
                    }
                    update.encodings.desktop_size += 1;
                    continue;
                }
                other => return Err(RfbClientError::UnsupportedEncoding(other)),
            }
            update.changed.push(rect);
        }
        Ok(update)
    }

    /// An ExtendedDesktopSize layout: the screen count (at most 255, so at
    /// most 4 KiB), then 16 bytes per screen (id, x, y, width, height,
    /// flags); keeps the first screen's id.
    async fn read_screens(&mut self) -> Result<(), RfbClientError> {
        let count = self.stream.read_u8().await?;
        let mut padding = [0u8; 3];
        self.stream.read_exact(&mut padding).await?;
        for index in 0..count {
            let mut screen = [0u8; 16];
            self.stream.read_exact(&mut screen).await?;
            if index == 0 {
                self.screen_id = Some(u32::from_be_bytes([
                    screen[0], screen[1], screen[2], screen[3],
                ]));
            }
        }
        Ok(())
    }

    /// Raw: `rect` as 4-byte little-endian pixels, read a few rows at a time.
    async fn read_raw(&mut self, rect: Rect) -> Result<(), RfbClientError> {
        if rect.is_empty() {
            return Ok(());
        }
        let row_bytes = usize::from(rect.width) * 4;
        let rows_per_read = (READ_CHUNK / row_bytes).max(1);
        let mut pixels = Vec::with_capacity(rows_per_read * usize::from(rect.width));
        let mut row = 0;
        while row < rect.height {
            let rows = (rect.height - row).min(rows_per_read as u16);
            let bytes = usize::from(rows) * row_bytes;
            if self.chunk.len() < bytes {
                self.chunk.resize(bytes, 0);
            }
            self.stream.read_exact(&mut self.chunk[..bytes]).await?;
            pixels.clear();
            pixels.extend(
                self.chunk[..bytes]
                    .chunks_exact(4)
                    .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0])),
            );
            let band = Rect::new(rect.x, rect.y + row, rect.width, rows);
            self.framebuffer.put_rows_undamaged(band, &pixels)?;
            row += rows;
        }
        self.framebuffer.add_damage(rect);
        Ok(())
    }

    /// ZRLE: a length, then that much of the connection's zlib stream, which
    /// inflates to the rectangle's tiles.
    async fn read_zrle(&mut self, rect: Rect) -> Result<(), RfbClientError> {
        let limit = zrle_max_inflated(rect);
        let compressed = self.stream.read_u32().await? as usize;
        // zlib's worst case is stored blocks (5 bytes per 64 KiB) plus flush
        // markers; a server sending much more than that is not compressing.
        if compressed > limit + limit / 8 + READ_CHUNK {
            return Err(RfbClientError::InvalidZrle(
                "compressed length exceeds what the rectangle can need",
            ));
        }
        self.inflated.clear();
        let mut remaining = compressed;
        while remaining > 0 {
            let n = remaining.min(self.chunk.len());
            self.stream.read_exact(&mut self.chunk[..n]).await?;
            inflate(&mut self.zlib, &self.chunk[..n], &mut self.inflated, limit)?;
            remaining -= n;
        }
        decode_zrle(&self.inflated, rect, &mut self.framebuffer)?;
        self.framebuffer.add_damage(rect);
        Ok(())
    }
}

/// Reads and drops `len` bytes.
async fn discard<R: AsyncRead + Unpin>(stream: &mut R, len: u64) -> Result<(), RfbClientError> {
    let dropped = tokio::io::copy(&mut stream.take(len), &mut tokio::io::sink()).await?;
    if dropped < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

/// The most bytes a ZRLE rectangle's tiles can take: per tile a subencoding
/// byte and the largest palette, then at most 4 bytes a pixel (plain RLE
/// with runs of one; raw is 3).
fn zrle_max_inflated(rect: Rect) -> usize {
    let tiles = usize::from(rect.width).div_ceil(usize::from(ZRLE_TILE))
        * usize::from(rect.height).div_ceil(usize::from(ZRLE_TILE));
    tiles * (1 + ZRLE_MAX_PALETTE * CPIXEL_BYTES) + 4 * rect.area()
}

/// Feeds `input` to the zlib stream, appending what it inflates to `out`;
/// more than `limit` bytes in `out` is an error.
fn inflate(
    zlib: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), RfbClientError> {
    loop {
        if out.len() == out.capacity() {
            out.reserve(READ_CHUNK);
        }
        let (in_before, out_before) = (zlib.total_in(), zlib.total_out());
        let status = zlib.decompress_vec(input, out, FlushDecompress::None)?;
        let consumed = (zlib.total_in() - in_before) as usize;
        let produced = (zlib.total_out() - out_before) as usize;
        input = &input[consumed..];
        if out.len() > limit {
            return Err(RfbClientError::InvalidZrle(
                "inflates to more than the rectangle can hold",
            ));
        }
        if status == Status::StreamEnd {
            // The stream must outlive every rectangle of the connection.
            return Err(RfbClientError::InvalidZrle(
                "the server ended the zlib stream",
            ));
        }
        // Room left in `out` means zlib holds no more output for this input.
        let drained = out.len() < out.capacity();
        if input.is_empty() && drained {
            return Ok(());
        }
        if consumed == 0 && produced == 0 && drained {
            return Err(RfbClientError::InvalidZrle(
                "the zlib stream stopped making progress",
            ));
        }
    }
}

/// Reads inflated ZRLE bytes front to back.
struct ZrleReader<'a> {
    data: &'a [u8],
}

impl<'a> ZrleReader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], RfbClientError> {
        if self.data.len() < n {
            return Err(RfbClientError::InvalidZrle("data ends inside a tile"));
        }
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, RfbClientError> {
        Ok(self.bytes(1)?[0])
    }

    /// A CPIXEL: the three low bytes of a little-endian pixel (B, G, R).
    fn cpixel(&mut self) -> Result<u32, RfbClientError> {
        let p = self.bytes(CPIXEL_BYTES)?;
        Ok(u32::from_le_bytes([p[0], p[1], p[2], 0]))
    }

    fn palette(&mut self, size: usize) -> Result<Vec<u32>, RfbClientError> {
        (0..size).map(|_| self.cpixel()).collect()
    }

    /// A run length: bytes summed until one is not 255, plus one. Runs past
    /// the `room` left in the tile are errors (and stop the reading early).
    fn run_length(&mut self, room: usize) -> Result<usize, RfbClientError> {
        let mut len = 1;
        loop {
            let byte = self.u8()?;
            len += usize::from(byte);
            if len > room {
                return Err(RfbClientError::InvalidZrle(
                    "a run goes past the end of its tile",
                ));
            }
            if byte != 255 {
                return Ok(len);
            }
        }
    }
}

/// Decodes the inflated tiles of the ZRLE rectangle `rect` into the
/// framebuffer (without recording damage). Tiles are 64×64, left to right
/// then top to bottom, smaller at the right and bottom edges.
fn decode_zrle(
    data: &[u8],
    rect: Rect,
    framebuffer: &mut Framebuffer,
) -> Result<(), RfbClientError> {
    let mut reader = ZrleReader { data };
    let mut tile = vec![0u32; usize::from(ZRLE_TILE) * usize::from(ZRLE_TILE)];
    for tile_y in (0..rect.height).step_by(usize::from(ZRLE_TILE)) {
        for tile_x in (0..rect.width).step_by(usize::from(ZRLE_TILE)) {
            let width = (rect.width - tile_x).min(ZRLE_TILE);
            let height = (rect.height - tile_y).min(ZRLE_TILE);
            let pixels = &mut tile[..usize::from(width) * usize::from(height)];
            decode_tile(&mut reader, usize::from(width), pixels)?;
            let at = Rect::new(rect.x + tile_x, rect.y + tile_y, width, height);
            framebuffer.put_rows_undamaged(at, pixels)?;
        }
    }
    if !reader.data.is_empty() {
        return Err(RfbClientError::InvalidZrle(
            "bytes left over after the last tile",
        ));
    }
    Ok(())
}

/// Decodes one tile `width` pixels wide into `pixels` (row-major).
fn decode_tile(
    reader: &mut ZrleReader<'_>,
    width: usize,
    pixels: &mut [u32],
) -> Result<(), RfbClientError> {
    let count = pixels.len();
    match reader.u8()? {
        0 => {
            for pixel in pixels.iter_mut() {
                *pixel = reader.cpixel()?;
            }
        }
        1 => pixels.fill(reader.cpixel()?),
        size @ 2..=16 => {
            let palette = reader.palette(usize::from(size))?;
            let bits = match size {
                2 => 1,
                3 | 4 => 2,
                _ => 4,
            };
            let mask = (1u8 << bits) - 1;
            // Each row starts on a byte boundary; indices are packed from the top bit.
            let row_bytes = (width * bits).div_ceil(8);
            for row in pixels.chunks_exact_mut(width) {
                let packed = reader.bytes(row_bytes)?;
                for (x, pixel) in row.iter_mut().enumerate() {
                    let bit = x * bits;
                    let index = (packed[bit / 8] >> (8 - bits - bit % 8)) & mask;
                    *pixel =
                        *palette
                            .get(usize::from(index))
                            .ok_or(RfbClientError::InvalidZrle(
                                "a palette index past the palette",
                            ))?;
                }
            }
        }
        128 => {
            let mut filled = 0;
            while filled < count {
                let colour = reader.cpixel()?;
                let run = reader.run_length(count - filled)?;
                pixels[filled..filled + run].fill(colour);
                filled += run;
            }
        }
        sub @ 130..=255 => {
            let palette = reader.palette(usize::from(sub - 128))?;
            let mut filled = 0;
            while filled < count {
                let byte = reader.u8()?;
                let colour =
                    *palette
                        .get(usize::from(byte & 0x7f))
                        .ok_or(RfbClientError::InvalidZrle(
                            "a palette index past the palette",
                        ))?;
                // The top bit marks a run; without it the entry is one pixel.
                let run = if byte & 0x80 != 0 {
                    reader.run_length(count - filled)?
                } else {
                    1
                };
                pixels[filled..filled + run].fill(colour);
                filled += run;
            }
        }
        other => return Err(RfbClientError::UnknownZrleSubencoding(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::ZlibEncoder;
    use tokio::io::DuplexStream;

    use super::*;

    /// Big enough that a test's whole message fits before the client reads.
    const PIPE_BYTES: usize = 4 * 1024 * 1024;

    /// The three CPIXEL bytes of `0x00RRGGBB`: blue, green, red.
    fn cpixel(rgb: u32) -> [u8; 3] {
        let [b, g, r, _] = rgb.to_le_bytes();
        [b, g, r]
    }

    fn server_init(width: u16, height: u16, name: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&height.to_be_bytes());
        // The server's native format (16-bit here, to show it is not used).
        bytes.extend_from_slice(&[16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0]);
        bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
        bytes.extend_from_slice(name);
        bytes
    }

    /// A connected client on a `width` × `height` desktop; the server's end
    /// has already read the client's set-up messages and the damage of the
    /// new framebuffer is taken.
    async fn connected(width: u16, height: u16) -> (RfbClient<DuplexStream>, DuplexStream) {
        let (client, mut server) = tokio::io::duplex(PIPE_BYTES);
        server
            .write_all(&server_init(width, height, b"test"))
            .await
            .unwrap();
        let mut client = RfbClient::connect(client).await.unwrap();
        let mut setup = [0u8; 1 + 20 + 4 + 4 * ENCODINGS.len()];
        server.read_exact(&mut setup).await.unwrap();
        client.take_damage();
        (client, server)
    }

    /// A FramebufferUpdate message: each rect's header, then its payload.
    fn update(rects: &[(Rect, i32, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = vec![0, 0];
        bytes.extend_from_slice(&(rects.len() as u16).to_be_bytes());
        for (rect, encoding, payload) in rects {
            for field in [rect.x, rect.y, rect.width, rect.height] {
                bytes.extend_from_slice(&field.to_be_bytes());
            }
            bytes.extend_from_slice(&encoding.to_be_bytes());
            bytes.extend_from_slice(payload);
        }
        bytes
    }

    /// The server's side of the connection's one zlib stream.
    struct ZlibStream(ZlibEncoder<Vec<u8>>);

    impl ZlibStream {
        fn new() -> Self {
            Self(ZlibEncoder::new(Vec::new(), Compression::default()))
        }

        /// A ZRLE payload: `tiles` compressed and sync-flushed onto the
        /// stream, with its length in front, as servers send it.
        fn zrle(&mut self, tiles: &[u8]) -> Vec<u8> {
            self.0.write_all(tiles).unwrap();
            self.0.flush().unwrap();
            let compressed: Vec<u8> = self.0.get_mut().drain(..).collect();
            let mut payload = (compressed.len() as u32).to_be_bytes().to_vec();
            payload.extend_from_slice(&compressed);
            payload
        }
    }

    fn assert_pixels(
        framebuffer: &Framebuffer,
        area: Rect,
        expected: impl Fn(u16, u16) -> u32,
        what: &str,
    ) {
        for y in area.y..area.y + area.height {
            for x in area.x..area.x + area.width {
                let got = framebuffer.pixel(x, y).unwrap();
                let want = expected(x, y);
                assert_eq!(
                    got, want,
                    "{what}: pixel ({x},{y}) is {got:06x}, want {want:06x}"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_client_asks_for_its_pixel_format_and_encodings() {
        let (client, mut server) = tokio::io::duplex(PIPE_BYTES);
        server
            .write_all(&server_init(640, 480, b"deskgate"))
            .await
            .unwrap();
        let mut client = RfbClient::connect(client).await.unwrap();
        assert_eq!(client.desktop_name(), "deskgate");
        assert_eq!(
            (client.framebuffer().width(), client.framebuffer().height()),
            (640, 480)
        );

        client.request_update(false).await.unwrap();
        client.request_update(true).await.unwrap();
        client.send_pointer(300, 2, 0b101).await.unwrap();
        client.send_key(0xff0d, true).await.unwrap();
        drop(client);
        let mut sent = Vec::new();
        server.read_to_end(&mut sent).await.unwrap();
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &[1][..], // ClientInit, shared
            // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour,
            // max 255 each, shifts 16/8/0.
            &[0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0],
            // SetEncodings: ZRLE, CopyRect, Raw, ExtendedDesktopSize
            // (-308), DesktopSize (-223).
            &[2, 0, 0, 5, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xfe, 0xcc, 0xff, 0xff, 0xff, 0x21],
            &[3, 0, 0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0], // full update, 640x480
            &[3, 1, 0, 0, 0, 0, 0x02, 0x80, 0x01, 0xe0], // incremental
            &[5, 0b101, 0x01, 0x2c, 0, 2],               // pointer
            &[4, 1, 0, 0, 0, 0, 0xff, 0x0d],             // Return pressed
        ]
        .concat();
        assert_eq!(sent, expected);
    }

    #[tokio::test]
    async fn absurd_desktop_sizes_are_refused() {
        let (client, mut server) = tokio::io::duplex(PIPE_BYTES);
        server
            .write_all(&server_init(65535, 65535, b""))
            .await
            .unwrap();
        let err = RfbClient::connect(client).await.unwrap_err();
        assert!(
            matches!(
                err,
                RfbClientError::Framebuffer(FramebufferError::TooLarge { .. })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn raw_rectangles_are_written_pixel_for_pixel() {
        let (mut client, mut server) = connected(8, 6).await;
        let rect = Rect::new(5, 2, 3, 4);
        // Pixel (x, y) of the rect: red x*16, green y*16, blue 0x99; padding byte set
        // to show it is ignored.
        let mut payload = Vec::new();
        for y in 0..4u8 {
            for x in 0..3u8 {
                payload.extend_from_slice(&[0x99, y * 16, x * 16, 0xee]);
            }
        }
        server
            .write_all(&update(&[(rect, ENCODING_RAW, payload)]))
            .await
            .unwrap();
        let changed = client.next_update().await.unwrap();
        assert_eq!(changed.changed, vec![rect]);
        assert_eq!(changed.encodings.raw, 1);
        let framebuffer = client.framebuffer();
        assert_pixels(
            framebuffer,
            framebuffer.bounds(),
            |x, y| {
                if rect.contains(&Rect::new(x, y, 1, 1)) {
                    (u32::from(x - 5) * 16) << 16 | (u32::from(y - 2) * 16) << 8 | 0x99
                } else {
                    0
                }
            },
            "raw",
        );
        assert_eq!(client.take_damage(), vec![rect]);
    }

    #[tokio::test]
    async fn copy_rect_moves_an_overlapping_area() {
        let (mut client, mut server) = connected(4, 4).await;
        // Fill with numbered pixels (value = y*4 + x + 1), then copy the top-left
        // 3x3 one pixel right and down, onto itself.
        let payload: Vec<u8> = (0..16u8).flat_map(|i| [i + 1, 0, 0, 0]).collect();
        let copy = [0u8, 0, 0, 0].to_vec(); // from (0, 0)
        server
            .write_all(&update(&[
                (Rect::new(0, 0, 4, 4), ENCODING_RAW, payload),
                (Rect::new(1, 1, 3, 3), ENCODING_COPY_RECT, copy),
            ]))
            .await
            .unwrap();
        let changed = client.next_update().await.unwrap();
        assert_eq!(changed.encodings.copy_rect, 1);
        #[rustfmt::skip]
        let expected = [
            1, 2, 3, 4,
            5, 1, 2, 3,
            9, 5, 6, 7,
            13, 9, 10, 11,
        ];
        assert_eq!(client.framebuffer().pixels(), &expected);
    }

    #[tokio::test]
    async fn zrle_tiles_of_every_subencoding_decode_exactly() {
        const A: u32 = 0x00a0_b0c0;
        const B: u32 = 0x0010_2030;
        const C: u32 = 0x00ff_0000;
        const D: u32 = 0x0000_ff00;
        const E: u32 = 0x0000_00ff;
        const F: u32 = 0x0012_3456;
        let mut zlib = ZlibStream::new();
        let (mut client, mut server) = connected(100, 70).await;

        // Update 1: the whole 100x70 desktop, four tiles: 64x64, 36x64 (right
        // edge), 64x6 (bottom edge) and 36x6 (corner).
        let mut tiles = Vec::new();
        // Tile (0,0) raw: pixel (x,y) = red x, green y, blue 0x42.
        tiles.push(0);
        for y in 0..64u8 {
            for x in 0..64u8 {
                tiles.extend_from_slice(&[0x42, y, x]);
            }
        }
        // Tile (64,0) solid F.
        tiles.push(1);
        tiles.extend_from_slice(&cpixel(F));
        // Tile (0,64) packed palette of 2 (1 bit): 0x55 = 01010101, so even
        // columns are C and odd ones D.
        tiles.push(2);
        tiles.extend_from_slice(&cpixel(C));
        tiles.extend_from_slice(&cpixel(D));
        tiles.extend_from_slice(&[0x55; 8 * 6]);
        // Tile (64,64) plain RLE over 216 pixels: A x1, B x100, A x115.
        tiles.push(128);
        for (colour, run) in [(A, 1u8), (B, 100), (A, 115)] {
            tiles.extend_from_slice(&cpixel(colour));
            tiles.push(run - 1);
        }
        let whole = Rect::new(0, 0, 100, 70);
        server
            .write_all(&update(&[(whole, ENCODING_ZRLE, zlib.zrle(&tiles))]))
            .await
            .unwrap();
        let changed = client.next_update().await.unwrap();
        assert_eq!(changed.changed, vec![whole]);
        assert_eq!(changed.encodings.zrle, 1);
        let first = |x: u16, y: u16| match (x, y) {
            (0..64, 0..64) => u32::from(x) << 16 | u32::from(y) << 8 | 0x42,
            (64.., 0..64) => F,
            (0..64, 64..) if x.is_multiple_of(2) => C,
            (0..64, 64..) => D,
            _ => match (y - 64) * 36 + (x - 64) {
                0 => A,
                1..=100 => B,
                _ => A,
            },
        };
        assert_pixels(client.framebuffer(), whole, first, "update 1");
        assert_eq!(client.take_damage(), vec![whole]);

        // Update 2, on the same zlib stream (a client restarting it per
        // rectangle would fail here): two rectangles inside the desktop.
        // Rect (20,3) 70x64: tiles 64x64 and 6x64 (right edge).
        let mut tiles = Vec::new();
        // Palette RLE with [A, B, C]: B once, C x300 (1 + 255 + 44), A for the
        // remaining 3795 (1 + 14*255 + 224).
        tiles.push(128 + 3);
        for colour in [A, B, C] {
            tiles.extend_from_slice(&cpixel(colour));
        }
        tiles.push(0x01);
        tiles.extend_from_slice(&[0x80 | 2, 255, 44]);
        tiles.push(0x80);
        tiles.extend_from_slice(&[255; 14]);
        tiles.push(224);
        // Packed palette of 5 (4 bits), 6 wide: 3 bytes a row, index (x + y) % 5.
        tiles.push(5);
        for colour in [A, B, C, D, E] {
            tiles.extend_from_slice(&cpixel(colour));
        }
        for y in 0..64u8 {
            let index = |x: u8| (x + y) % 5;
            for pair in [0, 2, 4] {
                tiles.push(index(pair) << 4 | index(pair + 1));
            }
        }
        let wide = Rect::new(20, 3, 70, 64);
        let wide_tiles = zlib.zrle(&tiles);
        // Rect (0,67) 7x3, one small tile: packed palette of 3 (2 bits), 7
        // pixels = 14 bits a row, padded to 2 bytes with 1-bits (index 3, past
        // the palette, so reading padding would fail). Indices 0,1,2,0,1,2,0.
        let mut tiles = vec![3];
        for colour in [D, E, F] {
            tiles.extend_from_slice(&cpixel(colour));
        }
        for _ in 0..3 {
            tiles.extend_from_slice(&[0b0001_1000, 0b0110_0011]);
        }
        let small = Rect::new(0, 67, 7, 3);
        server
            .write_all(&update(&[
                (wide, ENCODING_ZRLE, wide_tiles),
                (small, ENCODING_ZRLE, zlib.zrle(&tiles)),
            ]))
            .await
            .unwrap();
        let changed = client.next_update().await.unwrap();
        assert_eq!(changed.changed, vec![wide, small]);
        assert_eq!(changed.encodings.zrle, 2);
        let second = |x: u16, y: u16| {
            if wide.contains(&Rect::new(x, y, 1, 1)) {
                let (tx, ty) = (x - 20, y - 3);
                if tx < 64 {
                    match ty * 64 + tx {
                        0 => B,
                        1..=300 => C,
                        _ => A,
                    }
                } else {
                    [A, B, C, D, E][usize::from((tx - 64 + ty) % 5)]
                }
            } else if small.contains(&Rect::new(x, y, 1, 1)) {
                [D, E, F][usize::from(x % 3)]
            } else {
                first(x, y)
            }
        };
        assert_pixels(client.framebuffer(), whole, second, "update 2");
        assert_eq!(client.encodings_seen().zrle, 3);
    }

    #[tokio::test]
    async fn desktop_size_resizes_and_other_messages_are_skipped() {
        let (mut client, mut server) = connected(10, 10).await;
        let mut messages = vec![2]; // Bell
        messages.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 5]); // ServerCutText
        messages.extend_from_slice(b"hello");
        messages.extend(update(&[(
            Rect::new(0, 0, 30, 20),
            ENCODING_DESKTOP_SIZE,
            vec![],
        )]));
        server.write_all(&messages).await.unwrap();
        let changed = client.next_update().await.unwrap();
        assert!(changed.resized);
        assert_eq!(changed.changed, vec![Rect::new(0, 0, 30, 20)]);
        assert_eq!(
            (client.framebuffer().width(), client.framebuffer().height()),
            (30, 20)
        );
        assert_eq!(client.take_damage(), vec![Rect::new(0, 0, 30, 20)]);
        // Later requests ask for the new size.
        client.request_update(true).await.unwrap();
        let mut request = [0u8; 10];
        server.read_exact(&mut request).await.unwrap();
        assert_eq!(request, [3, 1, 0, 0, 0, 0, 0, 30, 0, 20]);
    }

    #[tokio::test]
    async fn the_desktop_clipboard_and_layout_come_through() {
        let (mut client, mut server) = connected(10, 10).await;
        assert_eq!(client.screen_id(), None);
        // ServerCutText in Latin-1: "café".
        let mut messages = vec![3, 0, 0, 0, 0, 0, 0, 4, b'c', b'a', b'f', 0xe9];
        // ExtendedDesktopSize to 40x30 with one screen, id 0x0102_0304.
        let mut layout = vec![1, 0, 0, 0];
        layout.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0, 0, 40, 0, 30, 0, 0, 0, 0]);
        messages.extend(update(&[(
            Rect::new(0, 0, 40, 30),
            ENCODING_EXTENDED_DESKTOP_SIZE,
            layout,
        )]));
        server.write_all(&messages).await.unwrap();
        assert_eq!(
            client.next_message().await.unwrap(),
            ServerMessage::CutText("café".into())
        );
        let ServerMessage::Update(resized) = client.next_message().await.unwrap() else {
            panic!("an update");
        };
        assert!(resized.resized);
        assert_eq!(client.screen_id(), Some(0x0102_0304));
        assert_eq!(
            (client.framebuffer().width(), client.framebuffer().height()),
            (40, 30)
        );
        // A clipboard over the limit is read and not passed on.
        let long = MAX_CLIPBOARD_BYTES + 1;
        let mut messages = vec![3, 0, 0, 0];
        messages.extend_from_slice(&(long as u32).to_be_bytes());
        messages.extend(std::iter::repeat_n(b'x', long));
        messages.extend(update(&[(
            Rect::new(0, 0, 40, 30),
            ENCODING_DESKTOP_SIZE,
            vec![],
        )]));
        server.write_all(&messages).await.unwrap();
        assert!(matches!(
            client.next_message().await.unwrap(),
            ServerMessage::Update(_)
        ));
    }

    #[test]
    fn clipboard_and_resize_messages_are_encoded_as_rfb_says() {
        assert_eq!(
            client_cut_text("é€"),
            vec![6, 0, 0, 0, 0, 0, 0, 2, 0xe9, b'?']
        );
        #[rustfmt::skip]
        let expected = [
            251, 0, 0x05, 0x00, 0x02, 0xd0, 1, 0, // 1280x720, one screen
            0, 0, 0, 7, 0, 0, 0, 0, 0x05, 0x00, 0x02, 0xd0, 0, 0, 0, 0,
        ];
        assert_eq!(set_desktop_size(1280, 720, 7), expected);
    }

    #[tokio::test]
    async fn protocol_violations_are_errors() {
        async fn first_error(messages: Vec<u8>) -> RfbClientError {
            let (mut client, mut server) = connected(100, 100).await;
            server.write_all(&messages).await.unwrap();
            drop(server);
            client.next_update().await.unwrap_err()
        }
        fn zrle_rect(rect: Rect, tiles: &[u8]) -> Vec<u8> {
            update(&[(rect, ENCODING_ZRLE, ZlibStream::new().zrle(tiles))])
        }
        let tile = Rect::new(0, 0, 2, 2);

        let outside = update(&[(Rect::new(90, 0, 20, 1), ENCODING_RAW, vec![])]);
        assert!(matches!(
            first_error(outside).await,
            RfbClientError::Framebuffer(FramebufferError::OutOfBounds { .. })
        ));
        let copy_from_outside = update(&[(
            Rect::new(0, 0, 10, 10),
            ENCODING_COPY_RECT,
            vec![0, 95, 0, 0],
        )]);
        assert!(matches!(
            first_error(copy_from_outside).await,
            RfbClientError::Framebuffer(FramebufferError::OutOfBounds { .. })
        ));
        assert!(matches!(
            first_error(vec![1, 0, 0, 0, 0, 0]).await,
            RfbClientError::ColourMap
        ));
        assert!(matches!(
            first_error(vec![3, 0, 0, 0, 0x10, 0, 0, 0]).await,
            RfbClientError::CutTextTooLong(_)
        ));
        assert!(matches!(
            first_error(vec![77]).await,
            RfbClientError::UnknownMessage(77)
        ));
        let hextile = update(&[(tile, 5, vec![])]);
        assert!(matches!(
            first_error(hextile).await,
            RfbClientError::UnsupportedEncoding(5)
        ));
        assert!(matches!(
            first_error(zrle_rect(tile, &[17])).await,
            RfbClientError::UnknownZrleSubencoding(17)
        ));
        // Plain RLE: a run of 5 in a 4-pixel tile.
        let long_run = zrle_rect(tile, &[128, 1, 2, 3, 4]);
        assert!(matches!(
            first_error(long_run).await,
            RfbClientError::InvalidZrle(_)
        ));
        // Palette RLE with 2 colours using index 2.
        let bad_index = zrle_rect(tile, &[130, 0, 0, 0, 1, 1, 1, 2, 0, 0, 0]);
        assert!(matches!(
            first_error(bad_index).await,
            RfbClientError::InvalidZrle(_)
        ));
        // A solid tile followed by stray bytes.
        let trailing = zrle_rect(tile, &[1, 1, 2, 3, 9]);
        assert!(matches!(
            first_error(trailing).await,
            RfbClientError::InvalidZrle(_)
        ));
        // Raw tile cut short.
        let short = zrle_rect(tile, &[0, 1, 2, 3]);
        assert!(matches!(
            first_error(short).await,
            RfbClientError::InvalidZrle(_)
        ));
        // A compressed length far beyond what a 2x2 rectangle needs: refused
        // before anything is read or allocated.
        let mut huge = update(&[(tile, ENCODING_ZRLE, vec![])]);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            first_error(huge).await,
            RfbClientError::InvalidZrle(_)
        ));
        // Data that inflates to far more than the rectangle can hold.
        let bomb = zrle_rect(tile, &vec![1; 1024 * 1024]);
        assert!(matches!(
            first_error(bomb).await,
            RfbClientError::InvalidZrle(_)
        ));
        // Not zlib at all.
        let mut garbage = update(&[(tile, ENCODING_ZRLE, vec![])]);
        garbage.extend_from_slice(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
        assert!(matches!(
            first_error(garbage).await,
            RfbClientError::Zlib(_)
        ));
    }
}
