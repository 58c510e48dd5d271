//! Kiln: write a program and run it, here or on another machine.
//!
//! The crate is one library with a thin binary (`src/main.rs`). `protocol` is the KILN/1 wire format
//! (pure code); `server` is the thread-pool server that `kiln --server` runs headless and the app
//! embeds; `exec` runs jobs (languages, limits, sandbox); `client` is the blocking client the CLI and
//! the app share; `cli` is the command line; `stress` is the load tool (`kiln stress`) that measures
//! the pool and fork models; `ui` is the GNOME app, built only with the `gui` feature.

pub mod cli;
pub mod client;
pub mod cluster;
pub mod exec;
pub mod protocol;
pub mod server;
pub mod stress;
#[cfg(feature = "gui")]
pub mod ui;

/// The version line `kiln --version` prints: the crate version and, when known, the git commit
/// (set by `build.rs`).
pub const VERSION_LINE: &str = env!("KILN_VERSION_LINE");
