//! Figures for cluster mode, measured with real processes (4 nodes on 127.0.0.1-4, 100 ms
//! heartbeats): re-election time after SIGKILLing the leader, over many trials, and messages per
//! critical section. Ignored by default because it takes about a minute; run it with
//! `cargo test --no-default-features --test cluster_figures -- --ignored --nocapture`
//! (`KILN_FIGURE_TRIALS` sets the number of trials, 20 by default). The 5-minute fault-free run
//! is `kiln cluster up --nodes 4 --for-secs 300 --quiet`, which prints the elections it saw.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{FencedCounter, TestCluster, exclusive_increment};
use kiln::cluster::Event;
use kiln::cluster::transport::monotonic_ms;
use kiln::protocol::Verdict;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[test]
#[ignore = "measures figures for about a minute; run with --ignored --nocapture"]
fn figures_reelection_time_and_messages_per_critical_section() {
    let trials: usize = std::env::var("KILN_FIGURE_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    let mut cluster = TestCluster::start(4, 100);
    let mut kills = Vec::new();
    for _ in 0..trials {
        let leader = cluster.wait_stable_leader(Duration::from_secs(30));
        // Let the leader's heartbeats settle after its (re)election.
        std::thread::sleep(Duration::from_millis(500));
        let killed_at = monotonic_ms();
        cluster.kill(leader.id.0);
        kills.push((killed_at, leader.term, leader.id));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && cluster
                .acting_leader()
                .is_none_or(|new| new.term <= leader.term)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.spawn(leader.id.0);
        cluster.wait_answering(leader.id.0, Duration::from_secs(10));
    }
    let merged = cluster.merged_log();
    let mut latencies: Vec<u64> = kills
        .iter()
        .filter_map(|&(killed_at, term, killed)| {
            merged
                .iter()
                .filter(|e| {
                    e.node != killed
                        && e.term > term
                        && e.time_ms >= killed_at
                        && matches!(e.event, Event::Elected)
                })
                .map(|e| e.time_ms - killed_at)
                .min()
        })
        .collect();
    latencies.sort_unstable();
    assert_eq!(
        latencies.len(),
        kills.len(),
        "every kill led to an election"
    );
    eprintln!(
        "re-election after leader SIGKILL, {} trials: median {} ms, p90 {} ms, p99 {} ms, max {} ms; all {latencies:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // Messages per critical section, fault-free: every node up, jobs sent to each node in turn.
    cluster.wait_stable_leader(Duration::from_secs(30));
    let counter = FencedCounter::start();
    let from = monotonic_ms();
    let sections = 40;
    let mut ok = 0;
    for n in 0..sections {
        let client = cluster.client(n % 4 + 1, Duration::from_secs(20));
        if let Ok((result, _)) = exclusive_increment(&client, counter.port, 5000)
            && result.verdict == Verdict::Ok
        {
            ok += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let merged = cluster.merged_log();
    let window: Vec<_> = merged.iter().filter(|e| e.time_ms >= from).collect();
    let lock_messages = window
        .iter()
        .filter(|e| {
            matches!(&e.event, Event::Send { msg, to }
                if *to != e.node
                    && ["REQUEST", "GRANT", "RENEW", "RELEASE", "NOT-LEADER"].contains(&msg.as_str()))
        })
        .count();
    let acquired = window
        .iter()
        .filter(|e| matches!(e.event, Event::Acquired { .. }))
        .count();
    let elections = window
        .iter()
        .filter(|e| matches!(e.event, Event::ElectionStarted))
        .count();
    eprintln!(
        "critical sections: {ok} of {sections} jobs ok, {acquired} acquisitions, {lock_messages} lock messages between nodes = {:.2} per critical section; {elections} elections meanwhile",
        lock_messages as f64 / acquired.max(1) as f64
    );
    assert_eq!(ok, sections);
    assert_eq!(counter.snapshot().value, sections as u64);
}
