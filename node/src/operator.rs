//! Operator actions on the admin port (node/src/admin.rs), next to the read-only `/cluster`
//! view.
//!
//! `POST /cluster/forget?node=NAME` makes the cluster forget a node that is gone for good (a
//! host lost, a node killed and never coming back): until then it counts towards the quorum,
//! and enough such nodes stop the cluster from serving. With an admin token set, the admin port
//! has checked it already. Without one, the cluster cookie authorises it
//! (`Authorization: Bearer <cookie>`), so a change to the cluster is never open to every local
//! process: whoever holds the cookie can already join nodes to the cluster, so it grants
//! nothing new.

use ::cluster::Cluster;
use serde_json::json;

/// Answer `POST /cluster/forget?node=NAME`: (HTTP status, JSON body). `token_checked`: the
/// admin port checked its token, and no cookie is needed.
pub fn forget(
    cluster: Option<&Cluster>,
    node: Option<&str>,
    token_checked: bool,
    authorization: Option<&str>,
) -> (u16, serde_json::Value) {
    let Some(cluster) = cluster else {
        return (404, json!({"error": "this node is not in a cluster (cluster.enabled is false)"}));
    };
    let cookie = authorization.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("");
    if !token_checked && !constant_time_eq(cookie.as_bytes(), cluster.settings.cookie.as_bytes()) {
        return (401, json!({"error": "send the cluster cookie as `Authorization: Bearer <cookie>`"}));
    }
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
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
