//! Joining the backplane: the mesh started with the cluster's certificates, and the thread
//! that handles what arrives until requests are routed across nodes (membership, logged; the
//! cluster's [`Terms`], checked; the other nodes' client URLs, kept for `welcome.nodes`).

use super::terms::{self, Terms};
use super::{Cluster, View};
use crate::config::Config;
use std::sync::Arc;
use switchboard_backplane::Class;

/// Joins the mesh with the cluster's certificates. Until requests are routed across nodes,
/// what arrives is membership, which is logged.
pub fn join(
    config: &Config,
    cluster: &Cluster,
    client_url: String,
    view: Arc<View>,
) -> Result<switchboard_backplane::rt::Handle, String> {
    use switchboard_backplane::mesh::Event;
    let files = (&config.cluster_ca_file, &config.node_cert_file, &config.node_key_file);
    let (Some(ca), Some(cert), Some(key)) = files else { unreachable!("checked with the configuration") };
    let tls = switchboard_backplane::tls::MeshTls::load(ca, cert, key).map_err(|e| format!("backplane TLS: {e:#}"))?;
    let listen = config
        .backplane_listen
        .parse()
        .map_err(|e| format!("backplane_listen {:?}: not an address: {e}", config.backplane_listen))?;
    let settings = switchboard_backplane::rt::Settings {
        node: cluster.me,
        listen,
        peers: cluster.peers.iter().map(|p| (p.node, p.backplane)).collect(),
        tls,
        data_dir: config.data_dir.join("backplane"),
        config: switchboard_backplane::MeshConfig::default(),
    };
    let (handle, inbox, _thread) =
        switchboard_backplane::rt::start(settings, Arc::new(|| {})).map_err(|e| format!("backplane: {e:#}"))?;
    let (mesh, terms) = (handle.clone(), Terms::of(cluster, client_url));
    std::thread::Builder::new()
        .name("cluster-events".into())
        .spawn(move || loop {
            match inbox.recv_timeout(std::time::Duration::from_secs(1)) {
                Some(Event::Up { node, boot }) => tracing::info!(%node, %boot, "peer up"),
                Some(Event::Down { node, boot }) => {
                    tracing::warn!(%node, %boot, "peer down");
                    view.forget(node);
                }
                // Every chosen connection starts with this node's terms.
                Some(Event::Connected { node, .. }) => {
                    let _ = mesh.send(node, Class::Control, 0, terms.encode());
                }
                Some(Event::Frame(frame)) => {
                    let Some(theirs) = Terms::decode(&frame.frame) else { continue };
                    if !theirs.client_url.is_empty() {
                        view.set_client_url(frame.from, theirs.client_url.clone());
                    }
                    if let Err(why) = terms.agree(&theirs, frame.from.0) {
                        if terms::leaves(mesh.boot(), frame.boot) {
                            tracing::error!("refusing to join the cluster: {why}");
                            eprintln!("switchboard: refusing to join the cluster: {why}");
                            std::process::exit(2);
                        }
                        tracing::error!("a node that disagrees joined, and will leave: {why}");
                    }
                }
                Some(_) | None => {}
            }
        })
        .map_err(|e| format!("cluster events thread: {e}"))?;
    Ok(handle)
}
