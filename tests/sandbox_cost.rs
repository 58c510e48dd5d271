//! What the sandbox costs per run: N runs of `/bin/true` through the runner without a sandbox and
//! with bubblewrap, alternated in one run so both see the same machine load, with the medians and
//! their difference printed. Ignored by default (it measures, it does not check behaviour):
//!
//! `cargo test --no-default-features --release --test sandbox_cost -- --ignored --nocapture`

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln::exec::jobdir::JobDir;
use kiln::exec::{CommandSpec, ExitKind, JobEvent, JobSink, Limits, NoSandbox, Sandbox, bwrap};

const RUNS: usize = 100;
/// The goal: the sandbox adds less than this to a run.
const GOAL: Duration = Duration::from_millis(5);

struct Discard;

impl JobSink for Discard {
    fn send(&mut self, _event: JobEvent<'_>) -> io::Result<()> {
        Ok(())
    }
}

fn time_one(sandbox: &dyn Sandbox, root: &std::path::Path) -> Duration {
    let dir = JobDir::create(root).expect("job dir");
    let _user = sandbox.prepare(dir.path()).expect("prepare");
    let spec = CommandSpec::new("/bin/true", Vec::<OsString>::new());
    let started = Instant::now();
    let outcome = kiln::exec::process::run(
        sandbox,
        &spec,
        dir.path(),
        None,
        &Limits::default(),
        &mut Discard,
        true,
    )
    .expect("runs");
    let elapsed = started.elapsed();
    assert_eq!(outcome.exit, ExitKind::Code(0), "{}", sandbox.name());
    elapsed
}

fn min(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn sandbox_cost_per_run() {
    let root = kiln::exec::jobdir::create_root().expect("jobs root");
    let read_only: Vec<PathBuf> = kiln::exec::detect_toolchains()
        .iter()
        .flat_map(|l| l.read_only_paths())
        .collect();
    let sandbox = match bwrap::detect(&read_only, &root) {
        Ok(sandbox) => sandbox,
        Err(why) => {
            eprintln!("sandbox_cost: bwrap does not work here: {why}");
            return;
        }
    };
    if std::env::var_os("KILN_SHOW_COMMAND").is_some() {
        let dir = JobDir::create(&root).expect("job dir");
        let spec = CommandSpec::new("/bin/true", Vec::<OsString>::new());
        eprintln!("{:?}", sandbox.command(&spec, dir.path()).command);
    }
    // Warm both paths (page cache, first-exec costs) before measuring.
    for _ in 0..5 {
        time_one(&NoSandbox, &root);
        time_one(&sandbox, &root);
    }
    let mut plain = Vec::with_capacity(RUNS);
    let mut wrapped = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        plain.push(time_one(&NoSandbox, &root));
        wrapped.push(time_one(&sandbox, &root));
    }
    // The same two commands spawned bare (no runner: no rlimits, pipes or process count), to
    // tell the sandbox's own cost from the runner's.
    let bare = |sandbox: &dyn Sandbox| {
        let dir = JobDir::create(&root).expect("job dir");
        let _user = sandbox.prepare(dir.path()).expect("prepare");
        let spec = CommandSpec::new("/bin/true", Vec::<OsString>::new());
        let kiln::exec::sandbox::SandboxCommand {
            mut command,
            inherit,
        } = sandbox.command(&spec, dir.path());
        // What the runner does for the sandbox's own descriptors (the seccomp filter).
        kiln::exec::process::keep_across_exec(&mut command, inherit);
        let started = Instant::now();
        let status = command.status().expect("spawns");
        assert!(status.success());
        started.elapsed()
    };
    let mut bare_plain = Vec::with_capacity(RUNS);
    let mut bare_wrapped = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        bare_plain.push(bare(&NoSandbox));
        bare_wrapped.push(bare(&sandbox));
    }
    println!(
        "bare spawn + wait: none median {:.2} ms (min {:.2}), bwrap median {:.2} ms (min {:.2})",
        median(bare_plain.clone()).as_secs_f64() * 1e3,
        min(&bare_plain).as_secs_f64() * 1e3,
        median(bare_wrapped.clone()).as_secs_f64() * 1e3,
        min(&bare_wrapped).as_secs_f64() * 1e3,
    );
    let mean = |times: &[Duration]| times.iter().sum::<Duration>() / times.len() as u32;
    let (plain_mean, wrapped_mean) = (mean(&plain), mean(&wrapped));
    let (plain_min, wrapped_min) = (min(&plain), min(&wrapped));
    let (plain_median, wrapped_median) = (median(plain), median(wrapped));
    let cost = wrapped_median.saturating_sub(plain_median);
    println!(
        "sandbox cost over {RUNS} runs of /bin/true: none median {:.2} ms (mean {:.2}, min {:.2}), bwrap median {:.2} ms (mean {:.2}, min {:.2}); bwrap adds {:.2} ms per run at the median, {:.2} ms at the minimum (goal < {} ms)",
        plain_median.as_secs_f64() * 1e3,
        plain_mean.as_secs_f64() * 1e3,
        plain_min.as_secs_f64() * 1e3,
        wrapped_median.as_secs_f64() * 1e3,
        wrapped_mean.as_secs_f64() * 1e3,
        wrapped_min.as_secs_f64() * 1e3,
        cost.as_secs_f64() * 1e3,
        wrapped_min.saturating_sub(plain_min).as_secs_f64() * 1e3,
        GOAL.as_millis()
    );
}
