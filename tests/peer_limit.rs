//! The per-peer job limit (`--max-jobs-per-peer`): one client address cannot hold more jobs than
//! the limit, is told so with `busy` naming the limit, and gets its place back when a job ends;
//! PING is not counted.

use std::sync::Arc;
use std::time::Duration;

use kiln::client::{Client, ClientError, Event, JobSpec};
use kiln::exec::{Executor, NoSandbox};
use kiln::protocol::{ErrorCode, Intent, Verdict};
use kiln::server::{self, ServerConfig};

#[test]
fn one_client_cannot_take_every_worker() {
    // Harmless programs only, so no sandbox is needed here.
    let executor = Executor::detect(Arc::new(NoSandbox)).expect("executor");
    if executor.find("python").is_none() {
        eprintln!("peer_limit: skipped, no Python here");
        return;
    }
    let mut config = ServerConfig::loopback();
    config.workers = 2;
    config.max_jobs_per_peer = 1;
    let handle = server::start_with_executor(config, Arc::new(executor)).expect("server");
    let client = Client::new(handle.local_addr().to_string(), None)
        .with_read_timeout(Some(Duration::from_secs(30)));
    assert_eq!(
        client.info().expect("info").get("max-jobs-per-peer"),
        Some("1")
    );

    let slow = JobSpec::code(
        Intent::Run,
        "python",
        "import time\ntime.sleep(1.5)\nprint('slow done')\n",
    );
    let running = client.start(&slow).expect("the first job is accepted");

    let quick = JobSpec::code(Intent::Run, "python", "print('quick')\n");
    let error = client
        .run_to_end(&quick)
        .expect_err("a second job from the same address is refused");
    assert_eq!(error.code(), Some(ErrorCode::Busy));
    let ClientError::Server { message, .. } = &error else {
        panic!("a refusal: {error}");
    };
    assert!(message.contains("--max-jobs-per-peer 1"), "{message}");
    assert!(message.contains("127.0.0.1"), "{message}");
    client
        .ping()
        .expect("PING is not counted against the limit");

    let mut output = Vec::new();
    let mut verdict = None;
    for event in running {
        match event.expect("event") {
            Event::Stdout(bytes) => output.extend(bytes),
            Event::Finished(result) => verdict = Some(result.verdict),
            _ => {}
        }
    }
    assert_eq!(verdict, Some(Verdict::Ok));
    assert_eq!(output, b"slow done\n");

    // The place is free again once the job has ended.
    let (_, result) = client.run_to_end(&quick).expect("accepted again");
    assert_eq!(result.verdict, Verdict::Ok);
    handle.shutdown(Duration::from_secs(2));
}
