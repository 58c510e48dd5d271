//! How a job's processes are isolated. [`NoSandbox`] only applies rlimits and a process group; a
//! namespace sandbox (bubblewrap) implements the same trait, so the runner does not change.

use std::path::Path;
use std::process::Command;

use super::process::CommandSpec;

/// Turns a command into the `Command` that runs it isolated.
pub trait Sandbox: Send + Sync {
    /// The name INFO reports (`none`, `bwrap`).
    fn name(&self) -> &str;

    /// Builds the command that runs `spec` with `job_dir` as its only writable place.
    fn command(&self, spec: &CommandSpec, job_dir: &Path) -> Command;
}

/// No isolation beyond rlimits: for trusted local use (the app's embedded server on loopback).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSandbox;

impl Sandbox for NoSandbox {
    fn name(&self) -> &str {
        "none"
    }

    fn command(&self, spec: &CommandSpec, job_dir: &Path) -> Command {
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
        command
    }
}
