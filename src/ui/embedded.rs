//! The in-process server the app runs programs on by default: the same thread-pool server as
//! `kiln --server` (`crate::server`), started on loopback the first time a job or the language list
//! needs it, with its own token. "Let other computers use this server" restarts it on every
//! interface. Every method here may block (starting or stopping threads), so the window calls them
//! from worker threads only; the application owns the one instance.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use crate::exec::Limits;
use crate::server::{self, ServerConfig, ServerHandle, Token};

/// How long running jobs may finish when the server restarts with new settings.
const RESTART_GRACE: Duration = Duration::from_secs(2);

/// What the embedded server should look like (from Preferences).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Worker threads.
    pub workers: usize,
    /// Limits of a run when the client asks for none.
    pub run_defaults: Limits,
    /// `Some(port)` to listen on every interface, `None` for loopback only.
    pub share_port: Option<u16>,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            workers: 2,
            run_defaults: Limits::default(),
            share_port: None,
        }
    }
}

/// Where to reach the embedded server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address the app connects to (loopback).
    pub connect: String,
    /// The address the server listens on (`0.0.0.0:PORT` when shared).
    pub listen: SocketAddr,
    /// The token clients must send.
    pub token: String,
}

#[derive(Debug)]
struct State {
    config: EmbeddedConfig,
    handle: Option<ServerHandle>,
}

/// The embedded server, started lazily.
#[derive(Debug)]
pub struct EmbeddedServer {
    token: Token,
    state: Mutex<State>,
}

impl EmbeddedServer {
    /// A server that is not running yet.
    pub fn new(config: EmbeddedConfig) -> Self {
        EmbeddedServer {
            token: Token::generate(),
            state: Mutex::new(State {
                config,
                handle: None,
            }),
        }
    }

    /// Starts the server if it is not running and says where it is. Blocks: call off the UI thread.
    ///
    /// # Errors
    /// A message for the user when the server cannot start (port taken, no sandbox...).
    pub fn ensure_started(&self) -> Result<Endpoint, String> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| "the built-in server crashed; restart Kiln".to_owned())?;
        if state.handle.is_none() {
            let config = self.server_config(&state.config);
            let handle = server::start(config).map_err(|error| match state.config.share_port {
                Some(port) => format!(
                    "Cannot share the built-in server on port {port}: {error}. Pick another port or turn sharing off in Preferences."
                ),
                None => format!("Cannot start the built-in server: {error}"),
            })?;
            state.handle = Some(handle);
        }
        let handle = state
            .handle
            .as_ref()
            .ok_or("the built-in server did not start")?;
        let listen = handle.local_addr();
        Ok(Endpoint {
            connect: SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port())).to_string(),
            listen,
            token: self.token.as_str().to_owned(),
        })
    }

    /// Uses `config` from now on: a running server with a different configuration is stopped (its
    /// running jobs get a short grace) and the next job starts the new one. Blocks.
    pub fn reconfigure(&self, config: EmbeddedConfig) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.config == config {
            return;
        }
        state.config = config;
        // Stopping while holding the lock makes a concurrent `ensure_started` wait, so the new
        // server can bind the same shared port.
        if let Some(handle) = state.handle.take() {
            handle.shutdown(RESTART_GRACE);
        }
    }

    /// Stops the server, if running. Blocks for at most `grace`.
    pub fn shutdown(&self, grace: Duration) {
        if let Ok(mut state) = self.state.lock()
            && let Some(handle) = state.handle.take()
        {
            handle.shutdown(grace);
        }
    }

    fn server_config(&self, config: &EmbeddedConfig) -> ServerConfig {
        let mut server_config = match config.share_port {
            Some(port) => ServerConfig::new(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
            None => ServerConfig::loopback(),
        };
        server_config.token = Some(self.token.clone());
        server_config.workers = config.workers.max(1);
        // Keep the request's limits within what the server allows at most.
        let max = &server_config.run_max;
        let mut defaults = config.run_defaults.clone();
        defaults.wall = defaults.wall.min(max.wall);
        defaults.cpu = defaults.cpu.min(max.cpu);
        defaults.memory_mib = defaults.memory_mib.min(max.memory_mib);
        server_config.run_defaults = defaults;
        // Closing the app should not wait long for a program the user already gave up on.
        server_config.grace = Duration::from_secs(1);
        server_config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    #[test]
    fn embedded_server_starts_lazily_and_restarts_with_new_settings() {
        let server = EmbeddedServer::new(EmbeddedConfig::default());
        let first = server.ensure_started().expect("starts");
        assert!(first.connect.starts_with("127.0.0.1:"));
        let client = Client::new(first.connect.clone(), Some(first.token.clone()));
        let info = client.info().expect("info");
        assert_eq!(info.get("workers"), Some("2"));
        assert_eq!(server.ensure_started().expect("still running"), first);

        server.reconfigure(EmbeddedConfig {
            workers: 3,
            ..EmbeddedConfig::default()
        });
        let second = server.ensure_started().expect("restarts");
        let client = Client::new(second.connect.clone(), Some(second.token.clone()));
        assert_eq!(client.info().expect("info").get("workers"), Some("3"));
        // A client without the token is refused.
        let stranger = Client::new(second.connect, None);
        assert!(stranger.info().is_err());
        server.shutdown(Duration::from_secs(1));
    }
}
