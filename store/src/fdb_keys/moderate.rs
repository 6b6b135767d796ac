//! Moderation over the key-value transaction: roles, kicks, bans and mutes, each an entry of the
//! room log naming its subject, applied in the transaction that appends it. The rules and their
//! order are those of the SQLite backend's `moderate`.
//!
//! A member's role and mute end live in their `mem` value, which every append already reads for
//! its sender, so checking a mute costs no read, and both end with the membership (a member who
//! leaves and comes back is a plain member again). A ban has a key of its own, `ban`, because it
//! outlives the membership and may name someone who never joined; a join reads it with the keys
//! it reads anyway, in the same round trip. A room's settings, changed by its moderators, are
//! applied here too: they live in the room's `room` value, which every append reads.

use protocol::{EntryKind, RoomKind};

use super::amend::CheckedDetails;
use super::kv::KvTxn;
use super::limits::WriteSet;
use super::ops::{decode_at, AppendContext, MembershipChange, RoomState, Subject, R};
use super::values::{BanValue, MemberValue, UserHead};
use crate::StoreError;

/// `NotAllowed` if `member` (the `mem` value of `from`) is muted at `now`.
pub(super) fn check_not_muted(room: &str, from: &str, member: &MemberValue, now: u64) -> Result<(), StoreError> {
    let until = member.muted_until;
    if until > now {
        return Err(StoreError::NotAllowed(format!(
            "`{from}` is muted in `{room}` until {until} (ms since the Unix epoch)"
        )));
    }
    Ok(())
}

/// `Banned` if `ban` (the `ban` value of `user`, if any) keeps them out of `room` at `now`.
pub(super) fn check_not_banned(room: &str, user: &str, ban: Option<BanValue>, now: u64) -> Result<(), StoreError> {
    match ban {
        Some(ban) if ban.holds_at(now) => {
            Err(StoreError::Banned { room: room.to_string(), user: user.to_string(), until: ban.until })
        }
        _ => Ok(()),
    }
}

/// Check a role, kick, ban, unban or mute and collect its effect in `writes` (the subject's
/// `mem` value, the `ban` key); `commit_entry` then appends the entry and, for a kick or the
/// ban of a member, ends the membership after the entry reached them.
pub(super) async fn apply_moderation<X: KvTxn>(
    t: &X,
    cx: &AppendContext<'_>,
    state: &RoomState,
    writes: &mut WriteSet,
) -> R<(Subject, CheckedDetails), X> {
    let (ks, request) = (cx.ks, cx.request);
    let room = &request.room;
    let meta = &state.meta;
    let from_key = ks.member(room, &request.from);
    writes.read(&from_key);
    let from_value = t.get(&from_key).await?;
    let Some(actor) = decode_at::<X, _>(&from_key, from_value, MemberValue::decode)? else {
        return Err(StoreError::NotMember { room: room.clone(), user: request.from.clone() }.into());
    };
    if meta.kind == RoomKind::Direct {
        return Err(StoreError::NotAllowed("direct conversations have no moderators".into()).into());
    }
    let subject = request
        .user
        .as_deref()
        .ok_or_else(|| StoreError::Backend(format!("invalid append to `{room}`: moderation names no user")))?;
    let (head_key, member_key, ban_key) = (ks.user_head(subject), ks.member(room, subject), ks.ban(room, subject));
    for key in [&head_key, &member_key, &ban_key] {
        writes.read(key);
    }
    let mut got = t.get_many(&[head_key.clone(), member_key.clone(), ban_key.clone()]).await?.into_iter();
    if decode_at::<X, _>(&head_key, got.next().flatten(), UserHead::decode)?.is_none() {
        return Err(StoreError::NoSuchUser(subject.to_string()).into());
    }
    let member = decode_at::<X, _>(&member_key, got.next().flatten(), MemberValue::decode)?;
    let ban = decode_at::<X, _>(&ban_key, got.next().flatten(), BanValue::decode)?;

    let actor = actor.role_in(meta, &request.from);
    crate::rules::check_moderation(
        room,
        request.kind,
        actor,
        subject,
        member.as_ref().map(|m| m.role_in(meta, subject)),
    )?;
    let require_member =
        || member.ok_or_else(|| StoreError::NotMember { room: room.clone(), user: subject.to_string() });
    let mut change = MembershipChange::Keeps;
    match request.kind {
        EntryKind::Role => {
            let member = require_member()?;
            let role = crate::rules::role_given(&request.body)?;
            writes.set(member_key, MemberValue { role: Some(role), ..member }.encode());
        }
        EntryKind::Kick => {
            require_member()?;
            change = MembershipChange::Ends;
        }
        EntryKind::Ban => {
            writes.set(ban_key, BanValue { until: request.details.until, reason: request.body.clone() }.encode());
            if member.is_some() {
                change = MembershipChange::Ends;
            }
        }
        EntryKind::Unban => {
            if ban.is_none() {
                return Err(StoreError::Unchanged(format!("`{subject}` is not banned from `{room}`")).into());
            }
            writes.clear(ban_key);
        }
        EntryKind::Mute => {
            let member = require_member()?;
            let muted_until = request.details.until.unwrap_or(0);
            writes.set(member_key, MemberValue { muted_until, ..member }.encode());
        }
        other => {
            return Err(StoreError::Backend(format!("invalid append to `{room}`: {other:?} is no moderation")).into());
        }
    }
    let until = request.details.until.filter(|_| matches!(request.kind, EntryKind::Ban | EntryKind::Mute));
    Ok((Subject { user: subject.to_string(), change }, CheckedDetails { until, ..CheckedDetails::default() }))
}

/// Check a settings entry and collect its effect in `writes` (the room's `room` value).
pub(super) async fn apply_settings<X: KvTxn>(
    t: &X,
    cx: &AppendContext<'_>,
    state: &RoomState,
    writes: &mut WriteSet,
) -> R<CheckedDetails, X> {
    let (ks, request) = (cx.ks, cx.request);
    let room = &request.room;
    let from_key = ks.member(room, &request.from);
    writes.read(&from_key);
    let from_value = t.get(&from_key).await?;
    let Some(actor) = decode_at::<X, _>(&from_key, from_value, MemberValue::decode)? else {
        return Err(StoreError::NotMember { room: room.clone(), user: request.from.clone() }.into());
    };
    let meta = &state.meta;
    let settings = crate::rules::settings_after(
        room,
        meta.kind,
        actor.role_in(meta, &request.from),
        &meta.settings(),
        request.details.settings.as_ref(),
    )?;
    writes.set(ks.room(room), meta.with_settings(settings.clone()).encode());
    Ok(CheckedDetails { settings: Some(settings), ..CheckedDetails::default() })
}
