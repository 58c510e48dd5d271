//! Helpers shared by the integration tests: a real server on an ephemeral loopback port, and raw
//! socket exchanges that see exactly the bytes the server sends.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use kiln::protocol::frame::Decoded;
use kiln::protocol::{Frame, FrameDecoder, Status};
use kiln::server::{self, ServerConfig, ServerHandle, Token};

/// A server on 127.0.0.1 with a free port, with `tweak` applied to its configuration.
pub fn server_with(tweak: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
    let mut config = ServerConfig::loopback();
    config.workers = 2;
    config.grace = Duration::from_secs(2);
    tweak(&mut config);
    server::start(config).expect("server starts")
}

/// A default server on loopback, without a token.
pub fn server() -> ServerHandle {
    server_with(|_| {})
}

/// A server that requires `token`.
pub fn server_with_token(token: &str) -> ServerHandle {
    let token = Token::new(token).expect("token");
    server_with(|config| config.token = Some(token))
}

/// A decoded answer.
#[derive(Debug)]
pub struct Answer {
    pub status: Status,
    pub frames: Vec<Frame>,
}

impl Answer {
    /// The body of the first frame on `channel`, as text.
    pub fn text(&self, channel: &str) -> String {
        self.frames
            .iter()
            .filter(|f| f.channel.as_str() == channel)
            .map(|f| String::from_utf8_lossy(&f.body).into_owned())
            .collect()
    }

    /// A field of the `result` frame.
    pub fn result(&self, key: &str) -> Option<String> {
        let body = self.text("result");
        kiln::protocol::Fields::parse(body.as_bytes())
            .get(key)
            .map(str::to_owned)
    }

    /// The error code, if the server refused.
    pub fn error_code(&self) -> Option<&'static str> {
        match &self.status {
            Status::Error { code, .. } => Some(code.as_str()),
            Status::Ok { .. } => None,
        }
    }

    /// The error message, if the server refused.
    pub fn error_message(&self) -> String {
        match &self.status {
            Status::Error { message, .. } => message.clone(),
            Status::Ok { .. } => String::new(),
        }
    }
}

/// Connects with a timeout on reads so a broken server fails the test instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

/// Reads everything until the server closes, and decodes it.
pub fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    decode(&raw)
}

/// Decodes a whole answer; panics on anything malformed.
pub fn decode(raw: &[u8]) -> Answer {
    let mut decoder = FrameDecoder::new(1 << 30);
    decoder.push(raw);
    let mut status = None;
    let mut frames = Vec::new();
    while let Some(item) = decoder.next_item().expect("well-formed answer") {
        match item {
            Decoded::Status(s) => status = Some(s),
            Decoded::Frame(f) => frames.push(f),
        }
    }
    assert!(
        !decoder.has_partial(),
        "answer ends mid-frame: {:?}",
        String::from_utf8_lossy(raw)
    );
    Answer {
        status: status
            .unwrap_or_else(|| panic!("no status line in {:?}", String::from_utf8_lossy(raw))),
        frames,
    }
}

/// Sends `bytes`, half-closes, and reads the whole answer.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut stream = connect(addr);
    stream.write_all(bytes).expect("sends");
    let _ = stream.shutdown(Shutdown::Write);
    read_answer(&mut stream)
}

/// A request with a language and source, plus extra header lines.
pub fn code_request(intent: &str, language: &str, source: &str, headers: &[&str]) -> Vec<u8> {
    let mut out = format!(
        "KILN/1 {intent} {language}\nSource-Length: {}\n",
        source.len()
    );
    for header in headers {
        out.push_str(header);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(source);
    out.into_bytes()
}

/// Processes whose parent is this test process (jobs that outlived their run would show here).
pub fn child_processes() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name (which is in parentheses) start with state, ppid.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let _state = fields.next();
        if fields.next() == Some(me.as_str()) {
            found.push(stat);
        }
    }
    found
}

/// Descriptors this process has open now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
}

/// Whether the job root holds any job directory.
pub fn job_dirs(handle: &ServerHandle) -> Vec<String> {
    std::fs::read_dir(handle.executor().jobs_root())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One read, retried when a signal interrupts it (sockets with a read timeout return EINTR even
/// for handlers installed with SA_RESTART).
pub fn read_some(stream: &mut TcpStream, buffer: &mut [u8]) -> usize {
    loop {
        match stream.read(buffer) {
            Ok(n) => return n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => panic!("read failed: {error}"),
        }
    }
}
