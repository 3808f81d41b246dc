//! Several nodes of one cluster on one host, as `switchboard-ctl cluster up`, the benchmark's
//! clusters and the tests start them: nodes 1..=N, the last `edge_only` of role `edge`, the
//! cluster's certificates and one JWT secret in one folder. One place writes each node's
//! cluster settings, so that every tool starts the same cluster.

use super::Role;
use std::path::Path;

/// The roles of nodes 1..=n whose last `edge_only` hold no store (as `cluster up` starts them).
pub fn roles(n: u16, edge_only: u16) -> Vec<Role> {
    (1..=n).map(|i| if i > n - edge_only { Role::Edge } else { Role::Both }).collect()
}

/// Node `i`'s cluster settings (`KEY=VALUE`, as `--set` takes them) among nodes 1..=n of
/// `roles` (node `j`'s at `j - 1`): its id and role, its
/// backplane address and every other node's (`backplane(j)`, `HOST:PORT`), the files in
/// `dir` that `switchboard_backplane::tls::write_cluster_certs` and
/// `crate::auth::dev_secret` wrote, and no thread pinning: nodes sharing a host, pinned,
/// would all crowd its first cores.
pub fn node_settings(i: u16, roles: &[Role], backplane: &dyn Fn(u16) -> String, dir: &Path) -> Vec<String> {
    let role = |j: u16| roles[j as usize - 1];
    let peers: Vec<String> = (1..=roles.len() as u16)
        .filter(|j| *j != i)
        .map(|j| {
            let suffix = match role(j) {
                Role::Both => String::new(),
                other => format!("/{}", other.name()),
            };
            format!("\"{j}@{}{suffix}\"", backplane(j))
        })
        .collect();
    let file = |name: String| format!("{:?}", dir.join(name).display().to_string());
    vec![
        format!("node_id={i}"),
        format!("role=\"{}\"", role(i).name()),
        format!("backplane_listen=\"{}\"", backplane(i)),
        format!("peers=[{}]", peers.join(",")),
        format!("cluster_ca_file={}", file("ca.pem".into())),
        format!("node_cert_file={}", file(format!("node-{i}.pem"))),
        format!("node_key_file={}", file(format!("node-{i}.key"))),
        format!("jwt_secret_file={}", file("jwt.secret".into())),
        "pin_threads=false".to_string(),
    ]
}
