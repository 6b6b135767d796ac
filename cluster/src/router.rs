//! The router: the one remotable actor of a node, and the only one other nodes talk to.
//!
//! It joins two process groups, [`ROUTERS_GROUP`](super::ROUTERS_GROUP) (every router: where
//! heartbeats go) and `palaver.router.<node>` (how another node finds this one by name);
//! ractor_cluster mirrors both to every linked node. Its message type is
//! [`RouterMessage`], encoded by [`super::wire`]; nothing else of this node is visible to
//! other nodes.
//!
//! It does little itself, so that a slow room or a flood of deliveries can never delay a
//! heartbeat: appends go to the cluster's in-order forwarding task, deliveries to the
//! cluster's bounded fan-out queue, replies to the waiting request, heartbeats to membership,
//! presence to the hub's presence table.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::warn;

use super::wire::{self, RouterMessage};
use super::Cluster;
use actors::hub::Hub;
use actors::metrics::Metrics;

pub struct RouterActor;

pub struct RouterState {
    pub cluster: Arc<Cluster>,
    pub hub: Arc<Hub>,
}

impl Actor for RouterActor {
    type Msg = RouterMessage;
    type State = RouterState;
    type Arguments = RouterState;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMessage>,
        state: RouterState,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMessage>,
        message: RouterMessage,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RouterMessage::Heartbeat(hb) => state.cluster.on_heartbeat(&hb),
            RouterMessage::Append(append) => {
                // Unbounded, but bounded in practice: each origin node caps the requests it
                // has in flight (`cluster.max_pending_requests`).
                let _ = state.cluster.forwarded.send(append);
            }
            RouterMessage::Reply(reply) => state.cluster.complete(reply),
            RouterMessage::Deliver(bytes) => match wire::decode_delivery(&bytes) {
                Ok(delivery) => {
                    Metrics::inc(&state.hub.metrics().cluster_deliveries_received_total);
                    state.cluster.accept_delivery(&state.hub, delivery);
                }
                Err(reason) => invalid(state, &reason),
            },
            RouterMessage::DeliverRun(bytes) => match wire::decode_run(&bytes) {
                Ok(run) => {
                    Metrics::inc(&state.hub.metrics().cluster_delivery_runs_received_total);
                    Metrics::add(&state.hub.metrics().cluster_deliveries_received_total, run.len() as u64);
                    state.cluster.accept_run(&state.hub, run);
                }
                Err(reason) => invalid(state, &reason),
            },
            RouterMessage::Presence(batch) => state.hub.presence().on_batch(state.hub.as_ref(), batch),
            RouterMessage::PresenceWant(from) => state.hub.presence().on_want(state.hub.as_ref(), &from),
            RouterMessage::Push(bytes) => match wire::decode_push(&bytes) {
                Ok(push) => state.hub.push_local(&push.users, &push.frame),
                Err(reason) => invalid(state, &reason),
            },
            RouterMessage::Invalid(reason) => invalid(state, &reason),
        }
        Ok(())
    }
}

fn invalid(state: &RouterState, reason: &str) {
    Metrics::inc(&state.hub.metrics().cluster_invalid_messages_total);
    warn!(node = %state.cluster.name(), reason, "dropped an inter-node message that did not decode");
}
