//! The blocking KILN/1 client shared by the CLI, the desktop app and the stress tool.
//!
//! A [`Client`] knows a server's address and token. [`Client::start`] opens one connection, sends one
//! request and returns a [`Response`]: an iterator of typed [`Event`]s that yields output while the
//! program still runs. Dropping the response, or calling [`Canceller::cancel`] from another thread,
//! closes the connection, which makes the server kill the job.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::protocol::frame::Decoded;
use crate::protocol::{
    Channel, ErrorCode, Fields, Frame, FrameDecoder, FrameError, Intent, Problem, RequestHead,
    Status, Verdict, encode_request_head,
};

/// Largest frame the client accepts (artifacts can be large executables).
pub const MAX_FRAME: u64 = 512 * 1024 * 1024;

/// What went wrong talking to a server.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The address does not resolve.
    #[error("cannot resolve server address `{addr}`: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// No address of the server accepted a connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The last connection error.
        source: io::Error,
    },
    /// Reading or writing failed mid-answer.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The server refused the request with `KILN/1 ERROR`.
    #[error("server refused the request ({code}): {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server's bytes do not follow KILN/1.
    #[error("the server's answer is not KILN/1: {0}")]
    Protocol(#[from] FrameError),
    /// The connection closed before the `result` frame.
    #[error("the server closed the connection before the end of the answer")]
    Truncated,
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A job to send: intent, language, source and options.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// The intent line and headers; lengths and token are filled in by the client.
    pub head: RequestHead,
    /// The program's source.
    pub source: Vec<u8>,
    /// Standard input for RUN.
    pub stdin: Vec<u8>,
}

impl JobSpec {
    /// A job with no language (PING, INFO, STATS).
    pub fn simple(intent: Intent) -> Self {
        JobSpec {
            head: RequestHead::new(intent),
            ..JobSpec::default()
        }
    }

    /// A CHECK, RUN or BUILD of `source` in `language`.
    pub fn code(intent: Intent, language: &str, source: impl Into<Vec<u8>>) -> Self {
        let mut head = RequestHead::new(intent);
        head.language = Some(language.to_owned());
        JobSpec {
            head,
            source: source.into(),
            stdin: Vec::new(),
        }
    }
}

/// One thing a server said about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A server description (`info` frame).
    Info(Fields),
    /// Server counters (`stats` frame).
    Stats(Fields),
    /// The compiler's own text.
    Diagnostics(String),
    /// Problems in the user's source.
    Problems(Vec<Problem>),
    /// Bytes the program wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the program wrote to stderr.
    Stderr(Vec<u8>),
    /// A compiled program.
    Artifact {
        /// The file name the server suggests.
        name: String,
        /// The file's bytes.
        data: Vec<u8>,
    },
    /// The end of the answer.
    Finished(JobResult),
    /// A frame of a channel this client does not know.
    Other(Frame),
}

/// The `result` frame, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// How the job ended; `InternalError` if the server sent a verdict this client does not know.
    pub verdict: Verdict,
    /// Every field of the frame, `verdict` included.
    pub fields: Fields,
}

impl JobResult {
    /// Parses a `result` frame body.
    pub fn parse(body: &[u8]) -> JobResult {
        let fields = Fields::parse(body);
        let verdict = fields
            .get("verdict")
            .and_then(Verdict::parse)
            .unwrap_or(Verdict::InternalError);
        JobResult { verdict, fields }
    }

    /// The program's exit code, if it exited.
    pub fn exit_code(&self) -> Option<i32> {
        self.fields.get_parsed("exit-code")
    }

    /// The signal that ended the program, if one did.
    pub fn signal(&self) -> Option<String> {
        self.fields.get("signal").map(str::to_owned)
    }

    /// A millisecond figure such as `run-ms`.
    pub fn millis(&self, key: &str) -> Option<u64> {
        self.fields.get_parsed(key)
    }
}

/// One language a server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageInfo {
    /// The id used in requests (`python`).
    pub id: String,
    /// The name people know (`Python`).
    pub name: String,
    /// The toolchain's version.
    pub version: String,
}

/// The `info` frame, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Every field as sent.
    pub fields: Fields,
    /// The languages, in the server's order.
    pub languages: Vec<LanguageInfo>,
}

impl ServerInfo {
    /// Parses an `info` frame body.
    pub fn parse(fields: Fields) -> ServerInfo {
        let languages = fields
            .get_all("language")
            .filter_map(|line| {
                let mut words = line.splitn(3, ' ');
                let id = words.next()?.to_owned();
                let name = words.next().unwrap_or(&id).to_owned();
                let version = words.next().unwrap_or_default().to_owned();
                Some(LanguageInfo { id, name, version })
            })
            .collect();
        ServerInfo { fields, languages }
    }

    /// A field by key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key)
    }
}

/// A server's address and token, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    token: Option<String>,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
}

impl Client {
    /// A client for `addr` (`host:port`), sending `token` if given.
    pub fn new(addr: impl Into<String>, token: Option<String>) -> Self {
        Client {
            addr: addr.into(),
            token: token.filter(|token| !token.is_empty()),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Some(Duration::from_secs(300)),
        }
    }

    /// Changes how long to wait for a connection.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Changes how long to wait for the server's next bytes (`None`: forever).
    pub fn with_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends a job and reads the status line.
    ///
    /// # Errors
    /// [`ClientError::Server`] when the server refuses the job, or a connection or protocol error.
    pub fn start(&self, job: &JobSpec) -> Result<Response, ClientError> {
        let mut stream = self.connect()?;
        let mut head = job.head.clone();
        head.token = self.token.clone();
        head.source_length = job.source.len() as u64;
        head.stdin_length = job.stdin.len() as u64;
        let mut request = encode_request_head(&head);
        request.extend_from_slice(&job.source);
        request.extend_from_slice(&job.stdin);
        let io_error = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        let write_result = stream.write_all(&request).and_then(|()| stream.flush());
        let mut response = Response {
            stream,
            decoder: FrameDecoder::new(MAX_FRAME),
            addr: self.addr.clone(),
            job_id: String::new(),
            finished: false,
        };
        // A server that refuses early (busy, unauthorized, too-large) may close before reading the
        // whole body; its status line is still worth reading, so a write error is reported only if
        // no status line arrives.
        match (response.read_status(), write_result) {
            (Ok(job_id), _) => {
                response.job_id = job_id;
                Ok(response)
            }
            (Err(error @ ClientError::Server { .. }), _) => Err(error),
            (Err(_), Err(write_error)) => Err(io_error(write_error)),
            (Err(error), Ok(())) => Err(error),
        }
    }

    /// Sends a job and collects every event until the result.
    ///
    /// # Errors
    /// As [`Client::start`], or a failure while reading the answer.
    pub fn run_to_end(&self, job: &JobSpec) -> Result<(Vec<Event>, JobResult), ClientError> {
        let mut events = Vec::new();
        for event in self.start(job)? {
            let event = event?;
            if let Event::Finished(result) = event {
                return Ok((events, result));
            }
            events.push(event);
        }
        Err(ClientError::Truncated)
    }

    /// Asks the server to describe itself.
    ///
    /// # Errors
    /// As [`Client::start`].
    pub fn info(&self) -> Result<ServerInfo, ClientError> {
        let (events, _) = self.run_to_end(&JobSpec::simple(Intent::Info))?;
        events
            .into_iter()
            .find_map(|event| match event {
                Event::Info(fields) => Some(ServerInfo::parse(fields)),
                _ => None,
            })
            .ok_or(ClientError::Truncated)
    }

    /// Sends PING and returns the round-trip time.
    ///
    /// # Errors
    /// As [`Client::start`].
    pub fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let (_, result) = self.run_to_end(&JobSpec::simple(Intent::Ping))?;
        if result.verdict == Verdict::Pong {
            Ok(started.elapsed())
        } else {
            Err(ClientError::Truncated)
        }
    }

    fn connect(&self) -> Result<TcpStream, ClientError> {
        let addrs: Vec<SocketAddr> = self
            .addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: self.addr.clone(),
                source,
            })?
            .collect();
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    // Frames are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_read_timeout(self.read_timeout);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
                    return Ok(stream);
                }
                Err(error) => last_error = error,
            }
        }
        Err(ClientError::Connect {
            addr: self.addr.clone(),
            source: last_error,
        })
    }
}

/// The answer to one job, read as it arrives.
#[derive(Debug)]
pub struct Response {
    stream: TcpStream,
    decoder: FrameDecoder,
    addr: String,
    job_id: String,
    finished: bool,
}

impl Response {
    /// The server's id for this job.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// A handle that cancels the job from another thread.
    ///
    /// # Errors
    /// If the socket cannot be duplicated (out of file descriptors).
    pub fn canceller(&self) -> io::Result<Canceller> {
        Ok(Canceller {
            stream: self.stream.try_clone()?,
        })
    }

    fn read_status(&mut self) -> Result<String, ClientError> {
        match self.read_item()? {
            Some(Decoded::Status(Status::Ok { job_id })) => Ok(job_id),
            Some(Decoded::Status(Status::Error { code, message })) => {
                Err(ClientError::Server { code, message })
            }
            Some(Decoded::Frame(_)) | None => Err(ClientError::Truncated),
        }
    }

    fn read_item(&mut self) -> Result<Option<Decoded>, ClientError> {
        let mut buffer = [0u8; 64 * 1024];
        loop {
            if let Some(item) = self.decoder.next_item()? {
                return Ok(Some(item));
            }
            match self.stream.read(&mut buffer) {
                Ok(0) => return Ok(None),
                Ok(n) => self.decoder.push(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            }
        }
    }

    fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        let frame = match self.read_item()? {
            Some(Decoded::Frame(frame)) => frame,
            Some(Decoded::Status(_)) => unreachable!("the decoder yields one status"),
            None => return Err(ClientError::Truncated),
        };
        let text = |body: Vec<u8>| String::from_utf8_lossy(&body).into_owned();
        let event = match frame.channel {
            Channel::Info => Event::Info(Fields::parse(&frame.body)),
            Channel::Stats => Event::Stats(Fields::parse(&frame.body)),
            Channel::Diagnostics => Event::Diagnostics(text(frame.body)),
            Channel::Problems => Event::Problems(Problem::parse_all(&frame.body)),
            Channel::Stdout => Event::Stdout(frame.body),
            Channel::Stderr => Event::Stderr(frame.body),
            Channel::Artifact => Event::Artifact {
                name: frame.attr("name").unwrap_or("program").to_owned(),
                data: frame.body,
            },
            Channel::Result => {
                self.finished = true;
                Event::Finished(JobResult::parse(&frame.body))
            }
            Channel::Other(_) => Event::Other(frame),
        };
        Ok(Some(event))
    }
}

impl Iterator for Response {
    type Item = Result<Event, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.next_event() {
            Ok(event) => event.map(Ok),
            Err(error) => {
                self.finished = true;
                Some(Err(error))
            }
        }
    }
}

/// Cancels a running job by closing its connection.
#[derive(Debug)]
pub struct Canceller {
    stream: TcpStream,
}

impl Canceller {
    /// Closes the connection; the server kills the job and the reading side sees an error.
    pub fn cancel(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
