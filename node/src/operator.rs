//! Operator actions over HTTP, next to the read-only `/cluster` view.
//!
//! `POST /cluster/forget?node=NAME` makes the cluster forget a node that is gone for good (a
//! host lost, a node killed and never coming back): until then it counts towards the quorum,
//! and enough such nodes stop the cluster from serving. It is authorised by the cluster cookie
//! (`Authorization: Bearer <cookie>`): whoever holds the cookie can already join nodes to the
//! cluster, so it grants nothing new, and it needs no second secret to manage.

use actors::hub::Hub;
use serde_json::json;

/// Answer `POST /cluster/forget`: (HTTP status, JSON body).
pub fn forget(hub: &Hub, query: Option<&str>, authorization: Option<&str>) -> (u16, serde_json::Value) {
    let Some(cluster) = hub.cluster() else {
        return (404, json!({"error": "this node is not in a cluster (cluster.enabled is false)"}));
    };
    let token = authorization.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
    if !constant_time_eq(token.as_bytes(), cluster.settings.cookie.as_bytes()) {
        return (401, json!({"error": "send the cluster cookie as `Authorization: Bearer <cookie>`"}));
    }
    let node = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("node="));
    let Some(node) = node.filter(|node| !node.is_empty()) else {
        return (400, json!({"error": "name the node: /cluster/forget?node=NAME"}));
    };
    match cluster.forget(node) {
        Ok(()) => {
            let view = cluster.view();
            (200, json!({"forgotten": node, "live": view.live, "known": view.known, "serving": view.serving}))
        }
        Err(message) => (409, json!({"error": message})),
    }
}

/// Compare secrets without a timing side channel on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secrets_compare_by_value() {
        assert!(constant_time_eq(b"cookie-cookie-16", b"cookie-cookie-16"));
        assert!(!constant_time_eq(b"cookie-cookie-16", b"cookie-cookie-17"));
        assert!(!constant_time_eq(b"cookie", b"cookie-cookie-16"));
    }
}
