//! The frames of palaver's client protocol, version 1.
//!
//! Two closed enums: [`ClientFrame`] (client → node) and [`ServerFrame`] (node → client). Both are
//! internally tagged by a `type` field in snake case, so the JSON form reads
//! `{"type":"send","room":"r_x","id":"m1","body":"hi"}` and the MessagePack form is the same map.
//! Requests carry a client-chosen `req` number that the node echoes in the reply, so a client
//! can pipeline requests. docs/PROTOCOL.md describes every frame with an example.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol versions this build speaks, newest last.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// A client-chosen request number, echoed in the reply. Zero when the client did not set one.
pub type ReqId = u64;

/// A position in a user's log: the number of log entries the client has seen. Dense per user.
pub type Cursor = u64;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame of every connection: the versions the client speaks. Its WebSocket frame
    /// kind (text or binary) picks the encoding the node answers in (JSON or MessagePack).
    Hello {
        versions: Vec<u32>,
        /// Free-form client name, for logs only.
        #[serde(default)]
        client: Option<String>,
        /// The client takes several frames in one WebSocket message (docs/PROTOCOL.md, "Batched
        /// frames"): newline-separated JSON objects, or MessagePack maps back to back.
        #[serde(default)]
        batch: bool,
    },
    /// Create an account.
    Register {
        #[serde(default)]
        req: ReqId,
        user: String,
        password: String,
    },
    /// Exchange a user name and password for a signed, expiring token.
    Login {
        #[serde(default)]
        req: ReqId,
        user: String,
        password: String,
    },
    /// Bind this connection to the token's user. With `cursor`, the node first replays every
    /// log entry after it, then continues live; without, it continues live from now.
    Authenticate {
        #[serde(default)]
        req: ReqId,
        token: String,
        #[serde(default)]
        cursor: Option<Cursor>,
        /// With `cursor`: the client's position (highest seq it has) in each large room, whose
        /// entries are not in the user log. A large room left out is replayed from the user's
        /// read position (at most `limits.large_room_replay_max` entries).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        rooms: BTreeMap<String, u64>,
    },
    /// Revoke every token of the user and close all of the user's connections.
    LogoutAll {
        #[serde(default)]
        req: ReqId,
    },
    /// Delete this user's account (the password again, as confirmation): the user leaves every
    /// room, their log, read positions, presence note and blocks are erased, every connection
    /// of theirs closes, and the name stays taken. Their messages stay in the rooms under the
    /// name (docs/PROTOCOL.md, "Deleting an account").
    DeleteAccount {
        #[serde(default)]
        req: ReqId,
        password: String,
    },
    /// Create a group room; the creator becomes its first member.
    CreateRoom {
        #[serde(default)]
        req: ReqId,
        name: String,
        /// A private room can be entered only by invitation.
        #[serde(default)]
        private: bool,
    },
    /// Join a public room.
    Join {
        #[serde(default)]
        req: ReqId,
        room: String,
    },
    /// Leave a room.
    Leave {
        #[serde(default)]
        req: ReqId,
        room: String,
    },
    /// Add another user to a room the sender is a member of.
    Invite {
        #[serde(default)]
        req: ReqId,
        room: String,
        user: String,
    },
    /// Open (or find) the direct conversation with another user.
    OpenDirect {
        #[serde(default)]
        req: ReqId,
        user: String,
    },
    /// List the rooms the user is a member of.
    ListRooms {
        #[serde(default)]
        req: ReqId,
    },
    /// List a room's members with their presence, a page at a time (by user name).
    ListMembers {
        #[serde(default)]
        req: ReqId,
        room: String,
        /// Members whose names sort after this one; the first page without it.
        #[serde(default)]
        after: Option<String>,
        /// Page size (default and maximum `limits.members_page_max`).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Post a message. `id` is chosen by the client and reused on every retry.
    Send {
        #[serde(default)]
        req: ReqId,
        room: String,
        id: String,
        body: String,
        /// The seq of the message this one answers (a reply in its thread).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        /// Members this message mentions (counted in their `list_rooms` until read).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
        /// Ids of media this user uploaded and has not attached yet (docs/MEDIA.md); with at
        /// least one, `body` may be empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
    },
    /// Replace the body of one's own message (within `rooms.edit_window_s` of sending it).
    /// `id` is a new client id for this request, deduplicated like a send's.
    Edit {
        #[serde(default)]
        req: ReqId,
        room: String,
        id: String,
        /// The seq of the message to edit.
        seq: u64,
        body: String,
    },
    /// Delete a message (one's own, or any in a group room one created): its body is erased
    /// from the store and it stays in the log as a tombstone.
    Delete {
        #[serde(default)]
        req: ReqId,
        room: String,
        id: String,
        seq: u64,
    },
    /// Add (or, with `remove`, take back) a reaction to a message: at most one of each
    /// reaction per user.
    React {
        #[serde(default)]
        req: ReqId,
        room: String,
        id: String,
        seq: u64,
        reaction: String,
        #[serde(default)]
        remove: bool,
    },
    /// Make a member an admin of the room, or a member again (the room's owner only).
    SetRole {
        #[serde(default)]
        req: ReqId,
        room: String,
        user: String,
        role: Role,
    },
    /// Remove a member from the room (owner or admin, of a member ranked below them).
    Kick {
        #[serde(default)]
        req: ReqId,
        room: String,
        user: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Remove a user from the room and keep them out until `until` (ms since the Unix epoch;
    /// for good without it): they cannot join or be invited. Owner or admin.
    Ban {
        #[serde(default)]
        req: ReqId,
        room: String,
        user: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        until: Option<u64>,
    },
    /// Lift a ban. Owner or admin.
    Unban {
        #[serde(default)]
        req: ReqId,
        room: String,
        user: String,
    },
    /// Keep a member from posting (messages, edits, reactions) until `until`; without it, lift
    /// the mute. Owner or admin.
    Mute {
        #[serde(default)]
        req: ReqId,
        room: String,
        user: String,
        #[serde(default)]
        until: Option<u64>,
    },
    /// Change a group room's settings (owner or admin): each field given replaces the current
    /// one, the others stay. Answered `ok`; every member gets a `settings` entry with all of the
    /// room's settings as they are now.
    SetRoom {
        #[serde(default)]
        req: ReqId,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        who_may_post: Option<Audience>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        who_may_invite: Option<Audience>,
    },
    /// Take no more direct messages from `user` (they are told `forbidden` when they try).
    Block {
        #[serde(default)]
        req: ReqId,
        user: String,
    },
    /// Lift a block.
    Unblock {
        #[serde(default)]
        req: ReqId,
        user: String,
    },
    /// The users this user blocked.
    ListBlocked {
        #[serde(default)]
        req: ReqId,
    },
    /// Register a device for push notifications (or update it: the same platform and token
    /// name the same device).
    RegisterDevice {
        #[serde(default)]
        req: ReqId,
        device: NewDevice,
    },
    /// This user's devices.
    ListDevices {
        #[serde(default)]
        req: ReqId,
    },
    /// Forget a device.
    RemoveDevice {
        #[serde(default)]
        req: ReqId,
        id: String,
    },
    /// A short-lived signed address of a media file (and of its thumbnail), for the uploader
    /// or a member of the room where it was posted.
    MediaUrl {
        #[serde(default)]
        req: ReqId,
        media: String,
    },
    /// A message and the replies to it, a page at a time by seq.
    Thread {
        #[serde(default)]
        req: ReqId,
        room: String,
        /// The seq of the thread's root message.
        root: u64,
        /// Replies with a seq above this one; the first page without it.
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Page through a room's history by room sequence number.
    History {
        #[serde(default)]
        req: ReqId,
        room: String,
        /// Entries with a sequence number below this one, newest page first.
        #[serde(default)]
        before: Option<u64>,
        /// Entries with a sequence number above this one, oldest page first.
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Record how far the user has read in a room; synced to the user's other connections.
    MarkRead {
        #[serde(default)]
        req: ReqId,
        room: String,
        seq: u64,
    },
    /// Liveness probe.
    Ping {
        #[serde(default)]
        req: ReqId,
    },
    /// Set how this user appears to others while any of their connections is live: `online`
    /// or `away`, with an optional status text (`offline` is what the node says when no
    /// connection is left; it cannot be set).
    SetPresence {
        #[serde(default)]
        req: ReqId,
        state: PresenceState,
        #[serde(default)]
        status: Option<String>,
    },
    /// Replace this connection's presence subscription with `users`. Only users who share a
    /// room (or a direct conversation) with the caller are watched; the others are listed as
    /// `hidden`, whether they exist or not.
    WatchPresence {
        #[serde(default)]
        req: ReqId,
        users: Vec<String>,
    },
    /// Tell the room's other members that this user is typing (`active`), or stopped.
    /// Ephemeral: never stored, and answered only when refused.
    Typing {
        #[serde(default)]
        req: ReqId,
        room: String,
        #[serde(default = "yes")]
        active: bool,
    },
    /// How far each member of a room has read (the stored read positions).
    Receipts {
        #[serde(default)]
        req: ReqId,
        room: String,
    },
    /// Choose what in `room` may notify you on your devices (push notifications): everything,
    /// mentions only, or nothing; `muted_until` (ms since the Unix epoch) silences it until
    /// then whatever the level. Yours alone: other members see nothing of it.
    SetNotifications {
        #[serde(default)]
        req: ReqId,
        room: String,
        level: NotifyLevel,
        #[serde(default)]
        muted_until: Option<u64>,
    },
}

/// What in a room may notify a member on their devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyLevel {
    /// Every message (the default).
    #[default]
    All,
    /// Messages that mention the member (and, in a direct conversation, every message).
    Mentions,
    /// Nothing.
    None,
}

impl NotifyLevel {
    pub fn is_all(&self) -> bool {
        *self == NotifyLevel::All
    }

    pub fn name(self) -> &'static str {
        match self {
            NotifyLevel::All => "all",
            NotifyLevel::Mentions => "mentions",
            NotifyLevel::None => "none",
        }
    }

    pub fn from_name(name: &str) -> Option<NotifyLevel> {
        [NotifyLevel::All, NotifyLevel::Mentions, NotifyLevel::None].into_iter().find(|l| l.name() == name)
    }
}

fn yes() -> bool {
    true
}

impl ClientFrame {
    /// The `type` names of every client frame, for precise "unknown type" errors.
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "hello",
        "register",
        "login",
        "authenticate",
        "logout_all",
        "delete_account",
        "create_room",
        "join",
        "leave",
        "invite",
        "open_direct",
        "list_rooms",
        "list_members",
        "send",
        "edit",
        "delete",
        "react",
        "thread",
        "set_role",
        "kick",
        "ban",
        "unban",
        "mute",
        "set_room",
        "block",
        "unblock",
        "list_blocked",
        "register_device",
        "list_devices",
        "remove_device",
        "media_url",
        "history",
        "mark_read",
        "ping",
        "set_presence",
        "watch_presence",
        "typing",
        "receipts",
        "set_notifications",
    ];

    /// A plain `send`: a message that replies to nothing and mentions no one.
    pub fn send(req: ReqId, room: impl Into<String>, id: impl Into<String>, body: impl Into<String>) -> ClientFrame {
        ClientFrame::Send {
            req,
            room: room.into(),
            id: id.into(),
            body: body.into(),
            reply_to: None,
            mentions: Vec::new(),
            attachments: Vec::new(),
        }
    }

    /// The request number of this frame (zero for `hello`).
    pub fn req(&self) -> ReqId {
        match self {
            ClientFrame::Hello { .. } => 0,
            ClientFrame::Register { req, .. }
            | ClientFrame::Login { req, .. }
            | ClientFrame::Authenticate { req, .. }
            | ClientFrame::LogoutAll { req }
            | ClientFrame::DeleteAccount { req, .. }
            | ClientFrame::CreateRoom { req, .. }
            | ClientFrame::Join { req, .. }
            | ClientFrame::Leave { req, .. }
            | ClientFrame::Invite { req, .. }
            | ClientFrame::OpenDirect { req, .. }
            | ClientFrame::ListRooms { req }
            | ClientFrame::ListMembers { req, .. }
            | ClientFrame::Send { req, .. }
            | ClientFrame::Edit { req, .. }
            | ClientFrame::Delete { req, .. }
            | ClientFrame::React { req, .. }
            | ClientFrame::Thread { req, .. }
            | ClientFrame::SetRole { req, .. }
            | ClientFrame::Kick { req, .. }
            | ClientFrame::Ban { req, .. }
            | ClientFrame::Unban { req, .. }
            | ClientFrame::Mute { req, .. }
            | ClientFrame::SetRoom { req, .. }
            | ClientFrame::Block { req, .. }
            | ClientFrame::Unblock { req, .. }
            | ClientFrame::ListBlocked { req }
            | ClientFrame::RegisterDevice { req, .. }
            | ClientFrame::ListDevices { req }
            | ClientFrame::RemoveDevice { req, .. }
            | ClientFrame::MediaUrl { req, .. }
            | ClientFrame::History { req, .. }
            | ClientFrame::MarkRead { req, .. }
            | ClientFrame::Ping { req }
            | ClientFrame::SetPresence { req, .. }
            | ClientFrame::WatchPresence { req, .. }
            | ClientFrame::Typing { req, .. }
            | ClientFrame::Receipts { req, .. }
            | ClientFrame::SetNotifications { req, .. } => *req,
        }
    }
}

/// What a room log entry records. A client that meets a kind it does not know skips the entry
/// (but still counts its cursor and seq): new kinds are added without a new protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A chat message; `body` holds its text.
    #[default]
    Text,
    /// `user` became a member (by creating, joining, being invited or a direct conversation).
    Join,
    /// `user` stopped being a member.
    Leave,
    /// The message `target` now reads `body` (its author edited it).
    Edit,
    /// The message `target` was deleted (by its author or a moderator, `from`).
    Delete,
    /// `from` reacted to the message `target` with `body`.
    React,
    /// `from` took back the reaction `body` to the message `target`.
    Unreact,
    /// `from` (the owner) gave `user` the role `body` (`admin` or `member`).
    Role,
    /// `from` removed `user` from the room; `body` is the reason given, if any.
    Kick,
    /// `from` banned `user` (removing them if a member) until `until` (for good without it);
    /// `body` is the reason given, if any.
    Ban,
    /// `from` lifted the ban of `user`.
    Unban,
    /// `from` muted `user` until `until`, or lifted the mute (no `until`).
    Mute,
    /// `from` (the owner or an admin) changed the room's settings; `settings` holds all of them
    /// as they are from this entry on.
    Settings,
}

impl EntryKind {
    /// Whether entries of this kind carry a client-chosen id, deduplicated per sender and room
    /// (membership entries carry a node-made one).
    pub fn has_client_id(self) -> bool {
        matches!(self, EntryKind::Text | EntryKind::Edit | EntryKind::Delete | EntryKind::React | EntryKind::Unreact)
    }

    /// Whether this entry, delivered to its `user`, means they are no longer a member.
    pub fn ends_membership(self) -> bool {
        matches!(self, EntryKind::Leave | EntryKind::Kick | EntryKind::Ban)
    }

    /// Whether this entry is a moderator's action on `user` (an audit trail entry).
    pub fn is_moderation(self) -> bool {
        matches!(self, EntryKind::Role | EntryKind::Kick | EntryKind::Ban | EntryKind::Unban | EntryKind::Mute)
    }

    /// Whether entries of this kind act on another message, named by `target`.
    pub fn has_target(self) -> bool {
        matches!(self, EntryKind::Edit | EntryKind::Delete | EntryKind::React | EntryKind::Unreact)
    }
}

/// A member's standing in a room. The creator of a group room is its owner; members of
/// direct conversations are members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Member,
    /// Kicks, bans and mutes members, deletes any message.
    Admin,
    /// What an admin does, and makes and unmakes admins.
    Owner,
}

/// Who may do something in a group room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every member.
    #[default]
    Members,
    /// The owner and the admins.
    Moderators,
}

impl Audience {
    /// Whether a member of this role is in the audience.
    pub fn includes(self, role: Role) -> bool {
        self == Audience::Members || role >= Role::Admin
    }

    fn is_members(&self) -> bool {
        *self == Audience::Members
    }
}

/// A group room's settings, all of them, as a `settings` entry carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    pub name: String,
    #[serde(default)]
    pub topic: String,
    /// Only members may invite others in; nobody joins by themselves.
    #[serde(default)]
    pub private: bool,
    /// Who may send messages (reactions, edits and deletes of one's own messages stay open to
    /// every member).
    #[serde(default)]
    pub who_may_post: Audience,
    /// Who may invite users in.
    #[serde(default)]
    pub who_may_invite: Audience,
}

/// The settings a `set_room` changes: each one given replaces the room's, the others stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettingsChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who_may_post: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who_may_invite: Option<Audience>,
}

impl RoomSettingsChange {
    /// `current` with this change applied.
    pub fn applied_to(&self, current: &RoomSettings) -> RoomSettings {
        RoomSettings {
            name: self.name.clone().unwrap_or_else(|| current.name.clone()),
            topic: self.topic.clone().unwrap_or_else(|| current.topic.clone()),
            private: self.private.unwrap_or(current.private),
            who_may_post: self.who_may_post.unwrap_or(current.who_may_post),
            who_may_invite: self.who_may_invite.unwrap_or(current.who_may_invite),
        }
    }
}

/// The push service a device is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Firebase Cloud Messaging: `token` is the app instance's registration token, `app` the
    /// Firebase project id.
    Fcm,
    /// Apple Push Notification service: `token` the device token (hex), `app` the topic (the
    /// app's bundle id).
    Apns,
    /// Web Push: `subscription` is the browser's push subscription.
    Webpush,
    /// A self-hosted gateway: `token` is the URL palaver posts signed JSON to.
    Webhook,
}

impl Platform {
    pub const ALL: [Platform; 4] = [Platform::Fcm, Platform::Apns, Platform::Webpush, Platform::Webhook];

    /// The name on the wire (and in the stores).
    pub fn name(self) -> &'static str {
        match self {
            Platform::Fcm => "fcm",
            Platform::Apns => "apns",
            Platform::Webpush => "webpush",
            Platform::Webhook => "webhook",
        }
    }

    pub fn from_name(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|platform| platform.name() == name)
    }
}

/// A browser's Web Push subscription (`PushSubscription.toJSON()`), taken as the browser gives
/// it: fields besides these (`expirationTime`, and whatever browsers add later) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushSubscription {
    /// The push service URL (https).
    pub endpoint: String,
    pub keys: WebPushKeys,
}

/// A subscription's keys, base64url: the browser's P-256 public key and the auth secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushKeys {
    pub p256dh: String,
    pub auth: String,
}

/// A device as `register_device` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    pub platform: Platform,
    /// The platform's token (not for `webpush`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The Web Push subscription (only for `webpush`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<WebPushSubscription>,
    /// The app: Firebase project id (`fcm`), topic (`apns`); free-form otherwise.
    #[serde(default)]
    pub app: String,
    /// The language notifications are written in, e.g. `en` or `pt-BR`.
    #[serde(default)]
    pub locale: String,
    /// Whether notifications on this device may show a preview of the message (where the
    /// server allows previews); without it they say only who wrote in which room.
    #[serde(default)]
    pub preview: bool,
}

/// A registered device, as `list_devices` shows it: the token itself is not repeated (it is a
/// credential of the push service), only its last characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Stable for the platform and token: registering them again updates this device.
    pub id: String,
    pub platform: Platform,
    pub app: String,
    #[serde(default)]
    pub locale: String,
    /// The last characters of the token or endpoint, to tell devices apart.
    pub hint: String,
    /// Whether its notifications may show a preview of the message.
    #[serde(default)]
    pub preview: bool,
    /// When it was registered first, ms since the Unix epoch.
    pub created_at: u64,
}

/// How many members gave one reaction to a message, and whether the caller is one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    pub reaction: String,
    pub count: u32,
    /// The caller gave this reaction.
    #[serde(default)]
    pub me: bool,
}

/// One entry of a room's log, as clients see it.
///
/// A text entry is shown in its current state wherever it is read back (history, threads,
/// replay on resume): an edited one with its latest body and `edited_at`, a deleted one as a
/// tombstone (`deleted`, no body, no mentions). Live, each change arrives as an entry of its own
/// (`edit`, `delete`, `react`, `unreact`) naming its `target`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub room: String,
    /// Dense per room: 1, 2, 3 …
    pub seq: u64,
    /// The client's message id for text entries; a node-made id for membership entries.
    pub id: String,
    /// The user who caused the entry.
    pub from: String,
    pub kind: EntryKind,
    /// For join and leave: the user whose membership changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub body: String,
    /// Commit time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// For edit, delete, react and unreact: the seq of the message acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// For a text entry: the seq of the message it replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// For a text entry: the members it mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// For a text entry read back after an edit: when it was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// For a text entry read back after its deletion: a tombstone (its body is gone). An edit
    /// entry of a deleted message is read back with its body gone too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// For ban and mute: until when (ms since the Unix epoch); none for a ban for good or a
    /// lifted mute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// In `history` and `thread` replies: the reactions to a text entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
    /// For a settings entry: the room's settings from this entry on (boxed: rare, and every
    /// entry would otherwise carry its size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Box<RoomSettings>>,
    /// For a text entry: the files attached to it (gone when it is deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file attached to a message, as the node recorded it when it was uploaded: the sender
/// names only the media id, so nothing here is the sender's word but `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The media id; `media_url` turns it into an address to download from.
    pub media: String,
    /// The file name given at upload.
    pub name: String,
    /// The media type sniffed from the bytes (never the uploader's claim).
    #[serde(rename = "type")]
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// For an image: its size in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// For an image: the thumbnail the node made of it (its address comes with the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
}

/// A thumbnail's size in pixels, so a client can lay it out before it loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
}

/// Whether a room is a group room or a direct conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Group,
    Direct,
}

/// A room as listed to a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub id: String,
    pub name: String,
    pub kind: RoomKind,
    pub private: bool,
    /// Sequence number of the room's newest entry.
    pub last_seq: u64,
    /// How far this user has read (0 when never marked).
    pub read_seq: u64,
    pub members: u32,
    /// A large room: its entries come without a user-log cursor (see `message`), so a client
    /// tracks its position in it by seq.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub large: bool,
    /// Your role in the room.
    #[serde(default)]
    pub role: Role,
    /// Messages after `read_seq` that mention this user (deleted ones not counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mentions: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    /// Who may send messages (every member when absent).
    #[serde(default, skip_serializing_if = "Audience::is_members")]
    pub who_may_post: Audience,
    /// Who may invite users in (every member when absent).
    #[serde(default, skip_serializing_if = "Audience::is_members")]
    pub who_may_invite: Audience,
    /// What in this room may notify you (`set_notifications`; `all` when absent).
    #[serde(default, skip_serializing_if = "NotifyLevel::is_all")]
    pub notify: NotifyLevel,
    /// Notifications from this room are silenced until then (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_muted_until: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a user appears to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// At least one connection is live, on any node.
    Online,
    /// Connected, but the user said they are away.
    Away,
    /// No live connection (after a short grace period, so a quick reconnect is not seen).
    Offline,
}

/// One user's presence as another user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    pub user: String,
    pub state: PresenceState,
    /// The user's status text, if they set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When offline: when the user's last connection ended (milliseconds since the Unix
    /// epoch), if known to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// What a receipt says about a member and a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The member's device was sent every entry up to `seq` (live, not stored).
    Delivered,
    /// The member marked the room read up to `seq` (stored).
    Read,
}

/// A member's stored read position in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPosition {
    pub user: String,
    pub seq: u64,
}

/// Stable error codes. Clients branch on these; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The bytes are not JSON / MessagePack, or not an object with a `type`.
    MalformedFrame,
    /// The `type` names no client frame.
    UnknownType,
    /// A field is missing, of the wrong type, or not allowed in this frame.
    InvalidField,
    /// The frame exceeded `limits.max_frame_bytes`; the connection closes with code 1009.
    FrameTooLarge,
    /// `hello` offered no version this node speaks; the connection closes.
    UnsupportedVersion,
    /// The first frame must be `hello`.
    HelloRequired,
    /// A second `hello`.
    AlreadyGreeted,
    /// The operation needs an authenticated connection.
    NotAuthenticated,
    /// The connection is already bound to a user.
    AlreadyAuthenticated,
    /// Unknown user or wrong password (deliberately not saying which).
    InvalidCredentials,
    /// Too many attempts; `retry_after_ms` says when to try again.
    RateLimited,
    UserExists,
    /// A user or room name breaks the naming rules.
    InvalidName,
    /// The password is too short or too long.
    InvalidPassword,
    TokenInvalid,
    TokenExpired,
    /// The token was revoked by "log out everywhere".
    TokenRevoked,
    NoSuchRoom,
    NoSuchUser,
    NotMember,
    /// Private room without invitation, or another operation the user may not do.
    Forbidden,
    /// The room has `limits.max_room_members` members.
    RoomFull,
    /// The user is in `limits.max_rooms_per_user` rooms.
    TooManyRooms,
    EmptyBody,
    BodyTooLarge,
    /// The seq names no message of the room (or an entry that is not a message).
    NoSuchMessage,
    /// `remove_device` named no device of yours.
    NoSuchDevice,
    /// The media id names no upload of yours that can be attached (unknown, another user's,
    /// unfinished or collected), or, for `media_url`, none you may see.
    NoSuchMedia,
    /// The media is already attached to a message; upload it again to send it again.
    MediaInUse,
    /// The message was deleted; it cannot be edited, reacted to or replied to.
    MessageDeleted,
    /// The request would change nothing: a reaction already given, or one not given taken back.
    Unchanged,
    /// The user is banned from the room (`join`, `invite`).
    Banned,
    /// A client message id that is empty, too long or has characters outside `[A-Za-z0-9_.:-]`.
    InvalidMessageId,
    /// A cursor beyond the end of the user's log.
    CursorAhead,
    /// Too many requests on this connection; slow down.
    SlowDown,
    /// The node is shutting down or the room is moving; retry (on another node).
    Unavailable,
    /// A server-side fault; the request may be retried with the same ids.
    Internal,
}

/// Frames the node sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to `hello`: the chosen version and the limits the client must respect.
    Welcome {
        version: u32,
        node: String,
        max_frame_bytes: u32,
        max_body_bytes: u32,
        /// Present (true) when the node will batch frames, as the client's `hello` asked; absent
        /// from a node that does not know batching, which then sends one frame per message.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batch: bool,
    },
    Registered {
        req: ReqId,
        user: String,
    },
    LoggedIn {
        req: ReqId,
        user: String,
        token: String,
        /// Token expiry, milliseconds since the Unix epoch.
        expires_at: u64,
    },
    /// The connection is bound to `user`. `cursor` is the end of the user's log right now;
    /// when the client asked to resume, replayed entries follow, then `live`.
    Authenticated {
        req: ReqId,
        user: String,
        cursor: Cursor,
    },
    /// Generic success for requests without a richer reply.
    Ok {
        req: ReqId,
    },
    Error {
        #[serde(default)]
        req: Option<ReqId>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Reply to `create_room`, `join`, `invite` and `open_direct`.
    Room {
        req: ReqId,
        room: RoomInfo,
    },
    Rooms {
        req: ReqId,
        rooms: Vec<RoomInfo>,
    },
    /// A page of a room's members (sorted by name) with each one's presence, in the same order.
    Members {
        req: ReqId,
        room: String,
        members: Vec<String>,
        #[serde(default)]
        presence: Vec<UserPresence>,
        /// Each member's role, in the same order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        roles: Vec<Role>,
        /// Members in the room.
        #[serde(default)]
        total: u32,
        /// Members online or away right now (the count a large room shows instead of a list).
        #[serde(default)]
        online: u32,
        /// More members sort after the last of this page.
        #[serde(default)]
        more: bool,
    },
    /// The message is committed with room sequence number `seq`. `duplicate` is true when this
    /// is a retry of an id the room already stored; the fields are then the original ones.
    Ack {
        req: ReqId,
        room: String,
        id: String,
        seq: u64,
        ts: u64,
        duplicate: bool,
    },
    /// An entry of the user's log, replayed or live. `cursor` is its position in the user's log;
    /// a client stores the highest cursor it has processed and resumes from it. An entry of a
    /// large room has no cursor (it is in the room log only): the client keeps the highest `seq`
    /// it has of that room and presents it in `authenticate.rooms`.
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        #[serde(flatten)]
        entry: Entry,
    },
    /// Replay after a resume is complete up to `cursor`, and in each large room up to the seq
    /// in `rooms`; what follows is live.
    Live {
        req: ReqId,
        cursor: Cursor,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        rooms: BTreeMap<String, u64>,
    },
    /// The resume cursor is older than what retention kept (`floor` is the oldest cursor that
    /// can be resumed from). The client must reload rooms and history; live delivery continues
    /// from `cursor`.
    Resync {
        req: ReqId,
        floor: Cursor,
        cursor: Cursor,
    },
    History {
        req: ReqId,
        room: String,
        entries: Vec<Entry>,
        /// True when more entries exist beyond this page in the paging direction.
        more: bool,
    },
    /// Reply to `list_blocked`: the users you blocked, sorted.
    Blocked {
        req: ReqId,
        users: Vec<String>,
    },
    /// Reply to `register_device`: the device as stored.
    Device {
        req: ReqId,
        device: DeviceInfo,
    },
    /// Reply to `media_url`: where to download the file (and its thumbnail) from, until
    /// `expires_at` (ms since the Unix epoch). Paths on this node's client port; any node
    /// serves them.
    MediaUrl {
        req: ReqId,
        media: String,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail_url: Option<String>,
        expires_at: u64,
    },
    /// Reply to `list_devices`: your devices, oldest first.
    Devices {
        req: ReqId,
        devices: Vec<DeviceInfo>,
    },
    /// Reply to `thread`: the root message and a page of its replies, oldest first.
    Thread {
        req: ReqId,
        room: String,
        root: Entry,
        replies: Vec<Entry>,
        /// More replies follow the last of this page.
        more: bool,
    },
    /// The user's read position in `room` moved (sent to all of the user's connections).
    Read {
        room: String,
        seq: u64,
    },
    /// The node is going away: reconnect (to any node) and resume from `cursor`, the last
    /// position this connection delivered (absent before authentication), and in each large room
    /// from the seq in `rooms`.
    Reconnect {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        rooms: BTreeMap<String, u64>,
    },
    Pong {
        req: ReqId,
    },
    /// Reply to `watch_presence`: the watched users' presence now; `hidden` are the names the
    /// caller may not watch (no shared room, or no such user: deliberately not told apart).
    PresenceList {
        req: ReqId,
        users: Vec<UserPresence>,
        #[serde(default)]
        hidden: Vec<String>,
    },
    /// A watched user's presence changed (coalesced: at most one per user per flush interval).
    Presence {
        #[serde(flatten)]
        presence: UserPresence,
    },
    /// A member of `room` is typing (`active`), or stopped. Clients drop an active indicator
    /// after `expires_in_ms` unless it is repeated; the node also sends `active: false` when it
    /// lapses.
    Typing {
        room: String,
        user: String,
        active: bool,
        expires_in_ms: u64,
    },
    /// A member's device got (`delivered`) or the member read (`read`) `room` up to `seq`.
    Receipt {
        room: String,
        user: String,
        kind: ReceiptKind,
        seq: u64,
    },
    /// Reply to `receipts`: every member's stored read position.
    Receipts {
        req: ReqId,
        room: String,
        reads: Vec<ReadPosition>,
    },
    /// The reaction counts of messages of a large room that changed since the last such frame
    /// (in a large room reactions are counted, not sent as entries): each listed message's
    /// reactions in full, sorted by reaction; a message whose last reaction was taken back is
    /// listed with none.
    Reactions {
        room: String,
        messages: Vec<MessageReactions>,
    },
}

/// The reactions of one message, for a `reactions` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReactions {
    pub seq: u64,
    pub reactions: Vec<ReactionTotal>,
}

/// How many members gave one reaction (without whether the receiver is one of them: the frame
/// is the same for every member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionTotal {
    pub reaction: String,
    pub count: u32,
}
