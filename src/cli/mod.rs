//! The command line: `kiln --server [ADDR:]PORT` runs a headless server; `kiln run|check|build|info|
//! ping` talk to a server (an embedded one on loopback unless `--server` names one); `kiln cluster`
//! starts and inspects clusters (`cluster`); plain `kiln` starts the desktop app when built with the
//! `gui` feature.

mod cluster;
mod commands;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit code when the server could not be reached or refused the request (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code for a usage error (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the server failed or the job was cancelled (sysexits EX_SOFTWARE).
pub const EXIT_SOFTWARE: u8 = 70;
/// Exit code of `kiln run` for a compile error.
pub const EXIT_COMPILE_ERROR: u8 = 1;
/// Exit code of `kiln run` for a time limit, as timeout(1) uses.
pub const EXIT_TIME_LIMIT: u8 = 124;
/// Exit code of `kiln run` for a memory or output limit.
pub const EXIT_RESOURCE_LIMIT: u8 = 125;

/// Kiln: write a program and run it, here or on another machine.
#[derive(Debug, Parser)]
#[command(name = "kiln", version = crate::VERSION_LINE, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Run a headless server on [ADDR:]PORT (all interfaces unless ADDR is given).
    // The text is also `--help`'s, which shows brackets as written.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub server: Option<String>,

    #[command(flatten)]
    pub serve: serve::ServeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile if needed and run a program, streaming its output; exits with the program's code.
    Run(RunArgs),
    /// Check a program for errors without running it.
    Check(SourceArgs),
    /// Compile a program and save the result (executable, or .pyc for Python).
    Build(BuildArgs),
    /// Show what a server offers: version, languages, sandbox, limits.
    Info(ConnectArgs),
    /// Check that a server answers, and how fast.
    Ping(ConnectArgs),
    /// Load servers with many clients and report errors, time, throughput and latency per step.
    Stress(crate::stress::StressArgs),
    /// Cluster mode: start a loopback cluster, show a cluster's state, merge its logs.
    Cluster(cluster::ClusterArgs),
}

/// Where the server is.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Use the server at HOST:PORT instead of an embedded one.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The server's token.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the server's token from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

/// A source file and how to treat it.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// The source file.
    pub file: PathBuf,
    /// The language id (python, c, cpp, rust); guessed from the file's extension otherwise.
    #[arg(long)]
    pub lang: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `kiln run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// File to give the program as standard input (`-` for this terminal's input).
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
    /// Wall-time limit in milliseconds (the server clamps it to its maximum).
    #[arg(long, value_name = "MS")]
    pub time_limit_ms: Option<u64>,
    /// Memory limit in MiB (the server clamps it to its maximum).
    #[arg(long, value_name = "MIB")]
    pub memory_limit_mib: Option<u64>,
    /// Run holding the cluster-wide lock (`Exclusive: yes`); the program finds its fencing token
    /// in `KILN_FENCE`.
    #[arg(long)]
    pub exclusive: bool,
    /// Arguments for the program, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `kiln build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where to save the compiled program (default: the name the server suggests).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Parses the command line and does what it says.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match (cli.command, cli.server) {
        (Some(Command::Cluster(args)), _) => cluster::run(args),
        (Some(command), _) => commands::run(command),
        (None, Some(listen)) => serve::run(&listen, &cli.serve),
        (None, None) => start_app(),
    };
    // Jobs are over (a killed process's directory is swept by the next one instead).
    crate::exec::jobdir::remove_process_dir();
    code
}

#[cfg(feature = "gui")]
fn start_app() -> ExitCode {
    crate::ui::run()
}

#[cfg(not(feature = "gui"))]
fn start_app() -> ExitCode {
    use clap::CommandFactory;
    eprintln!(
        "kiln: this build has no desktop app (built without the `gui` feature); use `kiln --server PORT` or a subcommand\n"
    );
    let _ = Cli::command().print_help();
    ExitCode::from(EXIT_USAGE)
}

/// Sets up logging to stderr; `default` applies unless `RUST_LOG` says otherwise.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
