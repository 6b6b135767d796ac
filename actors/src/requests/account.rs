//! Deleting an account: the password confirms it, the user leaves every room through the
//! room's owner (one writer per room, so the `leave` is ordered with everything else there and
//! every member sees it), then the store erases the account in one transaction
//! (`Store::delete_account`). The session closes every connection of the user afterwards.
//!
//! A room can be joined again between the leaves and the erasure (another device of the user,
//! still connected, accepts an invitation): the store then names the room, and it is left in
//! another round. If a round fails midway, the rooms left stay left and the account stays; the
//! client retries. The server API erases an account the same way, without the password.

use std::sync::Arc;
use std::time::Duration;

use protocol::{EntryKind, ErrorCode, ReqId, ServerFrame};

use super::{client_ip, error_frame, membership_command, rate_limited, store_error_frame};
use crate::hub::{append_outcome, Hub};
use crate::names::now_ms;
use crate::store::StoreError;

/// Rounds of leaving rooms and erasing before giving up (each one after rooms were joined again).
const ROUNDS: usize = 3;

/// Delete `user`'s account, confirmed by `password`, asked from `addr`; `Err` is the reply.
/// The password is checked under the login limits: a stolen token is no way to guess it.
pub async fn delete_account(
    hub: &Arc<Hub>,
    req: ReqId,
    user: &str,
    password: String,
    addr: &str,
) -> Result<(), ServerFrame> {
    let fail = |err: StoreError| store_error_frame(hub, Some(req), err);
    let attempt = match hub.auth().limiter().start_login(user, client_ip(addr)) {
        Ok(attempt) => attempt,
        Err(refused) => return Err(rate_limited(req, "too many password attempts; wait", refused.retry_after)),
    };
    let stored = match hub.store().user(user).await {
        Ok(record) => record.map(|record| record.password_hash),
        Err(err) => {
            attempt.cancel();
            return Err(fail(err));
        }
    };
    match hub.auth().verify_in_pool(stored, password).await {
        Ok(true) => attempt.succeeded(),
        // Dropped unfinished, the attempt counts as a failure.
        Ok(false) => return Err(error_frame(Some(req), ErrorCode::InvalidCredentials, "wrong password")),
        Err(busy) => {
            attempt.cancel();
            return Err(rate_limited(req, "the node is busy hashing passwords; retry later", busy.retry_after));
        }
    }
    erase(hub, req, user).await
}

/// Erase `user`'s account once its owner is confirmed (or a server API key asked): leave every
/// room, then delete what the store keeps of them. `Err` is the reply.
pub async fn erase(hub: &Arc<Hub>, req: ReqId, user: &str) -> Result<(), ServerFrame> {
    let fail = |err: StoreError| store_error_frame(hub, Some(req), err);
    for _ in 0..ROUNDS {
        for mine in hub.store().rooms_of(user).await.map_err(fail)? {
            leave(hub, user, &mine.room.id).await.map_err(fail)?;
        }
        match hub.store().delete_account(user, now_ms()).await {
            Ok(()) => return Ok(()),
            Err(StoreError::AlreadyMember { .. }) => continue,
            Err(err) => return Err(fail(err)),
        }
    }
    let message = "rooms were joined again while the account was being deleted; retry";
    Err(error_frame(Some(req), ErrorCode::Unavailable, message))
}

/// `user` leaves `room` through its owner, direct conversations included (which a user cannot
/// leave otherwise). Not being a member (any more) is as good.
async fn leave(hub: &Arc<Hub>, user: &str, room: &str) -> Result<(), StoreError> {
    let command = membership_command(EntryKind::Leave, user, user);
    let outcome = hub.append(room, command).await?;
    let timeout = Duration::from_millis(hub.limits().request_timeout_ms);
    match append_outcome(room, outcome, timeout).await {
        Ok(_) | Err(StoreError::NotMember { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}
