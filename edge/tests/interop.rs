//! Clients nobody here wrote, against the real daemon: Python `websockets` and Node `ws`
//! (installed by `tools/test.sh`), each doing hello, send, receive, sync and a clean close.

mod support;

use std::process::Command;
use support::Server;

fn run(program: &str, script: &str, users: (&str, &str), env: &[(&str, &str)]) {
    let s = Server::start(&[]);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
    let url = format!("ws://{}/v1/ws", s.addr);
    let out = Command::new(program)
        .arg(format!("{dir}/{script}"))
        .args([&url, &s.token(users.0), &s.token(users.1)])
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed (tools/test.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{script} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_websockets_client() {
    // tools/test.sh points this at a virtual environment that has `websockets`. (Not a
    // `SWITCHBOARD_*` name: the daemon takes those as settings and refuses unknown ones.)
    let python = std::env::var("INTEROP_PYTHON").unwrap_or_else(|_| "python3".into());
    run(&python, "client.py", ("py-alice", "py-bob"), &[]);
}

#[test]
fn node_ws_client() {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/node_modules");
    run("node", "client.mjs", ("js-alice", "js-bob"), &[("NODE_PATH", modules)]);
}
