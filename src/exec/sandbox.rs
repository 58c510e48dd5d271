//! How a job's processes are isolated. [`NoSandbox`] only applies rlimits and a process group; the
//! bubblewrap sandbox (`super::bwrap`) implements the same trait with namespaces, so the runner
//! (`super::process`) does not change.
//!
//! One rule ties the pieces together: a job's processes run as the owner of its directory.
//! [`Sandbox::prepare`] picks that user (and hands the directory to it); the runner counts that
//! user's processes for RLIMIT_NPROC.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

use super::process::{CommandSpec, ExitKind};

/// A command ready to spawn, and the descriptors its process must keep across exec.
pub struct SandboxCommand {
    /// What to spawn.
    pub command: Command,
    /// Descriptors the sandbox tool reads in the child (bwrap's seccomp filter). The runner marks
    /// every other inherited descriptor close-on-exec; these it leaves open, last.
    pub inherit: Vec<OwnedFd>,
}

impl From<Command> for SandboxCommand {
    fn from(command: Command) -> Self {
        SandboxCommand {
            command,
            inherit: Vec::new(),
        }
    }
}

/// Turns a command into the `Command` that runs it isolated.
pub trait Sandbox: Send + Sync {
    /// The name INFO reports (`none`, `bwrap`).
    fn name(&self) -> &str;

    /// Builds the command that runs `spec` with `job_dir` as its only writable place.
    fn command(&self, spec: &CommandSpec, job_dir: &Path) -> SandboxCommand;

    /// Makes a fresh job directory ready: chooses the user the job runs as and gives it the
    /// directory. The user stays reserved until the returned value is dropped.
    ///
    /// # Errors
    /// When no user is free or the directory cannot be handed over.
    fn prepare(&self, job_dir: &Path) -> io::Result<JobUser> {
        let _ = job_dir;
        Ok(JobUser::current())
    }

    /// How the program really ended, given how the process the runner started ended (a sandbox
    /// that wraps the program may report its signals as exit codes).
    fn decode_exit(&self, exit: ExitKind) -> ExitKind {
        exit
    }
}

/// The user a job runs as, reserved while this value lives.
pub struct JobUser {
    uid: u32,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for JobUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobUser").field("uid", &self.uid).finish()
    }
}

impl JobUser {
    /// The server's own user (no isolation by user).
    pub fn current() -> JobUser {
        JobUser {
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            release: None,
        }
    }

    /// A user that `release` hands back when the job ends.
    pub fn leased(uid: u32, release: impl FnOnce() + Send + 'static) -> JobUser {
        JobUser {
            uid,
            release: Some(Box::new(release)),
        }
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for JobUser {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// No isolation beyond rlimits: for trusted local use (the app's embedded server on loopback).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSandbox;

impl Sandbox for NoSandbox {
    fn name(&self) -> &str {
        "none"
    }

    fn command(&self, spec: &CommandSpec, job_dir: &Path) -> SandboxCommand {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .current_dir(job_dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", job_dir)
            .env("TMPDIR", job_dir)
            .env("LANG", "C.UTF-8");
        for (key, value) in &spec.env {
            command.env(key, value);
        }
        command.into()
    }
}
