//! Fuzzes the EIP-4361 (Sign-In with Ethereum) parser the gate runs on every
//! sign-in: `SiweMessage::parse` (src/auth/siwe/mod.rs) on arbitrary text,
//! then `SiweMessage::validate` on what it accepts, and `Timestamp::parse`
//! on every line.
//!
//! What must hold: no input panics or hangs; an accepted message renders
//! back byte for byte (`parse(text)?.to_string() == text`, what is verified
//! is what was signed) and validates; an accepted timestamp renders back as
//! the text it came from.
#![no_main]

use deskgate::auth::siwe::{SiweMessage, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The gate takes the message as a JSON string, so it is always UTF-8;
    // other bytes are read lossily so that they still reach the parser.
    let text = String::from_utf8_lossy(data);
    if let Ok(message) = SiweMessage::parse(&text) {
        assert_eq!(
            message.to_string(),
            text,
            "an accepted message renders back"
        );
        assert_eq!(message.validate(), Ok(()), "an accepted message validates");
    }
    for line in text.split('\n') {
        let value = line.split_once(": ").map_or(line, |(_, value)| value);
        if let Some(at) = Timestamp::parse(value) {
            assert_eq!(at.as_str(), value, "a timestamp keeps its text");
        }
    }
});
