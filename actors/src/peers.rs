//! The other nodes, as the hub and presence see them: the seam between them and the cluster.
//!
//! The hub reaches rooms and users by id and never asks where they live. On a single node there
//! are no peers and every room is local. In a cluster, `cluster::Cluster` implements [`Peers`]
//! and the cluster's start hands it to the hub (`Hub::set_peers`):
//! the hub routes appends, broadcasts committed entries and sends ephemeral frames through
//! these calls alone, and presence exchanges its batches through them. Neither imports the
//! cluster: the cluster is the layer above (the `cluster` crate, which depends on this one),
//! which calls into the hub (forwarded appends, deliveries from other nodes) and implements
//! this trait, so a change inside the cluster (its wire format, its router, its links) never
//! reaches the hub's code.
//!
//! Presence's part of the trait (batches, snapshots, liveness, incarnation) is
//! [`PresencePeers`], declared in `presence` beside the batch it carries: presence reaches the
//! other nodes through it without importing this module, which imports presence and room for
//! the types its calls carry.

use protocol::ServerFrame;
use tokio::sync::oneshot;

use crate::presence::PresencePeers;
use crate::room::AppendCommand;
use crate::store::{Appended, Delivery, StoreError};

/// Where a room's commands go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote(String),
    /// This node serves no rooms right now (joining, no quorum, leaving).
    Unavailable(String),
}

/// What this node can ask of the others (presence's part is [`PresencePeers`]).
pub trait Peers: PresencePeers {
    /// Where commands for `room` go now, by this node's view of the live set.
    fn route(&self, room: &str) -> Route;

    /// Send an append to `owner`, the node that owns `room`; its outcome arrives on the
    /// returned receiver (or the sender is dropped on timeout or when `owner` dies, which the
    /// session reports as `unavailable`, and the client retries with the same message id).
    fn forward_append(
        &self,
        owner: &str,
        room: &str,
        command: AppendCommand,
    ) -> Result<oneshot::Receiver<Result<Appended, StoreError>>, StoreError>;

    /// Hand committed entries (a room's, in commit order) to the other live nodes where a
    /// recipient may have a connection, which fan them out to their own connections.
    fn send_deliveries(&self, deliveries: &[&Delivery]);

    /// Send an ephemeral frame for `users` to those of `nodes` that are live; how many did
    /// take it.
    fn push(&self, nodes: &[String], users: &[String], frame: &ServerFrame) -> u64;

    /// Why this node serves no rooms now (joining, no quorum, leaving), or `None` if it does.
    fn not_serving(&self) -> Option<String>;
}
