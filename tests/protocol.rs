//! KILN/1 against a real pool server on an ephemeral loopback port, through raw sockets: every
//! intent, every bad input of the foundation issue, tokens, cancellation, busy and shutdown.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ping_answers_pong() {
    let server = server();
    let answer = exchange(server.local_addr(), b"KILN/1 PING\n\n");
    assert!(matches!(answer.status, kiln::protocol::Status::Ok { .. }));
    assert_eq!(answer.frames.len(), 1);
    assert_eq!(answer.result("verdict").as_deref(), Some("pong"));
}

#[test]
fn crlf_and_lower_case_intents_work() {
    let server = server();
    let answer = exchange(server.local_addr(), b"KILN/1 ping\r\n\r\n");
    assert_eq!(answer.result("verdict").as_deref(), Some("pong"));
}

#[test]
fn info_describes_the_server() {
    let server = server();
    let answer = exchange(server.local_addr(), b"KILN/1 INFO\n\n");
    let info = kiln::protocol::Fields::parse(answer.text("info").as_bytes());
    assert_eq!(info.get("protocol"), Some("1"));
    assert_eq!(info.get("model"), Some("pool"));
    assert_eq!(info.get("workers"), Some("2"));
    assert!(
        matches!(info.get("sandbox"), Some("bwrap" | "none")),
        "{info:?}"
    );
    assert_eq!(info.get("max-source-bytes"), Some("1048576"));
    assert!(info.get("server").is_some_and(|s| s.starts_with("kiln ")));
    let python = info
        .get_all("language")
        .find(|l| l.starts_with("python Python 3."));
    assert!(python.is_some(), "no python language line in {info:?}");
    assert_eq!(answer.result("verdict").as_deref(), Some("ok"));
}

#[test]
fn stats_counts_requests() {
    let server = server();
    exchange(server.local_addr(), b"KILN/1 PING\n\n");
    exchange(server.local_addr(), b"KILN/1 FETCH\n\n");
    let answer = exchange(server.local_addr(), b"KILN/1 STATS\n\n");
    let stats = kiln::protocol::Fields::parse(answer.text("stats").as_bytes());
    assert_eq!(stats.get("bad-requests"), Some("1"));
    assert_eq!(stats.get("served"), Some("1"));
    assert_eq!(stats.get("accepted"), Some("3"));
}

#[test]
fn run_python_streams_stdout_and_reports_the_verdict() {
    let server = server();
    let source = "print('hello, world')\n";
    let answer = exchange(
        server.local_addr(),
        &code_request("RUN", "python", source, &[]),
    );
    assert_eq!(answer.text("stdout"), "hello, world\n");
    assert_eq!(answer.result("verdict").as_deref(), Some("ok"));
    assert_eq!(answer.result("exit-code").as_deref(), Some("0"));
    for key in ["compile-ms", "run-ms", "cpu-ms", "max-rss-kib"] {
        assert!(answer.result(key).is_some(), "result lacks {key}");
    }
    assert_eq!(
        answer.frames.last().map(|f| f.channel.as_str()),
        Some("result")
    );
}

#[test]
fn run_python_with_stdin_arguments_and_a_failing_exit() {
    let server = server();
    let source = "import sys\nname = input()\nprint(sys.argv[1:], name)\nprint('bad', file=sys.stderr)\nsys.exit(4)\n";
    let mut request = format!(
        "KILN/1 RUN python\nSource-Length: {}\nStdin-Length: 6\nArg: one two\nArg: 3\n\n",
        source.len()
    )
    .into_bytes();
    request.extend_from_slice(source.as_bytes());
    request.extend_from_slice(b"Ada\0\n\n");
    let answer = exchange(server.local_addr(), &request);
    assert_eq!(answer.text("stdout"), "['one two', '3'] Ada\0\n");
    assert_eq!(answer.text("stderr"), "bad\n");
    assert_eq!(answer.result("verdict").as_deref(), Some("runtime-error"));
    assert_eq!(answer.result("exit-code").as_deref(), Some("4"));
}

#[test]
fn output_arrives_while_the_program_runs() {
    let server = server();
    let source = "import time\nprint('first')\ntime.sleep(1)\nprint('second')\n";
    let mut stream = connect(server.local_addr());
    stream
        .write_all(&code_request("RUN", "python", source, &[]))
        .expect("sends");
    let started = Instant::now();
    let mut decoder = kiln::protocol::FrameDecoder::new(1 << 20);
    let mut arrivals = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = read_some(&mut stream, &mut buffer);
        if n == 0 {
            break;
        }
        decoder.push(&buffer[..n]);
        while let Some(item) = decoder.next_item().expect("valid") {
            if let kiln::protocol::frame::Decoded::Frame(frame) = item
                && frame.channel.as_str() == "stdout"
            {
                arrivals.push((started.elapsed(), frame.body));
            }
        }
    }
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    assert_eq!(arrivals[0].1, b"first\n");
    assert_eq!(arrivals[1].1, b"second\n");
    let gap = arrivals[1].0 - arrivals[0].0;
    assert!(gap >= Duration::from_millis(800), "gap {gap:?}");
}

#[test]
fn check_reports_syntax_errors_with_line_and_column() {
    let server = server();
    let source = "def f():\n    return (1,\n\nprint(f())\n";
    let answer = exchange(
        server.local_addr(),
        &code_request("CHECK", "python", source, &["File-Name: lesson.py"]),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("compile-error"));
    let problems = kiln::protocol::Problem::parse_all(answer.text("problems").as_bytes());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (2, 12));
    assert!(problems[0].message.contains("never closed"));
    assert!(answer.text("diagnostics").contains("lesson.py"));
}

#[test]
fn check_accepts_a_good_program_and_reports_warnings() {
    let server = server();
    let answer = exchange(
        server.local_addr(),
        &code_request("CHECK", "python", "x = 1 is 1\n", &[]),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("ok"));
    let problems = kiln::protocol::Problem::parse_all(answer.text("problems").as_bytes());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].severity, kiln::protocol::Severity::Warning);
    assert!(answer.text("stdout").is_empty(), "CHECK must not run");
}

#[test]
fn run_of_a_syntax_error_is_a_compile_error_not_a_run() {
    let server = server();
    let answer = exchange(
        server.local_addr(),
        &code_request("RUN", "python", "print('x'\n", &[]),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("compile-error"));
    assert!(!answer.text("problems").is_empty());
    assert!(answer.result("run-ms").is_none());
}

#[test]
fn build_returns_bytecode_that_python_runs() {
    let server = server();
    let answer = exchange(
        server.local_addr(),
        &code_request(
            "BUILD",
            "python",
            "import sys\nprint('built', sys.argv[1])\n",
            &["File-Name: tool.py"],
        ),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("ok"));
    let artifact = answer
        .frames
        .iter()
        .find(|f| f.channel.as_str() == "artifact")
        .expect("artifact frame");
    assert_eq!(artifact.attr("name"), Some("tool.pyc"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tool.pyc");
    std::fs::write(&path, &artifact.body).expect("writes");
    let output = std::process::Command::new("python3")
        .arg(&path)
        .arg("ok")
        .output()
        .expect("python runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "built ok\n");
}

#[test]
fn time_limit_stops_an_endless_program() {
    let server = server();
    let started = Instant::now();
    let answer = exchange(
        server.local_addr(),
        &code_request(
            "RUN",
            "python",
            "while True: pass\n",
            &["Time-Limit-Ms: 700"],
        ),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("time-limit"));
    assert!(answer.result("message").is_some_and(|m| m.contains("ms")));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn memory_limit_is_reported() {
    let server = server();
    let answer = exchange(
        server.local_addr(),
        &code_request(
            "RUN",
            "python",
            "x = bytearray(400 * 1024 * 1024)\nprint(len(x))\n",
            &["Memory-Limit-Mib: 100"],
        ),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("memory-limit"));
    assert!(
        answer
            .result("message")
            .is_some_and(|m| m.contains("100 MiB"))
    );
}

#[test]
fn output_limit_truncates() {
    let server = server_with(|config| config.run_defaults.output_bytes = 10_000);
    let answer = exchange(
        server.local_addr(),
        &code_request("RUN", "python", "while True: print('y' * 100)\n", &[]),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("output-limit"));
    assert_eq!(answer.result("truncated").as_deref(), Some("stdout"));
    assert_eq!(answer.text("stdout").len(), 10_000);
}

#[test]
fn file_size_limit_is_an_output_limit() {
    let server = server_with(|config| config.run_defaults.file_size = 1024 * 1024);
    let answer = exchange(
        server.local_addr(),
        &code_request(
            "RUN",
            "python",
            "with open('big', 'wb') as f:\n    f.write(b'x' * 3 * 1024 * 1024)\n",
            &[],
        ),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("output-limit"));
    assert!(
        answer
            .result("message")
            .is_some_and(|m| m.contains("file-size limit of 1048576 bytes"))
    );
}

#[test]
fn signals_are_reported_by_name() {
    let server = server();
    let answer = exchange(
        server.local_addr(),
        &code_request(
            "RUN",
            "python",
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
            &[],
        ),
    );
    assert_eq!(answer.result("verdict").as_deref(), Some("signal"));
    assert_eq!(answer.result("signal").as_deref(), Some("SIGSEGV"));
}

/// Each bad input of the foundation issue, its expected code, and words its message must hold.
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    let mut long_header = b"KILN/1 PING\nX-Filler: ".to_vec();
    long_header.extend(std::iter::repeat_n(b'a', 17 * 1024));
    long_header.extend_from_slice(b"\n\n");
    let mut many_lines = b"KILN/1 PING\n".to_vec();
    for i in 0..70 {
        many_lines.extend_from_slice(format!("X-{i}: 1\n").as_bytes());
    }
    many_lines.push(b'\n');
    vec![
        (
            "garbage",
            vec![0x16, 0x03, 0x01, 0xff, 0x00, b'\n'],
            "bad-request",
            "expected a request line",
        ),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "bad-request",
            "not HTTP",
        ),
        (
            "wrong version",
            b"KILN/9 PING\n\n".to_vec(),
            "bad-request",
            "KILN/9",
        ),
        (
            "missing version",
            b"PING\n\n".to_vec(),
            "bad-request",
            "expected a request line",
        ),
        (
            "unknown intent",
            b"KILN/1 FETCH\n\n".to_vec(),
            "bad-request",
            "unknown intent `FETCH`",
        ),
        (
            "missing language",
            b"KILN/1 RUN\nSource-Length: 1\n\nx".to_vec(),
            "bad-request",
            "needs a language",
        ),
        (
            "negative length",
            b"KILN/1 RUN python\nSource-Length: -1\n\n".to_vec(),
            "bad-request",
            "got `-1`",
        ),
        (
            "non-numeric length",
            b"KILN/1 RUN python\nSource-Length: 12abc\n\n".to_vec(),
            "bad-request",
            "got `12abc`",
        ),
        (
            "huge length",
            b"KILN/1 RUN python\nSource-Length: 2000000\n\n".to_vec(),
            "too-large",
            "Source-Length is 2000000 but this server takes at most 1048576 bytes",
        ),
        (
            "absurd length",
            b"KILN/1 RUN python\nSource-Length: 123456789012345678901234567890\n\n".to_vec(),
            "too-large",
            "at most 1048576",
        ),
        (
            "missing length",
            b"KILN/1 RUN python\n\nprint(1)".to_vec(),
            "bad-request",
            "needs a Source-Length",
        ),
        (
            "huge stdin",
            b"KILN/1 RUN python\nSource-Length: 1\nStdin-Length: 99999999\n\n".to_vec(),
            "too-large",
            "Stdin-Length is 99999999 but this server takes at most 8388608 bytes",
        ),
        ("header over 16 KiB", long_header, "too-large", "16384"),
        (
            "over 64 lines",
            many_lines,
            "too-large",
            "more than 64 lines",
        ),
        (
            "invalid utf-8 header",
            b"KILN/1 PING\nX-Name: caf\xe9\n\n".to_vec(),
            "bad-request",
            "not valid UTF-8",
        ),
        (
            "NUL in source",
            b"KILN/1 RUN python\nSource-Length: 5\n\npr\0nt".to_vec(),
            "bad-request",
            "NUL byte at offset 2",
        ),
        (
            "longer body",
            b"KILN/1 CHECK python\nSource-Length: 2\n\nx\nEXTRA".to_vec(),
            "bad-request",
            "longer than announced",
        ),
        (
            "unsupported language",
            b"KILN/1 RUN cobol\nSource-Length: 1\n\nx".to_vec(),
            "unsupported-language",
            "it offers: ",
        ),
    ]
}

#[test]
fn every_bad_input_gets_its_error_and_the_server_keeps_serving() {
    let server = server();
    for (what, bytes, code, needle) in bad_inputs() {
        let answer = exchange(server.local_addr(), &bytes);
        assert_eq!(answer.error_code(), Some(code), "{what}: {answer:?}");
        assert!(
            answer.error_message().contains(needle),
            "{what}: message {:?} should contain {needle:?}",
            answer.error_message()
        );
        let ping = exchange(server.local_addr(), b"KILN/1 PING\n\n");
        assert_eq!(ping.result("verdict").as_deref(), Some("pong"), "{what}");
    }
}

#[test]
fn a_refusal_reaches_a_client_that_is_still_sending() {
    // The server answers too-large at the header; the client then sends its megabytes anyway. It
    // must read the error, not a connection reset.
    let server = server();
    let mut stream = connect(server.local_addr());
    stream
        .write_all(b"KILN/1 RUN python\nSource-Length: 5000000\n\n")
        .expect("sends head");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let answer = read_answer(&mut stream);
    assert_eq!(answer.error_code(), Some("too-large"));
}

#[test]
fn a_body_shorter_than_announced_is_refused() {
    let server = server();
    let answer = exchange(
        server.local_addr(),
        b"KILN/1 RUN python\nSource-Length: 100\n\nprint(1)\n",
    );
    assert_eq!(answer.error_code(), Some("bad-request"));
    assert!(answer.error_message().contains("100 bytes"));
}

#[test]
fn a_header_that_never_ends_times_out() {
    let server = server_with(|config| config.header_timeout = Duration::from_millis(300));
    let mut stream = connect(server.local_addr());
    stream.write_all(b"KILN/1 PING\nX-Slow: ").expect("sends");
    let started = Instant::now();
    let answer = read_answer(&mut stream);
    assert_eq!(answer.error_code(), Some("timeout"));
    assert!(answer.error_message().contains("300 ms"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_body_that_never_arrives_times_out() {
    let server = server_with(|config| config.body_timeout = Duration::from_millis(300));
    let mut stream = connect(server.local_addr());
    stream
        .write_all(b"KILN/1 RUN python\nSource-Length: 10\n\nprint")
        .expect("sends");
    let answer = read_answer(&mut stream);
    assert_eq!(answer.error_code(), Some("timeout"));
    assert!(answer.error_message().contains("body timeout"));
}

#[test]
fn tokens_are_required_and_checked() {
    let server = server_with_token("s3cret");
    let addr = server.local_addr();
    let started = Instant::now();
    let missing = exchange(addr, b"KILN/1 PING\n\n");
    assert_eq!(missing.error_code(), Some("unauthorized"));
    assert!(missing.error_message().contains("requires a token"));
    // Wrong tokens are answered after a fixed delay, to slow down guessing.
    assert!(started.elapsed() >= Duration::from_millis(200));
    let wrong = exchange(addr, b"KILN/1 PING\nToken: s3cres\n\n");
    assert_eq!(wrong.error_code(), Some("unauthorized"));
    assert!(wrong.error_message().contains("wrong token"));
    let right = exchange(addr, b"KILN/1 PING\nToken: s3cret\n\n");
    assert_eq!(right.result("verdict").as_deref(), Some("pong"));
    let run = exchange(
        addr,
        &code_request("RUN", "python", "print(2)\n", &["Token: s3cret"]),
    );
    assert_eq!(run.text("stdout"), "2\n");
}

#[test]
fn closing_the_connection_kills_the_job_at_once() {
    let server = server();
    let marker = tempfile::tempdir().expect("tempdir");
    let flag = marker.path().join("still-running");
    let source = format!(
        "import time\nprint('started', flush=True)\ntime.sleep(1.5)\nopen({:?}, 'w').write('x')\n",
        flag.display().to_string()
    );
    let mut stream = connect(server.local_addr());
    stream
        .write_all(&code_request("RUN", "python", &source, &[]))
        .expect("sends");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("started") {
        let n = read_some(&mut stream, &mut buffer);
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(stream);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!flag.exists(), "the program went on after the client left");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server
        .stats()
        .cancelled
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "job not counted as cancelled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_half_closed_client_still_gets_its_answer() {
    // `nc -N` closes its sending side after the request and keeps reading: that is not a cancel.
    let server = server();
    let source = "import time\ntime.sleep(1.2)\nprint('done')\n";
    let answer = exchange(
        server.local_addr(),
        &code_request("RUN", "python", source, &[]),
    );
    assert_eq!(answer.text("stdout"), "done\n");
    assert_eq!(answer.result("verdict").as_deref(), Some("ok"));
}

#[test]
fn a_full_queue_answers_busy() {
    let server = server_with(|config| {
        config.workers = 1;
        config.queue_capacity = 1;
    });
    let addr = server.local_addr();
    let slow = code_request("RUN", "python", "import time\ntime.sleep(1.5)\n", &[]);
    let mut running = connect(addr);
    running.write_all(&slow).expect("sends");
    std::thread::sleep(Duration::from_millis(300));
    let mut queued = connect(addr);
    queued.write_all(&slow).expect("sends");
    std::thread::sleep(Duration::from_millis(200));
    let busy = exchange(addr, b"KILN/1 PING\n\n");
    assert_eq!(busy.error_code(), Some("busy"));
    assert!(busy.error_message().contains("1 workers"));
    assert_eq!(
        read_answer(&mut running).result("verdict").as_deref(),
        Some("ok")
    );
    assert_eq!(
        read_answer(&mut queued).result("verdict").as_deref(),
        Some("ok")
    );
}

#[test]
fn shutdown_refuses_new_work_and_lets_running_jobs_finish() {
    let server = server();
    let addr = server.local_addr();
    let mut running = connect(addr);
    running
        .write_all(&code_request(
            "RUN",
            "python",
            "import time\ntime.sleep(0.8)\nprint('finished')\n",
            &[],
        ))
        .expect("sends");
    std::thread::sleep(Duration::from_millis(300));
    let stopper = std::thread::spawn(move || server.shutdown(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(100));
    let refused = exchange(addr, b"KILN/1 PING\n\n");
    assert_eq!(refused.error_code(), Some("unavailable"));
    let answer = read_answer(&mut running);
    assert_eq!(answer.text("stdout"), "finished\n");
    stopper.join().expect("stops");
}

#[test]
fn shutdown_cancels_jobs_that_outlast_the_grace_period() {
    let server = server();
    let addr = server.local_addr();
    let mut running = connect(addr);
    running
        .write_all(&code_request(
            "RUN",
            "python",
            "import time\ntime.sleep(30)\n",
            &[],
        ))
        .expect("sends");
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    server.shutdown(Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));
    let answer = read_answer(&mut running);
    assert_eq!(answer.result("verdict").as_deref(), Some("cancelled"));
}
