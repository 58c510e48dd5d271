//! `kiln run|check|build|info|ping`: one request each, to the server named by `--server` or to an
//! embedded server this process starts on loopback for the occasion.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{
    BuildArgs, Command, ConnectArgs, EXIT_COMPILE_ERROR, EXIT_RESOURCE_LIMIT, EXIT_SOFTWARE,
    EXIT_TIME_LIMIT, EXIT_UNAVAILABLE, EXIT_USAGE, RunArgs, SourceArgs,
};
use crate::client::{Client, ClientError, Event, JobResult, JobSpec};
use crate::protocol::{Intent, Problem, Verdict};
use crate::server::{self, ServerConfig, ServerHandle, Token};

/// Runs a client subcommand and turns its outcome into an exit code.
pub fn run(command: Command) -> ExitCode {
    super::init_logging("warn");
    match dispatch(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            let code = match error.downcast_ref::<ClientError>() {
                Some(_) => EXIT_UNAVAILABLE,
                None if error.downcast_ref::<UsageError>().is_some() => EXIT_USAGE,
                None => EXIT_UNAVAILABLE,
            };
            ExitCode::from(code)
        }
    }
}

/// A mistake in how kiln was called.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run_program(&args),
        Command::Stress(args) => crate::stress::run(&args),
        Command::Check(args) => check(&args),
        Command::Build(args) => build(&args),
        Command::Info(args) => info(&args),
        Command::Ping(args) => ping(&args),
        Command::Cluster(args) => Ok(super::cluster::run(args)),
    }
}

/// A client, and the embedded server behind it when no `--server` was given.
struct Connection {
    client: Client,
    _embedded: Option<ServerHandle>,
}

impl Connection {
    fn open(args: &ConnectArgs) -> Result<Connection> {
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => Some(super::serve::read_token_file(path)?.as_str().to_owned()),
            (None, None) => None,
        };
        if let Some(addr) = &args.server {
            return Ok(Connection {
                client: Client::new(addr.clone(), token),
                _embedded: None,
            });
        }
        // The embedded server listens on loopback with a fresh token, so other local users
        // cannot slip jobs into it while it runs.
        let mut config = ServerConfig::loopback();
        config.token = Some(Token::generate());
        config.grace = Duration::ZERO;
        let handle = server::start(config).context("cannot start the embedded server")?;
        let token = handle.token().map(|token| token.as_str().to_owned());
        let client = Client::new(handle.local_addr().to_string(), token);
        Ok(Connection {
            client,
            _embedded: Some(handle),
        })
    }
}

/// The language id for a file: `--lang`, else its extension.
fn language_for(args: &SourceArgs) -> Result<String> {
    if let Some(lang) = &args.lang {
        return Ok(lang.to_ascii_lowercase());
    }
    let extension = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    guess_language(extension).map(str::to_owned).ok_or_else(|| {
        UsageError(format!(
            "cannot tell the language of {} from its extension; pass --lang (python, c, cpp, rust)",
            args.file.display()
        ))
        .into()
    })
}

/// The language id for a file extension.
pub fn guess_language(extension: &str) -> Option<&'static str> {
    match extension {
        "py" | "pyw" => Some("python"),
        "c" | "h" => Some("c"),
        "cc" | "cpp" | "cxx" | "c++" | "C" | "hpp" => Some("cpp"),
        "rs" => Some("rust"),
        _ => None,
    }
}

fn job_for(intent: Intent, args: &SourceArgs) -> Result<JobSpec> {
    let language = language_for(args)?;
    let source = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut job = JobSpec::code(intent, &language, source);
    job.head.file_name = args
        .file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    Ok(job)
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Shows what the compiler said: its own text when it sent some (that is what people know from a
/// terminal), else the parsed problems.
fn report_compile(file: &Path, diagnostics: &str, problems: &[Problem]) {
    if diagnostics.trim().is_empty() {
        print_problems(file, problems);
    } else {
        eprint!("{diagnostics}");
        if !diagnostics.ends_with('\n') {
            eprintln!();
        }
    }
}

fn print_problems(file: &Path, problems: &[Problem]) {
    let name = display_name(file);
    for problem in problems {
        eprintln!(
            "{name}:{}:{}: {}: {}",
            problem.line,
            problem.column,
            problem.severity.as_str(),
            problem.message
        );
    }
}

fn run_program(args: &RunArgs) -> Result<ExitCode> {
    let mut job = job_for(Intent::Run, &args.source)?;
    job.head.args.clone_from(&args.args);
    job.head.time_limit_ms = args.time_limit_ms;
    job.head.memory_limit_mib = args.memory_limit_mib;
    if args.exclusive {
        job.head.extra.push(("Exclusive".into(), "yes".into()));
    }
    if let Some(path) = &args.stdin {
        job.stdin = if path == Path::new("-") {
            let mut bytes = Vec::new();
            io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            bytes
        } else {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        };
    }
    let connection = Connection::open(&args.source.connect)?;
    let response = connection.client.start(&job)?;
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr();
    let mut diagnostics = String::new();
    let mut problems_seen = Vec::new();
    for event in response {
        match event? {
            Event::Stdout(bytes) => {
                // Flush each chunk: the point is to see output while the program runs.
                let _ = stdout.write_all(&bytes);
                let _ = stdout.flush();
            }
            Event::Stderr(bytes) => {
                let _ = stderr.write_all(&bytes);
                let _ = stderr.flush();
            }
            Event::Diagnostics(text) => diagnostics = text,
            Event::Problems(problems) => problems_seen = problems,
            Event::Finished(result) => {
                report_compile(&args.source.file, &diagnostics, &problems_seen);
                return Ok(run_exit_code(&result));
            }
            _ => {}
        }
    }
    Err(ClientError::Truncated.into())
}

/// `kiln run`'s exit code: the program's own where it has one.
fn run_exit_code(result: &JobResult) -> ExitCode {
    let note = |text: String| eprintln!("kiln: {text}");
    let message = result.fields.get("message").unwrap_or_default().to_owned();
    match result.verdict {
        Verdict::Ok => ExitCode::SUCCESS,
        Verdict::RuntimeError => {
            ExitCode::from(u8::try_from(result.exit_code().unwrap_or(1)).unwrap_or(1))
        }
        Verdict::Signal => {
            let signal = result.signal().unwrap_or_default();
            note(format!("the program was killed by {signal}"));
            let number = signal_number(&signal).unwrap_or(0);
            ExitCode::from(128u8.saturating_add(u8::try_from(number).unwrap_or(0)))
        }
        Verdict::CompileError => {
            note("the program did not compile".into());
            ExitCode::from(EXIT_COMPILE_ERROR)
        }
        Verdict::TimeLimit => {
            note(format!("time limit: {message}"));
            ExitCode::from(EXIT_TIME_LIMIT)
        }
        Verdict::MemoryLimit | Verdict::OutputLimit => {
            note(format!("{}: {message}", result.verdict));
            ExitCode::from(EXIT_RESOURCE_LIMIT)
        }
        Verdict::LockUnavailable => {
            note(format!("{}: {message}", result.verdict));
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Verdict::Cancelled | Verdict::InternalError | Verdict::Pong => {
            note(format!("{} {message}", result.verdict));
            ExitCode::from(EXIT_SOFTWARE)
        }
    }
}

fn signal_number(name: &str) -> Option<i32> {
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|signal| signal as i32)
}

fn check(args: &SourceArgs) -> Result<ExitCode> {
    let job = job_for(Intent::Check, args)?;
    let connection = Connection::open(&args.connect)?;
    let (events, result) = connection.client.run_to_end(&job)?;
    let mut diagnostics = String::new();
    let mut problems = Vec::new();
    for event in events {
        match event {
            Event::Diagnostics(text) => diagnostics = text,
            Event::Problems(list) => problems = list,
            _ => {}
        }
    }
    report_compile(&args.file, &diagnostics, &problems);
    match result.verdict {
        Verdict::Ok => {
            if problems.is_empty() {
                eprintln!("{}: no problems", display_name(&args.file));
            }
            Ok(ExitCode::SUCCESS)
        }
        Verdict::CompileError => Ok(ExitCode::from(EXIT_COMPILE_ERROR)),
        other => bail!(
            "the check ended with {other}: {}",
            result.fields.get("message").unwrap_or_default()
        ),
    }
}

fn build(args: &BuildArgs) -> Result<ExitCode> {
    let job = job_for(Intent::Build, &args.source)?;
    let connection = Connection::open(&args.source.connect)?;
    let (events, result) = connection.client.run_to_end(&job)?;
    let mut artifact = None;
    let mut diagnostics = String::new();
    let mut problems = Vec::new();
    for event in events {
        match event {
            Event::Diagnostics(text) => diagnostics = text,
            Event::Problems(list) => problems = list,
            Event::Artifact { name, data } => artifact = Some((name, data)),
            _ => {}
        }
    }
    report_compile(&args.source.file, &diagnostics, &problems);
    match (result.verdict, artifact) {
        (Verdict::Ok, Some((name, data))) => {
            let path = args.output.clone().unwrap_or_else(|| PathBuf::from(&name));
            std::fs::write(&path, &data)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if !name.ends_with(".pyc") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("cannot make {} executable", path.display()))?;
            }
            eprintln!("wrote {} ({} bytes)", path.display(), data.len());
            Ok(ExitCode::SUCCESS)
        }
        (Verdict::CompileError, _) => Ok(ExitCode::from(EXIT_COMPILE_ERROR)),
        (verdict, _) => bail!(
            "the build ended with {verdict} and no program: {}",
            result.fields.get("message").unwrap_or_default()
        ),
    }
}

fn info(args: &ConnectArgs) -> Result<ExitCode> {
    let connection = Connection::open(args)?;
    let info = connection.client.info()?;
    let mut stdout = io::stdout().lock();
    for (key, value) in &info.fields.0 {
        let _ = writeln!(stdout, "{key}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}

fn ping(args: &ConnectArgs) -> Result<ExitCode> {
    let connection = Connection::open(args)?;
    let rtt = connection.client.ping()?;
    println!(
        "pong from {} in {:.2} ms",
        connection.client.addr(),
        rtt.as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_guessed_from_extensions() {
        assert_eq!(guess_language("py"), Some("python"));
        assert_eq!(guess_language("cpp"), Some("cpp"));
        assert_eq!(guess_language("rs"), Some("rust"));
        assert_eq!(guess_language("txt"), None);
    }

    #[test]
    fn signal_names_map_to_numbers() {
        assert_eq!(signal_number("SIGSEGV"), Some(11));
        assert_eq!(signal_number("nonsense"), None);
    }
}
