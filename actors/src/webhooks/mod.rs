//! Webhooks: events of the rooms (messages posted, edited, deleted; members joined, left,
//! banned; rooms created) and accounts deleted, sent to the product's backend as signed JSON,
//! at least once and in order per room (docs/WEBHOOKS.md).
//!
//! The store queues each event for each subscribed endpoint in the transaction that commits
//! it (`store::webhooks`), so nothing acknowledged to a client can miss its webhook. One node
//! of the cluster delivers: whichever holds the store's `webhooks` lease, renewed while it
//! works, so when that node dies another takes over after `webhooks.lease_ms` and sends what
//! was not acknowledged. Per endpoint, the deliverer reads the oldest events, sends each
//! room's in order (up to `webhooks.batch_max` per request, rooms side by side), and drops
//! what a receiver answered 2xx. A failure puts the endpoint off for a backoff that doubles
//! with each failure in a row (with jitter; a `Retry-After` is honoured), and after
//! `webhooks.max_attempts` of them the endpoint is dead: nothing is sent to it, its events
//! keep being queued, and enabling it again (the API) resumes where it stopped.

pub mod events;
pub mod signature;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::hub::Hub;
use crate::lease::{run_passes, Lease};
use crate::limits::InvalidSetting;
use crate::metrics::Metrics;
use crate::names::now_ms;
use crate::store::{
    EventMask, EventType, HistoryPage, OutboxEvent, Store, StoreError, StoreResult, WebhookHealth, WebhookRecord,
};
use crate::supervise::spawn_restarting;

/// The lease that decides which node delivers.
const LEASE: &str = "webhooks";

/// Outbox rows read per endpoint per pass.
const ROWS_PER_PASS: u32 = 1_000;

/// The `[webhooks]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Whether this node takes part in delivering (every node may; one at a time does).
    pub deliver: bool,
    /// How often an idle deliverer looks for new events (a busy one goes on at once).
    pub poll_ms: u64,
    /// Events of one room per request, at most.
    pub batch_max: usize,
    /// Requests to one endpoint in flight at once (each for a different room).
    pub concurrency: usize,
    /// A request without a 2xx answer by then has failed.
    pub timeout_ms: u64,
    /// The pause after the first failure in a row; each further one doubles it.
    pub retry_base_ms: u64,
    /// The longest pause between attempts.
    pub retry_max_ms: u64,
    /// Failures in a row after which an endpoint is dead until enabled again.
    pub max_attempts: u32,
    /// How long the delivering node's lease lasts without renewal: how long deliveries pause
    /// when that node dies.
    pub lease_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            deliver: true,
            poll_ms: 200,
            batch_max: 100,
            concurrency: 8,
            timeout_ms: 10_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            // 1 s doubling to 5 min, then every 5 min: about 40 minutes of failures in a row.
            max_attempts: 16,
            lease_ms: 10_000,
        }
    }
}

impl WebhookSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let positive: [(&'static str, u64); 8] = [
            ("webhooks.poll_ms", self.poll_ms),
            ("webhooks.batch_max", self.batch_max as u64),
            ("webhooks.concurrency", self.concurrency as u64),
            ("webhooks.timeout_ms", self.timeout_ms),
            ("webhooks.retry_base_ms", self.retry_base_ms),
            ("webhooks.retry_max_ms", self.retry_max_ms),
            ("webhooks.max_attempts", self.max_attempts.into()),
            ("webhooks.lease_ms", self.lease_ms),
        ];
        InvalidSetting::first_zero(&positive)?;
        if self.retry_max_ms < self.retry_base_ms {
            return Err(InvalidSetting::new("webhooks.retry_max_ms", "must be at least webhooks.retry_base_ms"));
        }
        if self.lease_ms < 2 * self.poll_ms {
            return Err(InvalidSetting::new("webhooks.lease_ms", "must be at least twice webhooks.poll_ms"));
        }
        Ok(())
    }
}

/// Why an endpoint could not be created.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The request is wrong: the message says what to change.
    Invalid(String),
    /// `limits.max_webhook_endpoints` exist already.
    TooMany(u32),
    Store(StoreError),
}

/// Create an endpoint for `url` taking `events` (names as in docs/WEBHOOKS.md): a random id
/// and secret, returned once with the record.
pub async fn create_endpoint(
    store: &dyn Store,
    max_endpoints: u32,
    url: &str,
    events: &[String],
) -> Result<WebhookRecord, Refused> {
    check_url(url).map_err(Refused::Invalid)?;
    if events.is_empty() {
        return Err(Refused::Invalid("`events` must name at least one event type".into()));
    }
    let mut types = Vec::with_capacity(events.len());
    for name in events {
        match EventType::from_name(name) {
            Some(t) => types.push(t),
            None => {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
                return Err(Refused::Invalid(format!("unknown event type `{name}`; known: {}", known.join(", "))));
            }
        }
    }
    let existing = store.webhooks().await.map_err(Refused::Store)?;
    if existing.len() >= max_endpoints as usize {
        return Err(Refused::TooMany(max_endpoints));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let record = WebhookRecord {
        id: format!("wh_{}", hex_id(rand::random::<u64>())),
        url: url.to_owned(),
        events: EventMask::of(&types),
        secret: format!("whsec_{}", b64.encode(rand::random::<[u8; 32]>())),
        created_ms: now_ms(),
        health: WebhookHealth::default(),
    };
    store.create_webhook(record.clone()).await.map_err(Refused::Store)?;
    info!(id = record.id, url = record.url, "webhook endpoint created");
    Ok(record)
}

/// Make a dead endpoint live again (its failures forgotten); `false` if there is none.
pub async fn enable_endpoint(store: &dyn Store, id: &str) -> StoreResult<bool> {
    store.set_webhook_health(id, WebhookHealth::default()).await
}

/// An endpoint as the API shows it (never its secret, but on creation).
pub fn describe(hook: &WebhookRecord) -> Value {
    let events: Vec<&str> = hook.events.types().iter().map(|t| t.name()).collect();
    json!({
        "id": hook.id,
        "url": hook.url,
        "events": events,
        "created_at": hook.created_ms,
        "state": if hook.health.dead_since.is_some() { "dead" } else { "active" },
        "failures": hook.health.failures,
        "last_error": hook.health.last_error,
        "dead_since": hook.health.dead_since,
    })
}

fn hex_id(n: u64) -> String {
    format!("{n:016x}")
}

/// An `http` or `https` URL with a host: anything else is refused when created, not found
/// failing at the first event.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`url` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("`url` must be http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("`url` must name a host".into());
    }
    if url.len() > 2_048 {
        return Err("`url` is longer than 2048 bytes".into());
    }
    Ok(())
}

/// Start this node's deliverer (unless `webhooks.deliver` is off); it ends when the hub shuts
/// down.
pub fn start(hub: &Arc<Hub>, settings: WebhookSettings) {
    if !settings.deliver {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("palaver-webhooks/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(settings.concurrency)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            warn!(%err, "webhooks: no HTTP client; this node does not deliver");
            return;
        }
    };
    let deliverer = Arc::new(Deliverer {
        hub: hub.clone(),
        lease: Lease::new(LEASE, settings.lease_ms),
        settings,
        client,
        paused_until: Mutex::new(HashMap::new()),
    });
    spawn_restarting("webhooks: deliverer", move || {
        let deliverer = deliverer.clone();
        async move { deliverer.run().await }
    });
}

struct Deliverer {
    /// For the store, the metrics, the node's name and its shutdown.
    hub: Arc<Hub>,
    settings: WebhookSettings,
    client: reqwest::Client,
    /// Endpoints in backoff after a failure, until when.
    paused_until: Mutex<HashMap<String, Instant>>,
    /// The store lease that makes this node the one delivering.
    lease: Lease,
}

/// Where a stream's delivery stopped: after `delivered` events, because of `error`.
struct Stopped {
    delivered: u64,
    error: String,
    retry_after: Option<Duration>,
}

/// How one endpoint's pass went.
enum Outcome {
    Idle,
    Delivered,
    Failed { delivered: u64, error: String, retry_after: Option<Duration> },
}

impl Deliverer {
    async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.settings.poll_ms);
        run_passes(&self.hub, poll, "webhooks", || self.pass()).await;
    }

    /// One look at every live endpoint; whether anything was delivered (then look again at once).
    async fn pass(&self) -> StoreResult<bool> {
        let hooks = self.hub.store().webhooks().await?;
        let dead = hooks.iter().filter(|h| h.health.dead_since.is_some()).count();
        Metrics::set(&self.hub.metrics().webhook_endpoints_dead, dead as i64);
        let live: Vec<WebhookRecord> = hooks.into_iter().filter(|h| h.health.dead_since.is_none()).collect();
        if live.is_empty() || !self.hold_lease().await? {
            return Ok(false);
        }
        let outcomes = futures_util::future::join_all(live.iter().map(|hook| self.deliver_endpoint(hook))).await;
        let mut busy = false;
        for (hook, outcome) in live.iter().zip(outcomes) {
            busy |= self.record(hook, outcome).await?;
        }
        Ok(busy)
    }

    /// Whether this node holds the delivery lease (taking or renewing it as needed).
    async fn hold_lease(&self) -> StoreResult<bool> {
        let held = self.lease.hold(self.hub.store().as_ref(), self.hub.node()).await?;
        Metrics::set(&self.hub.metrics().webhook_delivering, i64::from(held));
        Ok(held)
    }

    /// Keep health and backoff after an endpoint's pass; whether it delivered anything.
    async fn record(&self, hook: &WebhookRecord, outcome: Outcome) -> StoreResult<bool> {
        match outcome {
            Outcome::Idle => Ok(false),
            Outcome::Delivered => {
                if hook.health.failures > 0 {
                    info!(id = hook.id, "webhook endpoint recovered");
                    self.hub.store().set_webhook_health(&hook.id, WebhookHealth::default()).await?;
                }
                Ok(true)
            }
            Outcome::Failed { delivered, error, retry_after } => {
                let failures = hook.health.failures.saturating_add(1);
                let dead = failures >= self.settings.max_attempts;
                let pause = retry_after.unwrap_or_default().max(self.backoff(failures));
                warn!(id = hook.id, url = hook.url, failures, dead, error, "webhook delivery failed");
                self.paused_until.lock().insert(hook.id.clone(), Instant::now() + pause);
                let health = WebhookHealth { failures, last_error: error, dead_since: dead.then(now_ms) };
                self.hub.store().set_webhook_health(&hook.id, health).await?;
                Ok(delivered > 0)
            }
        }
    }

    /// The pause after `failures` failures in a row: doubling from `retry_base_ms`, at most
    /// `retry_max_ms`, with jitter of up to a quarter either way so endpoints that failed
    /// together do not retry together.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self.settings.retry_base_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(30));
        let base = doubled.min(self.settings.retry_max_ms);
        let jitter = rand::random_range(0.75..1.25);
        Duration::from_millis((base as f64 * jitter) as u64)
    }

    /// Send what endpoint `hook` has waiting: each room's events in order, rooms side by side.
    async fn deliver_endpoint(&self, hook: &WebhookRecord) -> Outcome {
        if self.paused_until.lock().get(&hook.id).is_some_and(|until| Instant::now() < *until) {
            return Outcome::Idle;
        }
        let rows = match self.hub.store().webhook_outbox(&hook.id, ROWS_PER_PASS).await {
            Ok(rows) if rows.is_empty() => return Outcome::Idle,
            Ok(rows) => rows,
            Err(err) => return Outcome::Failed { delivered: 0, error: format!("store: {err}"), retry_after: None },
        };
        let mut streams: Vec<Vec<OutboxEvent>> = Vec::new();
        for row in rows {
            match streams.last_mut() {
                Some(run) if run[0].stream == row.stream => run.push(row),
                _ => streams.push(vec![row]),
            }
        }
        let results: Vec<Result<u64, Stopped>> = stream::iter(streams)
            .map(|rows| self.deliver_stream(hook, rows))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut delivered = 0;
        let mut failure = None;
        for result in results {
            match result {
                Ok(n) => delivered += n,
                Err(stopped) => {
                    delivered += stopped.delivered;
                    failure.get_or_insert((stopped.error, stopped.retry_after));
                }
            }
        }
        match failure {
            None => Outcome::Delivered,
            Some((error, retry_after)) => Outcome::Failed { delivered, error, retry_after },
        }
    }

    /// Send one stream's rows in order, `batch_max` per request, acknowledging each request's
    /// rows once answered 2xx; stops at the first failure. Events delivered, or those and why
    /// it stopped.
    async fn deliver_stream(&self, hook: &WebhookRecord, rows: Vec<OutboxEvent>) -> Result<u64, Stopped> {
        let mut delivered = 0;
        let stopped = |delivered, error: String, retry_after| Stopped { delivered, error, retry_after };
        for chunk in rows.chunks(self.settings.batch_max) {
            let events = self.events(chunk).await.map_err(|err| stopped(delivered, format!("store: {err}"), None))?;
            if !self.hold_lease().await.unwrap_or(false) {
                return Err(stopped(delivered, "this node lost the delivery lease".into(), None));
            }
            self.post(hook, &events).await.map_err(|(error, retry)| stopped(delivered, error, retry))?;
            let last = chunk.last().expect("chunks are not empty");
            self.hub
                .store()
                .ack_webhook_events(&hook.id, &last.stream, last.seq)
                .await
                .map_err(|err| stopped(delivered, format!("store: {err}"), None))?;
            delivered += chunk.len() as u64;
            Metrics::add(&self.hub.metrics().webhook_events_delivered_total, chunk.len() as u64);
        }
        Ok(delivered)
    }

    /// The events of `rows` (all of one stream), read from the room log.
    async fn events(&self, rows: &[OutboxEvent]) -> StoreResult<Vec<Value>> {
        let stream = &rows[0].stream;
        if let Some(user) = stream.strip_prefix("user:") {
            return Ok(rows.iter().map(|row| events::user_deleted(row, user)).collect());
        }
        let room = if rows.iter().any(|row| row.event == EventType::RoomCreated) {
            self.hub.store().room(stream).await?
        } else {
            None
        };
        let first = rows[0].seq;
        let last = rows[rows.len() - 1].seq;
        let mut entries = HashMap::with_capacity(rows.len());
        let mut after = first - 1;
        while after < last {
            let span = u32::try_from(last - after).unwrap_or(u32::MAX).min(ROWS_PER_PASS);
            let (page, _) = self.hub.store().history(stream, HistoryPage::After(after), span).await?;
            let Some(end) = page.last().map(|e| e.seq) else { break };
            after = end;
            entries.extend(page.into_iter().map(|e| (e.seq, e)));
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match entries.get(&row.seq) {
                Some(entry) => events.push(events::room_event(row, entry, room.as_ref())),
                // Room logs are never cut, so this is a fault; the event cannot be made, and
                // holding back the room's later ones for it would help nobody.
                None => warn!(room = stream, seq = row.seq, "webhooks: queued entry not found; event skipped"),
            }
        }
        Ok(events)
    }

    /// POST `events` to the endpoint, signed; the error says why it did not get a 2xx.
    async fn post(&self, hook: &WebhookRecord, events: &[Value]) -> Result<(), (String, Option<Duration>)> {
        let body = serde_json::to_vec(&json!({ "events": events })).expect("JSON values serialize");
        let now_secs = now_ms() / 1_000;
        let signature = signature::sign(&hook.secret, now_secs, &body);
        Metrics::inc(&self.hub.metrics().webhook_requests_total);
        let sent = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("palaver-webhook-id", &hook.id)
            .header(signature::HEADER, signature)
            .body(body)
            .send()
            .await;
        let failed = match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|secs| Duration::from_secs(secs.min(3_600)));
                (format!("HTTP {}", response.status().as_u16()), retry_after)
            }
            Err(err) if err.is_timeout() => (format!("no answer within {} ms", self.settings.timeout_ms), None),
            Err(err) if err.is_connect() => ("could not connect".to_string(), None),
            Err(err) => (format!("request failed: {err}"), None),
        };
        Metrics::inc(&self.hub.metrics().webhook_requests_failed_total);
        Err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_when_an_endpoint_is_created() {
        assert_eq!(check_url("https://example.com/hook"), Ok(()));
        assert_eq!(check_url("http://10.0.0.5:8080/x?y=1"), Ok(()));
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url(&format!("https://example.com/{}", "x".repeat(2_048))).is_err());
    }

    #[test]
    fn settings_refuse_zeros_and_a_lease_shorter_than_two_polls() {
        assert_eq!(WebhookSettings::default().validate(), Ok(()));
        let zero = WebhookSettings { batch_max: 0, ..WebhookSettings::default() };
        assert_eq!(zero.validate(), Err(InvalidSetting::new("webhooks.batch_max", "must be greater than 0")));
        let short = WebhookSettings { lease_ms: 300, poll_ms: 200, ..WebhookSettings::default() };
        assert_eq!(short.validate().unwrap_err().key, "webhooks.lease_ms");
    }
}
