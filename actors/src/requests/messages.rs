//! Requests about messages that change: edit, delete and react (checked here, then appended by
//! the room's owner like a send), the references a send may carry (the message it replies to,
//! the members it mentions), threads, the reactions shown with history, and moderation (roles,
//! kick, ban, unban, mute) and room settings: checked here, decided by the store in the
//! append's transaction.
//!
//! What can be checked without the room's state is checked here, so a malformed request never
//! reaches the room; who may do what to which message is the store's decision, taken inside the
//! append's transaction (see `store::AppendRequest`).

use protocol::{ClientFrame, Entry, EntryKind, ErrorCode, ReqId, Role, RoomSettingsChange, ServerFrame};

use super::{check_send, error_frame, fit_page, refuse_room, require_member, store_error_frame, Ctx};
use crate::limits::Limits;
use crate::names;
use crate::room::AppendCommand;
use crate::store::{Appended, EntryDetails, StoreError};

/// The references of a `send`, checked: at most `limits.max_mentions` valid user names, each
/// once (in the order given).
pub fn send_refs(
    limits: &Limits,
    req: ReqId,
    reply_to: Option<u64>,
    mentions: Vec<String>,
) -> Result<EntryDetails, Box<ServerFrame>> {
    if mentions.len() > limits.max_mentions as usize {
        let message = format!("a message mentions at most limits.max_mentions ({}) members", limits.max_mentions);
        return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidField, message)));
    }
    let mut unique: Vec<String> = Vec::with_capacity(mentions.len());
    for name in mentions {
        if let Err(message) = names::validate_user_name(&name) {
            return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidField, format!("`mentions`: {message}"))));
        }
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    if reply_to == Some(0) {
        return Err(Box::new(error_frame(Some(req), ErrorCode::NoSuchMessage, "`reply_to` 0 names no message")));
    }
    Ok(EntryDetails { reply_to, mentions: unique, ..EntryDetails::default() })
}

/// The room and the command for an `edit`, `delete` or `react` frame, or the error reply.
pub fn change_command(
    limits: &Limits,
    user: &str,
    frame: ClientFrame,
) -> Result<(ReqId, String, AppendCommand), Box<ServerFrame>> {
    let (req, room, id, seq, kind, body) = match frame {
        ClientFrame::Edit { req, room, id, seq, body } => {
            check_send(limits, req, &room, &id, &body)?;
            (req, room, id, seq, EntryKind::Edit, body)
        }
        ClientFrame::Delete { req, room, id, seq } => {
            check_send(limits, req, &room, &id, "-")?;
            (req, room, id, seq, EntryKind::Delete, String::new())
        }
        ClientFrame::React { req, room, id, seq, reaction, remove } => {
            check_send(limits, req, &room, &id, "-")?;
            if let Err(message) = names::validate_reaction(&reaction) {
                return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidField, message)));
            }
            (req, room, id, seq, if remove { EntryKind::Unreact } else { EntryKind::React }, reaction)
        }
        other => {
            let message = format!("frame {:?} is not a change of a message", other.req());
            return Err(Box::new(error_frame(Some(other.req()), ErrorCode::Internal, message)));
        }
    };
    if seq == 0 {
        return Err(Box::new(error_frame(Some(req), ErrorCode::NoSuchMessage, "seq 0 names no message")));
    }
    let details = EntryDetails { target: Some(seq), ..EntryDetails::default() };
    Ok((req, room, AppendCommand { kind, from: user.to_owned(), id, user: None, body, details }))
}

/// Attach to each message of `entries` (text, not deleted) its reactions as the caller sees
/// them.
pub async fn add_reactions(ctx: &Ctx, room: &str, entries: &mut [Entry]) -> Result<(), StoreError> {
    let messages: Vec<usize> =
        (0..entries.len()).filter(|&i| entries[i].kind == EntryKind::Text && !entries[i].deleted).collect();
    if messages.is_empty() {
        return Ok(());
    }
    let seqs: Vec<u64> = messages.iter().map(|&i| entries[i].seq).collect();
    let reactions = ctx.hub.store().reactions(room, &seqs, &ctx.user).await?;
    for (i, counts) in messages.into_iter().zip(reactions) {
        entries[i].reactions = counts;
    }
    Ok(())
}

/// A thread: its root message and a page of the replies to it.
pub async fn thread(
    ctx: &Ctx,
    req: ReqId,
    room: String,
    root: u64,
    after: Option<u64>,
    limit: Option<u32>,
) -> ServerFrame {
    let limit = match super::page_limit(ctx.hub.limits(), req, limit) {
        Ok(limit) => limit,
        Err(frame) => return *frame,
    };
    if let Err(frame) = require_member(ctx, req, &room).await {
        return frame;
    }
    let (root, mut replies, more) = match ctx.hub.store().thread(&room, root, after.unwrap_or(0), limit).await {
        Ok(thread) => thread,
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    };
    let mut roots = [root];
    let decorated = async {
        add_reactions(ctx, &room, &mut roots).await?;
        add_reactions(ctx, &room, &mut replies).await
    };
    if let Err(err) = decorated.await {
        return store_error_frame(&ctx.hub, Some(req), err);
    }
    let [root] = roots;
    let (replies, cut) = fit_page(replies, false);
    ServerFrame::Thread { req, room, root, replies, more: more || cut }
}

/// Refuse a write to a direct conversation whose other user blocked the caller.
pub async fn check_not_blocked(ctx: &Ctx, req: ReqId, room: &str) -> Result<(), Box<ServerFrame>> {
    let Some(other) = names::direct_peer(room, &ctx.user) else { return Ok(()) };
    match ctx.hub.store().is_blocked(other, &ctx.user).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(Box::new(blocked_by(req, other))),
        Err(err) => Err(Box::new(store_error_frame(&ctx.hub, Some(req), err))),
    }
}

/// The refusal of a direct message to `other`, who blocked the caller.
pub fn blocked_by(req: ReqId, other: &str) -> ServerFrame {
    error_frame(Some(req), ErrorCode::Forbidden, format!("`{other}` does not take direct messages from you"))
}

/// `block`, `unblock` and `list_blocked`.
pub async fn blocks(ctx: &Ctx, frame: ClientFrame) -> ServerFrame {
    let req = frame.req();
    let (other, blocked) = match frame {
        ClientFrame::Block { user, .. } => (user, true),
        ClientFrame::Unblock { user, .. } => (user, false),
        _ => {
            return match ctx.hub.store().blocked_by(&ctx.user).await {
                Ok(users) => ServerFrame::Blocked { req, users },
                Err(err) => store_error_frame(&ctx.hub, Some(req), err),
            }
        }
    };
    if let Err(message) = names::validate_user_name(&other) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    if other == ctx.user {
        return error_frame(Some(req), ErrorCode::InvalidField, "you cannot block yourself");
    }
    match ctx.hub.store().set_blocked(&ctx.user, &other, blocked).await {
        Ok(()) => ServerFrame::Ok { req },
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// Longest reason a moderator may give for a kick or a ban, in bytes.
pub const REASON_MAX_BYTES: usize = 512;

/// The room and the command for a `set_role`, `kick`, `ban`, `unban` or `mute` frame, or the
/// error reply. These entries carry a node-made id, like membership entries: repeating one is
/// answered by the store (`not_member`, `unchanged`), never applied twice to the same member.
pub fn moderation_command(user: &str, frame: ClientFrame) -> Result<(ReqId, String, AppendCommand), Box<ServerFrame>> {
    let (req, room, subject, kind, body, until) = match frame {
        ClientFrame::SetRole { req, room, user, role } => {
            let body = match role {
                Role::Admin => "admin",
                Role::Member => "member",
                Role::Owner => {
                    let message = "a room has one owner, its creator; `role` is `admin` or `member`";
                    return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidField, message)));
                }
            };
            (req, room, user, EntryKind::Role, body.to_owned(), None)
        }
        ClientFrame::Kick { req, room, user, reason } => {
            (req, room, user, EntryKind::Kick, reason.unwrap_or_default(), None)
        }
        ClientFrame::Ban { req, room, user, reason, until } => {
            (req, room, user, EntryKind::Ban, reason.unwrap_or_default(), until)
        }
        ClientFrame::Unban { req, room, user } => (req, room, user, EntryKind::Unban, String::new(), None),
        ClientFrame::Mute { req, room, user, until } => (req, room, user, EntryKind::Mute, String::new(), until),
        other => {
            let message = "not a moderation request";
            return Err(Box::new(error_frame(Some(other.req()), ErrorCode::Internal, message)));
        }
    };
    if let Err(message) = names::validate_room_id(&room) {
        return Err(Box::new(error_frame(Some(req), ErrorCode::NoSuchRoom, message)));
    }
    if let Err(message) = names::validate_user_name(&subject) {
        return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidName, message)));
    }
    if body.len() > REASON_MAX_BYTES || body.chars().any(char::is_control) {
        let message = format!("`reason` is at most {REASON_MAX_BYTES} bytes without control characters");
        return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidField, message)));
    }
    let details = EntryDetails { until, ..EntryDetails::default() };
    let id = super::membership_entry_id(&format!("{kind:?}").to_lowercase());
    Ok((req, room, AppendCommand { kind, from: user.to_owned(), id, user: Some(subject), body, details }))
}

/// Longest topic a room may have, in bytes.
pub const TOPIC_MAX_BYTES: usize = 1024;

/// The room and the command for a `set_room` frame, or the error reply. Like moderation, the
/// entry carries a node-made id: a repeated request changes nothing and is answered `unchanged`.
pub fn settings_command(user: &str, frame: ClientFrame) -> Result<(ReqId, String, AppendCommand), Box<ServerFrame>> {
    let ClientFrame::SetRoom { req, room, name, topic, private, who_may_post, who_may_invite } = frame else {
        return Err(Box::new(error_frame(Some(frame.req()), ErrorCode::Internal, "not a settings request")));
    };
    let invalid = |message: String| Box::new(error_frame(Some(req), ErrorCode::InvalidField, message));
    if let Err(message) = names::validate_room_id(&room) {
        return Err(Box::new(error_frame(Some(req), ErrorCode::NoSuchRoom, message)));
    }
    let name =
        name.map(|name| names::validate_room_name(&name)).transpose().map_err(|m| invalid(format!("`name`: {m}")))?;
    if let Some(topic) = &topic {
        if topic.len() > TOPIC_MAX_BYTES || topic.chars().any(|c| c.is_control() && c != '\n') {
            return Err(invalid(format!(
                "`topic` is at most {TOPIC_MAX_BYTES} bytes, without control characters but line breaks"
            )));
        }
        if let Some(c) = names::hidden_char(topic) {
            let code = u32::from(c);
            return Err(invalid(format!(
                "`topic` must not contain invisible or text-direction characters (found U+{code:04X})"
            )));
        }
    }
    let change = RoomSettingsChange { name, topic, private, who_may_post, who_may_invite };
    if change == RoomSettingsChange::default() {
        return Err(invalid(
            "`set_room` changes nothing: give one or more of name, topic, private, who_may_post, who_may_invite".into(),
        ));
    }
    let details = EntryDetails { settings: Some(change), ..EntryDetails::default() };
    let command = AppendCommand {
        kind: EntryKind::Settings,
        from: user.to_owned(),
        id: super::membership_entry_id("settings"),
        user: None,
        body: String::new(),
        details,
    };
    Ok((req, room, command))
}

/// The reply to a moderation request: `ok`, or the store's refusal. Not being a member
/// oneself is answered as any request about a room one is not in; the subject not being a
/// member (kicking someone who left) is said as such.
pub async fn moderation_reply(ctx: &Ctx, req: ReqId, room: &str, result: Result<Appended, StoreError>) -> ServerFrame {
    match result {
        Ok(_) => ServerFrame::Ok { req },
        Err(StoreError::NotMember { user, .. }) if user == ctx.user => refuse_room(ctx, req, room).await,
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}
