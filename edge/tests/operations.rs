//! The operator's documents agree with the daemon: every metric a node serves is in
//! docs/operations.md's reference, every metric the Grafana dashboard queries is one of
//! those, and every dashboard query parses (`promtool check rules`).

mod support;

use std::collections::BTreeSet;
use std::io::Write;

const OPERATIONS: &str = include_str!("../../docs/operations.md");
const DASHBOARD: &str = include_str!("../../docs/ops/grafana-dashboard.json");

/// The metric names of the reference table.
fn documented() -> BTreeSet<String> {
    OPERATIONS
        .lines()
        .filter_map(|l| l.strip_prefix("| `switchboard_"))
        .map(|rest| format!("switchboard_{}", rest.split('`').next().unwrap()))
        .collect()
}

fn queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_metric_served_is_documented() {
    let server = support::Server::start(&[]);
    let (_, text) = server.http("GET", "/metrics", None, None);
    let served: BTreeSet<String> = text
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let documented = documented();
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(missing.is_empty(), "not in docs/operations.md: {missing:?}");
}

#[test]
fn the_dashboard_queries_documented_metrics_and_parses() {
    let known = documented();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries().iter().enumerate() {
        for word in
            q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("switchboard_"))
        {
            let family = word.strip_suffix("_bucket").unwrap_or(word);
            assert!(known.contains(family), "the dashboard queries {word}, which docs/operations.md does not list");
        }
        rules.push_str(&format!("      - record: dashboard:q{i}\n        expr: {q:?}\n"));
    }
    let file = std::env::temp_dir().join(format!("switchboard-dashboard-{}.yml", std::process::id()));
    std::fs::File::create(&file).unwrap().write_all(rules.as_bytes()).unwrap();
    let out = std::process::Command::new("promtool").arg("check").arg("rules").arg(&file).output().expect("promtool");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
