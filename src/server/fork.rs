//! The fork-per-request model that `kiln --server PORT --model fork` runs: the classic design the
//! stress tool (`crate::stress`) measures against the pool.
//!
//! The same epoll reader as the pool (`reader.rs`) runs on the calling thread and, once a request is
//! whole, forks a child that runs it and exits (`reader/fork.rs`). Nothing else runs: no acceptor
//! thread, no workers. That matters, because `fork` copies only the calling thread: in a process
//! with other threads, a lock one of them held (the allocator's, a logger's) would stay locked
//! forever in the child. That is also why the app's embedded server is always the pool: GTK's
//! process has many threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::reader::{Dispatch, EventLoop};
use super::stats::ProcessStatus;
use super::{MIN_BACKLOG, ServerConfig, ServerError, ServerModel, Shared, Stats, Token};
use crate::exec::{Executor, NoSandbox};

/// A bound fork server, not yet serving: [`ForkServer::run`] serves on the calling thread.
pub struct ForkServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    event_loop: EventLoop,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds a fork server with the languages found on this machine and no sandbox.
///
/// # Errors
/// If the address cannot be bound, or the configuration is not a fork one.
pub fn bind(config: ServerConfig) -> Result<ForkServer, ServerError> {
    // Languages are detected and the job root is made here, once, before any fork.
    let executor = Executor::detect(Arc::new(NoSandbox))?;
    bind_with_executor(config, Arc::new(executor))
}

/// Binds a fork server that runs jobs with `executor`.
///
/// # Errors
/// If the address cannot be bound, or `max_children` is 0.
pub fn bind_with_executor(
    mut config: ServerConfig,
    executor: Arc<Executor>,
) -> Result<ForkServer, ServerError> {
    if config.max_children == 0 {
        return Err(ServerError::Config(
            "--max-children must be at least 1, got 0".into(),
        ));
    }
    config.model = ServerModel::Fork;
    let listener = super::listen(config.bind, config.backlog.max(MIN_BACKLOG))?;
    let addr = listener.local_addr()?;
    let children = super::reader::fork::Children::new(config.max_children)?;
    let shared = Arc::new(Shared::new(config, executor, None));
    let event_loop = EventLoop::new(listener, Arc::clone(&shared), Dispatch::Fork(children))?;
    Ok(ForkServer {
        addr,
        shared,
        event_loop,
    })
}

impl ForkServer {
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

    /// The executor (languages, sandbox).
    pub fn executor(&self) -> &Arc<Executor> {
        &self.shared.executor
    }

    /// Serves on this thread until `stop` is set (a signal handler sets it), then lets running
    /// children finish within the grace period, kills the rest, and reaps them all.
    ///
    /// # Errors
    /// If this process runs other threads, which forking would leave behind half-copied.
    pub fn run(self, stop: &AtomicBool) -> Result<(), ServerError> {
        let threads = ProcessStatus::read(std::process::id()).threads;
        if threads > 1 {
            return Err(ServerError::Config(format!(
                "the fork model needs a single-threaded process (fork copies only the calling thread), but this one has {threads} threads; use the pool model here"
            )));
        }
        tracing::info!(
            addr = %self.addr,
            max_children = self.shared.config.max_children,
            sandbox = self.shared.executor.sandbox_name(),
            languages = ?self.shared.executor.language_ids(),
            token = self.shared.config.token.is_some(),
            "fork server listening"
        );
        self.event_loop.run_fork(stop);
        tracing::info!("server stopped");
        Ok(())
    }
}
