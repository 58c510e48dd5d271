//! C and C++ through gcc and g++ (or `cc`): every intent compiles the whole program (so CHECK also
//! reports link errors and fills the compile cache), problems come from the compiler's text
//! diagnostics with their line and column in the user's file, BUILD returns the executable as
//! `main`, RUN runs it. [`run_compiler`] is shared with `super::rust`.

use std::path::PathBuf;
use std::process::Command;

use super::process::{self, CommandSpec, ExitKind, ProcessOutcome, StopReason};
use super::python::safe_file_name;
use super::{CompileOutput, JobContext, JobSink, Outcome, Toolchain};
use crate::protocol::{Problem, Severity, Verdict};

/// The name of the compiled program, in the job directory and as a BUILD artifact.
pub const EXECUTABLE: &str = "main";

/// Which language the compiler driver compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// C (gcc, or cc).
    C,
    /// C++ (g++, or c++).
    Cpp,
}

impl Dialect {
    fn drivers(self) -> &'static [&'static str] {
        match self {
            Dialect::C => &["gcc", "cc"],
            Dialect::Cpp => &["g++", "c++"],
        }
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            Dialect::C => &["c"],
            Dialect::Cpp => &["cpp", "cc", "cxx", "C"],
        }
    }
}

/// A C or C++ compiler found on this machine.
#[derive(Debug, Clone)]
pub struct Native {
    dialect: Dialect,
    compiler: PathBuf,
    version: String,
    /// The first line of `--version`, which tells builds of one version apart (for the cache).
    build: String,
    /// Whether it is GCC (which takes `-fdiagnostics-column-unit=byte`).
    gnu: bool,
}

impl Native {
    /// Finds the compiler for `dialect` on the PATH.
    pub fn detect(dialect: Dialect) -> Option<Native> {
        dialect.drivers().iter().find_map(|driver| {
            let compiler = find_on_path(driver)?;
            let output = Command::new(&compiler).arg("--version").output().ok()?;
            if !output.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let build = text.lines().next()?.trim().to_owned();
            let gnu = text.contains("Free Software Foundation");
            let version = if gnu {
                let full = Command::new(&compiler)
                    .arg("-dumpfullversion")
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&full.stdout).trim().to_owned()
            } else {
                build
                    .split_whitespace()
                    .find(|word| word.chars().next().is_some_and(|c| c.is_ascii_digit()))
                    .unwrap_or("unknown")
                    .to_owned()
            };
            Some(Native {
                dialect,
                compiler,
                version,
                build,
                gnu,
            })
        })
    }

    fn flags(&self) -> Vec<&'static str> {
        let mut flags = match self.dialect {
            Dialect::C => vec!["-std=gnu17"],
            Dialect::Cpp => vec!["-std=gnu++20"],
        };
        flags.extend(["-O2", "-pipe", "-Wall", "-fdiagnostics-color=never"]);
        if self.gnu {
            // Byte columns, turned into characters below: gcc's default counts display cells.
            flags.push("-fdiagnostics-column-unit=byte");
        }
        flags
    }
}

/// Finds an executable by name on the PATH, resolved to its real file.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Toolchain for Native {
    fn id(&self) -> &str {
        match self.dialect {
            Dialect::C => "c",
            Dialect::Cpp => "cpp",
        }
    }

    fn name(&self) -> &str {
        match self.dialect {
            Dialect::C => "C",
            Dialect::Cpp => "C++",
        }
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn source_file_name(&self, requested: Option<&str>) -> String {
        self.dialect
            .extensions()
            .iter()
            .find_map(|extension| safe_file_name(requested, extension))
            .unwrap_or_else(|| format!("main.{}", self.dialect.extensions()[0]))
    }

    fn cache_flags(&self) -> Option<String> {
        Some(format!(
            "{} {} {}",
            self.compiler.display(),
            self.build,
            self.flags().join(" ")
        ))
    }

    fn compile(&self, ctx: &JobContext<'_>, sink: &mut dyn JobSink) -> CompileOutput {
        let source_name = self.source_file_name(ctx.input.file_name.as_deref());
        let mut args: Vec<String> = self.flags().into_iter().map(str::to_owned).collect();
        args.extend(["-o".into(), EXECUTABLE.into(), source_name.clone()]);
        if self.dialect == Dialect::C {
            args.push("-lm".into());
        }
        let spec = CommandSpec::new(&self.compiler, args);
        let run = match run_compiler(ctx, &spec, sink, self.name()) {
            Ok(run) => run,
            Err(stopped) => return *stopped,
        };
        let diagnostics = String::from_utf8_lossy(&run.captured_stderr).into_owned();
        let source = String::from_utf8_lossy(&ctx.input.source);
        let success = run.exit == ExitKind::Code(0);
        let problems = parse_gcc(&diagnostics, &source_name, &source);
        executable_output(ctx, success, diagnostics, problems)
    }

    fn run_command(&self, ctx: &JobContext<'_>, compiled: &CompileOutput) -> CommandSpec {
        run_executable(ctx, compiled)
    }
}

/// What a compiler that writes `main` produced: a failed compile always carries at least one
/// error problem (the compiler's first error line when no diagnostic could be parsed).
pub fn executable_output(
    ctx: &JobContext<'_>,
    success: bool,
    diagnostics: String,
    mut problems: Vec<Problem>,
) -> CompileOutput {
    if !success && problems.iter().all(|p| p.severity != Severity::Error) {
        problems.push(first_error_line(&diagnostics));
    }
    CompileOutput {
        success,
        diagnostics,
        problems,
        artifact: success.then(|| ctx.dir.path().join(EXECUTABLE)),
        artifact_name: EXECUTABLE.to_owned(),
        stopped: None,
    }
}

/// The command that runs a compiled executable with the job's arguments.
pub fn run_executable(ctx: &JobContext<'_>, compiled: &CompileOutput) -> CommandSpec {
    let program = ctx.dir.path().join(&compiled.artifact_name);
    CommandSpec::new(program, ctx.input.args.iter())
}

/// Runs a compiler under the compile limits and captures its output; a compiler the runner had to
/// stop (time, memory, client gone) comes back as the finished `CompileOutput`.
///
/// # Errors
/// The `CompileOutput` to return instead of parsing diagnostics.
pub fn run_compiler(
    ctx: &JobContext<'_>,
    spec: &CommandSpec,
    sink: &mut dyn JobSink,
    language: &str,
) -> Result<ProcessOutcome, Box<CompileOutput>> {
    let limits = &ctx.compile_limits;
    let stopped = |outcome: Outcome| {
        Box::new(CompileOutput {
            stopped: Some(outcome),
            ..CompileOutput::default()
        })
    };
    let run = process::run(ctx.sandbox, spec, ctx.dir.path(), None, limits, sink, false).map_err(
        |error| {
            stopped(Outcome::internal(format!(
                "cannot start the {language} compiler: {error}"
            )))
        },
    )?;
    let time_limit = || Outcome {
        message: Some(format!(
            "compiling took longer than the compile-time limit of {} ms",
            limits.wall.as_millis()
        )),
        ..Outcome::verdict(Verdict::TimeLimit)
    };
    match run.stopped {
        Some(StopReason::WallTime) => return Err(stopped(time_limit())),
        Some(StopReason::Cancelled) => return Err(stopped(Outcome::verdict(Verdict::Cancelled))),
        Some(StopReason::OutputLimit) => {
            return Err(stopped(Outcome {
                message: Some(format!(
                    "the compiler wrote more than {} bytes of diagnostics",
                    limits.output_bytes
                )),
                ..Outcome::verdict(Verdict::OutputLimit)
            }));
        }
        None => {}
    }
    let stderr = String::from_utf8_lossy(&run.captured_stderr);
    match run.exit {
        ExitKind::Signal(libc::SIGXCPU) => return Err(stopped(time_limit())),
        ExitKind::Signal(libc::SIGKILL) if run.cpu + limits.cpu / 20 >= limits.cpu => {
            return Err(stopped(time_limit()));
        }
        ExitKind::Code(0) => {}
        _ if stderr.contains("virtual memory exhausted")
            || stderr.contains("out of memory")
            || stderr.contains("memory allocation of")
            || stderr.contains("Cannot allocate memory") =>
        {
            return Err(stopped(Outcome {
                message: Some(format!(
                    "compiling needed more than the compile memory limit of {} MiB",
                    limits.memory_mib
                )),
                ..Outcome::verdict(Verdict::MemoryLimit)
            }));
        }
        _ => {}
    }
    Ok(run)
}

/// Problems from gcc's text diagnostics: `FILE:LINE:COL: SEVERITY: MESSAGE` lines about the user's
/// file, with byte columns turned into character columns.
pub fn parse_gcc(diagnostics: &str, source_name: &str, source: &str) -> Vec<Problem> {
    let prefix = format!("{source_name}:");
    let lines: Vec<&str> = source.lines().collect();
    diagnostics
        .lines()
        .filter_map(|text| {
            let rest = text.strip_prefix(&prefix)?;
            let mut parts = rest.splitn(4, ':');
            let line: u32 = parts.next()?.trim().parse().ok()?;
            let byte_column: usize = parts.next()?.trim().parse().ok()?;
            let severity_word = parts.next()?.trim();
            let severity = match severity_word {
                "error" | "fatal error" => Severity::Error,
                "warning" => Severity::Warning,
                "note" => Severity::Note,
                _ => return None,
            };
            let message = parts.next().unwrap_or_default().trim().to_owned();
            let column = lines
                .get(line.saturating_sub(1) as usize)
                .map_or(byte_column, |text| char_column(text, byte_column));
            Some(Problem {
                line: line.max(1),
                column: u32::try_from(column.max(1)).unwrap_or(u32::MAX),
                severity,
                message,
            })
        })
        .collect()
}

/// The 1-based character column of the 1-based byte column `byte_column` in `line`.
pub fn char_column(line: &str, byte_column: usize) -> usize {
    let byte = byte_column.saturating_sub(1).min(line.len());
    let mut end = byte;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].chars().count() + 1
}

/// A problem for a failure that names no place in the source (a link error): the first line that
/// says "error", at 1:1.
pub fn first_error_line(diagnostics: &str) -> Problem {
    let message = diagnostics
        .lines()
        .find(|line| line.contains("error") || line.contains("undefined reference"))
        .or_else(|| diagnostics.lines().next())
        .unwrap_or("the compiler failed without saying why")
        .trim()
        .to_owned();
    Problem {
        line: 1,
        column: 1,
        severity: Severity::Error,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_diagnostics_become_problems_with_character_columns() {
        let source = "int main(void) {\n    char *s = \"é\"; x = 1;\n}\n";
        let diagnostics = "main.c: In function 'main':\n\
main.c:2:22: error: 'x' undeclared (first use in this function)\n\
    2 |     char *s = \"é\"; x = 1;\n\
      |                     ^\n\
main.c:2:22: note: each undeclared identifier is reported only once\n\
other.h:1:1: error: not the user's file\n";
        let problems = parse_gcc(diagnostics, "main.c", source);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].line, 2);
        // Byte 22 is character 21: the é takes two bytes.
        assert_eq!(problems[0].column, 21);
        assert_eq!(problems[0].severity, Severity::Error);
        assert_eq!(
            problems[0].message,
            "'x' undeclared (first use in this function)"
        );
        assert_eq!(problems[1].severity, Severity::Note);
    }

    #[test]
    fn link_errors_get_a_problem_at_the_start() {
        let problem = first_error_line(
            "/usr/bin/ld: /tmp/cc.o: in function `main':\nmain.c:(.text+0x5): undefined reference to `f'\ncollect2: error: ld returned 1 exit status\n",
        );
        assert_eq!((problem.line, problem.column), (1, 1));
        assert!(problem.message.contains("undefined reference"));
    }
}
