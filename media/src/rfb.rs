//! The parts of RFB (the VNC protocol, RFC 6143) that the relay speaks itself.
//!
//! Towards the desktop the relay is an RFB client that performs VNC
//! authentication with the session's secret ([`authenticate`]). Towards the
//! browser it is an RFB server that offers only security type None
//! ([`accept_browser`]): the browser has already proven itself with a
//! single-use ticket, and the secret never leaves the gate. After both
//! handshakes the relay forwards the client's messages one whole message at a
//! time ([`ClientMessages`]), which is how it counts key and pointer input and
//! refuses what it does not understand.

use std::io;
use std::time::Duration;

use des::Des;
use des::cipher::{BlockEncrypt, KeyInit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version string of RFB 3.8, the newest the relay speaks.
pub const VERSION_3_8: &[u8; 12] = b"RFB 003.008\n";

/// Security type None.
const SECURITY_NONE: u8 = 1;
/// Security type VNC authentication (DES challenge-response).
const SECURITY_VNC_AUTH: u8 = 2;
/// A server's refusal reason is cut at this length (it is only logged).
const MAX_REASON_BYTES: u32 = 4096;

/// What went wrong on either side of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    /// The connection failed or closed early.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer did not open with an RFB version string.
    #[error("the peer does not speak RFB (it opened with {0:?})")]
    NotRfb(String),
    /// The desktop refused the connection before authentication.
    #[error("the desktop refused the connection: {0}")]
    Refused(String),
    /// The desktop offers no security type the relay can use.
    #[error("the desktop offers no usable security type (offered {0:?})")]
    NoUsableSecurity(Vec<u8>),
    /// The desktop rejected the session's secret.
    #[error("VNC authentication failed: {0}")]
    AuthFailed(String),
    /// The browser chose a security type other than None.
    #[error("the browser chose security type {0}; only None (1) is offered")]
    BrowserSecurity(u8),
    /// The browser sent a message type the relay does not forward.
    #[error("client message type {0} is not supported by the relay")]
    UnsupportedMessage(u8),
    /// The browser sent a message longer than the relay accepts.
    #[error("a client message of {0} bytes is over the limit of {1}")]
    MessageTooLarge(usize, usize),
    /// A handshake step did not finish in time.
    #[error("the handshake did not finish within {0:?}")]
    Timeout(Duration),
}

/// The protocol versions the relay can speak (RFC 6143 §7.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 3.3: the server picks the security type.
    V3_3,
    /// 3.7: the client picks from a list; no result after None.
    V3_7,
    /// 3.8: as 3.7, with a result (and reason) after every type.
    V3_8,
}

impl Version {
    /// Reads `RFB xxx.yyy\n`. Versions the RFC does not know are treated as
    /// 3.3, and anything newer than 3.8 as 3.8, as the RFC asks.
    pub fn parse(raw: &[u8; 12]) -> Result<Self, RfbError> {
        let text = String::from_utf8_lossy(raw);
        let numbers = (raw.starts_with(b"RFB ") && raw[7] == b'.' && raw[11] == b'\n')
            .then(|| {
                let major = std::str::from_utf8(&raw[4..7]).ok()?.parse::<u32>().ok()?;
                let minor = std::str::from_utf8(&raw[8..11]).ok()?.parse::<u32>().ok()?;
                Some((major, minor))
            })
            .flatten();
        match numbers {
            Some((3, minor)) if minor >= 8 => Ok(Self::V3_8),
            Some((3, 7)) => Ok(Self::V3_7),
            Some((3, _)) => Ok(Self::V3_3),
            Some((major, _)) if major > 3 => Ok(Self::V3_8),
            _ => Err(RfbError::NotRfb(text.into_owned())),
        }
    }

    /// The 12-byte version string.
    pub fn as_bytes(self) -> &'static [u8; 12] {
        match self {
            Self::V3_3 => b"RFB 003.003\n",
            Self::V3_7 => b"RFB 003.007\n",
            Self::V3_8 => VERSION_3_8,
        }
    }
}

/// Connects to the desktop as an RFB client and authenticates with
/// `password` (VNC authentication; None if the desktop asks for nothing).
/// Returns the stream just after a successful security result, where the
/// client's `ClientInit` is due.
pub async fn authenticate<S>(mut desktop: S, password: &[u8]) -> Result<S, RfbError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut raw = [0u8; 12];
    desktop.read_exact(&mut raw).await?;
    let version = Version::parse(&raw)?;
    desktop.write_all(version.as_bytes()).await?;

    let chosen = if version == Version::V3_3 {
        match desktop.read_u32().await? {
            0 => return Err(RfbError::Refused(read_reason(&mut desktop).await?)),
            t @ (1 | 2) => t as u8,
            other => return Err(RfbError::NoUsableSecurity(vec![other as u8])),
        }
    } else {
        let count = desktop.read_u8().await?;
        if count == 0 {
            return Err(RfbError::Refused(read_reason(&mut desktop).await?));
        }
        let mut offered = vec![0u8; usize::from(count)];
        desktop.read_exact(&mut offered).await?;
        let chosen = [SECURITY_VNC_AUTH, SECURITY_NONE]
            .into_iter()
            .find(|t| offered.contains(t))
            .ok_or(RfbError::NoUsableSecurity(offered))?;
        desktop.write_all(&[chosen]).await?;
        chosen
    };

    if chosen == SECURITY_VNC_AUTH {
        let mut challenge = [0u8; 16];
        desktop.read_exact(&mut challenge).await?;
        desktop
            .write_all(&vnc_auth_response(&challenge, password))
            .await?;
    }
    // 3.8 sends a result after every type; older versions only after VNC auth.
    if chosen == SECURITY_VNC_AUTH || version == Version::V3_8 {
        match desktop.read_u32().await? {
            0 => {}
            _ if version == Version::V3_8 => {
                return Err(RfbError::AuthFailed(read_reason(&mut desktop).await?));
            }
            _ => return Err(RfbError::AuthFailed("no reason given".into())),
        }
    }
    Ok(desktop)
}

/// The server half of the handshake towards the browser: version, then
/// security type None only. Returns the version agreed.
pub async fn accept_browser<R, W>(from: &mut R, to: &mut W) -> Result<Version, RfbError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    to.write_all(VERSION_3_8).await?;
    to.flush().await?;
    let mut raw = [0u8; 12];
    from.read_exact(&mut raw).await?;
    let version = Version::parse(&raw)?.min(Version::V3_8);
    if version == Version::V3_3 {
        to.write_all(&u32::from(SECURITY_NONE).to_be_bytes())
            .await?;
    } else {
        to.write_all(&[1, SECURITY_NONE]).await?;
        to.flush().await?;
        let choice = from.read_u8().await?;
        if choice != SECURITY_NONE {
            return Err(RfbError::BrowserSecurity(choice));
        }
        if version == Version::V3_8 {
            to.write_all(&0u32.to_be_bytes()).await?;
        }
    }
    to.flush().await?;
    Ok(version)
}

/// The 16-byte response to a VNC authentication challenge: the challenge
/// DES-encrypted (two ECB blocks) with the password's first eight bytes,
/// zero-padded, each byte's bits mirrored (the VNC convention).
pub fn vnc_auth_response(challenge: &[u8; 16], password: &[u8]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new_from_slice(&key).expect("a DES key is 8 bytes");
    let mut response = *challenge;
    for block in response.chunks_exact_mut(8) {
        let block: &mut [u8; 8] = block.try_into().expect("chunks of 8");
        cipher.encrypt_block(block.into());
    }
    response
}

/// Reads a reason string (u32 length, then text), cut to a sane length.
async fn read_reason<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, RfbError> {
    let len = stream.read_u32().await?;
    let mut text = vec![0u8; len.min(MAX_REASON_BYTES) as usize];
    stream.read_exact(&mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Input seen in the client's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputCount {
    /// Key presses and releases (KeyEvent and QEMU extended key events).
    pub keys: u64,
    /// Pointer moves and button changes.
    pub pointer: u64,
}

/// Frames the browser's byte stream into whole RFB client messages.
///
/// Bytes go in as they arrive ([`push`](Self::push)); whole messages come out
/// ([`take_complete`](Self::take_complete)), with the input among them
/// counted. A message type the relay does not know is an error: it cannot
/// be framed, so it cannot be forwarded safely.
#[derive(Debug)]
pub struct ClientMessages {
    pending: bytes::BytesMut,
    max_message: usize,
}

impl ClientMessages {
    /// A framer refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            pending: bytes::BytesMut::new(),
            max_message,
        }
    }

    /// Appends bytes received from the browser.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The longest prefix of whole messages received so far (empty if none
    /// is complete), and the input among them. A message that cannot be
    /// forwarded is an error once no whole message precedes it: the ones
    /// before it come out first, so what is forwarded does not depend on
    /// how the bytes were chunked, and the error comes with the next call.
    pub fn take_complete(&mut self) -> Result<(bytes::Bytes, InputCount), RfbError> {
        let mut input = InputCount::default();
        let mut end = 0;
        loop {
            // Runs of PointerEvents are most of what a browser sends (noVNC
            // batches them): six bytes each, no length field, so a run is
            // counted by its type bytes alone.
            let pointers = self.pending[end..]
                .chunks_exact(POINTER_EVENT_LEN)
                .take_while(|message| message[0] == 5)
                .count();
            if pointers > 0 {
                input.pointer += pointers as u64;
                end += pointers * POINTER_EVENT_LEN;
                continue;
            }
            let len = match message_len(&self.pending[end..], self.max_message) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                // Hand on the whole messages before the refused one.
                Err(_) if end > 0 => break,
                Err(err) => return Err(err),
            };
            match self.pending[end] {
                4 | 255 => input.keys += 1,
                _ => {}
            }
            end += len;
        }
        if end == 0 {
            // Nothing whole yet: make sure a partial message cannot grow past the limit.
            if self.pending.len() > self.max_message {
                return Err(RfbError::MessageTooLarge(
                    self.pending.len(),
                    self.max_message,
                ));
            }
        }
        Ok((self.pending.split_to(end).freeze(), input))
    }
}

/// Bytes of an RFB PointerEvent.
const POINTER_EVENT_LEN: usize = 6;

/// The length of the client message at the start of `buf`, or `None` if
/// more bytes are needed to know it or to hold it all.
fn message_len(buf: &[u8], max: usize) -> Result<Option<usize>, RfbError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    // Each arm: bytes needed to read the length, then the full length.
    let len = match kind {
        0 => Some(20),                                                    // SetPixelFormat
        2 => header(buf, 4).map(|h| 4 + 4 * usize::from(be16(&h[2..4]))), // SetEncodings
        3 => Some(10), // FramebufferUpdateRequest
        4 => Some(8),  // KeyEvent
        5 => Some(6),  // PointerEvent
        6 => header(buf, 8).map(|h| {
            // ClientCutText; a negative length is the extended clipboard's.
            let n = i32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            8 + n.unsigned_abs() as usize
        }),
        150 => Some(10), // EnableContinuousUpdates
        248 => header(buf, 9).map(|h| 9 + usize::from(h[8])), // ClientFence
        251 => header(buf, 8).map(|h| 8 + 16 * usize::from(h[6])), // SetDesktopSize
        252 => Some(4),  // xvp
        255 => match header(buf, 2).map(|h| h[1]) {
            None => None,
            Some(0) => Some(12), // QEMU extended key event
            Some(_) => return Err(RfbError::UnsupportedMessage(kind)),
        },
        other => return Err(RfbError::UnsupportedMessage(other)),
    };
    match len {
        Some(len) if len > max => Err(RfbError::MessageTooLarge(len, max)),
        Some(len) if buf.len() >= len => Ok(Some(len)),
        _ => Ok(None),
    }
}

fn header(buf: &[u8], need: usize) -> Option<&[u8]> {
    buf.get(..need)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_the_rfc_says() {
        assert_eq!(Version::parse(b"RFB 003.008\n").unwrap(), Version::V3_8);
        assert_eq!(Version::parse(b"RFB 003.007\n").unwrap(), Version::V3_7);
        assert_eq!(Version::parse(b"RFB 003.005\n").unwrap(), Version::V3_3);
        assert_eq!(Version::parse(b"RFB 003.889\n").unwrap(), Version::V3_8);
        assert_eq!(Version::parse(b"RFB 004.001\n").unwrap(), Version::V3_8);
        assert!(matches!(
            Version::parse(b"HTTP/1.1 200"),
            Err(RfbError::NotRfb(_))
        ));
    }

    #[test]
    fn vnc_auth_matches_a_known_answer() {
        // Reference computed independently with OpenSSL:
        //   key = bit-mirrored "password" = 0e86ceceeef64e26
        //   printf 000102..0f | openssl enc -des-ecb -nopad -K 0e86ceceeef64e26
        let challenge: [u8; 16] = core::array::from_fn(|i| i as u8);
        let response = vnc_auth_response(&challenge, b"password");
        assert_eq!(
            response,
            [
                0xb8, 0x66, 0x92, 0x41, 0x25, 0xc8, 0xee, 0xbb, 0x9d, 0xeb, 0xc1, 0xdb, 0x61, 0xc5,
                0x38, 0xe2
            ]
        );
        // Only the first eight bytes of the password count.
        assert_eq!(
            vnc_auth_response(&challenge, b"password-and-more"),
            response
        );
    }

    #[test]
    fn whole_messages_are_forwarded_and_input_counted() {
        let mut framer = ClientMessages::new(1024);
        let pointer = [5u8, 0, 0, 10, 0, 20];
        let key = [4u8, 1, 0, 0, 0, 0, 0, 0x61];
        let request = [3u8, 1, 0, 0, 0, 0, 0, 8, 0, 8];
        let mut stream = Vec::new();
        stream.extend_from_slice(&pointer);
        stream.extend_from_slice(&key);
        stream.extend_from_slice(&request);
        // Feed one byte at a time: output only ever holds whole messages.
        let mut out = Vec::new();
        let mut total = InputCount::default();
        for byte in &stream {
            framer.push(&[*byte]);
            let (whole, input) = framer.take_complete().unwrap();
            out.extend_from_slice(&whole);
            total.keys += input.keys;
            total.pointer += input.pointer;
            assert!(
                [0, 6, 14, 24].contains(&out.len()),
                "split mid-message at {}",
                out.len()
            );
        }
        assert_eq!(out, stream);
        assert_eq!(
            total,
            InputCount {
                keys: 1,
                pointer: 1
            }
        );
    }

    #[test]
    fn runs_of_pointer_events_are_counted_and_never_split() {
        let mut framer = ClientMessages::new(1024);
        let pointer = [5u8, 1, 0, 10, 0, 20];
        let key = [4u8, 0, 0, 0, 0, 0, 0, 0x61];
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(&pointer);
        }
        stream.extend_from_slice(&key);
        stream.extend_from_slice(&pointer);
        // Three pointer events and five bytes of the fourth message.
        framer.push(&stream[..23]);
        let (whole, input) = framer.take_complete().unwrap();
        assert_eq!(
            (whole.len(), input),
            (
                18,
                InputCount {
                    keys: 0,
                    pointer: 3
                }
            )
        );
        framer.push(&stream[23..]);
        let (whole, input) = framer.take_complete().unwrap();
        assert_eq!(whole[..], stream[18..]);
        assert_eq!(
            input,
            InputCount {
                keys: 1,
                pointer: 1
            }
        );
    }

    #[test]
    fn variable_length_messages_are_framed_by_their_headers() {
        let mut framer = ClientMessages::new(1024);
        // SetEncodings with two encodings, ClientCutText of 3 bytes, a fence with 2 bytes.
        let encodings = [2u8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];
        let cut = [6u8, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c'];
        let fence = [248u8, 0, 0, 0, 0, 0, 0, 0, 2, 7, 7];
        let all = [&encodings[..], &cut[..], &fence[..]].concat();
        framer.push(&all[..all.len() - 1]);
        let (whole, input) = framer.take_complete().unwrap();
        assert_eq!(whole.len(), encodings.len() + cut.len());
        assert_eq!(input, InputCount::default());
        framer.push(&all[all.len() - 1..]);
        assert_eq!(framer.take_complete().unwrap().0.len(), fence.len());
    }

    #[test]
    fn whole_messages_before_a_refused_one_are_handed_on_first() {
        // A key release, then an unknown type, in one chunk: the release is
        // forwarded (the desktop would otherwise keep the key pressed), as
        // it is when the two arrive apart; the error comes next.
        let key_up = [4u8, 0, 0, 0, 0, 0, 0, 0x61];
        let mut framer = ClientMessages::new(64);
        framer.push(&[&key_up[..], &[7, 0, 0]].concat());
        let (whole, input) = framer.take_complete().unwrap();
        assert_eq!((&whole[..], input.keys), (&key_up[..], 1));
        assert!(matches!(
            framer.take_complete(),
            Err(RfbError::UnsupportedMessage(7))
        ));
    }

    #[test]
    fn unknown_and_oversized_messages_are_refused() {
        let mut framer = ClientMessages::new(64);
        framer.push(&[7, 0, 0]);
        assert!(matches!(
            framer.take_complete(),
            Err(RfbError::UnsupportedMessage(7))
        ));
        let mut framer = ClientMessages::new(64);
        framer.push(&[6, 0, 0, 0, 0, 0, 1, 0]);
        assert!(matches!(
            framer.take_complete(),
            Err(RfbError::MessageTooLarge(264, 64))
        ));
    }

    #[tokio::test]
    async fn the_client_handshake_authenticates_against_a_vnc_auth_server() {
        let (client, mut server) = tokio::io::duplex(1024);
        let password = b"0123456789abcdef";
        let server_side = async move {
            server.write_all(VERSION_3_8).await.unwrap();
            let mut version = [0u8; 12];
            server.read_exact(&mut version).await.unwrap();
            assert_eq!(&version, VERSION_3_8);
            server
                .write_all(&[2, SECURITY_NONE, SECURITY_VNC_AUTH])
                .await
                .unwrap();
            assert_eq!(server.read_u8().await.unwrap(), SECURITY_VNC_AUTH);
            let challenge = [0x5a; 16];
            server.write_all(&challenge).await.unwrap();
            let mut answer = [0u8; 16];
            server.read_exact(&mut answer).await.unwrap();
            let ok = answer == vnc_auth_response(&challenge, password);
            server
                .write_all(&u32::from(!ok).to_be_bytes())
                .await
                .unwrap();
            if !ok {
                server.write_all(&[0, 0, 0, 3]).await.unwrap();
                server.write_all(b"bad").await.unwrap();
            }
            ok
        };
        let (client, accepted) = tokio::join!(authenticate(client, password), server_side);
        assert!(accepted, "the server saw a wrong response");
        client.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_secret_is_reported_with_the_servers_reason() {
        let (client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            server.write_all(VERSION_3_8).await.unwrap();
            let mut version = [0u8; 12];
            server.read_exact(&mut version).await.unwrap();
            server.write_all(&[1, SECURITY_VNC_AUTH]).await.unwrap();
            server.read_u8().await.unwrap();
            server.write_all(&[1; 16]).await.unwrap();
            let mut answer = [0u8; 16];
            server.read_exact(&mut answer).await.unwrap();
            server.write_all(&[0, 0, 0, 1, 0, 0, 0, 4]).await.unwrap();
            server.write_all(b"nope").await.unwrap();
        });
        let err = authenticate(client, b"x").await.unwrap_err();
        assert!(
            matches!(&err, RfbError::AuthFailed(r) if r == "nope"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_browser_is_offered_only_security_none() {
        let (mut browser, relay) = tokio::io::duplex(1024);
        let (mut relay_in, mut relay_out) = tokio::io::split(relay);
        let relay_side =
            tokio::spawn(async move { accept_browser(&mut relay_in, &mut relay_out).await });
        let mut version = [0u8; 12];
        browser.read_exact(&mut version).await.unwrap();
        assert_eq!(&version, VERSION_3_8);
        browser.write_all(VERSION_3_8).await.unwrap();
        let mut types = [0u8; 2];
        browser.read_exact(&mut types).await.unwrap();
        assert_eq!(types, [1, SECURITY_NONE]);
        browser.write_all(&[SECURITY_NONE]).await.unwrap();
        assert_eq!(browser.read_u32().await.unwrap(), 0);
        assert_eq!(relay_side.await.unwrap().unwrap(), Version::V3_8);
    }
}
