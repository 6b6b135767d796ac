//! Moderation as SQL: roles, kicks, bans and mutes, each an entry of the room's log naming its
//! subject, applied in the transaction that appends it.
//!
//! A member's role and mute live on their `members` row (so they end with the membership: a
//! member who leaves and comes back is a plain member again); bans live in `bans`, apart from
//! membership, because they must outlast it and can be set on someone who never joined. The
//! users a user blocked (no direct messages from them) are kept here too: moderation by a user
//! rather than a room. A room's settings are changed here too, by its moderators.

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::ops::{advance_room, audience_str, deliver, find_uid, insert_entry, require_uid, sql_int, RoomRow};
use super::threads::Context;
use crate::{AppendRequest, Appended, Delivery, StoreError, StoreResult};
use protocol::{Entry, EntryKind, Role, RoomKind};

const MEMBER_STANDING: &str = "SELECT role, muted_until FROM members WHERE rid = ?1 AND uid = ?2";
const ROLE_SET: &str = "UPDATE members SET role = ?3 WHERE rid = ?1 AND uid = ?2";
const MUTE_SET: &str = "UPDATE members SET muted_until = ?3 WHERE rid = ?1 AND uid = ?2";
const MEMBER_REMOVE: &str = "DELETE FROM members WHERE rid = ?1 AND uid = ?2";
const BAN_BY_USER: &str = "SELECT until FROM bans WHERE rid = ?1 AND uid = ?2";
const BAN_SET: &str = "INSERT INTO bans (rid, uid, until, reason) VALUES (?1, ?2, ?3, ?4) \
                       ON CONFLICT (rid, uid) DO UPDATE SET until = excluded.until, reason = excluded.reason";
const BAN_LIFT: &str = "DELETE FROM bans WHERE rid = ?1 AND uid = ?2";
const SETTINGS_SET: &str =
    "UPDATE rooms SET name = ?2, topic = ?3, private = ?4, who_may_post = ?5, who_may_invite = ?6 WHERE rid = ?1";

/// Statements on the paths of this module, for the query-plan test.
#[cfg(test)]
pub(super) const HOT_QUERIES: &[&str] =
    &[MEMBER_STANDING, ROLE_SET, MUTE_SET, MEMBER_REMOVE, BAN_BY_USER, BAN_LIFT, BLOCK_EXISTS, BLOCK_LIFT, BLOCKED_BY];

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

/// A role from its column.
pub(super) fn role_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Role> {
    let text: String = row.get(index)?;
    match text.as_str() {
        "owner" => Ok(Role::Owner),
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        _ => Err(rusqlite::Error::FromSqlConversionFailure(index, Type::Text, format!("role `{text}`").into())),
    }
}

/// A member's role and the end of their mute (0 if none); `None` for a non-member.
pub(super) fn standing(conn: &Connection, rid: i64, uid: i64) -> StoreResult<Option<(Role, u64)>> {
    conn.prepare_cached(MEMBER_STANDING)
        .and_then(|mut s| s.query_row(params![rid, uid], |r| Ok((role_column(r, 0)?, r.get(1)?))).optional())
        .ctx("read member standing")
}

pub(super) fn set_role(conn: &Connection, rid: i64, uid: i64, role: Role) -> StoreResult<()> {
    conn.prepare_cached(ROLE_SET).and_then(|mut s| s.execute(params![rid, uid, role_str(role)])).ctx("set role")?;
    Ok(())
}

/// The role of a named member (`None` for a non-member or an unknown user).
pub(super) fn role_of(conn: &Connection, rid: i64, name: &str) -> StoreResult<Option<Role>> {
    match find_uid(conn, name)? {
        Some(uid) => Ok(standing(conn, rid, uid)?.map(|(role, _)| role)),
        None => Ok(None),
    }
}

/// The role of each of `users` in `room` (`None` for a non-member).
pub(super) fn roles(conn: &Connection, room: &str, users: &[String]) -> StoreResult<Vec<Option<Role>>> {
    let rid = super::ops::require_room(conn, room)?.rid;
    users.iter().map(|user| role_of(conn, rid, user)).collect()
}

/// `Banned` if the user is banned from the room at `now`.
pub(super) fn check_not_banned(conn: &Connection, room: &RoomRow, uid: i64, user: &str, now: u64) -> StoreResult<()> {
    let ban: Option<Option<u64>> = conn
        .prepare_cached(BAN_BY_USER)
        .and_then(|mut s| s.query_row(params![room.rid, uid], |r| r.get(0)).optional())
        .ctx("read ban")?;
    match ban {
        Some(until) if until.is_none_or(|until| until > now) => {
            Err(StoreError::Banned { room: room.record.id.clone(), user: user.to_owned(), until })
        }
        _ => Ok(()),
    }
}

/// `from`'s role: `NotMember` unless they are a member, `NotAllowed` if they are muted at `now`.
pub(super) fn check_unmuted_member(conn: &Connection, room: &RoomRow, from: &str, now: u64) -> StoreResult<Role> {
    let standing = match find_uid(conn, from)? {
        Some(uid) => standing(conn, room.rid, uid)?,
        None => None,
    };
    match standing {
        None => Err(StoreError::NotMember { room: room.record.id.clone(), user: from.to_owned() }),
        Some((_, until)) if until > now => Err(StoreError::NotAllowed(format!(
            "`{from}` is muted in `{}` until {until} (ms since the Unix epoch)",
            room.record.id
        ))),
        Some((role, _)) => Ok(role),
    }
}

const BLOCK_SET: &str = "INSERT OR IGNORE INTO blocks (uid, blocked) VALUES (?1, ?2)";
const BLOCK_LIFT: &str = "DELETE FROM blocks WHERE uid = ?1 AND blocked = ?2";
const BLOCK_EXISTS: &str = "SELECT 1 FROM blocks WHERE uid = ?1 AND blocked = ?2";
const BLOCKED_BY: &str =
    "SELECT u.name FROM blocks b JOIN users u ON u.uid = b.blocked WHERE b.uid = ?1 ORDER BY u.name";

pub(super) fn set_blocked(conn: &Connection, user: &str, other: &str, blocked: bool) -> StoreResult<()> {
    let (uid, other) = (require_uid(conn, user)?, require_uid(conn, other)?);
    let sql = if blocked { BLOCK_SET } else { BLOCK_LIFT };
    conn.prepare_cached(sql).and_then(|mut s| s.execute(params![uid, other])).ctx("set block")?;
    Ok(())
}

pub(super) fn blocked_by(conn: &Connection, user: &str) -> StoreResult<Vec<String>> {
    let uid = require_uid(conn, user)?;
    conn.prepare_cached(BLOCKED_BY)
        .and_then(|mut s| s.query_map([uid], |r| r.get(0))?.collect())
        .ctx("read blocked users")
}

pub(super) fn is_blocked(conn: &Connection, user: &str, other: &str) -> StoreResult<bool> {
    match (find_uid(conn, user)?, find_uid(conn, other)?) {
        (Some(uid), Some(other)) => {
            conn.prepare_cached(BLOCK_EXISTS).and_then(|mut s| s.exists(params![uid, other])).ctx("read block")
        }
        _ => Ok(false),
    }
}

/// Append a role, kick, ban, unban or mute entry and apply it.
pub(super) fn append_moderation(
    conn: &Connection,
    room: &RoomRow,
    request: &AppendRequest,
    retention: u64,
) -> StoreResult<Appended> {
    let room_id = &room.record.id;
    let rid = room.rid;
    let from_uid = require_uid(conn, &request.from)?;
    let Some((actor, _)) = standing(conn, rid, from_uid)? else {
        return Err(StoreError::NotMember { room: room_id.clone(), user: request.from.clone() });
    };
    if room.record.kind == RoomKind::Direct {
        return Err(StoreError::NotAllowed("direct conversations have no moderators".into()));
    }
    let subject = request
        .user
        .as_deref()
        .ok_or_else(|| StoreError::Backend(format!("invalid append to `{room_id}`: moderation names no user")))?;
    let uid = require_uid(conn, subject)?;
    let subject_standing = standing(conn, rid, uid)?;
    crate::rules::check_moderation(room_id, request.kind, actor, subject, subject_standing.map(|(rank, _)| rank))?;
    let not_member = || StoreError::NotMember { room: room_id.clone(), user: subject.to_owned() };
    // Who the subject is to the room after this entry, for the fan-out: a member removed here
    // gets the entry too (they learn why), then stops being a member.
    let mut removes_member = false;
    let mut member_delta = 0;
    match request.kind {
        EntryKind::Role => {
            subject_standing.ok_or_else(not_member)?;
            let role = crate::rules::role_given(&request.body)?;
            set_role(conn, rid, uid, role)?;
        }
        EntryKind::Kick => {
            subject_standing.ok_or_else(not_member)?;
            removes_member = true;
        }
        EntryKind::Ban => {
            conn.prepare_cached(BAN_SET)
                .and_then(|mut s| s.execute(params![rid, uid, request.details.until.map(sql_int), request.body]))
                .ctx("set ban")?;
            removes_member = subject_standing.is_some();
        }
        EntryKind::Unban => {
            let lifted =
                conn.prepare_cached(BAN_LIFT).and_then(|mut s| s.execute(params![rid, uid])).ctx("lift ban")?;
            if lifted == 0 {
                return Err(StoreError::Unchanged(format!("`{subject}` is not banned from `{room_id}`")));
            }
        }
        EntryKind::Mute => {
            subject_standing.ok_or_else(not_member)?;
            let until = request.details.until.unwrap_or(0);
            conn.prepare_cached(MUTE_SET).and_then(|mut s| s.execute(params![rid, uid, sql_int(until)])).ctx("mute")?;
        }
        other => {
            return Err(StoreError::Backend(format!("invalid append to `{room_id}`: {other:?} is no moderation")));
        }
    }
    if removes_member {
        member_delta = -1;
    }
    let seq = advance_room(conn, room, member_delta)?;
    let entry = Entry {
        room: room_id.clone(),
        seq,
        id: request.id.clone(),
        from: request.from.clone(),
        kind: request.kind,
        user: Some(subject.to_owned()),
        body: request.body.clone(),
        ts: request.ts,
        until: request.details.until.filter(|_| matches!(request.kind, EntryKind::Ban | EntryKind::Mute)),
        ..Entry::default()
    };
    insert_entry(conn, rid, &entry)?;
    let recipients = deliver(conn, room, seq, retention)?;
    if removes_member {
        conn.prepare_cached(MEMBER_REMOVE).and_then(|mut s| s.execute(params![rid, uid])).ctx("remove member")?;
    }
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}

/// Append a settings entry and apply it to the room.
pub(super) fn append_settings(
    conn: &Connection,
    room: &RoomRow,
    request: &AppendRequest,
    retention: u64,
) -> StoreResult<Appended> {
    let room_id = &room.record.id;
    let Some(actor) = role_of(conn, room.rid, &request.from)? else {
        return Err(StoreError::NotMember { room: room_id.clone(), user: request.from.clone() });
    };
    let settings = crate::rules::settings_after(
        room_id,
        room.record.kind,
        actor,
        &room.record.settings(),
        request.details.settings.as_ref(),
    )?;
    conn.prepare_cached(SETTINGS_SET)
        .and_then(|mut s| {
            s.execute(params![
                room.rid,
                settings.name,
                settings.topic,
                settings.private,
                audience_str(settings.who_may_post),
                audience_str(settings.who_may_invite),
            ])
        })
        .ctx("change room settings")?;
    let seq = advance_room(conn, room, 0)?;
    let entry = Entry {
        room: room_id.clone(),
        seq,
        id: request.id.clone(),
        from: request.from.clone(),
        kind: EntryKind::Settings,
        ts: request.ts,
        settings: Some(Box::new(settings)),
        ..Entry::default()
    };
    insert_entry(conn, room.rid, &entry)?;
    let recipients = deliver(conn, room, seq, retention)?;
    Ok(Appended { delivery: Delivery { entry, recipients }, duplicate: false })
}
