//! The thread-pool KILN/1 server that `kiln --server` runs headless and the app embeds.
//!
//! Three parts, each in its own file: `reader` is the acceptor: one thread with an epoll loop that
//! accepts connections and reads requests with deadlines, so a slow or stalled client costs no
//! worker; `queue` is the bounded job queue (Mutex + Condvar) between the reader and the workers;
//! `worker` runs one request on a worker thread and writes its answer. `token` holds the shared
//! secret. Jobs themselves run through `crate::exec`. `fork` is the other model: the same reader on
//! the main thread, forking a child per request instead of queueing it. `cluster` connects the
//! server to cluster mode (`crate::cluster`) when `ServerConfig::cluster` is set.

mod cluster;
pub mod fork;
pub mod peers;
mod queue;
mod reader;
pub mod stats;
pub mod token;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::exec::{Executor, Limits};
use crate::protocol::ParseLimits;
pub use stats::Stats;
pub use token::Token;

/// Smallest listen backlog: std's default of 128 delays connections by a whole SYN retry (1 s)
/// under a burst of a thousand clients.
pub const MIN_BACKLOG: i32 = 4096;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Worker threads that run jobs.
    pub workers: usize,
    /// Requests that may wait for a worker before new ones are answered `busy`.
    pub queue_capacity: usize,
    /// The token clients must send, if any.
    pub token: Option<Token>,
    /// Limits on request sizes.
    pub parse_limits: ParseLimits,
    /// Time a client has to send the intent line and headers.
    pub header_timeout: Duration,
    /// Time a client has to send the body once the headers are in.
    pub body_timeout: Duration,
    /// Run limits when the client asks for none.
    pub run_defaults: Limits,
    /// The most a client may ask for.
    pub run_max: Limits,
    /// How long running jobs may go on after a stop is requested.
    pub grace: Duration,
    /// Delay before answering a wrong token, to slow down guessing.
    pub unauthorized_delay: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// How requests are run: on a pool of threads, or in a child process each.
    pub model: ServerModel,
    /// Fork model: children alive at once before new requests are answered `busy`.
    pub max_children: usize,
    /// CHECK, RUN and BUILD jobs one client address may have queued or running at once.
    pub max_jobs_per_peer: usize,
    /// Join a cluster as this node (`--node`, `--peers`); `None` for a lone server.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// How a server runs requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerModel {
    /// Worker threads fed by a bounded queue ([`start`]).
    Pool,
    /// A child process per request, forked by the single-threaded accept loop ([`fork::bind`]).
    Fork,
}

impl ServerModel {
    /// The name INFO and STATS report.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerModel::Pool => "pool",
            ServerModel::Fork => "fork",
        }
    }
}

impl ServerConfig {
    /// Defaults, listening on `bind`.
    pub fn new(bind: SocketAddr) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        ServerConfig {
            bind,
            workers,
            queue_capacity: 1024,
            token: None,
            parse_limits: ParseLimits::default(),
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            run_defaults: Limits::default(),
            run_max: Limits {
                wall: Duration::from_secs(60),
                cpu: Duration::from_secs(60),
                memory_mib: 2048,
                ..Limits::default()
            },
            grace: Duration::from_secs(10),
            unauthorized_delay: Duration::from_millis(250),
            backlog: MIN_BACKLOG,
            model: ServerModel::Pool,
            max_children: 1024,
            max_jobs_per_peer: (workers / 2).max(1),
            cluster: None,
        }
    }

    /// Defaults on 127.0.0.1 with a free port.
    ///
    /// Every client of a loopback server shares one address, so the per-peer job limit would
    /// only be a second, smaller queue limit: it is off here.
    pub fn loopback() -> Self {
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.max_jobs_per_peer = usize::MAX;
        config
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A thread, the epoll instance or the job directory could not be created.
    #[error("cannot start the server: {0}")]
    Setup(#[from] io::Error),
    /// The configuration makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// State shared by the reader, the workers and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub executor: Arc<Executor>,
    pub stats: Stats,
    pub queue: queue::JobQueue,
    /// Jobs per client address.
    pub peers: Arc<peers::PeerJobs>,
    /// Set when a stop was requested: new requests get `unavailable`.
    pub stopping: AtomicBool,
    /// Set when the grace period is over: running jobs are cancelled.
    pub aborting: AtomicBool,
    /// Set to end the reader loop.
    pub reader_exit: AtomicBool,
    pub instance: u16,
    pub next_job: AtomicU64,
    pub started: Instant,
    /// The server's process (STATS reads its memory and threads; a fork child is not it).
    pub pid: u32,
    /// The cluster runtime, when the server is a cluster node.
    pub cluster: Option<crate::cluster::ClusterHandle>,
}

impl Shared {
    fn new(
        config: ServerConfig,
        executor: Arc<Executor>,
        cluster: Option<crate::cluster::ClusterHandle>,
    ) -> Shared {
        Shared {
            queue: queue::JobQueue::new(config.queue_capacity.max(1)),
            peers: peers::PeerJobs::new(config.max_jobs_per_peer),
            config,
            executor,
            stats: Stats::default(),
            stopping: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            reader_exit: AtomicBool::new(false),
            instance: rand::random(),
            next_job: AtomicU64::new(0),
            started: Instant::now(),
            pid: std::process::id(),
            cluster,
        }
    }

    pub fn next_job_id(&self) -> String {
        let n = self.next_job.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{:04x}-{n}", self.instance)
    }
}

/// A running server; dropping it stops the server after the grace period.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    stopped: Arc<Mutex<bool>>,
}

/// Starts a server with the languages found on this machine, sandboxed with bubblewrap when it
/// works here and unsandboxed otherwise (fine on loopback; `kiln --server` insists on a sandbox
/// for other addresses).
///
/// # Errors
/// If the address cannot be bound or a thread cannot start.
pub fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let (executor, unavailable) = crate::exec::bwrap::detect_executor()?;
    if let Some(why) = unavailable {
        tracing::warn!(reason = %why, "running jobs without a sandbox");
    }
    start_with_executor(config, Arc::new(executor))
}

/// Starts a server that runs jobs with `executor`.
///
/// # Errors
/// If the address cannot be bound or a thread cannot start.
pub fn start_with_executor(
    config: ServerConfig,
    executor: Arc<Executor>,
) -> Result<ServerHandle, ServerError> {
    if config.workers == 0 {
        return Err(ServerError::Config("--workers must be at least 1".into()));
    }
    if config.model != ServerModel::Pool {
        // The app embeds this server in a process full of threads, where forking would copy only
        // the calling thread; the fork model has its own entry point for a single-threaded process.
        return Err(ServerError::Config(
            "server::start runs the pool model; use server::fork::bind for the fork model".into(),
        ));
    }
    let listener = listen(config.bind, config.backlog.max(MIN_BACKLOG))?;
    let addr = listener.local_addr()?;
    let cluster = match &config.cluster {
        Some(cluster) => Some(crate::cluster::ClusterHandle::start(cluster.clone())?),
        None => None,
    };
    let shared = Arc::new(Shared::new(config, executor, cluster));
    let mut workers = Vec::new();
    for index in 0..shared.config.workers {
        let shared = Arc::clone(&shared);
        workers.push(
            std::thread::Builder::new()
                .name(format!("kiln-worker-{index}"))
                .spawn(move || worker::run(&shared))?,
        );
    }
    let reader = {
        let shared = Arc::clone(&shared);
        let event_loop = reader::EventLoop::new(listener, shared, reader::Dispatch::Queue)?;
        std::thread::Builder::new()
            .name("kiln-acceptor".into())
            .spawn(move || event_loop.run())?
    };
    tracing::info!(
        %addr,
        workers = shared.config.workers,
        queue = shared.config.queue_capacity,
        sandbox = shared.executor.sandbox_name(),
        languages = ?shared.executor.language_ids(),
        token = shared.config.token.is_some(),
        "server listening"
    );
    Ok(ServerHandle {
        addr,
        shared,
        reader: Some(reader),
        workers,
        stopped: Arc::new(Mutex::new(false)),
    })
}

fn listen(addr: SocketAddr, backlog: i32) -> Result<TcpListener, ServerError> {
    let bind_error = |source| ServerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_error)?;
    // Restarting the server must not wait for TIME_WAIT connections of the previous run.
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_cloexec(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(backlog).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

impl ServerHandle {
    /// The address the server listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token clients must send, if any.
    pub fn token(&self) -> Option<&Token> {
        self.shared.config.token.as_ref()
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The cluster runtime, when the server is a cluster node.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterHandle> {
        self.shared.cluster.as_ref()
    }

    /// The executor (languages, sandbox).
    pub fn executor(&self) -> &Arc<Executor> {
        &self.shared.executor
    }

    /// Stops the server: new requests get `unavailable`, queued ones too, running jobs get up to
    /// `grace` to finish and are then cancelled. Returns when every thread has ended.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let Ok(mut stopped) = self.stopped.lock() else {
            return;
        };
        if *stopped {
            return;
        }
        *stopped = true;
        tracing::info!(grace_ms = grace.as_millis() as u64, "server stopping");
        self.shared.stopping.store(true, Ordering::SeqCst);
        for job in self.shared.queue.close() {
            worker::refuse_unavailable(&self.shared, job);
        }
        let deadline = Instant::now() + grace;
        while self.workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.aborting.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.shared.reader_exit.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(cluster) = &self.shared.cluster {
            cluster.shutdown();
        }
        tracing::info!("server stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let grace = self.shared.config.grace;
        self.stop(grace);
    }
}
