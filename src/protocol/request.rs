//! KILN/1 requests: an incremental parser for the server and an encoder for clients.
//!
//! The parser is fed bytes as they arrive and rejects a request at the first byte that breaks a rule
//! or a limit, so a hostile peer never makes the server buffer more than the limits allow. It does no
//! I/O and knows nothing of time: the server owns the deadlines.

use thiserror::Error;

use super::{
    DEFAULT_MAX_SOURCE, DEFAULT_MAX_STDIN, ErrorCode, Intent, MAX_HEAD_BYTES, MAX_HEAD_LINES,
    PROTOCOL, quote_for_message,
};

/// The limits a parser enforces while bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Bytes of the intent line and headers together, line ends included.
    pub max_head_bytes: usize,
    /// Lines of the intent line and headers together, the blank line excluded.
    pub max_head_lines: usize,
    /// Largest accepted `Source-Length`.
    pub max_source: u64,
    /// Largest accepted `Stdin-Length`.
    pub max_stdin: u64,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_head_lines: MAX_HEAD_LINES,
            max_source: DEFAULT_MAX_SOURCE,
            max_stdin: DEFAULT_MAX_STDIN,
        }
    }
}

/// Why a request was rejected; `code()` gives the wire error code and `Display` the one-line message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The first line is not a KILN request at all (garbage, HTTP, TLS...).
    #[error("expected a request line like `KILN/1 RUN python`, got `{0}`")]
    NotKiln(String),
    /// An HTTP request reached the KILN port.
    #[error(
        "this is a Kiln server speaking KILN/1, not HTTP; send `KILN/1 PING` (see docs/protocol.md)"
    )]
    Http,
    /// The request names a protocol version this server does not speak.
    #[error("unsupported protocol version `{0}`; this server speaks KILN/1")]
    Version(String),
    /// The intent word is not one the protocol defines.
    #[error(
        "unknown intent `{0}`; expected one of PING, INFO, STATS, CHECK, RUN, BUILD, CLUSTER, CLUSTER-STATUS, CLUSTER-LOG"
    )]
    UnknownIntent(String),
    /// CHECK, RUN or BUILD without a language.
    #[error("{0} needs a language, as in `KILN/1 {0} python`")]
    MissingLanguage(Intent),
    /// PING, INFO or STATS with a language or a body.
    #[error("{0} takes no {1}")]
    Unexpected(Intent, &'static str),
    /// Too many words on the intent line.
    #[error("the request line has {0} words but takes at most 3 (`KILN/1 INTENT LANGUAGE`)")]
    IntentWords(usize),
    /// A language id with characters other than `a-z0-9_+-`.
    #[error("language id `{0}` may only hold a-z, 0-9, `_`, `+` and `-`")]
    BadLanguage(String),
    /// A language id over the length limit.
    #[error("language id is {0} characters long but may be at most 32")]
    LanguageTooLong(usize),
    /// The intent line and headers exceed the byte limit.
    #[error("the request header is over {limit} bytes (limit {limit}, got at least {got})")]
    HeadTooLong { limit: usize, got: usize },
    /// The intent line and headers exceed the line limit.
    #[error("the request header has more than {limit} lines (limit {limit})")]
    TooManyLines { limit: usize },
    /// A header line is not valid UTF-8.
    #[error("header line {line} is not valid UTF-8")]
    NotUtf8 { line: usize },
    /// A header line holds a control character.
    #[error("header line {line} holds a control character (byte 0x{byte:02x})")]
    ControlChar { line: usize, byte: u8 },
    /// A header line has no `NAME: VALUE` shape.
    #[error("header line {line} should look like `Name: value`, got `{text}`")]
    MalformedHeader { line: usize, text: String },
    /// A numeric header holds something other than a whole number.
    #[error("{name} must be a whole number, got `{value}`")]
    NotANumber { name: &'static str, value: String },
    /// A header that may appear once appears twice.
    #[error("{0} appears more than once")]
    Duplicate(&'static str),
    /// A language request without `Source-Length`.
    #[error("{0} needs a Source-Length header giving the bytes of source that follow")]
    MissingSourceLength(Intent),
    /// `Stdin-Length` on something other than RUN.
    #[error("Stdin-Length only applies to RUN, not {0}")]
    StdinNotAllowed(Intent),
    /// A length over the server's limit.
    #[error("{name} is {value} but this server takes at most {limit} bytes")]
    TooLarge {
        name: &'static str,
        value: String,
        limit: u64,
    },
    /// The source holds a NUL byte.
    #[error("the source holds a NUL byte at offset {offset}; send text source")]
    NulInSource { offset: u64 },
    /// Bytes arrived after the announced body.
    #[error(
        "the body is longer than announced: {extra} byte(s) after Source-Length + Stdin-Length = {announced}"
    )]
    BodyTooLong { announced: u64, extra: usize },
}

impl ParseError {
    /// The wire error code for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::TooLarge { .. }
            | ParseError::HeadTooLong { .. }
            | ParseError::TooManyLines { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// The parsed intent line and headers of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// What the client asks for; `None` only in a `Default` value.
    pub intent: Option<Intent>,
    /// The language id, lower-cased, for CHECK, RUN and BUILD.
    pub language: Option<String>,
    /// Bytes of source that follow the headers.
    pub source_length: u64,
    /// Bytes of stdin that follow the source.
    pub stdin_length: u64,
    /// The `Token` header, if any.
    pub token: Option<String>,
    /// The `Time-Limit-Ms` header, before the server clamps it.
    pub time_limit_ms: Option<u64>,
    /// The `Memory-Limit-Mib` header, before the server clamps it.
    pub memory_limit_mib: Option<u64>,
    /// The program's arguments from repeated `Arg` headers, in order.
    pub args: Vec<String>,
    /// The `File-Name` header: the name the user knows the file by.
    pub file_name: Option<String>,
    /// Every other header, names lower-cased, in arrival order (cluster headers live here).
    pub extra: Vec<(String, String)>,
}

impl RequestHead {
    /// A head for `intent` with no language and no headers.
    pub fn new(intent: Intent) -> Self {
        RequestHead {
            intent: Some(intent),
            ..RequestHead::default()
        }
    }

    /// The intent; `Ping` for a `Default` head that never had one.
    pub fn intent(&self) -> Intent {
        self.intent.unwrap_or(Intent::Ping)
    }

    /// The value of an extra header, by case-insensitive name.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A whole request: head, source and stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The intent line and headers.
    pub head: RequestHead,
    /// The program's source.
    pub source: Vec<u8>,
    /// The bytes given to the program as standard input.
    pub stdin: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
    Done,
}

/// Where a parser stands after the bytes fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More header bytes are needed.
    NeedHead,
    /// The head is complete; more body bytes are needed.
    NeedBody,
    /// The request is complete.
    Complete,
}

/// Parses one request from bytes fed in any chunking.
#[derive(Debug)]
pub struct RequestParser {
    limits: ParseLimits,
    phase: Phase,
    line: Vec<u8>,
    head_bytes: usize,
    head_lines: usize,
    head: RequestHead,
    seen: SeenHeaders,
    source: Vec<u8>,
    stdin: Vec<u8>,
}

#[derive(Debug, Default)]
struct SeenHeaders {
    source_length: bool,
    stdin_length: bool,
    token: bool,
    time_limit: bool,
    memory_limit: bool,
    file_name: bool,
}

impl RequestParser {
    /// A parser that enforces `limits`.
    pub fn new(limits: ParseLimits) -> Self {
        RequestParser {
            limits,
            phase: Phase::Head,
            line: Vec::new(),
            head_bytes: 0,
            head_lines: 0,
            head: RequestHead::default(),
            seen: SeenHeaders::default(),
            source: Vec::new(),
            stdin: Vec::new(),
        }
    }

    /// Feeds bytes; returns how many were used. Bytes left unused mean the request is complete and
    /// the peer sent more than it announced (see [`RequestParser::check_no_more`]).
    ///
    /// # Errors
    /// The first rule or limit the bytes break, as a [`ParseError`]; the parser must not be fed again.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<usize, ParseError> {
        let total = input.len();
        while !input.is_empty() {
            match self.phase {
                Phase::Head => {
                    let used = self.feed_head(input)?;
                    input = &input[used..];
                }
                Phase::Body => {
                    let used = self.feed_body(input)?;
                    input = &input[used..];
                }
                Phase::Done => break,
            }
        }
        Ok(total - input.len())
    }

    /// Where the parser stands.
    pub fn progress(&self) -> Progress {
        match self.phase {
            Phase::Head => Progress::NeedHead,
            Phase::Body => Progress::NeedBody,
            Phase::Done => Progress::Complete,
        }
    }

    /// The head, once it is complete.
    pub fn head(&self) -> Option<&RequestHead> {
        (self.phase != Phase::Head).then_some(&self.head)
    }

    /// The error to answer when `extra` bytes follow a complete request.
    pub fn check_no_more(&self, extra: usize) -> Result<(), ParseError> {
        if extra == 0 {
            Ok(())
        } else {
            Err(ParseError::BodyTooLong {
                announced: self.head.source_length + self.head.stdin_length,
                extra,
            })
        }
    }

    /// The whole request, once it is complete.
    pub fn into_request(self) -> Option<Request> {
        (self.phase == Phase::Done).then_some(Request {
            head: self.head,
            source: self.source,
            stdin: self.stdin,
        })
    }

    fn feed_head(&mut self, input: &[u8]) -> Result<usize, ParseError> {
        let newline = input.iter().position(|&byte| byte == b'\n');
        let take = newline.map_or(input.len(), |index| index + 1);
        let got = self.head_bytes + self.line.len() + take;
        // The blank line that ends the head does not count against the limit.
        let is_blank_end = newline.is_some() && {
            let mut line = self.line.clone();
            line.extend_from_slice(&input[..take]);
            line == b"\n" || line == b"\r\n"
        };
        if got > self.limits.max_head_bytes && !is_blank_end {
            return Err(ParseError::HeadTooLong {
                limit: self.limits.max_head_bytes,
                got,
            });
        }
        self.line.extend_from_slice(&input[..take]);
        if newline.is_none() {
            // Reject garbage before its line ends, so a peer that never sends LF is told at once.
            if self.head_lines == 0 {
                self.check_request_line_prefix()?;
            }
            return Ok(take);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() && self.head_lines > 0 {
            self.finish_head()?;
            return Ok(take);
        }
        self.head_bytes += take;
        self.head_lines += 1;
        if self.head_lines > self.limits.max_head_lines {
            return Err(ParseError::TooManyLines {
                limit: self.limits.max_head_lines,
            });
        }
        if self.head_lines == 1 {
            self.parse_request_line(&line)?;
        } else {
            self.parse_header(&line)?;
        }
        Ok(take)
    }

    fn check_request_line_prefix(&self) -> Result<(), ParseError> {
        let line = &self.line;
        let prefix = b"KILN/";
        let n = line.len().min(prefix.len());
        if line[..n] != prefix[..n] {
            return Err(not_kiln(line));
        }
        Ok(())
    }

    fn parse_request_line(&mut self, line: &[u8]) -> Result<(), ParseError> {
        let text = std::str::from_utf8(line).map_err(|_| not_kiln(line))?;
        let words: Vec<&str> = text.split(' ').filter(|word| !word.is_empty()).collect();
        let Some(&version) = words.first() else {
            return Err(not_kiln(line));
        };
        if !version.starts_with("KILN/") {
            return Err(not_kiln(line));
        }
        if version != PROTOCOL {
            return Err(ParseError::Version(quote_for_message(
                version.as_bytes(),
                40,
            )));
        }
        if words.len() > 3 {
            return Err(ParseError::IntentWords(words.len()));
        }
        let Some(&word) = words.get(1) else {
            return Err(ParseError::UnknownIntent(String::new()));
        };
        let intent = Intent::parse(word)
            .ok_or_else(|| ParseError::UnknownIntent(quote_for_message(word.as_bytes(), 40)))?;
        self.head.intent = Some(intent);
        match (intent.takes_language(), words.get(2)) {
            (true, None) => return Err(ParseError::MissingLanguage(intent)),
            (false, Some(_)) => return Err(ParseError::Unexpected(intent, "language")),
            (true, Some(language)) => {
                let language = language.to_ascii_lowercase();
                if language.len() > 32 {
                    return Err(ParseError::LanguageTooLong(language.len()));
                }
                let valid = language
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b));
                if !valid {
                    return Err(ParseError::BadLanguage(quote_for_message(
                        language.as_bytes(),
                        40,
                    )));
                }
                self.head.language = Some(language);
            }
            (false, None) => {}
        }
        Ok(())
    }

    fn parse_header(&mut self, line: &[u8]) -> Result<(), ParseError> {
        let number = self.head_lines;
        let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8 { line: number })?;
        if let Some(byte) = text.bytes().find(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(ParseError::ControlChar { line: number, byte });
        }
        let malformed = || ParseError::MalformedHeader {
            line: number,
            text: quote_for_message(line, 60),
        };
        let (name, value) = text.split_once(':').ok_or_else(malformed)?;
        let valid_name =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_name {
            return Err(malformed());
        }
        let value = value.trim_matches([' ', '\t']);
        let name = name.to_ascii_lowercase();
        let head = &mut self.head;
        let seen = &mut self.seen;
        match name.as_str() {
            "source-length" => {
                once(&mut seen.source_length, "Source-Length")?;
                head.source_length = parse_length("Source-Length", value, self.limits.max_source)?;
            }
            "stdin-length" => {
                once(&mut seen.stdin_length, "Stdin-Length")?;
                head.stdin_length = parse_length("Stdin-Length", value, self.limits.max_stdin)?;
            }
            "token" => {
                once(&mut seen.token, "Token")?;
                head.token = Some(value.to_owned());
            }
            "time-limit-ms" => {
                once(&mut seen.time_limit, "Time-Limit-Ms")?;
                head.time_limit_ms = Some(parse_number("Time-Limit-Ms", value)?);
            }
            "memory-limit-mib" => {
                once(&mut seen.memory_limit, "Memory-Limit-Mib")?;
                head.memory_limit_mib = Some(parse_number("Memory-Limit-Mib", value)?);
            }
            "arg" => head.args.push(value.to_owned()),
            "file-name" => {
                once(&mut seen.file_name, "File-Name")?;
                head.file_name = Some(value.to_owned());
            }
            _ => head.extra.push((name, value.to_owned())),
        }
        Ok(())
    }

    fn finish_head(&mut self) -> Result<(), ParseError> {
        let intent = self.head.intent();
        if intent.takes_language() {
            if !self.seen.source_length {
                return Err(ParseError::MissingSourceLength(intent));
            }
            if intent != Intent::Run && self.head.stdin_length > 0 {
                return Err(ParseError::StdinNotAllowed(intent));
            }
        } else if self.head.source_length > 0 || self.head.stdin_length > 0 {
            return Err(ParseError::Unexpected(intent, "body"));
        }
        self.phase = if self.head.source_length + self.head.stdin_length == 0 {
            Phase::Done
        } else {
            Phase::Body
        };
        Ok(())
    }

    fn feed_body(&mut self, input: &[u8]) -> Result<usize, ParseError> {
        let mut used = 0;
        let source_missing = self.head.source_length - self.source.len() as u64;
        if source_missing > 0 {
            let take = input
                .len()
                .min(usize::try_from(source_missing).unwrap_or(usize::MAX));
            let chunk = &input[..take];
            if let Some(index) = chunk.iter().position(|&b| b == 0) {
                return Err(ParseError::NulInSource {
                    offset: self.source.len() as u64 + index as u64,
                });
            }
            self.source.extend_from_slice(chunk);
            used += take;
        }
        let rest = &input[used..];
        let stdin_missing = self.head.stdin_length - self.stdin.len() as u64;
        let take = rest
            .len()
            .min(usize::try_from(stdin_missing).unwrap_or(usize::MAX));
        self.stdin.extend_from_slice(&rest[..take]);
        used += take;
        if self.source.len() as u64 == self.head.source_length
            && self.stdin.len() as u64 == self.head.stdin_length
        {
            self.phase = Phase::Done;
        }
        Ok(used)
    }
}

fn not_kiln(line: &[u8]) -> ParseError {
    let http_methods: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    if http_methods.iter().any(|method| line.starts_with(method)) {
        ParseError::Http
    } else {
        ParseError::NotKiln(quote_for_message(line, 40))
    }
}

fn once(seen: &mut bool, name: &'static str) -> Result<(), ParseError> {
    if std::mem::replace(seen, true) {
        Err(ParseError::Duplicate(name))
    } else {
        Ok(())
    }
}

fn parse_number(name: &'static str, value: &str) -> Result<u64, ParseError> {
    let not_a_number = || ParseError::NotANumber {
        name,
        value: quote_for_message(value.as_bytes(), 30),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    // All digits but too big for u64: a number, just an absurd one; clamp it.
    Ok(value.parse::<u64>().unwrap_or(u64::MAX))
}

fn parse_length(name: &'static str, value: &str, limit: u64) -> Result<u64, ParseError> {
    let number = parse_number(name, value)?;
    if number > limit {
        return Err(ParseError::TooLarge {
            name,
            value: quote_for_message(value.as_bytes(), 30),
            limit,
        });
    }
    Ok(number)
}

/// Encodes the intent line and headers of a request; the caller sends source and stdin after it.
///
/// Values holding a line break are cut at it, since the wire format has no way to carry one.
pub fn encode_request_head(head: &RequestHead) -> Vec<u8> {
    fn header(out: &mut String, name: &str, value: &str) {
        let value = value.split(['\n', '\r']).next().unwrap_or_default();
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
    }
    let mut out = format!("{PROTOCOL} {}", head.intent());
    if let Some(language) = &head.language {
        out.push(' ');
        out.push_str(language);
    }
    out.push('\n');
    if let Some(token) = &head.token {
        header(&mut out, "Token", token);
    }
    if head.intent().takes_language() {
        header(&mut out, "Source-Length", &head.source_length.to_string());
    }
    if head.stdin_length > 0 {
        header(&mut out, "Stdin-Length", &head.stdin_length.to_string());
    }
    if let Some(ms) = head.time_limit_ms {
        header(&mut out, "Time-Limit-Ms", &ms.to_string());
    }
    if let Some(mib) = head.memory_limit_mib {
        header(&mut out, "Memory-Limit-Mib", &mib.to_string());
    }
    if let Some(name) = &head.file_name {
        header(&mut out, "File-Name", name);
    }
    for arg in &head.args {
        header(&mut out, "Arg", arg);
    }
    for (name, value) in &head.extra {
        header(&mut out, name, value);
    }
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<(Request, usize), ParseError> {
        let mut parser = RequestParser::new(ParseLimits::default());
        let used = parser.feed(bytes)?;
        assert_eq!(parser.progress(), Progress::Complete, "incomplete");
        Ok((parser.into_request().expect("complete"), bytes.len() - used))
    }

    fn parse_err(bytes: &[u8]) -> ParseError {
        let mut parser = RequestParser::new(ParseLimits::default());
        parser.feed(bytes).expect_err("should be rejected")
    }

    #[test]
    fn parses_the_example_from_the_spec_with_crlf() {
        let raw = b"KILN/1 RUN python\r\nToken: 7f3a\r\nSource-Length: 22\r\n\r\nprint(\"hello, world\")\n";
        let (request, extra) = parse_all(raw).expect("valid");
        assert_eq!(extra, 0);
        assert_eq!(request.head.intent, Some(Intent::Run));
        assert_eq!(request.head.language.as_deref(), Some("python"));
        assert_eq!(request.head.token.as_deref(), Some("7f3a"));
        assert_eq!(request.source, b"print(\"hello, world\")\n");
    }

    #[test]
    fn parses_ping_and_headers_case_insensitively() {
        let (request, _) = parse_all(b"KILN/1 PING\n\n").expect("valid");
        assert_eq!(request.head.intent, Some(Intent::Ping));
        let raw = b"KILN/1 run Python\nsOURCE-lENGTH:3\nArg: a b\nArg: c\nX-Custom: 1\n\nabc";
        let (request, _) = parse_all(raw).expect("valid");
        assert_eq!(request.head.language.as_deref(), Some("python"));
        assert_eq!(request.head.args, ["a b", "c"]);
        assert_eq!(request.head.extra("x-custom"), Some("1"));
    }

    #[test]
    fn a_blank_line_before_the_request_line_is_garbage_not_a_hang() {
        assert!(matches!(parse_err(b"\n"), ParseError::NotKiln(_)));
    }

    #[test]
    fn rejects_each_bad_input_with_its_code() {
        let cases: Vec<(&[u8], ErrorCode, &str)> = vec![
            (
                b"\x16\x03\x01\x02\x00",
                ErrorCode::BadRequest,
                "expected a request line",
            ),
            (b"GET / HTTP/1.1\r\n", ErrorCode::BadRequest, "not HTTP"),
            (b"KILN/2 PING\n", ErrorCode::BadRequest, "KILN/2"),
            (
                b"KILN PING\n",
                ErrorCode::BadRequest,
                "expected a request line",
            ),
            (
                b"KILN/1 FETCH\n",
                ErrorCode::BadRequest,
                "unknown intent `FETCH`",
            ),
            (b"KILN/1 RUN\n", ErrorCode::BadRequest, "needs a language"),
            (
                b"KILN/1 PING python\n",
                ErrorCode::BadRequest,
                "takes no language",
            ),
            (b"KILN/1 RUN py;rm\n", ErrorCode::BadRequest, "language id"),
            (
                b"KILN/1 RUN python\n\n",
                ErrorCode::BadRequest,
                "needs a Source-Length",
            ),
            (
                b"KILN/1 RUN python\nSource-Length: -5\n",
                ErrorCode::BadRequest,
                "got `-5`",
            ),
            (
                b"KILN/1 RUN python\nSource-Length: ten\n",
                ErrorCode::BadRequest,
                "got `ten`",
            ),
            (
                b"KILN/1 RUN python\nSource-Length:\n",
                ErrorCode::BadRequest,
                "whole number",
            ),
            (
                b"KILN/1 RUN python\nSource-Length: 2000000\n",
                ErrorCode::TooLarge,
                "Source-Length is 2000000 but this server takes at most 1048576 bytes",
            ),
            (
                b"KILN/1 RUN python\nSource-Length: 99999999999999999999999\n",
                ErrorCode::TooLarge,
                "at most 1048576",
            ),
            (
                b"KILN/1 RUN python\nSource-Length: 1\nSource-Length: 1\n",
                ErrorCode::BadRequest,
                "more than once",
            ),
            (
                b"KILN/1 CHECK python\nSource-Length: 1\nStdin-Length: 1\n\n",
                ErrorCode::BadRequest,
                "only applies to RUN",
            ),
            (
                b"KILN/1 PING\nSource-Length: 4\n\n",
                ErrorCode::BadRequest,
                "takes no body",
            ),
            (
                b"KILN/1 PING\nno colon here\n",
                ErrorCode::BadRequest,
                "Name: value",
            ),
            (
                b"KILN/1 PING\nX-A: \xff\n",
                ErrorCode::BadRequest,
                "not valid UTF-8",
            ),
            (
                b"KILN/1 PING\nX-A: \x01\n",
                ErrorCode::BadRequest,
                "control character",
            ),
            (
                b"KILN/1 RUN python\nSource-Length: 3\n\na\0b",
                ErrorCode::BadRequest,
                "NUL byte at offset 1",
            ),
        ];
        for (raw, code, needle) in cases {
            let error = parse_err(raw);
            assert_eq!(error.code(), code, "{:?}", String::from_utf8_lossy(raw));
            assert!(
                error.to_string().contains(needle),
                "{error} should contain {needle}"
            );
        }
    }

    #[test]
    fn enforces_head_limits_before_the_line_ends() {
        let mut parser = RequestParser::new(ParseLimits::default());
        parser.feed(b"KILN/1 PING\nX-Long: ").expect("fine so far");
        let error = parser
            .feed(&vec![b'a'; MAX_HEAD_BYTES])
            .expect_err("too long");
        assert_eq!(error.code(), ErrorCode::TooLarge);
        assert!(error.to_string().contains("16384"), "{error}");

        let mut raw = b"KILN/1 PING\n".to_vec();
        for i in 0..MAX_HEAD_LINES {
            raw.extend_from_slice(format!("X-{i}: 1\n").as_bytes());
        }
        let error = parse_err(&raw);
        assert_eq!(error, ParseError::TooManyLines { limit: 64 });
    }

    #[test]
    fn exactly_at_the_limits_is_accepted() {
        let mut raw = b"KILN/1 PING\n".to_vec();
        for i in 0..MAX_HEAD_LINES - 1 {
            raw.extend_from_slice(format!("X-{i:02}: 1\n").as_bytes());
        }
        raw.extend_from_slice(b"\n");
        parse_all(&raw).expect("64 lines are fine");

        let mut raw = b"KILN/1 PING\nX: ".to_vec();
        raw.resize(MAX_HEAD_BYTES - 1, b'a');
        raw.extend_from_slice(b"\n\n");
        parse_all(&raw).expect("16 KiB is fine");
    }

    #[test]
    fn reports_bytes_beyond_the_body() {
        let raw = b"KILN/1 CHECK python\nSource-Length: 2\n\nabEXTRA";
        let mut parser = RequestParser::new(ParseLimits::default());
        let used = parser.feed(raw).expect("valid");
        let error = parser.check_no_more(raw.len() - used).expect_err("extra");
        assert!(error.to_string().contains("5 byte(s)"), "{error}");
    }

    #[test]
    fn stdin_may_hold_any_bytes() {
        let raw = b"KILN/1 RUN python\nSource-Length: 1\nStdin-Length: 3\n\nx\0\xff\n";
        let (request, _) = parse_all(raw).expect("valid");
        assert_eq!(request.stdin, b"\0\xff\n");
    }

    fn arb_head() -> impl Strategy<Value = RequestHead> {
        let text = "[a-zA-Z0-9 ._/=-]{0,20}";
        (
            prop::sample::select(Intent::ALL.to_vec()),
            "[a-z][a-z0-9+_-]{0,8}",
            proptest::option::of(text),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u16>()),
            prop::collection::vec(text, 0..5),
            proptest::option::of("[a-zA-Z0-9._-]{1,20}"),
        )
            .prop_map(|(intent, language, token, time, memory, args, file_name)| {
                RequestHead {
                    intent: Some(intent),
                    language: intent.takes_language().then_some(language),
                    token: token.map(|t| t.trim().to_owned()),
                    time_limit_ms: time.map(u64::from),
                    memory_limit_mib: memory.map(u64::from),
                    args: args.into_iter().map(|a| a.trim().to_owned()).collect(),
                    file_name,
                    ..RequestHead::default()
                }
            })
    }

    proptest! {
        #[test]
        fn encoded_requests_parse_back_in_any_chunking(
            mut head in arb_head(),
            source in "[^\0]{0,200}",
            stdin in prop::collection::vec(any::<u8>(), 0..200),
            chunk in 1usize..64,
        ) {
            let source = source.into_bytes();
            let stdin = if head.intent() == Intent::Run { stdin } else { Vec::new() };
            if head.intent().takes_language() {
                head.source_length = source.len() as u64;
                head.stdin_length = stdin.len() as u64;
            }
            let mut raw = encode_request_head(&head);
            if head.intent().takes_language() {
                raw.extend_from_slice(&source);
                raw.extend_from_slice(&stdin);
            }
            let mut parser = RequestParser::new(ParseLimits::default());
            for piece in raw.chunks(chunk) {
                prop_assert_eq!(parser.feed(piece)?, piece.len());
            }
            let request = parser.into_request().expect("complete");
            prop_assert_eq!(&request.head, &head);
            if head.intent().takes_language() {
                prop_assert_eq!(request.source, source);
                prop_assert_eq!(request.stdin, stdin);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_exceed_limits(
            raw in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            let limits = ParseLimits { max_head_bytes: 256, max_head_lines: 8, max_source: 64, max_stdin: 64 };
            let mut parser = RequestParser::new(limits);
            if parser.feed(&raw).is_ok() {
                if let Some(head) = parser.head() {
                    prop_assert!(head.source_length <= 64 && head.stdin_length <= 64);
                }
            }
        }
    }
}
