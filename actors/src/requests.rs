//! The request handlers a session runs for its client, one function per frame kind.
//!
//! Each takes what it needs (the hub, the user, the request's fields) and returns the reply
//! frame, an error frame included: handlers never fail in any other way, so a bad request costs
//! at most its own error reply. Sessions decide ordering and pipelining; rooms decide what gets
//! written; these functions validate, ask, and translate the answers into protocol frames.

use std::sync::Arc;
use tracing::Instrument;

use protocol::{Entry, EntryKind, ErrorCode, ReqId, Role, RoomInfo, ServerFrame};
use tracing::{error, info};

use crate::hub::Hub;
use crate::limits::{Limits, MENTION_MAX_BYTES, PAGE_MAX_BYTES};
use crate::metrics::Metrics;
use crate::names::{self, now_ms};
use crate::room::AppendCommand;
use crate::store::{Appended, EntryDetails, HistoryPage, MyRoom, NewRoom, RoomRecord, StoreError};

pub mod account;
pub mod devices;
pub mod media;
pub mod messages;
pub mod presence;
pub mod service;

/// Who is asking: the hub, the authenticated user and the connection.
#[derive(Clone)]
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub user: String,
    pub conn_id: u64,
}

/// An error frame.
pub fn error_frame(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error { req, code, message: message.into(), retry_after_ms: None }
}

/// A message that quotes client input, cut to at most 512 characters, with control characters
/// (which JSON escapes to six bytes each) replaced: an error reply stays small whatever it quotes.
pub fn bounded_message(message: &str) -> String {
    const MAX_CHARS: usize = 512;
    let mut out: String =
        message.chars().take(MAX_CHARS).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if message.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// The error frame for a store refusal. Faults are logged here and shown to the client only as
/// "internal", without the store's details.
pub fn store_error_frame(hub: &Hub, req: Option<ReqId>, err: StoreError) -> ServerFrame {
    let code = match &err {
        StoreError::UserExists(_) => ErrorCode::UserExists,
        StoreError::NoSuchUser(_) => ErrorCode::NoSuchUser,
        StoreError::NoSuchRoom(room) => return no_such_room(req, room),
        StoreError::NotMember { .. } => ErrorCode::NotMember,
        StoreError::AlreadyMember { .. } | StoreError::Forbidden(_) => ErrorCode::Forbidden,
        StoreError::RoomFull { .. } => ErrorCode::RoomFull,
        StoreError::TooManyRooms { .. } => ErrorCode::TooManyRooms,
        StoreError::Fenced { .. } | StoreError::Unavailable(_) => ErrorCode::Unavailable,
        StoreError::NoSuchMessage { .. } => ErrorCode::NoSuchMessage,
        StoreError::MessageDeleted { .. } => ErrorCode::MessageDeleted,
        StoreError::NotAllowed(_) => ErrorCode::Forbidden,
        StoreError::InvalidReference(_) => ErrorCode::InvalidField,
        StoreError::Unchanged(_) => ErrorCode::Unchanged,
        StoreError::Banned { .. } => ErrorCode::Banned,
        StoreError::NoSuchMedia(_) => ErrorCode::NoSuchMedia,
        StoreError::MediaInUse(_) => ErrorCode::MediaInUse,
        StoreError::QuotaExceeded { .. } => ErrorCode::Forbidden,
        StoreError::Backend(detail) => {
            Metrics::inc(&hub.metrics().store_errors_total);
            error!(error = %detail, "store failure");
            return error_frame(req, ErrorCode::Internal, "internal error; retry the request with the same ids");
        }
    };
    error_frame(req, code, err.to_string())
}

/// The refusal for a room that does not exist, and for a private room the caller is not in:
/// the same frame, so that a room id tells an outsider nothing (see [`refuse_room`]).
pub fn no_such_room(req: Option<ReqId>, room: &str) -> ServerFrame {
    error_frame(req, ErrorCode::NoSuchRoom, format!("no room `{room}`"))
}

/// The refusal for a room the caller is not a member of. A public room is open to anyone who
/// joins, so its existence is no secret and the answer is `not_member`. A private room (direct
/// conversations are private) answers as a room that does not exist: its id must tell an
/// outsider nothing, not even whether two users talk (a direct conversation's id is made of
/// their names).
pub async fn refuse_room(ctx: &Ctx, req: ReqId, room: &str) -> ServerFrame {
    match ctx.hub.store().room(room).await {
        Ok(Some(record)) if !record.private => {
            error_frame(Some(req), ErrorCode::NotMember, format!("you are not a member of `{room}`"))
        }
        Ok(_) | Err(StoreError::NoSuchRoom(_)) => no_such_room(Some(req), room),
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// Check an `invite` before it goes to the room; `Some` is the answer to send instead. Only a
/// member may invite, and anyone else gets the refusal of [`refuse_room`] whoever they name
/// (themselves, a user who does not exist): an invitation is never a way in, nor a way to learn
/// who has an account. A member inviting themself is told `ok`: they are a member.
pub async fn check_invite(ctx: &Ctx, req: ReqId, room: &str, user: &str) -> Option<ServerFrame> {
    // A direct conversation is its two users for good (its id names them), so no one is
    // invited in, as no one leaves. The store alone would add a third member.
    if room.starts_with("dm:") {
        let message = "direct conversations have exactly two members; create a group room";
        return Some(error_frame(Some(req), ErrorCode::Forbidden, message));
    }
    if let Err(message) = names::validate_user_name(user) {
        return Some(error_frame(Some(req), ErrorCode::InvalidName, message));
    }
    if let Err(frame) = require_member(ctx, req, room).await {
        return Some(frame);
    }
    if user == ctx.user {
        return Some(ServerFrame::Ok { req });
    }
    match ctx.hub.store().user(user).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(error_frame(Some(req), ErrorCode::NoSuchUser, format!("no user `{user}`"))),
        Err(err) => Some(store_error_frame(&ctx.hub, Some(req), err)),
    }
}

/// Create an account. Every limit is checked before the password hash is queued: the name and
/// password rules, the registrations allowed per client address, and room in the hash queue.
pub async fn register(hub: &Arc<Hub>, req: ReqId, user: String, password: String, addr: String) -> ServerFrame {
    if let Err(message) = names::validate_user_name(&user) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    if let Err(message) = hub.auth().validate_password(&password) {
        return error_frame(Some(req), ErrorCode::InvalidPassword, message);
    }
    let attempt = match hub.auth().limiter().start_register(client_ip(&addr)) {
        Ok(attempt) => attempt,
        Err(refused) => {
            let message = "too many registrations from this address; wait before trying again";
            return rate_limited(req, message, refused.retry_after);
        }
    };
    // A taken name needs no hash (and `register` tells whether a name is taken anyway).
    match hub.store().user(&user).await {
        Ok(Some(_)) => return store_error_frame(hub, Some(req), StoreError::UserExists(user)),
        Ok(None) => {}
        Err(err) => return store_error_frame(hub, Some(req), err),
    }
    let hash = match hub.auth().hash_in_pool(password).await {
        Ok(Ok(hash)) => hash,
        Ok(Err(err)) => return internal(req, err),
        Err(busy) => {
            attempt.refund();
            return rate_limited(req, "the node is busy hashing passwords; retry later", busy.retry_after);
        }
    };
    match hub.store().create_user(&user, &hash, now_ms()).await {
        Ok(()) => {
            info!(user, "registered");
            ServerFrame::Registered { req, user }
        }
        Err(err) => store_error_frame(hub, Some(req), err),
    }
}

/// Check a password and issue a token. The attempt takes its place in the login limits (per
/// client address, per user name and address, per user name; see `auth::limiter`) before the
/// store is asked or a hash queued, and gives it back only if it succeeds, so pipelined guesses
/// are counted as they arrive.
pub async fn login(hub: &Arc<Hub>, req: ReqId, user: String, password: String, addr: String) -> ServerFrame {
    // Validated first: only well-formed names become limiter keys.
    if let Err(message) = names::validate_user_name(&user) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    let attempt = match hub.auth().limiter().start_login(&user, client_ip(&addr)) {
        Ok(attempt) => attempt,
        Err(refused) => {
            let message = "too many login attempts; wait before trying again";
            return rate_limited(req, message, refused.retry_after);
        }
    };
    let record = match hub.store().user(&user).await {
        Ok(record) => record,
        Err(err) => {
            // Not the client's fault: the attempt does not count.
            attempt.cancel();
            return store_error_frame(hub, Some(req), err);
        }
    };
    let stored_hash = record.as_ref().map(|record| record.password_hash.clone());
    let verified = match hub.auth().verify_in_pool(stored_hash, password).await {
        Ok(verified) => verified,
        Err(busy) => {
            attempt.cancel();
            return rate_limited(req, "the node is busy hashing passwords; retry later", busy.retry_after);
        }
    };
    match record {
        Some(record) if verified => {
            attempt.succeeded();
            let (token, expires_at) = hub.auth().issue_token(&user, record.token_epoch, now_ms());
            ServerFrame::LoggedIn { req, user, token, expires_at }
        }
        _ => {
            drop(attempt);
            Metrics::inc(&hub.metrics().login_failures_total);
            info!(user, addr, "login failed");
            error_frame(Some(req), ErrorCode::InvalidCredentials, "unknown user or wrong password")
        }
    }
}

/// The client's IP address from the peer's `ip:port`. Limits are per address, not per
/// connection: the port is new on every connection, so keying on it would let a client reset
/// its count by reconnecting. A peer without one (only in-process tests) shares one key.
pub(crate) fn client_ip(addr: &str) -> std::net::IpAddr {
    addr.parse::<std::net::SocketAddr>().map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |peer| peer.ip())
}

/// A `rate_limited` refusal carrying when to retry.
pub(crate) fn rate_limited(req: ReqId, message: &str, retry_after: std::time::Duration) -> ServerFrame {
    ServerFrame::Error {
        req: Some(req),
        code: ErrorCode::RateLimited,
        message: message.to_string(),
        retry_after_ms: Some(retry_after.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
    }
}

/// Check a token's signature, expiry and epoch; on success the user name and when the token
/// expires (ms since the Unix epoch), else the error frame to send (boxed: frames are large,
/// and this is the rare path).
pub async fn verify_token(hub: &Hub, req: ReqId, token: &str) -> Result<(String, u64), Box<ServerFrame>> {
    let refuse = |code, message: String| Err(Box::new(error_frame(Some(req), code, message)));
    if let Some(external) = hub.auth().external().filter(|_| crate::auth::ExternalTokens::looks_like_jwt(token)) {
        return verify_external(hub, req, external, token).await;
    }
    let claims = match hub.auth().verify_token(token, now_ms()) {
        Ok(claims) => claims,
        Err(err @ crate::auth::TokenError::Expired) => return refuse(ErrorCode::TokenExpired, err.to_string()),
        Err(err @ crate::auth::TokenError::Invalid) => return refuse(ErrorCode::TokenInvalid, err.to_string()),
    };
    match hub.store().user(&claims.sub).await {
        Ok(Some(record)) if record.token_epoch == claims.epo => Ok((claims.sub, claims.exp)),
        Ok(Some(_)) => refuse(ErrorCode::TokenRevoked, "token was revoked; log in again".into()),
        Ok(None) => refuse(ErrorCode::TokenInvalid, "token names an unknown user".into()),
        Err(err) => Err(Box::new(store_error_frame(hub, Some(req), err))),
    }
}

/// [`verify_token`] for a JWT of the identity provider: the user it names, created on first
/// sight when configured (an erased account's name stays refused: the store keeps it taken).
async fn verify_external(
    hub: &Hub,
    req: ReqId,
    external: &crate::auth::ExternalTokens,
    token: &str,
) -> Result<(String, u64), Box<ServerFrame>> {
    let refuse = |code, message: &str| Err(Box::new(error_frame(Some(req), code, message)));
    let claims = match external.verify(token).await {
        Ok(claims) => claims,
        Err(crate::auth::TokenError::Expired) => return refuse(ErrorCode::TokenExpired, "token has expired"),
        Err(crate::auth::TokenError::Invalid) => {
            let message = "token refused: its signature, algorithm, key id, issuer, audience, expiry or user claim";
            return refuse(ErrorCode::TokenInvalid, message);
        }
    };
    let found = match hub.store().user(&claims.user).await {
        Ok(Some(_)) => true,
        Ok(None) if claims.create_users => {
            match hub.store().create_user(&claims.user, service::NO_PASSWORD, now_ms()).await {
                Ok(()) => {
                    info!(user = claims.user, "account created for an identity provider's token");
                    true
                }
                // Created meanwhile by another connection, or the name of an erased account.
                Err(StoreError::UserExists(_)) => matches!(hub.store().user(&claims.user).await, Ok(Some(_))),
                Err(err) => return Err(Box::new(store_error_frame(hub, Some(req), err))),
            }
        }
        Ok(None) => false,
        Err(err) => return Err(Box::new(store_error_frame(hub, Some(req), err))),
    };
    if !found {
        return refuse(ErrorCode::TokenInvalid, "token names an unknown user");
    }
    Ok((claims.user, claims.exp_ms))
}

pub async fn create_room(ctx: &Ctx, req: ReqId, name: String, private: bool) -> ServerFrame {
    let name = match names::validate_room_name(&name) {
        Ok(name) => name,
        Err(message) => return error_frame(Some(req), ErrorCode::InvalidName, message),
    };
    if let Some(frame) = not_serving(ctx, req) {
        return frame;
    }
    // Ids are random; on the rare collision the store refuses to overwrite and we draw again.
    for _ in 0..3 {
        let room = NewRoom {
            id: names::new_room_id(),
            name: name.clone(),
            kind: protocol::RoomKind::Group,
            private,
            creator: ctx.user.clone(),
            members: vec![ctx.user.clone()],
            ts: now_ms(),
        };
        match ctx.hub.store().create_room(room, ctx.hub.limits().membership()).await {
            Ok((record, Some(deliveries))) => {
                ctx.hub.deliver(&deliveries.iter().collect::<Vec<_>>());
                info!(user = ctx.user, room = record.id, "room created");
                // The creator of a group room owns it.
                return ServerFrame::Room { req, room: RoomInfo { role: Role::Owner, ..room_info(record, 0) } };
            }
            Ok((_, None)) => continue,
            Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
        }
    }
    error_frame(Some(req), ErrorCode::Internal, "could not allocate a room id; retry")
}

/// Find or create the direct conversation with `other`.
pub async fn open_direct(ctx: &Ctx, req: ReqId, other: String) -> ServerFrame {
    if let Err(message) = names::validate_user_name(&other) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    if other == ctx.user {
        return error_frame(Some(req), ErrorCode::Forbidden, "a direct conversation needs another user");
    }
    match ctx.hub.store().user(&other).await {
        Ok(Some(_)) => {}
        Ok(None) => return error_frame(Some(req), ErrorCode::NoSuchUser, format!("no user `{other}`")),
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    }
    match ctx.hub.store().is_blocked(&other, &ctx.user).await {
        Ok(false) => {}
        Ok(true) => return messages::blocked_by(req, &other),
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    }
    if let Some(frame) = not_serving(ctx, req) {
        return frame;
    }
    let id = names::direct_room_id(&ctx.user, &other);
    let room = NewRoom {
        id: id.clone(),
        name: id.trim_start_matches("dm:").replace(':', " & "),
        kind: protocol::RoomKind::Direct,
        private: true,
        creator: ctx.user.clone(),
        members: vec![ctx.user.clone(), other],
        ts: now_ms(),
    };
    match ctx.hub.store().create_room(room, ctx.hub.limits().membership()).await {
        Ok((record, Some(deliveries))) => {
            ctx.hub.deliver(&deliveries.iter().collect::<Vec<_>>());
            ServerFrame::Room { req, room: room_info(record, 0) }
        }
        // It existed: both users are members for good (direct conversations cannot be left).
        Ok((record, None)) => ServerFrame::Room { req, room: my_room_info(ctx, record).await },
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// The caller's rooms, sorted by name (then id): one order on every backend, and the one a
/// room list shows.
pub async fn list_rooms(ctx: &Ctx, req: ReqId) -> ServerFrame {
    match ctx.hub.store().rooms_of(&ctx.user).await {
        Ok(rooms) => {
            let mut rooms: Vec<RoomInfo> = rooms
                .into_iter()
                .map(|MyRoom { room, read_seq, unread_mentions, role, notify, notify_muted_until, .. }| RoomInfo {
                    mentions: unread_mentions,
                    role,
                    notify,
                    notify_muted_until,
                    ..room_info(room, read_seq)
                })
                .collect();
            rooms.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
            ServerFrame::Rooms { req, rooms }
        }
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

pub async fn history(
    ctx: &Ctx,
    req: ReqId,
    room: String,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
) -> ServerFrame {
    let page = match (before, after) {
        (Some(_), Some(_)) => {
            return error_frame(Some(req), ErrorCode::InvalidField, "give `before` or `after`, not both");
        }
        (Some(before), None) => HistoryPage::Before(before),
        (None, Some(after)) => HistoryPage::After(after),
        (None, None) => HistoryPage::Before(u64::MAX),
    };
    let limit = match page_limit(ctx.hub.limits(), req, limit) {
        Ok(limit) => limit,
        Err(frame) => return *frame,
    };
    if let Err(frame) = require_member(ctx, req, &room).await {
        return frame;
    }
    let (mut entries, more) = match ctx.hub.store().history(&room, page, limit).await {
        Ok(page) => page,
        Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
    };
    if let Err(err) = messages::add_reactions(ctx, &room, &mut entries).await {
        return store_error_frame(&ctx.hub, Some(req), err);
    }
    let backwards = matches!(page, HistoryPage::Before(_));
    let (entries, cut) = fit_page(entries, backwards);
    ServerFrame::History { req, room, entries, more: more || cut }
}

/// The entries of a history page that fit in [`PAGE_MAX_BYTES`] (at least one), and whether
/// some were left out. A page read backwards keeps its newest entries and one read forwards its
/// oldest, so the client's next request (`before` its first seq, `after` its last) reads on
/// from the page's edge and nothing is skipped.
pub(crate) fn fit_page(mut entries: Vec<Entry>, backwards: bool) -> (Vec<Entry>, bool) {
    let mut total = 0;
    let mut fits = |entry: &Entry| {
        total += entry_bytes_bound(entry);
        total <= PAGE_MAX_BYTES
    };
    let kept = if backwards {
        entries.iter().rev().take_while(|entry| fits(entry)).count()
    } else {
        entries.iter().take_while(|entry| fits(entry)).count()
    }
    .max(1)
    .min(entries.len());
    let cut = kept < entries.len();
    if backwards {
        entries.drain(..entries.len() - kept);
    } else {
        entries.truncate(kept);
    }
    (entries, cut)
}

/// At least the bytes an entry encodes to in either encoding: JSON's size with its worst
/// escaping (six bytes for a control character, two for a quote or a backslash), which
/// MessagePack never exceeds, and room for the field names and numbers.
pub fn entry_bytes_bound(entry: &Entry) -> usize {
    let escaped = json_escaped_len;
    let user = entry.user.as_deref().map_or(0, escaped);
    let mentions = entry.mentions.len() * MENTION_MAX_BYTES;
    let reactions: usize = entry.reactions.iter().map(|r| escaped(&r.reaction) + REACTION_FIELDS_BYTES).sum();
    ENTRY_FIELDS_BYTES
        + escaped(&entry.room)
        + escaped(&entry.id)
        + escaped(&entry.from)
        + user
        + escaped(&entry.body)
        + mentions
        + reactions
}

/// A reaction count's field names, punctuation, count and `me`, in JSON.
const REACTION_FIELDS_BYTES: usize = 48;

/// The bytes `text` takes as a JSON string's contents at most (serde_json escapes a control
/// character to at most six bytes, a quote or a backslash to two); MessagePack takes fewer.
pub(crate) fn json_escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|byte| match byte {
            0..=0x1f => 6,
            b'"' | b'\\' => 2,
            _ => 1,
        })
        .sum()
}

/// An entry's field names, punctuation and up to six numbers of up to 20 digits, in JSON.
const ENTRY_FIELDS_BYTES: usize = 320;

/// Store the read position and tell the user's other connections.
pub async fn mark_read(ctx: &Ctx, req: ReqId, room: String, seq: u64) -> ServerFrame {
    if let Err(frame) = require_member(ctx, req, &room).await {
        return frame;
    }
    match ctx.hub.store().mark_read(&ctx.user, &room, seq).await {
        Ok(stored) => {
            ctx.hub.broadcast_read(&ctx.user, &room, stored, ctx.conn_id);
            presence::read_receipt(ctx, &room, stored).await;
            ServerFrame::Ok { req }
        }
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// `set_notifications`: the caller's own choice for one room, kept with their membership.
pub async fn set_notifications(
    ctx: &Ctx,
    req: ReqId,
    room: String,
    level: protocol::NotifyLevel,
    muted_until: Option<u64>,
) -> ServerFrame {
    if let Err(message) = names::validate_room_id(&room) {
        return error_frame(Some(req), ErrorCode::NoSuchRoom, message);
    }
    match ctx.hub.store().set_notifications(&ctx.user, &room, level, muted_until).await {
        Ok(()) => ServerFrame::Ok { req },
        Err(err) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// Validate a `send` before it goes to the room.
pub fn check_send(limits: &Limits, req: ReqId, room: &str, id: &str, body: &str) -> Result<(), Box<ServerFrame>> {
    if let Err(message) = names::validate_room_id(room) {
        return Err(Box::new(error_frame(Some(req), ErrorCode::NoSuchRoom, message)));
    }
    if let Err(message) = names::validate_message_id(id) {
        return Err(Box::new(error_frame(Some(req), ErrorCode::InvalidMessageId, message)));
    }
    if body.trim().is_empty() {
        return Err(Box::new(error_frame(Some(req), ErrorCode::EmptyBody, "message body is empty")));
    }
    if body.len() > limits.max_body_bytes as usize {
        let message =
            format!("message body has {} bytes; limits.max_body_bytes is {}", body.len(), limits.max_body_bytes);
        return Err(Box::new(error_frame(Some(req), ErrorCode::BodyTooLarge, message)));
    }
    Ok(())
}

/// A node-made id for a membership entry (not deduplicated, so only unique).
pub fn membership_entry_id(prefix: &str) -> String {
    format!("{prefix}.{:016x}", rand::random::<u64>())
}

/// The command that makes `user` join `room` (`from` themselves) or invites them (`from` a
/// member), or makes them leave (`Leave`, `from` themselves).
pub fn membership_command(kind: EntryKind, from: &str, user: &str) -> AppendCommand {
    let prefix = match kind {
        EntryKind::Leave => "leave",
        _ if from == user => "join",
        _ => "invite",
    };
    AppendCommand {
        kind,
        from: from.to_owned(),
        id: membership_entry_id(prefix),
        user: Some(user.to_owned()),
        body: String::new(),
        details: EntryDetails::default(),
    }
}

/// The command that makes `user` leave `room`, or the refusal: direct conversations cannot be
/// left (a client's `leave` and the server API's removal both come here).
pub fn leave_command(req: ReqId, room: &str, user: &str) -> Result<AppendCommand, Box<ServerFrame>> {
    if room.starts_with("dm:") {
        return Err(Box::new(error_frame(Some(req), ErrorCode::Forbidden, "direct conversations cannot be left")));
    }
    Ok(membership_command(EntryKind::Leave, user, user))
}

/// The command for a `send` of `ctx.user`'s, checked as far as it can be without the room's
/// state (a client's `send` and the server API's post both come here), or the error reply.
pub async fn send_command(
    ctx: &Ctx,
    req: ReqId,
    room: &str,
    message: NewMessage,
) -> Result<AppendCommand, Box<ServerFrame>> {
    let NewMessage { id, body, reply_to, mentions, attachments } = message;
    // A message of files alone needs no text.
    let text = if body.is_empty() && !attachments.is_empty() { "-" } else { &body };
    check_send(ctx.hub.limits(), req, room, &id, text)?;
    let mut details = messages::send_refs(ctx.hub.limits(), req, reply_to, mentions)?;
    details.attachments = media::attachments(req, attachments)?;
    messages::check_not_blocked(ctx, req, room).await?;
    presence::typing_ended_by_send(ctx, room);
    Ok(AppendCommand { kind: EntryKind::Text, from: ctx.user.clone(), id, user: None, body, details })
}

/// What a `send` (or the server API's post) asks to post, before it is checked.
#[derive(Debug, Default)]
pub struct NewMessage {
    pub id: String,
    pub body: String,
    pub reply_to: Option<u64>,
    pub mentions: Vec<String>,
    /// Media ids.
    pub attachments: Vec<String>,
}

/// Hand `command` to `room`'s owner and wait for its answer, as the reply to request `req`.
/// A session splits these two steps to pipeline; the server API waits here.
pub async fn apply(ctx: &Ctx, req: ReqId, room: &str, command: AppendCommand) -> ServerFrame {
    if let Err(message) = names::validate_room_id(room) {
        return error_frame(Some(req), ErrorCode::NoSuchRoom, message);
    }
    let kind = command.kind;
    let invited = command.user.clone().filter(|user| *user != command.from);
    let span = tracing::debug_span!("palaver.request", kind = ?kind, room = %room, user = %ctx.user);
    async {
        let outcome = match ctx.hub.append(room, command).await {
            Ok(outcome) => outcome,
            Err(err) => return store_error_frame(&ctx.hub, Some(req), err),
        };
        let timeout = std::time::Duration::from_millis(ctx.hub.limits().request_timeout_ms);
        let result = crate::hub::append_outcome(room, outcome, timeout).await;
        room_reply(ctx, req, room, kind, invited, result).await
    }
    .instrument(span)
    .await
}

/// Translate a room's answer to the reply frame of the request that caused it.
pub async fn room_reply(
    ctx: &Ctx,
    req: ReqId,
    room: &str,
    kind: EntryKind,
    invited: Option<String>,
    result: Result<Appended, StoreError>,
) -> ServerFrame {
    match (kind, invited, result) {
        (
            EntryKind::Text | EntryKind::Edit | EntryKind::Delete | EntryKind::React | EntryKind::Unreact,
            _,
            Ok(Appended { delivery, duplicate }),
        ) => {
            let entry = delivery.entry;
            ServerFrame::Ack { req, room: entry.room, id: entry.id, seq: entry.seq, ts: entry.ts, duplicate }
        }
        // Joining twice is not an error: the reply is the room either way.
        (EntryKind::Join, None, Ok(_)) | (EntryKind::Join, None, Err(StoreError::AlreadyMember { .. })) => {
            match ctx.hub.store().room(room).await {
                Ok(Some(record)) => ServerFrame::Room { req, room: my_room_info(ctx, record).await },
                Ok(None) => no_such_room(Some(req), room),
                Err(err) => store_error_frame(&ctx.hub, Some(req), err),
            }
        }
        (EntryKind::Join, Some(_), Ok(_)) => ServerFrame::Ok { req },
        // The store answers "already a member" before it checks the inviter. Only a member may
        // hear that (as `ok`): anyone else is refused as a non-member, or an outsider could
        // learn who is in any room by inviting them.
        (EntryKind::Join, Some(_), Err(StoreError::AlreadyMember { .. })) => {
            match ctx.hub.store().is_member(room, &ctx.user).await {
                Ok(true) => ServerFrame::Ok { req },
                Ok(false) => refuse_room(ctx, req, room).await,
                Err(err) => store_error_frame(&ctx.hub, Some(req), err),
            }
        }
        (EntryKind::Leave, _, Ok(_)) => ServerFrame::Ok { req },
        (
            EntryKind::Role
            | EntryKind::Kick
            | EntryKind::Ban
            | EntryKind::Unban
            | EntryKind::Mute
            | EntryKind::Settings,
            _,
            result,
        ) => messages::moderation_reply(ctx, req, room, result).await,
        // Not a member (sending, leaving, inviting), or a private room's self-join: a private
        // room must answer as if it did not exist.
        (_, _, Err(StoreError::NotMember { .. } | StoreError::Forbidden(_))) => refuse_room(ctx, req, room).await,
        (_, _, Err(err)) => store_error_frame(&ctx.hub, Some(req), err),
    }
}

/// Creating a room writes its first entries without going through an owner, so it needs the
/// same permission as any append: a node outside the quorum (the minority side of a partition,
/// or not joined yet) must not write.
fn not_serving(ctx: &Ctx, req: ReqId) -> Option<ServerFrame> {
    let reason = ctx.hub.not_serving()?;
    Some(error_frame(Some(req), ErrorCode::Unavailable, format!("{reason}; retry, or reconnect to another node")))
}

/// The page size a `history` or `thread` request asks for: 50 (at most
/// `limits.history_page_max`) when not given, or the error reply.
pub(crate) fn page_limit(limits: &Limits, req: ReqId, limit: Option<u32>) -> Result<u32, Box<ServerFrame>> {
    let max = limits.history_page_max;
    match limit {
        None => Ok(max.min(50)),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(_) => {
            let message = format!("`limit` must be 1 to limits.history_page_max ({max})");
            Err(Box::new(error_frame(Some(req), ErrorCode::InvalidField, message)))
        }
    }
}

pub(crate) async fn require_member(ctx: &Ctx, req: ReqId, room: &str) -> Result<(), ServerFrame> {
    if let Err(message) = names::validate_room_id(room) {
        return Err(error_frame(Some(req), ErrorCode::NoSuchRoom, message));
    }
    match ctx.hub.store().is_member(room, &ctx.user).await {
        Ok(true) => Ok(()),
        Ok(false) | Err(StoreError::NoSuchRoom(_)) => Err(refuse_room(ctx, req, room).await),
        Err(err) => Err(store_error_frame(&ctx.hub, Some(req), err)),
    }
}

/// The room as this user sees it, with their read position.
async fn my_room_info(ctx: &Ctx, record: RoomRecord) -> RoomInfo {
    let mine = match ctx.hub.store().rooms_of(&ctx.user).await {
        Ok(rooms) => rooms.into_iter().find(|mine| mine.room.id == record.id),
        Err(_) => None,
    };
    let Some(mine) = mine else { return room_info(record, 0) };
    RoomInfo {
        role: mine.role,
        notify: mine.notify,
        notify_muted_until: mine.notify_muted_until,
        mentions: mine.unread_mentions,
        ..room_info(record, mine.read_seq)
    }
}

fn room_info(record: RoomRecord, read_seq: u64) -> RoomInfo {
    RoomInfo {
        id: record.id,
        name: record.name,
        kind: record.kind,
        private: record.private,
        last_seq: record.last_seq,
        read_seq,
        members: record.members,
        large: record.large_since.is_some(),
        mentions: 0,
        role: Role::Member,
        topic: record.topic,
        who_may_post: record.who_may_post,
        who_may_invite: record.who_may_invite,
        notify: Default::default(),
        notify_muted_until: None,
    }
}

fn internal(req: ReqId, err: impl std::fmt::Display) -> ServerFrame {
    error!(error = %err, "request failed");
    error_frame(Some(req), ErrorCode::Internal, "internal error; retry")
}
