//! Messages that change after they are sent, over the key-value transaction: edits, deletes,
//! reactions, and the references a text entry makes (the message it replies to, the members it
//! mentions). The rules and their order are those of the SQLite backend's `amend`.
//!
//! A change is an entry of the room log naming its `target`, appended by `ops::commit_entry` in
//! the transaction that applies it to the target's value, so reading a message back (history,
//! threads, replay) shows its current state while the log keeps the order things happened in.
//! Every lookup a change needs has keys of its own, read by a point or range read and never by a
//! scan of the room log: `edit` (a message's edits, for its delete), `reply` (a thread), `react`
//! and `rsum` (who gave a reaction; how many did, at most `max_reactions_per_message` keys per
//! message whatever the room's size) and `ment` (a user's mentions in a room, counted from the
//! read position). A delete erases for real, in the append's one transaction: the target's body,
//! mentions and attachments and the bodies of its edits are overwritten, its reactions and
//! mention keys cleared, its attached media doomed.

use protocol::{Entry, EntryKind, ReactionCount, Role, RoomKind, RoomSettings};

use super::kv::{corrupt, together, KvTxn};
use super::layout::Keyspace;
use super::limits::{page_rows, split_page, WriteSet};
use super::moderate::check_not_muted;
use super::ops::{decode_at, read, require_room, AppendContext, RoomState, R};
use super::values::{decode_u64, encode_marker, encode_u64, CodecError, EntryValue, MemberValue};
use crate::{MediaRecord, StoreError};

/// What an entry refers to and carries, checked: `commit_entry` stores it in the entry and
/// writes the index keys that point back at the entry.
#[derive(Debug, Default)]
pub(super) struct CheckedDetails {
    /// For a change: the message acted on (an edit gets an `edit` key under it).
    pub target: Option<u64>,
    /// For text: the message replied to (which gets a `reply` key).
    pub reply_to: Option<u64>,
    /// For text: every member it mentions, as sent (stored in the entry).
    pub mentions: Vec<String>,
    /// The mentioned members who get a `ment` key: the sender left out (one's own message is
    /// not unread), each once.
    pub notify: Vec<String>,
    /// For ban and mute: until when.
    pub until: Option<u64>,
    /// For settings: the room's settings after the entry.
    pub settings: Option<RoomSettings>,
    /// For text: the uploads it attaches, checked ready and the sender's (`commit_entry`
    /// attaches them to the entry's seq).
    pub media: Vec<MediaRecord>,
}

/// The text entry `seq` of `room`: `NoSuchMessage` if there is none or the entry is not a
/// message (a join, an edit…).
async fn require_message<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    seq: u64,
    writes: &mut WriteSet,
) -> R<EntryValue, X> {
    let key = ks.room_log(room, seq);
    writes.read(&key);
    match read(t, &key, EntryValue::decode).await? {
        Some(value) if value.kind == EntryKind::Text => Ok(value),
        _ => Err(StoreError::NoSuchMessage { room: room.to_string(), seq }.into()),
    }
}

/// Check a text entry's references: the message it replies to exists and is not deleted, and
/// every mentioned user is a member.
pub(super) async fn check_message_refs<X: KvTxn>(
    t: &X,
    cx: &AppendContext<'_>,
    writes: &mut WriteSet,
) -> R<CheckedDetails, X> {
    let (ks, request) = (cx.ks, cx.request);
    let room = &request.room;
    if let Some(reply_to) = request.details.reply_to {
        if require_message(t, ks, room, reply_to, writes).await?.deleted {
            return Err(StoreError::MessageDeleted { room: room.clone(), seq: reply_to }.into());
        }
    }
    let mentions = &request.details.mentions;
    let keys: Vec<Vec<u8>> = mentions.iter().map(|name| ks.member(room, name)).collect();
    for key in &keys {
        writes.read(key);
    }
    let found = if keys.is_empty() { Vec::new() } else { t.get_many(&keys).await? };
    let mut notify: Vec<String> = Vec::with_capacity(mentions.len());
    for (name, membership) in mentions.iter().zip(found) {
        if membership.is_none() {
            return Err(StoreError::InvalidReference(format!(
                "`{name}` is not a member of `{room}`; only members can be mentioned"
            ))
            .into());
        }
        if *name != request.from && !notify.contains(name) {
            notify.push(name.clone());
        }
    }
    let media = super::media::check_attachments(t, ks, request, writes).await?;
    Ok(CheckedDetails {
        reply_to: request.details.reply_to,
        mentions: mentions.clone(),
        notify,
        media,
        ..CheckedDetails::default()
    })
}

/// Check an edit, delete, react or unreact by `sender` (the sender's `mem` value) against its
/// target and collect its effect on the target in `writes`; `commit_entry` then appends the
/// change's own entry.
pub(super) async fn apply_change<X: KvTxn>(
    t: &X,
    cx: &AppendContext<'_>,
    state: &RoomState,
    sender: &MemberValue,
    writes: &mut WriteSet,
) -> R<CheckedDetails, X> {
    let (ks, request) = (cx.ks, cx.request);
    let room = &request.room;
    let seq = request.details.target.ok_or_else(|| {
        StoreError::Backend(format!("invalid append to `{room}`: a {:?} entry names no target", request.kind))
    })?;
    // A muted member may still take back what they said.
    if request.kind != EntryKind::Delete {
        check_not_muted(room, &request.from, sender, request.ts)?;
    }
    let target = require_message(t, ks, room, seq, writes).await?;
    if target.deleted {
        return Err(StoreError::MessageDeleted { room: room.clone(), seq }.into());
    }
    match request.kind {
        EntryKind::Edit => {
            if target.from != request.from {
                return Err(
                    StoreError::NotAllowed(format!("only its author can edit message {seq} of `{room}`")).into()
                );
            }
            if request.ts > target.ts.saturating_add(request.rules.edit_window_ms) {
                return Err(StoreError::NotAllowed(format!(
                    "message {seq} of `{room}` was sent more than {} s ago and can no longer be edited",
                    request.rules.edit_window_ms / 1000
                ))
                .into());
            }
            let edited = EntryValue { body: request.body.clone(), edited_at: Some(request.ts), ..target };
            writes.set(ks.room_log(room, seq), edited.encode());
        }
        EntryKind::Delete => {
            let moderates =
                state.meta.kind == RoomKind::Group && sender.role_in(&state.meta, &request.from) >= Role::Admin;
            if target.from != request.from && !moderates {
                return Err(StoreError::NotAllowed(format!(
                    "message {seq} of `{room}` is `{}`'s; only its author or the room's owner and admins can \
                     delete it",
                    target.from
                ))
                .into());
            }
            erase(t, ks, room, seq, target, writes).await?;
        }
        EntryKind::React | EntryKind::Unreact => react(t, cx, seq, writes).await?,
        _ => {
            return Err(
                StoreError::Backend(format!("invalid append to `{room}`: {:?} is not a change", request.kind)).into()
            )
        }
    }
    Ok(CheckedDetails { target: Some(seq), ..CheckedDetails::default() })
}

/// Everything message `seq` said, gone: its body, mentions and attachments (a tombstone stays;
/// the attached media's records are doomed), the bodies of its edits (found by their `edit`
/// keys), its reactions and the unread mentions it made.
async fn erase<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    seq: u64,
    target: EntryValue,
    writes: &mut WriteSet,
) -> R<(), X> {
    // The sender got no mention key of their own message.
    for name in target.mentions.iter().filter(|name| **name != target.from) {
        writes.clear(ks.mention(name, room, seq));
    }
    super::media::doom_attachments(t, ks, room, seq, &target.attachments, writes).await?;
    let tombstone =
        EntryValue { body: String::new(), mentions: Vec::new(), attachments: Vec::new(), deleted: true, ..target };
    writes.set(ks.room_log(room, seq), tombstone.encode());

    let edits = ks.edits_of(room, seq);
    writes.read_range(&edits);
    let mut keys = Vec::new();
    for (key, _) in t.get_range(&edits, None, false).await? {
        let edit_seq = ks.edit_seq(room, seq, &key).map_err(|e| corrupt(&key, e))?;
        keys.push(ks.room_log(room, edit_seq));
    }
    for key in &keys {
        writes.read(key);
    }
    let values = if keys.is_empty() { Vec::new() } else { t.get_many(&keys).await? };
    for (key, value) in keys.into_iter().zip(values) {
        // An `edit` key is written with its entry, so a missing entry is damage.
        let edit = decode_at::<X, _>(&key, value, EntryValue::decode)?
            .ok_or_else(|| corrupt::<X::Error>(&key, CodecError::Empty))?;
        writes.set(key, EntryValue { body: String::new(), deleted: true, ..edit }.encode());
    }

    writes.clear_range(ks.reactions_of(room, seq));
    writes.clear_range(ks.reaction_counts_of(room, seq));
    Ok(())
}

/// Give (react) or take back (unreact) the reaction `body` of `from` to message `seq`, keeping
/// the message's `rsum` count of it.
async fn react<X: KvTxn>(t: &X, cx: &AppendContext<'_>, seq: u64, writes: &mut WriteSet) -> R<(), X> {
    let (ks, request) = (cx.ks, cx.request);
    let (room, reaction) = (&request.room, &request.body);
    let given_key = ks.reaction(room, seq, reaction, &request.from);
    let count_key = ks.reaction_count(room, seq, reaction);
    writes.read(&given_key);
    writes.read(&count_key);
    let mut got = t.get_many(&[given_key.clone(), count_key.clone()]).await?.into_iter();
    let given = got.next().flatten().is_some();
    let count = decode_at::<X, _>(&count_key, got.next().flatten(), decode_u64)?.unwrap_or(0);
    if request.kind == EntryKind::React {
        if given {
            return Err(StoreError::Unchanged(format!(
                "you already reacted `{reaction}` to message {seq} of `{room}`"
            ))
            .into());
        }
        if count == 0 {
            // A reaction nobody gave yet: one more distinct reaction, of a bounded number.
            let limit = request.rules.max_reactions_per_message;
            let counts = ks.reaction_counts_of(room, seq);
            writes.read_range(&counts);
            // Reading `limit` rows tells whether the limit is reached (FoundationDB reads a
            // limit of 0 as none, hence the test first).
            if limit == 0 || t.get_range(&counts, Some(limit as usize), false).await?.len() >= limit as usize {
                return Err(StoreError::InvalidReference(format!(
                    "message {seq} of `{room}` already has {limit} different reactions, the limit"
                ))
                .into());
            }
        }
        writes.set(given_key, encode_marker());
        writes.set(count_key, encode_u64(count + 1));
    } else {
        if !given {
            return Err(StoreError::Unchanged(format!(
                "you have not reacted `{reaction}` to message {seq} of `{room}`"
            ))
            .into());
        }
        writes.clear(given_key);
        // A reaction nobody gives any more is no longer one of the message's distinct ones.
        match count.checked_sub(1) {
            Some(left) if left > 0 => writes.set(count_key, encode_u64(left)),
            _ => writes.clear(count_key),
        }
    }
    Ok(())
}

pub(super) async fn thread<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    root: u64,
    after: u64,
    limit: u32,
) -> R<(Entry, Vec<Entry>, bool), X> {
    let mut reads = WriteSet::new();
    require_room(t, ks, room, &mut reads).await?;
    let root_entry = require_message(t, ks, room, root, &mut reads).await?.into_entry(room, root);
    let rows = page_rows(limit);
    // One row past the limit tells whether more follow, without a second read.
    let mut seqs = Vec::new();
    for (key, _) in t.get_range(&ks.replies_after(room, root, after), Some(rows + 1), false).await? {
        seqs.push(ks.reply_seq(room, root, &key).map_err(|e| corrupt(&key, e))?);
    }
    let (seqs, more) = split_page(seqs, rows, false);
    let keys: Vec<Vec<u8>> = seqs.iter().map(|&seq| ks.room_log(room, seq)).collect();
    let values = if keys.is_empty() { Vec::new() } else { t.get_many(&keys).await? };
    let mut replies = Vec::with_capacity(seqs.len());
    for ((seq, key), value) in seqs.into_iter().zip(&keys).zip(values) {
        // A `reply` key is written with its entry, so a missing entry is damage.
        let value = decode_at::<X, _>(key, value, EntryValue::decode)?
            .ok_or_else(|| corrupt::<X::Error>(key, CodecError::Empty))?;
        replies.push(value.into_entry(room, seq));
    }
    Ok((root_entry, replies, more))
}

/// The reactions to each of `seqs`: one range read of `rsum` per message (all issued together),
/// then one batch of point reads for whether `viewer` gave each.
pub(super) async fn reactions<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    room: &str,
    seqs: &[u64],
    viewer: &str,
) -> R<Vec<Vec<ReactionCount>>, X> {
    require_room(t, ks, room, &mut WriteSet::new()).await?;
    let ranges: Vec<_> = seqs.iter().map(|&seq| ks.reaction_counts_of(room, seq)).collect();
    let found = together(ranges.iter().map(|range| t.get_range(range, None, false)).collect()).await;
    let mut all = Vec::with_capacity(seqs.len());
    let mut mine = Vec::new();
    for (&seq, rows) in seqs.iter().zip(found) {
        let mut counts = Vec::new();
        // In key order, which is the reactions' order as text (UTF-8 bytes, as `str` sorts).
        for (key, value) in rows? {
            let reaction = ks.reaction_count_reaction(room, seq, &key).map_err(|e| corrupt(&key, e))?;
            let count = decode_u64(&value).map_err(|e| corrupt(&key, e))?;
            mine.push(ks.reaction(room, seq, &reaction, viewer));
            counts.push(ReactionCount { reaction, count: u32::try_from(count).unwrap_or(u32::MAX), me: false });
        }
        all.push(counts);
    }
    let given = if mine.is_empty() { Vec::new() } else { t.get_many(&mine).await? };
    let mut given = given.into_iter();
    for count in all.iter_mut().flatten() {
        count.me = given.next().flatten().is_some();
    }
    Ok(all)
}

/// For each (room, read position) of `user`: the messages after the read position that mention
/// them, counted by one range read of `ment` per room, all issued together.
pub(super) async fn unread_mentions<X: KvTxn>(
    t: &X,
    ks: &Keyspace,
    user: &str,
    rooms: &[(&str, u64)],
) -> R<Vec<u32>, X> {
    let ranges: Vec<_> = rooms.iter().map(|&(room, read_seq)| ks.mentions_after(user, room, read_seq)).collect();
    let found = together(ranges.iter().map(|range| t.get_range(range, None, false)).collect()).await;
    found.into_iter().map(|rows| Ok(u32::try_from(rows?.len()).unwrap_or(u32::MAX))).collect()
}
