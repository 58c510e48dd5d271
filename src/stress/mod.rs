//! `kiln stress`: loads a server with many short clients and reports what clients and server saw,
//! step by step, for the pool and the fork model side by side.
//!
//! `driver` is the load generator (epoll client loops over 127.0.0.x source addresses); `target`
//! starts the servers as child processes and reads their STATS; `report` makes the markdown
//! table; `chart` draws time and throughput against clients. The command line is [`StressArgs`],
//! reached from `cli/commands.rs`.

pub mod chart;
pub mod driver;
pub mod report;
pub mod target;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::protocol::{Intent, RequestHead, Verdict, encode_request_head};
use crate::server::ServerModel;
use driver::Load;
use report::StepRow;
use target::{ServerDelta, ServerProcess};

/// The client counts of the classic table.
pub const FULL_STEPS: &[usize] = &[100, 500, 1000, 2000, 4000, 8000, 12_000, 50_000, 100_000];

/// Which self-started servers to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelChoice {
    /// The thread pool.
    Pool,
    /// A child process per request.
    Fork,
    /// Both, one after the other at each step.
    Both,
}

/// What each client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StressIntent {
    /// PING: measures the server, not the job.
    Ping,
    /// RUN a small program (`--source`, or one that prints a line).
    Run,
}

/// `kiln stress`.
#[derive(Debug, Clone, Args)]
pub struct StressArgs {
    /// Load the server at HOST:PORT (loopback only) instead of starting servers.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "model")]
    pub server: Option<String>,
    /// The model(s) to start and load.
    #[arg(long, value_enum, default_value_t = ModelChoice::Both)]
    pub model: ModelChoice,
    /// Clients per step, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 10_000])]
    pub clients: Vec<usize>,
    /// Clients at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub concurrency: usize,
    /// What each client asks.
    #[arg(long, value_enum, default_value_t = StressIntent::Ping)]
    pub intent: StressIntent,
    /// The program to RUN (with `--intent run`); a one-line Python program otherwise.
    #[arg(long, value_name = "FILE")]
    pub source: Option<PathBuf>,
    /// The language of `--source` [default: python].
    #[arg(long, default_value = "python")]
    pub lang: String,
    /// Write the report (markdown table) to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Draw time and throughput against clients to FILE.svg and FILE.png.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// How long a client waits for its whole answer, in ms.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Client threads (each an epoll loop).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub threads: usize,
    /// Spread clients over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub source_addresses: usize,
    /// Started servers: worker threads (pool).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Started servers: queue length (pool).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue: usize,
    /// Started servers: most children at once (fork).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_children: usize,
    /// The token of `--server`.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// What a step loads.
#[derive(Debug, Clone)]
pub enum Target {
    /// A server this tool starts, fresh for each step.
    Start {
        /// The `kiln` binary.
        exe: PathBuf,
        /// Its model.
        model: ServerModel,
        /// More arguments for it.
        extra: Vec<String>,
    },
    /// A server that is already running.
    Running {
        /// Its address.
        addr: SocketAddr,
        /// What to call it in the table.
        name: String,
    },
}

impl Target {
    /// The name in the table.
    pub fn name(&self) -> String {
        match self {
            Target::Start { model, .. } => model.as_str().to_owned(),
            Target::Running { name, .. } => name.clone(),
        }
    }
}

/// Everything about a step but its target and size.
#[derive(Debug, Clone)]
pub struct StepPlan {
    /// The request every client sends.
    pub request: Arc<Vec<u8>>,
    /// The verdict of a good answer.
    pub expect: Verdict,
    /// Clients at once.
    pub concurrency: usize,
    /// Client threads.
    pub threads: usize,
    /// Source addresses.
    pub source_addresses: usize,
    /// Per-client timeout.
    pub timeout: Duration,
    /// Token for STATS.
    pub token: Option<String>,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

impl StepPlan {
    /// A PING plan.
    pub fn ping(concurrency: usize) -> StepPlan {
        StepPlan {
            request: Arc::new(encode_request_head(&RequestHead::new(Intent::Ping))),
            expect: Verdict::Pong,
            concurrency,
            threads: 2,
            source_addresses: 16,
            timeout: Duration::from_secs(30),
            token: None,
            progress: false,
        }
    }
}

/// Runs one step: starts the target if needed, reads STATS, loads it, reads STATS again.
///
/// # Errors
/// If the server cannot be started or the load cannot run.
pub fn run_step(target: &Target, clients: usize, plan: &StepPlan) -> Result<StepRow> {
    let process = match target {
        Target::Start { exe, model, extra } => Some(ServerProcess::start(exe, *model, extra)?),
        Target::Running { .. } => None,
    };
    let addr = match (target, &process) {
        (_, Some(process)) => process.addr(),
        (Target::Running { addr, .. }, None) => *addr,
        (Target::Start { .. }, None) => bail!("the server did not start"),
    };
    let token = plan.token.as_deref();
    // A server without STATS (the benchmark's baseline) still gets loaded; it just has no counters.
    let before = target::fetch_stats(addr, token).ok();
    let concurrency = plan.concurrency.clamp(1, clients.max(1));
    let load = Load {
        addr,
        request: Arc::clone(&plan.request),
        expect: plan.expect,
        clients,
        concurrency,
        threads: plan.threads,
        sources: driver::loopback_sources(plan.source_addresses),
        timeout: plan.timeout,
    };
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let label = format!("{} {clients} clients", target.name());
    let result = std::thread::scope(|scope| {
        if plan.progress && std::io::stderr().is_terminal() {
            scope.spawn(|| progress_bar(&label, clients, &done, &finished));
        }
        let result = driver::run(&load, &done);
        finished.store(true, Ordering::SeqCst);
        result
    })
    .context("the load generator failed")?;
    let server = match before {
        Some(before) => settled_stats(addr, token)
            .map(|(after, requests)| ServerDelta::between(&before, &after, requests)),
        None => None,
    };
    if let Some(process) = process {
        process.stop(Duration::from_secs(10));
    }
    Ok(StepRow {
        model: target.name(),
        clients,
        concurrency,
        load: result,
        server,
    })
}

/// STATS once the step's last jobs have been counted: a fork child is counted when it is reaped,
/// which may be a moment after its client read the answer. Waits at most 3 s.
/// Also returns how many STATS requests that took, as each is counted too.
fn settled_stats(addr: SocketAddr, token: Option<&str>) -> Option<(crate::protocol::Fields, u64)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut requests = 0;
    loop {
        let stats = target::fetch_stats(addr, token).ok()?;
        requests += 1;
        // The job answering STATS counts itself as active.
        let settled = stats
            .get_parsed::<u64>("active")
            .is_none_or(|active| active <= 1);
        if settled || Instant::now() >= deadline {
            return Some((stats, requests));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn progress_bar(label: &str, total: usize, done: &AtomicU64, finished: &AtomicBool) {
    const WIDTH: usize = 40;
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    loop {
        let over = finished.load(Ordering::SeqCst);
        let count = done.load(Ordering::Relaxed) as usize;
        let filled = (count * WIDTH)
            .checked_div(total)
            .unwrap_or(WIDTH)
            .min(WIDTH);
        let _ = write!(
            stderr,
            "\r{label:>24} [{}{}] {count}/{total} {:.1} s",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            started.elapsed().as_secs_f64()
        );
        let _ = stderr.flush();
        if over {
            let _ = writeln!(stderr);
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kiln stress`: runs the steps, prints the table, writes the report and the chart.
///
/// # Errors
/// On a bad option, a server that does not start, or a file that cannot be written.
pub fn run(args: &StressArgs) -> Result<ExitCode> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!(
            "--clients must list counts of at least 1, got {:?}",
            args.clients
        );
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1, got 0");
    }
    let open_files = driver::raise_open_files_limit();
    let wanted = args
        .concurrency
        .min(args.clients.iter().copied().max().unwrap_or(1));
    if open_files > 0 && (wanted as u64) + 64 > open_files {
        bail!(
            "--concurrency {wanted} needs about {} open files but this process may open {open_files} (ulimit -n)",
            wanted + 64
        );
    }
    let plan = StepPlan {
        concurrency: args.concurrency,
        threads: args.threads.max(1),
        source_addresses: args.source_addresses,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        token: args.token.clone(),
        progress: true,
        ..request_plan(args)?
    };
    let targets = targets(args)?;
    let mut rows = Vec::new();
    println!("{}", report::header().trim_end());
    for &clients in &args.clients {
        for target in &targets {
            let row = run_step(target, clients, &plan)?;
            print!("{}", report::row(&row));
            let _ = std::io::stdout().flush();
            rows.push(row);
        }
    }
    let setup = format!(
        "`kiln stress --intent {} --concurrency {} --clients {}` on {} cores, {} client threads, clients spread over {} loopback addresses.",
        match args.intent {
            StressIntent::Ping => "ping",
            StressIntent::Run => "run",
        },
        args.concurrency,
        args.clients
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        std::thread::available_parallelism().map_or(1, usize::from),
        plan.threads,
        plan.source_addresses,
    );
    if let Some(out) = &args.out {
        std::fs::write(out, report::markdown("Kiln stress report", &setup, &rows))
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("kiln: report written to {}", out.display());
    }
    if let Some(path) = &args.chart {
        let (svg, png) = chart::write(path, &rows)?;
        eprintln!(
            "kiln: chart written to {} and {}",
            svg.display(),
            png.display()
        );
    }
    let errors: u64 = rows.iter().map(|row| row.load.errors.total()).sum();
    if errors > 0 {
        eprintln!("kiln: clients saw {errors} errors (see the table)");
    }
    Ok(ExitCode::SUCCESS)
}

fn request_plan(args: &StressArgs) -> Result<StepPlan> {
    let mut head = match args.intent {
        StressIntent::Ping => RequestHead::new(Intent::Ping),
        StressIntent::Run => RequestHead::new(Intent::Run),
    };
    head.token = args.token.clone();
    let mut body = Vec::new();
    let expect = match args.intent {
        StressIntent::Ping => Verdict::Pong,
        StressIntent::Run => {
            body = match &args.source {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read --source {}", path.display()))?,
                None => b"print('kiln stress')\n".to_vec(),
            };
            head.language = Some(args.lang.clone());
            head.source_length = body.len() as u64;
            Verdict::Ok
        }
    };
    let mut request = encode_request_head(&head);
    request.extend_from_slice(&body);
    Ok(StepPlan {
        request: Arc::new(request),
        expect,
        ..StepPlan::ping(1)
    })
}

fn targets(args: &StressArgs) -> Result<Vec<Target>> {
    if let Some(server) = &args.server {
        let addr = resolve_loopback(server)?;
        return Ok(vec![Target::Running {
            addr,
            name: server.clone(),
        }]);
    }
    let exe = std::env::current_exe().context("cannot find the kiln binary to start servers")?;
    let models: &[ServerModel] = match args.model {
        ModelChoice::Pool => &[ServerModel::Pool],
        ModelChoice::Fork => &[ServerModel::Fork],
        ModelChoice::Both => &[ServerModel::Pool, ServerModel::Fork],
    };
    Ok(models
        .iter()
        .map(|&model| Target::Start {
            exe: exe.clone(),
            model,
            extra: server_args(args, model),
        })
        .collect())
}

fn server_args(args: &StressArgs, model: ServerModel) -> Vec<String> {
    let mut extra = Vec::new();
    match model {
        ServerModel::Pool => {
            if let Some(workers) = args.workers {
                extra.extend(["--workers".to_owned(), workers.to_string()]);
            }
            extra.extend(["--queue".to_owned(), args.queue.to_string()]);
        }
        ServerModel::Fork => {
            extra.extend(["--max-children".to_owned(), args.max_children.to_string()]);
        }
    }
    extra
}

/// Resolves `--server` and keeps the load on this machine: a stress test sends traffic only to
/// loopback addresses.
fn resolve_loopback(server: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addr = server
        .to_socket_addrs()
        .with_context(|| format!("--server {server} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("--server {server} resolves to no address"))?;
    if !addr.ip().is_loopback() {
        bail!(
            "kiln stress loads only servers on this machine (127.0.0.0/8 or ::1); --server {server} is {addr}"
        );
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_are_loaded() {
        assert_eq!(
            resolve_loopback("127.0.0.1:9").expect("loopback"),
            "127.0.0.1:9".parse::<SocketAddr>().expect("addr")
        );
        assert!(resolve_loopback("[::1]:9").is_ok());
        let error = resolve_loopback("10.1.2.3:80").expect_err("not loopback");
        assert!(error.to_string().contains("10.1.2.3:80"), "{error}");
        assert!(resolve_loopback("no-port").is_err());
    }

    #[test]
    fn run_requests_carry_the_source() {
        let args = StressArgs {
            server: None,
            model: ModelChoice::Both,
            clients: vec![1],
            concurrency: 1,
            intent: StressIntent::Run,
            source: None,
            lang: "python".into(),
            out: None,
            chart: None,
            timeout_ms: 1000,
            threads: 1,
            source_addresses: 1,
            workers: None,
            queue: 1,
            max_children: 1,
            token: Some("secret".into()),
        };
        let plan = request_plan(&args).expect("plan");
        let text = String::from_utf8_lossy(&plan.request);
        assert!(text.starts_with("KILN/1 RUN python\n"), "{text}");
        assert!(text.contains("Token: secret\n"), "{text}");
        assert!(text.ends_with("\n\nprint('kiln stress')\n"), "{text}");
        assert_eq!(plan.expect, Verdict::Ok);
    }
}
