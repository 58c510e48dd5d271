//! Frame bodies with structure: `key: value` lines (`result`, `info`, `stats`), verdicts, and the
//! `LINE:COL: SEVERITY: MESSAGE` lines of the `problems` channel.

use std::fmt;
use std::str::FromStr;

/// An ordered list of `key: value` lines; keys may repeat (`language:` in `info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// An empty list.
    pub fn new() -> Self {
        Fields(Vec::new())
    }

    /// Appends a line; line breaks in the value become spaces.
    pub fn push(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        let value = value
            .to_string()
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.0.push((key.to_owned(), value));
        self
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// Every value for `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The first value for `key`, parsed.
    pub fn get_parsed<T: FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|value| value.parse().ok())
    }

    /// The body bytes: one `key: value` line each, LF-terminated.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        for (key, value) in &self.0 {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Parses a body; lines without `: ` are skipped.
    pub fn parse(body: &[u8]) -> Fields {
        let text = String::from_utf8_lossy(body);
        Fields(
            text.lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    Some((key.trim().to_owned(), value.trim().to_owned()))
                })
                .collect(),
        )
    }
}

/// How a job ended, as the `verdict` of a `result` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Finished normally (exit code 0, or a clean compile).
    Ok,
    /// The answer to PING.
    Pong,
    /// The source did not compile.
    CompileError,
    /// The program exited with a non-zero code.
    RuntimeError,
    /// The program was killed by a signal it did not expect.
    Signal,
    /// The program ran out of wall or CPU time.
    TimeLimit,
    /// The program ran out of memory.
    MemoryLimit,
    /// The program wrote more than the output cap, or a file over the file-size limit.
    OutputLimit,
    /// The client went away or the server stopped the job.
    Cancelled,
    /// The server failed to run the job.
    InternalError,
    /// An `Exclusive: yes` job could not get the cluster lock within its time limit, or the server
    /// is not in a cluster; the program did not run.
    LockUnavailable,
}

impl Verdict {
    /// Every verdict.
    pub const ALL: [Verdict; 11] = [
        Verdict::Ok,
        Verdict::Pong,
        Verdict::CompileError,
        Verdict::RuntimeError,
        Verdict::Signal,
        Verdict::TimeLimit,
        Verdict::MemoryLimit,
        Verdict::OutputLimit,
        Verdict::Cancelled,
        Verdict::InternalError,
        Verdict::LockUnavailable,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Pong => "pong",
            Verdict::CompileError => "compile-error",
            Verdict::RuntimeError => "runtime-error",
            Verdict::Signal => "signal",
            Verdict::TimeLimit => "time-limit",
            Verdict::MemoryLimit => "memory-limit",
            Verdict::OutputLimit => "output-limit",
            Verdict::Cancelled => "cancelled",
            Verdict::InternalError => "internal-error",
            Verdict::LockUnavailable => "lock-unavailable",
        }
    }

    /// Parses the word on the wire.
    pub fn parse(word: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == word)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Prevents the program from building or running.
    Error,
    /// Worth a look.
    Warning,
    /// Extra information attached to another problem.
    Note,
}

impl Severity {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }

    /// Parses the word on the wire; anything unknown is a note.
    pub fn parse(word: &str) -> Severity {
        match word {
            "error" | "fatal error" => Severity::Error,
            "warning" => Severity::Warning,
            _ => Severity::Note,
        }
    }
}

/// One problem in the user's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line in the user's source, from 1.
    pub line: u32,
    /// Column in the line, from 1 (characters, not bytes).
    pub column: u32,
    /// How serious it is.
    pub severity: Severity,
    /// What is wrong, one line.
    pub message: String,
}

impl Problem {
    /// Encodes a list as the body of a `problems` frame.
    pub fn encode_all(problems: &[Problem]) -> Vec<u8> {
        problems
            .iter()
            .map(|problem| format!("{problem}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// Parses the body of a `problems` frame; lines that do not parse are skipped.
    pub fn parse_all(body: &[u8]) -> Vec<Problem> {
        String::from_utf8_lossy(body)
            .lines()
            .filter_map(Problem::parse_line)
            .collect()
    }

    /// Parses one `LINE:COL: SEVERITY: MESSAGE` line.
    pub fn parse_line(line: &str) -> Option<Problem> {
        let mut parts = line.splitn(4, ':');
        let line_no = parts.next()?.trim().parse().ok()?;
        let column = parts.next()?.trim().parse().ok()?;
        let severity = Severity::parse(parts.next()?.trim());
        let message = parts.next().unwrap_or_default().trim().to_owned();
        Some(Problem {
            line: line_no,
            column,
            severity,
            message,
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message: String = self
            .message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        write!(
            f,
            "{}:{}: {}: {}",
            self.line.max(1),
            self.column.max(1),
            self.severity.as_str(),
            message
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fields_keep_order_and_repeats() {
        let mut fields = Fields::new();
        fields
            .push("verdict", Verdict::Ok)
            .push("language", "python Python 3.11")
            .push("language", "c C 12");
        let parsed = Fields::parse(&fields.encode());
        assert_eq!(parsed, fields);
        assert_eq!(parsed.get("verdict"), Some("ok"));
        assert_eq!(parsed.get_all("language").count(), 2);
    }

    #[test]
    fn problems_parse_messages_with_colons() {
        let problem = Problem::parse_line("3:5: error: expected ':' here").expect("parses");
        assert_eq!(problem.line, 3);
        assert_eq!(problem.column, 5);
        assert_eq!(problem.message, "expected ':' here");
        assert_eq!(Problem::parse_line("nonsense"), None);
    }

    proptest! {
        #[test]
        fn problems_round_trip(line in 1u32..100_000, column in 1u32..1000,
                               severity in prop::sample::select(vec![Severity::Error, Severity::Warning, Severity::Note]),
                               message in "[ -~]{0,80}") {
            let problem = Problem { line, column, severity, message: message.trim().to_owned() };
            let parsed = Problem::parse_all(&Problem::encode_all(std::slice::from_ref(&problem)));
            prop_assert_eq!(parsed, vec![problem]);
        }

        #[test]
        fn verdicts_round_trip(verdict in prop::sample::select(Verdict::ALL.to_vec())) {
            prop_assert_eq!(Verdict::parse(verdict.as_str()), Some(verdict));
        }
    }
}
