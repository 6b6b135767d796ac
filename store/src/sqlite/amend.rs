//! Messages that change after they are sent, as SQL: edits, deletes, reactions, and the
//! references a message makes (the message it replies to, the members it mentions).
//!
//! Every change is a new entry of the room log naming its `target`, appended in the same
//! transaction that applies it to the target's row, so that reading a message back (history,
//! threads, replay) shows its current state while the log keeps the order in which things
//! happened. A delete erases for real: the target's body, mentions, attachments and reactions
//! and the bodies of its edits are overwritten in that transaction (the attached media's
//! records doomed), and `secure_delete` (see `schema`) zeroes the bytes SQLite frees.

use rusqlite::{params, Connection, OptionalExtension};

use super::moderate;
use super::ops::{
    advance_room, attachments_from_column, deliver, entry_by_client_id, entry_columns, find_uid, insert_entry,
    is_named_member, require_room, sql_int, RoomRow,
};
use super::threads::Context;
use crate::{AppendRequest, Appended, Delivery, Recipients, StoreError, StoreResult};
use protocol::{Attachment, Entry, EntryKind, ReactionCount, Role, RoomKind};

const TARGET_BY_SEQ: &str =
    "SELECT sender, kind, ts, deleted, mentions, attachments FROM entries WHERE rid = ?1 AND seq = ?2";
const TARGET_EDIT: &str = "UPDATE entries SET body = ?3, edited_ts = ?4 WHERE rid = ?1 AND seq = ?2";
const TARGET_ERASE: &str =
    "UPDATE entries SET body = '', mentions = NULL, attachments = NULL, deleted = 1 WHERE rid = ?1 AND seq = ?2";
const EDITS_ERASE: &str = "UPDATE entries SET body = '', deleted = 1 WHERE rid = ?1 AND target = ?2 AND kind = 'edit'";
const REACTIONS_ERASE: &str = "DELETE FROM reactions WHERE rid = ?1 AND seq = ?2";
const MENTION_DELETE: &str = "DELETE FROM mentions WHERE uid = ?1 AND rid = ?2 AND seq = ?3";
const MENTION_INSERT: &str = "INSERT OR IGNORE INTO mentions (uid, rid, seq) VALUES (?1, ?2, ?3)";
// What a reaction needs to know of the message's reactions, in one pass over them: whether
// this user gave this reaction, whether anyone did, and how many different ones there are.
// Grouped by reaction in the primary key's order, so no sort.
const REACTION_STANDING: &str = "SELECT coalesce(max(mine), 0), coalesce(max(reaction = ?3), 0), count(*) FROM \
                                 (SELECT reaction, max(reaction = ?3 AND uid = ?4) AS mine FROM reactions \
                                  WHERE rid = ?1 AND seq = ?2 GROUP BY reaction)";
const REACTION_INSERT: &str = "INSERT INTO reactions (rid, seq, reaction, uid) VALUES (?1, ?2, ?3, ?4)";
const REACTION_DELETE: &str = "DELETE FROM reactions WHERE rid = ?1 AND seq = ?2 AND reaction = ?3 AND uid = ?4";
const REACTION_COUNTS: &str = "SELECT reaction, count(*), max(uid = ?3) FROM reactions \
                               WHERE rid = ?1 AND seq = ?2 GROUP BY reaction ORDER BY reaction";
const THREAD_ROOT: &str = "SELECT seq, id, sender, kind, subject, body, ts, target, reply_to, mentions, edited_ts, \
                           deleted, until, settings, attachments FROM entries \
                           WHERE rid = ?1 AND seq = ?2 AND kind = 'text'";
const THREAD_REPLIES: &str = "SELECT seq, id, sender, kind, subject, body, ts, target, reply_to, mentions, \
                              edited_ts, deleted, until, settings, attachments FROM entries \
                              WHERE rid = ?1 AND reply_to = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4";

/// Statements on the paths of this module, for the query-plan test.
#[cfg(test)]
pub(super) const HOT_QUERIES: &[&str] = &[
    TARGET_BY_SEQ,
    TARGET_EDIT,
    TARGET_ERASE,
    EDITS_ERASE,
    REACTIONS_ERASE,
    MENTION_DELETE,
    REACTION_STANDING,
    REACTION_DELETE,
    REACTION_COUNTS,
    THREAD_ROOT,
    THREAD_REPLIES,
];

/// The message an entry refers to, as the transaction sees it.
struct Target {
    sender: String,
    kind: String,
    ts: u64,
    deleted: bool,
    /// Names, one per line (as stored).
    mentions: Option<String>,
    /// What it carries (a deleted message: nothing).
    attachments: Vec<Attachment>,
}

/// The text entry `seq` of `room`: `NoSuchMessage` if there is none (or the entry is not a
/// message).
fn require_message(conn: &Connection, room: &RoomRow, seq: u64) -> StoreResult<Target> {
    let target = conn
        .prepare_cached(TARGET_BY_SEQ)
        .and_then(|mut s| {
            s.query_row(params![room.rid, sql_int(seq)], |r| {
                Ok(Target {
                    sender: r.get(0)?,
                    kind: r.get(1)?,
                    ts: r.get(2)?,
                    deleted: r.get(3)?,
                    mentions: r.get(4)?,
                    attachments: attachments_from_column(r, 5)?,
                })
            })
            .optional()
        })
        .ctx("read target message")?;
    match target {
        Some(target) if target.kind == "text" => Ok(target),
        _ => Err(StoreError::NoSuchMessage { room: room.record.id.clone(), seq }),
    }
}

/// Check a text entry's references (the message it replies to exists and is not deleted;
/// every mentioned user is a member) and return the mentioned members' ids, the sender left
/// out (one's own message is not unread).
pub(super) fn check_message_refs(conn: &Connection, room: &RoomRow, request: &AppendRequest) -> StoreResult<Vec<i64>> {
    if let Some(reply_to) = request.details.reply_to {
        if require_message(conn, room, reply_to)?.deleted {
            return Err(StoreError::MessageDeleted { room: room.record.id.clone(), seq: reply_to });
        }
    }
    let mut uids = Vec::with_capacity(request.details.mentions.len());
    for name in &request.details.mentions {
        let uid = match find_uid(conn, name)? {
            Some(uid) if is_named_member(conn, room.rid, name)? => uid,
            _ => return Err(not_mentionable(room, name)),
        };
        if *name != request.from {
            uids.push(uid);
        }
    }
    Ok(uids)
}

fn not_mentionable(room: &RoomRow, name: &str) -> StoreError {
    StoreError::InvalidReference(format!(
        "`{name}` is not a member of `{}`; only members can be mentioned",
        room.record.id
    ))
}

pub(super) fn insert_mentions(conn: &Connection, rid: i64, seq: u64, uids: &[i64]) -> StoreResult<()> {
    for uid in uids {
        conn.prepare_cached(MENTION_INSERT)
            .and_then(|mut s| s.execute(params![uid, rid, sql_int(seq)]))
            .ctx("insert mention")?;
    }
    Ok(())
}

/// Append an edit, delete, react or unreact entry and apply it to its target.
pub(super) fn append_change(
    conn: &Connection,
    room: &RoomRow,
    request: &AppendRequest,
    retention: u64,
) -> StoreResult<Appended> {
    // A retry of an applied change gets its first outcome back, as a retried send does.
    if let Some(entry) = entry_by_client_id(conn, room, request)? {
        return Ok(Appended { delivery: Delivery { entry, recipients: Recipients::none() }, duplicate: true });
    }
    // A muted member may still delete their own messages.
    let role = if request.kind == EntryKind::Delete {
        moderate::role_of(conn, room.rid, &request.from)?
            .ok_or_else(|| StoreError::NotMember { room: room.record.id.clone(), user: request.from.clone() })?
    } else {
        moderate::check_unmuted_member(conn, room, &request.from, request.ts)?
    };
    let room_id = &room.record.id;
    let seq = request.details.target.ok_or_else(|| {
        StoreError::Backend(format!("invalid append to `{room_id}`: a {:?} entry names no target", request.kind))
    })?;
    let target = require_message(conn, room, seq)?;
    if target.deleted {
        return Err(StoreError::MessageDeleted { room: room_id.clone(), seq });
    }
    let rid = room.rid;
    let target_seq = sql_int(seq);
    match request.kind {
        EntryKind::Edit => {
            if target.sender != request.from {
                return Err(StoreError::NotAllowed(format!("only its author can edit message {seq} of `{room_id}`")));
            }
            if request.ts > target.ts.saturating_add(request.rules.edit_window_ms) {
                return Err(StoreError::NotAllowed(format!(
                    "message {seq} of `{room_id}` was sent more than {} s ago and can no longer be edited",
                    request.rules.edit_window_ms / 1000
                )));
            }
            conn.prepare_cached(TARGET_EDIT)
                .and_then(|mut s| s.execute(params![rid, target_seq, request.body, sql_int(request.ts)]))
                .ctx("edit message")?;
        }
        EntryKind::Delete => {
            let moderates = room.record.kind == RoomKind::Group && role >= Role::Admin;
            if target.sender != request.from && !moderates {
                return Err(StoreError::NotAllowed(format!(
                    "message {seq} of `{room_id}` is `{}`'s; only its author or the room's owner and admins can \
                     delete it",
                    target.sender
                )));
            }
            for (sql, doing) in
                [(TARGET_ERASE, "erase message"), (EDITS_ERASE, "erase edits"), (REACTIONS_ERASE, "erase reactions")]
            {
                conn.prepare_cached(sql).and_then(|mut s| s.execute(params![rid, target_seq])).ctx(doing)?;
            }
            // Its files go with it: their records are doomed, for the collector to delete.
            super::media::doom_attachments(conn, room_id, seq, &target.attachments)?;
            // A deleted message no longer counts as an unread mention of anyone it named.
            for name in target.mentions.iter().flat_map(|names| names.split('\n')) {
                if let Some(uid) = find_uid(conn, name)? {
                    conn.prepare_cached(MENTION_DELETE)
                        .and_then(|mut s| s.execute(params![uid, rid, target_seq]))
                        .ctx("erase mention")?;
                }
            }
        }
        EntryKind::React | EntryKind::Unreact => {
            let uid = find_uid(conn, &request.from)?.ok_or_else(|| StoreError::NoSuchUser(request.from.clone()))?;
            let reaction = &request.body;
            let (given, given_by_anyone, kinds): (bool, bool, u32) = conn
                .prepare_cached(REACTION_STANDING)
                .and_then(|mut s| {
                    s.query_row(params![rid, target_seq, reaction, uid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                })
                .ctx("read reactions")?;
            if request.kind == EntryKind::React {
                if given {
                    return Err(StoreError::Unchanged(format!(
                        "you already reacted `{reaction}` to message {seq} of `{room_id}`"
                    )));
                }
                if !given_by_anyone && kinds >= request.rules.max_reactions_per_message {
                    return Err(StoreError::InvalidReference(format!(
                        "message {seq} of `{room_id}` already has {kinds} different reactions, the limit"
                    )));
                }
                conn.prepare_cached(REACTION_INSERT)
                    .and_then(|mut s| s.execute(params![rid, target_seq, reaction, uid]))
                    .ctx("insert reaction")?;
            } else {
                if !given {
                    return Err(StoreError::Unchanged(format!(
                        "you have not reacted `{reaction}` to message {seq} of `{room_id}`"
                    )));
                }
                conn.prepare_cached(REACTION_DELETE)
                    .and_then(|mut s| s.execute(params![rid, target_seq, reaction, uid]))
                    .ctx("delete reaction")?;
            }
        }
        _ => {
            return Err(StoreError::Backend(format!(
                "invalid append to `{room_id}`: {:?} is not a change",
                request.kind
            )))
        }
    }
    if matches!(request.kind, EntryKind::React | EntryKind::Unreact) && room.record.large_since.is_some() {
        return Ok(Appended::counted(request, seq));
    }
    let new_seq = advance_room(conn, room, 0)?;
    let entry = Entry {
        room: room_id.clone(),
        seq: new_seq,
        id: request.id.clone(),
        from: request.from.clone(),
        kind: request.kind,
        // A delete carries no body: the point is that the text is gone.
        body: if request.kind == EntryKind::Delete { String::new() } else { request.body.clone() },
        ts: request.ts,
        target: Some(seq),
        ..Entry::default()
    };
    insert_entry(conn, rid, &entry)?;
    let recipients = deliver(conn, room, new_seq, retention)?;
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

pub(super) fn thread(
    conn: &Connection,
    room: &str,
    root: u64,
    after: u64,
    limit: u32,
) -> StoreResult<(Entry, Vec<Entry>, bool)> {
    let header = require_room(conn, room)?;
    let root_entry = conn
        .prepare_cached(THREAD_ROOT)
        .and_then(|mut s| {
            s.query_row(params![header.rid, sql_int(root)], |r| entry_columns(room.to_owned(), r, 0)).optional()
        })
        .ctx("read thread root")?
        .ok_or_else(|| StoreError::NoSuchMessage { room: room.to_owned(), seq: root })?;
    let fetch = i64::from(limit) + 1;
    let mut replies: Vec<Entry> = conn
        .prepare_cached(THREAD_REPLIES)
        .and_then(|mut s| {
            s.query_map(params![header.rid, sql_int(root), sql_int(after), fetch], |r| {
                entry_columns(room.to_owned(), r, 0)
            })?
            .collect()
        })
        .ctx("read thread replies")?;
    let more = replies.len() > limit as usize;
    replies.truncate(limit as usize);
    Ok((root_entry, replies, more))
}

pub(super) fn reactions(
    conn: &Connection,
    room: &str,
    seqs: &[u64],
    viewer: &str,
) -> StoreResult<Vec<Vec<ReactionCount>>> {
    let rid = require_room(conn, room)?.rid;
    // An unknown viewer matches no row (uid -1 is never assigned).
    let viewer = find_uid(conn, viewer)?.unwrap_or(-1);
    let mut all = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let counts: Vec<ReactionCount> = conn
            .prepare_cached(REACTION_COUNTS)
            .and_then(|mut s| {
                s.query_map(params![rid, sql_int(*seq), viewer], |r| {
                    Ok(ReactionCount { reaction: r.get(0)?, count: r.get(1)?, me: r.get(2)? })
                })?
                .collect()
            })
            .ctx("read reactions")?;
        all.push(counts);
    }
    Ok(all)
}
