//! The push worker: on the node holding the `push` lease, it reads the push queue, and for
//! each room whose oldest queued entries are `push.delay_ms` old decides who is told
//! ([`super::rule`]), collapses each member's entries into one notification, sends it to each
//! of their devices, and drops the rows once every send was accepted or failed for good. A
//! send to retry (provider down, throttled, timed out) leaves the room's rows queued and
//! pauses the room with a backoff; the devices that did accept it are remembered here so the
//! retry goes to the others only (a takeover by another node resends to all: at least once).
//! It sends the clears reads owe in the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use protocol::{Entry, Platform, RoomKind};
use tracing::{info, warn};

use super::notification::{Notification, NotificationKind};
use super::providers::{Outcome, Providers};
use super::rule;
use super::PushSettings;
use crate::hub::Hub;
use crate::lease::{run_passes, Lease};
use crate::metrics::Metrics;
use crate::names::now_ms;
use crate::store::{DeviceRecord, HistoryPage, OutboxEvent, PushClear, RoomRecord, StoreResult};
use crate::supervise::spawn_restarting;

/// The lease that decides which node sends.
const LEASE: &str = "push";

/// Queue rows read per pass.
const ROWS_PER_PASS: u32 = 2_000;

/// Clears read per pass.
const CLEARS_PER_PASS: u32 = 500;

/// Start this node's push worker (unless `push.send` is off); it ends when the hub shuts down.
/// An error names the provider setting that keeps it from starting.
pub fn start(hub: &Arc<Hub>, settings: PushSettings) -> Result<(), String> {
    if !settings.send {
        return Ok(());
    }
    let providers = Providers::new(&settings.providers(), Duration::from_millis(settings.timeout_ms))?;
    let any_provider = Platform::ALL.into_iter().any(|platform| providers.is_configured(platform));
    if !any_provider {
        info!("push: no provider is configured ([push.fcm], [push.apns], [push.webpush], [push.webhook]); queued messages are dropped unsent");
    }
    let worker = Arc::new(Worker {
        any_provider,
        hub: hub.clone(),
        lease: Lease::new(LEASE, settings.lease_ms),
        settings,
        providers,
        paused: Mutex::new(HashMap::new()),
        next_from: Mutex::new(String::new()),
        accepted: Mutex::new(HashMap::new()),
    });
    spawn_restarting("push: worker", move || {
        let worker = worker.clone();
        async move { worker.run().await }
    });
    Ok(())
}

/// Why sending a notification has to be tried again.
struct Retry {
    reason: String,
    after: Option<Duration>,
}

/// A room (or the clears) in backoff after failures in a row: until when, and how many.
struct Paused {
    until: Instant,
    failures: u32,
}

/// The key under which the clears' backoff is kept (room ids never start with `~`).
const CLEARS: &str = "~clears";

struct Worker {
    /// For the store, presence, metrics, the node's name and its shutdown.
    hub: Arc<Hub>,
    settings: PushSettings,
    providers: Providers,
    /// Whether any platform is configured on this node; if none, the queue is only emptied.
    any_provider: bool,
    lease: Lease,
    /// Rooms in backoff.
    paused: Mutex<HashMap<String, Paused>>,
    /// The room the next pass reads the queue from (`""`: the first). Rows of rooms not due
    /// yet stay queued, so reading from the start every time would never get past a page of
    /// them; a full page moves the next pass on to where it ended.
    next_from: Mutex<String>,
    /// Per room with rows still queued after a failed pass: (device id, seq) sends the provider
    /// accepted, not to be repeated by the retry.
    accepted: Mutex<HashMap<String, HashSet<(String, u64)>>>,
}

impl Worker {
    async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.settings.poll_ms);
        run_passes(&self.hub, poll, "push", || self.pass()).await;
    }

    /// One look at the queue and the clears; whether anything was done (then look again at once).
    async fn pass(&self) -> StoreResult<bool> {
        let held = self.lease.hold(self.hub.store().as_ref(), self.hub.node()).await?;
        Metrics::set(&self.hub.metrics().push_sending, i64::from(held));
        if !held {
            return Ok(false);
        }
        let cleared = self.clears().await?;
        let from = self.next_from.lock().clone();
        let rows = self.hub.store().push_queue(&from, ROWS_PER_PASS).await?;
        *self.next_from.lock() = next_from(&rows);
        let mut rooms: Vec<(String, Vec<u64>)> = Vec::new();
        for OutboxEvent { stream, seq, .. } in rows {
            match rooms.last_mut() {
                Some((room, seqs)) if *room == stream => seqs.push(seq),
                _ => rooms.push((stream, vec![seq])),
            }
        }
        let done: Vec<StoreResult<bool>> = stream::iter(rooms)
            .map(|(room, seqs)| self.room(room, seqs))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut busy = cleared;
        for outcome in done {
            busy |= outcome?;
        }
        Ok(busy)
    }

    fn is_paused(&self, key: &str) -> bool {
        self.paused.lock().get(key).is_some_and(|paused| Instant::now() < paused.until)
    }

    /// Put `key` off after a failure: doubling from `retry_base_ms`, at most `retry_max_ms`,
    /// with jitter of up to a quarter either way, or what the provider asked for if longer.
    fn pause(&self, key: &str, retry: &Retry) {
        let mut paused = self.paused.lock();
        let failures = paused.get(key).map_or(0, |p| p.failures).saturating_add(1);
        let doubled = self.settings.retry_base_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(30));
        let base = doubled.min(self.settings.retry_max_ms) as f64 * rand::random_range(0.75..1.25);
        let wait = retry.after.unwrap_or_default().max(Duration::from_millis(base as u64));
        warn!(key, failures, wait_ms = wait.as_millis() as u64, reason = retry.reason, "push: will retry");
        paused.insert(key.to_owned(), Paused { until: Instant::now() + wait, failures });
    }

    /// Push what is due of `room`'s queued entries `seqs`; whether any row was done.
    async fn room(&self, room: String, seqs: Vec<u64>) -> StoreResult<bool> {
        let (room, seqs) = (room.as_str(), seqs.as_slice());
        if !self.any_provider {
            // Nothing could be sent: keep the queue from growing, and read nothing for it.
            self.hub.store().push_done(room, seqs[seqs.len() - 1], &[]).await?;
            return Ok(true);
        }
        if self.is_paused(room) {
            return Ok(false);
        }
        let now = now_ms();
        let entries = self.entries(room, seqs).await?;
        // When the room's oldest queued entry comes due, every entry queued after it goes with
        // it: one notification for a burst. That is sound because the rule needs a member to
        // have been away since before the oldest one, so away for the whole delay already.
        let oldest = entries.get(&seqs[0]);
        if oldest.is_some_and(|entry| entry.ts.saturating_add(self.settings.delay_ms) > now) {
            return Ok(false);
        }
        let through = seqs[seqs.len() - 1];
        let due: Vec<&Entry> = seqs.iter().filter_map(|seq| entries.get(seq)).collect();
        let Some(record) = self.hub.store().room(room).await? else {
            // The room is gone (never, today): nothing to tell anyone.
            self.hub.store().push_done(room, through, &[]).await?;
            return Ok(true);
        };
        let members = self.hub.store().push_members(room).await?;
        let mut told: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for member in &members {
            let presence = self.hub.presence().get(&member.user);
            let theirs: Vec<Entry> = due
                .iter()
                .filter(|entry| rule::tells(member, entry, record.kind, &presence, now))
                .map(|entry| (*entry).clone())
                .collect();
            if !theirs.is_empty() {
                told.insert(member.user.clone(), theirs);
            }
        }
        let record = &record;
        let sends: Vec<Result<Option<(String, u64)>, Retry>> = stream::iter(told)
            .map(|(user, entries)| self.alert(record, user, entries))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut recorded = Vec::new();
        let mut retry = None;
        for send in sends {
            match send {
                Ok(Some(told)) => recorded.push(told),
                Ok(None) => {}
                Err(why) => retry = Some(why),
            }
        }
        if let Some(retry) = retry {
            self.pause(room, &retry);
            return Ok(false);
        }
        self.hub.store().push_done(room, through, &recorded).await?;
        self.accepted.lock().remove(room);
        self.paused.lock().remove(room);
        Ok(true)
    }

    /// The entries `seqs` point to, read from the room log.
    async fn entries(&self, room: &str, seqs: &[u64]) -> StoreResult<HashMap<u64, Entry>> {
        let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
        let mut entries = HashMap::with_capacity(seqs.len());
        let mut after = first - 1;
        while after < last {
            let span = u32::try_from(last - after).unwrap_or(u32::MAX).min(ROWS_PER_PASS);
            let (page, _) = self.hub.store().history(room, HistoryPage::After(after), span).await?;
            let Some(end) = page.last().map(|e| e.seq) else { break };
            after = end;
            entries.extend(page.into_iter().filter(|e| seqs.binary_search(&e.seq).is_ok()).map(|e| (e.seq, e)));
        }
        Ok(entries)
    }

    /// Tell `user` of `entries` of `room` on every device; the (user, seq) to record as told,
    /// or why it has to be tried again.
    async fn alert(
        &self,
        room: &RoomRecord,
        user: String,
        entries: Vec<Entry>,
    ) -> Result<Option<(String, u64)>, Retry> {
        let latest = &entries[entries.len() - 1];
        let devices = self.devices(&user).await?;
        if devices.is_empty() {
            return Ok(None);
        }
        let note = Notification {
            kind: NotificationKind::Alert,
            room: room.id.clone(),
            room_name: room_name(room),
            sender: Some(latest.from.clone()),
            preview: None,
            count: entries.len() as u32,
            seq: latest.seq,
            badge: self.badge(&user).await?,
        };
        let previewed = Notification { preview: Some(super::notification::preview_of(latest)), ..note.clone() };
        let mut retry = None;
        for device in &devices {
            let key = (device.id.clone(), latest.seq);
            if self.accepted.lock().get(&room.id).is_some_and(|sent| sent.contains(&key)) {
                continue;
            }
            let shown = if self.settings.previews && device.preview { &previewed } else { &note };
            match self.send(&user, device, shown).await {
                Ok(()) => {
                    self.accepted.lock().entry(room.id.clone()).or_default().insert(key);
                    let due = latest.ts.saturating_add(self.settings.delay_ms);
                    let late = now_ms().saturating_sub(due);
                    self.hub.metrics().push_latency_seconds.observe(Duration::from_millis(late));
                }
                Err(why) => retry = Some(why),
            }
        }
        match retry {
            Some(why) => Err(why),
            None => Ok(Some((user, latest.seq))),
        }
    }

    /// Send the clears reads owe; whether any was done.
    async fn clears(&self) -> StoreResult<bool> {
        if self.is_paused(CLEARS) {
            return Ok(false);
        }
        let clears = self.hub.store().push_clears(CLEARS_PER_PASS).await?;
        if clears.is_empty() {
            return Ok(false);
        }
        let sent: Vec<Result<PushClear, Retry>> = stream::iter(clears)
            .map(|clear| self.clear(clear))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut done = Vec::new();
        let mut retry = None;
        for outcome in sent {
            match outcome {
                Ok(clear) => done.push(clear),
                Err(why) => retry = Some(why),
            }
        }
        if let Some(retry) = retry {
            self.pause(CLEARS, &retry);
        } else {
            self.paused.lock().remove(CLEARS);
        }
        self.hub.store().push_cleared(&done).await?;
        Ok(!done.is_empty())
    }

    async fn clear(&self, clear: PushClear) -> Result<PushClear, Retry> {
        let devices = self.devices(&clear.user).await?;
        if devices.is_empty() {
            return Ok(clear);
        }
        let note = Notification {
            kind: NotificationKind::Clear,
            room: clear.room.clone(),
            room_name: String::new(),
            sender: None,
            preview: None,
            count: 0,
            seq: clear.read_seq,
            badge: self.badge(&clear.user).await?,
        };
        for device in &devices {
            self.send(&clear.user, device, &note).await?;
        }
        Metrics::inc(&self.hub.metrics().push_clears_sent_total);
        Ok(clear)
    }

    async fn devices(&self, user: &str) -> Result<Vec<DeviceRecord>, Retry> {
        self.hub.store().devices(user).await.map_err(|err| Retry { reason: format!("store: {err}"), after: None })
    }

    /// The user's unread messages over all their rooms: the badge.
    async fn badge(&self, user: &str) -> Result<u64, Retry> {
        let rooms = self
            .hub
            .store()
            .rooms_of(user)
            .await
            .map_err(|err| Retry { reason: format!("store: {err}"), after: None })?;
        Ok(rooms.iter().map(|r| r.room.last_seq.saturating_sub(r.read_seq)).sum())
    }

    /// Hand `note` to `device`'s provider: `Ok` when accepted or when it never will be (a device
    /// the provider no longer knows is removed), `Err` to try again.
    async fn send(&self, user: &str, device: &DeviceRecord, note: &Notification) -> Result<(), Retry> {
        Metrics::inc(&self.hub.metrics().push_requests_total);
        match self.providers.send(device, note).await {
            Outcome::Delivered => {
                Metrics::inc(&self.hub.metrics().push_delivered_total);
                Ok(())
            }
            Outcome::Unregistered(reason) => {
                Metrics::inc(&self.hub.metrics().push_devices_removed_total);
                info!(
                    user,
                    device = device.id,
                    platform = device.platform.name(),
                    reason,
                    "push: device unregistered by its provider; removed"
                );
                if let Err(err) = self.hub.store().remove_device(user, &device.id).await {
                    return Err(Retry { reason: format!("store: {err}"), after: None });
                }
                Ok(())
            }
            Outcome::Failed(reason) => {
                Metrics::inc(&self.hub.metrics().push_failed_total);
                warn!(user, device = device.id, platform = device.platform.name(), reason, "push: failed for good");
                Ok(())
            }
            Outcome::Retry { reason, after } => {
                Metrics::inc(&self.hub.metrics().push_retries_total);
                Err(Retry { reason: format!("{}: {reason}", device.platform.name()), after })
            }
        }
    }
}

/// Where the pass after one that read `rows` starts: from the start after a page that was not
/// full (it saw the whole queue); after a full one, from its last room again (whose rows the
/// page may have cut), or past it when the page held that room alone.
fn next_from(rows: &[OutboxEvent]) -> String {
    match (rows.first(), rows.last()) {
        (Some(first), Some(last)) if rows.len() >= ROWS_PER_PASS as usize => {
            if first.stream == last.stream {
                // The smallest id after this room's: room ids have no control characters.
                format!("{}\u{1}", last.stream)
            } else {
                last.stream.clone()
            }
        }
        _ => String::new(),
    }
}

/// What the notification calls the room: its name; none for a direct conversation, whose
/// notifications are titled with the sender.
fn room_name(room: &RoomRecord) -> String {
    if room.kind == RoomKind::Direct {
        return String::new();
    }
    room.name.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventType;

    fn rows(rooms: &[&str]) -> Vec<OutboxEvent> {
        rooms
            .iter()
            .enumerate()
            .map(|(i, room)| OutboxEvent {
                stream: room.to_string(),
                seq: i as u64 + 1,
                event: EventType::MessagePosted,
            })
            .collect()
    }

    #[test]
    fn a_full_page_moves_the_next_pass_on() {
        let full = ROWS_PER_PASS as usize;
        assert_eq!(next_from(&rows(&["r_a", "r_b"])), "", "a short page saw the whole queue");
        assert_eq!(next_from(&[]), "");
        let mut page = vec!["r_a"; full / 2];
        page.extend(vec!["r_b"; full - full / 2]);
        assert_eq!(next_from(&rows(&page)), "r_b", "the last room again: the page may have cut it");
        let one_room = next_from(&rows(&vec!["r_a"; full]));
        assert!(one_room.as_str() > "r_a" && one_room.as_str() < "r_a0" && one_room.as_str() < "r_a_", "{one_room:?}");
    }
}
