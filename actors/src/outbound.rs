//! What goes to a live connection, and the queue it waits in: [`Outbound`], the items pushed
//! to a connection (the hub's committed entries and ephemeral frames, presence's frames to the
//! connections watching a user), and each connection's delivery queue, whose sending side
//! ([`OutboundQueue`]) the hub and presence hold and whose receiving side ([`Inbox`]) the
//! connection's session reads. A module of its own, below both: each pushes into the queue
//! without going through the other.
//!
//! The queue holds at most `limits.outbound_queue_len` entries (a large room's run counts as
//! its entries; a run longer than the whole bound still goes into an empty queue).
//!
//! A vector behind a mutex that the session empties whole, rather than a channel: every
//! delivery to every connection passes here, and a channel's per-item bookkeeping (a linked
//! list of slot blocks, an atomic waker woken on every send, a position moved on every receive)
//! was 14 % of the node's time fanning out to a thousand members. Here a push is an uncontended
//! lock and a `Vec::push`, the session takes everything waiting under one lock, and the
//! session's task is woken only when the queue goes from empty to not empty. An idle connection
//! holds no buffer at all (a channel allocates its first block of slots up front).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use protocol::{Cursor, Entry, ServerFrame};

use crate::encoded::SharedRun;

/// What the hub and presence push to a connection.
#[derive(Debug)]
pub enum Outbound {
    /// A committed entry at `cursor` of the connection's user's log.
    Deliver { cursor: Cursor, entry: Arc<Entry> },
    /// Committed entries of a large room, consecutive in one commit: in the room log only,
    /// ordered by their seqs; the same bytes for every recipient, so encoded once.
    RoomRun(Arc<SharedRun>),
    /// A frame to send as is (read-position sync, presence, typing, receipts). Boxed to keep
    /// `Outbound` small: it is the size of every queued item.
    Frame(Box<ServerFrame>),
}

impl Outbound {
    /// How many entries (or frames) it carries: what a connection's queue bound counts.
    pub fn weight(&self) -> usize {
        match self {
            Outbound::RoomRun(run) => run.len(),
            Outbound::Deliver { .. } | Outbound::Frame(_) => 1,
        }
    }
}

/// The sending side; cloned by whoever may push to the connection.
#[derive(Debug)]
pub struct OutboundQueue {
    shared: Arc<Shared>,
    capacity: usize,
}

/// The receiving side, owned by the connection's session.
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
    /// Items taken from the shared vector and not handed out yet (they still count as queued).
    ready: VecDeque<Outbound>,
    /// How long the items of the last refill had waited (from the first of them), until the
    /// session collects it.
    waited: Option<Duration>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Items pushed and not yet handed out by the inbox: what the capacity bounds.
    queued: AtomicUsize,
    /// Live [`OutboundQueue`]s: the inbox ends when none is left.
    senders: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    items: Vec<Outbound>,
    /// The session's task, waiting for the queue to become non-empty.
    waker: Option<Waker>,
    /// When the first of `items` was pushed (`None` while empty).
    since: Option<Instant>,
    /// The inbox is gone: pushes fail.
    closed: bool,
}

/// A connection's delivery queue of `capacity` items.
pub fn outbound_queue(capacity: usize) -> (OutboundQueue, Inbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        queued: AtomicUsize::new(0),
        senders: AtomicUsize::new(1),
    });
    (OutboundQueue { shared: shared.clone(), capacity }, Inbox { shared, ready: VecDeque::new(), waited: None })
}

impl OutboundQueue {
    /// Queue `outbound` unless the queue is full or the connection has ended (then it is
    /// handed back).
    pub fn try_send(&self, outbound: Outbound) -> Result<(), Outbound> {
        match self.try_send_all(std::iter::once(outbound)) {
            (_, None) => Ok(()),
            (_, Some(refused)) => Err(refused),
        }
    }

    /// Queue `outbounds` in order under one lock, waking the session at most once: as many as
    /// fit (all, unless the queue fills up or the connection has ended). Returns how many
    /// entries were queued, and the first item that was not (the rest after it are dropped);
    /// `None` when all were.
    pub fn try_send_all(&self, mut outbounds: impl Iterator<Item = Outbound>) -> (u64, Option<Outbound>) {
        let (queued, refused, waker) = {
            let mut state = self.shared.state.lock();
            if state.closed {
                return (0, outbounds.next());
            }
            let before = state.items.len();
            // Only pushes increase the count, and they hold the lock; the session may hand
            // items out meanwhile, which only lowers it: the check cannot pass the capacity.
            let held = self.shared.queued.load(Ordering::Acquire);
            let mut queued = 0;
            let mut refused = None;
            for outbound in outbounds {
                let weight = outbound.weight();
                if !self.fits(weight, held + queued) {
                    refused = Some(outbound);
                    break;
                }
                queued += weight;
                state.items.push(outbound);
            }
            if before == 0 && state.items.len() > before {
                state.since = Some(Instant::now());
            }
            self.shared.queued.fetch_add(queued, Ordering::AcqRel);
            (queued as u64, refused, if state.items.len() > before { state.waker.take() } else { None })
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        (queued, refused)
    }

    /// Whether an item of `weight` entries fits beside the `held` ones: within the capacity,
    /// or alone in an empty queue (a run of one commit longer than the whole capacity still
    /// goes out live, rather than every such run sending the connection to the store).
    fn fits(&self, weight: usize, held: usize) -> bool {
        held + weight <= self.capacity || held == 0
    }
}

impl Clone for OutboundQueue {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        OutboundQueue { shared: self.shared.clone(), capacity: self.capacity }
    }
}

impl Drop for OutboundQueue {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a waiting inbox must wake to see that nothing more can come.
            let waker = self.shared.state.lock().waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl Inbox {
    /// The next item, waiting for one if the queue is empty. `None` once it is empty and no
    /// sender is left (the hub keeps one while the connection is registered).
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            if let Some(outbound) = self.take(Some(cx.waker())) {
                return Poll::Ready(Some(outbound));
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.take(None)
    }

    /// How long the items taken from the queue since the last call had waited there, from
    /// the first of them until the session took them (for `palaver_delivery_wait_seconds`).
    pub fn take_wait(&mut self) -> Option<Duration> {
        self.waited.take()
    }

    /// Hand out the next item, refilling from the shared vector when the local one is empty;
    /// when both are, leave `waker` to be woken by the next push.
    fn take(&mut self, waker: Option<&Waker>) -> Option<Outbound> {
        if self.ready.is_empty() {
            let mut state = self.shared.state.lock();
            if state.items.is_empty() {
                if let Some(waker) = waker {
                    match &mut state.waker {
                        Some(current) if current.will_wake(waker) => {}
                        slot => *slot = Some(waker.clone()),
                    }
                }
                return None;
            }
            self.ready = VecDeque::from(std::mem::take(&mut state.items));
            self.waited = state.since.take().map(|since| since.elapsed());
        }
        let outbound = self.ready.pop_front()?;
        self.shared.queued.fetch_sub(outbound.weight(), Ordering::AcqRel);
        Some(outbound)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: an item may hold the last reference to a large entry.
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::ServerFrame;

    use super::*;

    fn frame(seq: u64) -> Outbound {
        Outbound::Frame(Box::new(ServerFrame::Read { room: "r".into(), seq }))
    }

    fn seq_of(outbound: Outbound) -> u64 {
        match outbound {
            Outbound::Frame(frame) => match *frame {
                ServerFrame::Read { seq, .. } => seq,
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn items_come_out_in_order_and_the_capacity_counts_until_handed_out() {
        let (queue, mut inbox) = outbound_queue(3);
        for seq in 1..=3 {
            queue.try_send(frame(seq)).expect("room for three");
        }
        assert!(queue.try_send(frame(4)).is_err(), "full at three");
        assert_eq!(inbox.try_recv().map(seq_of), Some(1));
        // Two are still queued (taken from the shared vector but not handed out): one more fits.
        queue.try_send(frame(4)).expect("room for one more");
        assert!(queue.try_send(frame(5)).is_err(), "full again");
        let rest: Vec<u64> = std::iter::from_fn(|| inbox.try_recv()).map(seq_of).collect();
        assert_eq!(rest, [2, 3, 4]);
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn a_batch_push_queues_in_order_what_fits_and_wakes_the_receiver_once() {
        let (queue, mut inbox) = outbound_queue(5);
        queue.try_send(frame(1)).expect("room");
        assert_eq!(sent(queue.try_send_all((2..=7).map(frame))), (4, false), "five fit, the first was already queued");
        let got: Vec<u64> = std::iter::from_fn(|| inbox.try_recv()).map(seq_of).collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);

        // A receiver waiting on the empty queue is woken once for the whole batch.
        let wakes = Arc::new(CountingWaker::default());
        let waker = Waker::from(wakes.clone());
        assert!(inbox.take(Some(&waker)).is_none());
        assert_eq!(sent(queue.try_send_all((6..=8).map(frame))), (3, true));
        assert_eq!(wakes.0.load(Ordering::Acquire), 1);
        let got: Vec<u64> = std::iter::from_fn(|| inbox.try_recv()).map(seq_of).collect();
        assert_eq!(got, [6, 7, 8]);

        drop(inbox);
        assert_eq!(sent(queue.try_send_all((9..=10).map(frame))), (0, false), "the connection has ended");
    }

    /// A push's outcome as (entries queued, all of them queued).
    fn sent((queued, refused): (u64, Option<Outbound>)) -> (u64, bool) {
        (queued, refused.is_none())
    }

    fn run(first: u64, len: u64) -> Outbound {
        let entries = (first..first + len)
            .map(|seq| {
                Arc::new(crate::encoded::SharedEntry::new(protocol::Entry {
                    room: "r".into(),
                    seq,
                    id: format!("m{seq}"),
                    from: "ann".into(),
                    kind: protocol::EntryKind::Text,
                    user: None,
                    body: String::new(),
                    ts: 0,
                    ..Default::default()
                }))
            })
            .collect();
        Outbound::RoomRun(Arc::new(crate::encoded::SharedRun::new(entries)))
    }

    #[test]
    fn a_run_counts_as_its_entries_and_a_long_one_still_fits_an_empty_queue() {
        let (queue, mut inbox) = outbound_queue(4);
        assert_eq!(sent(queue.try_send_all([run(1, 3)].into_iter())), (3, true));
        assert_eq!(sent(queue.try_send_all([run(4, 2)].into_iter())), (0, false), "3 + 2 entries pass the bound of 4");
        queue.try_send(frame(9)).expect("one more entry fits");
        assert!(queue.try_send(frame(10)).is_err(), "full at four entries");
        assert!(matches!(inbox.try_recv(), Some(Outbound::RoomRun(_))));
        // Handing out the run frees its three entries at once.
        assert_eq!(sent(queue.try_send_all([frame(11), frame(12), frame(13), frame(14)].into_iter())), (3, false));
        while inbox.try_recv().is_some() {}

        // A run longer than the whole bound goes into an empty queue, and only there.
        assert_eq!(sent(queue.try_send_all([run(20, 6)].into_iter())), (6, true));
        assert!(queue.try_send(frame(15)).is_err(), "nothing beside it");
        assert!(matches!(inbox.try_recv(), Some(Outbound::RoomRun(run)) if run.len() == 6));
        queue.try_send(frame(16)).expect("empty again");
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[test]
    fn a_take_reports_how_long_its_items_waited_from_the_first() {
        let (queue, mut inbox) = outbound_queue(8);
        assert_eq!(inbox.take_wait(), None);
        queue.try_send(frame(1)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(sent(queue.try_send_all([frame(2), frame(3)].into_iter())), (2, true));
        assert_eq!(seq_of(inbox.try_recv().unwrap()), 1);
        let waited = inbox.take_wait().expect("a refill reports its wait");
        assert!(waited >= Duration::from_millis(30), "timed from the first item: {waited:?}");
        // Handed out from the same refill: no second report.
        assert_eq!(seq_of(inbox.try_recv().unwrap()), 2);
        assert_eq!(inbox.take_wait(), None);
        assert_eq!(seq_of(inbox.try_recv().unwrap()), 3);
        // The next refill is timed from its own first item.
        assert_eq!(sent(queue.try_send_all([frame(4)].into_iter())), (1, true));
        assert_eq!(seq_of(inbox.try_recv().unwrap()), 4);
        assert!(inbox.take_wait().expect("a second refill") < Duration::from_millis(30));
    }

    #[test]
    fn a_push_after_the_inbox_is_gone_is_handed_back() {
        let (queue, inbox) = outbound_queue(8);
        drop(inbox);
        assert_eq!(queue.try_send(frame(1)).map_err(seq_of), Err(1));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_push_and_sees_the_senders_go() {
        let (queue, mut inbox) = outbound_queue(8);
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(outbound) = inbox.recv().await {
                got.push(seq_of(outbound));
            }
            got
        });
        for seq in 1..=100 {
            queue.try_send(frame(seq)).expect("the receiver keeps up within eight");
            if seq % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while queue.shared.queued.load(Ordering::Acquire) >= 8 {
                tokio::task::yield_now().await;
            }
        }
        while queue.shared.queued.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(queue);
        // The receiver is parked on an empty queue: the last sender's drop wakes it to end.
        let got = tokio::time::timeout(Duration::from_secs(1), receiver).await;
        match got {
            Ok(got) => assert_eq!(got.expect("receiver"), (1..=100).collect::<Vec<_>>()),
            Err(_) => panic!("the receiver did not see the senders go"),
        }
    }
}
