#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The README's first command, as separate processes: `dcdn up --check`
//! must publish, deliver and verify through every edge and exit 0.

use std::process::Command;

#[test]
fn dcdn_up_check_passes_with_separate_processes() {
    let dir = std::env::temp_dir().join(format!("dcdn-up-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dcdn"))
        .args(["up", "--check", "--relays", "1", "--edges", "2", "--dir"])
        .arg(&dir)
        .output()
        .expect("running dcdn up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "dcdn up --check failed");
    assert!(stdout.contains("0 failed"));
    assert!(!stdout.contains("FAIL "));
    let _ = std::fs::remove_dir_all(&dir);
}
