//! Helpers for tests that run real cluster nodes: `TestCluster` starts `kiln --server --node
//! --peers` children on 127.0.0.1..N (killing them all when dropped, even after a failed
//! assertion), and `FencedCounter` is a tiny TCP service that keeps a counter and refuses any
//! read or write whose fencing token is lower than the highest it has seen.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln::client::{Client, JobResult, JobSpec};
use kiln::cluster::remote::fetch_node_status;
use kiln::cluster::runtime::read_log_file;
use kiln::cluster::{LogEvent, NodeStatus, merge_logs};
use kiln::protocol::Intent;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The token every test cluster uses.
pub const TOKEN: &str = "cluster-test-token";

/// Real node processes on loopback, killed when dropped.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<String>,
    children: Vec<Option<Child>>,
    stopped: Vec<bool>,
    peers: String,
    heartbeat_ms: u64,
}

impl TestCluster {
    /// Starts `nodes` nodes (ids 1..=nodes on 127.0.0.id) and returns once all answer PING.
    pub fn start(nodes: u32, heartbeat_ms: u64) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut addrs = Vec::new();
        for id in 1..=nodes {
            let ip = Ipv4Addr::new(127, 0, 0, u8::try_from(id).expect("small id"));
            let port = TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            addrs.push(format!("{ip}:{port}"));
        }
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            dir,
            addrs,
            children: (0..nodes).map(|_| None).collect(),
            stopped: vec![false; nodes as usize],
            peers,
            heartbeat_ms,
        };
        for id in 1..=nodes {
            cluster.spawn(id);
        }
        for id in 1..=nodes {
            cluster.wait_answering(id, Duration::from_secs(20));
        }
        cluster
    }

    /// The node's log file.
    pub fn log_path(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// (Re)starts node `id` with its old address, log and state.
    pub fn spawn(&mut self, id: u32) {
        let index = (id - 1) as usize;
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.out")))
            .expect("output file");
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env_remove("KILN_TOKEN")
            .env("RUST_LOG", "info")
            .args(["--server", &self.addrs[index]])
            .args(["--node", &id.to_string()])
            .args(["--peers", &self.peers])
            .args(["--token", TOKEN])
            .args(["--workers", "3"])
            // The jobs write to the fenced counter over loopback TCP, which the sandbox's own
            // network namespace would hide from them.
            .arg("--no-sandbox")
            .args(["--heartbeat-ms", &self.heartbeat_ms.to_string()])
            .arg("--cluster-log")
            .arg(self.log_path(id))
            .arg("--cluster-state")
            .arg(self.dir.path().join(format!("node-{id}.state.json")))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup"))
            .stderr(output)
            .spawn()
            .expect("kiln starts");
        self.children[index] = Some(child);
        self.stopped[index] = false;
    }

    /// Waits until node `id` answers PING.
    pub fn wait_answering(&self, id: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = self.client(id, Duration::from_millis(500));
        while Instant::now() < deadline {
            if client.ping().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {id} did not answer within {timeout:?}");
    }

    /// A client for node `id` with short timeouts.
    pub fn client(&self, id: u32, timeout: Duration) -> Client {
        Client::new(self.addrs[(id - 1) as usize].clone(), Some(TOKEN.into()))
            .with_connect_timeout(timeout)
            .with_read_timeout(Some(timeout))
    }

    fn pid(&self, id: u32) -> Option<Pid> {
        self.children[(id - 1) as usize]
            .as_ref()
            .map(|child| Pid::from_raw(i32::try_from(child.id()).expect("pid")))
    }

    /// Whether node `id` runs and is not stopped.
    pub fn is_up(&self, id: u32) -> bool {
        let index = (id - 1) as usize;
        self.children[index].is_some() && !self.stopped[index]
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children[(id - 1) as usize].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped[(id - 1) as usize] = false;
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&mut self, id: u32) {
        if let Some(pid) = self.pid(id) {
            kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
            self.stopped[(id - 1) as usize] = true;
        }
    }

    /// SIGSTOPs node `id` and its direct children (the jobs it runs), so a job holding the lock
    /// stalls with its node, as on a frozen machine. Returns the children stopped.
    pub fn pause_with_jobs(&mut self, id: u32) -> Vec<Pid> {
        let Some(pid) = self.pid(id) else {
            return Vec::new();
        };
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        self.stopped[(id - 1) as usize] = true;
        let children = children_of(pid);
        for &child in &children {
            let _ = kill(child, Signal::SIGSTOP);
        }
        children
    }

    /// SIGCONTs node `id` and the children `pause_with_jobs` stopped.
    pub fn resume_with_jobs(&mut self, id: u32, children: &[Pid]) {
        for &child in children {
            let _ = kill(child, Signal::SIGCONT);
        }
        self.resume(id);
    }

    /// SIGCONTs node `id`.
    pub fn resume(&mut self, id: u32) {
        if let Some(pid) = self.pid(id) {
            kill(pid, Signal::SIGCONT).expect("SIGCONT");
            self.stopped[(id - 1) as usize] = false;
        }
    }

    /// The ids of the nodes.
    pub fn ids(&self) -> Vec<u32> {
        (1..=self.addrs.len() as u32).collect()
    }

    /// Each running node's own status (nodes that do not answer are left out).
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_up(id))
            .filter_map(|id| fetch_node_status(&self.client(id, Duration::from_millis(500))).ok())
            .collect()
    }

    /// The acting coordinator with the highest term, if any running node is one.
    pub fn acting_leader(&self) -> Option<NodeStatus> {
        self.statuses()
            .into_iter()
            .filter(|status| status.acting)
            .max_by_key(|status| status.term)
    }

    /// Waits for an acting coordinator that every running node follows.
    pub fn wait_stable_leader(&self, timeout: Duration) -> NodeStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let statuses = self.statuses();
            let running = self.ids().into_iter().filter(|&id| self.is_up(id)).count();
            if let Some(leader) = statuses.iter().filter(|s| s.acting).max_by_key(|s| s.term)
                && statuses.len() == running
                && statuses
                    .iter()
                    .all(|s| s.leader == Some(leader.id) && s.term == leader.term)
            {
                return leader.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no stable coordinator within {timeout:?}");
    }

    /// Every node's log, merged.
    pub fn merged_log(&self) -> Vec<LogEvent> {
        merge_logs(
            self.ids()
                .into_iter()
                .map(|id| read_log_file(&self.log_path(id), 0).unwrap_or_default())
                .collect(),
        )
    }

    /// The node's output so far (for failure messages).
    pub fn output(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.out"))).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Fields after the command name (which may hold spaces) start after the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(parent.as_raw())
            })
        })
        .map(Pid::from_raw)
        .collect()
}

/// The counter service's state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    /// The value clients wrote.
    pub value: u64,
    /// Writes it accepted (each one acknowledged with `OK`).
    pub accepted_writes: u64,
    /// Reads and writes it refused for a stale fence.
    pub rejected: u64,
    /// The highest fence seen.
    pub highest_fence: u64,
}

/// A counter behind a fenced TCP service: `READ <fence>` answers `VALUE <n>`, `WRITE <fence> <n>`
/// answers `OK`; either answers `REJECT` if `fence` is below the highest fence seen.
pub struct FencedCounter {
    pub port: u16,
    pub state: Arc<Mutex<CounterState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FencedCounter {
    /// Starts the service on 127.0.0.1 with a free port.
    pub fn start() -> FencedCounter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(CounterState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = Arc::clone(&state);
                            std::thread::spawn(move || serve_counter(stream, &state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FencedCounter {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The state now.
    pub fn snapshot(&self) -> CounterState {
        *self.state.lock().expect("counter lock")
    }
}

impl Drop for FencedCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_counter(stream: TcpStream, state: &Mutex<CounterState>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = {
            let mut state = state.lock().expect("counter lock");
            let fence = words.get(1).and_then(|w| w.parse::<u64>().ok());
            match (words.first().copied(), fence) {
                (_, Some(fence)) if fence < state.highest_fence => {
                    state.rejected += 1;
                    "REJECT".to_owned()
                }
                (Some("READ"), Some(fence)) => {
                    state.highest_fence = fence;
                    format!("VALUE {}", state.value)
                }
                (Some("WRITE"), Some(fence)) => match words.get(2).and_then(|w| w.parse().ok()) {
                    Some(value) => {
                        state.highest_fence = fence;
                        state.value = value;
                        state.accepted_writes += 1;
                        "OK".to_owned()
                    }
                    None => "ERROR bad value".to_owned(),
                },
                _ => "ERROR expected READ <fence> or WRITE <fence> <value>".to_owned(),
            }
        };
        if writer.write_all(format!("{answer}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// The program an exclusive job runs: read the counter and write it back plus one, both under
/// the job's fence. Prints `OK` when the write was accepted.
pub const INCREMENT_PY: &str = r#"
import os, socket, sys, time
fence = os.environ["KILN_FENCE"]
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
stream = conn.makefile("rw")
stream.write("READ %s\n" % fence); stream.flush()
answer = stream.readline().split()
if not answer or answer[0] != "VALUE":
    print("REJECTED read"); sys.exit(3)
# Hold the lock a moment, so faults often land inside a critical section.
time.sleep(0.2)
stream.write("WRITE %s %d\n" % (fence, int(answer[1]) + 1)); stream.flush()
result = stream.readline().strip()
print(result)
sys.exit(0 if result == "OK" else 4)
"#;

/// Runs one exclusive increment on `client`; returns the result and stdout.
pub fn exclusive_increment(
    client: &Client,
    port: u16,
    time_limit_ms: u64,
) -> Result<(JobResult, String), String> {
    let mut job = JobSpec::code(Intent::Run, "python", INCREMENT_PY);
    job.head.args.push(port.to_string());
    job.head.time_limit_ms = Some(time_limit_ms);
    job.head.extra.push(("Exclusive".into(), "yes".into()));
    let (events, result) = client.run_to_end(&job).map_err(|e| e.to_string())?;
    let mut stdout = Vec::new();
    for event in events {
        if let kiln::client::Event::Stdout(bytes) = event {
            stdout.extend_from_slice(&bytes);
        }
    }
    Ok((result, String::from_utf8_lossy(&stdout).into_owned()))
}

/// Where a test's artefacts are, for failure messages.
pub fn describe(dir: &Path) -> String {
    format!("logs in {}", dir.display())
}
