//! Runs the independent KILN/1 client (`tests/doc_client.py`, written from `docs/protocol.md`
//! alone) against a real server started in this process.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python interpreter to run the client with: Debian's if present, else `python3` on PATH.
fn python() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        system.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

#[test]
fn doc_client_suite_passes() {
    let server =
        kiln::server::start(kiln::server::ServerConfig::loopback()).expect("start the Kiln server");
    let addr = server.local_addr();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doc_client.py");

    let output = Command::new(python())
        .arg(&script)
        .arg(addr.to_string())
        .output()
        .expect("run tests/doc_client.py");

    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "tests/doc_client.py failed against {addr}: {}",
        output.status
    );
}
