//! Python: CHECK compiles the source to bytecode and reports syntax errors with their line and
//! column; BUILD returns that bytecode as a `.pyc`; RUN compiles first (so a syntax error is a
//! `compile-error` with problems, not a traceback) and then runs the `.pyc` unbuffered.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{self, CommandSpec};
use super::{CompileOutput, JobContext, JobSink, Outcome, Toolchain};
use crate::protocol::{Problem, Severity, Verdict};

/// The checker runs inside the job: it compiles the source with the user's file name (so
/// tracebacks name it), prints one problem a line in KILN/1 form on stdout, the interpreter's own
/// message on stderr, and writes a timestamp-less `.pyc` on success.
const CHECKER: &str = r#"
import sys, marshal, warnings, traceback, importlib.util
src, display, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, 'rb').read()
def one_line(text):
    return ' '.join(str(text).split())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    try:
        # Compiling text, not bytes, makes SyntaxError offsets count characters, not UTF-8 bytes.
        text = importlib.util.decode_source(data)
        code = compile(text, display, 'exec', dont_inherit=True)
    except (SyntaxError, ValueError, UnicodeDecodeError) as error:
        line = getattr(error, 'lineno', None) or 1
        col = getattr(error, 'offset', None) or 1
        print(f"{line}:{col}: error: {type(error).__name__}: {one_line(getattr(error, 'msg', error))}")
        sys.stderr.write(''.join(traceback.format_exception_only(type(error), error)))
        sys.exit(1)
for warning in caught:
    print(f"{warning.lineno or 1}:1: warning: {warning.category.__name__}: {one_line(warning.message)}")
    sys.stderr.write(warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno))
# Flags 0b01: hash-based but unchecked, so the .pyc runs without its source beside it.
header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, 'little') + importlib.util.source_hash(data)
with open(out, 'wb') as f:
    f.write(header + marshal.dumps(code))
"#;

/// A Python 3 interpreter found on this machine.
#[derive(Debug, Clone)]
pub struct Python {
    executable: PathBuf,
    version: String,
    /// `sys.prefix` and `sys.base_prefix`: what a sandbox must show the job (it may live in a home
    /// directory the job cannot otherwise see, as pyenv's does).
    prefixes: Vec<PathBuf>,
}

impl Python {
    /// Finds `python3` on the PATH and resolves it to the real interpreter (shims such as pyenv's
    /// need an environment the jobs do not get).
    pub fn detect() -> Option<Python> {
        let output = Command::new("python3")
            .args([
                "-c",
                "import sys, platform; print(sys.executable); print(platform.python_version()); print(sys.prefix); print(sys.base_prefix)",
            ])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8(output.stdout).ok()?;
        let mut lines = text.lines();
        let executable = PathBuf::from(lines.next()?.trim());
        let version = lines.next()?.trim().to_owned();
        let executable = std::fs::canonicalize(&executable).unwrap_or(executable);
        let mut prefixes: Vec<PathBuf> = Vec::new();
        for line in lines.take(2) {
            let prefix = PathBuf::from(line.trim());
            let prefix = std::fs::canonicalize(&prefix).unwrap_or(prefix);
            if !prefixes.contains(&prefix) {
                prefixes.push(prefix);
            }
        }
        Some(Python {
            executable,
            version,
            prefixes,
        })
    }

    /// The interpreter's path.
    pub fn executable(&self) -> &Path {
        &self.executable
    }

    fn pyc_name(source_name: &str) -> String {
        let stem = source_name.strip_suffix(".py").unwrap_or(source_name);
        format!("{stem}.pyc")
    }
}

impl Toolchain for Python {
    fn id(&self) -> &str {
        "python"
    }

    fn name(&self) -> &str {
        "Python"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn read_only_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.prefixes.clone();
        if let Some(dir) = self.executable.parent()
            && !paths.iter().any(|prefix| dir.starts_with(prefix))
        {
            paths.push(dir.to_path_buf());
        }
        paths
    }

    fn source_file_name(&self, requested: Option<&str>) -> String {
        safe_file_name(requested, "py").unwrap_or_else(|| "main.py".to_owned())
    }

    /// Cached like the compilers: a repeated RUN then starts one interpreter instead of two, and
    /// the checker's text is part of the key so a changed checker never serves an old `.pyc`.
    fn cache_flags(&self) -> Option<String> {
        Some(format!("{} -I -S {CHECKER}", self.executable.display()))
    }

    fn compile(&self, ctx: &JobContext<'_>, sink: &mut dyn JobSink) -> CompileOutput {
        let source_name = self.source_file_name(ctx.input.file_name.as_deref());
        let pyc_name = Python::pyc_name(&source_name);
        let spec = CommandSpec::new(
            &self.executable,
            [
                "-I",
                "-S",
                "-c",
                CHECKER,
                &source_name,
                &source_name,
                &pyc_name,
            ],
        );
        let run = process::run(
            ctx.sandbox,
            &spec,
            ctx.dir.path(),
            None,
            &ctx.compile_limits,
            sink,
            false,
        );
        let run = match run {
            Ok(run) => run,
            Err(error) => {
                return CompileOutput {
                    stopped: Some(Outcome::internal(format!("cannot start Python: {error}"))),
                    ..CompileOutput::default()
                };
            }
        };
        if let Some(reason) = run.stopped {
            let verdict = match reason {
                process::StopReason::WallTime => Verdict::TimeLimit,
                process::StopReason::OutputLimit => Verdict::OutputLimit,
                process::StopReason::Cancelled => Verdict::Cancelled,
            };
            return CompileOutput {
                stopped: Some(Outcome::verdict(verdict)),
                ..CompileOutput::default()
            };
        }
        let problems = Problem::parse_all(&run.captured_stdout);
        let diagnostics = String::from_utf8_lossy(&run.captured_stderr).into_owned();
        let success = run.exit == process::ExitKind::Code(0);
        if !success && problems.iter().all(|p| p.severity != Severity::Error) {
            return CompileOutput {
                stopped: Some(Outcome::internal(format!(
                    "the Python syntax check failed unexpectedly: {}",
                    diagnostics.trim()
                ))),
                ..CompileOutput::default()
            };
        }
        CompileOutput {
            success,
            diagnostics,
            problems,
            artifact: success.then(|| ctx.dir.path().join(&pyc_name)),
            artifact_name: pyc_name,
            stopped: None,
        }
    }

    fn run_command(&self, ctx: &JobContext<'_>, compiled: &CompileOutput) -> CommandSpec {
        let mut args = vec![
            "-u".into(),
            "-B".into(),
            compiled.artifact_name.clone().into(),
        ];
        args.extend(ctx.input.args.iter().map(Into::into));
        CommandSpec {
            program: self.executable.clone(),
            args,
            env: Vec::new(),
            scratch: None,
        }
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONIOENCODING", "utf-8")
    }
}

/// The user's file name reduced to a safe base name with the right extension, if it has one.
pub fn safe_file_name(requested: Option<&str>, extension: &str) -> Option<String> {
    let name = requested?.rsplit(['/', '\\']).next()?;
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    let suffix = format!(".{extension}");
    let stem = clean.strip_suffix(&suffix)?;
    if stem.is_empty() || stem.starts_with('.') {
        return None;
    }
    Some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_reduced_to_safe_base_names() {
        assert_eq!(
            safe_file_name(Some("hello.py"), "py").as_deref(),
            Some("hello.py")
        );
        assert_eq!(
            safe_file_name(Some("../../etc/x.py"), "py").as_deref(),
            Some("x.py")
        );
        assert_eq!(
            safe_file_name(Some("a b.py"), "py").as_deref(),
            Some("ab.py")
        );
        assert_eq!(safe_file_name(Some(".py"), "py"), None);
        assert_eq!(safe_file_name(Some("notes.txt"), "py"), None);
        assert_eq!(safe_file_name(None, "py"), None);
    }
}
