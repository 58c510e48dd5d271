//! Starting one process tree under limits, streaming its output, and ending it whatever it does.
//!
//! The process gets its own session (so its process group can be killed as one), rlimits set between
//! fork and exec, no inherited descriptors, and a parent-death signal. One thread polls its stdout,
//! stderr, a pidfd of the process and the client's socket: output is forwarded as it arrives, the
//! wall clock is checked on every wake, and a client that hangs up cancels the run. Whatever ends
//! the run, the whole process group is killed and the main process reaped with its resource usage.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::limits::Limits;
use super::sandbox::{Sandbox, SandboxCommand};
use super::{JobEvent, JobSink};

/// What to run: a program, its arguments and extra environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables on top of the sandbox's minimal set.
    pub env: Vec<(OsString, OsString)>,
    /// `None` for a compiler, whose files in the job directory must outlive it; `Some(bytes)` for a
    /// user's program, which a sandbox may give a private scratch copy of the directory of at most
    /// that many bytes, discarded when it ends (so no program can fill the disk).
    pub scratch: Option<u64>,
}

impl CommandSpec {
    /// A command with arguments.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        CommandSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            scratch: None,
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// Why the runner stopped the process early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It ran past the wall-clock limit.
    WallTime,
    /// It wrote more than the output cap.
    OutputLimit,
    /// The client went away.
    Cancelled,
}

/// What happened to a process tree.
#[derive(Debug, Clone)]
pub struct ProcessOutcome {
    /// How the main process ended.
    pub exit: ExitKind,
    /// Wall time from spawn to reaping.
    pub wall: Duration,
    /// User plus system CPU time of the main process and the children it waited for.
    pub cpu: Duration,
    /// Peak resident memory in KiB.
    pub max_rss_kib: u64,
    /// Set when the runner ended the process itself.
    pub stopped: Option<StopReason>,
    /// Whether stdout was cut at the output cap.
    pub truncated_stdout: bool,
    /// Whether stderr was cut at the output cap.
    pub truncated_stderr: bool,
    /// The last few KiB of stderr, to recognise out-of-memory messages.
    pub stderr_tail: Vec<u8>,
    /// Everything written to stdout, when the output was captured rather than streamed.
    pub captured_stdout: Vec<u8>,
    /// Everything written to stderr, when the output was captured rather than streamed.
    pub captured_stderr: Vec<u8>,
}

impl ProcessOutcome {
    /// The `truncated` field of a result: `stdout`, `stderr`, `both` or nothing.
    pub fn truncated_label(&self) -> Option<&'static str> {
        match (self.truncated_stdout, self.truncated_stderr) {
            (true, true) => Some("both"),
            (true, false) => Some("stdout"),
            (false, true) => Some("stderr"),
            (false, false) => None,
        }
    }
}

/// The name of a signal number (`SIGSEGV`), or its number.
pub fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| signal.to_string())
}

const STDERR_TAIL: usize = 4096;
/// How long to wait for the rest of a piece of output before sending what arrived.
const COALESCE_MS: i32 = 2;
const READ_CHUNK: usize = 64 * 1024;
/// How long to keep reading what is already in the pipes once the main process has ended.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Runs `spec` in `dir` under `limits`; with `stream` the output goes to `sink` as it arrives,
/// otherwise it is captured into the outcome (for compilers).
///
/// # Errors
/// If the process cannot be started.
pub fn run(
    sandbox: &dyn Sandbox,
    spec: &CommandSpec,
    dir: &Path,
    stdin: Option<&Path>,
    limits: &Limits,
    sink: &mut dyn JobSink,
    stream: bool,
) -> io::Result<ProcessOutcome> {
    let SandboxCommand {
        mut command,
        inherit,
    } = sandbox.command(spec, dir);
    command
        .stdin(match stdin {
            Some(path) => Stdio::from(File::open(path)?),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The job runs as the owner of its directory (see `Sandbox::prepare`).
    let job_uid = std::fs::metadata(dir)?.uid();
    let rlimits = RlimitPlan::new(limits, job_uid);
    // SAFETY: the closure only makes async-signal-safe system calls (setsid, prctl, setrlimit).
    unsafe {
        command.pre_exec(move || rlimits.apply_in_child());
    }
    // After the closure above, which marks every inherited descriptor close-on-exec.
    keep_across_exec(&mut command, inherit);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let guard = GroupGuard { pgid: pid };
    let stdout = child
        .stdout
        .take()
        .map(|pipe| File::from(std::os::fd::OwnedFd::from(pipe)));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| File::from(std::os::fd::OwnedFd::from(pipe)));
    let mut runner = Runner {
        sandbox,
        pid,
        pidfd: pidfd_open(pid),
        started,
        limits,
        sink,
        stream,
        pipes: [stdout, stderr],
        sent: 0,
        outcome: ProcessOutcome {
            exit: ExitKind::Code(0),
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            max_rss_kib: 0,
            stopped: None,
            truncated_stdout: false,
            truncated_stderr: false,
            stderr_tail: Vec::new(),
            captured_stdout: Vec::new(),
            captured_stderr: Vec::new(),
        },
        peer_half_closed: false,
        next_probe: None,
    };
    if runner.sink.peer_half_closed() {
        runner.peer_half_closed = true;
        runner.next_probe = Some(Instant::now() + Duration::from_secs(1));
    }
    let outcome = runner.supervise();
    drop(guard);
    // The std Child was reaped by wait4 above; dropping it does not wait again.
    drop(child);
    Ok(outcome)
}

/// A pidfd for `pid`, if the kernel has them.
fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes no pointers; the descriptor it returns is ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Kills the process group when dropped, so no path out of the runner leaves processes behind.
struct GroupGuard {
    pgid: i32,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: plain system call; a group that no longer exists yields ESRCH, which is fine.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// The rlimits to set in the child, computed before fork so the child only makes system calls.
#[derive(Debug, Clone, Copy)]
struct RlimitPlan {
    cpu_secs: u64,
    address_space: u64,
    processes: u64,
    file_size: u64,
    open_files: u64,
}

impl RlimitPlan {
    fn new(limits: &Limits, uid: u32) -> Self {
        let cpu_secs = limits.cpu.as_secs() + u64::from(limits.cpu.subsec_nanos() > 0);
        RlimitPlan {
            cpu_secs: cpu_secs.max(1),
            address_space: limits.memory_mib.saturating_mul(1024 * 1024),
            // RLIMIT_NPROC counts every process of the user, not just the job's, so the budget is
            // on top of what the user already runs (a sandbox running each job as its own user
            // makes this exact).
            processes: user_process_count(uid).saturating_add(limits.processes),
            file_size: limits.file_size,
            open_files: limits.open_files,
        }
    }

    fn apply_in_child(&self) -> io::Result<()> {
        fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit with a valid pointer to a local struct.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        // SAFETY: setsid and prctl are async-signal-safe system calls without pointers.
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // If the server dies, its jobs die with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        }
        set(libc::RLIMIT_CPU, self.cpu_secs, self.cpu_secs + 1)?;
        set(libc::RLIMIT_AS, self.address_space, self.address_space)?;
        set(libc::RLIMIT_NPROC, self.processes, self.processes)?;
        set(libc::RLIMIT_FSIZE, self.file_size, self.file_size)?;
        set(libc::RLIMIT_NOFILE, self.open_files, self.open_files)?;
        set(libc::RLIMIT_CORE, 0, 0)?;
        close_inherited_fds();
        Ok(())
    }
}

/// Leaves `fds` open in `command`'s process across exec (the sandbox tool reads them there) and
/// closes them here once `command` is dropped. Register it after any closure that marks inherited
/// descriptors close-on-exec. In this process they stay close-on-exec, so no other child gets them.
pub fn keep_across_exec(command: &mut Command, fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: fcntl on descriptors the closure owns; async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Whether `fd` turns readable within `timeout_ms`.
fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
    ready > 0 && pollfd.revents & libc::POLLIN != 0
}

/// Marks every descriptor above stderr close-on-exec, so the program inherits nothing the server
/// (or whoever started the server) left open without that flag.
fn close_inherited_fds() {
    // SAFETY: close_range and fcntl are async-signal-safe system calls without pointers.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        // Kernels before 5.11: walk the usual range by hand.
        for fd in 3..4096 {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// How many processes the user `uid` runs now.
pub fn user_process_count(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            if meta.uid() == uid {
                count += 1;
            }
        }
    }
    count
}

/// Marks the pidfd among the polled descriptors.
const EXIT_OWNER: usize = usize::MAX;

struct Runner<'a> {
    sandbox: &'a dyn Sandbox,
    pid: i32,
    /// A descriptor that turns readable when the main process ends (Linux 5.3+).
    pidfd: Option<std::os::fd::OwnedFd>,
    started: Instant,
    limits: &'a Limits,
    sink: &'a mut dyn JobSink,
    stream: bool,
    pipes: [Option<File>; 2],
    sent: u64,
    outcome: ProcessOutcome,
    peer_half_closed: bool,
    next_probe: Option<Instant>,
}

impl Runner<'_> {
    fn supervise(&mut self) -> ProcessOutcome {
        let deadline = self.started + self.limits.wall;
        let mut exited_at: Option<Instant> = None;
        loop {
            if exited_at.is_none() && self.try_reap(false) {
                exited_at = Some(Instant::now());
                // Children left in the group would keep the pipes open; they end with the job.
                kill_group(self.pid);
            }
            let pipes_open = self.pipes.iter().any(Option::is_some);
            if exited_at.is_some() {
                // Everything the program wrote before it ended is in the pipes now. What is left
                // of its tree dies with the job, so its end of the pipes is not waited for (a
                // sandbox's init may hold them a while longer).
                self.drain_ready();
                break;
            }
            let now = Instant::now();
            let stop_now = if exited_at.is_some() {
                None
            } else if self.sink.aborted() {
                Some(StopReason::Cancelled)
            } else if now >= deadline {
                Some(StopReason::WallTime)
            } else {
                None
            };
            if let Some(reason) = stop_now {
                self.stop(reason);
                self.try_reap(true);
                exited_at = Some(Instant::now());
                continue;
            }
            let mut timeout = if pipes_open {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(2)
            };
            if exited_at.is_none() {
                timeout = timeout.min(deadline.saturating_duration_since(now));
            }
            if let Some(probe_at) = self.next_probe {
                timeout = timeout.min(probe_at.saturating_duration_since(now));
            }
            self.wait_and_read(timeout);
            if self.outcome.stopped.is_some() && exited_at.is_none() {
                self.try_reap(true);
                exited_at = Some(Instant::now());
            }
        }
        self.pipes = [None, None];
        self.outcome.wall = self.started.elapsed();
        std::mem::replace(
            &mut self.outcome,
            ProcessOutcome {
                exit: ExitKind::Code(0),
                wall: Duration::ZERO,
                cpu: Duration::ZERO,
                max_rss_kib: 0,
                stopped: None,
                truncated_stdout: false,
                truncated_stderr: false,
                stderr_tail: Vec::new(),
                captured_stdout: Vec::new(),
                captured_stderr: Vec::new(),
            },
        )
    }

    /// Kills the group and records why.
    fn stop(&mut self, reason: StopReason) {
        if self.outcome.stopped.is_none() {
            self.outcome.stopped = Some(reason);
        }
        kill_group(self.pid);
    }

    /// Reaps the main process if it has ended (or, with `block`, waits for it); returns whether it
    /// was reaped.
    fn try_reap(&mut self, block: bool) -> bool {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if block { 0 } else { libc::WNOHANG };
        loop {
            // SAFETY: wait4 on our own child with valid pointers to locals.
            let reaped = unsafe { libc::wait4(self.pid, &mut status, flags, &mut usage) };
            if reaped == self.pid {
                break;
            }
            if reaped < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        self.outcome.exit = self.sandbox.decode_exit(if libc::WIFSIGNALED(status) {
            ExitKind::Signal(libc::WTERMSIG(status))
        } else {
            ExitKind::Code(libc::WEXITSTATUS(status))
        });
        let time = |tv: libc::timeval| {
            Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
        };
        self.outcome.cpu = time(usage.ru_utime) + time(usage.ru_stime);
        self.outcome.max_rss_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
        true
    }

    /// A poll entry for each pipe still open, and the index of the pipe each one watches.
    fn pipe_pollfds(&self) -> (Vec<libc::pollfd>, Vec<usize>) {
        self.pipes
            .iter()
            .enumerate()
            .filter_map(|(index, pipe)| {
                let file = pipe.as_ref()?;
                let pollfd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                Some((pollfd, index))
            })
            .unzip()
    }

    /// Reads what the pipes hold now, without waiting for more (bounded in time, in case
    /// something outside the job's process group still writes).
    fn drain_ready(&mut self) {
        let until = Instant::now() + DRAIN_AFTER_EXIT;
        while Instant::now() < until {
            let (mut fds, owners) = self.pipe_pollfds();
            if fds.is_empty() {
                return;
            }
            // SAFETY: fds is a valid array of pollfd of the given length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            if ready <= 0 {
                return;
            }
            for (pollfd, index) in fds.iter().zip(owners) {
                if pollfd.revents & libc::POLLIN != 0 {
                    self.read_pipe(index);
                } else if pollfd.revents != 0 {
                    // Hung up with nothing left to read.
                    self.pipes[index] = None;
                }
            }
        }
    }

    fn wait_and_read(&mut self, timeout: Duration) {
        let (mut fds, pipe_owners) = self.pipe_pollfds();
        let mut owners: Vec<Option<usize>> = pipe_owners.into_iter().map(Some).collect();
        // The main process's pidfd turns readable when it ends: the loop then reaps it at once
        // instead of waiting for the pipes (which its descendants may still hold).
        if let Some(pidfd) = &self.pidfd {
            fds.push(libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            owners.push(Some(EXIT_OWNER));
        }
        let peer: Option<RawFd> = self.sink.peer_fd();
        if let Some(fd) = peer
            && !self.peer_half_closed
        {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLRDHUP,
                revents: 0,
            });
            owners.push(None);
        }
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: fds is a valid array of pollfd of the given length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            return;
        }
        for (pollfd, owner) in fds.iter().zip(owners) {
            if pollfd.revents == 0 {
                continue;
            }
            match owner {
                Some(EXIT_OWNER) => {}
                Some(index) => self.read_pipe(index),
                None => {
                    // The client closed its sending side: maybe it only half-closed (nc -N),
                    // maybe it is gone. A probe tells: to a closed socket it soon fails.
                    self.peer_half_closed = true;
                    self.probe_peer(Duration::from_millis(20));
                }
            }
        }
        if let Some(at) = self.next_probe
            && Instant::now() >= at
        {
            self.probe_peer(Duration::from_secs(1));
        }
    }

    fn probe_peer(&mut self, next: Duration) {
        if self.sink.probe().is_err() {
            self.next_probe = None;
            self.stop(StopReason::Cancelled);
        } else {
            self.next_probe = Some(Instant::now() + next);
        }
    }

    fn read_pipe(&mut self, index: usize) {
        let mut buffer = vec![0u8; READ_CHUNK];
        let Some(file) = self.pipes[index].as_mut() else {
            return;
        };
        let mut n = match file.read(&mut buffer) {
            Ok(0) => {
                self.pipes[index] = None;
                return;
            }
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => {
                self.pipes[index] = None;
                return;
            }
        };
        // Programs often write a line in pieces (Python writes the text, then the newline): wait a
        // moment for the rest so one frame carries it, without holding output back noticeably.
        while n < buffer.len() && wait_readable(file.as_raw_fd(), COALESCE_MS) {
            match file.read(&mut buffer[n..]) {
                Ok(0) | Err(_) => break,
                Ok(more) => n += more,
            }
        }
        let stream = if index == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        self.forward(stream, &buffer[..n]);
    }

    fn forward(&mut self, stream: Stream, bytes: &[u8]) {
        if self.outcome.stopped == Some(StopReason::OutputLimit) {
            return;
        }
        let room = self.limits.output_bytes.saturating_sub(self.sent);
        let keep = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let kept = &bytes[..keep];
        self.sent += keep as u64;
        if stream == Stream::Stderr {
            self.outcome.stderr_tail.extend_from_slice(kept);
            let excess = self.outcome.stderr_tail.len().saturating_sub(STDERR_TAIL);
            self.outcome.stderr_tail.drain(..excess);
        }
        if !kept.is_empty() {
            if self.stream {
                let event = match stream {
                    Stream::Stdout => JobEvent::Stdout(kept),
                    Stream::Stderr => JobEvent::Stderr(kept),
                };
                if self.sink.send(event).is_err() {
                    self.stop(StopReason::Cancelled);
                    return;
                }
            } else {
                match stream {
                    Stream::Stdout => self.outcome.captured_stdout.extend_from_slice(kept),
                    Stream::Stderr => self.outcome.captured_stderr.extend_from_slice(kept),
                }
            }
        }
        if keep < bytes.len() {
            match stream {
                Stream::Stdout => self.outcome.truncated_stdout = true,
                Stream::Stderr => self.outcome.truncated_stderr = true,
            }
            self.stop(StopReason::OutputLimit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sandbox::NoSandbox;
    use super::*;

    #[derive(Default)]
    struct Collect {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    }

    impl JobSink for Collect {
        fn send(&mut self, event: JobEvent<'_>) -> io::Result<()> {
            match event {
                JobEvent::Stdout(bytes) => self.stdout.extend_from_slice(bytes),
                JobEvent::Stderr(bytes) => self.stderr.extend_from_slice(bytes),
                _ => {}
            }
            Ok(())
        }
    }

    fn sh(script: &str, limits: &Limits) -> (ProcessOutcome, Collect) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = Collect::default();
        let spec = CommandSpec::new("/bin/sh", ["-c", script]);
        let outcome =
            run(&NoSandbox, &spec, dir.path(), None, limits, &mut sink, true).expect("spawns");
        (outcome, sink)
    }

    #[test]
    fn streams_output_and_exit_code() {
        let (outcome, sink) = sh("echo out; echo err >&2; exit 3", &Limits::default());
        assert_eq!(outcome.exit, ExitKind::Code(3));
        assert_eq!(sink.stdout, b"out\n");
        assert_eq!(sink.stderr, b"err\n");
        assert_eq!(outcome.stopped, None);
    }

    #[test]
    fn wall_limit_kills_the_whole_group() {
        let limits = Limits {
            wall: Duration::from_millis(300),
            ..Limits::default()
        };
        let started = Instant::now();
        let (outcome, _) = sh("sleep 30 & sleep 30; wait", &limits);
        assert_eq!(outcome.stopped, Some(StopReason::WallTime));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_cap_truncates_and_stops() {
        let limits = Limits {
            output_bytes: 1000,
            ..Limits::default()
        };
        let (outcome, sink) = sh("yes", &limits);
        assert_eq!(outcome.stopped, Some(StopReason::OutputLimit));
        assert_eq!(sink.stdout.len(), 1000);
        assert_eq!(outcome.truncated_label(), Some("stdout"));
    }

    #[test]
    fn a_child_that_outlives_the_main_process_is_killed() {
        let marker = tempfile::tempdir().expect("tempdir");
        let flag = marker.path().join("survived");
        let script = format!("(sleep 1; touch {}) & echo started", flag.display());
        let (outcome, sink) = sh(&script, &Limits::default());
        assert_eq!(outcome.exit, ExitKind::Code(0));
        assert_eq!(sink.stdout, b"started\n");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !flag.exists(),
            "the background child should have died with the job"
        );
    }

    #[test]
    fn signals_are_reported() {
        let (outcome, _) = sh("kill -SEGV $$", &Limits::default());
        assert_eq!(outcome.exit, ExitKind::Signal(libc::SIGSEGV));
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
    }
}
