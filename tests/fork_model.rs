//! The fork model (`kiln --server 127.0.0.1:0 --model fork`) against the protocol: PING, INFO,
//! STATS, CHECK/RUN/BUILD of Python, streaming, bad requests, `busy` beyond `--max-children`,
//! cancelling on disconnect, no zombies, and a clean stop on SIGTERM. Each test runs its own
//! server process, as the fork server must be a single-threaded process of its own. The tests that
//! do not depend on the model also run against the pool (`*_pool`), so both pass the same set.

mod server_process;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use kiln::client::{Event, JobSpec};
use kiln::protocol::{ErrorCode, Intent, Verdict};
use server_process::ServerProcess;

fn fork_server(extra: &[&str]) -> ServerProcess {
    model_server("fork", extra)
}

fn model_server(model: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--model", model];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// Sends raw bytes and reads the whole answer.
fn raw_exchange(server: &ServerProcess, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn ping_info_and_stats_say_fork() {
    let server = fork_server(&["--max-children", "7"]);
    let client = server.client();
    assert!(client.ping().expect("ping") < Duration::from_secs(5));
    let info = client.info().expect("info");
    assert_eq!(info.get("model"), Some("fork"));
    assert_eq!(info.get("max-children"), Some("7"));
    assert_eq!(info.get("protocol"), Some("1"));
    // The PING and INFO children are counted when reaped, a moment after they answered.
    let stats = server.wait_for_stats(Duration::from_secs(2), |stats| {
        stats.get_parsed::<u64>("served") >= Some(2)
    });
    assert_eq!(stats.get("model"), Some("fork"));
    assert_eq!(stats.get("max-children"), Some("7"));
    // The PING and INFO children were reaped and counted as served by the parent.
    let served: u64 = stats.get_parsed("served").expect("served");
    assert!(served >= 2, "served {served}");
    // The child answering STATS is alive while it answers; none other is.
    assert_eq!(stats.get_parsed::<u64>("children"), Some(1));
    assert!(stats.get_parsed::<u64>("peak-rss-kib").expect("rss") > 0);
    // The parent has one thread: the loop.
    assert_eq!(stats.get_parsed::<u64>("threads"), Some(1));
}

#[test]
fn check_run_and_build_python() {
    check_run_and_build_python_on("fork");
}

#[test]
fn check_run_and_build_python_pool() {
    check_run_and_build_python_on("pool");
}

fn check_run_and_build_python_on(model: &str) {
    let server = model_server(model, &[]);
    let client = server.client();
    let mut run = JobSpec::code(
        Intent::Run,
        "python",
        "import sys\nprint('hello', sys.stdin.read().strip())\n",
    );
    run.stdin = b"fork\n".to_vec();
    let (events, result) = client.run_to_end(&run).expect("run");
    assert_eq!(result.verdict, Verdict::Ok);
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|event| match event {
            Event::Stdout(bytes) => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout), "hello fork\n");

    let check = JobSpec::code(Intent::Check, "python", "def broken(:\n    pass\n");
    let (events, result) = client.run_to_end(&check).expect("check");
    assert_eq!(result.verdict, Verdict::CompileError);
    let problems = events.iter().find_map(|event| match event {
        Event::Problems(problems) => Some(problems.clone()),
        _ => None,
    });
    assert_eq!(problems.expect("problems frame")[0].line, 1);

    let build = JobSpec::code(Intent::Build, "python", "print('built')\n");
    let (events, result) = client.run_to_end(&build).expect("build");
    assert_eq!(result.verdict, Verdict::Ok);
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Event::Artifact { data, .. } if !data.is_empty())),
        "{events:?}"
    );
    let failing = JobSpec::code(Intent::Run, "python", "raise SystemExit(3)\n");
    let (_, result) = client.run_to_end(&failing).expect("run");
    assert_eq!(result.verdict, Verdict::RuntimeError);
    assert_eq!(result.exit_code(), Some(3));
}

#[test]
fn output_streams_while_the_program_runs() {
    output_streams_while_the_program_runs_on("fork");
}

#[test]
fn output_streams_while_the_program_runs_pool() {
    output_streams_while_the_program_runs_on("pool");
}

fn output_streams_while_the_program_runs_on(model: &str) {
    let server = model_server(model, &[]);
    let job = JobSpec::code(
        Intent::Run,
        "python",
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)\n",
    );
    let started = Instant::now();
    let mut first_at = None;
    let mut finished_at = None;
    for event in server.client().start(&job).expect("start") {
        match event.expect("event") {
            Event::Stdout(bytes) if first_at.is_none() && bytes.starts_with(b"first") => {
                first_at = Some(started.elapsed());
            }
            Event::Finished(result) => {
                assert_eq!(result.verdict, Verdict::Ok);
                finished_at = Some(started.elapsed());
            }
            _ => {}
        }
    }
    let (first, finished) = (first_at.expect("first line"), finished_at.expect("result"));
    assert!(
        finished - first >= Duration::from_secs(1),
        "the first line came at {first:?}, the end at {finished:?}: not streamed"
    );
}

#[test]
fn bad_requests_are_answered_by_the_parent() {
    bad_requests_are_answered_by_the_parent_on("fork");
}

#[test]
fn bad_requests_are_answered_by_the_parent_pool() {
    bad_requests_are_answered_by_the_parent_on("pool");
}

fn bad_requests_are_answered_by_the_parent_on(model: &str) {
    let server = model_server(model, &[]);
    let answer = raw_exchange(&server, b"HELLO WORLD\n\n");
    assert!(answer.starts_with("KILN/1 ERROR bad-request"), "{answer}");
    let answer = raw_exchange(&server, b"KILN/1 RUN cobol\nSource-Length: 2\n\nx\n");
    assert!(
        answer.starts_with("KILN/1 ERROR unsupported-language"),
        "{answer}"
    );
    assert!(answer.contains("python"), "{answer}");
    let answer = raw_exchange(
        &server,
        b"KILN/1 RUN python\nSource-Length: 999999999999\n\n",
    );
    assert!(answer.starts_with("KILN/1 ERROR too-large"), "{answer}");
    // Still serving.
    assert!(server.client().ping().is_ok());
    let stats = server.stats();
    assert_eq!(stats.get_parsed::<u64>("bad-requests"), Some(1));
    assert_eq!(stats.get_parsed::<u64>("unsupported-language"), Some(1));
    assert_eq!(stats.get_parsed::<u64>("too-large"), Some(1));
}

#[test]
fn busy_beyond_max_children() {
    let server = fork_server(&["--max-children", "2"]);
    let slow = JobSpec::code(Intent::Run, "python", "import time\ntime.sleep(3)\n");
    let running: Vec<_> = (0..2)
        .map(|_| server.client().start(&slow).expect("slow job starts"))
        .collect();
    let error = server
        .client()
        .ping()
        .expect_err("a third request is over --max-children");
    assert_eq!(error.code(), Some(ErrorCode::Busy), "{error}");
    assert!(error.to_string().contains("--max-children 2"), "{error}");
    for response in running {
        let verdicts: Vec<_> = response
            .filter_map(|event| match event.expect("event") {
                Event::Finished(result) => Some(result.verdict),
                _ => None,
            })
            .collect();
        assert_eq!(verdicts, vec![Verdict::Ok]);
    }
    // Once they are reaped (a moment after their results) there is room again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.client().ping().is_err() {
        assert!(
            Instant::now() < deadline,
            "no room 5 s after the jobs ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = server.wait_for_stats(Duration::from_secs(5), |stats| {
        stats.get_parsed::<u64>("busy") >= Some(1)
    });
    assert!(stats.get_parsed::<u64>("busy") >= Some(1), "{stats:?}");
}

#[test]
fn a_client_that_goes_away_cancels_its_job() {
    a_client_that_goes_away_cancels_its_job_on("fork");
}

#[test]
fn a_client_that_goes_away_cancels_its_job_pool() {
    a_client_that_goes_away_cancels_its_job_on("pool");
}

fn a_client_that_goes_away_cancels_its_job_on(model: &str) {
    let server = model_server(model, &[]);
    let job = JobSpec::code(
        Intent::Run,
        "python",
        "import time\nprint('started', flush=True)\ntime.sleep(30)\n",
    );
    let mut response = server.client().start(&job).expect("start");
    let first = response.next().expect("an event").expect("event");
    assert!(matches!(first, Event::Stdout(_)), "{first:?}");
    let started = Instant::now();
    drop(response);
    let stats = server.wait_for_stats(Duration::from_secs(10), |stats| {
        // The job answering STATS is the only one left running.
        stats.get_parsed::<u64>("cancelled") == Some(1)
            && stats.get_parsed::<u64>("active") == Some(1)
    });
    assert_eq!(stats.get_parsed::<u64>("cancelled"), Some(1), "{stats:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let zombies = server.lasting_zombies(Duration::from_millis(500));
    assert!(zombies.is_empty(), "zombie children: {zombies:?}");
}

#[test]
fn no_zombies_after_many_requests_and_a_clean_stop() {
    let mut server = fork_server(&[]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = server.client();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    client.ping().expect("ping");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    // A client that connects and vanishes mid-request leaves nothing behind either.
    let mut half = TcpStream::connect(server.addr).expect("connect");
    half.write_all(b"KILN/1 RUN python\nSource-Length: 100\n\nprint(")
        .expect("write");
    half.shutdown(Shutdown::Both).expect("shutdown");
    let stats = server.wait_for_stats(Duration::from_secs(5), |stats| {
        stats.get_parsed::<u64>("served") >= Some(100)
            && stats.get_parsed::<u64>("children") == Some(1)
    });
    assert!(stats.get_parsed::<u64>("served") >= Some(100), "{stats:?}");
    let zombies = server.lasting_zombies(Duration::from_millis(500));
    assert!(zombies.is_empty(), "zombie children: {zombies:?}");
    let status = server
        .terminate(Duration::from_secs(15))
        .expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_wrong_max_children_is_refused_with_the_value() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "--server",
            "127.0.0.1:0",
            "--model",
            "fork",
            "--max-children",
            "0",
        ])
        .output()
        .expect("run kiln");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--max-children must be at least 1, got 0"),
        "{stderr}"
    );
}

#[test]
fn stalled_requests_time_out_without_a_child() {
    let server = fork_server(&["--header-timeout-ms", "300"]);
    let mut stalled = TcpStream::connect(server.addr).expect("connect");
    stalled.write_all(b"KILN/1 PI").expect("write");
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    stalled.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("KILN/1 ERROR timeout"), "{answer}");
    // The parent answered it: no child was ever forked for it.
    let stats = server.stats();
    assert_eq!(stats.get_parsed::<u64>("peak-children"), Some(1));
}

#[test]
fn ping_info_and_stats_say_pool() {
    let server = model_server("pool", &["--workers", "3"]);
    let client = server.client();
    client.ping().expect("ping");
    let info = client.info().expect("info");
    assert_eq!(info.get("model"), Some("pool"));
    assert_eq!(info.get("workers"), Some("3"));
    assert_eq!(info.get("max-children"), None);
    let stats = server.stats();
    assert_eq!(stats.get("model"), Some("pool"));
    assert_eq!(stats.get_parsed::<u64>("served"), Some(2));
    // The acceptor, three workers and the main thread.
    assert_eq!(stats.get_parsed::<u64>("threads"), Some(5));
    assert_eq!(stats.get("peak-children"), None);
}
