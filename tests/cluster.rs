//! Cluster mode with real processes on loopback: 4 `kiln --server --node --peers` nodes on
//! 127.0.0.1-4. The leader and the lock holder are SIGKILLed and SIGSTOPped while clients run
//! `Exclusive: yes` jobs that increment a fenced counter (a stopped node's jobs are stopped with
//! it, so a stalled holder's late write meets a newer fence); then the counter must equal the accepted
//! increments and the merged logs must show no two holders at once. A cluster that lost 2 of 4
//! nodes must have no acting leader and refuse exclusive jobs clearly. Every process is killed
//! when a test ends, even by a failed assertion (`TestCluster`'s drop).

mod cluster_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_support::{FencedCounter, TOKEN, TestCluster, exclusive_increment};
use kiln::client::{Client, ClientError, JobSpec};
use kiln::cluster::sim::check_causal_order;
use kiln::cluster::{check_history, fetch_status};
use kiln::protocol::{ErrorCode, Intent, Verdict};
use kiln::server::{self, ServerConfig};

#[derive(Debug, Default)]
struct ClientCounts {
    attempts: AtomicU64,
    acked: AtomicU64,
    refused_lock: AtomicU64,
    failed: AtomicU64,
}

#[test]
fn leader_and_holder_faults_never_break_the_lock_or_the_counter() {
    let mut cluster = TestCluster::start(4, 100);
    cluster.wait_stable_leader(Duration::from_secs(20));
    let counter = FencedCounter::start();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(ClientCounts::default());
    let clients: Vec<_> = (0..3u32)
        .map(|n| {
            let stop = Arc::clone(&stop);
            let counts = Arc::clone(&counts);
            let addrs = cluster.addrs.clone();
            let port = counter.port;
            std::thread::spawn(move || {
                let mut turn = n as usize;
                while !stop.load(Ordering::SeqCst) {
                    turn += 1;
                    let client = Client::new(addrs[turn % addrs.len()].clone(), Some(TOKEN.into()))
                        .with_connect_timeout(Duration::from_millis(500))
                        .with_read_timeout(Some(Duration::from_secs(10)));
                    counts.attempts.fetch_add(1, Ordering::Relaxed);
                    match exclusive_increment(&client, port, 4000) {
                        Ok((result, stdout)) if result.verdict == Verdict::Ok => {
                            assert_eq!(stdout.trim(), "OK", "an ok job printed {stdout:?}");
                            counts.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((result, _)) if result.verdict == Verdict::LockUnavailable => {
                            counts.refused_lock.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
        })
        .collect();

    // Faults: one node down at a time, so a majority (3 of 4) always remains.
    let chaos_started = Instant::now();
    let mut round = 0u32;
    let mut faults = Vec::new();
    while chaos_started.elapsed() < Duration::from_secs(24) {
        std::thread::sleep(Duration::from_millis(1200));
        let leader = cluster.acting_leader();
        let holder = leader
            .as_ref()
            .and_then(|l| l.lock_holder)
            .map(|h| h.node.0);
        let leader = leader.map(|l| l.id.0);
        let (target, what) = match round % 4 {
            0 => (leader, "SIGKILL leader"),
            1 => (leader, "SIGSTOP leader"),
            2 => (holder.or(leader), "SIGKILL holder"),
            _ => (holder.or(leader), "SIGSTOP holder"),
        };
        round += 1;
        let Some(target) = target else { continue };
        faults.push(format!("{what} {target}"));
        if what.starts_with("SIGKILL") {
            cluster.kill(target);
            std::thread::sleep(Duration::from_millis(800));
            cluster.spawn(target);
            cluster.wait_answering(target, Duration::from_secs(10));
        } else {
            // Long enough for the lock's lease (1 s) to run out, so the stalled job's late
            // write meets a newer fence.
            let jobs = cluster.pause_with_jobs(target);
            std::thread::sleep(Duration::from_millis(1500));
            cluster.resume_with_jobs(target, &jobs);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    // Let every node settle and log what it still holds or releases.
    cluster.wait_stable_leader(Duration::from_secs(20));

    let state = counter.snapshot();
    let acked = counts.acked.load(Ordering::Relaxed);
    let merged = cluster.merged_log();
    let violations = check_history(&merged);
    let acquisitions = merged
        .iter()
        .filter(|e| matches!(e.event, kiln::cluster::Event::Acquired { .. }))
        .count();
    eprintln!(
        "faults: {faults:?}\ncounter {state:?}; client attempts {}, acked {acked}, lock refused {}, failed {}; acquisitions {acquisitions}",
        counts.attempts.load(Ordering::Relaxed),
        counts.refused_lock.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    assert!(faults.len() >= 8, "too few faults injected: {faults:?}");
    // Fencing keeps read-increment-write exact: every accepted write raised the value by one.
    assert_eq!(
        state.value,
        state.accepted_writes,
        "lost increments; {}",
        cluster_support::describe(cluster.dir.path())
    );
    // Every increment a client saw acknowledged was counted (a job whose node died after its
    // write may be counted without the client hearing of it).
    assert!(acked <= state.accepted_writes, "{acked} acked > {state:?}");
    assert!(
        acked >= 10,
        "too little progress: {acked} acknowledged increments"
    );
    assert!(
        violations.is_empty(),
        "lock history violations: {violations:?}; {}",
        cluster_support::describe(cluster.dir.path())
    );
    check_causal_order(&merged).expect("merged log respects causality");
}

#[test]
fn a_cluster_without_a_majority_has_no_leader_and_refuses_exclusive_jobs() {
    let mut cluster = TestCluster::start(4, 100);
    let leader = cluster.wait_stable_leader(Duration::from_secs(20)).id.0;
    let other = if leader == 1 { 2 } else { 1 };
    cluster.kill(leader);
    cluster.kill(other);
    let survivors: Vec<u32> = cluster
        .ids()
        .into_iter()
        .filter(|&id| cluster.is_up(id))
        .collect();
    assert_eq!(survivors.len(), 2);

    // Past every lease and timeout, neither survivor may act: a 2|2 split elects no one.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..10 {
        let statuses = cluster.statuses();
        assert_eq!(statuses.len(), 2, "both survivors answer");
        for status in &statuses {
            assert!(
                !status.acting,
                "node {} acts without a majority: {status:?}",
                status.id
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let client = cluster.client(survivors[0], Duration::from_secs(10));
    let started = Instant::now();
    let (result, stdout) = exclusive_increment(&client, 9, 1500).expect("answered");
    assert_eq!(result.verdict, Verdict::LockUnavailable, "{result:?}");
    assert!(stdout.is_empty(), "the program must not run: {stdout:?}");
    let message = result.fields.get("message").unwrap_or_default();
    assert!(
        message.contains("could not get the cluster lock within ")
            && message.contains("no acting coordinator"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));

    // INFO shows the node, its term, leader and Lamport time.
    let info = client.info().expect("info");
    assert_eq!(info.get("node"), Some(survivors[0].to_string().as_str()));
    for key in ["term", "leader", "lamport"] {
        assert!(info.get(key).is_some(), "INFO lacks {key}");
    }

    // `kiln cluster status` says so too, and names the unreachable nodes.
    let output = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env_remove("KILN_TOKEN")
        .args([
            "cluster",
            "status",
            "--server",
            &cluster.addrs[(survivors[0] - 1) as usize],
        ])
        .args(["--token", TOKEN])
        .output()
        .expect("kiln runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("leader: none acting"), "{text}");
    assert_eq!(
        text.matches(" no ").count(),
        2,
        "two unreachable nodes: {text}"
    );

    // One node back makes a majority: a leader is elected and exclusive jobs run again.
    cluster.spawn(other);
    cluster.wait_answering(other, Duration::from_secs(10));
    cluster.wait_stable_leader(Duration::from_secs(20));
    let counter = FencedCounter::start();
    let (result, stdout) = exclusive_increment(&client, counter.port, 5000).expect("answered");
    assert_eq!(result.verdict, Verdict::Ok, "{result:?} {stdout}");
    assert_eq!(stdout.trim(), "OK");
    let status = fetch_status(&client).expect("status");
    assert_eq!(status.nodes.len(), 4);
    assert_eq!(status.nodes.iter().filter(|n| n.reachable).count(), 3);

    // The merged log files check clean through the CLI.
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.args(["cluster", "log", "--check"]);
    for id in cluster.ids() {
        command.arg(cluster.log_path(id));
    }
    let output = command.output().expect("kiln runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn a_fault_free_cluster_keeps_its_coordinator() {
    // The short CI version of the 5-minute fault-free run: once a coordinator is elected, no
    // new term starts and the leader never changes.
    let cluster = TestCluster::start(4, 100);
    let first = cluster.wait_stable_leader(Duration::from_secs(20));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(500));
        for status in cluster.statuses() {
            assert_eq!(
                (status.term, status.leader),
                (first.term, Some(first.id)),
                "node {} changed term or leader in a fault-free run",
                status.id
            );
        }
    }
    let merged = cluster.merged_log();
    let new_coordinators = merged
        .iter()
        .filter(|e| e.term > first.term && matches!(e.event, kiln::cluster::Event::Elected))
        .count();
    assert_eq!(new_coordinators, 0);
}

#[test]
fn cluster_requests_never_wait_behind_jobs_and_jobs_are_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::loopback();
    config.workers = 1;
    // A peer that refuses connections: the node keeps trying, which must cost nothing visible.
    let peers = kiln::cluster::parse_peers("2=127.0.0.1:9").expect("peers");
    let mut cluster =
        kiln::cluster::ClusterConfig::new(kiln::cluster::NodeId(1), peers).expect("cluster config");
    cluster.log_path = dir.path().join("node-1.log");
    cluster.state_path = dir.path().join("node-1.state.json");
    config.cluster = Some(cluster);
    let handle = server::start(config).expect("server starts");
    let addr = handle.local_addr().to_string();
    // Occupy the only worker, and queue a second job behind it.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let job = JobSpec::code(Intent::Run, "python", "import time\ntime.sleep(2)\n");
                Client::new(addr, None)
                    .run_to_end(&job)
                    .map(|(_, r)| r.verdict)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let client = Client::new(addr.clone(), None).with_read_timeout(Some(Duration::from_secs(5)));
    let asked = Instant::now();
    let status = kiln::cluster::remote::fetch_node_status(&client).expect("status");
    assert!(
        asked.elapsed() < Duration::from_millis(800),
        "CLUSTER-STATUS waited {:?} behind jobs",
        asked.elapsed()
    );
    assert_eq!(status.id.0, 1);
    assert!(!status.acting, "one node of two is no majority");
    for thread in busy {
        assert_eq!(thread.join().expect("thread").expect("job"), Verdict::Ok);
    }
    let log = kiln::cluster::fetch_log(&client, 0).expect("log");
    let job_phases: Vec<&str> = log
        .iter()
        .filter_map(|e| match &e.event {
            kiln::cluster::Event::Job { phase, .. } => Some(phase.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        job_phases
            .iter()
            .filter(|p| p.starts_with("finished"))
            .count(),
        2,
        "{job_phases:?}"
    );
    assert!(log.windows(2).all(|w| w[0].lamport < w[1].lamport));
}

#[test]
fn a_lone_server_refuses_cluster_intents_and_exclusive_jobs() {
    let handle = server::start(ServerConfig::loopback()).expect("server starts");
    let client = Client::new(handle.local_addr().to_string(), None);
    match fetch_status(&client) {
        Err(kiln::cluster::RemoteError::Client(ClientError::Server { code, message })) => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("not (start it with --node"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut job = JobSpec::code(Intent::Run, "python", "print('ran')\n");
    job.head.extra.push(("Exclusive".into(), "yes".into()));
    let (events, result) = client.run_to_end(&job).expect("answered");
    assert_eq!(result.verdict, Verdict::LockUnavailable);
    assert!(
        result
            .fields
            .get("message")
            .unwrap_or_default()
            .contains("needs a server in a cluster")
    );
    assert!(events.is_empty(), "the program must not run: {events:?}");
    // A plain RUN is unaffected.
    let (_, result) = client
        .run_to_end(&JobSpec::code(Intent::Run, "python", "print('ran')\n"))
        .expect("answered");
    assert_eq!(result.verdict, Verdict::Ok);
}
