//! The cluster's series in `/metrics` (beside the backplane's `switchboard_backplane_*`):
//! requests forwarded and served, `unavailable` by cause, subscriptions held as an owner,
//! conversations tracked and gaps repaired as an edge, and registry lookups.

use crate::metrics::{family, histogram};
use crate::node::Node;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// One sample without labels, with its family's lines.
fn one(o: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(o, name, kind, help);
    let _ = writeln!(o, "{name} {value}");
}

pub fn render(node: &Node, o: &mut String) {
    if let Some(backplane) = &node.backplane {
        let lag = backplane.metrics().lag();
        let help = "A backplane frame's send stamp to its arrival in this node's inbox.";
        histogram(o, "switchboard_backplane_lag_seconds", help, &lag);
    }
    if let Some(router) = &node.router {
        let m = &router.metrics;
        let name = "switchboard_cluster_requests_forwarded_total";
        family(o, name, "counter", "Requests sent to the conversation's owner on another node, by type.");
        for (kind, n) in crate::node::request::Request::NAMES.iter().zip(&m.forwarded) {
            let _ = writeln!(o, "{name}{{type=\"{kind}\"}} {}", n.load(Relaxed));
        }
        let name = "switchboard_cluster_unavailable_total";
        family(o, name, "counter", "Forwarded requests answered unavailable, by cause.");
        for (i, cause) in super::route::CAUSES.iter().enumerate() {
            let _ = writeln!(o, "{name}{{cause=\"{cause}\"}} {}", m.unavailable[i].load(Relaxed));
        }
        let served = m.served.load(Relaxed);
        one(
            o,
            "switchboard_cluster_requests_served_total",
            "counter",
            "Requests from other nodes served here.",
            served,
        );
        let waiting = router.waiting();
        one(o, "switchboard_cluster_requests_waiting", "gauge", "Forwarded requests waiting for an answer.", waiting);
    }
    if let Some(fanout) = &node.hub.fanout {
        let (subs, sent, refused) =
            (fanout.subs.subscriptions(), fanout.metrics.sent.load(Relaxed), fanout.metrics.refused.load(Relaxed));
        one(o, "switchboard_cluster_subscriptions", "gauge", "Node subscriptions held as an owner.", subs);
        one(
            o,
            "switchboard_cluster_deliveries_sent_total",
            "counter",
            "Committed frames sent to subscribed nodes.",
            sent,
        );
        let help = "Deliveries the backplane refused (the peer down or its queue full); it repairs the gap.";
        one(o, "switchboard_cluster_deliveries_refused_total", "counter", help, refused);
    }
    if let Some(interest) = &node.interest {
        let m = &interest.metrics;
        let help = "Conversations of local users owned elsewhere, tracked here.";
        one(o, "switchboard_cluster_tracked_conversations", "gauge", help, interest.tracked());
        let help = "Holes in a tracked conversation filled from its owner.";
        one(o, "switchboard_cluster_gap_repairs_total", "counter", help, m.gap_repairs.load(Relaxed));
        let help = "Holes that could not be filled: the conversation's local connections were closed with 4009.";
        one(o, "switchboard_cluster_gap_evictions_total", "counter", help, m.gap_evictions.load(Relaxed));
        let help = "Deliveries at or below the last seq delivered, dropped.";
        one(o, "switchboard_cluster_duplicates_dropped_total", "counter", help, m.duplicates.load(Relaxed));
    }
    if let Some(registry) = &node.registry {
        let help = "Presence registry entries held on this node.";
        one(o, "switchboard_cluster_registry_entries", "gauge", help, registry.entries());
        let h = registry.lookup_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        histogram(o, "switchboard_cluster_registry_lookup_seconds", "A presence lookup at the users' entry nodes.", &h);
    }
}
