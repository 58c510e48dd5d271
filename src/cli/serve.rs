//! `kiln --server [ADDR:]PORT`: the headless server, its options, its token and its signals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::server::{self, ServerConfig, Token};

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
    let handle = server::start(config).context("cannot start the server")?;
    let addr = handle.local_addr();
    println!("Kiln server listening on {addr}");
    if let Some(token) = handle.token() {
        if generated {
            println!("Token: {}", token.as_str());
            println!("(generated for this run; give clients this token, or set one with --token)");
        } else {
            println!("Token: required (the one you gave)");
        }
    } else {
        println!("Token: none (loopback only)");
    }
    println!("Languages: {}", handle.executor().language_ids().join(", "));
    if let Some(cluster) = handle.cluster() {
        let config = cluster.config();
        println!(
            "Cluster: node {} of {} nodes; log {}",
            config.id,
            config.others().count() + 1,
            config.log_path.display()
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
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
}
