//! The room actor: the single writer of one room's log on this node.
//!
//! Spawned by the hub on the first command for a room, it claims the room in the store (a new
//! owner epoch) and then applies commands one at a time, in mailbox order: each is one fenced
//! store append, then a delivery of the committed entry to the members' live connections, then
//! the reply. One actor per room makes the room's order the mailbox order; the epoch makes a
//! stale actor (another node took the room over) fail instead of writing.
//!
//! It holds no state the store does not have, so it stops after `limits.room_idle_ms` without
//! work and is spawned again when needed. Local-only (shared/DESIGN.md §3): rooms are never
//! registered with the cluster; the hub addresses them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::EntryKind;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{debug, info_span, warn, Instrument};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::names::now_ms;
use crate::store::{AppendRequest, Appended, Epoch, StoreError};

/// What a session asks a room to append; the room adds epoch, time and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCommand {
    pub kind: EntryKind,
    pub from: String,
    pub id: String,
    pub user: Option<String>,
    pub body: String,
}

/// Messages of the room actor.
pub enum RoomMessage {
    /// Append an entry; the reply carries the committed entry (or the original, for a retried
    /// message id) or the store's refusal.
    Append(AppendCommand, RpcReplyPort<Result<Appended, StoreError>>),
    /// Periodic: stop if idle for `limits.room_idle_ms`.
    IdleCheck,
}

// Local-only (never serialized): with ractor's `cluster` feature on (ractor_cluster needs it),
// message types opt in to `Message` explicitly; the defaults keep this one off the wire.
impl ractor::Message for RoomMessage {}

pub struct RoomArgs {
    pub hub: Arc<Hub>,
    pub room: String,
}

pub struct RoomState {
    hub: Arc<Hub>,
    room: String,
    epoch: Epoch,
    last_active: Instant,
    idle_timer: JoinHandle<()>,
}

pub struct RoomActor;

impl Actor for RoomActor {
    type Msg = RoomMessage;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMessage>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let RoomArgs { hub, room } = args;
        let epoch = hub.store.claim_room(&room, &hub.node).await?;
        debug!(room, epoch, "room claimed");
        let idle = Duration::from_millis(hub.limits.room_idle_ms);
        let idle_timer = myself.send_interval(idle / 4 + Duration::from_millis(1), || RoomMessage::IdleCheck);
        Metrics::gauge(&hub.metrics.rooms_active, 1);
        Ok(RoomState { hub, room, epoch, last_active: Instant::now(), idle_timer })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMessage>,
        message: RoomMessage,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomMessage::Append(command, reply) => {
                state.last_active = Instant::now();
                let span = info_span!("room", room = %state.room, epoch = state.epoch);
                let outcome = append(state, command).instrument(span).await;
                if let Err(StoreError::Fenced { current, .. }) = &outcome {
                    // Another owner took the room: this actor must never write again.
                    warn!(room = %state.room, epoch = state.epoch, current, "room fenced; stopping its actor");
                    Metrics::inc(&state.hub.metrics.fenced_appends_total);
                    let _ = reply.send(Err(StoreError::Unavailable(format!("room `{}` moved; retry", state.room))));
                    myself.stop(Some("fenced".into()));
                    return Ok(());
                }
                let _ = reply.send(outcome);
            }
            RoomMessage::IdleCheck => {
                if state.last_active.elapsed() >= Duration::from_millis(state.hub.limits.room_idle_ms) {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<RoomMessage>, state: &mut RoomState) -> Result<(), ActorProcessingErr> {
        state.idle_timer.abort();
        state.hub.forget_room(&state.room, myself.get_id());
        Metrics::gauge(&state.hub.metrics.rooms_active, -1);
        Ok(())
    }
}

/// One fenced append, then delivery to live members.
async fn append(state: &RoomState, command: AppendCommand) -> Result<Appended, StoreError> {
    let hub = &state.hub;
    let request = AppendRequest {
        room: state.room.clone(),
        epoch: state.epoch,
        kind: command.kind,
        from: command.from,
        id: command.id,
        user: command.user,
        body: command.body,
        ts: now_ms(),
        limits: hub.limits.membership(),
    };
    let appended = hub.store.append(request).await.inspect_err(|err| {
        if matches!(err, StoreError::Unavailable(_) | StoreError::Backend(_)) {
            Metrics::inc(&hub.metrics.store_errors_total);
            warn!(room = %state.room, error = %err, "append failed");
        }
    })?;
    if appended.duplicate {
        Metrics::inc(&hub.metrics.duplicate_sends_total);
    } else {
        Metrics::inc(&hub.metrics.entries_appended_total);
        hub.deliver(&appended.delivery);
    }
    Ok(appended)
}
