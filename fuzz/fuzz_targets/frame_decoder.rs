//! Feeds arbitrary bytes to the client's answer decoder: it must never panic or over-allocate.
#![no_main]

use kiln::protocol::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(4096);
    for piece in data.chunks(7) {
        decoder.push(piece);
        loop {
            match decoder.next_item() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
