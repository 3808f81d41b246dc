//! The cluster's series in `/metrics` (beside the backplane's `switchboard_backplane_*`):
//! requests forwarded and served, `unavailable` by cause, subscriptions held as an owner,
//! conversations tracked and gaps repaired as an edge, and registry lookups.

use crate::node::Node;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

pub fn render(node: &Node, o: &mut String) {
    if let Some(router) = &node.router {
        let m = &router.metrics;
        o.push_str("# TYPE switchboard_cluster_requests_forwarded_total counter\n");
        for (kind, n) in crate::node::request::Request::NAMES.iter().zip(&m.forwarded) {
            let n = n.load(Relaxed);
            let _ = writeln!(o, "switchboard_cluster_requests_forwarded_total{{type=\"{kind}\"}} {n}");
        }
        o.push_str("# TYPE switchboard_cluster_unavailable_total counter\n");
        for (i, cause) in super::route::CAUSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "switchboard_cluster_unavailable_total{{cause=\"{cause}\"}} {}",
                m.unavailable[i].load(Relaxed)
            );
        }
        let _ = writeln!(o, "# TYPE switchboard_cluster_requests_served_total counter");
        let _ = writeln!(o, "switchboard_cluster_requests_served_total {}", m.served.load(Relaxed));
        let _ = writeln!(o, "# TYPE switchboard_cluster_requests_waiting gauge");
        let _ = writeln!(o, "switchboard_cluster_requests_waiting {}", router.waiting());
    }
    if let Some(fanout) = &node.hub.fanout {
        let _ = writeln!(o, "# TYPE switchboard_cluster_subscriptions gauge");
        let _ = writeln!(o, "switchboard_cluster_subscriptions {}", fanout.subscriptions());
        let _ = writeln!(o, "# TYPE switchboard_cluster_deliveries_sent_total counter");
        let _ = writeln!(o, "switchboard_cluster_deliveries_sent_total {}", fanout.metrics.sent.load(Relaxed));
        let _ = writeln!(o, "# TYPE switchboard_cluster_deliveries_refused_total counter");
        let _ = writeln!(o, "switchboard_cluster_deliveries_refused_total {}", fanout.metrics.refused.load(Relaxed));
    }
    if let Some(interest) = &node.interest {
        let m = &interest.metrics;
        let _ = writeln!(o, "# TYPE switchboard_cluster_tracked_conversations gauge");
        let _ = writeln!(o, "switchboard_cluster_tracked_conversations {}", interest.tracked());
        let _ = writeln!(o, "# TYPE switchboard_cluster_gap_repairs_total counter");
        let _ = writeln!(o, "switchboard_cluster_gap_repairs_total {}", m.gap_repairs.load(Relaxed));
        let _ = writeln!(o, "# TYPE switchboard_cluster_gap_evictions_total counter");
        let _ = writeln!(o, "switchboard_cluster_gap_evictions_total {}", m.gap_evictions.load(Relaxed));
        let _ = writeln!(o, "# TYPE switchboard_cluster_duplicates_dropped_total counter");
        let _ = writeln!(o, "switchboard_cluster_duplicates_dropped_total {}", m.duplicates.load(Relaxed));
    }
    if let Some(registry) = &node.registry {
        let _ = writeln!(o, "# TYPE switchboard_cluster_registry_entries gauge");
        let _ = writeln!(o, "switchboard_cluster_registry_entries {}", registry.entries());
        let h = registry.lookup_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        crate::metrics::summary(o, "switchboard_cluster_registry_lookup_seconds", &h);
    }
}
