//! How values are encoded: a format byte, then a tuple of fields.
//!
//! Every value starts with [`FORMAT_V1`]. The fields follow in the tuple encoding of the `tuple`
//! module, in the order each type below lists them. The rules for changing a value:
//!
//! - **Additive change** (a new field): append it at the end, keep the format byte, and read it
//!   with a default (`TupleReader::uint_or`) so values written before still decode. Readers
//!   ignore fields after the ones they know, so old nodes read values that new nodes wrote.
//! - **Breaking change** (a field removed, reordered or reinterpreted): a new format byte. A
//!   node that meets a format it does not know reports [`CodecError::UnknownFormat`] instead of
//!   misreading the value.

use protocol::{
    Attachment, Audience, Entry, EntryKind, NotifyLevel, Platform, Role, RoomKind, RoomSettings, Thumbnail,
};

use super::tuple::{TupleError, TupleReader, TupleWriter};
use crate::{DeviceRecord, EventMask, MediaRecord, MediaState, WebhookHealth, WebhookRecord};

/// The first byte of every value written by this version of palaver.
pub const FORMAT_V1: u8 = 1;

/// A value that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("value format {0} is unknown to this version (it knows {FORMAT_V1})")]
    UnknownFormat(u8),
    #[error("unknown {what} code {code}")]
    UnknownCode { what: &'static str, code: u64 },
    #[error(transparent)]
    Tuple(#[from] TupleError),
}

fn writer() -> TupleWriter {
    TupleWriter::from_prefix(&[FORMAT_V1])
}

fn reader(bytes: &[u8]) -> Result<TupleReader<'_>, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(TupleReader::new(rest)),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

/// A bare counter or position (a dedup seq, a reaction count).
pub fn encode_u64(n: u64) -> Vec<u8> {
    writer().uint(n).into_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, CodecError> {
    Ok(reader(bytes)?.uint()?)
}

/// `(P, "acct", user)`: (password hash, token epoch, created ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountValue {
    pub password_hash: String,
    pub token_epoch: u64,
    pub created_ms: u64,
}

impl AccountValue {
    pub fn encode(&self) -> Vec<u8> {
        writer().str(&self.password_hash).uint(self.token_epoch).uint(self.created_ms).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(AccountValue { password_hash: r.str()?, token_epoch: r.uint()?, created_ms: r.uint()? })
    }
}

/// `(P, "room", room)`: (name, kind, private, created by, large since). Written when the room is
/// made and once more if it becomes large; the counters that change with every append live in
/// [`RoomHead`] so this value is never rewritten on the hot path.
///
/// `large_since` (added after format 1 was first written) is the seq of the room's first entry
/// kept in the room log only, stored as 0 while the room fans out on write (seqs start at 1),
/// and read as 0 from values that predate it. It lives here rather than in the head so that the
/// one-way switch is never undone by a rewrite of the head.
///
/// `topic`, `who_may_post` and `who_may_invite` (added later still, with room settings) read as
/// no topic and every member allowed from values that predate them. A settings entry rewrites
/// the value, with the name and privacy it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMeta {
    pub name: String,
    pub kind: RoomKind,
    pub private: bool,
    pub created_by: String,
    pub large_since: Option<u64>,
    pub topic: String,
    pub who_may_post: Audience,
    pub who_may_invite: Audience,
}

impl RoomMeta {
    pub fn encode(&self) -> Vec<u8> {
        writer()
            .str(&self.name)
            .uint(room_kind_code(self.kind))
            .boolean(self.private)
            .str(&self.created_by)
            .uint(self.large_since.unwrap_or(0))
            .str(&self.topic)
            .uint(audience_code(self.who_may_post))
            .uint(audience_code(self.who_may_invite))
            .into_bytes()
    }

    /// The settings part of the value.
    pub fn settings(&self) -> RoomSettings {
        RoomSettings {
            name: self.name.clone(),
            topic: self.topic.clone(),
            private: self.private,
            who_may_post: self.who_may_post,
            who_may_invite: self.who_may_invite,
        }
    }

    /// This value with `settings` in place of its own.
    pub fn with_settings(&self, settings: RoomSettings) -> RoomMeta {
        RoomMeta {
            name: settings.name,
            topic: settings.topic,
            private: settings.private,
            who_may_post: settings.who_may_post,
            who_may_invite: settings.who_may_invite,
            ..self.clone()
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(RoomMeta {
            name: r.str()?,
            kind: room_kind(r.uint()?)?,
            private: r.boolean()?,
            created_by: r.str()?,
            large_since: Some(r.uint_or(0)?).filter(|&seq| seq > 0),
            topic: if r.is_empty() { String::new() } else { r.str()? },
            who_may_post: audience(r.uint_or(0)?)?,
            who_may_invite: audience(r.uint_or(0)?)?,
        })
    }
}

/// `(P, "head", room)`: (last seq, members). Read and written by every append of the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomHead {
    pub last_seq: u64,
    pub members: u32,
}

impl RoomHead {
    pub fn encode(&self) -> Vec<u8> {
        writer().uint(self.last_seq).uint(u64::from(self.members)).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(RoomHead { last_seq: r.uint()?, members: r.u32()? })
    }
}

/// `(P, "rlog", room, seq)`: (kind, from, id, user or null, body, ts, writer, target, reply to,
/// mention count, mentions…, edited at or null, deleted, until or null, settings flag and
/// settings…, attachment count, attachments…). Room and seq are in the
/// key and not repeated. `writer` is a random number drawn once per append call: after
/// `commit_unknown_result` the retry finds out whether the entry at hand is its own.
///
/// The fields from `target` on were added after format 1 was first written, for messages that
/// change, `until` after them, for moderation, and the settings after that (a flag, then for a
/// settings entry name, topic, private, who may post, who may invite); values that predate
/// them read as a message never replied to, mentioning nobody, never edited or deleted, and an
/// entry with no end and no settings. The attachments came last (a count, then per attachment
/// media id, name, type, size, width or null, height or null, thumbnail width or null,
/// thumbnail height or null); values without them read as carrying none.
/// `target` and `reply_to` are seqs, stored as 0 for none (seqs start at 1); the mentions are a
/// count followed by that many names, so a field added later still goes after them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryValue {
    pub kind: EntryKind,
    pub from: String,
    pub id: String,
    pub user: Option<String>,
    pub body: String,
    pub ts: u64,
    pub writer: u64,
    /// For edit, delete, react and unreact: the seq of the message acted on.
    pub target: Option<u64>,
    /// For text: the seq of the message it replies to.
    pub reply_to: Option<u64>,
    /// For text: the members it mentions, as sent.
    pub mentions: Vec<String>,
    /// For text: when it was last edited.
    pub edited_at: Option<u64>,
    /// A deleted message (a tombstone), or an edit of one: the body is gone.
    pub deleted: bool,
    /// For ban and mute: until when (ms since the Unix epoch); none for good (ban) or for a
    /// lifted mute.
    pub until: Option<u64>,
    /// For settings: the room's settings from this entry on.
    pub settings: Option<RoomSettings>,
    /// For text: the files it posts (none once deleted).
    pub attachments: Vec<Attachment>,
}

impl EntryValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = writer()
            .uint(entry_kind_code(self.kind))
            .str(&self.from)
            .str(&self.id)
            .opt_str(self.user.as_deref())
            .str(&self.body)
            .uint(self.ts)
            .uint(self.writer)
            .uint(self.target.unwrap_or(0))
            .uint(self.reply_to.unwrap_or(0));
        w = w.uint(self.mentions.len() as u64);
        for name in &self.mentions {
            w = w.str(name);
        }
        w = w.opt_uint(self.edited_at).boolean(self.deleted).opt_uint(self.until).boolean(self.settings.is_some());
        if let Some(settings) = &self.settings {
            w = w
                .str(&settings.name)
                .str(&settings.topic)
                .boolean(settings.private)
                .uint(audience_code(settings.who_may_post))
                .uint(audience_code(settings.who_may_invite));
        }
        w = w.uint(self.attachments.len() as u64);
        for attachment in &self.attachments {
            let thumbnail = attachment.thumbnail.map(|t| (t.width, t.height)).unzip();
            w = w
                .str(&attachment.media)
                .str(&attachment.name)
                .str(&attachment.content_type)
                .uint(attachment.size)
                .opt_uint(attachment.width.map(u64::from))
                .opt_uint(attachment.height.map(u64::from))
                .opt_uint(thumbnail.0.map(u64::from))
                .opt_uint(thumbnail.1.map(u64::from));
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(EntryValue {
            kind: entry_kind(r.uint()?)?,
            from: r.str()?,
            id: r.str()?,
            user: r.opt_str()?,
            body: r.str()?,
            ts: r.uint()?,
            writer: r.uint()?,
            target: seq_or_none(r.uint_or(0)?),
            reply_to: seq_or_none(r.uint_or(0)?),
            mentions: {
                let count = r.uint_or(0)?;
                (0..count).map(|_| r.str()).collect::<Result<_, _>>()?
            },
            edited_at: if r.is_empty() { None } else { r.opt_uint()? },
            deleted: if r.is_empty() { false } else { r.boolean()? },
            until: if r.is_empty() { None } else { r.opt_uint()? },
            settings: if r.is_empty() || !r.boolean()? {
                None
            } else {
                Some(RoomSettings {
                    name: r.str()?,
                    topic: r.str()?,
                    private: r.boolean()?,
                    who_may_post: audience(r.uint()?)?,
                    who_may_invite: audience(r.uint()?)?,
                })
            },
            attachments: {
                let count = r.uint_or(0)?;
                (0..count).map(|_| attachment(&mut r)).collect::<Result<_, _>>()?
            },
        })
    }

    pub fn into_entry(self, room: &str, seq: u64) -> Entry {
        Entry {
            room: room.to_string(),
            seq,
            id: self.id,
            from: self.from,
            kind: self.kind,
            user: self.user,
            body: self.body,
            ts: self.ts,
            target: self.target,
            reply_to: self.reply_to,
            mentions: self.mentions,
            edited_at: self.edited_at,
            deleted: self.deleted,
            until: self.until,
            reactions: Vec::new(),
            settings: self.settings.map(Box::new),
            attachments: self.attachments,
        }
    }
}

fn opt_u32(r: &mut TupleReader<'_>) -> Result<Option<u32>, CodecError> {
    match r.opt_uint()? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| CodecError::UnknownCode { what: "pixel size", code: n }),
    }
}

/// Two optional sizes that are there together or not at all.
fn size_pair(width: Option<u32>, height: Option<u32>) -> Option<(u32, u32)> {
    width.zip(height)
}

fn attachment(r: &mut TupleReader<'_>) -> Result<Attachment, CodecError> {
    Ok(Attachment {
        media: r.str()?,
        name: r.str()?,
        content_type: r.str()?,
        size: r.uint()?,
        width: opt_u32(r)?,
        height: opt_u32(r)?,
        thumbnail: size_pair(opt_u32(r)?, opt_u32(r)?).map(|(width, height)| Thumbnail { width, height }),
    })
}

/// `(P, "media", id)`: (owner, name, content type, size, SHA-256, width or null, height or null,
/// thumbnail width or null, thumbnail height or null, created ms, state, room or null, seq or
/// null); the id is the key's. The state is a code (uploading 0, ready 1, attached 2, doomed 3);
/// room and seq are those of the message an attached upload was posted in, null otherwise.
pub fn encode_media(media: &MediaRecord) -> Vec<u8> {
    let (thumb_width, thumb_height) = media.thumbnail.unzip();
    let (code, room, seq) = match &media.state {
        MediaState::Uploading => (0, None, None),
        MediaState::Ready => (1, None, None),
        MediaState::Attached { room, seq } => (2, Some(room.as_str()), Some(*seq)),
        MediaState::Doomed => (3, None, None),
    };
    writer()
        .str(&media.owner)
        .str(&media.name)
        .str(&media.content_type)
        .uint(media.size)
        .str(&media.sha256)
        .opt_uint(media.width.map(u64::from))
        .opt_uint(media.height.map(u64::from))
        .opt_uint(thumb_width.map(u64::from))
        .opt_uint(thumb_height.map(u64::from))
        .uint(media.created_ms)
        .uint(code)
        .opt_str(room)
        .opt_uint(seq)
        .into_bytes()
}

/// The media record `id` from its value.
pub fn decode_media(id: String, bytes: &[u8]) -> Result<MediaRecord, CodecError> {
    let mut r = reader(bytes)?;
    let owner = r.str()?;
    let name = r.str()?;
    let content_type = r.str()?;
    let size = r.uint()?;
    let sha256 = r.str()?;
    let width = opt_u32(&mut r)?;
    let height = opt_u32(&mut r)?;
    let thumbnail = size_pair(opt_u32(&mut r)?, opt_u32(&mut r)?);
    let created_ms = r.uint()?;
    let state = match (r.uint()?, r.opt_str()?, r.opt_uint()?) {
        (0, _, _) => MediaState::Uploading,
        (1, _, _) => MediaState::Ready,
        (2, Some(room), Some(seq)) => MediaState::Attached { room, seq },
        (3, _, _) => MediaState::Doomed,
        (code, _, _) => return Err(CodecError::UnknownCode { what: "media state", code }),
    };
    Ok(MediaRecord { id, owner, name, content_type, size, sha256, width, height, thumbnail, created_ms, state })
}

/// A seq field stored as 0 for none.
fn seq_or_none(seq: u64) -> Option<u64> {
    (seq > 0).then_some(seq)
}

/// The value of a key whose presence is the whole fact (an index entry, a reaction given, a
/// mention): the format byte alone.
pub fn encode_marker() -> Vec<u8> {
    writer().into_bytes()
}

/// `(P, "uhead", user)`: (head, floor, rooms). The user's log holds cursors `floor < c <= head`;
/// `rooms` counts the user's memberships for the rooms-per-user limit. One key, so an append
/// reads and writes a single key per recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserHead {
    pub head: u64,
    pub floor: u64,
    pub rooms: u32,
}

impl UserHead {
    pub fn encode(&self) -> Vec<u8> {
        writer().uint(self.head).uint(self.floor).uint(u64::from(self.rooms)).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(UserHead { head: r.uint()?, floor: r.uint()?, rooms: r.u32()? })
    }
}

/// `(P, "ulog", user, cursor)`: (room, seq), a pointer to the room log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub room: String,
    pub seq: u64,
}

impl Pointer {
    pub fn encode(&self) -> Vec<u8> {
        writer().str(&self.room).uint(self.seq).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(Pointer { room: r.str()?, seq: r.uint()? })
    }
}

/// `(P, "mem", room, user)`: (join seq, role, mute end). The member's standing lives on the
/// room's side of the membership because every append already reads its sender's `mem` key:
/// the mute check costs no read of its own, and a read position moving (`memof`) never
/// conflicts with a send. It ends with the membership, as in the SQLite backend: a member who
/// leaves and comes back is a plain, unmuted member again.
///
/// `role` and `muted_until` were added after format 1 was first written. The role is stored as
/// a code with 0 for none, which is how values from before roles read: such a member's role
/// follows from the room ([`MemberValue::role_in`]). `muted_until` is 0 for no mute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberValue {
    pub join_seq: u64,
    pub role: Option<Role>,
    /// The member may not post while `muted_until` > the append's ts (ms since the Unix epoch).
    pub muted_until: u64,
}

impl MemberValue {
    /// A member who just joined (or was made one by the room's creation) with `role`.
    pub fn joined(join_seq: u64, role: Role) -> Self {
        MemberValue { join_seq, role: Some(role), muted_until: 0 }
    }

    pub fn encode(&self) -> Vec<u8> {
        writer().uint(self.join_seq).uint(self.role.map_or(0, role_code)).uint(self.muted_until).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(MemberValue {
            join_seq: r.uint()?,
            role: match r.uint_or(0)? {
                0 => None,
                code => Some(role(code)?),
            },
            muted_until: r.uint_or(0)?,
        })
    }

    /// The role of `user`, this member of the room described by `meta`. A value from before
    /// roles names none: the creator of a group room owns it, everyone else is a member (what
    /// the SQLite backend's migration decides for its rows).
    pub fn role_in(&self, meta: &RoomMeta, user: &str) -> Role {
        self.role.unwrap_or(if meta.kind == RoomKind::Group && meta.created_by == user {
            Role::Owner
        } else {
            Role::Member
        })
    }
}

/// `(P, "ban", room, user)`: (until or null, reason). Apart from the membership because a ban
/// outlives it and may name a user who never joined; lifted by an unban, kept (and ignored)
/// once `until` has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanValue {
    /// Until when (ms since the Unix epoch); none for good.
    pub until: Option<u64>,
    pub reason: String,
}

impl BanValue {
    pub fn encode(&self) -> Vec<u8> {
        writer().opt_uint(self.until).str(&self.reason).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(BanValue { until: r.opt_uint()?, reason: r.str()? })
    }

    /// Whether the ban keeps its user out at `now`.
    pub fn holds_at(&self, now: u64) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// `(P, "memof", user, room)`: (join seq, read seq). The read position lives in the user's side
/// of the membership: "list my rooms" reads it in the same range read, and it ends with the
/// membership, as in the SQLite backend (a member who leaves and rejoins starts unread).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MembershipValue {
    pub join_seq: u64,
    pub read_seq: u64,
    /// The member's own notification level here, and until when it is silenced (fields added
    /// later: values without them read as `all`, not silenced).
    pub notify: NotifyLevel,
    pub notify_muted_until: Option<u64>,
}

impl MembershipValue {
    /// A membership that starts at `join_seq`, nothing read, notification settings at defaults.
    pub fn joined(join_seq: u64) -> Self {
        MembershipValue { join_seq, read_seq: 0, notify: NotifyLevel::All, notify_muted_until: None }
    }

    pub fn encode(&self) -> Vec<u8> {
        writer()
            .uint(self.join_seq)
            .uint(self.read_seq)
            .uint(notify_code(self.notify))
            .opt_uint(self.notify_muted_until)
            .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        let (join_seq, read_seq) = (r.uint()?, r.uint()?);
        let notify = notify_from_code(r.uint_or(0)?)?;
        let notify_muted_until = if r.is_empty() { None } else { r.opt_uint()? };
        Ok(MembershipValue { join_seq, read_seq, notify, notify_muted_until })
    }
}

fn notify_code(level: NotifyLevel) -> u64 {
    match level {
        NotifyLevel::All => 0,
        NotifyLevel::Mentions => 1,
        NotifyLevel::None => 2,
    }
}

fn notify_from_code(code: u64) -> Result<NotifyLevel, CodecError> {
    match code {
        0 => Ok(NotifyLevel::All),
        1 => Ok(NotifyLevel::Mentions),
        2 => Ok(NotifyLevel::None),
        code => Err(CodecError::UnknownCode { what: "notify level", code }),
    }
}

/// `(P, "owner", room)`: (node, epoch, writer). `writer` is drawn once per claim call, so a claim
/// retried after `commit_unknown_result` returns the epoch it got instead of claiming again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerValue {
    pub node: String,
    pub epoch: u64,
    pub writer: u64,
}

impl OwnerValue {
    pub fn encode(&self) -> Vec<u8> {
        writer().str(&self.node).uint(self.epoch).uint(self.writer).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        Ok(OwnerValue { node: r.str()?, epoch: r.uint()?, writer: r.uint()? })
    }
}

/// `(P, "pnote", user)`: (status, set ms). A cleared status is stored as the empty text: a
/// status is never blank (`set_presence` drops blank ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteValue {
    pub status: Option<String>,
    pub set_ms: u64,
}

impl NoteValue {
    pub fn encode(&self) -> Vec<u8> {
        writer().str(self.status.as_deref().unwrap_or("")).uint(self.set_ms).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        let status = r.str()?;
        Ok(NoteValue { status: (!status.is_empty()).then_some(status), set_ms: r.uint()? })
    }
}

// Codes are part of the stored format: never renumber, only add.
fn entry_kind_code(kind: EntryKind) -> u64 {
    match kind {
        EntryKind::Text => 0,
        EntryKind::Join => 1,
        EntryKind::Leave => 2,
        EntryKind::Edit => 3,
        EntryKind::Delete => 4,
        EntryKind::React => 5,
        EntryKind::Unreact => 6,
        EntryKind::Role => 7,
        EntryKind::Kick => 8,
        EntryKind::Ban => 9,
        EntryKind::Unban => 10,
        EntryKind::Mute => 11,
        EntryKind::Settings => 12,
    }
}

fn entry_kind(code: u64) -> Result<EntryKind, CodecError> {
    match code {
        0 => Ok(EntryKind::Text),
        1 => Ok(EntryKind::Join),
        2 => Ok(EntryKind::Leave),
        3 => Ok(EntryKind::Edit),
        4 => Ok(EntryKind::Delete),
        5 => Ok(EntryKind::React),
        6 => Ok(EntryKind::Unreact),
        7 => Ok(EntryKind::Role),
        8 => Ok(EntryKind::Kick),
        9 => Ok(EntryKind::Ban),
        10 => Ok(EntryKind::Unban),
        11 => Ok(EntryKind::Mute),
        12 => Ok(EntryKind::Settings),
        code => Err(CodecError::UnknownCode { what: "entry kind", code }),
    }
}

fn role_code(role: Role) -> u64 {
    match role {
        Role::Member => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}

fn role(code: u64) -> Result<Role, CodecError> {
    match code {
        1 => Ok(Role::Member),
        2 => Ok(Role::Admin),
        3 => Ok(Role::Owner),
        code => Err(CodecError::UnknownCode { what: "role", code }),
    }
}

fn audience_code(audience: Audience) -> u64 {
    match audience {
        Audience::Members => 0,
        Audience::Moderators => 1,
    }
}

fn audience(code: u64) -> Result<Audience, CodecError> {
    match code {
        0 => Ok(Audience::Members),
        1 => Ok(Audience::Moderators),
        code => Err(CodecError::UnknownCode { what: "audience", code }),
    }
}

fn room_kind_code(kind: RoomKind) -> u64 {
    match kind {
        RoomKind::Group => 0,
        RoomKind::Direct => 1,
    }
}

fn room_kind(code: u64) -> Result<RoomKind, CodecError> {
    match code {
        0 => Ok(RoomKind::Group),
        1 => Ok(RoomKind::Direct),
        code => Err(CodecError::UnknownCode { what: "room kind", code }),
    }
}

/// `(P, "hook", id)`: (URL, event mask, secret, created ms, failures, last error, dead since);
/// the id is the key's.
pub fn encode_webhook(hook: &WebhookRecord) -> Vec<u8> {
    writer()
        .str(&hook.url)
        .uint(u64::from(hook.events.0))
        .str(&hook.secret)
        .uint(hook.created_ms)
        .uint(u64::from(hook.health.failures))
        .str(&hook.health.last_error)
        .opt_uint(hook.health.dead_since)
        .into_bytes()
}

/// The endpoint `id` from its value.
pub fn decode_webhook(id: String, bytes: &[u8]) -> Result<WebhookRecord, CodecError> {
    let mut r = reader(bytes)?;
    let url = r.str()?;
    let mask = r.uint()?;
    let events =
        EventMask(u32::try_from(mask).map_err(|_| CodecError::UnknownCode { what: "event mask", code: mask })?);
    Ok(WebhookRecord {
        id,
        url,
        events,
        secret: r.str()?,
        created_ms: r.uint()?,
        health: WebhookHealth {
            failures: u32::try_from(r.uint()?).unwrap_or(u32::MAX),
            last_error: r.str()?,
            dead_since: r.opt_uint()?,
        },
    })
}

/// `(P, "lease", name)`: (holder, until ms).
pub fn encode_lease(holder: &str, until_ms: u64) -> Vec<u8> {
    writer().str(holder).uint(until_ms).into_bytes()
}

pub fn decode_lease(bytes: &[u8]) -> Result<(String, u64), CodecError> {
    let mut r = reader(bytes)?;
    Ok((r.str()?, r.uint()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EntryValue {
        EntryValue {
            kind: EntryKind::Leave,
            from: "alice".into(),
            id: "n-17".into(),
            user: Some("alice".into()),
            body: "bye\0for now ✓".into(),
            ts: 1_700_000_000_000,
            writer: u64::MAX,
            ..EntryValue::default()
        }
    }

    /// A text entry using every field added for messages that change.
    fn message() -> EntryValue {
        EntryValue {
            kind: EntryKind::Text,
            user: None,
            reply_to: Some(3),
            mentions: vec!["bob".into(), "zoë\0".into()],
            edited_at: Some(1_700_000_000_500),
            ..entry()
        }
    }

    /// A ban for a while, using the field added for moderation.
    fn ban() -> EntryValue {
        EntryValue { kind: EntryKind::Ban, user: Some("mallory".into()), until: Some(1_700_000_600_000), ..entry() }
    }

    /// Format 1 as written before moderation: every field but `until`.
    fn before_moderation(e: &EntryValue) -> Vec<u8> {
        let mut w = TupleWriter::from_prefix(&old_format(e))
            .uint(e.target.unwrap_or(0))
            .uint(e.reply_to.unwrap_or(0))
            .uint(e.mentions.len() as u64);
        for name in &e.mentions {
            w = w.str(name);
        }
        w.opt_uint(e.edited_at).boolean(e.deleted).into_bytes()
    }

    /// Format 1 as written before messages could change: the first seven fields only.
    fn old_format(e: &EntryValue) -> Vec<u8> {
        writer()
            .uint(entry_kind_code(e.kind))
            .str(&e.from)
            .str(&e.id)
            .opt_str(e.user.as_deref())
            .str(&e.body)
            .uint(e.ts)
            .uint(e.writer)
            .into_bytes()
    }

    #[test]
    fn values_round_trip() {
        let e = entry();
        assert_eq!(EntryValue::decode(&e.encode()).unwrap(), e);
        let text = EntryValue { kind: EntryKind::Text, user: None, body: String::new(), ..entry() };
        assert_eq!(EntryValue::decode(&text.encode()).unwrap(), text);
        assert_eq!(EntryValue::decode(&message().encode()).unwrap(), message());
        let tombstone = EntryValue { body: String::new(), mentions: Vec::new(), deleted: true, ..message() };
        assert_eq!(EntryValue::decode(&tombstone.encode()).unwrap(), tombstone);
        let reaction = EntryValue { kind: EntryKind::React, target: Some(u64::MAX), body: "👍".into(), ..entry() };
        assert_eq!(EntryValue::decode(&reaction.encode()).unwrap(), reaction);
        assert_eq!(EntryValue::decode(&ban().encode()).unwrap(), ban());
        let lifted = EntryValue { kind: EntryKind::Mute, until: None, ..ban() };
        assert_eq!(EntryValue::decode(&lifted.encode()).unwrap(), lifted);
        let a = AccountValue { password_hash: "$argon2id$v=19$...".into(), token_epoch: 3, created_ms: 9 };
        assert_eq!(AccountValue::decode(&a.encode()).unwrap(), a);
        for (kind, private, large_since) in
            [(RoomKind::Group, true, None), (RoomKind::Direct, false, Some(1)), (RoomKind::Group, false, Some(1 << 40))]
        {
            let m = RoomMeta {
                name: "Lobby".into(),
                kind,
                private,
                created_by: "bob".into(),
                large_since,
                topic: "what we talk about".into(),
                who_may_post: Audience::Moderators,
                who_may_invite: Audience::Members,
            };
            assert_eq!(RoomMeta::decode(&m.encode()).unwrap(), m);
        }
        let settings = RoomSettings {
            name: "News".into(),
            topic: String::new(),
            private: true,
            who_may_post: Audience::Members,
            who_may_invite: Audience::Moderators,
        };
        let changed = EntryValue { kind: EntryKind::Settings, settings: Some(settings), ..entry() };
        assert_eq!(EntryValue::decode(&changed.encode()).unwrap(), changed);
        let h = RoomHead { last_seq: 1 << 33, members: u32::MAX };
        assert_eq!(RoomHead::decode(&h.encode()).unwrap(), h);
        let u = UserHead { head: 70_000, floor: 12, rooms: 5 };
        assert_eq!(UserHead::decode(&u.encode()).unwrap(), u);
        let p = Pointer { room: "dm:a:b".into(), seq: 42 };
        assert_eq!(Pointer::decode(&p.encode()).unwrap(), p);
        let m = MembershipValue { read_seq: 99, ..MembershipValue::joined(3) };
        assert_eq!(MembershipValue::decode(&m.encode()).unwrap(), m);
        for (notify, until) in [(NotifyLevel::Mentions, Some(1 << 41)), (NotifyLevel::None, None)] {
            let m = MembershipValue { notify, notify_muted_until: until, ..MembershipValue::joined(3) };
            assert_eq!(MembershipValue::decode(&m.encode()).unwrap(), m);
        }
        // A value written before the notification settings existed reads as the defaults.
        let old = writer().uint(3).uint(99).into_bytes();
        assert_eq!(
            MembershipValue::decode(&old).unwrap(),
            MembershipValue { read_seq: 99, ..MembershipValue::joined(3) }
        );
        for role in [Role::Member, Role::Admin, Role::Owner] {
            let m = MemberValue { join_seq: 1 << 40, role: Some(role), muted_until: 1_700_000_000_000 };
            assert_eq!(MemberValue::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(MemberValue::decode(&MemberValue::joined(4, Role::Owner).encode()).unwrap().muted_until, 0);
        for until in [None, Some(0), Some(u64::MAX)] {
            let b = BanValue { until, reason: "spam\0and more ✓".into() };
            assert_eq!(BanValue::decode(&b.encode()).unwrap(), b);
        }
        let o = OwnerValue { node: "node-1".into(), epoch: 7, writer: 1 << 60 };
        assert_eq!(OwnerValue::decode(&o.encode()).unwrap(), o);
        assert_eq!(decode_u64(&encode_u64(123_456)).unwrap(), 123_456);
    }

    #[test]
    fn entry_becomes_the_protocol_entry() {
        let got = entry().into_entry("r", 5);
        assert_eq!(
            (got.room.as_str(), got.seq, got.kind, got.user.as_deref(), got.until),
            ("r", 5, EntryKind::Leave, Some("alice"), None)
        );
        let got = ban().into_entry("r", 6);
        assert_eq!((got.kind, got.user.as_deref(), got.until), (EntryKind::Ban, Some("mallory"), ban().until));
    }

    #[test]
    fn every_value_starts_with_the_format_byte() {
        assert_eq!(encode_u64(0), [FORMAT_V1, 0x14]);
        assert_eq!(Pointer { room: "r".into(), seq: 1 }.encode(), b"\x01\x02r\x00\x15\x01");
    }

    #[test]
    fn unknown_formats_are_refused() {
        let mut bytes = entry().encode();
        bytes[0] = 2;
        assert_eq!(EntryValue::decode(&bytes), Err(CodecError::UnknownFormat(2)));
        assert_eq!(decode_u64(b""), Err(CodecError::Empty));
        assert_eq!(decode_u64(b"\x00\x14"), Err(CodecError::UnknownFormat(0)));
        let bad_kind = writer().uint(99).str("a").str("b").null().str("").uint(0).uint(0).into_bytes();
        assert_eq!(EntryValue::decode(&bad_kind), Err(CodecError::UnknownCode { what: "entry kind", code: 99 }));
        let bad_role = writer().uint(1).uint(4).uint(0).into_bytes();
        assert_eq!(MemberValue::decode(&bad_role), Err(CodecError::UnknownCode { what: "role", code: 4 }));
    }

    #[test]
    fn additive_changes_stay_readable() {
        // A later version appends a field: this version ignores it.
        for value in [entry(), message(), ban()] {
            let newer = TupleWriter::from_prefix(&value.encode()).str("a field from the future").into_bytes();
            assert_eq!(EntryValue::decode(&newer).unwrap(), value);
        }
        // Truncated values are errors, not panics: inside the fields every value has, always;
        // after them a cut can fall between two added fields, and then reads as an older value
        // that lacks the rest, or else is an error.
        let full = message().encode();
        let always = old_format(&message()).len();
        for len in 0..full.len() {
            match EntryValue::decode(&full[..len]) {
                Err(_) => {}
                Ok(_) if len < always => panic!("a value cut at byte {len} of {always} decoded"),
                Ok(cut) => assert_eq!(old_format(&cut), old_format(&message()), "cut at byte {len}"),
            }
        }
    }

    #[test]
    fn entries_from_before_messages_changed_read_as_unchanged() {
        for value in [entry(), EntryValue { kind: EntryKind::Text, user: None, ..entry() }] {
            let old = old_format(&value);
            let read = EntryValue::decode(&old).unwrap();
            assert_eq!(read, value);
            assert_eq!(
                (read.target, read.reply_to, read.mentions.len(), read.edited_at, read.deleted, read.until),
                (None, None, 0, None, false, None)
            );
            // The added fields follow the old ones, whose bytes stay as they were: older readers
            // read what this version writes.
            assert!(value.encode().starts_with(&old));
        }
        assert!(message().encode().starts_with(&old_format(&message())));
        // Values from after messages could change but before moderation: no `until`.
        for value in [entry(), message(), EntryValue { deleted: true, ..message() }] {
            let old = before_moderation(&value);
            assert_eq!(EntryValue::decode(&old).unwrap(), value);
            assert!(value.encode().starts_with(&old));
        }
        let old = before_moderation(&ban());
        assert_eq!(EntryValue::decode(&old).unwrap(), EntryValue { until: None, ..ban() });
        assert!(ban().encode().starts_with(&old));
    }

    /// A text entry carrying files, one an image with a thumbnail.
    fn posted() -> EntryValue {
        EntryValue {
            attachments: vec![
                Attachment {
                    media: "m-1".into(),
                    name: "cat\0.png".into(),
                    content_type: "image/png".into(),
                    size: 1 << 33,
                    width: Some(640),
                    height: Some(480),
                    thumbnail: Some(Thumbnail { width: 160, height: 120 }),
                },
                Attachment { media: "m-2".into(), name: "notes.txt".into(), size: 12, ..Attachment::default() },
            ],
            ..message()
        }
    }

    #[test]
    fn entries_carry_their_attachments_and_older_ones_read_with_none() {
        assert_eq!(EntryValue::decode(&posted().encode()).unwrap(), posted());
        let read = posted().into_entry("r", 9);
        assert_eq!(read.attachments, posted().attachments);
        // A settings entry's fields come before the attachments.
        let settings = RoomSettings {
            name: "n".into(),
            topic: "t".into(),
            private: false,
            who_may_post: Audience::Moderators,
            who_may_invite: Audience::Members,
        };
        let both = EntryValue { settings: Some(settings), ..posted() };
        assert_eq!(EntryValue::decode(&both.encode()).unwrap(), both);
        // As written before attachments: everything up to the settings, no count after them.
        for value in [entry(), message(), ban()] {
            let current = value.encode();
            assert_eq!(current.last(), Some(&0x14), "an empty attachment list is a count of 0");
            let old = &current[..current.len() - 1];
            assert_eq!(EntryValue::decode(old).unwrap(), value);
        }
        // The attachments follow the old fields, whose bytes stay: older readers read them.
        let without = message().encode();
        assert!(posted().encode().starts_with(&without[..without.len() - 1]));
        // A field from a later version after the attachments is ignored.
        let newer = TupleWriter::from_prefix(&posted().encode()).str("a field from the future").into_bytes();
        assert_eq!(EntryValue::decode(&newer).unwrap(), posted());
        // An attachment list cut short is an error, not a shorter list.
        let full = posted().encode();
        assert!(EntryValue::decode(&full[..full.len() - 3]).is_err());
    }

    #[test]
    fn media_records_round_trip_in_every_state() {
        let record = MediaRecord {
            id: "m-1".into(),
            owner: "bob".into(),
            name: "holiday ✓.jpg".into(),
            content_type: "image/jpeg".into(),
            size: 5 << 30,
            sha256: "ab".repeat(32),
            width: Some(u32::MAX),
            height: Some(1),
            thumbnail: Some((160, 90)),
            created_ms: 1_700_000_000_000,
            state: MediaState::Ready,
        };
        for state in [
            MediaState::Uploading,
            MediaState::Ready,
            MediaState::Attached { room: "dm:a:b".into(), seq: 1 << 40 },
            MediaState::Doomed,
        ] {
            let r = MediaRecord { state, ..record.clone() };
            assert_eq!(decode_media(r.id.clone(), &encode_media(&r)).unwrap(), r);
        }
        let bare = MediaRecord {
            width: None,
            height: None,
            thumbnail: None,
            content_type: String::new(),
            state: MediaState::Uploading,
            ..record
        };
        let encoded = encode_media(&bare);
        assert_eq!(decode_media("m-1".into(), &encoded).unwrap(), bare);
        // The state (code 0: one byte) and two nulls end the value; another code is refused.
        let unknown = TupleWriter::from_prefix(&encoded[..encoded.len() - 3]).uint(9).null().null().into_bytes();
        assert_eq!(decode_media("m-1".into(), &unknown), Err(CodecError::UnknownCode { what: "media state", code: 9 }));
    }

    #[test]
    fn memberships_from_before_roles_read_with_the_rooms_roles() {
        // The `mem` value as written before roles: the join seq alone.
        let old = encode_u64(3);
        let read = MemberValue::decode(&old).unwrap();
        assert_eq!(read, MemberValue { join_seq: 3, role: None, muted_until: 0 });
        let group = RoomMeta {
            name: "Lobby".into(),
            kind: RoomKind::Group,
            private: false,
            created_by: "bob".into(),
            large_since: None,
            topic: String::new(),
            who_may_post: Audience::Members,
            who_may_invite: Audience::Members,
        };
        assert_eq!(read.role_in(&group, "bob"), Role::Owner, "the creator owns a group room");
        assert_eq!(read.role_in(&group, "alice"), Role::Member);
        let direct = RoomMeta { kind: RoomKind::Direct, ..group.clone() };
        assert_eq!(read.role_in(&direct, "bob"), Role::Member, "direct conversations have no owner");
        // A stored role wins: a creator who left and came back is a member.
        assert_eq!(MemberValue::joined(9, Role::Member).role_in(&group, "bob"), Role::Member);
        // The new fields follow the join seq, so older readers (`decode_u64`) still read it.
        let current = MemberValue { join_seq: 3, role: Some(Role::Admin), muted_until: 77 }.encode();
        assert!(current.starts_with(&old));
        assert_eq!(decode_u64(&current).unwrap(), 3);
    }

    #[test]
    fn room_meta_from_before_large_rooms_reads_as_fanning_out() {
        // The value as written before `large_since` existed: four fields.
        let old = writer().str("Lobby").uint(0).boolean(true).str("bob").into_bytes();
        let expected = RoomMeta {
            name: "Lobby".into(),
            kind: RoomKind::Group,
            private: true,
            created_by: "bob".into(),
            large_since: None,
            topic: String::new(),
            who_may_post: Audience::Members,
            who_may_invite: Audience::Members,
        };
        assert_eq!(RoomMeta::decode(&old).unwrap(), expected);
        // The new fields are appended, so the old fields keep their bytes: older readers read it.
        let large = RoomMeta { large_since: Some(7), ..expected.clone() };
        assert!(large.encode().starts_with(&old));
        assert!(large.encode()[old.len()..].starts_with(TupleWriter::from_prefix(&[]).uint(7).as_bytes()));
        // As written before room settings: no topic, every member may post and invite.
        let before_settings = TupleWriter::from_prefix(&old).uint(7).into_bytes();
        assert_eq!(RoomMeta::decode(&before_settings).unwrap(), large);
        assert!(expected.encode().starts_with(&old));
        // A field from a later version after it is ignored.
        let newer = TupleWriter::from_prefix(&large.encode()).str("a field from the future").into_bytes();
        assert_eq!(RoomMeta::decode(&newer).unwrap(), large);
    }
}

/// `(P, "apikey", id)`: (name, scopes separated by spaces, the secret's SHA-256, created ms,
/// revoked ms or null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyValue {
    pub name: String,
    pub scopes: Vec<String>,
    pub secret_sha256: [u8; 32],
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl ApiKeyValue {
    pub fn encode(&self) -> Vec<u8> {
        writer()
            .str(&self.name)
            .str(&self.scopes.join(" "))
            .bytes(&self.secret_sha256)
            .uint(self.created_ms)
            .opt_uint(self.revoked_ms)
            .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = reader(bytes)?;
        let name = r.str()?;
        let scopes = r.str()?.split_whitespace().map(str::to_owned).collect();
        let secret_sha256 = <[u8; 32]>::try_from(r.bytes()?.as_slice())
            .map_err(|_| CodecError::Tuple(TupleError::Missing("a 32-byte key hash")))?;
        Ok(ApiKeyValue { name, scopes, secret_sha256, created_ms: r.uint()?, revoked_ms: r.opt_uint()? })
    }
}

/// `(P, "dev", user, id)`: (platform name, app, locale, token, p256dh, auth, created ms); the
/// id is the key's.
pub fn encode_device(device: &DeviceRecord) -> Vec<u8> {
    writer()
        .str(device.platform.name())
        .str(&device.app)
        .str(&device.locale)
        .str(&device.token)
        .str(&device.p256dh)
        .str(&device.auth)
        .uint(device.created_ms)
        .boolean(device.preview)
        .into_bytes()
}

/// The device `id` from its value.
pub fn decode_device(id: String, bytes: &[u8]) -> Result<DeviceRecord, CodecError> {
    let mut r = reader(bytes)?;
    let name = r.str()?;
    let platform = Platform::from_name(&name).ok_or(CodecError::UnknownCode { what: "platform", code: 0 })?;
    Ok(DeviceRecord {
        id,
        platform,
        app: r.str()?,
        locale: r.str()?,
        token: r.str()?,
        p256dh: r.str()?,
        auth: r.str()?,
        created_ms: r.uint()?,
        // Added later: devices registered before it show no previews.
        preview: if r.is_empty() { false } else { r.boolean()? },
    })
}
