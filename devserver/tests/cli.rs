//! The binary's fault-mode flag: a bad seed is refused naming it, and a good
//! one starts the server in fault mode with that seed in its log.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lkagent-devserver");

#[test]
fn a_bad_fault_seed_is_refused_with_its_value() {
    let out = Command::new(BIN)
        .args(["--port", "0", "--fault-seed", "seven"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad --fault-seed \"seven\""), "{stderr}");
}

#[test]
fn a_fault_seed_starts_fault_mode_and_logs_the_seed() {
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--fault-seed", "4242"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (said, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("fault mode") {
                let _ = said.send(line);
                break;
            }
        }
    });
    let line = heard.recv_timeout(Duration::from_secs(15));
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("the server says it is in fault mode");
    assert!(line.contains("4242"), "{line}");
}
