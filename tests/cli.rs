//! The `kiln` binary as a person uses it: `run`, `check`, `build`, `info` and `ping`, with the
//! embedded server and with `--server`, exit codes that mirror the program, and live output.

mod common;

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kiln() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.env_remove("KILN_TOKEN").env("RUST_LOG", "warn");
    command
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writes");
    path
}

/// Starts a headless server with `command` (`kiln --server ...`); returns it, the rest of its
/// stdout's lines, and the address its first line announces.
fn start_headless(command: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("line").expect("reads");
    let addr = first
        .strip_prefix("Kiln server listening on ")
        .expect("address line")
        .to_owned();
    (child, lines, addr)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(args: &[&str], dir: &Path) -> Output {
    kiln()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

#[test]
fn run_prints_output_and_mirrors_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "greet.py",
        "import sys\nprint('hi', sys.argv[1:], input())\nprint('oops', file=sys.stderr)\nsys.exit(7)\n",
    );
    write(dir.path(), "input.txt", "Ada\n");
    let output = run(
        &[
            "run",
            "greet.py",
            "--stdin",
            "input.txt",
            "--",
            "x",
            "--flag",
        ],
        dir.path(),
    );
    assert_eq!(text(&output.stdout), "hi ['x', '--flag'] Ada\n");
    assert!(text(&output.stderr).contains("oops"));
    assert_eq!(output.status.code(), Some(7));
}

#[test]
fn run_shows_output_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "hello.py",
        "import time\nprint('first line')\ntime.sleep(1)\nprint('second line')\n",
    );
    let mut child = kiln()
        .args(["run", "hello.py"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    let started = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("reads");
    let first_at = started.elapsed();
    let second = lines.next().expect("a line").expect("reads");
    let second_at = started.elapsed();
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("first line", "second line")
    );
    assert!(
        second_at - first_at >= Duration::from_millis(800),
        "the first line arrived at {first_at:?}, the second at {second_at:?}"
    );
    assert!(child.wait().expect("exits").success());
}

#[test]
fn check_lists_problems_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "broken.py", "print('a')\nif True\n    pass\n");
    let output = run(&["check", "broken.py"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("broken.py"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    write(dir.path(), "fine.py", "print('a')\n");
    let output = run(&["check", "fine.py"], dir.path());
    assert!(output.status.success());
    assert!(text(&output.stderr).contains("no problems"));
}

#[test]
fn build_writes_a_runnable_pyc() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "tool.py", "print('from bytecode')\n");
    let output = run(&["build", "tool.py", "-o", "out.pyc"], dir.path());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ran = Command::new("python3")
        .arg(dir.path().join("out.pyc"))
        .output()
        .expect("python runs");
    assert_eq!(text(&ran.stdout), "from bytecode\n");
}

#[test]
fn info_and_ping_against_a_remote_server_with_a_token() {
    let server = common::server_with_token("cli-token");
    let addr = server.local_addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = run(
        &["info", "--server", &addr, "--token", "cli-token"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let info = text(&output.stdout);
    assert!(info.contains("protocol: 1"), "{info}");
    assert!(info.contains("language: python Python"), "{info}");

    let output = kiln()
        .args(["ping", "--server", &addr])
        .env("KILN_TOKEN", "cli-token")
        .output()
        .expect("runs");
    assert!(text(&output.stdout).starts_with("pong from"));

    let output = run(&["ping", "--server", &addr, "--token", "nope"], dir.path());
    assert_eq!(output.status.code(), Some(69));
    assert!(text(&output.stderr).contains("unauthorized"));

    write(dir.path(), "remote.py", "print(6 * 7)\n");
    let output = run(
        &[
            "run",
            "remote.py",
            "--server",
            &addr,
            "--token",
            "cli-token",
        ],
        dir.path(),
    );
    assert_eq!(text(&output.stdout), "42\n");
}

#[test]
fn limits_and_unknown_languages_give_clear_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "spin.py", "while True: pass\n");
    let output = run(&["run", "spin.py", "--time-limit-ms", "500"], dir.path());
    assert_eq!(output.status.code(), Some(124));
    assert!(text(&output.stderr).contains("time limit"));

    write(dir.path(), "notes.txt", "hello\n");
    let output = run(&["run", "notes.txt"], dir.path());
    assert_eq!(output.status.code(), Some(64));
    assert!(text(&output.stderr).contains("--lang"));

    let output = run(&["run", "notes.txt", "--lang", "cobol"], dir.path());
    assert_eq!(output.status.code(), Some(69));
    assert!(text(&output.stderr).contains("cannot run `cobol`"));

    let output = run(&["run", "missing.py"], dir.path());
    assert_ne!(output.status.code(), Some(0));
    assert!(text(&output.stderr).contains("missing.py"));
}

#[test]
fn headless_server_prints_its_address_and_a_generated_token() {
    // A loopback address needs no token; non-loopback binds are the next test.
    let (mut child, mut lines, addr) = start_headless(kiln().args(["--server", "127.0.0.1:0"]));
    let token_line = lines.next().expect("line").expect("reads");
    assert!(token_line.contains("none"), "{token_line}");
    let output = kiln()
        .args(["ping", "--server", &addr])
        .output()
        .expect("runs");
    assert!(output.status.success());
    // SIGTERM stops it gracefully.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = child.wait().expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_non_loopback_server_requires_a_token_and_generates_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = write(dir.path(), "token", "from-file\n");
    // 0.0.0.0 is not loopback: with a token file, that token is required.
    // The reader stays alive: the server must not meet a closed stdout.
    let (mut child, _lines, listening) = start_headless(
        kiln()
            .args(["--server", "0.0.0.0:0", "--token-file"])
            .arg(&token_file),
    );
    let port = listening.rsplit(':').next().expect("port").to_owned();
    let addr = format!("127.0.0.1:{port}");
    let refused = kiln()
        .args(["ping", "--server", &addr])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(69));
    let accepted = kiln()
        .args(["ping", "--server", &addr, "--token-file"])
        .arg(&token_file)
        .output()
        .expect("runs");
    assert!(accepted.status.success(), "{}", text(&accepted.stderr));
    let _ = child.kill();
    let _ = child.wait();

    // Without one, it makes one up and prints it once.
    let (mut child, mut lines, _) = start_headless(kiln().args(["--server", "0.0.0.0:0"]));
    let token_line = lines.next().expect("line").expect("reads");
    let token = token_line.strip_prefix("Token: ").expect("token line");
    assert_eq!(token.len(), 32, "{token_line}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::io::stdout().flush();
}

/// What a server keeps in the temp directory goes when it stops; what a killed one leaves is swept
/// by the next Kiln process, and nothing of a live one is touched.
#[test]
fn temporary_directories_are_removed_and_a_killed_servers_are_swept() {
    let temp = tempfile::tempdir().expect("tempdir");
    let kiln_dirs = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(temp.path())
            .expect("reads temp")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("kiln-"))
            .collect();
        names.sort();
        names
    };
    let start_server = || {
        start_headless(
            kiln()
                .args(["--server", "127.0.0.1:0"])
                .env("TMPDIR", temp.path()),
        )
    };
    let source = write(temp.path(), "hello.py", "print('hi')\n");
    let source = source.to_string_lossy().into_owned();

    // A server that is SIGKILLed after a job leaves its directory.
    let (mut killed, _killed_output, addr) = start_server();
    let output = run(&["run", &source, "--server", &addr], temp.path());
    assert_eq!(text(&output.stdout), "hi\n", "{}", text(&output.stderr));
    let killed_dir = format!("kiln-{}", killed.id());
    assert_eq!(kiln_dirs(), [killed_dir.as_str()]);
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reaped");
    assert_eq!(
        kiln_dirs(),
        [killed_dir.as_str()],
        "SIGKILL cannot clean up"
    );

    // A live server beside it keeps its own directory while the next process sweeps.
    let (mut live, _live_output, live_addr) = start_server();
    let live_dir = format!("kiln-{}", live.id());
    let output = kiln()
        .args(["run", &source])
        .env("TMPDIR", temp.path())
        .current_dir(temp.path())
        .output()
        .expect("kiln runs");
    assert_eq!(text(&output.stdout), "hi\n", "{}", text(&output.stderr));
    assert_eq!(
        kiln_dirs(),
        [live_dir.as_str()],
        "the killed server's directory was not swept, or `kiln run` left its own"
    );
    let output = run(&["run", &source, "--server", &live_addr], temp.path());
    assert_eq!(text(&output.stdout), "hi\n", "the live server broke");

    // Stopped gracefully, it removes its own.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(live.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    assert!(live.wait().expect("exits").success());
    assert!(kiln_dirs().is_empty(), "left: {:?}", kiln_dirs());
}
