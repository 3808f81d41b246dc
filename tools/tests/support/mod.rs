//! What the command-line tests share: the binaries under test.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The daemon lives beside `switchboard-ctl`; build it if this test run has not.
pub fn daemon() -> PathBuf {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_switchboard-ctl"));
    let bin = ctl.with_file_name("switchboard");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "switchboard-edge", "--bin", "switchboard"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

pub fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard-ctl"))
}
