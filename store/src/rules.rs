//! The moderation rules, once for both backends: who may act on whom, and which roles can be
//! given. Each backend reads the roles in its own transaction and asks here.

use protocol::{EntryKind, Role};

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
