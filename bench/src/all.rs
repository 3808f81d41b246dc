//! `all`: every scenario in turn, each as its own process (`switchboard-bench SCENARIO
//! --json`), their JSON objects gathered into one.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct Args {
    /// Measure NATS beside Switchboard where the scenario supports it.
    #[arg(long, value_parser = ["nats"])]
    pub peer: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub smoke: bool,
    /// SVG charts of the daemon scenarios into this folder.
    #[arg(long)]
    pub chart: Option<std::path::PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut scenarios: Vec<(&str, Vec<&str>)> = vec![
        ("store", vec![]),
        ("density", vec![]),
        ("one-to-one", vec!["--client-threads", "2", "--rate-start", "20000", "--rate-step", "1.25"]),
        ("fanout", vec![]),
        ("storm", vec![]),
        ("kernel-floor", vec![]),
        ("mesh", vec![]),
    ];
    if a.peer.is_some() {
        scenarios[1].1.extend(["--peer", "nats"]);
        scenarios[2].1.extend(["--peer", "nats"]);
        scenarios[3].1.extend(["--peer", "nats"]);
    }
    let mut results = serde_json::Map::new();
    for (name, extra) in scenarios {
        println!("== {name}");
        let mut cmd = Command::new(&exe);
        cmd.arg(name).args(&extra).arg("--json").stderr(Stdio::inherit());
        if a.smoke {
            cmd.arg("--smoke");
        }
        if let (Some(dir), true) = (&a.chart, !["store", "kernel-floor"].contains(&name)) {
            cmd.arg("--chart").arg(dir);
        }
        let out = cmd.output().with_context(|| format!("run {name}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!(
            "{}",
            text.rsplit_once('\n').map(|(body, _)| body).map_or("", |b| b.rsplit_once('\n').map_or(b, |(b, _)| b))
        );
        println!();
        if !out.status.success() {
            bail!("{name} failed ({})", out.status);
        }
        let last = text.lines().last().unwrap_or("{}");
        let v: Value = serde_json::from_str(last).with_context(|| format!("{name}: last line is not JSON: {last}"))?;
        results.insert(name.to_string(), v);
    }
    if a.json {
        println!("{}", json!({"scenario": "all", "results": results}));
    }
    Ok(())
}
