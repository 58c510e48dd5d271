//! Figures for the foundation: PING throughput of the pool server at 64 and 1000 concurrent
//! clients, and Python hello-world RUNs per second with 2 workers next to the machine's bare
//! `python3 -c pass` spawn rate, all measured in one run. `cargo bench --bench foundation`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln::server::{self, ServerConfig};

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A RUN request for a Python source.
fn run_python(source: &str) -> Vec<u8> {
    let mut bytes = format!("KILN/1 RUN python\nSource-Length: {}\n\n", source.len()).into_bytes();
    bytes.extend_from_slice(source.as_bytes());
    bytes
}

fn request(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(bytes).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    Some(answer)
}

/// Runs `total` requests from `clients` concurrent threads, the `n`th being `make(n)`; returns
/// (requests/s, p99, errors).
fn drive(
    addr: SocketAddr,
    make: fn(usize) -> Vec<u8>,
    clients: usize,
    total: usize,
) -> (f64, Duration, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let next = Arc::clone(&next);
            let errors = Arc::clone(&errors);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let bytes = make(n);
                    let began = Instant::now();
                    match request(addr, &bytes) {
                        Some(answer) if answer.starts_with(b"KILN/1 OK") => {
                            latencies.push(began.elapsed())
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    (
        total as f64 / elapsed.as_secs_f64(),
        p99,
        errors.load(Ordering::Relaxed),
    )
}

fn main() {
    raise_fd_limit();
    let mut config = ServerConfig::loopback();
    config.workers = 2;
    config.queue_capacity = 4096;
    let server = server::start(config).expect("server starts");
    let addr = server.local_addr();

    for (clients, total) in [(64, 20_000), (1000, 20_000)] {
        let (rate, p99, errors) = drive(addr, |_| b"KILN/1 PING\n\n".to_vec(), clients, total);
        println!(
            "PING, {clients:>4} concurrent clients, {total} requests: {rate:>8.0} req/s, p99 {:.2} ms, {errors} errors",
            p99.as_secs_f64() * 1000.0
        );
    }

    // The same source every time: after the first, the syntax check comes from the compile cache
    // and a RUN starts Python once.
    let (run_rate, p99, errors) = drive(addr, |_| run_python("print('hello world')\n"), 4, 100);
    println!(
        "RUN python hello world, 2 workers, 4 clients, 100 runs, same source: {run_rate:.1} runs/s, p99 {:.0} ms, {errors} errors",
        p99.as_secs_f64() * 1000.0
    );
    // A different source every time (a numbered comment): each RUN checks, then runs.
    let (fresh_rate, p99, errors) = drive(
        addr,
        |n| {
            run_python(&format!(
                "print('hello world')  # {n} {}\n",
                std::process::id()
            ))
        },
        4,
        100,
    );
    println!(
        "RUN python hello world, 2 workers, 4 clients, 100 runs, new source each: {fresh_rate:.1} runs/s, p99 {:.0} ms, {errors} errors",
        p99.as_secs_f64() * 1000.0
    );

    // The server runs the interpreter `python3` resolves to (a pyenv shim, for one, is a shell
    // script that costs more than Python itself); compare against that same interpreter.
    let python = kiln::exec::python::Python::detect()
        .map(|p| p.executable().to_path_buf())
        .unwrap_or_else(|| "python3".into());
    let spawns = 100;
    let started = Instant::now();
    let spawners: Vec<_> = (0..2)
        .map(|_| {
            let python = python.clone();
            std::thread::spawn(move || {
                for _ in 0..spawns / 2 {
                    let _ = Command::new(&python).args(["-c", "pass"]).status();
                }
            })
        })
        .collect();
    for spawner in spawners {
        let _ = spawner.join();
    }
    let spawn_rate = spawns as f64 / started.elapsed().as_secs_f64();
    println!(
        "bare `{} -c pass`, 2 at a time, {spawns} spawns: {spawn_rate:.1} spawns/s",
        python.display()
    );
    println!(
        "ratio RUN/s to bare spawns/s: {:.2} with the same source (one Python per RUN), {:.2} with a new source each time (two: syntax check, then run)",
        run_rate / spawn_rate,
        fresh_rate / spawn_rate
    );
    server.shutdown(Duration::from_secs(1));
}
