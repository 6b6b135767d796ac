//! What the server API (the node's `api` module) asks of palaver beyond what a client can:
//! create an account without a client in front, hand a user a token, and erase an account
//! without its password. Everything else the API does, it does as a user, through the same
//! request functions a session calls, so a room applies one set of rules whoever asks.

use std::sync::Arc;

use protocol::{ErrorCode, ReqId, ServerFrame};
use tracing::info;

use super::{error_frame, internal, rate_limited, store_error_frame};
use crate::hub::Hub;
use crate::names::{self, now_ms};
use crate::store::StoreError;

/// The stored password hash of an account made without a password: not a PHC string, so no
/// password verifies against it (the account is used through tokens the API issues, or as a
/// bot the API posts as).
pub const NO_PASSWORD: &str = "!";

/// Create the account `user`, with `password` or without one. The password rules are the
/// client's (`auth.min_password_len`); a taken name is `user_exists`.
pub async fn provision_user(hub: &Arc<Hub>, req: ReqId, user: String, password: Option<String>) -> ServerFrame {
    if let Err(message) = names::validate_user_name(&user) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    let hash = match password {
        Some(password) => {
            if let Err(message) = hub.auth().validate_password(&password) {
                return error_frame(Some(req), ErrorCode::InvalidPassword, message);
            }
            match hub.store().user(&user).await {
                Ok(Some(_)) => return store_error_frame(hub, Some(req), StoreError::UserExists(user)),
                Ok(None) => {}
                Err(err) => return store_error_frame(hub, Some(req), err),
            }
            match hub.auth().hash_in_pool(password).await {
                Ok(Ok(hash)) => hash,
                Ok(Err(err)) => return internal(req, err),
                Err(busy) => {
                    return rate_limited(req, "the node is busy hashing passwords; retry later", busy.retry_after)
                }
            }
        }
        None => NO_PASSWORD.to_owned(),
    };
    match hub.store().create_user(&user, &hash, now_ms()).await {
        Ok(()) => {
            info!(user, "account provisioned through the server API");
            ServerFrame::Registered { req, user }
        }
        Err(err) => store_error_frame(hub, Some(req), err),
    }
}

/// A token for `user`, as `login` would issue after their password.
pub async fn issue_token(hub: &Hub, req: ReqId, user: String) -> ServerFrame {
    if let Err(message) = names::validate_user_name(&user) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    match hub.store().user(&user).await {
        Ok(Some(record)) => {
            let (token, expires_at) = hub.auth().issue_token(&user, record.token_epoch, now_ms());
            info!(user, "token issued through the server API");
            ServerFrame::LoggedIn { req, user, token, expires_at }
        }
        Ok(None) => store_error_frame(hub, Some(req), StoreError::NoSuchUser(user)),
        Err(err) => store_error_frame(hub, Some(req), err),
    }
}

/// Erase `user`'s account (see `account::erase`) and close every connection they have.
pub async fn erase_user(hub: &Arc<Hub>, req: ReqId, user: String) -> ServerFrame {
    if let Err(message) = names::validate_user_name(&user) {
        return error_frame(Some(req), ErrorCode::InvalidName, message);
    }
    match super::account::erase(hub, req, &user).await {
        Ok(()) => {
            info!(user, "account erased through the server API");
            hub.revoke_user(&user);
            ServerFrame::Ok { req }
        }
        Err(frame) => frame,
    }
}
