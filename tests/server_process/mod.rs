//! A `kiln --server 127.0.0.1:0 ...` child process for integration tests that need a real server
//! process (the fork model must be its own single-threaded process; the EMFILE test lowers the
//! child's file limit). Shared by `fork_model.rs` and `load.rs`.

#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kiln::client::{Client, Event, JobSpec};
use kiln::protocol::{Fields, Intent};

/// A server process, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl ServerProcess {
    /// Starts `kiln --server 127.0.0.1:0 ARGS...`.
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_with_file_limit(args, None)
    }

    /// Starts it with RLIMIT_NOFILE lowered to `limit` in the child.
    pub fn start_with_file_limit(args: &[&str], limit: Option<u64>) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .args(["--server", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(limit) = limit {
            // SAFETY: setrlimit is async-signal-safe; the pointer is to a local.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("start kiln --server");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let addr = line
            .trim()
            .strip_prefix("Kiln server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .expect("address");
        ServerProcess {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// A client for it.
    pub fn client(&self) -> Client {
        Client::new(self.addr.to_string(), None).with_read_timeout(Some(Duration::from_secs(30)))
    }

    /// Its STATS.
    pub fn stats(&self) -> Fields {
        self.try_stats().expect("STATS")
    }

    /// Its STATS, or the error (a fork server at its child cap answers `busy`).
    pub fn try_stats(&self) -> Result<Fields, String> {
        let response = self
            .client()
            .start(&JobSpec::simple(Intent::Stats))
            .map_err(|error| error.to_string())?;
        for event in response {
            if let Event::Stats(fields) = event.map_err(|error| error.to_string())? {
                return Ok(fields);
            }
        }
        Err("no stats frame".into())
    }

    /// A counter from STATS.
    pub fn counter(&self, key: &str) -> u64 {
        self.stats()
            .get_parsed(key)
            .unwrap_or_else(|| panic!("STATS has no {key}"))
    }

    /// Waits up to `limit` for `check` to hold on STATS (retrying refused STATS requests).
    pub fn wait_for_stats(&self, limit: Duration, check: impl Fn(&Fields) -> bool) -> Fields {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.try_stats();
            match &stats {
                Ok(fields) if check(fields) => return fields.clone(),
                _ if Instant::now() >= deadline => return stats.expect("STATS"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Child processes of the server that are zombies now.
    pub fn zombie_children(&self) -> Vec<u32> {
        children_of(self.pid())
            .into_iter()
            .filter(|(_, state)| *state == 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Zombie children left after `limit`: a child that just answered is a zombie for the moment
    /// until the server reaps it, so only zombies that stay count.
    pub fn lasting_zombies(&self, limit: Duration) -> Vec<u32> {
        let deadline = Instant::now() + limit;
        loop {
            let zombies = self.zombie_children();
            if zombies.is_empty() || Instant::now() >= deadline {
                return zombies;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time the server has used (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no pointer arguments.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        // SAFETY: a signal to our own unreaped child.
        unsafe {
            libc::kill(self.pid() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (pid, state) of every process whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            let mut fields = after_name.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

/// Raises this test process's open-file limit to the hard limit.
pub fn raise_open_files() -> u64 {
    kiln::stress::driver::raise_open_files_limit()
}
