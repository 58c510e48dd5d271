//! Holding under load, for both models, each against its own `kiln --server` process:
//! slow clients (1000 stalled partial headers must not keep a legit client waiting over 1 s, and
//! are closed with `timeout`), overload (every rejected client reads `KILN/1 ERROR busy`, none a
//! reset), and file-descriptor exhaustion in accept (no spinning, and recovery). Every loop here is
//! bounded in count and time.

mod server_process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use kiln::client::{Event, JobSpec};
use kiln::protocol::{Intent, RequestHead, Verdict, encode_request_head};
use kiln::stress::driver::{self, Load};
use server_process::{ServerProcess, raise_open_files};

const STALLED: usize = 1000;

fn slowloris(model: &str) {
    assert!(
        raise_open_files() >= 2 * STALLED as u64 + 100,
        "ulimit -n too low"
    );
    let test_started = Instant::now();
    let server = ServerProcess::start(&["--model", model, "--header-timeout-ms", "4000"]);
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream.write_all(b"KILN/1 PI").expect("partial header");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let client = server.client();
    for _ in 0..5 {
        let started = Instant::now();
        client.ping().expect("legit ping");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "{model}: a legit PING waited {waited:?} behind {STALLED} stalled clients"
        );
    }
    let started = Instant::now();
    let job = JobSpec::code(Intent::Run, "python", "print('through')\n");
    let (_, result) = client.run_to_end(&job).expect("legit run");
    assert_eq!(result.verdict, Verdict::Ok);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{model}: a legit RUN took {:?}",
        started.elapsed()
    );
    // At the header timeout each stalled client reads `timeout`, rather than a reset.
    for mut stream in stalled.iter().step_by(50) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("answer, not a reset");
        assert!(
            answer.starts_with("KILN/1 ERROR timeout"),
            "{model}: {answer}"
        );
        assert!(answer.contains("4000 ms"), "{model}: {answer}");
    }
    let stats = server.wait_for_stats(Duration::from_secs(5), |stats| {
        stats.get_parsed::<u64>("timeouts") >= Some(STALLED as u64)
    });
    assert_eq!(
        stats.get_parsed::<u64>("timeouts"),
        Some(STALLED as u64),
        "{stats:?}"
    );
    drop(stalled);
    assert!(test_started.elapsed() < Duration::from_secs(20));
}

#[test]
fn slowloris_does_not_delay_a_legit_client_pool() {
    slowloris("pool");
}

#[test]
fn slowloris_does_not_delay_a_legit_client_fork() {
    slowloris("fork");
}

/// Starts a job that runs `seconds` and waits until it is running (it prints first).
fn start_slow_job(
    server: &ServerProcess,
    seconds: u32,
) -> std::thread::JoinHandle<Option<Verdict>> {
    let client = server.client();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let job = JobSpec::code(
            Intent::Run,
            "python",
            format!("import time\nprint('running', flush=True)\ntime.sleep({seconds})\n"),
        );
        let mut verdict = None;
        for event in client.start(&job).expect("slow job accepted") {
            match event.expect("event") {
                Event::Stdout(_) => {
                    let _ = started_tx.send(());
                }
                Event::Finished(result) => verdict = Some(result.verdict),
                _ => {}
            }
        }
        verdict
    });
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("slow job running");
    handle
}

/// A flood of RUN requests with a body the server must read before refusing them.
fn flood(server: &ServerProcess, clients: usize) -> driver::LoadResult {
    let source = format!("# {}\nprint('never runs')\n", "x".repeat(2000));
    let mut head = RequestHead::new(Intent::Run);
    head.language = Some("python".into());
    head.source_length = source.len() as u64;
    let mut request = encode_request_head(&head);
    request.extend_from_slice(source.as_bytes());
    let load = Load {
        addr: server.addr,
        request: Arc::new(request),
        expect: Verdict::Ok,
        clients,
        concurrency: 200,
        threads: 2,
        sources: driver::loopback_sources(8),
        timeout: Duration::from_secs(10),
    };
    driver::run(&load, &AtomicU64::new(0)).expect("load runs")
}

#[test]
fn overload_answers_busy_and_never_resets_pool() {
    raise_open_files();
    let server = ServerProcess::start(&["--workers", "1", "--queue", "1"]);
    let running = start_slow_job(&server, 6);
    let queued = {
        let client = server.client();
        std::thread::spawn(move || {
            client
                .run_to_end(&JobSpec::code(Intent::Run, "python", "print('queued')\n"))
                .map(|(_, result)| result.verdict)
                .ok()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let result = flood(&server, 2000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the flood outlived the slow job"
    );
    assert_eq!(result.errors.busy, 2000, "{result:?}");
    assert_eq!(result.errors.reset, 0, "{result:?}");
    assert_eq!(result.errors.total(), 2000, "{result:?}");
    assert_eq!(running.join().expect("slow job"), Some(Verdict::Ok));
    assert_eq!(queued.join().expect("queued job"), Some(Verdict::Ok));
    assert!(server.counter("busy") >= 2000);
}

#[test]
fn overload_answers_busy_and_never_resets_fork() {
    raise_open_files();
    let server = ServerProcess::start(&["--model", "fork", "--max-children", "1"]);
    let running = start_slow_job(&server, 5);
    let started = Instant::now();
    let result = flood(&server, 2000);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the flood outlived the slow job"
    );
    assert_eq!(result.errors.busy, 2000, "{result:?}");
    assert_eq!(result.errors.reset, 0, "{result:?}");
    assert_eq!(result.errors.total(), 2000, "{result:?}");
    assert_eq!(running.join().expect("slow job"), Some(Verdict::Ok));
    let stats = server.wait_for_stats(Duration::from_secs(5), |stats| {
        stats.get_parsed::<u64>("children") == Some(1)
    });
    assert!(stats.get_parsed::<u64>("busy") >= Some(2000), "{stats:?}");
}

fn emfile(model: &str) {
    raise_open_files();
    // Room for stdio, the listener, epoll and a few connections: a flood runs it out at once.
    let mut server = ServerProcess::start_with_file_limit(&["--model", model], Some(48));
    let flood: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect (backlog)");
            stream.write_all(b"KILN/1 PI").expect("partial header");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let spent = server.cpu_time() - cpu_before;
    assert!(
        spent < Duration::from_millis(300),
        "{model}: out of file descriptors the server used {spent:?} of CPU in 1 s: it spins"
    );
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut recovered = false;
    while Instant::now() < deadline {
        if server.client().ping().is_ok() {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        recovered,
        "{model}: no PING answered within 10 s of the flood ending"
    );
    let stats = server.stats();
    assert!(
        stats.get_parsed::<u64>("accept-errors") >= Some(1),
        "{model}: {stats:?}"
    );
    assert!(
        server.child.try_wait().expect("status").is_none(),
        "server died"
    );
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers_pool() {
    emfile("pool");
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers_fork() {
    emfile("fork");
}
