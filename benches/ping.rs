//! PING throughput and latency of the pool and the fork model against a baseline server written for
//! the purpose: a bare accept / read / reply / close loop with no protocol parsing, no deadlines and
//! no bookkeeping, i.e. about the fastest a KILN/1 PING can be answered over TCP here.
//!
//! `cargo bench --no-default-features --bench ping` measures 64 and 1000 concurrent clients and
//! writes `docs/stress/baseline.md`. With `KILN_BENCH_FULL=1` it also runs the full 100 → 100,000
//! client table for both models and writes `docs/stress/report.md` and `docs/stress/chart.{svg,png}`.
//! Every figure in one file comes from one run, so the ratios compare like with like.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln::protocol::{Channel, Fields, Frame, Status, Verdict};
use kiln::server::ServerModel;
use kiln::stress::report::{self, StepRow};
use kiln::stress::{FULL_STEPS, StepPlan, Target, chart, driver, run_step};

/// Clients per round in the ratio runs.
const RATIO_CLIENTS: usize = 10_000;
/// Rounds per target and concurrency in the ratio runs.
const ROUNDS: usize = 5;
/// Clients at once in the full table: under the pool's queue and the fork model's child cap, so a
/// correct server shows zero errors.
const FULL_CONCURRENCY: usize = 256;

/// The baseline: one blocking accept loop per core; each connection is read up to the blank line
/// that ends a PING, answered with the same bytes kiln sends, and closed.
struct Baseline {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Baseline {
    fn start() -> Baseline {
        let listener = bind_with_backlog();
        let addr = listener.local_addr().expect("baseline address");
        let mut answer = Status::Ok {
            job_id: "0000-1".into(),
        }
        .encode();
        let mut fields = Fields::new();
        fields.push("verdict", Verdict::Pong);
        answer.extend(Frame::new(Channel::Result, fields.encode()).encode());
        let answer = Arc::new(answer);
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = (0..cores)
            .map(|_| {
                let listener = listener.try_clone().expect("clone listener");
                let answer = Arc::clone(&answer);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Ok(stream) = stream {
                            serve_one(stream, &answer);
                        }
                    }
                })
            })
            .collect();
        Baseline {
            addr,
            stop,
            threads,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in &self.threads {
            // Wakes one blocked accept each.
            let _ = TcpStream::connect(self.addr);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn bind_with_backlog() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("reuse");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    // The same backlog as kiln's server, so the comparison is about the server, not the kernel.
    socket.listen(kiln::server::MIN_BACKLOG).expect("listen");
    socket.into()
}

fn serve_one(mut stream: TcpStream, answer: &[u8]) {
    let _ = stream.set_nodelay(true);
    let mut request = Vec::with_capacity(64);
    let mut buffer = [0u8; 512];
    while !request.ends_with(b"\n\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let _ = stream.write_all(answer);
    let _ = stream.shutdown(Shutdown::Write);
}

fn kiln_target(model: ServerModel) -> Target {
    let extra = match model {
        ServerModel::Pool => vec!["--queue".to_owned(), "4096".to_owned()],
        ServerModel::Fork => vec!["--max-children".to_owned(), "2048".to_owned()],
    };
    Target::Start {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_kiln")),
        model,
        extra,
    }
}

/// The round with the highest throughput: the machine is shared, and the best of a few rounds is the
/// one least disturbed by whatever else ran.
fn best(rows: &[StepRow]) -> &StepRow {
    rows.iter()
        .max_by(|a, b| a.load.throughput().total_cmp(&b.load.throughput()))
        .expect("at least one round")
}

fn ratio_runs(out: &mut String) -> Vec<StepRow> {
    let mut all = Vec::new();
    for concurrency in [64, 1000] {
        let plan = StepPlan::ping(concurrency);
        let (mut bases, mut pools, mut forks) = (Vec::new(), Vec::new(), Vec::new());
        // Interleaved, so a burst of outside load hits every target alike.
        for _ in 0..ROUNDS {
            let baseline = Baseline::start();
            let baseline_target = Target::Running {
                addr: baseline.addr,
                name: "baseline".into(),
            };
            bases.push(run_step(&baseline_target, RATIO_CLIENTS, &plan).expect("baseline step"));
            baseline.stop();
            pools.push(
                run_step(&kiln_target(ServerModel::Pool), RATIO_CLIENTS, &plan).expect("pool"),
            );
            forks.push(
                run_step(&kiln_target(ServerModel::Fork), RATIO_CLIENTS, &plan).expect("fork"),
            );
        }
        let base = best(&bases);
        for rows in [&pools, &forks] {
            let row = best(rows);
            let throughput = row.load.throughput() / base.load.throughput().max(1e-9);
            let p99 = row.load.percentile(99.0).as_secs_f64()
                / base.load.percentile(99.0).as_secs_f64().max(1e-9);
            let errors: u64 = bases
                .iter()
                .chain(rows.iter())
                .map(|r| r.load.errors.total())
                .sum();
            let line = format!(
                "| {} | {concurrency} | {:.0} | {:.0} | {throughput:.2} | {:.2} | {:.2} | {p99:.2} | {errors} |\n",
                row.model,
                row.load.throughput(),
                base.load.throughput(),
                row.load.percentile(99.0).as_secs_f64() * 1000.0,
                base.load.percentile(99.0).as_secs_f64() * 1000.0,
            );
            print!("{line}");
            out.push_str(&line);
        }
        all.extend(bases);
        all.extend(pools);
        all.extend(forks);
    }
    all
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no such flag: skip then,
    // a benchmark is not a test.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("ping benchmark: run it with `cargo bench --bench ping`");
        return;
    }
    let open_files = driver::raise_open_files_limit();
    assert!(
        open_files >= 4096,
        "ulimit -n is {open_files}: too low for 1000 clients"
    );
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/stress");
    std::fs::create_dir_all(&docs).expect("docs/stress");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);

    let mut ratios = String::from(
        "| model | concurrency | req/s | baseline req/s | throughput ratio | p99 (ms) | baseline p99 (ms) | p99 ratio | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    println!("{}", ratios.trim_end());
    let rows = ratio_runs(&mut ratios);
    let baseline_md = format!(
        "# PING against a baseline server\n\n\
         `cargo bench --no-default-features --bench ping`, one run, {cores} cores shared by the \
         servers and the load generator (other builds ran on it too). {ROUNDS} interleaved rounds \
         of {RATIO_CLIENTS} clients per target; each figure is from the target's best round \
         (highest throughput), errors are summed over all rounds; 2 client threads, clients \
         over 16 loopback addresses. The baseline is a bare accept / read / reply / \
         close loop, one thread per core, in `benches/ping.rs`. Goal for the pool: throughput \
         ratio ≥ 0.8 and p99 ratio ≤ 1.5.\n\n{ratios}\n## Every step\n\n{}",
        report::table(&rows)
    );
    std::fs::write(docs.join("baseline.md"), baseline_md).expect("write baseline.md");
    println!("written: {}", docs.join("baseline.md").display());

    if std::env::var_os("KILN_BENCH_FULL").is_none() {
        println!("(set KILN_BENCH_FULL=1 for the 100 → 100,000 table and the chart)");
        return;
    }
    let plan = StepPlan {
        progress: true,
        ..StepPlan::ping(FULL_CONCURRENCY)
    };
    let mut full = Vec::new();
    println!("{}", report::header().trim_end());
    for &clients in FULL_STEPS {
        for model in [ServerModel::Pool, ServerModel::Fork] {
            let row = run_step(&kiln_target(model), clients, &plan).expect("step");
            print!("{}", report::row(&row));
            full.push(row);
        }
    }
    let setup = format!(
        "`KILN_BENCH_FULL=1 cargo bench --no-default-features --bench ping`: PING, \
         {FULL_CONCURRENCY} clients at once, a fresh server process per row, {cores} cores shared \
         by the server and the load generator (2 client threads, 16 loopback source addresses). \
         Pool: default workers (one per core), queue 4096. Fork: --max-children 2048."
    );
    std::fs::write(
        docs.join("report.md"),
        report::markdown(
            "Kiln stress: pool and fork, 100 → 100,000 clients",
            &setup,
            &full,
        ),
    )
    .expect("write report.md");
    let (svg, png) = chart::write(&docs.join("chart.svg"), &full).expect("chart");
    println!(
        "written: {}, {}, {}",
        docs.join("report.md").display(),
        svg.display(),
        png.display()
    );
}
