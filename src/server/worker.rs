//! A worker thread: takes whole requests from the queue, answers them, and logs one line per job.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::queue::QueuedJob;
use super::stats::ProcessStatus;
use super::{ServerModel, Shared};
use crate::exec::{JobEvent, JobInput, JobSink, LimitsOverride, Outcome, millis};
use crate::protocol::{Channel, ErrorCode, Fields, Frame, Intent, Problem, Status, Verdict};

/// How long a client may leave the server's writes unread before its job is cancelled.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The worker loop: runs until the queue closes.
pub fn run(shared: &Shared) {
    while let Some(job) = shared.queue.pop() {
        handle(shared, job);
    }
}

/// Answers a queued job that will never run because the server is stopping.
pub fn refuse_unavailable(shared: &Shared, mut job: QueuedJob) {
    shared.stats.count_error(ErrorCode::Unavailable);
    let status = Status::error(
        ErrorCode::Unavailable,
        "the server is shutting down; try again later or use another server",
    );
    let _ = job.stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = job.stream.write_all(&status.encode());
    let _ = job.stream.shutdown(Shutdown::Write);
}

/// Runs one job and answers it; returns whether the client got the whole answer (`served`) rather
/// than going away (`cancelled`).
pub(super) fn handle(shared: &Shared, job: QueuedJob) -> bool {
    let QueuedJob {
        stream,
        peer,
        request,
        accepted_at,
        queued_at,
        peer_slot,
    } = job;
    let started = Instant::now();
    let id = shared.next_job_id();
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _active = shared.stats.job_started();
    let mut sink = ConnSink {
        stream: &stream,
        shared,
        broken: false,
        half_closed: false,
        held: Vec::new(),
    };
    let head = &request.head;
    let intent = head.intent();
    let status = Status::Ok { job_id: id.clone() }.encode();
    let status_sent = if matches!(intent, Intent::Ping | Intent::Info | Intent::Stats) {
        // The whole answer is ready at once: one write, one segment.
        sink.held = status;
        Ok(())
    } else {
        // A job may take a while: the client learns at once that it started.
        sink.write(&status)
    };
    let outcome = if status_sent.is_err() {
        Outcome::verdict(Verdict::Cancelled)
    } else {
        match intent {
            Intent::Ping => Outcome::verdict(Verdict::Pong),
            Intent::Info => send_fields(&mut sink, Channel::Info, &info_fields(shared)),
            Intent::Stats => send_fields(&mut sink, Channel::Stats, &stats_fields(shared)),
            Intent::Check | Intent::Run | Intent::Build => {
                let limits = LimitsOverride {
                    time_limit_ms: head.time_limit_ms,
                    memory_limit_mib: head.memory_limit_mib,
                }
                .apply(&shared.config.run_defaults, &shared.config.run_max);
                let input = JobInput {
                    intent,
                    language: head.language.clone().unwrap_or_default(),
                    source: request.source.clone(),
                    stdin: request.stdin.clone(),
                    args: head.args.clone(),
                    file_name: head.file_name.clone(),
                    limits,
                    env: Vec::new(),
                };
                super::cluster::execute_job(shared, &id, &request, input, &mut sink)
            }
            Intent::Cluster | Intent::ClusterStatus | Intent::ClusterLog => {
                // The acceptor routes these to the cluster runtime; never queued.
                Outcome::internal(format!("{intent} reached a job worker"))
            }
        }
    };
    // The job is over: its client may start another as soon as it reads the result.
    drop(peer_slot);
    let result_sent = finish(&mut sink, &outcome);
    let served = !matches!(
        (outcome.verdict, result_sent),
        (Verdict::Cancelled, _) | (_, false)
    );
    if served {
        shared.stats.served.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(
        job = %id,
        %peer,
        intent = intent.as_str(),
        language = head.language.as_deref().unwrap_or("-"),
        verdict = outcome.verdict.as_str(),
        exit_code = outcome.exit_code,
        wait_ms = millis(started.duration_since(queued_at)),
        read_ms = millis(queued_at.duration_since(accepted_at)),
        compile_ms = outcome.compile_ms,
        run_ms = outcome.run_ms,
        total_ms = millis(accepted_at.elapsed()),
        "job"
    );
    close_gently(stream);
    served
}

fn send_fields(sink: &mut ConnSink<'_>, channel: Channel, fields: &Fields) -> Outcome {
    let frame = Frame::new(channel, fields.encode());
    match sink.write(&frame.encode()) {
        Ok(()) => Outcome::verdict(Verdict::Ok),
        Err(_) => Outcome::verdict(Verdict::Cancelled),
    }
}

/// Writes the result frame; returns whether the client got it.
fn finish(sink: &mut ConnSink<'_>, outcome: &Outcome) -> bool {
    if sink.broken {
        return false;
    }
    let mut fields = outcome.to_fields();
    if outcome.verdict == Verdict::Pong {
        fields = Fields::new();
        fields.push("verdict", Verdict::Pong);
    }
    let frame = Frame::new(Channel::Result, fields.encode());
    sink.write(&frame.encode()).is_ok()
}

/// Closes after the answer without resetting: anything the client still sends is read briefly.
fn close_gently(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut buffer = [0u8; 4096];
        let mut stream = &stream;
        while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
    }
}

fn info_fields(shared: &Shared) -> Fields {
    let config = &shared.config;
    let executor = &shared.executor;
    let mut fields = Fields::new();
    fields
        .push("server", format!("kiln {}", env!("CARGO_PKG_VERSION")))
        .push("protocol", 1)
        .push("model", config.model.as_str());
    match config.model {
        ServerModel::Pool => fields
            .push("workers", config.workers)
            .push("queue", config.queue_capacity),
        ServerModel::Fork => fields.push("max-children", config.max_children),
    };
    fields
        .push("sandbox", executor.sandbox_name())
        .push(
            "token",
            if config.token.is_some() {
                "required"
            } else {
                "none"
            },
        )
        .push("max-source-bytes", config.parse_limits.max_source)
        .push("max-stdin-bytes", config.parse_limits.max_stdin)
        .push("time-limit-ms", config.run_defaults.wall.as_millis())
        .push("max-time-limit-ms", config.run_max.wall.as_millis())
        .push("cpu-limit-ms", config.run_defaults.cpu.as_millis())
        .push("memory-limit-mib", config.run_defaults.memory_mib)
        .push("max-memory-limit-mib", config.run_max.memory_mib)
        .push("output-limit-bytes", config.run_defaults.output_bytes)
        .push("file-size-limit-bytes", config.run_defaults.file_size)
        .push("process-limit", config.run_defaults.processes)
        .push("max-jobs-per-peer", config.max_jobs_per_peer)
        .push("header-timeout-ms", config.header_timeout.as_millis())
        .push("body-timeout-ms", config.body_timeout.as_millis());
    super::cluster::push_info(shared, &mut fields);
    for language in executor.languages() {
        fields.push(
            "language",
            format!(
                "{} {} {}",
                language.id(),
                language.name(),
                language.version()
            ),
        );
    }
    fields
}

fn stats_fields(shared: &Shared) -> Fields {
    let mut fields = shared.stats.to_fields();
    let stats = &shared.stats;
    let process = ProcessStatus::read(shared.pid);
    fields
        .push("queued", shared.queue.len())
        .push("workers", shared.config.workers)
        .push("uptime-ms", millis(shared.started.elapsed()))
        .push("model", shared.config.model.as_str())
        .push("peak-rss-kib", process.peak_rss_kib)
        .push("threads", process.threads);
    if shared.config.model == ServerModel::Fork {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        fields
            .push("children", get(&stats.children))
            .push("peak-children", get(&stats.peak_children))
            .push("max-children", shared.config.max_children)
            .push("peak-child-rss-kib", get(&stats.peak_child_rss_kib));
    }
    fields
}

/// Writes a job's events to its connection as frames.
struct ConnSink<'a> {
    stream: &'a TcpStream,
    shared: &'a Shared,
    broken: bool,
    /// The client closed its sending side; it may still be reading (`nc -N`), or be gone.
    half_closed: bool,
    /// Bytes to send in front of the next write.
    held: Vec<u8>,
}

impl ConnSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut stream = self.stream;
        let result = if self.held.is_empty() {
            stream.write_all(bytes)
        } else {
            let mut all = std::mem::take(&mut self.held);
            all.extend_from_slice(bytes);
            stream.write_all(&all)
        };
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn write_frame(
        &mut self,
        channel: Channel,
        attrs: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let head = Frame::encode_head(&channel, body.len(), attrs);
        if body.len() <= 64 * 1024 {
            // One write per frame keeps output frames in one segment.
            let mut bytes = head;
            bytes.extend_from_slice(body);
            self.write(&bytes)
        } else {
            self.write(&head)?;
            self.write(body)
        }
    }
}

impl JobSink for ConnSink<'_> {
    fn send(&mut self, event: JobEvent<'_>) -> io::Result<()> {
        match event {
            JobEvent::Diagnostics(text) => {
                self.write_frame(Channel::Diagnostics, &[], text.as_bytes())
            }
            JobEvent::Problems(problems) => {
                self.write_frame(Channel::Problems, &[], &Problem::encode_all(problems))
            }
            JobEvent::Stdout(bytes) => self.write_frame(Channel::Stdout, &[], bytes),
            JobEvent::Stderr(bytes) => self.write_frame(Channel::Stderr, &[], bytes),
            JobEvent::Artifact { name, data } => {
                self.write_frame(Channel::Artifact, &[("name", name)], data)
            }
        }
    }

    fn peer_fd(&self) -> Option<RawFd> {
        Some(self.stream.as_raw_fd())
    }

    fn peer_half_closed(&self) -> bool {
        self.half_closed
    }

    fn probe(&mut self) -> io::Result<()> {
        self.half_closed = true;
        self.write(&Frame::encode_head(
            &Channel::Other("keepalive".into()),
            0,
            &[],
        ))
    }

    fn aborted(&self) -> bool {
        self.shared.aborting.load(Ordering::Relaxed)
    }
}
