//! Each language with its real toolchain, through a real server on 127.0.0.1 (sandboxed with
//! bubblewrap when it works here): CHECK of a good and of a broken program (problems at the right
//! line and column), RUN with stdin and arguments, BUILD returning the program, and the compile
//! cache turning a repeated RUN into no compile at all.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::client::{Client, ClientError, Event, JobResult, JobSpec};
use kiln::exec::cache::CompileCache;
use kiln::exec::{Executor, NoSandbox, Sandbox, bwrap};
use kiln::protocol::{ErrorCode, Intent, Problem, Severity, Verdict};
use kiln::server::{self, ServerConfig, ServerHandle};

struct Language {
    id: &'static str,
    /// Prints `hello <first line of stdin> <arguments>`.
    greeter: &'static str,
    /// Has one error, on the line and at the token given below.
    broken: &'static str,
    error_line: u32,
    error_token: &'static str,
    artifact: &'static str,
}

const LANGUAGES: &[Language] = &[
    Language {
        id: "c",
        greeter: "#include <stdio.h>\n#include <string.h>\n\
int main(int argc, char **argv) {\n\
    char line[100] = \"\";\n\
    if (fgets(line, sizeof line, stdin)) line[strcspn(line, \"\\n\")] = 0;\n\
    printf(\"hello %s\", line);\n\
    for (int i = 1; i < argc; i++) printf(\" %s\", argv[i]);\n\
    printf(\"\\n\");\n\
    return 0;\n\
}\n",
        broken: "#include <stdio.h>\nint main(void) {\n    int x = 1;\n    printf(\"%d\\n\", y);\n}\n",
        error_line: 4,
        error_token: "y)",
        artifact: "main",
    },
    Language {
        id: "cpp",
        greeter: "#include <iostream>\n#include <string>\n\
int main(int argc, char **argv) {\n\
    std::string line;\n\
    std::getline(std::cin, line);\n\
    std::cout << \"hello \" << line;\n\
    for (int i = 1; i < argc; i++) std::cout << ' ' << argv[i];\n\
    std::cout << '\\n';\n\
}\n",
        broken: "#include <iostream>\nint main() {\n    int k = 0;\n    std::cout << undefined_name << \"\\n\";\n}\n",
        error_line: 4,
        error_token: "undefined_name",
        artifact: "main",
    },
    Language {
        id: "rust",
        greeter: "use std::io::BufRead;\n\
fn main() {\n\
    let mut line = String::new();\n\
    std::io::stdin().lock().read_line(&mut line).expect(\"stdin\");\n\
    let args: Vec<String> = std::env::args().skip(1).collect();\n\
    let mut out = format!(\"hello {}\", line.trim_end());\n\
    for arg in args { out.push(' '); out.push_str(&arg); }\n\
    println!(\"{out}\");\n\
}\n",
        broken: "fn main() {\n    let ok = 1;\n    let n: i32 = \"text\";\n    println!(\"{ok} {n}\");\n}\n",
        error_line: 3,
        error_token: "\"text\"",
        artifact: "main",
    },
    Language {
        id: "python",
        greeter: "import sys\nline = sys.stdin.readline().rstrip('\\n')\nprint(' '.join(['hello', line] + sys.argv[1:]))\n",
        broken: "import sys\n\nprint(\"hello\"\n",
        error_line: 3,
        error_token: "(",
        artifact: "main.pyc",
    },
];

/// bubblewrap when it works here, else no sandbox (these programs are harmless).
fn sandbox() -> Arc<dyn Sandbox> {
    let languages = kiln::exec::detect_toolchains();
    let read_only: Vec<PathBuf> = languages.iter().flat_map(|l| l.read_only_paths()).collect();
    let root = kiln::exec::jobdir::create_root().expect("jobs root");
    match bwrap::detect(&read_only, &root) {
        Ok(sandbox) => Arc::new(sandbox),
        Err(why) => {
            eprintln!("languages: no sandbox here ({why}); testing unsandboxed");
            Arc::new(NoSandbox)
        }
    }
}

fn start(cache: &tempfile::TempDir) -> (ServerHandle, Client) {
    let executor = Executor::with_languages(kiln::exec::detect_toolchains(), sandbox())
        .expect("executor")
        .with_cache(CompileCache::open(cache.path(), 64 * 1024 * 1024).expect("cache"));
    let mut config = ServerConfig::loopback();
    config.workers = 2;
    config.max_jobs_per_peer = 2;
    let handle = server::start_with_executor(config, Arc::new(executor)).expect("server");
    let client = Client::new(handle.local_addr().to_string(), None)
        .with_read_timeout(Some(Duration::from_secs(120)));
    (handle, client)
}

struct Answer {
    result: JobResult,
    stdout: String,
    problems: Vec<Problem>,
    diagnostics: String,
    artifact: Option<(String, Vec<u8>)>,
}

fn send(client: &Client, job: &JobSpec) -> Answer {
    let (events, result) = client.run_to_end(job).expect("the server answers");
    let mut answer = Answer {
        result,
        stdout: String::new(),
        problems: Vec::new(),
        diagnostics: String::new(),
        artifact: None,
    };
    for event in events {
        match event {
            Event::Stdout(bytes) => answer.stdout.push_str(&String::from_utf8_lossy(&bytes)),
            Event::Problems(problems) => answer.problems.extend(problems),
            Event::Diagnostics(text) => answer.diagnostics.push_str(&text),
            Event::Artifact { name, data } => answer.artifact = Some((name, data)),
            _ => {}
        }
    }
    answer
}

fn check_language(client: &Client, language: &Language) {
    let id = language.id;
    let answer = send(client, &JobSpec::code(Intent::Check, id, language.greeter));
    assert_eq!(
        answer.result.verdict,
        Verdict::Ok,
        "{id}: CHECK of a good program: {:?} {}",
        answer.result.fields,
        answer.diagnostics
    );

    let answer = send(client, &JobSpec::code(Intent::Check, id, language.broken));
    assert_eq!(
        answer.result.verdict,
        Verdict::CompileError,
        "{id}: CHECK of a broken program"
    );
    let line_text = language
        .broken
        .lines()
        .nth(language.error_line as usize - 1)
        .expect("the error line exists");
    let column = line_text
        .find(language.error_token)
        .map(|byte| line_text[..byte].chars().count() as u32 + 1)
        .expect("the token is on the line");
    let error = answer
        .problems
        .iter()
        .find(|p| p.severity == Severity::Error)
        .unwrap_or_else(|| panic!("{id}: no error among {:?}", answer.problems));
    assert_eq!(
        (error.line, error.column),
        (language.error_line, column),
        "{id}: the error is at the wrong place: {error:?}\n{}",
        answer.diagnostics
    );
    assert!(
        !answer.diagnostics.is_empty(),
        "{id}: the compiler's own text is kept"
    );

    let mut job = JobSpec::code(Intent::Run, id, language.greeter);
    job.stdin = b"world\nignored\n".to_vec();
    job.head.args = vec!["one".into(), "two words".into()];
    let answer = send(client, &job);
    assert_eq!(
        answer.result.verdict,
        Verdict::Ok,
        "{id}: RUN: {:?}",
        answer.result.fields
    );
    assert_eq!(
        answer.stdout, "hello world one two words\n",
        "{id}: RUN output"
    );
    assert_eq!(answer.result.exit_code(), Some(0));

    let answer = send(client, &JobSpec::code(Intent::Build, id, language.greeter));
    assert_eq!(answer.result.verdict, Verdict::Ok, "{id}: BUILD");
    let (name, data) = answer.artifact.expect("BUILD returns the program");
    assert_eq!(name, language.artifact, "{id}: artifact name");
    if language.artifact == "main" {
        assert_eq!(
            &data[..4],
            b"\x7fELF",
            "{id}: the artifact is an executable"
        );
    } else {
        assert!(data.len() > 16, "{id}: the .pyc has a header and code");
    }

    let answer = send(client, &JobSpec::code(Intent::Build, id, language.broken));
    assert_eq!(
        answer.result.verdict,
        Verdict::CompileError,
        "{id}: BUILD of a broken program"
    );
    assert!(answer.artifact.is_none());
}

#[test]
fn every_language_checks_runs_and_builds() {
    let cache = tempfile::tempdir().expect("cache");
    let (handle, client) = start(&cache);
    let offered: Vec<String> = client
        .info()
        .expect("info")
        .languages
        .into_iter()
        .map(|language| language.id)
        .collect();
    for language in LANGUAGES {
        assert!(
            offered.iter().any(|id| id == language.id),
            "{} is installed here but not offered: {offered:?}",
            language.id
        );
        check_language(&client, language);
    }
    let error = client
        .run_to_end(&JobSpec::code(Intent::Run, "cobol", "DISPLAY 'HI'."))
        .expect_err("no COBOL");
    assert_eq!(error.code(), Some(ErrorCode::UnsupportedLanguage));
    let ClientError::Server { message, .. } = error else {
        panic!("a refusal");
    };
    assert!(message.contains("c, cpp, python, rust"), "{message}");
    handle.shutdown(Duration::from_secs(5));
}

/// A repeated RUN of the same C, Rust or Python source compiles (or syntax-checks) once: the
/// second run's compile time and wall time, against the first's, measured in one run.
#[test]
fn a_repeated_run_compiles_once() {
    let cache = tempfile::tempdir().expect("cache");
    let (handle, client) = start(&cache);
    for (id, source) in [
        (
            "c",
            "#include <stdio.h>\nint main(void) { puts(\"cached c\"); return 0; }\n",
        ),
        ("rust", "fn main() { println!(\"cached rust\"); }\n"),
        ("python", "print('cached python')\n"),
    ] {
        let job = JobSpec::code(Intent::Run, id, source);
        let started = Instant::now();
        let first = send(&client, &job);
        let first_wall = started.elapsed();
        let started = Instant::now();
        let second = send(&client, &job);
        let second_wall = started.elapsed();
        assert_eq!(first.result.verdict, Verdict::Ok, "{id}: first run");
        assert_eq!(second.result.verdict, Verdict::Ok, "{id}: second run");
        assert_eq!(first.stdout, second.stdout);
        let first_compile = first.result.millis("compile-ms").expect("compile-ms");
        let second_compile = second.result.millis("compile-ms").expect("compile-ms");
        eprintln!(
            "cache: {id}: first RUN {} ms (compile {first_compile} ms), repeated RUN {} ms (compile {second_compile} ms): {:.1}x faster",
            first_wall.as_millis(),
            second_wall.as_millis(),
            first_wall.as_secs_f64() / second_wall.as_secs_f64().max(1e-6)
        );
        assert!(
            second_compile * 5 <= first_compile.max(5),
            "{id}: the repeated RUN compiled again ({first_compile} ms, then {second_compile} ms)"
        );
        assert!(
            second_wall < first_wall,
            "{id}: the repeated RUN was not faster"
        );
    }
    let cache_stats = handle.executor().cache().expect("a cache");
    assert_eq!(cache_stats.misses(), 3, "each source compiled once");
    assert_eq!(cache_stats.hits(), 3, "each repeat came from the cache");
    handle.shutdown(Duration::from_secs(5));
}

/// CPU time and peak memory of the program itself reach the result, sandboxed or not.
#[test]
fn results_report_the_programs_cpu_time_and_memory() {
    let cache = tempfile::tempdir().expect("cache");
    let (handle, client) = start(&cache);
    let source = "#include <stdlib.h>\n#include <time.h>\n\
int main(void) {\n\
    size_t size = 64u << 20;\n\
    volatile char *block = malloc(size);\n\
    if (!block) return 2;\n\
    for (size_t i = 0; i < size; i += 4096) block[i] = 1;\n\
    volatile unsigned long spin = 0;\n\
    clock_t start = clock();\n\
    while (clock() - start < CLOCKS_PER_SEC * 3 / 10) spin++;\n\
    return block[size - 4096] == 1 ? 0 : 3;\n\
}\n";
    let answer = send(&client, &JobSpec::code(Intent::Run, "c", source));
    assert_eq!(
        answer.result.verdict,
        Verdict::Ok,
        "{:?}",
        answer.result.fields
    );
    let rss = answer
        .result
        .fields
        .get_parsed::<u64>("max-rss-kib")
        .expect("max-rss-kib");
    let cpu = answer.result.millis("cpu-ms").expect("cpu-ms");
    assert!(
        rss >= 64 * 1024,
        "peak memory {rss} KiB misses the 64 MiB block: {:?}",
        answer.result.fields
    );
    assert!(cpu >= 250, "CPU time {cpu} ms misses the 300 ms spin");
    handle.shutdown(Duration::from_secs(5));
}
