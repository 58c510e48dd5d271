//! `kiln cluster up|status|log`: start a loopback cluster of child processes and watch it, print a
//! cluster's state, and merge nodes' event logs into one causal order.
//!
//! The servers themselves are `kiln --server ... --node ... --peers ...` (`super::serve`); the
//! questions go through `crate::cluster::remote`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{EXIT_SOFTWARE, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::client::Client;
use crate::cluster::log::Event;
use crate::cluster::runtime::read_log_file;
use crate::cluster::{ClusterStatus, LogEvent, check_history, fetch_log, fetch_status, merge_logs};
use crate::server::Token;

/// `kiln cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// The `kiln cluster` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Start NODES servers on 127.0.0.1, 127.0.0.2, ... as one cluster and show their state live
    /// until Ctrl-C, then stop them.
    Up(UpArgs),
    /// Print a cluster's nodes, leader, clocks, lock holder and queue, as one node sees them.
    Status(StatusArgs),
    /// Merge nodes' event logs (files or servers) into one causal order, as JSON lines.
    Log(LogArgs),
}

/// `kiln cluster up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// How many nodes (2 to 16).
    #[arg(long, default_value_t = 4)]
    pub nodes: u32,
    /// Heartbeat period in ms.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Directory for the nodes' logs, state and output [default: a new one in the state dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (and print a summary).
    #[arg(long, value_name = "SECS")]
    pub for_secs: Option<u64>,
    /// How often the state is refreshed, in ms.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub interval_ms: u64,
    /// Print only the addresses and the final summary, not the live state.
    #[arg(long)]
    pub quiet: bool,
}

/// `kiln cluster status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Any node of the cluster, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// The cluster's token.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kiln cluster log`.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log files written by nodes (`--cluster-log`).
    pub files: Vec<PathBuf>,
    /// Fetch the log of the node at HOST:PORT (repeat for several).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Vec<String>,
    /// The cluster's token, for --server.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Check the merged lock history instead of printing it: two holders at once, fences not
    /// increasing, a request granted twice. Exits 1 if anything is found.
    #[arg(long)]
    pub check: bool,
}

/// Runs a `kiln cluster` subcommand.
pub fn run(args: ClusterArgs) -> ExitCode {
    super::init_logging("warn");
    let result = match args.command {
        ClusterCommand::Up(args) => up(&args),
        ClusterCommand::Status(args) => status(&args),
        ClusterCommand::Log(args) => log(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn status(args: &StatusArgs) -> Result<ExitCode> {
    let client = Client::new(args.server.clone(), args.token.clone())
        .with_connect_timeout(Duration::from_secs(2))
        .with_read_timeout(Some(Duration::from_secs(5)));
    let status = fetch_status(&client).with_context(|| format!("asking {}", args.server))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", format_status(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The status as a table a person reads, with the lock holder and queue below it.
pub fn format_status(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<22} {:<11} {:<21} {:>5} {:>7} {:>9}",
        "node", "address", "reachable", "role", "term", "leader", "lamport"
    );
    for node in &status.nodes {
        let (role, term, leader, lamport) = match &node.status {
            Some(s) => {
                let role = format!("{:?}{}", s.role, if s.acting { " (acting)" } else { "" })
                    .to_lowercase();
                (
                    role,
                    s.term.to_string(),
                    s.leader.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    s.lamport.to_string(),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<22} {:<11} {:<21} {:>5} {:>7} {:>9}",
            node.id.to_string(),
            if node.addr.is_empty() {
                "-"
            } else {
                &node.addr
            },
            if node.reachable { "yes" } else { "no" },
            role,
            term,
            leader,
            lamport
        );
    }
    match status.acting_leader() {
        Some(leader) => {
            let _ = writeln!(out, "leader: node {} (term {})", leader.id, leader.term);
            match leader.lock_holder {
                Some(holder) => {
                    let _ = writeln!(
                        out,
                        "lock: held by node {} (request {}, fence {})",
                        holder.node, holder.request_id, holder.fence
                    );
                }
                None => {
                    let _ = writeln!(out, "lock: free");
                }
            }
            let queue: Vec<String> = leader
                .queue
                .iter()
                .map(|q| format!("node {} (request {})", q.node, q.request_id))
                .collect();
            let _ = writeln!(
                out,
                "queue: {}",
                if queue.is_empty() {
                    "empty".to_owned()
                } else {
                    queue.join(", ")
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "leader: none acting (a majority of the nodes must reach each other)"
            );
        }
    }
    let _ = writeln!(
        out,
        "(answered by node {}, which asked each peer for its own state)",
        status.answered_by
    );
    out
}

fn log(args: &LogArgs) -> Result<ExitCode> {
    if args.files.is_empty() && args.server.is_empty() {
        eprintln!("kiln: name log files or --server addresses to merge");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let mut logs: Vec<Vec<LogEvent>> = Vec::new();
    for path in &args.files {
        logs.push(
            read_log_file(path, 0).with_context(|| format!("cannot read {}", path.display()))?,
        );
    }
    for server in &args.server {
        let client = Client::new(server.clone(), args.token.clone())
            .with_connect_timeout(Duration::from_secs(2))
            .with_read_timeout(Some(Duration::from_secs(10)));
        logs.push(fetch_log(&client, 0).with_context(|| format!("asking {server}"))?);
    }
    let merged = merge_logs(logs);
    if args.check {
        let violations = check_history(&merged);
        let grants = merged
            .iter()
            .filter(|e| matches!(e.event, Event::Acquired { .. }))
            .count();
        if violations.is_empty() {
            println!(
                "lock history of {} events is safe: {grants} acquisitions, no overlap, fences increasing",
                merged.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        for violation in &violations {
            println!("{violation:?}");
        }
        return Ok(ExitCode::from(1));
    }
    let mut stdout = std::io::stdout().lock();
    for event in &merged {
        if writeln!(stdout, "{}", event.to_json_line()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Child processes that are stopped (SIGTERM, then SIGKILL) when dropped.
struct Nodes {
    children: Vec<Child>,
}

impl Nodes {
    fn stop(&mut self) {
        for child in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn up(args: &UpArgs) -> Result<ExitCode> {
    if !(2..=16).contains(&args.nodes) {
        eprintln!(
            "kiln: --nodes must be between 2 and 16 (one loopback address each), got {}",
            args.nodes
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => crate::cluster::runtime::default_state_dir()
            .join(format!("cluster-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let token = Token::generate().as_str().to_owned();
    let mut addrs = Vec::new();
    for n in 1..=args.nodes {
        let ip = Ipv4Addr::new(127, 0, 0, u8::try_from(n).unwrap_or(1));
        // Ask the kernel for a free port, then give it to the node.
        let port = TcpListener::bind((ip, 0))
            .and_then(|listener| listener.local_addr())
            .with_context(|| format!("cannot find a free port on {ip}"))?
            .port();
        addrs.push(format!("{ip}:{port}"));
    }
    let peers: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect();
    let peers = peers.join(",");
    let exe = std::env::current_exe().context("cannot find the kiln executable")?;
    let mut nodes = Nodes {
        children: Vec::new(),
    };
    for (i, addr) in addrs.iter().enumerate() {
        let id = i + 1;
        let output = std::fs::File::create(dir.join(format!("node-{id}.out")))
            .with_context(|| format!("cannot create the output file in {}", dir.display()))?;
        let mut command = std::process::Command::new(&exe);
        command
            .arg("--server")
            .arg(addr)
            .arg("--node")
            .arg(id.to_string())
            .arg("--peers")
            .arg(&peers)
            .arg("--token")
            .arg(&token)
            .arg("--workers")
            .arg("2")
            .arg("--heartbeat-ms")
            .arg(args.heartbeat_ms.to_string())
            .arg("--cluster-log")
            .arg(dir.join(format!("node-{id}.log")))
            .arg("--cluster-state")
            .arg(dir.join(format!("node-{id}.state.json")))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // A node outlives a killed `kiln cluster up` by at most a moment.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        nodes.children.push(
            command
                .spawn()
                .with_context(|| format!("cannot start node {id}"))?,
        );
    }
    println!("Started {} nodes (logs in {}):", args.nodes, dir.display());
    for (i, addr) in addrs.iter().enumerate() {
        println!("  node {}: {addr}", i + 1);
    }
    println!("Token: {token}");
    println!(
        "Try: kiln cluster status --server {} --token {token}",
        addrs[0]
    );
    println!("Press Ctrl-C to stop them.");
    let _ = std::io::stdout().flush();

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let started = Instant::now();
    let deadline = args
        .for_secs
        .map(|secs| started + Duration::from_secs(secs));
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let live = !args.quiet;
    let clear = live && std::io::stdout().is_terminal();
    let mut failed = false;
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        for (i, child) in nodes.children.iter_mut().enumerate() {
            if let Ok(Some(exit)) = child.try_wait() {
                eprintln!(
                    "kiln: node {} exited ({exit}); see {}",
                    i + 1,
                    dir.join(format!("node-{}.out", i + 1)).display()
                );
                failed = true;
            }
        }
        if failed {
            break;
        }
        if live {
            let status = addrs.iter().find_map(|addr| {
                let client = Client::new(addr.clone(), Some(token.clone()))
                    .with_connect_timeout(Duration::from_millis(300))
                    .with_read_timeout(Some(Duration::from_secs(2)));
                fetch_status(&client).ok()
            });
            let mut screen = String::new();
            if clear {
                screen.push_str("\x1b[H\x1b[2J");
            }
            let _ = writeln!(
                screen,
                "kiln cluster: {} nodes, up {} s (Ctrl-C stops them)",
                args.nodes,
                started.elapsed().as_secs()
            );
            match status {
                Some(status) => screen.push_str(&format_status(&status)),
                None => screen.push_str("no node answers yet\n"),
            }
            print!("{screen}");
            let _ = std::io::stdout().flush();
        }
        let tick_until = Instant::now() + interval;
        while Instant::now() < tick_until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ran = started.elapsed();
    nodes.stop();
    let logs: Vec<Vec<LogEvent>> = (1..=args.nodes)
        .map(|id| read_log_file(&dir.join(format!("node-{id}.log")), 0).unwrap_or_default())
        .collect();
    print!("{}", summarize(&merge_logs(logs), ran));
    if failed {
        return Ok(ExitCode::from(EXIT_SOFTWARE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Counts what a run's merged log shows: elections, coordinators, grants, safety.
pub fn summarize(merged: &[LogEvent], ran: Duration) -> String {
    let count = |pred: &dyn Fn(&Event) -> bool| merged.iter().filter(|e| pred(&e.event)).count();
    let elections = count(&|e| matches!(e, Event::ElectionStarted));
    let elected = count(&|e| matches!(e, Event::Elected));
    let acquired = count(&|e| matches!(e, Event::Acquired { .. }));
    // Every node starts an election when it boots (bully); the ones that count come after the
    // first coordinator was elected.
    let first_elected = merged
        .iter()
        .position(|e| matches!(e.event, Event::Elected))
        .unwrap_or(merged.len());
    let later = merged[first_elected..]
        .iter()
        .filter(|e| matches!(e.event, Event::ElectionStarted))
        .count();
    let violations = check_history(merged);
    format!(
        "Ran {:.1} s: {elections} election(s) started ({later} after the first coordinator was elected), {elected} coordinator(s) elected, {acquired} lock acquisition(s), {} safety violation(s)\n",
        ran.as_secs_f64(),
        violations.len()
    )
}
