//! Rust through `rustc` (edition 2021, one file, no crates): every intent compiles the program;
//! problems come from `--error-format=json` (primary spans in the user's file, character columns),
//! `diagnostics` is the compiler's own rendered text; BUILD returns the executable as `main`.
//!
//! The toolchain is found through rustup's proxy at start-up and then used directly (the real
//! `rustc` in its sysroot), so jobs need neither rustup nor `$HOME`: only the sysroot, read-only.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::native::{EXECUTABLE, executable_output, run_compiler, run_executable};
use super::process::{CommandSpec, ExitKind};
use super::python::safe_file_name;
use super::{CompileOutput, JobContext, JobSink, Toolchain};
use crate::protocol::{Problem, Severity};

/// The flags every compile uses (besides the file names).
const FLAGS: &[&str] = &[
    "--edition",
    "2021",
    "--crate-type",
    "bin",
    "--crate-name",
    "main",
    "-C",
    "opt-level=2",
    "--error-format=json",
    "--color",
    "never",
];

/// A Rust compiler found on this machine.
#[derive(Debug, Clone)]
pub struct Rust {
    rustc: PathBuf,
    sysroot: PathBuf,
    version: String,
    /// `rustc --version` in full (commit and date), for the cache.
    build: String,
}

impl Rust {
    /// Finds `rustc` on the PATH and resolves it to the toolchain's own binary.
    pub fn detect() -> Option<Rust> {
        let output = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let sysroot = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
        let sysroot = std::fs::canonicalize(&sysroot).unwrap_or(sysroot);
        let rustc = sysroot.join("bin").join("rustc");
        let output = Command::new(&rustc).arg("--version").output().ok()?;
        if !output.status.success() {
            return None;
        }
        let build = String::from_utf8(output.stdout).ok()?.trim().to_owned();
        let version = build.split_whitespace().nth(1)?.to_owned();
        Some(Rust {
            rustc,
            sysroot,
            version,
            build,
        })
    }
}

impl Toolchain for Rust {
    fn id(&self) -> &str {
        "rust"
    }

    fn name(&self) -> &str {
        "Rust"
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn source_file_name(&self, requested: Option<&str>) -> String {
        safe_file_name(requested, "rs").unwrap_or_else(|| "main.rs".to_owned())
    }

    fn read_only_paths(&self) -> Vec<PathBuf> {
        vec![self.sysroot.clone()]
    }

    fn cache_flags(&self) -> Option<String> {
        Some(format!("{} {}", self.build, FLAGS.join(" ")))
    }

    fn compile(&self, ctx: &JobContext<'_>, sink: &mut dyn JobSink) -> CompileOutput {
        let source_name = self.source_file_name(ctx.input.file_name.as_deref());
        let mut args: Vec<&str> = FLAGS.to_vec();
        args.extend(["-o", EXECUTABLE, &source_name]);
        let spec = CommandSpec::new(&self.rustc, args);
        let run = match run_compiler(ctx, &spec, sink, self.name()) {
            Ok(run) => run,
            Err(stopped) => return *stopped,
        };
        let json = String::from_utf8_lossy(&run.captured_stderr);
        let (diagnostics, problems) = parse_rustc(&json, &source_name);
        let success = run.exit == ExitKind::Code(0);
        executable_output(ctx, success, diagnostics, problems)
    }

    fn run_command(&self, ctx: &JobContext<'_>, compiled: &CompileOutput) -> CommandSpec {
        run_executable(ctx, compiled)
    }

    fn is_out_of_memory(&self, stderr_tail: &[u8]) -> bool {
        String::from_utf8_lossy(stderr_tail).contains("memory allocation of")
    }
}

/// The rendered text and the problems of rustc's JSON diagnostics (one object a line; lines that
/// are not JSON, such as a crashed compiler's, are kept as text).
pub fn parse_rustc(output: &str, source_name: &str) -> (String, Vec<Problem>) {
    let mut text = String::new();
    let mut problems = Vec::new();
    for line in output.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            text.push_str(line);
            text.push('\n');
            continue;
        };
        if let Some(rendered) = message.get("rendered").and_then(Value::as_str) {
            text.push_str(rendered);
        }
        let severity = match message.get("level").and_then(Value::as_str) {
            Some("error" | "error: internal compiler error") => Severity::Error,
            Some("warning") => Severity::Warning,
            Some("note" | "help") => Severity::Note,
            _ => continue,
        };
        let Some(summary) = message.get("message").and_then(Value::as_str) else {
            continue;
        };
        let spans = message
            .get("spans")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let primary = spans.iter().find(|span| {
            span.get("is_primary").and_then(Value::as_bool) == Some(true)
                && span.get("file_name").and_then(Value::as_str) == Some(source_name)
        });
        let Some(span) = primary else {
            continue;
        };
        let number = |key: &str| {
            span.get(key)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1)
        };
        let label = span
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let message = if label.is_empty() {
            summary.to_owned()
        } else {
            format!("{summary}: {label}")
        };
        problems.push(Problem {
            line: number("line_start").max(1),
            column: number("column_start").max(1),
            severity,
            message,
        });
    }
    (text, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_diagnostics_become_problems_and_text() {
        let output = r#"{"$message_type":"diagnostic","message":"mismatched types","code":null,"level":"error","spans":[{"file_name":"main.rs","line_start":1,"column_start":26,"is_primary":true,"label":"expected `i32`, found `&str`"},{"file_name":"main.rs","line_start":1,"column_start":20,"is_primary":false,"label":"expected due to this"}],"children":[],"rendered":"error[E0308]: mismatched types\n"}
{"$message_type":"diagnostic","message":"aborting due to 1 previous error","code":null,"level":"error","spans":[],"children":[],"rendered":"error: aborting due to 1 previous error\n"}
not json
"#;
        let (text, problems) = parse_rustc(output, "main.rs");
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].line, problems[0].column), (1, 26));
        assert_eq!(problems[0].severity, Severity::Error);
        assert_eq!(
            problems[0].message,
            "mismatched types: expected `i32`, found `&str`"
        );
        assert!(text.starts_with("error[E0308]: mismatched types\n"));
        assert!(text.contains("aborting"));
        assert!(text.ends_with("not json\n"));
    }
}
