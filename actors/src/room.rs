//! The room actor: the single writer of one room's log on this node.
//!
//! Spawned by the hub on the first command for a room, it claims the room in the store (a new
//! owner epoch) and then applies commands in mailbox order: each is one fenced store append,
//! then a delivery of the committed entry to the members' live connections, then the reply (a
//! batch's entries are delivered together, before the batch's replies; see below). One
//! actor per room makes the room's order the mailbox order; the epoch makes a stale actor
//! (another node took the room over) fail instead of writing.
//!
//! The appends themselves run in the actor's **committer** task, which takes every command
//! waiting when it is free and hands them to the store as one batch ([`Store::append_batch`]):
//! a busy room pays one commit for many messages instead of one each, while the order, the
//! per-command outcome and "delivered only once committed" stay as they were.
//!
//! [`Store::append_batch`]: crate::store::Store::append_batch
//!
//! The committer also keeps the room's **member list**: loaded from the store before its first
//! batch, then kept current from its own committed joins and leaves (nobody else changes the
//! room's membership while its epoch holds: any other writer is fenced). It names the
//! recipients of every entry of a large room, which the store does not (reading every member
//! per message cost more than anything else the store did for it), as one shared list that
//! changes only with the membership.
//!
//! Room actors and their committers run on the rooms' own thread, not among the sessions on
//! the node's main runtime (`room/runtime.rs` says why and what it bought).
//!
//! It holds no state the store does not have, so it stops after `limits.room_idle_ms` without
//! work and is spawned again when needed. Local-only (docs/DESIGN.md §3): rooms are never
//! registered with the cluster; the hub addresses them.
//!
//! The room reaches its node only through [`RoomHost`], which the hub implements: the node's
//! name, store, limits and metrics, and the three calls back (deliver a batch's entries, push
//! an ephemeral frame, leave the registry). So the room imports nothing of the hub, which
//! spawns it and sits above it. A batch goes through the trait a few times (its accessors
//! once each, then one delivery), never once per entry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{EntryKind, MessageReactions, ReactionTotal, ServerFrame};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::names::now_ms;
use crate::store::{AppendRequest, Appended, Delivery, EntryDetails, Epoch, Recipients, Store, StoreError};

/// What a session asks a room to append; the room adds epoch, time and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCommand {
    pub kind: EntryKind,
    pub from: String,
    pub id: String,
    pub user: Option<String>,
    pub body: String,
    /// The message acted on, replied to, and the members mentioned.
    pub details: EntryDetails,
}

/// Messages of the room actor.
pub enum RoomMessage {
    /// Append an entry; the reply carries the committed entry (or the original, for a retried
    /// message id) or the store's refusal.
    Append(Box<AppendCommand>, RpcReplyPort<Result<Appended, StoreError>>, Handed),
    /// Periodic: stop if idle for `limits.room_idle_ms`.
    IdleCheck,
    /// Tests only: end the committer task as a panic would, to check that the actor follows it.
    #[cfg(test)]
    KillCommitter,
}

// Local-only (never serialized): with ractor's `cluster` feature on (ractor_cluster needs it),
// message types opt in to `Message` explicitly; the defaults keep this one off the wire.
impl ractor::Message for RoomMessage {}

/// What a room actor needs of the node it runs on; the hub implements it.
pub trait RoomHost: Send + Sync {
    /// This node's name: the owner the room's claim records.
    fn node(&self) -> &str;
    fn store(&self) -> &Arc<dyn Store>;
    fn limits(&self) -> &Limits;
    fn metrics(&self) -> &Metrics;
    /// Hand a batch's committed entries, in commit order, to their recipients' connections
    /// on every node (`Hub::deliver`).
    fn deliver(&self, deliveries: &[&Delivery]);
    /// Hand an ephemeral frame to every connection of `users` (`Hub::push`).
    fn push(&self, users: &[String], frame: ServerFrame);
    /// The room actor `actor` of `room` stopped: drop it from the registry if it is still
    /// the one there.
    fn forget_room(&self, room: &str, actor: ractor::ActorId);
}

pub struct RoomArgs {
    pub host: Arc<dyn RoomHost>,
    pub room: String,
}

/// When and in which request an append was handed to the room.
#[derive(Debug)]
pub struct Handed {
    /// Its wait for the commit counts from here, the actor's mailbox included (the rooms'
    /// thread may be busy committing when it arrives).
    pub at: Instant,
    /// The request's span: the commit and the delivery are its children (exported over OTLP
    /// when `[tracing]` says so; otherwise a disabled span, which costs nothing).
    pub span: tracing::Span,
}

impl Handed {
    pub fn now() -> Handed {
        Handed { at: Instant::now(), span: tracing::Span::current() }
    }
}

/// An append waiting for the committer, with where its outcome goes and when it was handed to the room.
type Pending = (Box<AppendCommand>, RpcReplyPort<Result<Appended, StoreError>>, Handed);

pub struct RoomState {
    host: Arc<dyn RoomHost>,
    room: String,
    last_active: Instant,
    idle_timer: JoinHandle<()>,
    /// To the committer task; dropped when the actor stops, which ends the committer.
    commits: mpsc::UnboundedSender<Pending>,
    /// Set when the actor stops: appends not yet committed are refused from then on.
    stopped: Arc<AtomicBool>,
    /// Ends the committer (tests only: in service it ends with the actor or on its own).
    #[cfg(test)]
    committer: tokio::task::AbortHandle,
}

pub struct RoomActor;

impl Actor for RoomActor {
    type Msg = RoomMessage;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMessage>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let RoomArgs { host, room } = args;
        let epoch = host.store().claim_room(&room, host.node()).await?;
        debug!(room, epoch, "room claimed");
        let idle = Duration::from_millis(host.limits().room_idle_ms);
        let idle_timer = myself.send_interval(idle / 4 + Duration::from_millis(1), || RoomMessage::IdleCheck);
        Metrics::gauge(&host.metrics().rooms_active, 1);
        let (commits, queue) = mpsc::unbounded_channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let committer = Committer {
            host: host.clone(),
            room: room.clone(),
            epoch,
            stopped: stopped.clone(),
            myself: myself.clone(),
            members: None,
            reactions: ReactionCounts::default(),
        };
        // On the rooms' thread, as this actor is (the hub spawns room actors there).
        let committer = tokio::spawn(committer.run(queue));
        #[cfg(test)]
        let committer_abort = committer.abort_handle();
        tokio::spawn(stop_with_committer(committer, myself, room.clone()));
        Ok(RoomState {
            host,
            room,
            last_active: Instant::now(),
            idle_timer,
            commits,
            stopped,
            #[cfg(test)]
            committer: committer_abort,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMessage>,
        message: RoomMessage,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RoomMessage::Append(command, reply, handed) => {
                state.last_active = Instant::now();
                // Unbounded, but bounded in practice: each session has at most
                // `limits.max_inflight_per_connection` requests outstanding.
                if let Err(mpsc::error::SendError((_, reply, _))) = state.commits.send((command, reply, handed)) {
                    // The committer is gone: this actor cannot write any more, so it stops too
                    // and the next command starts a fresh pair (its watcher does the same).
                    let _ = reply.send(Err(StoreError::Unavailable(format!("room `{}` is restarting", state.room))));
                    myself.stop(Some("committer ended".into()));
                }
            }
            #[cfg(test)]
            RoomMessage::KillCommitter => state.committer.abort(),
            RoomMessage::IdleCheck => {
                if state.last_active.elapsed() >= Duration::from_millis(state.host.limits().room_idle_ms) {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<RoomMessage>, state: &mut RoomState) -> Result<(), ActorProcessingErr> {
        state.stopped.store(true, Ordering::Release);
        state.idle_timer.abort();
        state.host.forget_room(&state.room, myself.get_id());
        Metrics::gauge(&state.host.metrics().rooms_active, -1);
        Ok(())
    }
}

/// Supervision of a room: its actor and its committer live and die together. The actor's stop
/// ends the committer (its queue closes); this ends the actor when the committer ends first,
/// which in service only a panic does, so that the next command for the room spawns a new
/// pair (a new claim and epoch) instead of finding an actor that can no longer write.
async fn stop_with_committer(committer: JoinHandle<()>, actor: ActorRef<RoomMessage>, room: String) {
    match committer.await {
        Ok(()) => {}
        Err(err) if err.is_panic() => error!(room, error = %err, "room committer panicked; stopping the room"),
        Err(err) => warn!(room, error = %err, "room committer ended; stopping the room"),
    }
    actor.stop(Some("committer ended".into()));
}

/// The task that runs a room actor's appends, a batch at a time, in the order they arrived.
struct Committer {
    host: Arc<dyn RoomHost>,
    room: String,
    epoch: Epoch,
    stopped: Arc<AtomicBool>,
    myself: ActorRef<RoomMessage>,
    /// The room's members after the last committed entry (`None` until loaded): shared with
    /// the deliveries and the hub's fan-out cache, replaced (copied on write) when it changes.
    members: Option<Arc<Vec<String>>>,
    /// Messages whose reactions were counted (a large room's) since the members were last told.
    reactions: ReactionCounts,
}

/// The messages of a large room whose reaction counts changed, and when the members are told.
/// In a large room a reaction is counted, not logged (`Store::append`), so its members learn
/// counts from a `reactions` frame instead of an entry per reaction: at most one frame per
/// `limits.reaction_flush_ms`, listing every message that changed in it. A thousand members
/// reacting to one message in a second cost each member two frames, not a thousand entries.
#[derive(Default)]
struct ReactionCounts {
    changed: std::collections::BTreeSet<u64>,
    tell_at: Option<tokio::time::Instant>,
}

impl Committer {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Pending>) {
        let max = self.host.limits().room_batch_max.max(1);
        let mut batch: Vec<Pending> = Vec::with_capacity(max);
        loop {
            let next = match self.reactions.tell_at {
                Some(at) => tokio::select! {
                    next = queue.recv() => next,
                    _ = tokio::time::sleep_until(at) => {
                        self.tell_reactions().await;
                        continue;
                    }
                },
                None => queue.recv().await,
            };
            let Some(first) = next else { break };
            batch.push(first);
            // One turn for the other tasks first: commands already on their way (a session
            // handing over a burst of its client's frames, often on the other core) join this
            // batch instead of waiting for the next commit. Bigger batches reach each member's
            // connection as one run (`Hub::deliver`) and so go out in fewer, larger socket
            // writes: +10 % deliveries/s fanning out to a thousand members, for no measurable
            // latency at half the saturation rate (bench/findings.md).
            tokio::task::yield_now().await;
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if self.stopped.load(Ordering::Acquire) {
                // The room moved or went idle while these waited: the next owner takes them.
                for (_, reply, _) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Unavailable(format!("room `{}` moved; retry", self.room))));
                }
                continue;
            }
            if self.commit(&mut batch).await.is_err() {
                // Fenced: another node owns the room now; nothing more is written from here.
                while let Ok((_, reply, _)) = queue.try_recv() {
                    let _ = reply.send(Err(StoreError::Unavailable(format!("room `{}` moved; retry", self.room))));
                }
                return;
            }
        }
        // Stopping (idle or moved): what was counted is told now, not lost with the timer.
        self.tell_reactions().await;
    }

    /// Send the members one `reactions` frame with the current counts of every message whose
    /// reactions were counted since the last one.
    async fn tell_reactions(&mut self) {
        self.reactions.tell_at = None;
        let seqs: Vec<u64> = std::mem::take(&mut self.reactions.changed).into_iter().collect();
        let Some(members) = self.members.clone().filter(|_| !seqs.is_empty()) else { return };
        // No viewer: the frame is the same for every member.
        let counts = match self.host.store().reactions(&self.room, &seqs, "").await {
            Ok(counts) => counts,
            Err(err) => {
                // The counts are stored; members see them in `history`.
                warn!(room = %self.room, error = %err, "reading reaction counts failed; members are not told");
                return;
            }
        };
        let messages = seqs
            .into_iter()
            .zip(counts)
            .map(|(seq, counts)| MessageReactions {
                seq,
                reactions: counts.into_iter().map(|c| ReactionTotal { reaction: c.reaction, count: c.count }).collect(),
            })
            .collect();
        self.host.push(&members, ServerFrame::Reactions { room: self.room.clone(), messages });
    }

    /// Append `batch` (emptying it): deliver the committed entries (in order, together), then
    /// reply to each command.
    /// `Err` if the room turned out to be fenced (every command from there on is refused).
    async fn commit(&mut self, batch: &mut Vec<Pending>) -> Result<(), ()> {
        let host = self.host.clone();
        let (store, limits, metrics) = (host.store(), host.limits(), host.metrics());
        if self.members.is_none() {
            // After the claim, before this owner's first write: the membership this owner
            // continues from.
            match store.members(&self.room).await {
                Ok(members) => self.members = Some(Arc::new(members)),
                Err(err) => {
                    warn!(room = %self.room, error = %err, "reading the room's members failed");
                    Metrics::inc(&metrics.store_errors_total);
                    for (_, reply, _) in batch.drain(..) {
                        let _ = reply.send(Err(StoreError::Unavailable(format!("room `{}`: {err}", self.room))));
                    }
                    return Ok(());
                }
            }
        }
        let now = now_ms();
        let requests = batch
            .iter()
            .map(|(command, _, _)| AppendRequest {
                room: self.room.clone(),
                epoch: self.epoch,
                kind: command.kind,
                from: command.from.clone(),
                id: command.id.clone(),
                user: command.user.clone(),
                body: command.body.clone(),
                ts: now,
                limits: limits.membership(),
                details: command.details.clone(),
                rules: limits.message_rules(),
            })
            .collect();
        let handed_over = Instant::now();
        for (_, _, handed) in batch.iter() {
            metrics.append_wait_seconds.observe(handed_over.saturating_duration_since(handed.at));
        }
        // One span per request, covering the batch's commit and delivery: each request's trace
        // shows the commit it waited for (spans are disabled, and free, unless exported).
        let commit_spans: Vec<tracing::Span> = batch
            .iter()
            .map(|(command, _, handed)| {
                tracing::debug_span!(parent: &handed.span, "palaver.commit", room = %self.room, kind = ?command.kind, batch = batch.len())
            })
            .collect();
        // The committer runs on the rooms' thread, which exists to commit (see `runtime`).
        let outcomes = store.append_batch_on_committing_thread(requests).await;
        metrics.commit_seconds.observe(handed_over.elapsed());
        let mut fenced = false;
        // Replies wait until the batch's entries are delivered (a sender's `sent` never comes
        // before the entry reached the queues), and the entries go to the hub together.
        let mut replies = Vec::with_capacity(batch.len());
        for ((_, reply, _), outcome) in batch.drain(..).zip(outcomes) {
            let outcome = match outcome {
                _ if fenced => Err(StoreError::Unavailable(format!("room `{}` moved; retry", self.room))),
                Err(StoreError::Fenced { current, .. }) => {
                    // Another owner took the room: this actor must never write again.
                    warn!(room = %self.room, epoch = self.epoch, current, "room fenced; stopping its actor");
                    Metrics::inc(&metrics.fenced_appends_total);
                    self.stopped.store(true, Ordering::Release);
                    self.myself.stop(Some("fenced".into()));
                    fenced = true;
                    Err(StoreError::Unavailable(format!("room `{}` moved; retry", self.room)))
                }
                Err(err) => {
                    if matches!(err, StoreError::Unavailable(_) | StoreError::Backend(_)) {
                        Metrics::inc(&metrics.store_errors_total);
                        warn!(room = %self.room, error = %err, "append failed");
                    }
                    Err(err)
                }
                Ok(mut appended) => {
                    if appended.duplicate {
                        Metrics::inc(&metrics.duplicate_sends_total);
                    } else if appended.is_counted() {
                        let target = appended.delivery.entry.target.unwrap_or_default();
                        self.reactions.changed.insert(target);
                        let flush = Duration::from_millis(limits.reaction_flush_ms);
                        self.reactions.tell_at.get_or_insert_with(|| tokio::time::Instant::now() + flush);
                    } else {
                        Metrics::inc(&metrics.entries_appended_total);
                        self.name_recipients(&mut appended.delivery);
                    }
                    debug!(room = %self.room, seq = appended.delivery.entry.seq, "appended");
                    Ok(appended)
                }
            };
            replies.push((reply, outcome));
        }
        let deliveries: Vec<&Delivery> = replies
            .iter()
            .filter_map(|(_, outcome)| match outcome {
                Ok(appended) if !appended.duplicate && !appended.is_counted() => Some(&appended.delivery),
                _ => None,
            })
            .collect();
        {
            let _deliver = commit_spans
                .first()
                .map(|first| tracing::debug_span!(parent: first, "palaver.deliver", entries = deliveries.len()));
            host.deliver(&deliveries);
        }
        drop(commit_spans);
        for (reply, outcome) in replies {
            let _ = reply.send(outcome);
        }
        if fenced {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Follow the membership change a committed entry makes, and name its recipients if the
    /// store did not: the members at commit time, the joiner included and the leaver too (as
    /// the store does for a room that fans out to user logs).
    fn name_recipients(&mut self, delivery: &mut Delivery) {
        let members = self.members.as_mut().expect("members are loaded before the first commit");
        let entry = &delivery.entry;
        let subject = entry.user.as_ref();
        if let (EntryKind::Join, Some(user)) = (entry.kind, subject) {
            Arc::make_mut(members).push(user.clone());
        }
        match &delivery.recipients {
            Recipients::Unnamed => delivery.recipients = Recipients::Members(members.clone()),
            named => debug_assert!(
                same_users(named, members),
                "room {} seq {}: the owner's members {members:?} are not the store's recipients {named:?}",
                self.room,
                entry.seq
            ),
        }
        if let (true, Some(user)) = (entry.kind.ends_membership(), subject) {
            Arc::make_mut(members).retain(|member| member != user);
        }
    }
}

/// Whether `recipients` names exactly `members` (a debug check of the owner's list against the
/// store's, for rooms whose recipients the store names).
fn same_users(recipients: &Recipients, members: &[String]) -> bool {
    let mut named: Vec<&str> = recipients.users().collect();
    let mut known: Vec<&str> = members.iter().map(String::as_str).collect();
    named.sort_unstable();
    known.sort_unstable();
    named == known
}

mod runtime;
#[cfg(test)]
mod tests;

pub use runtime::RoomsRuntime;
