//! KILN/1 answers: the status line and the frames that follow it.
//!
//! `Frame::encode_head` and `Status::encode` are what the server writes; `FrameDecoder` is the client's
//! incremental reader, which turns bytes in any chunking back into a `Status` then `Frame`s.

use std::fmt;

use thiserror::Error;

use super::{ErrorCode, PROTOCOL, quote_for_message};

/// Longest status or frame header line a decoder accepts.
pub const MAX_LINE: usize = 4096;

/// The channel a frame belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Server description, `key: value` lines.
    Info,
    /// The compiler's own text.
    Diagnostics,
    /// One problem a line: `LINE:COL: SEVERITY: MESSAGE`.
    Problems,
    /// The program's standard output.
    Stdout,
    /// The program's standard error.
    Stderr,
    /// A compiled program; attribute `name=FILE`.
    Artifact,
    /// Server counters, `key: value` lines.
    Stats,
    /// The end of the answer, `key: value` lines with `verdict`.
    Result,
    /// A channel this side does not know; clients ignore it.
    Other(String),
}

impl Channel {
    /// The word on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Channel::Info => "info",
            Channel::Diagnostics => "diagnostics",
            Channel::Problems => "problems",
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Artifact => "artifact",
            Channel::Stats => "stats",
            Channel::Result => "result",
            Channel::Other(name) => name,
        }
    }

    /// Parses the word on the wire; unknown words become `Other`.
    pub fn parse(word: &str) -> Channel {
        match word {
            "info" => Channel::Info,
            "diagnostics" => Channel::Diagnostics,
            "problems" => Channel::Problems,
            "stdout" => Channel::Stdout,
            "stderr" => Channel::Stderr,
            "artifact" => Channel::Artifact,
            "stats" => Channel::Stats,
            "result" => Channel::Result,
            other => Channel::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Which channel.
    pub channel: Channel,
    /// `KEY=VALUE` attributes from the frame line, in order.
    pub attrs: Vec<(String, String)>,
    /// The frame's bytes.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame without attributes.
    pub fn new(channel: Channel, body: impl Into<Vec<u8>>) -> Self {
        Frame {
            channel,
            attrs: Vec::new(),
            body: body.into(),
        }
    }

    /// The value of an attribute.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The frame line for a body of `length` bytes (`stdout 13\n`), so a server can write a large
    /// body without copying it. Attribute keys and values lose spaces, `=` and control characters,
    /// which the frame line cannot carry.
    pub fn encode_head(channel: &Channel, length: usize, attrs: &[(&str, &str)]) -> Vec<u8> {
        let clean = |text: &str| -> String {
            text.chars()
                .filter(|c| !c.is_whitespace() && !c.is_control() && *c != '=')
                .collect()
        };
        let mut line = format!("{channel} {length}");
        for (key, value) in attrs {
            line.push(' ');
            line.push_str(&clean(key));
            line.push('=');
            line.push_str(&clean(value));
        }
        line.push('\n');
        line.into_bytes()
    }

    /// The whole frame: line and body.
    pub fn encode(&self) -> Vec<u8> {
        let attrs: Vec<(&str, &str)> = self
            .attrs
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let mut out = Frame::encode_head(&self.channel, self.body.len(), &attrs);
        out.extend_from_slice(&self.body);
        out
    }
}

/// The status line that starts every answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The request was accepted; frames follow.
    Ok {
        /// The server's id for this job, as it appears in its log.
        job_id: String,
    },
    /// The request was refused; the server closes after this line.
    Error {
        /// The machine-readable code.
        code: ErrorCode,
        /// One line a person can act on.
        message: String,
    },
}

impl Status {
    /// The status line, with its LF. Line breaks in a message become spaces.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Status::Ok { job_id } => format!("{PROTOCOL} OK {job_id}\n").into_bytes(),
            Status::Error { code, message } => {
                let message: String = message
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                format!("{PROTOCOL} ERROR {code} {message}\n").into_bytes()
            }
        }
    }

    /// An error status.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Status {
        Status::Error {
            code,
            message: message.into(),
        }
    }
}

/// Why an answer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The status line is not `KILN/1 OK ...` or `KILN/1 ERROR ...`.
    #[error("the server's status line is not KILN/1: `{0}`")]
    BadStatus(String),
    /// A frame line is not `CHANNEL LENGTH [KEY=VALUE...]`.
    #[error("malformed frame line `{0}`")]
    BadFrame(String),
    /// A status or frame line is longer than [`MAX_LINE`].
    #[error("a status or frame line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A frame announces more bytes than the decoder accepts.
    #[error("a {channel} frame announces {length} bytes, over this client's limit of {limit}")]
    FrameTooLarge {
        channel: String,
        length: u64,
        limit: u64,
    },
}

/// Something decoded from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The status line.
    Status(Status),
    /// A whole frame.
    Frame(Frame),
}

#[derive(Debug)]
enum DecodeState {
    Status,
    FrameLine,
    Body { frame: Frame, remaining: usize },
}

/// Decodes an answer from bytes fed in any chunking.
#[derive(Debug)]
pub struct FrameDecoder {
    state: DecodeState,
    pending: Vec<u8>,
    max_frame: u64,
}

impl FrameDecoder {
    /// A decoder that refuses frames over `max_frame` bytes.
    pub fn new(max_frame: u64) -> Self {
        FrameDecoder {
            state: DecodeState::Status,
            pending: Vec::new(),
            max_frame,
        }
    }

    /// Adds bytes; call [`FrameDecoder::next_item`] until it yields `None`.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Whether bytes are buffered that do not yet form an item (the answer was cut short if the
    /// connection ends now).
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty() || matches!(self.state, DecodeState::Body { .. })
    }

    /// The next whole item, if the bytes so far hold one.
    ///
    /// # Errors
    /// A [`FrameError`] when the bytes do not follow KILN/1; the decoder is then useless.
    pub fn next_item(&mut self) -> Result<Option<Decoded>, FrameError> {
        loop {
            match &mut self.state {
                DecodeState::Status => {
                    let Some(line) = self.take_line()? else {
                        return Ok(None);
                    };
                    let status = parse_status(&line)?;
                    self.state = DecodeState::FrameLine;
                    return Ok(Some(Decoded::Status(status)));
                }
                DecodeState::FrameLine => {
                    let Some(line) = self.take_line()? else {
                        return Ok(None);
                    };
                    let (frame, length) = parse_frame_line(&line, self.max_frame)?;
                    self.state = DecodeState::Body {
                        frame,
                        remaining: length,
                    };
                }
                DecodeState::Body { frame, remaining } => {
                    let take = (*remaining).min(self.pending.len());
                    frame.body.extend_from_slice(&self.pending[..take]);
                    self.pending.drain(..take);
                    *remaining -= take;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    let DecodeState::Body { frame, .. } =
                        std::mem::replace(&mut self.state, DecodeState::FrameLine)
                    else {
                        unreachable!("matched Body above");
                    };
                    return Ok(Some(Decoded::Frame(frame)));
                }
            }
        }
    }

    fn take_line(&mut self) -> Result<Option<String>, FrameError> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(index) => {
                let mut line: Vec<u8> = self.pending.drain(..=index).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            None if self.pending.len() > MAX_LINE => Err(FrameError::LineTooLong),
            None => Ok(None),
        }
    }
}

fn parse_status(line: &str) -> Result<Status, FrameError> {
    let bad = || FrameError::BadStatus(quote_for_message(line.as_bytes(), 80));
    let rest = line
        .strip_prefix(PROTOCOL)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(bad)?;
    if let Some(job_id) = rest.strip_prefix("OK ") {
        return Ok(Status::Ok {
            job_id: job_id.trim().to_owned(),
        });
    }
    let rest = rest.strip_prefix("ERROR ").ok_or_else(bad)?;
    let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let code = ErrorCode::parse(code).unwrap_or(ErrorCode::Internal);
    Ok(Status::Error {
        code,
        message: message.to_owned(),
    })
}

fn parse_frame_line(line: &str, max_frame: u64) -> Result<(Frame, usize), FrameError> {
    let bad = || FrameError::BadFrame(quote_for_message(line.as_bytes(), 80));
    let mut words = line.split(' ').filter(|word| !word.is_empty());
    let channel = words.next().ok_or_else(bad)?;
    let length: u64 = words.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    if length > max_frame {
        return Err(FrameError::FrameTooLarge {
            channel: channel.to_owned(),
            length,
            limit: max_frame,
        });
    }
    let attrs = words
        .map(|word| {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    let frame = Frame {
        channel: Channel::parse(channel),
        attrs,
        body: Vec::new(),
    };
    Ok((frame, usize::try_from(length).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(bytes: &[u8], chunk: usize) -> Vec<Decoded> {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            decoder.push(piece);
            while let Some(item) = decoder.next_item().expect("valid") {
                out.push(item);
            }
        }
        assert!(!decoder.has_partial());
        out
    }

    #[test]
    fn decodes_the_example_answer() {
        let raw = b"KILN/1 OK 1f2e-17\nstdout 13\nhello, world\nresult 20\nverdict: ok\nexit";
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(raw);
        assert_eq!(
            decoder.next_item().expect("ok"),
            Some(Decoded::Status(Status::Ok {
                job_id: "1f2e-17".into()
            }))
        );
        let Some(Decoded::Frame(frame)) = decoder.next_item().expect("ok") else {
            panic!("expected a frame")
        };
        assert_eq!(frame.channel, Channel::Stdout);
        assert_eq!(frame.body, b"hello, world\n");
        assert_eq!(decoder.next_item().expect("ok"), None);
        assert!(decoder.has_partial());
    }

    #[test]
    fn decodes_errors_and_unknown_channels() {
        let raw = b"KILN/1 ERROR busy all 2 workers are taken; try again\n";
        let items = decode_all(raw, 3);
        assert_eq!(
            items,
            vec![Decoded::Status(Status::error(
                ErrorCode::Busy,
                "all 2 workers are taken; try again"
            ))]
        );
        let raw = b"KILN/1 OK x\nfuture 2 k=v\nhiartifact 1 name=main\n\x7f";
        let items = decode_all(raw, 1);
        let Decoded::Frame(future) = &items[1] else {
            panic!()
        };
        assert_eq!(future.channel, Channel::Other("future".into()));
        assert_eq!(future.attr("k"), Some("v"));
        let Decoded::Frame(artifact) = &items[2] else {
            panic!()
        };
        assert_eq!(artifact.attr("name"), Some("main"));
    }

    #[test]
    fn refuses_garbage_and_huge_frames() {
        let mut decoder = FrameDecoder::new(10);
        decoder.push(b"HTTP/1.1 200 OK\n");
        assert!(matches!(decoder.next_item(), Err(FrameError::BadStatus(_))));
        let mut decoder = FrameDecoder::new(10);
        decoder.push(b"KILN/1 OK a\nstdout 11\n");
        decoder.next_item().expect("status");
        assert!(matches!(
            decoder.next_item(),
            Err(FrameError::FrameTooLarge { length: 11, .. })
        ));
    }

    #[test]
    fn status_lines_stay_one_line() {
        let status = Status::error(ErrorCode::BadRequest, "two\nlines");
        assert_eq!(status.encode(), b"KILN/1 ERROR bad-request two lines\n");
    }

    fn arb_channel() -> impl Strategy<Value = Channel> {
        prop_oneof![
            Just(Channel::Info),
            Just(Channel::Diagnostics),
            Just(Channel::Problems),
            Just(Channel::Stdout),
            Just(Channel::Stderr),
            Just(Channel::Artifact),
            Just(Channel::Stats),
            Just(Channel::Result),
            "[a-z]{1,10}".prop_map(|name| Channel::parse(&name)),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_chunking(
            frames in prop::collection::vec(
                (arb_channel(), prop::collection::vec(("[a-z]{1,5}", "[a-zA-Z0-9._-]{0,8}"), 0..3),
                 prop::collection::vec(any::<u8>(), 0..300)),
                0..6),
            chunk in 1usize..50,
        ) {
            let mut raw = Status::Ok { job_id: "j-1".into() }.encode();
            let frames: Vec<Frame> = frames
                .into_iter()
                .map(|(channel, attrs, body)| Frame { channel, attrs, body })
                .collect();
            for frame in &frames {
                raw.extend_from_slice(&frame.encode());
            }
            let items = decode_all(&raw, chunk);
            prop_assert_eq!(&items[0], &Decoded::Status(Status::Ok { job_id: "j-1".into() }));
            let decoded: Vec<Frame> = items[1..]
                .iter()
                .map(|item| match item {
                    Decoded::Frame(frame) => frame.clone(),
                    Decoded::Status(_) => panic!("second status"),
                })
                .collect();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn error_status_round_trips(code in prop::sample::select(ErrorCode::ALL.to_vec()),
                                    message in "[ -~]{0,100}") {
            let status = Status::error(code, message.clone());
            let mut decoder = FrameDecoder::new(10);
            decoder.push(&status.encode());
            prop_assert_eq!(decoder.next_item()?, Some(Decoded::Status(status)));
        }

        #[test]
        fn arbitrary_answers_never_panic(raw in prop::collection::vec(any::<u8>(), 0..1000)) {
            let mut decoder = FrameDecoder::new(100);
            decoder.push(&raw);
            while let Ok(Some(_)) = decoder.next_item() {}
        }
    }
}
