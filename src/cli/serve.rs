//! `kiln --server [ADDR:]PORT`: the headless server, its options, its token and its signals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::exec::bwrap::SandboxUnavailable;
use crate::exec::cache::CompileCache;
use crate::exec::{self, Executor, Limits};
use crate::server::{self, ServerConfig, ServerModel, Token};

/// Options of the headless server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Worker threads that run jobs [default: number of cores].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Requests that may wait for a worker; beyond that new requests are answered `busy`.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue: usize,
    /// Token clients must send (required on a non-loopback address; generated if not given).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Largest source accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::protocol::DEFAULT_MAX_SOURCE)]
    pub max_source: u64,
    /// Largest stdin accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::protocol::DEFAULT_MAX_STDIN)]
    pub max_stdin: u64,
    /// Default wall-time limit of a run, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub time_limit_ms: u64,
    /// Most wall time a client may ask for, in ms.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub max_time_limit_ms: u64,
    /// Default memory limit of a run, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub memory_limit_mib: u64,
    /// Most memory a client may ask for, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub max_memory_limit_mib: u64,
    /// Bytes of output (stdout + stderr) a run may send before it is stopped.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub output_limit: u64,
    /// Time a client has to send its request header, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,
    /// Time a client has to send the body after the header, in ms.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// How long running jobs may finish after SIGINT/SIGTERM, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub grace_ms: u64,
    /// How requests run: `pool` (worker threads and a queue) or `fork` (a child process each).
    #[arg(long, value_enum, default_value_t = ServerModel::Pool)]
    pub model: ServerModel,
    /// Fork model: child processes alive at once; beyond that new requests are answered `busy`.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_children: usize,
    /// CHECK, RUN and BUILD jobs one client address may have queued or running at once
    /// [default: half the workers, at least 1].
    #[arg(long, value_name = "N")]
    pub max_jobs_per_peer: Option<usize>,
    /// Wall-time limit of a compile, in ms.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub compile_time_limit_ms: u64,
    /// Size of the compile cache on disk, in MiB (0 turns it off).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub compile_cache_mib: u64,
    /// Serve a non-loopback address even when jobs cannot be sandboxed (bubblewrap missing or
    /// user namespaces off): jobs then run with the server's own rights. Only for trusted clients.
    #[arg(long)]
    pub allow_unsandboxed: bool,
    /// Run jobs without the sandbox even where it works, e.g. trusted jobs that must reach the
    /// network (off loopback this also needs --allow-unsandboxed).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Join a cluster as node ID (needs --peers).
    #[arg(long, value_name = "ID", requires = "peers")]
    pub node: Option<u32>,
    /// The cluster's nodes, `ID=HOST:PORT,...` (static membership; this node's entry may appear).
    #[arg(long, value_name = "ID=HOST:PORT,...", requires = "node")]
    pub peers: Option<String>,
    /// The node's JSON-lines event log [default: $XDG_STATE_HOME/kiln/cluster-node-ID.log].
    #[arg(long, value_name = "FILE", requires = "node")]
    pub cluster_log: Option<PathBuf>,
    /// The node's persistent state (term, vote) [default: next to the default log].
    #[arg(long, value_name = "FILE", requires = "node")]
    pub cluster_state: Option<PathBuf>,
    /// Cluster heartbeat period in ms; failure detection and leases scale with it (same on
    /// every node).
    #[arg(long, value_name = "MS", default_value_t = 100, requires = "node")]
    pub heartbeat_ms: u64,
}

/// Parses `[ADDR:]PORT`: a bare port listens on every interface.
///
/// # Errors
/// When the text is neither a port nor an address with a port.
pub fn parse_listen(text: &str) -> Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && host == "localhost"
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    bail!("`{text}` is not a port or ADDR:PORT (examples: 51482, 127.0.0.1:51482, [::]:51482)")
}

/// Reads a token file, which must hold one non-empty line.
///
/// # Errors
/// When the file cannot be read or is empty.
pub fn read_token_file(path: &std::path::Path) -> Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    Token::new(text.lines().next().unwrap_or_default())
        .with_context(|| format!("the token file {} is empty", path.display()))
}

fn build_config(listen: &str, args: &ServeArgs) -> Result<(ServerConfig, bool)> {
    let bind = parse_listen(listen)?;
    let mut config = ServerConfig::new(bind);
    if let Some(workers) = args.workers {
        if workers == 0 {
            bail!("--workers must be at least 1, got 0");
        }
        config.workers = workers;
    }
    config.queue_capacity = args.queue.max(1);
    let given = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(Token::new(token).context("--token is empty")?),
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => None,
    };
    let mut generated = false;
    config.token = match given {
        Some(token) => Some(token),
        None if bind.ip().is_loopback() => None,
        None => {
            generated = true;
            Some(Token::generate())
        }
    };
    config.parse_limits.max_source = args.max_source;
    config.parse_limits.max_stdin = args.max_stdin;
    config.run_defaults.wall = Duration::from_millis(args.time_limit_ms.max(1));
    config.run_defaults.cpu = config.run_defaults.wall;
    config.run_max.wall = Duration::from_millis(args.max_time_limit_ms.max(args.time_limit_ms));
    config.run_max.cpu = config.run_max.wall;
    config.run_defaults.memory_mib = args.memory_limit_mib.max(16);
    config.run_max.memory_mib = args
        .max_memory_limit_mib
        .max(config.run_defaults.memory_mib);
    config.run_defaults.output_bytes = args.output_limit;
    config.run_max.output_bytes = args.output_limit;
    config.header_timeout = Duration::from_millis(args.header_timeout_ms.max(1));
    config.body_timeout = Duration::from_millis(args.body_timeout_ms.max(1));
    config.grace = Duration::from_millis(args.grace_ms);
    if args.max_children == 0 {
        bail!("--max-children must be at least 1, got 0");
    }
    config.model = args.model;
    config.max_children = args.max_children;
    if let Some(limit) = args.max_jobs_per_peer {
        if limit == 0 {
            bail!("--max-jobs-per-peer must be at least 1, got 0");
        }
        config.max_jobs_per_peer = limit;
    } else if bind.ip().is_loopback() {
        // Every local client shares one address: a per-peer limit would only shrink the queue.
        config.max_jobs_per_peer = usize::MAX;
    } else {
        config.max_jobs_per_peer = (config.workers / 2).max(1);
    }
    if let (Some(node), Some(peers)) = (args.node, &args.peers) {
        if generated {
            bail!(
                "a cluster node on a non-loopback address needs the cluster's shared token: pass the same --token or --token-file to every node"
            );
        }
        if !(10..=10_000).contains(&args.heartbeat_ms) {
            bail!(
                "--heartbeat-ms must be between 10 and 10000, got {}",
                args.heartbeat_ms
            );
        }
        let id = crate::cluster::NodeId(node);
        let peers = crate::cluster::parse_peers(peers)?;
        let mut cluster = crate::cluster::ClusterConfig::new(id, peers)?;
        cluster.token = config.token.as_ref().map(|token| token.as_str().to_owned());
        cluster.timing = crate::cluster::runtime::timing_for_heartbeat(args.heartbeat_ms);
        if let Some(path) = &args.cluster_log {
            cluster.log_path.clone_from(path);
        }
        match &args.cluster_state {
            Some(path) => cluster.state_path.clone_from(path),
            None if args.cluster_log.is_some() => {
                let mut path = cluster.log_path.clone().into_os_string();
                path.push(".state.json");
                cluster.state_path = PathBuf::from(path);
            }
            None => {}
        }
        config.cluster = Some(cluster);
    }
    Ok((config, generated))
}

/// Runs the headless server until SIGINT or SIGTERM.
pub fn run(listen: &str, args: &ServeArgs) -> ExitCode {
    super::init_logging("info");
    match serve(listen, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            ExitCode::from(super::EXIT_UNAVAILABLE)
        }
    }
}

fn serve(listen: &str, args: &ServeArgs) -> Result<()> {
    let (config, generated) = build_config(listen, args)?;
    let grace = config.grace;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let (executor, unavailable) = build_executor(args)?;
    check_sandbox(config.bind, unavailable.as_ref(), args.allow_unsandboxed)?;
    let executor = Arc::new(executor);
    if config.model == ServerModel::Fork {
        if config.cluster.is_some() {
            bail!("cluster mode (--node) runs on the pool model; drop --model fork");
        }
        let server = server::fork::bind_with_executor(config, executor)
            .context("cannot start the server")?;
        print_banner(
            server.local_addr(),
            server.token(),
            generated,
            &server.executor().language_ids(),
            unavailable.as_ref(),
        );
        // The loop runs here, on the main thread, the only thread the fork server has.
        server.run(&stop).context("cannot run the fork server")?;
        return Ok(());
    }
    let handle =
        server::start_with_executor(config, executor).context("cannot start the server")?;
    print_banner(
        handle.local_addr(),
        handle.token(),
        generated,
        &handle.executor().language_ids(),
        unavailable.as_ref(),
    );
    if let Some(cluster) = handle.cluster() {
        let config = cluster.config();
        println!(
            "Cluster: node {} of {} nodes; log {}",
            config.id,
            config.others().count() + 1,
            config.log_path.display()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "kiln: stopping; running jobs have {} ms to finish (signal again to stop now)",
        grace.as_millis()
    );
    handle.shutdown(grace);
    Ok(())
}

/// Tells the person (and the stress tool, which reads the first line) where the server is.
fn print_banner(
    addr: SocketAddr,
    token: Option<&Token>,
    generated: bool,
    languages: &[String],
    unavailable: Option<&SandboxUnavailable>,
) {
    use std::io::Write;
    let mut text = format!("Kiln server listening on {addr}\n");
    match token {
        Some(token) if generated => text.push_str(&format!(
            "Token: {}\n(generated for this run; give clients this token, or set one with --token)\n",
            token.as_str()
        )),
        Some(_) => text.push_str("Token: required (the one you gave)\n"),
        None => text.push_str("Token: none (loopback only)\n"),
    }
    text.push_str(&format!("Languages: {}\n", languages.join(", ")));
    match unavailable {
        None => text.push_str("Sandbox: bwrap\n"),
        Some(why) => text.push_str(&format!("Sandbox: none ({why})\n")),
    }
    // Whoever started the server may have stopped reading after the address: not a reason to die.
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// The executor for the headless server: bwrap when it works, the compile limits and cache.
fn build_executor(args: &ServeArgs) -> Result<(Executor, Option<SandboxUnavailable>)> {
    let (executor, unavailable) = exec::bwrap::detect_executor_with(!args.no_sandbox)
        .context("cannot set up running jobs")?;
    let mut executor = executor.with_compile_limits(Limits {
        wall: Duration::from_millis(args.compile_time_limit_ms.max(1)),
        cpu: Duration::from_millis(args.compile_time_limit_ms.max(1)),
        ..Limits::compile_default()
    });
    if args.compile_cache_mib == 0 {
        executor = executor.without_cache();
    } else {
        let dir = CompileCache::default_dir();
        match CompileCache::open(&dir, args.compile_cache_mib.saturating_mul(1024 * 1024)) {
            Ok(cache) => executor = executor.with_cache(cache),
            Err(error) => {
                eprintln!(
                    "kiln: no compile cache: cannot use {}: {error}",
                    dir.display()
                );
                executor = executor.without_cache();
            }
        }
    }
    Ok((executor, unavailable))
}

/// Refuses a non-loopback address without a working sandbox unless the operator allowed it.
///
/// # Errors
/// When the server must not start, saying why and what to do.
pub fn check_sandbox(
    bind: SocketAddr,
    unavailable: Option<&SandboxUnavailable>,
    allow_unsandboxed: bool,
) -> Result<()> {
    let Some(why) = unavailable else {
        return Ok(());
    };
    if bind.ip().is_loopback() {
        eprintln!("kiln: warning: jobs run without a sandbox: {why}");
        return Ok(());
    }
    if allow_unsandboxed {
        eprintln!(
            "kiln: warning: jobs on {bind} run WITHOUT a sandbox, with this server's rights (--allow-unsandboxed): {why}"
        );
        return Ok(());
    }
    bail!(
        "refusing to serve {bind} without a sandbox: anyone with the token could run programs with this server's rights.\n{why}\nFix the sandbox, listen on 127.0.0.1 only, or pass --allow-unsandboxed if every client is trusted."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("51482").expect("port"),
            "0.0.0.0:51482".parse().expect("addr")
        );
        assert_eq!(
            parse_listen("127.0.0.2:9").expect("addr"),
            "127.0.0.2:9".parse().expect("addr")
        );
        assert_eq!(
            parse_listen("[::1]:9").expect("v6"),
            "[::1]:9".parse().expect("addr")
        );
        assert_eq!(
            parse_listen("localhost:9").expect("localhost"),
            "127.0.0.1:9".parse().expect("addr")
        );
        let error = parse_listen("http://x").expect_err("bad");
        assert!(error.to_string().contains("not a port"));
    }

    #[test]
    fn a_public_address_needs_a_sandbox() {
        let public: SocketAddr = "0.0.0.0:9".parse().expect("addr");
        let loopback: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let why = SandboxUnavailable::NotInstalled;
        let error = check_sandbox(public, Some(&why), false).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("refusing to serve 0.0.0.0:9 without a sandbox"),
            "{text}"
        );
        assert!(text.contains("apt install bubblewrap"), "{text}");
        assert!(text.contains("--allow-unsandboxed"), "{text}");
        assert!(check_sandbox(public, Some(&why), true).is_ok());
        assert!(check_sandbox(loopback, Some(&why), false).is_ok());
        assert!(check_sandbox(public, None, false).is_ok());
    }

    #[test]
    fn jobs_per_peer_default_to_half_the_workers() {
        let parse_at = |listen: &str, extra: &[&str]| {
            let mut argv = vec!["kiln", "--server", "9", "--token", "t"];
            argv.extend_from_slice(extra);
            let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(argv).expect("parses");
            build_config(listen, &cli.serve)
        };
        let parse = |extra: &[&str]| parse_at("0.0.0.0:9", extra);
        // On loopback every client shares one address, so there is no per-peer limit.
        let (config, _) = parse_at("127.0.0.1:9", &["--workers", "6"]).expect("config");
        assert_eq!(config.max_jobs_per_peer, usize::MAX);
        let (config, _) = parse(&["--workers", "6"]).expect("config");
        assert_eq!(config.max_jobs_per_peer, 3);
        let (config, _) = parse(&["--workers", "1"]).expect("config");
        assert_eq!(config.max_jobs_per_peer, 1);
        let (config, _) = parse(&["--max-jobs-per-peer", "5"]).expect("config");
        assert_eq!(config.max_jobs_per_peer, 5);
        let error = parse(&["--max-jobs-per-peer", "0"]).expect_err("zero");
        assert!(
            error
                .to_string()
                .contains("--max-jobs-per-peer must be at least 1, got 0")
        );
    }
}
