//! Fuzzes what the VNC relay parses from a browser (media/src/rfb.rs): the
//! server half of the handshake, `accept_browser` (which reads the browser's
//! version with `Version::parse` and its security choice), the ClientInit
//! byte, then the client-message framer `ClientMessages` (`new`, `push`,
//! `take_complete`), fed in arbitrary chunks as WebSocket messages arrive.
//!
//! Input: byte 0 picks the relay's message limit (64 B to 1 MiB), byte 1
//! seeds the chunk sizes, the rest is what the browser sends.
//!
//! What must hold: no input panics or hangs; the framer only ever hands on
//! whole messages, so what it hands on is a prefix of what came in; how the
//! bytes were chunked changes nothing (the same bytes handed on, the same
//! input counts, an error at the same message); and without an error what
//! is left over, a partial message, is shorter than the limit.
#![no_main]

use std::sync::OnceLock;

use deskgate_media::rfb::{ClientMessages, InputCount, accept_browser};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::{Builder, Runtime};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Builder::new_current_thread().build().expect("a runtime"))
}

/// Frames `stream` pushed in chunks of the sizes `sizes` yields, taking
/// whole messages after each push as the relay (media/src/relay.rs) does;
/// stops at the first error. Returns the bytes handed on, the input, and whether it
/// ended in an error.
fn frame(
    stream: &[u8],
    max: usize,
    mut sizes: impl FnMut() -> usize,
) -> (Vec<u8>, InputCount, bool) {
    let mut framer = ClientMessages::new(max);
    let mut out = Vec::new();
    let mut total = InputCount::default();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(sizes().min(rest.len()));
        rest = after;
        framer.push(chunk);
        // As the relay does: until nothing whole is left.
        loop {
            match framer.take_complete() {
                Ok((whole, _)) if whole.is_empty() => break,
                Ok((whole, input)) => {
                    out.extend_from_slice(&whole);
                    total.keys += input.keys;
                    total.pointer += input.pointer;
                }
                Err(_) => return (out, total, true),
            }
        }
    }
    (out, total, false)
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, browser @ ..] = data else {
        return;
    };
    let max = 64usize << (limit % 15);

    // The handshake reads from the front of the browser's bytes.
    let mut from: &[u8] = browser;
    let agreed = runtime().block_on(accept_browser(&mut from, &mut tokio::io::sink()));
    let messages = match agreed {
        // ClientInit's shared flag is one byte and not a framed message.
        Ok(_) => from.get(1..).unwrap_or_default(),
        // A refused handshake still leaves the framer to fuzz: the bytes
        // after the version string, as if the handshake had passed.
        Err(_) => browser.get(13..).unwrap_or_default(),
    };

    let (whole, whole_input, whole_failed) = frame(messages, max, || usize::MAX);
    assert!(
        messages.starts_with(&whole),
        "only whole messages, in order"
    );
    let mut state = u32::from(*seed) | 1;
    let (chunked, chunked_input, chunked_failed) = frame(messages, max, || {
        // xorshift: chunks of 1 to 64 bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 64) as usize + 1
    });
    assert_eq!(
        chunked_failed, whole_failed,
        "chunking changed whether it fails"
    );
    assert_eq!(chunked, whole, "chunking changed what is handed on");
    assert_eq!(
        chunked_input, whole_input,
        "chunking changed the input counts"
    );
    if !whole_failed {
        assert!(
            messages.len() - whole.len() < max,
            "a partial message over the limit"
        );
    }
});
