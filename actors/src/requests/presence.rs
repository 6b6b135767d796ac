//! Handlers of the presence frames: `set_presence`, `watch_presence`, `typing`, `receipts`, and
//! the member list with presence. The rules they enforce (who may see whom, which rooms get
//! pushes) are explained in [`crate::presence`].

use std::collections::HashSet;

use protocol::{ErrorCode, PresenceState, ReadPosition, ReceiptKind, ReqId, ServerFrame};

use super::{error_frame, json_escaped_len, require_member, store_error_frame, Ctx};
use crate::limits::PAGE_MAX_BYTES;
use crate::presence::TypingUpdate;
use crate::store::StoreError;

/// `set_presence`: online or away, with an optional status text.
pub fn set_presence(ctx: &Ctx, req: ReqId, state: PresenceState, status: Option<String>) -> ServerFrame {
    let settings = &ctx.hub.presence().settings;
    let away = match state {
        PresenceState::Online => false,
        PresenceState::Away => true,
        PresenceState::Offline => {
            let message = "`state` must be `online` or `away`; `offline` is shown when no connection is left";
            return error_frame(Some(req), ErrorCode::InvalidField, message);
        }
    };
    let status = status.filter(|text| !text.trim().is_empty());
    if let Some(text) = &status {
        if text.len() > settings.status_max_bytes {
            let message = format!(
                "`status` has {} bytes; presence.status_max_bytes is {}",
                text.len(),
                settings.status_max_bytes
            );
            return error_frame(Some(req), ErrorCode::InvalidField, message);
        }
        // Shown to others as it is, like a room name.
        if text.chars().any(char::is_control) {
            return error_frame(Some(req), ErrorCode::InvalidField, "`status` must not contain control characters");
        }
        if let Some(c) = crate::names::hidden_char(text) {
            let message = format!(
                "`status` must not contain invisible or text-direction characters (found U+{:04X})",
                u32::from(c)
            );
            return error_frame(Some(req), ErrorCode::InvalidField, message);
        }
    }
    if ctx.hub.presence().set_state(&ctx.user, away, status) {
        ServerFrame::Ok { req }
    } else {
        error_frame(Some(req), ErrorCode::Unavailable, "this connection is closing; retry on a new one")
    }
}

/// `watch_presence`: replace this connection's watch list with the visible ones of `users`.
pub async fn watch_presence(ctx: &Ctx, req: ReqId, users: Vec<String>) -> ServerFrame {
    let max = ctx.hub.presence().settings.max_watched;
    let mut seen = HashSet::new();
    let users: Vec<String> = users.into_iter().filter(|user| seen.insert(user.clone())).collect();
    if users.len() > max {
        let message = format!("{} users to watch; presence.max_watched is {max}", users.len());
        return error_frame(Some(req), ErrorCode::InvalidField, message);
    }
    let (visible, hidden) = match visible_users(ctx, users).await {
        Ok(split) => split,
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    };
    ctx.hub.watch_presence(&ctx.user, ctx.conn_id, visible.clone());
    let users = ctx.hub.presence().watch_list(ctx.conn_id, &visible);
    ServerFrame::PresenceList { req, users, hidden }
}

/// Split `users` into those the caller may watch (itself, and users sharing a room or direct
/// conversation with it) and the rest. Unknown users land in the rest, indistinguishable.
async fn visible_users(ctx: &Ctx, users: Vec<String>) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let mine: HashSet<String> =
        ctx.hub.store().rooms_of(&ctx.user).await?.into_iter().map(|mine| mine.room.id).collect();
    let mut visible = Vec::new();
    let mut hidden = Vec::new();
    for user in users {
        let shares = user == ctx.user
            || match ctx.hub.store().rooms_of(&user).await {
                Ok(theirs) => theirs.iter().any(|theirs| mine.contains(&theirs.room.id)),
                Err(StoreError::NoSuchUser(_)) => false,
                Err(err) => return Err(err),
            };
        if shares {
            visible.push(user);
        } else {
            hidden.push(user);
        }
    }
    Ok((visible, hidden))
}

/// A membership changed somewhere this connection can see: drop watched users it no longer
/// shares a room with, so a former room-mate's presence stops flowing.
pub async fn revalidate_watch(ctx: &Ctx) {
    let watched = ctx.hub.presence().watched_by(ctx.conn_id);
    if watched.is_empty() {
        return;
    }
    if let Ok((visible, hidden)) = visible_users(ctx, watched).await {
        if !hidden.is_empty() {
            ctx.hub.watch_presence(&ctx.user, ctx.conn_id, visible);
        }
    }
}

/// `typing`: tell the room's other members, on whatever node they are. `None` on success (the
/// frame has no reply), the error frame otherwise.
pub async fn typing(ctx: &Ctx, req: ReqId, room: String, active: bool) -> Option<ServerFrame> {
    let presence = ctx.hub.presence();
    let ttl = presence.settings.typing_ttl_ms;
    let recipients = match presence.typing_update(&room, &ctx.user, active) {
        TypingUpdate::Nothing => return None,
        TypingUpdate::Stop(recipients) => recipients,
        TypingUpdate::Start(start) => match pushable_members(ctx, req, &room, "typing").await {
            // A stop handled while the members were read ended this start: nobody hears of it.
            Ok(recipients) if presence.typing_started(&room, &ctx.user, start, recipients.clone()) => recipients,
            Ok(_) => return None,
            Err(frame) => {
                presence.typing_abandoned(&room, &ctx.user, start);
                return Some(frame);
            }
        },
        TypingUpdate::StopUnknown => match pushable_members(ctx, req, &room, "typing").await {
            Ok(recipients) => recipients,
            Err(frame) => return Some(frame),
        },
    };
    let expires_in_ms = if active { ttl } else { 0 };
    ctx.hub.push(&recipients, ServerFrame::Typing { room, user: ctx.user.clone(), active, expires_in_ms });
    None
}

/// A `send` ends the sender's typing indicator in that room, if this node holds one.
pub fn typing_ended_by_send(ctx: &Ctx, room: &str) {
    if let TypingUpdate::Stop(recipients) = ctx.hub.presence().typing_update(room, &ctx.user, false) {
        let frame =
            ServerFrame::Typing { room: room.to_string(), user: ctx.user.clone(), active: false, expires_in_ms: 0 };
        ctx.hub.push(&recipients, frame);
    }
}

/// The other members of `room`, if the caller is a member and the room is small enough for
/// pushes of `what`.
async fn pushable_members(ctx: &Ctx, req: ReqId, room: &str, what: &str) -> Result<Vec<String>, ServerFrame> {
    let members = members_as_member(ctx, req, room).await?;
    let max = ctx.hub.presence().settings.room_max_members;
    if members.len() as u64 > u64::from(max) {
        let message = format!(
            "`{room}` has {} members; {what} is pushed only in rooms of at most presence.room_max_members ({max})",
            members.len()
        );
        return Err(error_frame(Some(req), ErrorCode::Forbidden, message));
    }
    Ok(members.into_iter().filter(|member| *member != ctx.user).collect())
}

/// The members of `room` if the caller is one of them: one read when it is; otherwise the
/// refusal is [`require_member`]'s (a private room answers as an unknown one).
async fn members_as_member(ctx: &Ctx, req: ReqId, room: &str) -> Result<Vec<String>, ServerFrame> {
    if let Ok(members) = ctx.hub.store().members(room).await {
        if members.contains(&ctx.user) {
            return Ok(members);
        }
    }
    require_member(ctx, req, room).await?;
    // A member after all (joined in between): read again.
    ctx.hub.store().members(room).await.map_err(|err| store_error_frame(&ctx.hub, Some(req), err))
}

/// After `mark_read` stored `seq`: tell the room's other members (small rooms only).
pub async fn read_receipt(ctx: &Ctx, room: &str, seq: u64) {
    let Ok(members) = ctx.hub.store().members(room).await else { return };
    if members.len() as u64 > u64::from(ctx.hub.presence().settings.room_max_members) {
        return;
    }
    let others: Vec<String> = members.into_iter().filter(|member| *member != ctx.user).collect();
    let frame = ServerFrame::Receipt { room: room.to_string(), user: ctx.user.clone(), kind: ReceiptKind::Read, seq };
    ctx.hub.push(&others, frame);
}

/// `receipts`: every member's stored read position.
pub async fn receipts(ctx: &Ctx, req: ReqId, room: String) -> ServerFrame {
    if let Err(frame) = require_member(ctx, req, &room).await {
        return frame;
    }
    match ctx.hub.store().read_positions(&room).await {
        Ok(reads) => {
            let reads = reads.into_iter().map(|(user, seq)| ReadPosition { user, seq }).collect();
            ServerFrame::Receipts { req, room, reads }
        }
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// `list_members`: a page of members (sorted by name) with their presence, and the counts.
pub async fn list_members(
    ctx: &Ctx,
    req: ReqId,
    room: String,
    after: Option<String>,
    limit: Option<u32>,
) -> ServerFrame {
    let max = ctx.hub.limits().members_page_max;
    let limit = match limit {
        None => max,
        Some(0) => return error_frame(Some(req), ErrorCode::InvalidField, "`limit` must be at least 1"),
        Some(limit) if limit > max => {
            let message = format!("`limit` must be at most limits.members_page_max ({max})");
            return error_frame(Some(req), ErrorCode::InvalidField, message);
        }
        Some(limit) => limit,
    };
    let mut members = match members_as_member(ctx, req, &room).await {
        Ok(members) => members,
        Err(frame) => return frame,
    };
    members.sort();
    let total = members.len() as u32;
    let online = ctx.hub.presence().count_online(&members) as u32;
    let start = after.map_or(0, |after| members.partition_point(|member| *member <= after));
    let end = (start + limit as usize).min(members.len());
    // The page also ends where its encoding would pass `PAGE_MAX_BYTES` (status texts make a
    // member's size vary); `more` sends the client on from its last name.
    let mut page = Vec::new();
    let mut presence = Vec::new();
    let mut bytes = 0;
    for member in &members[start..end] {
        let theirs = ctx.hub.presence().get(member);
        bytes +=
            MEMBER_FIELDS_BYTES + 2 * json_escaped_len(member) + theirs.status.as_deref().map_or(0, json_escaped_len);
        if bytes > PAGE_MAX_BYTES && !page.is_empty() {
            break;
        }
        page.push(member.clone());
        presence.push(theirs);
    }
    let more = start + page.len() < members.len();
    // A member who left since the list was read reads as a member: the page is a moment's view.
    let roles = match ctx.hub.store().roles(&room, &page).await {
        Ok(roles) => roles.into_iter().map(Option::unwrap_or_default).collect(),
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    };
    ServerFrame::Members { req, room, members: page, presence, roles, total, online, more }
}

/// A member's place in a `members` page besides the name (listed twice) and status text: field
/// names, the state, the last-seen time.
const MEMBER_FIELDS_BYTES: usize = 96;
