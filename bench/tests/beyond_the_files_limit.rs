//! One edge process holds more connections than its open-files limit allows descriptors
//! (sockets live in io_uring tables), every one of them exchanges a message, and 100,000
//! more connections that open and close (half cleanly, half with a reset) leave nothing
//! behind. The load comes from `switchboard-bench density`, spread over worker processes
//! that each stay under the limit.

use std::process::Command;

#[test]
fn more_connections_than_descriptors_and_no_leak_after_100k_cycles() {
    let bench = env!("CARGO_BIN_EXE_switchboard-bench");
    let daemon = std::path::Path::new(bench).with_file_name("switchboard");
    if !daemon.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "switchboard-edge", "--bin", "switchboard"])
            .status()
            .expect("cargo build");
        assert!(built.success(), "building the daemon failed");
    }
    let connections = 25_000;
    let out = Command::new(bench)
        .args(["density", "--connections", &connections.to_string(), "--per-worker", "12500"])
        .args(["--exchange", "--churn", "100000", "--json"])
        .output()
        .expect("run switchboard-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "density failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON");
    let limit = v["server_files_limit"].as_u64().expect("limit");
    assert!(limit < connections, "the test needs an open-files limit below {connections}, the server has {limit}");
    assert_eq!(v["alive"], connections);
    assert_eq!(v["exchanged"], connections, "{v}");
    assert!(v["server_fds"].as_u64().unwrap() < 100, "sockets took descriptors: {v}");
    let churn = &v["churn"];
    assert_eq!(churn["cycles"], 100_000, "{v}");
    assert_eq!(churn["sockets_after"], churn["sockets_before"], "connections left behind: {v}");
    assert_eq!(churn["fds_after"], churn["fds_before"], "descriptors left behind: {v}");
}
