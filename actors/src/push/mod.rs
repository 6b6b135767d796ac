//! Push notifications for users who are not online (docs/PUSH.md).
//!
//! The store queues every entry that may notify someone in the transaction that commits it
//! (`store::push`), so a node dying after the commit loses no push. One node of the cluster
//! sends: whichever holds the store's `push` lease ([`crate::lease::Lease`]); when it dies,
//! another takes the queue over after `push.lease_ms`. The [`worker`] decides, when an entry
//! is `push.delay_ms` old, which members to tell ([`rule`]): those its settings allow, who have
//! not read it and were not online when it was written or since. It collapses a room's entries
//! into one [`notification::Notification`] per member, hands it to each of their devices
//! through the [`providers`], and only then drops the rows, so a push reaches the provider at
//! least once (the collapse id makes a repeat show once). A read that reaches what a push told
//! owes the devices a silent clear, which the worker sends the same way.

pub mod notification;
pub mod providers;
pub mod rule;
pub mod worker;

use serde::{Deserialize, Serialize};

use crate::limits::InvalidSetting;
use providers::{ApnsSettings, FcmSettings, ProviderSettings, WebPushSettings, WebhookPushSettings};

pub use worker::start;

/// The `[push]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSettings {
    /// Whether this node takes part in sending (every node may; one at a time does).
    pub send: bool,
    /// How long an entry waits before it is pushed: a connection receiving it, or a read of
    /// the room, within that time means no push. Longer than `presence.grace_ms`, so a client
    /// reconnecting within the grace is not pushed what it is about to get.
    pub delay_ms: u64,
    /// How often an idle worker looks for due entries (a busy one goes on at once).
    pub poll_ms: u64,
    /// Sends to providers in flight at once.
    pub concurrency: usize,
    /// A provider request without an answer by then has failed (and is retried).
    pub timeout_ms: u64,
    /// The pause after the first failure in a row of a room's pushes; each further one doubles it.
    pub retry_base_ms: u64,
    /// The longest pause between attempts.
    pub retry_max_ms: u64,
    /// How long the sending node's lease lasts without renewal: how long pushes pause when
    /// that node dies.
    pub lease_ms: u64,
    /// Whether a notification may carry a preview of the message (for devices registered with
    /// `preview: true`); off, a push says only who wrote in which room.
    pub previews: bool,
    /// Firebase Cloud Messaging (HTTP v1).
    pub fcm: FcmSettings,
    /// Apple Push Notification service (HTTP/2, token authentication).
    pub apns: ApnsSettings,
    /// Web Push (RFC 8030, 8291, 8292).
    pub webpush: WebPushSettings,
    /// Self-hosted gateways (signed JSON).
    pub webhook: WebhookPushSettings,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            send: true,
            delay_ms: 10_000,
            poll_ms: 250,
            concurrency: 32,
            timeout_ms: 10_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            lease_ms: 10_000,
            previews: false,
            fcm: FcmSettings::default(),
            apns: ApnsSettings::default(),
            webpush: WebPushSettings::default(),
            webhook: WebhookPushSettings::default(),
        }
    }
}

impl PushSettings {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let positive: [(&'static str, u64); 6] = [
            ("push.poll_ms", self.poll_ms),
            ("push.concurrency", self.concurrency as u64),
            ("push.timeout_ms", self.timeout_ms),
            ("push.retry_base_ms", self.retry_base_ms),
            ("push.retry_max_ms", self.retry_max_ms),
            ("push.lease_ms", self.lease_ms),
        ];
        InvalidSetting::first_zero(&positive)?;
        if self.retry_max_ms < self.retry_base_ms {
            return Err(InvalidSetting::new("push.retry_max_ms", "must be at least push.retry_base_ms"));
        }
        if self.lease_ms < 2 * self.poll_ms {
            return Err(InvalidSetting::new("push.lease_ms", "must be at least twice push.poll_ms"));
        }
        self.providers().validate()
    }

    /// The providers' part.
    pub fn providers(&self) -> ProviderSettings {
        ProviderSettings {
            fcm: self.fcm.clone(),
            apns: self.apns.clone(),
            webpush: self.webpush.clone(),
            webhook: self.webhook.clone(),
        }
    }
}
