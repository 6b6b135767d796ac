//! The moderation rules, once for both backends: who may act on whom, which roles can be given,
//! who may change a room's settings and what the settings allow. Each backend reads the roles in
//! its own transaction and asks here.

use protocol::{Audience, EntryKind, Role, RoomKind, RoomSettings, RoomSettingsChange};

use crate::{StoreError, StoreResult};

/// Whether a member of rank `actor` may apply the moderation `kind` to `subject`, whose rank is
/// `subject_role` (`None`: not a member) in `room`. A `role` entry needs the owner; the others
/// an owner or admin; and a member is only acted on by someone ranked above them.
pub(crate) fn check_moderation(
    room: &str,
    kind: EntryKind,
    actor: Role,
    subject: &str,
    subject_role: Option<Role>,
) -> StoreResult<()> {
    let needed = if kind == EntryKind::Role { Role::Owner } else { Role::Admin };
    if actor < needed {
        return Err(StoreError::NotAllowed(format!(
            "only the room's {} can do that in `{room}`",
            if needed == Role::Owner { "owner" } else { "owner or admins" }
        )));
    }
    if subject_role.is_some_and(|rank| rank >= actor) {
        return Err(StoreError::NotAllowed(format!("`{subject}` ranks as high as you in `{room}`")));
    }
    Ok(())
}

/// The role a `role` entry gives, from its body.
pub(crate) fn role_given(body: &str) -> StoreResult<Role> {
    match body {
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        other => Err(StoreError::InvalidReference(format!("a role given is `admin` or `member`, not `{other}`"))),
    }
}

/// The room's settings after `change`, which `actor` asks for: an owner or admin of a group
/// room, changing at least one thing.
pub(crate) fn settings_after(
    room: &str,
    kind: RoomKind,
    actor: Role,
    current: &RoomSettings,
    change: Option<&RoomSettingsChange>,
) -> StoreResult<RoomSettings> {
    if kind == RoomKind::Direct {
        return Err(StoreError::NotAllowed("direct conversations have no settings to change".into()));
    }
    if actor < Role::Admin {
        return Err(StoreError::NotAllowed(format!("only the room's owner or admins change the settings of `{room}`")));
    }
    let after = change.map_or_else(|| current.clone(), |change| change.applied_to(current));
    if after == *current {
        return Err(StoreError::Unchanged(format!("the settings of `{room}` are already so")));
    }
    Ok(after)
}

/// `NotAllowed` unless a member of rank `role` may send messages in a room where `who_may_post`.
pub(crate) fn check_may_post(room: &str, who_may_post: Audience, role: Role) -> StoreResult<()> {
    if who_may_post.includes(role) {
        Ok(())
    } else {
        Err(StoreError::NotAllowed(format!("only the room's owner and admins post in `{room}`")))
    }
}

/// `NotAllowed` unless a member of rank `role` may invite others into a room where
/// `who_may_invite`.
pub(crate) fn check_may_invite(room: &str, who_may_invite: Audience, role: Role) -> StoreResult<()> {
    if who_may_invite.includes(role) {
        Ok(())
    } else {
        Err(StoreError::NotAllowed(format!("only the room's owner and admins invite others into `{room}`")))
    }
}
