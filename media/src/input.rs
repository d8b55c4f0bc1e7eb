//! Input from the browser over the WebRTC `input` data channel.
//!
//! Each data-channel message is one JSON object:
//!
//! - `{"type":"pointer","x":321,"y":123,"buttons":0}`: the pointer at
//!   (`x`, `y`) in desktop pixels with `buttons` held (RFB's bit mask: bit 0
//!   left, 1 middle, 2 right, 3/4 the wheel);
//! - `{"type":"key","keysym":65505,"down":true}`: an X11 keysym pressed or
//!   released.
//!
//! Each becomes the matching RFB client message for the desktop. Anything
//! else is refused with a reason and dropped; the stream goes on.

use serde::Deserialize;

use crate::rfb::InputCount;
use crate::rfb_client::{key_event, pointer_event};

/// Longest data-channel message accepted; real ones are under 64 bytes.
pub const MAX_INPUT_MESSAGE_BYTES: usize = 1024;

/// One input event from the browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputEvent {
    /// The pointer moved or a button changed.
    Pointer {
        /// Column in desktop pixels.
        x: u16,
        /// Row in desktop pixels.
        y: u16,
        /// Buttons held, RFB's bit mask.
        #[serde(default)]
        buttons: u8,
    },
    /// A key was pressed or released.
    Key {
        /// The X11 keysym.
        keysym: u32,
        /// Pressed (`true`) or released.
        down: bool,
    },
}

/// Why an input message was refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Over [`MAX_INPUT_MESSAGE_BYTES`].
    #[error("input message of {0} bytes is over the limit of {MAX_INPUT_MESSAGE_BYTES}")]
    TooLong(usize),
    /// Not one of the input events.
    #[error("not an input event: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl InputEvent {
    /// Parses one data-channel message.
    pub fn parse(message: &[u8]) -> Result<Self, InputError> {
        if message.len() > MAX_INPUT_MESSAGE_BYTES {
            return Err(InputError::TooLong(message.len()));
        }
        Ok(serde_json::from_slice(message)?)
    }

    /// The RFB client message for the desktop.
    pub fn to_rfb(self) -> Vec<u8> {
        match self {
            Self::Pointer { x, y, buttons } => pointer_event(x, y, buttons).to_vec(),
            Self::Key { keysym, down } => key_event(keysym, down).to_vec(),
        }
    }

    /// What the event counts as, for presence and metrics.
    pub fn count(self) -> InputCount {
        match self {
            Self::Pointer { .. } => InputCount {
                keys: 0,
                pointer: 1,
            },
            Self::Key { .. } => InputCount {
                keys: 1,
                pointer: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_message_becomes_an_rfb_pointer_event() {
        let event = InputEvent::parse(br#"{"type":"pointer","x":321,"y":123,"buttons":1}"#)
            .expect("parses");
        assert_eq!(event.to_rfb(), [5, 1, 0x01, 0x41, 0, 0x7b]);
        assert_eq!(
            event.count(),
            InputCount {
                keys: 0,
                pointer: 1
            }
        );
        // Buttons default to none held.
        let moved = InputEvent::parse(br#"{"type":"pointer","x":1,"y":2}"#).unwrap();
        assert_eq!(moved.to_rfb(), [5, 0, 0, 1, 0, 2]);
    }

    #[test]
    fn a_key_message_becomes_an_rfb_key_event() {
        let event = InputEvent::parse(br#"{"type":"key","keysym":65505,"down":true}"#).unwrap();
        assert_eq!(event.to_rfb(), [4, 1, 0, 0, 0, 0, 0xff, 0xe1]);
        assert_eq!(
            event.count(),
            InputCount {
                keys: 1,
                pointer: 0
            }
        );
    }

    #[test]
    fn malformed_unknown_out_of_range_and_oversized_messages_are_refused() {
        for bad in [
            &b"not json"[..],
            br#"{"type":"scroll","dy":3}"#,
            br#"{"type":"pointer","x":70000,"y":1}"#,
            br#"{"type":"pointer","x":-1,"y":1}"#,
            br#"{"type":"key","keysym":65,"down":true,"extra":1}"#,
            br#"{"type":"key","keysym":65}"#,
        ] {
            assert!(
                matches!(InputEvent::parse(bad), Err(InputError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b' '; MAX_INPUT_MESSAGE_BYTES + 1];
        assert!(matches!(
            InputEvent::parse(&long),
            Err(InputError::TooLong(1025))
        ));
    }
}
