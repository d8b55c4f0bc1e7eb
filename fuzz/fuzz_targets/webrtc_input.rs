//! Fuzzes the WebRTC path's input parser (media/src/input.rs): one message
//! from the browser's `input` data channel through `InputEvent::parse`,
//! then `InputEvent::to_rfb` (with and without a screen id) and
//! `InputEvent::count` on what it accepts.
//!
//! What must hold: no input panics or hangs; an accepted event becomes an
//! RFB client message for every event but a resize without a screen id,
//! and that message is exactly one whole message to the relay's framer
//! (`rfb::ClientMessages`, with the relay's default limit): what
//! the WebRTC path sends the desktop is well-framed RFB; a pointer or key
//! event counts as the relay counts its message.
#![no_main]

use deskgate_media::RelayLimits;
use deskgate_media::input::InputEvent;
use deskgate_media::rfb::ClientMessages;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = InputEvent::parse(data) else {
        return;
    };
    let count = event.count();
    let is_resize = matches!(event, InputEvent::Resize { .. });
    assert_eq!(
        event.to_rfb(None).is_none(),
        is_resize,
        "only a resize needs a screen"
    );
    let message = event.to_rfb(Some(u32::from_le_bytes([0x12, 0x34, 0x56, 0x78])));
    let message = message.expect("with a screen id every event is a message");
    let mut framer = ClientMessages::new(RelayLimits::default().max_client_message);
    framer.push(&message);
    let (whole, framed) = framer
        .take_complete()
        .expect("the relay's framer takes the message");
    assert_eq!(whole[..], message[..], "one whole message");
    if matches!(event, InputEvent::Pointer { .. } | InputEvent::Key { .. }) {
        assert_eq!(framed, count, "counted as the relay counts it");
    }
});
