//! Running the `lesionseg` binary from a test: the command's output, or its
//! output text after checking it succeeded.

use std::process::{Command, Output};

/// Runs `lesionseg args` and returns what it did.
pub fn lesionseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lesionseg")).args(args).output().unwrap()
}

/// Runs `lesionseg args`, which must succeed; its stdout then stderr.
pub fn ok(args: &[&str]) -> String {
    let out = lesionseg(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}
