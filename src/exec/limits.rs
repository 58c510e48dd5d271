//! Resource limits of a job's processes, their defaults, and clamping a client's wishes to them.

use std::time::Duration;

/// Limits on one process tree (a compile or a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time before the whole process tree is killed.
    pub wall: Duration,
    /// CPU time (RLIMIT_CPU, whole seconds rounded up; SIGXCPU then SIGKILL).
    pub cpu: Duration,
    /// Address space in MiB (RLIMIT_AS).
    pub memory_mib: u64,
    /// Processes the job's user may have (RLIMIT_NPROC).
    pub processes: u64,
    /// Largest file the program may write, in bytes (RLIMIT_FSIZE).
    pub file_size: u64,
    /// Bytes of stdout plus stderr sent to the client before the run is stopped.
    pub output_bytes: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu: Duration::from_secs(10),
            memory_mib: 512,
            processes: 64,
            file_size: 64 * 1024 * 1024,
            output_bytes: 4 * 1024 * 1024,
            open_files: 256,
        }
    }
}

impl Limits {
    /// Limits for compilers, which need more memory and time than most programs.
    pub fn compile_default() -> Self {
        Limits {
            wall: Duration::from_secs(60),
            cpu: Duration::from_secs(60),
            memory_mib: 4096,
            processes: 128,
            file_size: 512 * 1024 * 1024,
            output_bytes: 1024 * 1024,
            open_files: 1024,
        }
    }
}

/// The limits a client asked for in `Time-Limit-Ms` and `Memory-Limit-Mib`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsOverride {
    /// Requested wall-time limit of the run.
    pub time_limit_ms: Option<u64>,
    /// Requested memory limit of the run.
    pub memory_limit_mib: Option<u64>,
}

impl LimitsOverride {
    /// The run limits for a job: the defaults, with the client's wishes clamped to `max`.
    pub fn apply(self, defaults: &Limits, max: &Limits) -> Limits {
        let mut limits = defaults.clone();
        if let Some(ms) = self.time_limit_ms {
            let wall = Duration::from_millis(ms.max(1)).min(max.wall);
            limits.wall = wall;
            limits.cpu = wall.min(max.cpu);
        }
        if let Some(mib) = self.memory_limit_mib {
            limits.memory_mib = mib.clamp(16, max.memory_mib);
        }
        limits.wall = limits.wall.min(max.wall);
        limits.cpu = limits.cpu.min(max.cpu);
        limits.memory_mib = limits.memory_mib.min(max.memory_mib);
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_wishes_are_clamped_to_the_maximum() {
        let defaults = Limits::default();
        let max = Limits {
            wall: Duration::from_secs(20),
            cpu: Duration::from_secs(20),
            memory_mib: 1024,
            ..Limits::default()
        };
        let asked = LimitsOverride {
            time_limit_ms: Some(u64::MAX),
            memory_limit_mib: Some(1 << 40),
        };
        let limits = asked.apply(&defaults, &max);
        assert_eq!(limits.wall, Duration::from_secs(20));
        assert_eq!(limits.memory_mib, 1024);

        let asked = LimitsOverride {
            time_limit_ms: Some(1500),
            memory_limit_mib: Some(1),
        };
        let limits = asked.apply(&defaults, &max);
        assert_eq!(limits.wall, Duration::from_millis(1500));
        assert_eq!(limits.cpu, Duration::from_millis(1500));
        assert_eq!(limits.memory_mib, 16);
        assert_eq!(LimitsOverride::default().apply(&defaults, &max), defaults);
    }
}
