//! Where each piece of state lives: every key of the FoundationDB backend is built here.
//!
//! All keys are tuples under one subspace, `(prefix,)`, `("palaver",)` by default; docs/STORAGE.md
//! has the full table with the reasoning. Each family of keys starts with a short text tag so
//! families never interleave and `fdbcli` output stays readable:
//!
//! ```text
//! (P, "acct",  user)                 account
//! (P, "room",  room)                 room metadata (name, kind, private, creator, large since)
//! (P, "head",  room)                 room head: last seq, member count
//! (P, "rlog",  room, seq)            room log entry
//! (P, "dedup", room, from, id)       seq of the entry with that client message id (text, edit,
//!                                    delete, react, unreact)
//! (P, "edit",  room, target, seq)    index: entry `seq` is an edit of message `target`
//! (P, "reply", room, root, seq)      index: entry `seq` replies to message `root`
//! (P, "react", room, seq, reaction, user)   `user` gave `reaction` to message `seq`
//! (P, "rsum",  room, seq, reaction)  how many members gave `reaction` to message `seq`
//! (P, "ment",  user, room, seq)      message `seq` of `room` mentions `user` (not its sender)
//! (P, "mem",   room, user)           membership, room → user (value: join seq, role, mute end)
//! (P, "memof", user, room)           membership, user → room (value: join seq, read position)
//! (P, "ban",   room, user)           ban of `user` from `room`: until when, reason (members or not)
//! (P, "uhead", user)                 user log head, floor and room count
//! (P, "ulog",  user, cursor)         user log pointer → (room, seq)
//! (P, "owner", room)                 owner node and epoch
//! (P, "pnote", user)                 presence note: status text and when it was set
//! (P, "block", user, other)          `user` takes no direct messages from `other`
//! (P, "gone",  user)                 a deleted account: the name stays taken (value: when)
//! (P, "hook",  id)                   webhook endpoint: URL, events, secret, health
//! (P, "hookq", id, stream, seq)      an event endpoint `id` has not acknowledged (value: type)
//! (P, "lease", name)                 who holds a lease and until when
//! (P, "media", id)                   an upload's record: owner, what it is, created, state
//! (P, "mown",  owner, id)            index: upload `id` is `owner`'s
//! (P, "mused", owner)                bytes of `owner`'s uploads that are not doomed
//! (P, "mwait", created_ms, id)       index: upload `id` is uploading or ready (not attached)
//! (P, "mdoom", id)                   index: upload `id` is doomed, for the collector
//! ```

use super::tuple::{TupleError, TupleReader, TupleWriter};

/// The default subspace prefix: every key starts with the tuple `("palaver",)`.
pub const DEFAULT_SUBSPACE_PREFIX: &str = "palaver";

const ACCOUNT: &str = "acct";
const ROOM: &str = "room";
const ROOM_HEAD: &str = "head";
const ROOM_LOG: &str = "rlog";
const DEDUP: &str = "dedup";
const MEMBER: &str = "mem";
const MEMBER_OF: &str = "memof";
const USER_HEAD: &str = "uhead";
const USER_LOG: &str = "ulog";
const OWNER: &str = "owner";
const EDIT: &str = "edit";
const REPLY: &str = "reply";
const REACTION: &str = "react";
const REACTION_COUNT: &str = "rsum";
const MENTION: &str = "ment";
const PRESENCE_NOTE: &str = "pnote";
const BAN: &str = "ban";
const BLOCK: &str = "block";
const GONE: &str = "gone";
const API_KEY: &str = "apikey";
const DEVICE: &str = "dev";
const WEBHOOK: &str = "hook";
const WEBHOOK_OUTBOX: &str = "hookq";
const LEASE: &str = "lease";
const PUSH_TOLD: &str = "ptold";
const PUSH_CLEAR: &str = "pclr";
const MEDIA: &str = "media";
const MEDIA_OF: &str = "mown";
const MEDIA_USAGE: &str = "mused";
const MEDIA_WAITING: &str = "mwait";
const MEDIA_DOOMED: &str = "mdoom";

/// A half-open key range `[begin, end)`, as FoundationDB range reads and clears take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub begin: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Every key that extends the tuple `prefix` by at least one element: `prefix\x00` to
    /// `prefix\xff`, the same range as the tuple layer's `Subspace::range`. Every element type
    /// code lies strictly between those two bytes.
    pub fn children(prefix: &[u8]) -> Self {
        let mut begin = prefix.to_vec();
        begin.push(0x00);
        let mut end = prefix.to_vec();
        end.push(0xff);
        KeyRange { begin, end }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }

    pub fn is_empty(&self) -> bool {
        self.begin >= self.end
    }
}

/// The keys of one palaver deployment (one subspace). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    root: Vec<u8>,
}

impl Keyspace {
    /// The subspace `(prefix,)`. Tests use a random prefix each so they never see each other.
    pub fn new(prefix: &str) -> Self {
        Keyspace { root: TupleWriter::default().str(prefix).into_bytes() }
    }

    /// The encoded subspace prefix.
    pub fn root(&self) -> &[u8] {
        &self.root
    }

    /// Every key of this deployment (for clearing a test subspace).
    pub fn everything(&self) -> KeyRange {
        KeyRange::children(&self.root)
    }

    fn tag(&self, tag: &str) -> TupleWriter {
        TupleWriter::from_prefix(&self.root).str(tag)
    }

    pub fn account(&self, user: &str) -> Vec<u8> {
        self.tag(ACCOUNT).str(user).into_bytes()
    }

    /// The mark a deleted account leaves: its name cannot be registered again.
    pub fn gone(&self, user: &str) -> Vec<u8> {
        self.tag(GONE).str(user).into_bytes()
    }

    pub fn room(&self, room: &str) -> Vec<u8> {
        self.tag(ROOM).str(room).into_bytes()
    }

    pub fn room_head(&self, room: &str) -> Vec<u8> {
        self.tag(ROOM_HEAD).str(room).into_bytes()
    }

    pub fn room_log(&self, room: &str, seq: u64) -> Vec<u8> {
        self.tag(ROOM_LOG).str(room).uint(seq).into_bytes()
    }

    fn room_log_prefix(&self, room: &str) -> Vec<u8> {
        self.tag(ROOM_LOG).str(room).into_bytes()
    }

    /// Room log entries with `first <= seq < end` (`end = None`: to the end of the log).
    pub fn room_log_range(&self, room: &str, first: u64, end: Option<u64>) -> KeyRange {
        let all = KeyRange::children(&self.room_log_prefix(room));
        KeyRange { begin: self.room_log(room, first), end: end.map_or(all.end, |end| self.room_log(room, end)) }
    }

    /// The seq of a key from [`Self::room_log_range`].
    pub fn room_log_seq(&self, room: &str, key: &[u8]) -> Result<u64, TupleError> {
        last_uint(&self.room_log_prefix(room), key)
    }

    pub fn dedup(&self, room: &str, from: &str, id: &str) -> Vec<u8> {
        self.tag(DEDUP).str(room).str(from).str(id).into_bytes()
    }

    pub fn member(&self, room: &str, user: &str) -> Vec<u8> {
        self.tag(MEMBER).str(room).str(user).into_bytes()
    }

    /// All `member` keys of a room.
    pub fn members_range(&self, room: &str) -> KeyRange {
        KeyRange::children(&self.tag(MEMBER).str(room).into_bytes())
    }

    /// The user of a key from [`Self::members_range`].
    pub fn member_user(&self, room: &str, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(MEMBER).str(room).as_bytes(), key)
    }

    /// `user`'s ban from `room`: kept apart from the membership, which it outlives.
    pub fn ban(&self, room: &str, user: &str) -> Vec<u8> {
        self.tag(BAN).str(room).str(user).into_bytes()
    }

    /// `user` blocked `other` (no direct messages from them). Empty value.
    pub fn block(&self, user: &str, other: &str) -> Vec<u8> {
        self.tag(BLOCK).str(user).str(other).into_bytes()
    }

    /// All `block` keys of a user, in name order.
    pub fn blocks_range(&self, user: &str) -> KeyRange {
        KeyRange::children(&self.tag(BLOCK).str(user).into_bytes())
    }

    /// The blocked user of a key from [`Self::blocks_range`].
    pub fn blocked_user(&self, user: &str, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(BLOCK).str(user).as_bytes(), key)
    }

    pub fn member_of(&self, user: &str, room: &str) -> Vec<u8> {
        self.tag(MEMBER_OF).str(user).str(room).into_bytes()
    }

    /// All `memof` keys of a user.
    pub fn member_of_range(&self, user: &str) -> KeyRange {
        KeyRange::children(&self.tag(MEMBER_OF).str(user).into_bytes())
    }

    /// The room of a key from [`Self::member_of_range`].
    pub fn member_of_room(&self, user: &str, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(MEMBER_OF).str(user).as_bytes(), key)
    }

    pub fn user_head(&self, user: &str) -> Vec<u8> {
        self.tag(USER_HEAD).str(user).into_bytes()
    }

    pub fn user_log(&self, user: &str, cursor: u64) -> Vec<u8> {
        self.tag(USER_LOG).str(user).uint(cursor).into_bytes()
    }

    fn user_log_prefix(&self, user: &str) -> Vec<u8> {
        self.tag(USER_LOG).str(user).into_bytes()
    }

    /// The user's log entries with cursor > `after`, for a replay page: paged by the last key
    /// seen, never by offset, so a page costs the same however deep in the log it starts.
    pub fn user_log_after(&self, user: &str, after: u64) -> KeyRange {
        let all = KeyRange::children(&self.user_log_prefix(user));
        match after.checked_add(1) {
            Some(first) => KeyRange { begin: self.user_log(user, first), end: all.end },
            // Nothing lies after the largest cursor: an empty range.
            None => KeyRange { begin: all.end.clone(), end: all.end },
        }
    }

    /// The user's log entries with cursor <= `through`: what retention clears in one range clear.
    pub fn user_log_through(&self, user: &str, through: u64) -> KeyRange {
        let all = KeyRange::children(&self.user_log_prefix(user));
        match through.checked_add(1) {
            Some(end) => KeyRange { begin: all.begin, end: self.user_log(user, end) },
            None => all,
        }
    }

    /// The cursor of a key from [`Self::user_log_after`].
    pub fn user_log_cursor(&self, user: &str, key: &[u8]) -> Result<u64, TupleError> {
        last_uint(&self.user_log_prefix(user), key)
    }

    pub fn owner(&self, room: &str) -> Vec<u8> {
        self.tag(OWNER).str(room).into_bytes()
    }

    /// A device `user` registered for push notifications.
    pub fn device(&self, user: &str, id: &str) -> Vec<u8> {
        self.tag(DEVICE).str(user).str(id).into_bytes()
    }

    /// All `dev` keys of a user.
    pub fn devices_range(&self, user: &str) -> KeyRange {
        KeyRange::children(&self.tag(DEVICE).str(user).into_bytes())
    }

    /// The device id of a key from [`Self::devices_range`].
    pub fn device_id(&self, user: &str, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(DEVICE).str(user).as_bytes(), key)
    }

    /// A server API key, by its public id.
    pub fn api_key(&self, id: &str) -> Vec<u8> {
        self.tag(API_KEY).str(id).into_bytes()
    }

    /// Every `apikey` key, in id order.
    pub fn api_keys_range(&self) -> KeyRange {
        KeyRange::children(&self.tag(API_KEY).into_bytes())
    }

    /// The id of a key from [`Self::api_keys_range`].
    pub fn api_key_id(&self, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(API_KEY).as_bytes(), key)
    }

    /// A webhook endpoint, by its id.
    pub fn webhook(&self, id: &str) -> Vec<u8> {
        self.tag(WEBHOOK).str(id).into_bytes()
    }

    /// Every `hook` key, in id order.
    pub fn webhooks_range(&self) -> KeyRange {
        KeyRange::children(&self.tag(WEBHOOK).into_bytes())
    }

    /// The id of a key from [`Self::webhooks_range`].
    pub fn webhook_id(&self, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(WEBHOOK).as_bytes(), key)
    }

    /// Event `seq` of `stream` in endpoint `id`'s outbox.
    pub fn outbox_event(&self, id: &str, stream: &str, seq: u64) -> Vec<u8> {
        self.tag(WEBHOOK_OUTBOX).str(id).str(stream).uint(seq).into_bytes()
    }

    /// Endpoint `id`'s whole outbox, in (stream, seq) order.
    pub fn outbox_range(&self, id: &str) -> KeyRange {
        KeyRange::children(self.tag(WEBHOOK_OUTBOX).str(id).as_bytes())
    }

    /// Endpoint `id`'s outbox from stream `from` on (`""`: all of it), in (stream, seq) order.
    pub fn outbox_from(&self, id: &str, from: &str) -> KeyRange {
        let all = self.outbox_range(id);
        // Every key of stream `from` extends this prefix, so it sorts after it, and every key
        // of an earlier stream before it (the tuple encoding keeps text order).
        let begin = self.tag(WEBHOOK_OUTBOX).str(id).str(from).into_bytes();
        KeyRange { begin: begin.max(all.begin), end: all.end }
    }

    /// Endpoint `id`'s events of `stream` with seq <= `through`.
    pub fn outbox_through(&self, id: &str, stream: &str, through: u64) -> KeyRange {
        let all = KeyRange::children(self.tag(WEBHOOK_OUTBOX).str(id).str(stream).as_bytes());
        match through.checked_add(1) {
            Some(end) => KeyRange { begin: all.begin, end: self.outbox_event(id, stream, end) },
            None => all,
        }
    }

    /// The (stream, seq) of a key from [`Self::outbox_range`].
    pub fn outbox_position(&self, id: &str, key: &[u8]) -> Result<(String, u64), TupleError> {
        let prefix = self.tag(WEBHOOK_OUTBOX).str(id).into_bytes();
        let rest = key.strip_prefix(prefix.as_slice()).ok_or(TupleError::Missing("the expected key prefix"))?;
        let mut reader = TupleReader::new(rest);
        let stream = reader.str()?;
        let seq = reader.uint()?;
        reader.finish()?;
        Ok((stream, seq))
    }

    /// What a push told `user` of `room`: the seq of the latest entry it covered.
    pub fn push_told(&self, user: &str, room: &str) -> Vec<u8> {
        self.tag(PUSH_TOLD).str(user).str(room).into_bytes()
    }

    /// Every `ptold` key of a user.
    pub fn push_told_range(&self, user: &str) -> KeyRange {
        KeyRange::children(&self.tag(PUSH_TOLD).str(user).into_bytes())
    }

    /// A clear owed to `user`'s devices for `room`.
    pub fn push_clear(&self, user: &str, room: &str) -> Vec<u8> {
        self.tag(PUSH_CLEAR).str(user).str(room).into_bytes()
    }

    /// Every `pclr` key of every user, in (user, room) order.
    pub fn push_clears_range(&self) -> KeyRange {
        KeyRange::children(&self.tag(PUSH_CLEAR).into_bytes())
    }

    /// Every `pclr` key of a user.
    pub fn push_clears_of(&self, user: &str) -> KeyRange {
        KeyRange::children(&self.tag(PUSH_CLEAR).str(user).into_bytes())
    }

    /// The (user, room) of a key from [`Self::push_clears_range`].
    pub fn push_clear_names(&self, key: &[u8]) -> Result<(String, String), TupleError> {
        let prefix = self.tag(PUSH_CLEAR).into_bytes();
        let rest = key.strip_prefix(prefix.as_slice()).ok_or(TupleError::Missing("the expected key prefix"))?;
        let mut reader = TupleReader::new(rest);
        let user = reader.str()?;
        let room = reader.str()?;
        reader.finish()?;
        Ok((user, room))
    }

    /// An upload's record, by its random id.
    pub fn media(&self, id: &str) -> Vec<u8> {
        self.tag(MEDIA).str(id).into_bytes()
    }

    /// Upload `id` is `owner`'s: what an account deletion reads to doom them all.
    pub fn media_of(&self, owner: &str, id: &str) -> Vec<u8> {
        self.tag(MEDIA_OF).str(owner).str(id).into_bytes()
    }

    /// Every `mown` key of an owner, in id order.
    pub fn media_of_range(&self, owner: &str) -> KeyRange {
        KeyRange::children(&self.tag(MEDIA_OF).str(owner).into_bytes())
    }

    /// The id of a key from [`Self::media_of_range`].
    pub fn media_of_id(&self, owner: &str, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(MEDIA_OF).str(owner).as_bytes(), key)
    }

    /// The bytes of `owner`'s uploads that are not doomed: the quota check's one read.
    pub fn media_usage(&self, owner: &str) -> Vec<u8> {
        self.tag(MEDIA_USAGE).str(owner).into_bytes()
    }

    /// Upload `id`, created at `created_ms`, is uploading or ready: a candidate for dooming once
    /// it is stale.
    pub fn media_waiting(&self, created_ms: u64, id: &str) -> Vec<u8> {
        self.tag(MEDIA_WAITING).uint(created_ms).str(id).into_bytes()
    }

    /// The `mwait` keys of uploads created before `before_ms`, oldest first.
    pub fn media_waiting_before(&self, before_ms: u64) -> KeyRange {
        let all = KeyRange::children(&self.tag(MEDIA_WAITING).into_bytes());
        KeyRange { begin: all.begin, end: self.tag(MEDIA_WAITING).uint(before_ms).into_bytes() }
    }

    /// The (created ms, id) of a key from [`Self::media_waiting_before`].
    pub fn media_waiting_entry(&self, key: &[u8]) -> Result<(u64, String), TupleError> {
        let prefix = self.tag(MEDIA_WAITING).into_bytes();
        let rest = key.strip_prefix(prefix.as_slice()).ok_or(TupleError::Missing("the expected key prefix"))?;
        let mut reader = TupleReader::new(rest);
        let created_ms = reader.uint()?;
        let id = reader.str()?;
        reader.finish()?;
        Ok((created_ms, id))
    }

    /// Upload `id` is doomed.
    pub fn media_doomed(&self, id: &str) -> Vec<u8> {
        self.tag(MEDIA_DOOMED).str(id).into_bytes()
    }

    /// Every `mdoom` key, in id order.
    pub fn media_doomed_range(&self) -> KeyRange {
        KeyRange::children(&self.tag(MEDIA_DOOMED).into_bytes())
    }

    /// The id of a key from [`Self::media_doomed_range`].
    pub fn media_doomed_id(&self, key: &[u8]) -> Result<String, TupleError> {
        last_str(self.tag(MEDIA_DOOMED).as_bytes(), key)
    }

    pub fn lease(&self, name: &str) -> Vec<u8> {
        self.tag(LEASE).str(name).into_bytes()
    }

    pub fn presence_note(&self, user: &str) -> Vec<u8> {
        self.tag(PRESENCE_NOTE).str(user).into_bytes()
    }

    /// Entry `seq` edits message `target`: what a delete of `target` reads to erase the bodies
    /// of its edits without scanning the room log.
    pub fn edit(&self, room: &str, target: u64, seq: u64) -> Vec<u8> {
        self.tag(EDIT).str(room).uint(target).uint(seq).into_bytes()
    }

    fn edits_prefix(&self, room: &str, target: u64) -> Vec<u8> {
        self.tag(EDIT).str(room).uint(target).into_bytes()
    }

    /// Every `edit` key of one message.
    pub fn edits_of(&self, room: &str, target: u64) -> KeyRange {
        KeyRange::children(&self.edits_prefix(room, target))
    }

    /// The seq of the edit entry of a key from [`Self::edits_of`].
    pub fn edit_seq(&self, room: &str, target: u64, key: &[u8]) -> Result<u64, TupleError> {
        last_uint(&self.edits_prefix(room, target), key)
    }

    /// Entry `seq` replies to message `root`: a thread is one range read.
    pub fn reply(&self, room: &str, root: u64, seq: u64) -> Vec<u8> {
        self.tag(REPLY).str(room).uint(root).uint(seq).into_bytes()
    }

    fn replies_prefix(&self, room: &str, root: u64) -> Vec<u8> {
        self.tag(REPLY).str(room).uint(root).into_bytes()
    }

    /// The replies to `root` with seq > `after`, in seq order.
    pub fn replies_after(&self, room: &str, root: u64, after: u64) -> KeyRange {
        after_in(&self.replies_prefix(room, root), after, |first| self.reply(room, root, first))
    }

    /// The seq of the reply of a key from [`Self::replies_after`].
    pub fn reply_seq(&self, room: &str, root: u64, key: &[u8]) -> Result<u64, TupleError> {
        last_uint(&self.replies_prefix(room, root), key)
    }

    /// `user` gave `reaction` to message `seq`.
    pub fn reaction(&self, room: &str, seq: u64, reaction: &str, user: &str) -> Vec<u8> {
        self.tag(REACTION).str(room).uint(seq).str(reaction).str(user).into_bytes()
    }

    /// Every `react` key of one message (what its delete clears).
    pub fn reactions_of(&self, room: &str, seq: u64) -> KeyRange {
        KeyRange::children(&self.tag(REACTION).str(room).uint(seq).into_bytes())
    }

    /// How many members gave `reaction` to message `seq`.
    pub fn reaction_count(&self, room: &str, seq: u64, reaction: &str) -> Vec<u8> {
        self.tag(REACTION_COUNT).str(room).uint(seq).str(reaction).into_bytes()
    }

    fn reaction_counts_prefix(&self, room: &str, seq: u64) -> Vec<u8> {
        self.tag(REACTION_COUNT).str(room).uint(seq).into_bytes()
    }

    /// Every `rsum` key of one message, in reaction order: at most
    /// `rules.max_reactions_per_message` of them, however many members reacted.
    pub fn reaction_counts_of(&self, room: &str, seq: u64) -> KeyRange {
        KeyRange::children(&self.reaction_counts_prefix(room, seq))
    }

    /// The reaction of a key from [`Self::reaction_counts_of`].
    pub fn reaction_count_reaction(&self, room: &str, seq: u64, key: &[u8]) -> Result<String, TupleError> {
        last_str(&self.reaction_counts_prefix(room, seq), key)
    }

    /// Message `seq` of `room` mentions `user`.
    pub fn mention(&self, user: &str, room: &str, seq: u64) -> Vec<u8> {
        self.tag(MENTION).str(user).str(room).uint(seq).into_bytes()
    }

    /// The messages of `room` that mention `user` with seq > `after`: the unread mentions are
    /// one range read from the read position.
    /// Every mention of `user`, in every room.
    pub fn mentions_of(&self, user: &str) -> KeyRange {
        KeyRange::children(self.tag(MENTION).str(user).as_bytes())
    }

    pub fn mentions_after(&self, user: &str, room: &str, after: u64) -> KeyRange {
        let prefix = self.tag(MENTION).str(user).str(room).into_bytes();
        after_in(&prefix, after, |first| self.mention(user, room, first))
    }
}

/// The children of the tuple `prefix` whose next element is an integer > `after`; `key(n)` is
/// the key of integer `n` under `prefix`.
fn after_in(prefix: &[u8], after: u64, key: impl Fn(u64) -> Vec<u8>) -> KeyRange {
    let all = KeyRange::children(prefix);
    match after.checked_add(1) {
        Some(first) => KeyRange { begin: key(first), end: all.end },
        // Nothing lies after the largest integer: an empty range.
        None => KeyRange { begin: all.end.clone(), end: all.end },
    }
}

/// The one integer that follows `prefix` in `key`.
fn last_uint(prefix: &[u8], key: &[u8]) -> Result<u64, TupleError> {
    let rest = key.strip_prefix(prefix).ok_or(TupleError::Missing("the expected key prefix"))?;
    let mut reader = TupleReader::new(rest);
    let n = reader.uint()?;
    reader.finish()?;
    Ok(n)
}

/// The one text element that follows `prefix` in `key`.
fn last_str(prefix: &[u8], key: &[u8]) -> Result<String, TupleError> {
    let rest = key.strip_prefix(prefix).ok_or(TupleError::Missing("the expected key prefix"))?;
    let mut reader = TupleReader::new(rest);
    let s = reader.str()?;
    reader.finish()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks() -> Keyspace {
        Keyspace::new(DEFAULT_SUBSPACE_PREFIX)
    }

    #[test]
    fn keys_are_tuples_under_the_subspace() {
        assert_eq!(ks().root(), b"\x02palaver\x00");
        assert_eq!(ks().user_log("bob", 7), b"\x02palaver\x00\x02ulog\x00\x02bob\x00\x15\x07");
        assert_eq!(ks().room_log("r1", 0), b"\x02palaver\x00\x02rlog\x00\x02r1\x00\x14");
        assert_eq!(ks().dedup("r", "a", "m1"), b"\x02palaver\x00\x02dedup\x00\x02r\x00\x02a\x00\x02m1\x00");
        assert_eq!(ks().ban("r", "a"), b"\x02palaver\x00\x02ban\x00\x02r\x00\x02a\x00");
        let other = Keyspace::new("palaver-test-1");
        assert!(!ks().everything().contains(&other.account("bob")));
        assert!(ks().everything().contains(&ks().account("bob")));
    }

    #[test]
    fn user_log_keys_sort_by_cursor_numerically() {
        let cursors = [1u64, 2, 9, 10, 255, 256, 1_000, 65_536, 1 << 40, u64::MAX];
        let keys: Vec<_> = cursors.iter().map(|&c| ks().user_log("alice", c)).collect();
        assert!(keys.windows(2).all(|p| p[0] < p[1]));
        for (c, key) in cursors.iter().zip(&keys) {
            assert_eq!(ks().user_log_cursor("alice", key).unwrap(), *c);
        }
    }

    #[test]
    fn a_user_name_that_prefixes_another_does_not_interleave() {
        let range = ks().user_log_after("bob", 0);
        for c in [1u64, 2, 300, u64::MAX] {
            assert!(range.contains(&ks().user_log("bob", c)));
            assert!(!range.contains(&ks().user_log("bobby", c)));
            assert!(!range.contains(&ks().user_log("bo", c)));
            // bob's whole log sorts before bobby's first entry.
            assert!(ks().user_log("bob", c) < ks().user_log("bobby", 1));
        }
        assert!(!ks().members_range("r").contains(&ks().member("r2", "x")));
        assert!(ks().members_range("r").contains(&ks().member("r", "x")));
        assert!(!ks().member_of_range("al").contains(&ks().member_of("alice", "r")));
        // A ban is no membership: no range of members reaches it.
        assert!(!ks().members_range("r").contains(&ks().ban("r", "x")));
        assert!(!ks().everything().contains(&Keyspace::new("other").ban("r", "x")));
        assert_ne!(ks().ban("r", "x"), ks().ban("r", "xy"));
    }

    #[test]
    fn replay_ranges_start_after_the_cursor_and_retention_ends_after_through() {
        let after = ks().user_log_after("u", 5);
        assert!(!after.contains(&ks().user_log("u", 5)));
        assert!(after.contains(&ks().user_log("u", 6)));
        assert!(after.contains(&ks().user_log("u", u64::MAX)));
        assert!(ks().user_log_after("u", u64::MAX).is_empty());

        let trim = ks().user_log_through("u", 5);
        assert!(trim.contains(&ks().user_log("u", 0)));
        assert!(trim.contains(&ks().user_log("u", 5)));
        assert!(!trim.contains(&ks().user_log("u", 6)));
        assert!(!trim.contains(&ks().user_head("u")));
        assert!(ks().user_log_through("u", u64::MAX).contains(&ks().user_log("u", u64::MAX)));
    }

    #[test]
    fn room_log_ranges() {
        let before = ks().room_log_range("r", 1, Some(4));
        assert!(!before.contains(&ks().room_log("r", 0)));
        assert!(before.contains(&ks().room_log("r", 1)));
        assert!(before.contains(&ks().room_log("r", 3)));
        assert!(!before.contains(&ks().room_log("r", 4)));
        let after = ks().room_log_range("r", 4, None);
        assert!(after.contains(&ks().room_log("r", u64::MAX)));
        assert!(!after.contains(&ks().room_log("r2", 5)));
        assert_eq!(ks().room_log_seq("r", &ks().room_log("r", 300)).unwrap(), 300);
    }

    #[test]
    fn change_keys_stay_within_their_message() {
        // Message 1's keys never reach message 10's (integers sort numerically), nor another
        // room's.
        let edits = ks().edits_of("r", 1);
        assert!(edits.contains(&ks().edit("r", 1, u64::MAX)));
        assert!(!edits.contains(&ks().edit("r", 10, 11)) && !edits.contains(&ks().edit("r2", 1, 2)));
        assert_eq!(ks().edit_seq("r", 1, &ks().edit("r", 1, 300)).unwrap(), 300);
        let reactions = ks().reactions_of("r", 1);
        assert!(reactions.contains(&ks().reaction("r", 1, "👍", "bob")));
        assert!(!reactions.contains(&ks().reaction("r", 2, "👍", "bob")));
        assert!(!reactions.contains(&ks().reaction_count("r", 1, "👍")));
        let counts = ks().reaction_counts_of("r", 1);
        assert!(counts.contains(&ks().reaction_count("r", 1, "")));
        assert!(!counts.contains(&ks().reaction_count("r", 256, "x")));
        assert_eq!(ks().reaction_count_reaction("r", 1, &ks().reaction_count("r", 1, "🎉")).unwrap(), "🎉");
    }

    #[test]
    fn reply_and_mention_ranges_start_after_the_seq() {
        let replies = ks().replies_after("r", 5, 7);
        assert!(!replies.contains(&ks().reply("r", 5, 7)));
        assert!(replies.contains(&ks().reply("r", 5, 8)));
        assert!(replies.contains(&ks().reply("r", 5, u64::MAX)));
        assert!(!replies.contains(&ks().reply("r", 6, 8)));
        assert!(ks().replies_after("r", 5, u64::MAX).is_empty());
        assert_eq!(ks().reply_seq("r", 5, &ks().reply("r", 5, 9)).unwrap(), 9);
        let mentions = ks().mentions_after("bob", "r", 3);
        assert!(!mentions.contains(&ks().mention("bob", "r", 3)));
        assert!(mentions.contains(&ks().mention("bob", "r", 4)));
        assert!(!mentions.contains(&ks().mention("bob", "r2", 4)));
        assert!(!mentions.contains(&ks().mention("bobby", "r", 4)));
        assert!(ks().mentions_after("bob", "r", u64::MAX).is_empty());
    }

    #[test]
    fn media_keys_stay_within_their_owner_and_time() {
        let owned = ks().media_of_range("bob");
        assert!(owned.contains(&ks().media_of("bob", "m1")));
        assert!(!owned.contains(&ks().media_of("bobby", "m1")));
        assert_eq!(ks().media_of_id("bob", &ks().media_of("bob", "m-7")).unwrap(), "m-7");
        // Waiting uploads sort by creation time, numerically; the range ends before `before`.
        let stale = ks().media_waiting_before(1_000);
        assert!(stale.contains(&ks().media_waiting(0, "z")));
        assert!(stale.contains(&ks().media_waiting(999, "z")));
        assert!(!stale.contains(&ks().media_waiting(1_000, "a")));
        assert!(!stale.contains(&ks().media_waiting(1 << 40, "a")));
        assert!(!ks().media_waiting_before(0).contains(&ks().media_waiting(0, "a")));
        assert_eq!(ks().media_waiting_entry(&ks().media_waiting(77, "id")).unwrap(), (77, "id".into()));
        let doomed = ks().media_doomed_range();
        assert!(doomed.contains(&ks().media_doomed("x")));
        assert!(!doomed.contains(&ks().media("x")));
        assert_eq!(ks().media_doomed_id(&ks().media_doomed("x")).unwrap(), "x");
        assert!(!ks().media_of_range("bob").contains(&ks().media_usage("bob")));
    }

    #[test]
    fn key_parts_read_back() {
        assert_eq!(ks().member_user("r", &ks().member("r", "zoe")).unwrap(), "zoe");
        assert_eq!(ks().member_of_room("zoe", &ks().member_of("zoe", "dm:a:b")).unwrap(), "dm:a:b");
        assert!(ks().member_user("r", &ks().member("q", "zoe")).is_err());
        assert!(ks().user_log_cursor("u", &ks().user_head("u")).is_err());
    }
}
