//! What the libavcodec adapters ([`crate::vp8`], [`crate::h264`]) share:
//! initialising libav once per process, and collecting the one packet a
//! zero-latency encoder returns for a frame.

use std::sync::OnceLock;

use bytes::Bytes;
use ff::Packet;
use ffmpeg_next as ff;

use crate::video::{EncodeError, EncodedFrame};

/// Initialises libav once per process: error-code tables, and its logging cut
/// down to errors so the encoder does not chatter on stderr. (A failed
/// NVENC probe logs at error level; it is expected on most hosts, so the
/// probe lowers the level to fatal around itself.)
pub(crate) fn init() -> Result<(), EncodeError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ff::init().map_err(|e| e.to_string())?;
        ff::util::log::set_level(ff::util::log::Level::Error);
        Ok(())
    })
    .clone()
    .map_err(|e| EncodeError::Open(format!("cannot initialise libavcodec: {e}")))
}

/// Drains `encoder` after one frame was sent: with no look-ahead and no
/// B-frames, one frame in gives at most one packet out (none when rate
/// control dropped it). `what` names the encoder in errors.
pub(crate) fn receive_one(
    encoder: &mut ff::encoder::Video,
    packet: &mut Packet,
    what: &str,
) -> Result<Option<EncodedFrame>, EncodeError> {
    let mut out: Option<EncodedFrame> = None;
    loop {
        match encoder.receive_packet(packet) {
            Ok(()) => {
                if out.is_some() {
                    return Err(EncodeError::Encode(format!(
                        "{what} returned more than one packet for a frame"
                    )));
                }
                out = Some(EncodedFrame {
                    data: Bytes::copy_from_slice(packet.data().unwrap_or_default()),
                    keyframe: packet.is_key(),
                });
            }
            Err(ff::Error::Other { errno }) if errno == ff::error::EAGAIN => break,
            Err(ff::Error::Eof) => break,
            Err(e) => return Err(EncodeError::Encode(format!("{what}: {e}"))),
        }
    }
    Ok(out)
}
