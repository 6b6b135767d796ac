//! The handlers of the server API's routes, once the request is authorised. Each parses its
//! query and body strictly, then acts through `actors::requests`: as the user named by `?as=`
//! for what happens in rooms, or through `requests::service` for accounts.

use std::sync::Arc;

use actors::hub::Hub;
use actors::requests::{self, service, Ctx};
use protocol::{ClientFrame, EntryKind, ServerFrame};
use serde::Deserialize;
use serde_json::json;

use super::keys::{self, KeyView, Scope};
use super::reply::Reply;
use super::{parse_body, Query, Route};
use actors::names::{self, now_ms};
use actors::webhooks::{self, Refused};

/// Longest name of an API key, in characters.
const KEY_NAME_MAX_CHARS: usize = 64;

/// Requests from the API carry no request id of a client's; replies never show one.
const REQ: u64 = 0;

pub async fn run(hub: &Arc<Hub>, route: Route, query: Query, body: Option<Vec<u8>>) -> Reply {
    match run_checked(hub, route, query, body).await {
        Ok(reply) | Err(reply) => reply,
    }
}

async fn run_checked(hub: &Arc<Hub>, route: Route, query: Query, body: Option<Vec<u8>>) -> Result<Reply, Reply> {
    match route {
        Route::CreateKey => {
            query.only(&[])?;
            create_key(hub, parse_body(body)?).await
        }
        Route::ListKeys => {
            query.only(&[])?;
            let keys = hub.store().api_keys().await.map_err(|err| Reply::store_error(hub, err))?;
            let keys: Vec<KeyView> = keys.into_iter().map(KeyView::from).collect();
            Ok(Reply::ok(200, json!({ "keys": keys })))
        }
        Route::RevokeKey(id) => {
            query.only(&[])?;
            match hub.store().revoke_api_key(&id, now_ms()).await {
                Ok(true) => Ok(Reply::ok(200, json!({ "id": id, "revoked": true }))),
                Ok(false) => {
                    Err(Reply::error(404, "no_such_key", format!("no API key `{}`", requests::bounded_message(&id))))
                }
                Err(err) => Err(Reply::store_error(hub, err)),
            }
        }
        Route::CreateUser => {
            query.only(&[])?;
            let NewUser { name, password } = parse_body(body)?;
            Ok(Reply::from_frame(service::provision_user(hub, REQ, name, password).await, 201))
        }
        Route::DeleteUser(user) => {
            query.only(&[])?;
            match service::erase_user(hub, REQ, user.clone()).await {
                ServerFrame::Ok { .. } => Ok(Reply::ok(200, json!({ "user": user, "deleted": true }))),
                frame => Err(Reply::from_frame(frame, 200)),
            }
        }
        Route::IssueToken(user) => {
            query.only(&[])?;
            Ok(Reply::from_frame(service::issue_token(hub, REQ, user).await, 201))
        }
        Route::CreateRoom => {
            query.only(&["as"])?;
            let ctx = acting(hub, &query).await?;
            let NewRoom { name, private } = parse_body(body)?;
            Ok(room_reply(requests::create_room(&ctx, REQ, name, private).await, 201))
        }
        Route::AddMember { room, user } => {
            query.only(&["as"])?;
            let ctx = acting(hub, &query).await?;
            if user != ctx.user {
                if let Some(frame) = requests::check_invite(&ctx, REQ, &room, &user).await {
                    return Err(Reply::from_frame(frame, 200));
                }
            }
            let command = requests::membership_command(EntryKind::Join, &ctx.user, &user);
            membership(requests::apply(&ctx, REQ, &room, command).await, &room, &user, true)
        }
        Route::RemoveMember { room, user } => {
            query.only(&["as", "reason"])?;
            let ctx = acting(hub, &query).await?;
            let (command, room) = if user == ctx.user {
                let leave =
                    requests::leave_command(REQ, &room, &user).map_err(|frame| Reply::from_frame(*frame, 200))?;
                (leave, room)
            } else {
                let reason = query.get("reason").map(str::to_owned);
                let kick = ClientFrame::Kick { req: REQ, room, user: user.clone(), reason };
                let (_, room, command) = requests::messages::moderation_command(&ctx.user, kick)
                    .map_err(|frame| Reply::from_frame(*frame, 200))?;
                (command, room)
            };
            membership(requests::apply(&ctx, REQ, &room, command).await, &room, &user, false)
        }
        Route::PostMessage(room) => {
            query.only(&["as"])?;
            let ctx = acting(hub, &query).await?;
            let Post { id, body, reply_to, mentions, attachments } = parse_body(body)?;
            let message = requests::NewMessage { id, body, reply_to, mentions, attachments };
            let command = requests::send_command(&ctx, REQ, &room, message)
                .await
                .map_err(|frame| Reply::from_frame(*frame, 200))?;
            match requests::apply(&ctx, REQ, &room, command).await {
                frame @ ServerFrame::Ack { duplicate: true, .. } => Ok(Reply::from_frame(frame, 200)),
                frame => Ok(Reply::from_frame(frame, 201)),
            }
        }
        Route::CreateWebhook => {
            query.only(&[])?;
            let NewWebhook { url, events } = parse_body(body)?;
            let max = hub.limits().max_webhook_endpoints;
            match webhooks::create_endpoint(hub.store().as_ref(), max, &url, &events).await {
                Ok(hook) => {
                    let mut view = webhooks::describe(&hook);
                    view["secret"] = json!(hook.secret);
                    Ok(Reply::ok(201, view))
                }
                Err(Refused::Invalid(message)) => Err(Reply::error(400, "invalid_field", message)),
                Err(Refused::TooMany(max)) => Err(Reply::error(
                    409,
                    "too_many_webhooks",
                    format!("{max} webhook endpoints exist (limits.max_webhook_endpoints); delete one first"),
                )),
                Err(Refused::Store(err)) => Err(Reply::store_error(hub, err)),
            }
        }
        Route::ListWebhooks => {
            query.only(&[])?;
            let hooks = hub.store().webhooks().await.map_err(|err| Reply::store_error(hub, err))?;
            let hooks: Vec<_> = hooks.iter().map(webhooks::describe).collect();
            Ok(Reply::ok(200, json!({ "webhooks": hooks })))
        }
        Route::DeleteWebhook(id) => {
            query.only(&[])?;
            match hub.store().delete_webhook(&id).await {
                Ok(true) => Ok(Reply::ok(200, json!({ "id": id, "deleted": true }))),
                Ok(false) => Err(no_such_webhook(&id)),
                Err(err) => Err(Reply::store_error(hub, err)),
            }
        }
        Route::EnableWebhook(id) => {
            query.only(&[])?;
            match webhooks::enable_endpoint(hub.store().as_ref(), &id).await {
                Ok(true) => {
                    let hooks = hub.store().webhooks().await.map_err(|err| Reply::store_error(hub, err))?;
                    let hook = hooks.iter().find(|hook| hook.id == id).ok_or_else(|| no_such_webhook(&id))?;
                    Ok(Reply::ok(200, webhooks::describe(hook)))
                }
                Ok(false) => Err(no_such_webhook(&id)),
                Err(err) => Err(Reply::store_error(hub, err)),
            }
        }
        Route::History(room) => {
            query.only(&["as", "before", "after", "limit"])?;
            let ctx = acting(hub, &query).await?;
            let (before, after) = (query.number("before")?, query.number("after")?);
            let limit = query.number("limit")?.map(|limit| u32::try_from(limit).unwrap_or(u32::MAX));
            Ok(Reply::from_frame(requests::history(&ctx, REQ, room, before, after, limit).await, 200))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoom {
    name: String,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Post {
    id: String,
    body: String,
    #[serde(default)]
    reply_to: Option<u64>,
    #[serde(default)]
    mentions: Vec<String>,
    /// Media ids: uploads of the acting user's (a bot uploads with a token the API issued).
    #[serde(default)]
    attachments: Vec<String>,
}

async fn create_key(hub: &Hub, NewKey { name, scopes }: NewKey) -> Result<Reply, Reply> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > KEY_NAME_MAX_CHARS || name.chars().any(char::is_control) {
        let message = format!("`name` is 1 to {KEY_NAME_MAX_CHARS} characters without control characters");
        return Err(Reply::error(400, "invalid_field", message));
    }
    let mut parsed = Vec::with_capacity(scopes.len());
    for scope in &scopes {
        let Some(scope) = Scope::parse(scope) else {
            let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.name()).collect();
            let message =
                format!("unknown scope `{}`; scopes are {}", requests::bounded_message(scope), known.join(", "));
            return Err(Reply::error(400, "invalid_field", message));
        };
        parsed.push(scope);
    }
    if parsed.is_empty() {
        return Err(Reply::error(400, "invalid_field", "`scopes` names at least one scope"));
    }
    let (record, key) = keys::mint(name, parsed, now_ms());
    hub.store().create_api_key(record.clone()).await.map_err(|err| Reply::store_error(hub, err))?;
    tracing::info!(id = record.id, name = record.name, scopes = ?record.scopes, "API key created");
    let mut body = serde_json::to_value(KeyView::from(record)).unwrap_or_default();
    body["key"] = key.into();
    Ok(Reply::ok(201, body))
}

/// The user a room route acts as: `?as=`, an existing account. What they may do is the request
/// functions' to say, as for their own client.
async fn acting(hub: &Arc<Hub>, query: &Query) -> Result<Ctx, Reply> {
    let user = query.required("as")?;
    if let Err(message) = names::validate_user_name(user) {
        return Err(Reply::error(400, "invalid_name", format!("`as`: {message}")));
    }
    match hub.store().user(user).await {
        Ok(Some(_)) => Ok(Ctx { hub: hub.clone(), user: user.to_owned(), conn_id: 0 }),
        Ok(None) => Err(Reply::error(404, "no_such_user", format!("`as`: no user `{user}`"))),
        Err(err) => Err(Reply::store_error(hub, err)),
    }
}

/// A `room` frame's room, as the route's body.
fn room_reply(frame: ServerFrame, success: u16) -> Reply {
    match frame {
        ServerFrame::Room { room, .. } => Reply::ok(success, serde_json::to_value(room).unwrap_or_default()),
        frame => Reply::from_frame(frame, success),
    }
}

/// The answer to adding or removing a member: who is (no longer) a member of which room.
fn membership(frame: ServerFrame, room: &str, user: &str, member: bool) -> Result<Reply, Reply> {
    match frame {
        ServerFrame::Ok { .. } | ServerFrame::Room { .. } => {
            Ok(Reply::ok(200, json!({ "room": room, "user": user, "member": member })))
        }
        frame => Err(Reply::from_frame(frame, 200)),
    }
}

fn no_such_webhook(id: &str) -> Reply {
    Reply::error(404, "no_such_webhook", format!("no webhook endpoint `{}`", requests::bounded_message(id)))
}

/// The body of `POST /webhooks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    url: String,
    events: Vec<String>,
}
