//! Feeds arbitrary bytes, in arbitrary chunks, to the KILN/1 request parser: it must never panic,
//! never accept more than its limits, and parse the same way whatever the chunking.
#![no_main]

use kiln::protocol::{ParseLimits, RequestParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let limits = ParseLimits {
        max_head_bytes: 512,
        max_head_lines: 16,
        max_source: 256,
        max_stdin: 256,
    };
    let mut whole = RequestParser::new(limits);
    let whole_result = whole.feed(bytes).map(|_| ());
    let mut chunked = RequestParser::new(limits);
    let mut chunked_result = Ok(());
    for piece in bytes.chunks(usize::from(chunk).max(1)) {
        match chunked.feed(piece) {
            Ok(used) if used < piece.len() => break,
            Ok(_) => {}
            Err(error) => {
                chunked_result = Err(error);
                break;
            }
        }
    }
    assert_eq!(whole_result.is_ok(), chunked_result.is_ok());
    if let Some(head) = whole.head() {
        assert!(head.source_length <= 256 && head.stdin_length <= 256);
    }
    if let Some(request) = whole.into_request() {
        assert!(request.source.len() <= 256);
        assert!(!request.source.contains(&0));
    }
});
