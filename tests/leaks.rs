//! Nothing is left behind: after bad requests, finished, failed and cancelled jobs, the process
//! has no extra file descriptors, no child processes and no job directories. One test in its own
//! binary, so no other test's sockets or children muddy the counts.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn no_descriptors_processes_or_directories_are_left_behind() {
    let server = server();
    let addr = server.local_addr();
    // Warm up: the first job creates the jobs root and starts the runtime's lazy statics.
    exchange(addr, &code_request("RUN", "python", "print(1)\n", &[]));
    let fds_before = open_fds();

    let requests: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"KILN/1 RUN python\nSource-Length: 5\n\npr\0nt".to_vec(),
        b"KILN/1 RUN python\nSource-Length: 99\n\nshort".to_vec(),
        code_request("RUN", "python", "print('ok')\n", &[]),
        code_request("RUN", "python", "import sys\nsys.exit(3)\n", &[]),
        code_request(
            "RUN",
            "python",
            "while True: pass\n",
            &["Time-Limit-Ms: 300"],
        ),
        code_request("CHECK", "python", "x = (\n", &[]),
        code_request("BUILD", "python", "print(1)\n", &[]),
        // A child that outlives the program must die with the job.
        code_request(
            "RUN",
            "python",
            "import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('spawned')\n",
            &[],
        ),
    ];
    for request in &requests {
        let answer = exchange(addr, request);
        assert!(
            answer.error_code().is_some() || answer.result("verdict").is_some(),
            "{answer:?}"
        );
    }
    // A client that disconnects mid-run.
    let mut stream = connect(addr);
    stream
        .write_all(&code_request(
            "RUN",
            "python",
            "import time\nprint('x', flush=True)\ntime.sleep(30)\n",
            &[],
        ))
        .expect("sends");
    let mut buffer = [0u8; 256];
    let _ = read_some(&mut stream, &mut buffer);
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = open_fds();
        let children = child_processes();
        let dirs = job_dirs(&server);
        if fds <= fds_before && children.is_empty() && dirs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {} fds (before {fds_before}), children {children:?}, job dirs {dirs:?}",
            fds
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.shutdown(Duration::from_secs(1));
}
