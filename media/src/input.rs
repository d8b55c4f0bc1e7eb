//! Input from the browser over the WebRTC `input` data channel.
//!
//! Each data-channel message is one JSON object:
//!
//! - `{"type":"pointer","x":321,"y":123,"buttons":0}`: the pointer at
//!   (`x`, `y`) in desktop pixels with `buttons` held (RFB's bit mask: bit 0
//!   left, 1 middle, 2 right, 3/4 the wheel);
//! - `{"type":"key","keysym":65505,"down":true}`: an X11 keysym pressed or
//!   released;
//! - `{"type":"clipboard","text":"…"}`: text for the desktop's clipboard
//!   (at most [`MAX_CLIPBOARD_BYTES`] in Latin-1, RFB's clipboard charset);
//! - `{"type":"resize","width":1280,"height":720}`: the view's size, which
//!   the desktop is asked to take (at most 3840 × 2160, the video's limit).
//!
//! Each becomes the matching RFB client message for the desktop. Anything
//! else is refused with a reason and dropped; the stream goes on. The gate
//! sends the desktop's clipboard the other way on the same channel, as
//! `{"type":"clipboard","text":"…"}`.

use serde::Deserialize;

use crate::rfb::InputCount;
use crate::rfb_client::{
    MAX_CLIPBOARD_BYTES, client_cut_text, key_event, pointer_event, set_desktop_size,
};

/// Longest data-channel message accepted: a clipboard of
/// [`MAX_CLIPBOARD_BYTES`] with room for JSON escapes; pointer and key
/// events are under 64 bytes.
pub const MAX_INPUT_MESSAGE_BYTES: usize = 2 * MAX_CLIPBOARD_BYTES + 1024;

/// The largest size a browser may ask the desktop for: the video's limit.
pub const MAX_RESIZE: (u16, u16) = (3840, 2160);

/// One input event from the browser.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
    /// Text for the desktop's clipboard.
    Clipboard {
        /// The text.
        text: String,
    },
    /// The view's size: the desktop is asked to take it.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
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
    /// Clipboard text over [`MAX_CLIPBOARD_BYTES`].
    #[error("clipboard text of {0} characters is over the limit of {MAX_CLIPBOARD_BYTES}")]
    ClipboardTooLong(usize),
    /// A size of zero or over [`MAX_RESIZE`].
    #[error("a desktop of {0}x{1} cannot be asked for")]
    BadSize(u16, u16),
}

impl InputEvent {
    /// Parses one data-channel message.
    pub fn parse(message: &[u8]) -> Result<Self, InputError> {
        if message.len() > MAX_INPUT_MESSAGE_BYTES {
            return Err(InputError::TooLong(message.len()));
        }
        let event: Self = serde_json::from_slice(message)?;
        match &event {
            Self::Clipboard { text } if text.len() > MAX_CLIPBOARD_BYTES => {
                // Bytes of UTF-8 bound the characters, hence the Latin-1
                // bytes; only a long text pays for counting them.
                match text.chars().count() {
                    n if n > MAX_CLIPBOARD_BYTES => Err(InputError::ClipboardTooLong(n)),
                    _ => Ok(event),
                }
            }
            &Self::Resize { width, height }
                if width == 0 || height == 0 || width > MAX_RESIZE.0 || height > MAX_RESIZE.1 =>
            {
                Err(InputError::BadSize(width, height))
            }
            _ => Ok(event),
        }
    }

    /// The RFB client message for the desktop; `None` for a resize when the
    /// desktop has not named its screen (`screen_id`, from its
    /// ExtendedDesktopSize layout), as it then cannot be resized.
    pub fn to_rfb(&self, screen_id: Option<u32>) -> Option<Vec<u8>> {
        Some(match self {
            &Self::Pointer { x, y, buttons } => pointer_event(x, y, buttons).to_vec(),
            &Self::Key { keysym, down } => key_event(keysym, down).to_vec(),
            Self::Clipboard { text } => client_cut_text(text),
            &Self::Resize { width, height } => set_desktop_size(width, height, screen_id?).to_vec(),
        })
    }

    /// What the event counts as, for presence and metrics: a clipboard
    /// paste is typing; a resize is not input at all.
    pub fn count(&self) -> InputCount {
        match self {
            Self::Pointer { .. } => InputCount {
                keys: 0,
                pointer: 1,
            },
            Self::Key { .. } | Self::Clipboard { .. } => InputCount {
                keys: 1,
                pointer: 0,
            },
            Self::Resize { .. } => InputCount {
                keys: 0,
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
        assert_eq!(event.to_rfb(None).unwrap(), [5, 1, 0x01, 0x41, 0, 0x7b]);
        assert_eq!(
            event.count(),
            InputCount {
                keys: 0,
                pointer: 1
            }
        );
        // Buttons default to none held.
        let moved = InputEvent::parse(br#"{"type":"pointer","x":1,"y":2}"#).unwrap();
        assert_eq!(moved.to_rfb(None).unwrap(), [5, 0, 0, 1, 0, 2]);
    }

    #[test]
    fn a_key_message_becomes_an_rfb_key_event() {
        let event = InputEvent::parse(br#"{"type":"key","keysym":65505,"down":true}"#).unwrap();
        assert_eq!(event.to_rfb(None).unwrap(), [4, 1, 0, 0, 0, 0, 0xff, 0xe1]);
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
            Err(InputError::TooLong(n)) if n == MAX_INPUT_MESSAGE_BYTES + 1
        ));
        let clipboard = format!(
            r#"{{"type":"clipboard","text":"{}"}}"#,
            "x".repeat(MAX_CLIPBOARD_BYTES + 1)
        );
        assert!(matches!(
            InputEvent::parse(clipboard.as_bytes()),
            Err(InputError::ClipboardTooLong(_))
        ));
        for size in [
            r#"{"type":"resize","width":0,"height":720}"#,
            r#"{"type":"resize","width":3841,"height":720}"#,
        ] {
            assert!(
                matches!(
                    InputEvent::parse(size.as_bytes()),
                    Err(InputError::BadSize(..))
                ),
                "{size}"
            );
        }
    }

    #[test]
    fn clipboard_and_resize_messages_become_rfb_messages() {
        let paste = InputEvent::parse(r#"{"type":"clipboard","text":"café"}"#.as_bytes()).unwrap();
        assert_eq!(paste.to_rfb(None).unwrap(), client_cut_text("café"));
        assert_eq!(
            paste.count(),
            InputCount {
                keys: 1,
                pointer: 0
            }
        );
        let resize = InputEvent::parse(br#"{"type":"resize","width":1126,"height":720}"#).unwrap();
        assert_eq!(resize.to_rfb(None), None, "no screen named yet");
        assert_eq!(
            resize.to_rfb(Some(0)).unwrap(),
            set_desktop_size(1126, 720, 0).to_vec()
        );
        assert_eq!(
            resize.count(),
            InputCount {
                keys: 0,
                pointer: 0
            }
        );
    }
}
