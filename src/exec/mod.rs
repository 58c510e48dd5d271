//! Running jobs: languages, limits, job directories and the process runner.
//!
//! The server (`crate::server`) hands a parsed request to [`Executor::execute`] together with a
//! [`JobSink`] that writes frames back to the client. The executor compiles (or syntax-checks) with the
//! language's [`Toolchain`], then runs the program through [`process::run`] under the job's
//! [`Limits`], inside the [`Sandbox`] the server was started with (`bwrap` when it works here, see
//! [`bwrap::detect_executor`]). Compiles go through the [`cache`]. The languages are `native` (C,
//! C++), `python` and `rust`. Nothing here knows about sockets except the file descriptor the sink
//! lends for spotting a client that went away.

pub mod bwrap;
pub mod cache;
pub mod jobdir;
pub mod limits;
pub mod native;
pub mod process;
pub mod python;
pub mod rust;
pub mod sandbox;
pub mod seccomp;

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use limits::{Limits, LimitsOverride};
pub use process::{CommandSpec, ExitKind, ProcessOutcome, StopReason, Stream};
pub use sandbox::{NoSandbox, Sandbox};

use crate::protocol::{Fields, Intent, Problem, Verdict};
use jobdir::JobDir;

/// What a job produced that the client should see, in the order it happens.
#[derive(Debug, Clone, Copy)]
pub enum JobEvent<'a> {
    /// The compiler's own text.
    Diagnostics(&'a str),
    /// Problems in the user's source.
    Problems(&'a [Problem]),
    /// Bytes the program wrote to stdout.
    Stdout(&'a [u8]),
    /// Bytes the program wrote to stderr.
    Stderr(&'a [u8]),
    /// The compiled program.
    Artifact {
        /// Suggested file name.
        name: &'a str,
        /// Its bytes.
        data: &'a [u8],
    },
}

/// Where a job's events go; the server implements it on the client connection.
pub trait JobSink {
    /// Delivers an event.
    ///
    /// # Errors
    /// When the client is gone: the job is then cancelled.
    fn send(&mut self, event: JobEvent<'_>) -> io::Result<()>;

    /// A file descriptor that turns readable or hangs up when the client might be gone.
    fn peer_fd(&self) -> Option<RawFd> {
        None
    }

    /// Whether the client has already closed its sending side (seen by an earlier process of the
    /// same job), so it must be probed from time to time rather than watched.
    fn peer_half_closed(&self) -> bool {
        false
    }

    /// Checks that the client is still there, by writing something it ignores.
    ///
    /// # Errors
    /// When the client is gone.
    fn probe(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether the server wants the job stopped now (shutdown after the grace period).
    fn aborted(&self) -> bool {
        false
    }
}

/// A job as the executor sees it.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// CHECK, RUN or BUILD.
    pub intent: Intent,
    /// The language id.
    pub language: String,
    /// The program's source.
    pub source: Vec<u8>,
    /// Standard input for RUN.
    pub stdin: Vec<u8>,
    /// Arguments for RUN.
    pub args: Vec<String>,
    /// The name the user knows the file by.
    pub file_name: Option<String>,
    /// Limits for the run phase, already clamped to the server's maximum.
    pub limits: Limits,
    /// Extra environment variables for the run phase (`KILN_FENCE` for exclusive jobs).
    pub env: Vec<(String, String)>,
}

/// How a job ended, as sent in the `result` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// The program's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, by name (`SIGSEGV`).
    pub signal: Option<String>,
    /// Time spent compiling or checking.
    pub compile_ms: u64,
    /// Wall time of the run phase.
    pub run_ms: Option<u64>,
    /// CPU time of the run phase.
    pub cpu_ms: Option<u64>,
    /// Peak resident memory of the run phase.
    pub max_rss_kib: Option<u64>,
    /// Which output streams were cut at the output cap.
    pub truncated: Option<&'static str>,
    /// A short explanation for a person, when the verdict needs one.
    pub message: Option<String>,
}

impl Outcome {
    /// An outcome with only a verdict.
    pub fn verdict(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            exit_code: None,
            signal: None,
            compile_ms: 0,
            run_ms: None,
            cpu_ms: None,
            max_rss_kib: None,
            truncated: None,
            message: None,
        }
    }

    /// An internal error with a message.
    pub fn internal(message: impl Into<String>) -> Outcome {
        Outcome {
            message: Some(message.into()),
            ..Outcome::verdict(Verdict::InternalError)
        }
    }

    /// The body of the `result` frame.
    pub fn to_fields(&self) -> Fields {
        let mut fields = Fields::new();
        fields.push("verdict", self.verdict);
        if let Some(code) = self.exit_code {
            fields.push("exit-code", code);
        }
        if let Some(signal) = &self.signal {
            fields.push("signal", signal);
        }
        fields.push("compile-ms", self.compile_ms);
        if let Some(ms) = self.run_ms {
            fields.push("run-ms", ms);
        }
        if let Some(ms) = self.cpu_ms {
            fields.push("cpu-ms", ms);
        }
        if let Some(kib) = self.max_rss_kib {
            fields.push("max-rss-kib", kib);
        }
        if let Some(truncated) = self.truncated {
            fields.push("truncated", truncated);
        }
        if let Some(message) = &self.message {
            fields.push("message", message);
        }
        fields
    }
}

/// What a compile or syntax check produced.
#[derive(Debug, Default)]
pub struct CompileOutput {
    /// Whether the source compiled.
    pub success: bool,
    /// The compiler's own text (may be empty).
    pub diagnostics: String,
    /// Problems parsed from it.
    pub problems: Vec<Problem>,
    /// The compiled program, inside the job directory.
    pub artifact: Option<PathBuf>,
    /// The file name to offer for download.
    pub artifact_name: String,
    /// Set when the compiler was stopped (time, memory, cancelled) rather than failing on its own.
    pub stopped: Option<Outcome>,
}

/// Everything a toolchain needs to compile or run one job.
pub struct JobContext<'a> {
    /// The job's private directory.
    pub dir: &'a JobDir,
    /// The job.
    pub input: &'a JobInput,
    /// The sandbox that wraps every process.
    pub sandbox: &'a dyn Sandbox,
    /// Limits for compiling.
    pub compile_limits: Limits,
}

/// A language the server can compile and run.
pub trait Toolchain: Send + Sync {
    /// The id used in requests (`python`).
    fn id(&self) -> &str;
    /// The name people know (`Python`).
    fn name(&self) -> &str;
    /// The toolchain's version as it reports it.
    fn version(&self) -> &str;
    /// The source file name inside the job directory, given the name the user sent.
    fn source_file_name(&self, requested: Option<&str>) -> String;
    /// Compiles or checks the source (already written to the job directory).
    fn compile(&self, ctx: &JobContext<'_>, sink: &mut dyn JobSink) -> CompileOutput;
    /// The command that runs the compiled program.
    fn run_command(&self, ctx: &JobContext<'_>, compiled: &CompileOutput) -> CommandSpec;
    /// Whether a failed run's stderr shows the program hit the file-size limit (runtimes such as
    /// Python ignore SIGXFSZ and fail with EFBIG instead).
    fn is_file_too_large(&self, stderr_tail: &[u8]) -> bool {
        String::from_utf8_lossy(stderr_tail).contains("File too large")
    }

    /// Directories outside the system ones (`/usr`) that the toolchain needs, read-only, inside a
    /// sandbox.
    fn read_only_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Everything besides its version and the source that decides what the compiler produces
    /// (its flags); `None` when compiling is too cheap to cache.
    fn cache_flags(&self) -> Option<String> {
        None
    }
    /// Whether a failed run's stderr shows the program ran out of memory.
    fn is_out_of_memory(&self, stderr_tail: &[u8]) -> bool {
        let text = String::from_utf8_lossy(stderr_tail);
        text.contains("MemoryError")
            || text.contains("std::bad_alloc")
            || text.contains("memory allocation of")
            || text.contains("Cannot allocate memory")
    }
}

/// Runs jobs for the server: owns the languages, the sandbox and the job directories' root.
pub struct Executor {
    languages: Vec<Arc<dyn Toolchain>>,
    sandbox: Arc<dyn Sandbox>,
    jobs_root: PathBuf,
    compile_limits: Limits,
    cache: Option<cache::CompileCache>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("languages", &self.language_ids())
            .field("sandbox", &self.sandbox.name())
            .field("jobs_root", &self.jobs_root)
            .finish()
    }
}

impl Executor {
    /// An executor with the languages found on this machine.
    ///
    /// # Errors
    /// If the root for job directories cannot be created.
    pub fn detect(sandbox: Arc<dyn Sandbox>) -> io::Result<Executor> {
        Executor::with_languages(detect_toolchains(), sandbox)
    }

    /// An executor with the given languages.
    ///
    /// # Errors
    /// If the root for job directories cannot be created.
    pub fn with_languages(
        languages: Vec<Arc<dyn Toolchain>>,
        sandbox: Arc<dyn Sandbox>,
    ) -> io::Result<Executor> {
        let jobs_root = jobdir::create_root()?;
        Ok(Executor {
            languages,
            sandbox,
            jobs_root,
            compile_limits: Limits::compile_default(),
            cache: None,
        })
    }

    /// Uses `limits` for compilers and syntax checks.
    pub fn with_compile_limits(mut self, limits: Limits) -> Executor {
        self.compile_limits = limits;
        self
    }

    /// Keeps compiled programs in `cache`, so the same source compiles once.
    pub fn with_cache(mut self, cache: cache::CompileCache) -> Executor {
        self.cache = Some(cache);
        self
    }

    /// Compiles every time.
    pub fn without_cache(mut self) -> Executor {
        self.cache = None;
        self
    }

    /// The compile cache, if any.
    pub fn cache(&self) -> Option<&cache::CompileCache> {
        self.cache.as_ref()
    }

    /// The languages this executor can run.
    pub fn languages(&self) -> &[Arc<dyn Toolchain>] {
        &self.languages
    }

    /// The ids of the languages, in order.
    pub fn language_ids(&self) -> Vec<String> {
        self.languages.iter().map(|l| l.id().to_owned()).collect()
    }

    /// The toolchain for a language id.
    pub fn find(&self, id: &str) -> Option<&Arc<dyn Toolchain>> {
        self.languages.iter().find(|language| language.id() == id)
    }

    /// The sandbox's name for INFO (`none`, `bwrap`).
    pub fn sandbox_name(&self) -> &str {
        self.sandbox.name()
    }

    /// Where job directories are made.
    pub fn jobs_root(&self) -> &std::path::Path {
        &self.jobs_root
    }

    /// Runs a CHECK, RUN or BUILD job, sending its events to `sink`.
    pub fn execute(&self, input: &JobInput, sink: &mut dyn JobSink) -> Outcome {
        let Some(toolchain) = self.find(&input.language) else {
            return Outcome::internal(format!("language {} vanished", input.language));
        };
        let dir = match JobDir::create(&self.jobs_root) {
            Ok(dir) => dir,
            Err(error) => {
                return Outcome::internal(format!("cannot create job directory: {error}"));
            }
        };
        let source_name = toolchain.source_file_name(input.file_name.as_deref());
        if let Err(error) = dir.write_file(&source_name, &input.source) {
            return Outcome::internal(format!("cannot write the source: {error}"));
        }
        // Held until the job ends: the user the sandbox runs this job as.
        let _user = match self.sandbox.prepare(dir.path()) {
            Ok(user) => user,
            Err(error) => return Outcome::internal(format!("cannot prepare the sandbox: {error}")),
        };
        let ctx = JobContext {
            dir: &dir,
            input,
            sandbox: self.sandbox.as_ref(),
            compile_limits: self.compile_limits.clone(),
        };
        let started = Instant::now();
        let compiled = cache::compile(self.cache.as_ref(), toolchain.as_ref(), &ctx, sink);
        let compile_ms = millis(started.elapsed());
        if let Some(mut stopped) = compiled.stopped {
            stopped.compile_ms = compile_ms;
            return stopped;
        }
        let sent = send_compile_output(&compiled, sink);
        if sent.is_err() {
            return Outcome {
                compile_ms,
                ..Outcome::verdict(Verdict::Cancelled)
            };
        }
        if !compiled.success {
            return Outcome {
                compile_ms,
                ..Outcome::verdict(Verdict::CompileError)
            };
        }
        match input.intent {
            Intent::Check => Outcome {
                compile_ms,
                ..Outcome::verdict(Verdict::Ok)
            },
            Intent::Build => build_artifact(&compiled, compile_ms, sink),
            Intent::Run => {
                let stdin_path = match dir.write_file(".kiln-stdin", &input.stdin) {
                    Ok(path) => path,
                    Err(error) => {
                        return Outcome::internal(format!("cannot write stdin: {error}"));
                    }
                };
                let mut command = toolchain.run_command(&ctx, &compiled);
                // What the program writes is scratch, bounded like one file.
                command.scratch = Some(input.limits.file_size);
                command.env.extend(
                    input
                        .env
                        .iter()
                        .map(|(key, value)| (key.into(), value.into())),
                );
                let mut outcome =
                    run_program(toolchain.as_ref(), &ctx, &command, &stdin_path, sink);
                outcome.compile_ms = compile_ms;
                outcome
            }
            _ => Outcome::internal(format!("{} is not a job", input.intent)),
        }
    }
}

fn send_compile_output(compiled: &CompileOutput, sink: &mut dyn JobSink) -> io::Result<()> {
    if !compiled.diagnostics.is_empty() {
        sink.send(JobEvent::Diagnostics(&compiled.diagnostics))?;
    }
    if !compiled.problems.is_empty() {
        sink.send(JobEvent::Problems(&compiled.problems))?;
    }
    Ok(())
}

fn build_artifact(compiled: &CompileOutput, compile_ms: u64, sink: &mut dyn JobSink) -> Outcome {
    let Some(path) = &compiled.artifact else {
        return Outcome::internal("the compiler produced no program");
    };
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(error) => {
            return Outcome::internal(format!("cannot read the compiled program: {error}"));
        }
    };
    let verdict = match sink.send(JobEvent::Artifact {
        name: &compiled.artifact_name,
        data: &data,
    }) {
        Ok(()) => Verdict::Ok,
        Err(_) => Verdict::Cancelled,
    };
    Outcome {
        compile_ms,
        ..Outcome::verdict(verdict)
    }
}

fn run_program(
    toolchain: &dyn Toolchain,
    ctx: &JobContext<'_>,
    command: &CommandSpec,
    stdin_path: &std::path::Path,
    sink: &mut dyn JobSink,
) -> Outcome {
    let limits = &ctx.input.limits;
    let process = process::run(
        ctx.sandbox,
        command,
        ctx.dir.path(),
        Some(stdin_path),
        limits,
        sink,
        true,
    );
    let process = match process {
        Ok(process) => process,
        Err(error) => return Outcome::internal(format!("cannot start the program: {error}")),
    };
    let mut outcome = Outcome::verdict(Verdict::Ok);
    outcome.run_ms = Some(millis(process.wall));
    outcome.cpu_ms = Some(millis(process.cpu));
    outcome.max_rss_kib = Some(process.max_rss_kib);
    outcome.truncated = process.truncated_label();
    match process.exit {
        ExitKind::Code(code) => outcome.exit_code = Some(code),
        ExitKind::Signal(signal) => outcome.signal = Some(process::signal_name(signal)),
    }
    outcome.verdict = classify(toolchain, &process, limits);
    outcome.message = match outcome.verdict {
        Verdict::TimeLimit => Some(match process.stopped {
            Some(StopReason::WallTime) => format!(
                "the program ran longer than the wall-time limit of {} ms",
                limits.wall.as_millis()
            ),
            _ => format!(
                "the program used more than the CPU-time limit of {} ms",
                limits.cpu.as_millis()
            ),
        }),
        Verdict::MemoryLimit => Some(format!(
            "the program needed more than the memory limit of {} MiB",
            limits.memory_mib
        )),
        Verdict::OutputLimit => Some(match process.stopped {
            Some(StopReason::OutputLimit) => format!(
                "the program wrote more than the output limit of {} bytes",
                limits.output_bytes
            ),
            _ => format!(
                "the program wrote a file larger than the file-size limit of {} bytes",
                limits.file_size
            ),
        }),
        _ => None,
    };
    outcome
}

/// The languages found on this machine, in the order INFO lists them.
pub fn detect_toolchains() -> Vec<Arc<dyn Toolchain>> {
    let mut languages: Vec<Arc<dyn Toolchain>> = Vec::new();
    if let Some(c) = native::Native::detect(native::Dialect::C) {
        languages.push(Arc::new(c));
    }
    if let Some(cpp) = native::Native::detect(native::Dialect::Cpp) {
        languages.push(Arc::new(cpp));
    }
    if let Some(python) = python::Python::detect() {
        languages.push(Arc::new(python));
    }
    if let Some(rust) = rust::Rust::detect() {
        languages.push(Arc::new(rust));
    }
    languages
}

/// Decides the verdict of a finished run from how it ended and which limit stopped it.
fn classify(toolchain: &dyn Toolchain, process: &ProcessOutcome, limits: &Limits) -> Verdict {
    match process.stopped {
        Some(StopReason::WallTime) => return Verdict::TimeLimit,
        Some(StopReason::OutputLimit) => return Verdict::OutputLimit,
        Some(StopReason::Cancelled) => return Verdict::Cancelled,
        None => {}
    }
    let near_memory_limit = process.max_rss_kib * 1024 >= limits.memory_mib * 1024 * 1024 * 9 / 10;
    match process.exit {
        ExitKind::Code(0) => Verdict::Ok,
        ExitKind::Signal(libc::SIGXCPU) => Verdict::TimeLimit,
        ExitKind::Signal(libc::SIGXFSZ) => Verdict::OutputLimit,
        ExitKind::Signal(libc::SIGKILL)
            if process.cpu + Duration::from_millis(50) >= limits.cpu =>
        {
            Verdict::TimeLimit
        }
        _ if near_memory_limit || toolchain.is_out_of_memory(&process.stderr_tail) => {
            Verdict::MemoryLimit
        }
        _ if toolchain.is_file_too_large(&process.stderr_tail) => Verdict::OutputLimit,
        ExitKind::Code(_) => Verdict::RuntimeError,
        ExitKind::Signal(_) => Verdict::Signal,
    }
}

/// Whole milliseconds of a duration.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
