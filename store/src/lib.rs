//! The store: everything palaver keeps durably, behind one interface with two backends.
//!
//! [`Store`] is the only way the rest of palaver reads or writes durable state: accounts, rooms
//! and memberships, room logs, per-user logs, client message ids (for idempotent sends), read
//! positions and room ownership epochs (for fencing). `sqlite` is the embedded default; `fdb`
//! (cargo feature `fdb`) is the multi-host backend. Both pass the suite in `conformance`.
//!
//! The data model, in the words of docs/DESIGN.md §4:
//! - every room has a log of [`Entry`]s with a dense sequence number (1, 2, 3 …);
//! - every user has a log of pointers to room entries with a dense cursor (1, 2, 3 …), written
//!   in the same transaction as the room entry, one pointer per member ("fan out on write");
//! - except in **large rooms**: once a join takes a room past
//!   [`MembershipLimits::fanout_max_members`], its entries from then on (seq ≥
//!   [`RoomRecord::large_since`]) are kept in the room log only, and members read them from there
//!   ("merge at read time"). The switch is one way: a room that was large stays large, so every
//!   entry has exactly one place a member finds it, decided by its seq alone;
//! - an append carries the room owner's epoch and fails with [`StoreError::Fenced`] unless that
//!   epoch is still the room's current one, so a stale owner can never write;
//! - a text entry is keyed by (room, sender, client message id): appending the same key again
//!   returns the original entry with `duplicate = true` and writes nothing.
//!
//! Architecture Invariant: only this module (and its backends) knows how state is laid out;
//! actors hold caches, never the truth.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::{
    Audience, Cursor, Entry, EntryKind, NotifyLevel, Platform, ReactionCount, Role, RoomKind, RoomSettings,
    RoomSettingsChange,
};

#[cfg(test)]
pub mod conformance;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod fdb_keys;
pub mod media;
pub mod push;
mod rules;
pub mod sqlite;
pub mod webhooks;

pub use media::{MediaRecord, MediaState};
pub use push::{PushClear, PushMember};
pub use webhooks::{EventMask, EventType, OutboxEvent, WebhookHealth, WebhookRecord};

/// The owner epoch of a room: bumped by every [`Store::claim_room`].
pub type Epoch = u64;

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Tokens carry the epoch they were issued under; "log out everywhere" bumps it.
    pub token_epoch: u64,
    pub created_ms: u64,
}

/// A key of the server API (`node/src/api`), as stored. The secret is kept only as its SHA-256:
/// it is 32 random bytes, so a fast hash resists guessing as well as a slow one would, and a
/// request's check costs microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public and random; the key's first part, so a request names the record to check.
    pub id: String,
    /// What the operator called it.
    pub name: String,
    /// What the key may do (the API's scope names), sorted.
    pub scopes: Vec<String>,
    pub secret_sha256: [u8; 32],
    pub created_ms: u64,
    /// When it was revoked; a revoked key stays listed and opens nothing.
    pub revoked_ms: Option<u64>,
}

/// A device registered for push notifications, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Derived from the platform and token: registering them again names the same device.
    pub id: String,
    pub platform: Platform,
    pub app: String,
    pub locale: String,
    /// The push token, the Web Push endpoint, or the webhook URL.
    pub token: String,
    /// Web Push only: the browser's public key and auth secret (base64url); empty otherwise.
    pub p256dh: String,
    pub auth: String,
    pub created_ms: u64,
    /// Whether its notifications may show a preview of the message (where `push.previews`
    /// allows them): the user's choice for this device.
    pub preview: bool,
}

/// The presence status text a user set last, and when (ms since the Unix epoch). Kept so the
/// text a user chose survives every node restarting; whether they are away is not kept (a
/// user coming back after being offline starts `online`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceNote {
    /// `None` when the user cleared it.
    pub status: Option<String>,
    pub set_ms: u64,
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub id: String,
    pub name: String,
    pub kind: RoomKind,
    pub private: bool,
    pub created_by: String,
    /// Sequence number of the newest entry (0 for none).
    pub last_seq: u64,
    pub members: u32,
    /// For a large room, the seq of its first entry that was not fanned out to user logs: entries
    /// from here on live in the room log only. `None` while the room fans out on write.
    pub large_since: Option<u64>,
    pub topic: String,
    pub who_may_post: Audience,
    pub who_may_invite: Audience,
}

impl RoomRecord {
    /// The settings a `settings` entry would carry for this room now.
    pub fn settings(&self) -> RoomSettings {
        RoomSettings {
            name: self.name.clone(),
            topic: self.topic.clone(),
            private: self.private,
            who_may_post: self.who_may_post,
            who_may_invite: self.who_may_invite,
        }
    }

    /// This record with `settings` in place of its own.
    pub fn with_settings(self, settings: RoomSettings) -> RoomRecord {
        RoomRecord {
            name: settings.name,
            topic: settings.topic,
            private: settings.private,
            who_may_post: settings.who_may_post,
            who_may_invite: settings.who_may_invite,
            ..self
        }
    }
}

/// A room to create, with its first members. Each initial member gets a `join` entry, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    pub id: String,
    pub name: String,
    pub kind: RoomKind,
    pub private: bool,
    pub creator: String,
    /// Members at creation, the creator first. Must not be empty.
    pub members: Vec<String>,
    pub ts: u64,
}

/// Limits enforced inside the write transaction, so they hold under concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipLimits {
    pub max_room_members: u32,
    pub max_rooms_per_user: u32,
    /// A room with more members than this becomes large: its later entries are not copied to
    /// user logs (see the module documentation). Checked when members join or a room is created.
    pub fanout_max_members: u32,
}

/// Limits on what messages may do to each other, checked inside the write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRules {
    /// How long after sending a message its author may edit it (ms).
    pub edit_window_ms: u64,
    /// Distinct reactions one message may carry.
    pub max_reactions_per_message: u32,
}

/// What an entry refers to besides its room: the message it acts on, the one it replies to,
/// the members it mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryDetails {
    /// For edit, delete, react and unreact: the seq of a text entry of the room.
    pub target: Option<u64>,
    /// For text: the seq of a text entry of the room that is not deleted.
    pub reply_to: Option<u64>,
    /// For text: members of the room, each at most once.
    pub mentions: Vec<String>,
    /// For ban and mute: until when (ms since the Unix epoch); none for good (ban) or to lift
    /// the mute.
    pub until: Option<u64>,
    /// For settings: what changes.
    pub settings: Option<RoomSettingsChange>,
    /// For text: the media it posts, by id (filled in from [`MediaRecord::attachment`]). Each
    /// must be a [`MediaState::Ready`] upload of `from` ([`StoreError::NoSuchMedia`] otherwise,
    /// [`StoreError::MediaInUse`] if it is attached already, or named twice in this list); the
    /// append attaches them. Only each one's `media` id is read: the entry carries every
    /// attachment as its record says in the append's transaction, in the order given. Ignored
    /// for every other kind (they carry no attachments).
    pub attachments: Vec<protocol::Attachment>,
}

/// One append to a room log.
///
/// - `Text`: `from` must be a member; keyed by (room, from, id) for idempotence. Its
///   `details.attachments` are checked and attached in the append's transaction (see
///   [`EntryDetails::attachments`]); a duplicate touches no media.
/// - `Join`: `user` becomes a member. When `from == user` it is a self-join, refused for private
///   rooms; otherwise it is an invitation and `from` must be a member. Joining while already a
///   member fails with [`StoreError::AlreadyMember`] and writes nothing.
/// - `Leave`: `user` (== `from`) stops being a member; the leave entry still reaches the leaving
///   user's log so their other devices learn of it.
/// - `Edit`: `from` must be the author of the text entry `details.target`, which is not deleted and
///   was sent at most `rules.edit_window_ms` before `ts`; its body becomes `body` and its
///   `edited_at` `ts`.
/// - `Delete`: `from` must be the author of `details.target` or the creator of the (group) room.
///   The target's body, mentions, attachments and reactions are erased, and so are the bodies
///   of its edits; it reads back as a tombstone. The media it carried become
///   [`MediaState::Doomed`]. Deleting twice fails with [`StoreError::MessageDeleted`].
/// - `React` / `Unreact`: `body` is the reaction, given or taken back by `from` on a text entry
///   that is not deleted; [`StoreError::Unchanged`] if it was already given (not given).
///
/// - Moderation, on `user` by `from` (`body` is the reason, or for `Role` the role given):
///   `Role` needs `from` to be the room's owner and `user` a member other than the owner
///   (`body` is `admin` or `member`); `Kick`, `Ban`, `Unban` and `Mute` need `from` to be the
///   owner or an admin and, where `user` is a member, ranked above them. `Kick` needs `user` to
///   be a member and ends their membership; `Ban` ends it if they are one and keeps them from
///   joining or being invited ([`StoreError::Banned`]) until `details.until` (for good
///   without); `Mute` keeps a member from appending text, edits and reactions until
///   `details.until` (lifted without). Each is an entry with `user` the subject, delivered to
///   the members at commit time (the subject included when they were one). In direct
///   conversations there is no moderation ([`StoreError::NotAllowed`]).
///
/// - `Settings`: `from`, the owner or an admin of a group room, changes its settings by
///   `details.settings` ([`StoreError::Unchanged`] if that changes nothing); the entry carries
///   all of them as they are after it. `who_may_post` moderators keeps members from appending
///   text; `who_may_invite` moderators keeps them from inviting (both [`StoreError::NotAllowed`]).
///
/// - In a **large room** (`large_since` set), `React` and `Unreact` are **counted, not logged**:
///   the reaction is applied to the message's counts and no entry is written (no seq, no
///   pointer, no delivery; [`Appended::counted`]), so a popular message in a room of ten
///   thousand does not send ten thousand entries to each of ten thousand members. Its owner
///   tells the members the counts instead, coalesced (`actors::room`). Such a reaction has no
///   client id kept: repeating it answers `Unchanged`.
///
/// Text, edit, delete, react and unreact are keyed by (room, from, id) like text, so a retried
/// request returns its first outcome. Moderation entries, like membership ones, carry a
/// node-made id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub room: String,
    /// The epoch the appending owner claimed; must equal the room's current epoch.
    pub epoch: Epoch,
    pub kind: EntryKind,
    pub from: String,
    /// Client message id for text; for join/leave the node makes one (it is not deduplicated).
    pub id: String,
    /// For join and leave: the user whose membership changes.
    pub user: Option<String>,
    pub body: String,
    pub ts: u64,
    pub limits: MembershipLimits,
    pub details: EntryDetails,
    pub rules: MessageRules,
}

/// A committed entry and who gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry: Entry,
    pub recipients: Recipients,
}

/// The recipients of a committed entry: every member of the room at commit time (for a leave,
/// the leaver included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// The entry got a place in each member's user log: (user, cursor in that log).
    Logs(Vec<(String, Cursor)>),
    /// An entry of a large room, in the room log only: these members get it, with no cursor.
    /// Shared, because a room's owner hands the same list to every delivery until its
    /// membership changes (and the hub keys its fan-out cache on that).
    Members(Arc<Vec<String>>),
    /// An entry of a large room as [`Store::append`] returns it: the store does not name the
    /// members (reading a thousand names per message was a tenth of the node's fan-out time);
    /// the room's owner, which tracks them, does before anyone delivers it.
    Unnamed,
}

impl Recipients {
    /// Nobody: what a duplicate append delivers.
    pub fn none() -> Recipients {
        Recipients::Logs(Vec::new())
    }

    /// The users named, in order.
    pub fn users(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Recipients::Logs(logs) => Box::new(logs.iter().map(|(user, _)| user.as_str())),
            Recipients::Members(members) => Box::new(members.iter().map(String::as_str)),
            Recipients::Unnamed => Box::new(std::iter::empty()),
        }
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// For a duplicate text append: the original entry and no recipients (nothing was written).
    pub delivery: Delivery,
    pub duplicate: bool,
}

impl Appended {
    /// The outcome of a reaction counted without an entry (a large room's; see
    /// [`AppendRequest`]): the entry it would have been, with seq 0 (no entry has it), and no
    /// recipients.
    pub fn counted(request: &AppendRequest, target: u64) -> Appended {
        let entry = Entry {
            room: request.room.clone(),
            seq: 0,
            id: request.id.clone(),
            from: request.from.clone(),
            kind: request.kind,
            body: request.body.clone(),
            ts: request.ts,
            target: Some(target),
            ..Entry::default()
        };
        Appended { delivery: Delivery { entry, recipients: Recipients::none() }, duplicate: false }
    }

    /// Whether this is a reaction counted without an entry ([`Appended::counted`]).
    pub fn is_counted(&self) -> bool {
        self.delivery.entry.seq == 0
    }
}

/// One entry of a user's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub cursor: Cursor,
    pub entry: Entry,
}

/// The span of a user's log that can be read: entries with `floor < cursor <= head`.
/// `floor` rises when retention trims old entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogBounds {
    pub floor: Cursor,
    pub head: Cursor,
}

/// Which way to page a room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// Entries with seq < n, returned oldest first (the newest `limit` of them).
    Before(u64),
    /// Entries with seq > n, oldest first.
    After(u64),
}

/// A room and the user's read position in it, for "list my rooms".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyRoom {
    pub room: RoomRecord,
    pub read_seq: u64,
    /// The seq of the user's (latest) join entry: they see the room's entries from here on.
    pub joined_seq: u64,
    /// Messages after `read_seq` that mention the user and are not deleted.
    pub unread_mentions: u32,
    pub role: Role,
    /// What in the room may notify the user, and until when it is silenced (their own choice).
    pub notify: NotifyLevel,
    pub notify_muted_until: Option<u64>,
}

/// Errors at the store boundary. The variants the client can cause map to protocol error codes;
/// `Unavailable` is retryable; `Backend` is a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("no user `{0}`")]
    NoSuchUser(String),
    #[error("no room `{0}`")]
    NoSuchRoom(String),
    #[error("`{user}` is not a member of `{room}`")]
    NotMember { room: String, user: String },
    #[error("`{user}` is already a member of `{room}`")]
    AlreadyMember { room: String, user: String },
    #[error("room `{0}` is private; ask a member to invite you")]
    Forbidden(String),
    #[error("room `{room}` has reached its limit of {limit} members")]
    RoomFull { room: String, limit: u32 },
    #[error("`{user}` is in {limit} rooms, the limit")]
    TooManyRooms { user: String, limit: u32 },
    #[error("room `{room}` has no message with seq {seq}")]
    NoSuchMessage { room: String, seq: u64 },
    #[error("message {seq} of `{room}` was deleted")]
    MessageDeleted { room: String, seq: u64 },
    /// An operation on a message that this user may not do (edit another's message, edit
    /// after the window, delete another's message without moderating the room).
    #[error("{0}")]
    NotAllowed(String),
    /// A reference that cannot be (mentioning a non-member, too many reactions).
    #[error("{0}")]
    InvalidReference(String),
    /// Nothing to do: the reaction is already given, or was not given.
    #[error("{0}")]
    Unchanged(String),
    /// `user` is banned from `room` until `until` (ms since the Unix epoch; for good if none).
    #[error("`{user}` is banned from `{room}`{}", until.map(|t| format!(" until {t} (ms since the Unix epoch)")).unwrap_or_default())]
    Banned { room: String, user: String, until: Option<u64> },
    #[error("room `{room}` is owned under epoch {current}, not {epoch}")]
    Fenced { room: String, epoch: Epoch, current: Epoch },
    /// No upload of this id that the user may use (unknown, another's, unfinished, collected).
    #[error("no media `{0}` of yours that can be attached")]
    NoSuchMedia(String),
    /// The upload is attached to a message already.
    #[error("media `{0}` is attached to a message already")]
    MediaInUse(String),
    /// The upload would take `user` past their quota of `quota` bytes.
    #[error("`{user}` would exceed their media quota of {quota} bytes")]
    QuotaExceeded { user: String, quota: u64 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Counters of a store's write path, for `/metrics`: `requests / transactions` is the mean
/// group-commit batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Write transactions committed.
    pub write_transactions: u64,
    /// Of those, the transactions committed on the thread that asked for them (the rooms'
    /// thread, SQLite only) rather than handed to the store's writer.
    pub inline_write_transactions: u64,
    /// Write requests taken off the queue into a transaction (committed, refused or failed).
    pub write_requests: u64,
    /// Write transactions that failed to begin or commit (their requests all got an error).
    pub failed_transactions: u64,
    /// Writes waiting in the queue right now.
    pub queued_writes: usize,
}

/// The store interface. Every method is one transaction (or a read of one consistent snapshot).
/// Methods are async so a networked backend fits; the embedded one runs its work on its own
/// threads, never on the caller's runtime (but for
/// [`Store::append_batch_on_committing_thread`], whose caller asks for it).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics: "sqlite", "fdb".
    fn backend(&self) -> &'static str;
    /// The write path's counters, where the backend keeps them (SQLite's writer thread does;
    /// FoundationDB's transactions are the client library's).
    fn write_stats(&self) -> Option<WriteStats> {
        None
    }

    // Accounts.
    async fn create_user(&self, name: &str, password_hash: &str, created_ms: u64) -> StoreResult<()>;
    async fn user(&self, name: &str) -> StoreResult<Option<UserRecord>>;
    /// Bump the user's token epoch (revoking every token issued before) and return the new one.
    async fn revoke_tokens(&self, name: &str) -> StoreResult<u64>;
    /// Keep `note` as the user's presence note unless the one stored was set later
    /// (`set_ms` greater or equal): nodes write in any order and the newest setting stays.
    async fn set_presence_note(&self, user: &str, note: PresenceNote) -> StoreResult<()>;
    /// The user's presence note, if they ever set one. `NoSuchUser` for an unknown user.
    async fn presence_note(&self, user: &str) -> StoreResult<Option<PresenceNote>>;
    /// Delete `user`'s account at `ts` (ms since the Unix epoch). The user must be a member of
    /// no room: memberships end by `leave` entries, which only the rooms' owners append, so
    /// this answers [`StoreError::AlreadyMember`] naming a room they are still in, to be left
    /// first. Then, in one transaction: the account is gone (`user` returns `None`, so no token
    /// verifies and no password logs in), and so are the user's log, read positions, mentions,
    /// presence note, devices and the blocks they made; other users' block lists leave them out;
    /// every media record they own becomes [`MediaState::Doomed`] (the collector deletes the
    /// files, so their posted attachments stop downloading). The
    /// name stays taken ([`Store::create_user`] answers `UserExists`); everything that would
    /// name the user anew (a join, an invitation, a new room, a block) answers `NoSuchUser`.
    /// Their entries stay in the room logs under their name, their reactions counted.
    /// `NoSuchUser` for an unknown or already deleted user.
    async fn delete_account(&self, user: &str, ts: u64) -> StoreResult<()>;
    /// Block `other` for `user` (no direct messages from them), or with `blocked` false lift
    /// the block. `NoSuchUser` if either is unknown; blocking twice or unblocking someone not
    /// blocked changes nothing.
    async fn set_blocked(&self, user: &str, other: &str, blocked: bool) -> StoreResult<()>;
    /// The users `user` blocked, sorted by name.
    async fn blocked_by(&self, user: &str) -> StoreResult<Vec<String>>;
    /// Whether `user` blocked `other`.
    async fn is_blocked(&self, user: &str, other: &str) -> StoreResult<bool>;

    // Devices for push notifications.
    /// Register `device` for `user`, or update the device with its id (keeping when it was
    /// created); returns it as stored. A new device beyond `max` per user is `NotAllowed`;
    /// `NoSuchUser` for an unknown user.
    async fn put_device(&self, user: &str, device: DeviceRecord, max: u32) -> StoreResult<DeviceRecord>;
    /// `user`'s devices, oldest first. `NoSuchUser` for an unknown user.
    async fn devices(&self, user: &str) -> StoreResult<Vec<DeviceRecord>>;
    /// Forget `user`'s device `id`; `false` if they have none by that id.
    async fn remove_device(&self, user: &str, id: &str) -> StoreResult<bool>;

    // Server API keys.
    /// Keep a new key. Ids are random; a taken one is a `Backend` error.
    async fn create_api_key(&self, key: ApiKeyRecord) -> StoreResult<()>;
    /// The key `id`, revoked or not.
    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// Every key, revoked ones included, in id order.
    async fn api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revoke key `id` at `ts`; `false` if there is no such key. Revoking again keeps the first
    /// time.
    async fn revoke_api_key(&self, id: &str, ts: u64) -> StoreResult<bool>;

    // Webhooks (see the `webhooks` module).
    /// Keep a new endpoint. Ids are random; a taken one is a `Backend` error.
    async fn create_webhook(&self, hook: WebhookRecord) -> StoreResult<()>;
    /// Every endpoint, in id order.
    async fn webhooks(&self) -> StoreResult<Vec<WebhookRecord>>;
    /// Forget endpoint `id` and every event its outbox holds; `false` if there is none.
    async fn delete_webhook(&self, id: &str) -> StoreResult<bool>;
    /// Record how deliveries to endpoint `id` are going; `false` if there is none.
    async fn set_webhook_health(&self, id: &str, health: WebhookHealth) -> StoreResult<bool>;
    /// Up to `limit` of the events endpoint `id` has not acknowledged, in (stream, seq) order.
    async fn webhook_outbox(&self, id: &str, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        self.outbox_from(id, "", limit).await
    }
    /// Up to `limit` rows of outbox `id` whose stream is `from` or after it, in (stream, seq)
    /// order (`""`: from the first).
    async fn outbox_from(&self, id: &str, from: &str, limit: u32) -> StoreResult<Vec<OutboxEvent>>;
    /// Drop endpoint `id`'s events of `stream` with seq <= `through`: they were delivered.
    async fn ack_webhook_events(&self, id: &str, stream: &str, through: u64) -> StoreResult<()>;

    // Leases.
    /// Let `holder` hold the lease `name` until `now_ms + ttl_ms` if nobody does, it expired
    /// (by `now_ms`) or `holder` holds it already; whether `holder` holds it now. Nodes' clocks
    /// decide expiry, so a lease is for work that may be done twice, never for exclusion that
    /// correctness depends on.
    async fn take_lease(&self, name: &str, holder: &str, now_ms: u64, ttl_ms: u64) -> StoreResult<bool>;

    // Push notifications (see `push`).
    /// Up to `limit` entries waiting in the push queue, in (room, seq) order, from room `from`
    /// on (`""`: from the first room).
    async fn push_queue(&self, from: &str, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        self.outbox_from(push::QUEUE, from, limit).await
    }
    /// Every member of `room` with what decides whether a push tells them of an entry, sorted by
    /// user name. `NoSuchRoom` for an unknown room.
    async fn push_members(&self, room: &str) -> StoreResult<Vec<PushMember>>;
    /// In one transaction: drop `room`'s queued entries with seq <= `through`, and remember for
    /// each (user, seq) of `told` that a push told the user of the room through that seq (a
    /// later read reaching it owes their devices a clear).
    async fn push_done(&self, room: &str, through: u64, told: &[(String, u64)]) -> StoreResult<()>;
    /// Up to `limit` clears owed (reads that reached what a push told), in (user, room) order.
    async fn push_clears(&self, limit: u32) -> StoreResult<Vec<PushClear>>;
    /// Forget `clears`: they were sent (a newer clear of the same room, written since, stays).
    async fn push_cleared(&self, clears: &[PushClear]) -> StoreResult<()>;

    // Media (see `media`).
    /// Record an upload about to start (`media.state` is [`MediaState::Uploading`], `media.size`
    /// the declared length). [`StoreError::QuotaExceeded`] if the owner's usage
    /// ([`Store::media_usage`]) plus this size would pass `quota_bytes`; nothing is written then.
    /// The check and the insert are one transaction: of parallel reservations only those that
    /// fit together are taken. The record is stored `Uploading` whatever `media.state` says;
    /// `NoSuchUser` for an unknown or deleted owner; a taken id is
    /// `Backend("media id collision")` (ids are random).
    async fn reserve_media(&self, media: MediaRecord, quota_bytes: u64) -> StoreResult<()>;
    /// The upload finished and was checked: replace the record (what was sniffed and measured)
    /// and make it [`MediaState::Ready`]. [`StoreError::NoSuchMedia`] unless it is still
    /// `Uploading` (the collector took it meanwhile) and `media.owner` is its owner. The owner
    /// and `created_ms` stay as reserved; the usage follows the new `size`.
    async fn complete_media(&self, media: MediaRecord) -> StoreResult<()>;
    async fn media(&self, id: &str) -> StoreResult<Option<MediaRecord>>;
    /// The bytes of `user`'s records that are not doomed.
    async fn media_usage(&self, user: &str) -> StoreResult<u64>;
    /// Doom the records still `Uploading` or `Ready` that were created before `stale_before_ms`,
    /// then return up to `limit` doomed records, in id order. A backend may doom a bounded
    /// number per call (FoundationDB: 256, to keep the transaction small); the collector's next
    /// call dooms the rest.
    async fn media_garbage(&self, stale_before_ms: u64, limit: u32) -> StoreResult<Vec<MediaRecord>>;
    /// Forget these records, whatever their state (their objects are deleted, or were never
    /// written); unknown ids are skipped.
    async fn drop_media(&self, ids: &[String]) -> StoreResult<()>;

    // Rooms.
    /// Create a room with its initial members (a join entry each). If a room with this id
    /// exists already, nothing is written and `Ok((existing, None))` comes back: direct
    /// conversations use this to be created once whoever opens them first.
    async fn create_room(
        &self,
        room: NewRoom,
        limits: MembershipLimits,
    ) -> StoreResult<(RoomRecord, Option<Vec<Delivery>>)>;
    async fn room(&self, id: &str) -> StoreResult<Option<RoomRecord>>;
    /// Members in join order.
    async fn members(&self, room: &str) -> StoreResult<Vec<String>>;
    async fn is_member(&self, room: &str, user: &str) -> StoreResult<bool>;
    /// The role of each of `users` in `room`, in order (`None` for one who is not a member).
    /// `NoSuchRoom` for an unknown room.
    async fn roles(&self, room: &str, users: &[String]) -> StoreResult<Vec<Option<Role>>>;
    async fn rooms_of(&self, user: &str) -> StoreResult<Vec<MyRoom>>;

    // Logs.
    /// Append one entry to a room log, fanning out a pointer to every member's user log unless
    /// the room is large, all in one transaction that first checks `epoch` (see
    /// [`AppendRequest`] for the kinds' rules). An entry of a large room comes back with
    /// [`Recipients::Unnamed`]: its owner names them.
    async fn append(&self, request: AppendRequest) -> StoreResult<Appended>;
    /// Several appends with the effect of [`Store::append`] on each, one after another in the
    /// given order; one outcome each, in order (a refused one does not stop the rest). Backends
    /// that can commit them together do: this is how a busy room pays one commit for many
    /// messages.
    async fn append_batch(&self, requests: Vec<AppendRequest>) -> Vec<StoreResult<Appended>> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(self.append(request).await);
        }
        outcomes
    }
    /// [`Store::append_batch`], called from a thread that exists to commit: the rooms' runtime
    /// thread, on which nothing waits but commits. A backend may then commit on the calling
    /// thread when it can without waiting for a lock, blocking it for the commit itself,
    /// instead of handing the batch to a thread of its own and back (SQLite does; see
    /// `sqlite::inline`). Anywhere else, call [`Store::append_batch`].
    async fn append_batch_on_committing_thread(&self, requests: Vec<AppendRequest>) -> Vec<StoreResult<Appended>> {
        self.append_batch(requests).await
    }
    /// Up to `limit` entries of a room's log and whether more lie beyond in that direction.
    async fn history(&self, room: &str, page: HistoryPage, limit: u32) -> StoreResult<(Vec<Entry>, bool)>;
    /// The text entry `root` of a room and up to `limit` of the entries replying to it with
    /// seq > `after`, oldest first, and whether more follow. `NoSuchMessage` if `root` is not a
    /// text entry of the room.
    async fn thread(&self, room: &str, root: u64, after: u64, limit: u32) -> StoreResult<(Entry, Vec<Entry>, bool)>;
    /// The reactions to each of `seqs` (sorted by reaction), with whether `viewer` gave each;
    /// one list per seq, in order (empty for an entry without reactions).
    async fn reactions(&self, room: &str, seqs: &[u64], viewer: &str) -> StoreResult<Vec<Vec<ReactionCount>>>;
    /// Up to `limit` entries of the user's log with cursor > `after`, oldest first.
    async fn user_log(&self, user: &str, after: Cursor, limit: u32) -> StoreResult<Vec<LogEntry>>;
    async fn user_log_bounds(&self, user: &str) -> StoreResult<LogBounds>;
    /// Drop the user's log entries with cursor <= `through` (retention); returns how many.
    async fn trim_user_log(&self, user: &str, through: Cursor) -> StoreResult<u64>;

    // Read positions.
    /// Raise the user's read position in a room to `seq` (clamped to the room's last seq; never
    /// lowered) and return the position now stored. A position reaching what a push told the
    /// user of the room owes their devices a clear (see `push`), written in the same transaction.
    async fn mark_read(&self, user: &str, room: &str, seq: u64) -> StoreResult<u64>;
    /// Set what in `room` may notify `user` (push notifications) and until when it is silenced;
    /// kept with the membership, gone when it ends. `NotMember` unless `user` is a member.
    async fn set_notifications(
        &self,
        user: &str,
        room: &str,
        level: NotifyLevel,
        muted_until: Option<u64>,
    ) -> StoreResult<()>;
    /// Every member of `room` with their stored read position (0 if never marked), sorted by user name.
    /// `NoSuchRoom` for an unknown room.
    async fn read_positions(&self, room: &str) -> StoreResult<Vec<(String, u64)>>;

    // Ownership.
    /// Make `node` the room's owner under a new epoch, which is returned. Every later append
    /// with an older epoch fails with `Fenced`.
    async fn claim_room(&self, room: &str, node: &str) -> StoreResult<Epoch>;
    /// The current owner and epoch, if the room was ever claimed.
    async fn room_owner(&self, room: &str) -> StoreResult<Option<(String, Epoch)>>;
}
