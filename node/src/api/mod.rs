//! The server API: HTTP + JSON under `/api/v1/` on the admin listener, for the backends around
//! palaver (docs/SERVER_API.md; docs/openapi.json describes every route and answer).
//!
//! A request goes: route (method and path) → authorisation (an API key with the route's scope;
//! key management takes the admin token instead) → query and body, parsed strictly (unknown
//! fields and parameters are refused by name) → the handler in `routes`, which acts through
//! the same request functions a client's session uses → the answer, whose HTTP status comes
//! from the protocol's error code (`reply`). Routes that change a room act as a user the
//! request names (`?as=`), so a room applies one set of rules whoever asks.

pub mod keys;
mod reply;
mod routes;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use actors::hub::Hub;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use self::keys::{Refusal, Scope};
use self::reply::Reply;
use crate::operator::constant_time_eq;
use crate::request::{self, BodyError, Request};

/// The path every route of this API starts with.
pub const PREFIX: &str = "/api/v1/";

/// Largest request body: a message of `limits.max_body_bytes` escaped as JSON fits many times.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// How long a request body may take to arrive after its head.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A route of the API, with the path's parameters percent-decoded.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    CreateKey,
    ListKeys,
    RevokeKey(String),
    CreateUser,
    DeleteUser(String),
    IssueToken(String),
    CreateRoom,
    AddMember { room: String, user: String },
    RemoveMember { room: String, user: String },
    PostMessage(String),
    History(String),
    CreateWebhook,
    ListWebhooks,
    DeleteWebhook(String),
    EnableWebhook(String),
}

/// What authorises a route.
enum Needs {
    AdminToken,
    Key(Scope),
}

impl Route {
    /// Whether the route reads a JSON body (the others ignore one).
    fn takes_body(&self) -> bool {
        matches!(
            self,
            Route::CreateKey | Route::CreateUser | Route::CreateRoom | Route::PostMessage(_) | Route::CreateWebhook
        )
    }

    fn needs(&self) -> Needs {
        match self {
            Route::CreateKey | Route::ListKeys | Route::RevokeKey(_) => Needs::AdminToken,
            Route::CreateUser | Route::DeleteUser(_) | Route::IssueToken(_) => Needs::Key(Scope::Users),
            Route::CreateRoom | Route::AddMember { .. } | Route::RemoveMember { .. } => Needs::Key(Scope::Rooms),
            Route::PostMessage(_) => Needs::Key(Scope::Messages),
            Route::History(_) => Needs::Key(Scope::History),
            Route::CreateWebhook | Route::ListWebhooks | Route::DeleteWebhook(_) | Route::EnableWebhook(_) => {
                Needs::Key(Scope::Webhooks)
            }
        }
    }
}

/// The route of `method` on `path` (below [`PREFIX`]), or the refusal: 404 for a path the API
/// does not have, 405 (with the methods it takes) for one it has.
fn route(method: &str, path: &str) -> Result<Route, Reply> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut decoded = Vec::with_capacity(segments.len());
    for segment in &segments {
        match percent_decode(segment) {
            Some(text) if !text.is_empty() => decoded.push(text),
            _ => return Err(Reply::not_found(path)),
        }
    }
    let take = |index: usize| decoded[index].clone();
    let (allowed, found): (&str, Option<Route>) = match segments.as_slice() {
        ["keys"] => {
            ("GET, POST", [("POST", Route::CreateKey), ("GET", Route::ListKeys)].into_iter().find_map(pick(method)))
        }
        ["keys", _] => ("DELETE", (method == "DELETE").then(|| Route::RevokeKey(take(1)))),
        ["users"] => ("POST", (method == "POST").then_some(Route::CreateUser)),
        ["users", _] => ("DELETE", (method == "DELETE").then(|| Route::DeleteUser(take(1)))),
        ["users", _, "tokens"] => ("POST", (method == "POST").then(|| Route::IssueToken(take(1)))),
        ["rooms"] => ("POST", (method == "POST").then_some(Route::CreateRoom)),
        ["rooms", _, "members", _] => (
            "PUT, DELETE",
            match method {
                "PUT" => Some(Route::AddMember { room: take(1), user: take(3) }),
                "DELETE" => Some(Route::RemoveMember { room: take(1), user: take(3) }),
                _ => None,
            },
        ),
        ["rooms", _, "messages"] => (
            "GET, POST",
            match method {
                "POST" => Some(Route::PostMessage(take(1))),
                "GET" => Some(Route::History(take(1))),
                _ => None,
            },
        ),
        ["webhooks"] => (
            "GET, POST",
            [("POST", Route::CreateWebhook), ("GET", Route::ListWebhooks)].into_iter().find_map(pick(method)),
        ),
        ["webhooks", _] => ("DELETE", (method == "DELETE").then(|| Route::DeleteWebhook(take(1)))),
        ["webhooks", _, "enable"] => ("POST", (method == "POST").then(|| Route::EnableWebhook(take(1)))),
        _ => return Err(Reply::not_found(path)),
    };
    found.ok_or_else(|| Reply::method_not_allowed(method, allowed))
}

fn pick(method: &str) -> impl Fn((&str, Route)) -> Option<Route> + '_ {
    move |(wanted, route)| (wanted == method).then_some(route)
}

/// Answer one API request (its head read, its path under [`PREFIX`]).
pub async fn handle(
    stream: &mut TcpStream,
    mut request: Request,
    hub: &Arc<Hub>,
    admin_token: Option<&str>,
) -> io::Result<()> {
    let reply = answer(stream, &mut request, hub, admin_token).await;
    reply.send(stream).await
}

async fn answer(stream: &mut TcpStream, request: &mut Request, hub: &Arc<Hub>, admin_token: Option<&str>) -> Reply {
    let path = request.path.strip_prefix(PREFIX).unwrap_or_default().to_owned();
    let route = match route(&request.method, &path) {
        Ok(route) => route,
        Err(reply) => return reply,
    };
    let authorization = request.header("authorization");
    match route.needs() {
        Needs::AdminToken => {
            let Some(token) = admin_token else {
                return Reply::error(
                    403,
                    "admin_token_required",
                    "API keys are managed with the admin token: set admin.token (PALAVER_ADMIN__TOKEN) or \
                     admin.token_file",
                );
            };
            let presented = authorization.and_then(|value| value.strip_prefix("Bearer ")).unwrap_or("").trim();
            if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Reply::unauthorized("send the admin token as `Authorization: Bearer <admin.token>`");
            }
        }
        Needs::Key(scope) => match keys::check(hub, authorization, scope).await {
            Ok(_) => {}
            Err(Refusal::Unauthorized) => {
                return Reply::unauthorized("send a live API key as `Authorization: Bearer pvk_…`");
            }
            Err(Refusal::MissingScope(scope)) => {
                let message = format!("this API key lacks the scope `{}` this route needs", scope.name());
                return Reply::error(403, "insufficient_scope", message);
            }
            Err(Refusal::Store(err)) => return Reply::store_error(hub, err),
        },
    }
    let query = match Query::parse(request.query.as_deref()) {
        Ok(query) => query,
        Err(reply) => return reply,
    };
    let body = if route.takes_body() {
        match read_body(stream, request).await {
            Ok(body) => Some(body),
            Err(reply) => return reply,
        }
    } else {
        None
    };
    routes::run(hub, route, query, body).await
}

/// Read a JSON body.
async fn read_body(stream: &mut TcpStream, request: &mut Request) -> Result<Vec<u8>, Reply> {
    let content_type = request.header("content-type").unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(Reply::error(415, "unsupported_media_type", "send the body as `Content-Type: application/json`"));
    }
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    match request::read_body(stream, request, MAX_BODY_BYTES, deadline).await {
        Ok(body) => Ok(body),
        Err(BodyError::LengthRequired) => {
            Err(Reply::error(411, "length_required", "send the body with a `Content-Length` (not chunked)"))
        }
        Err(BodyError::TooLarge(max)) => {
            Err(Reply::error(413, "body_too_large", format!("a request body is at most {max} bytes")))
        }
        Err(BodyError::Incomplete | BodyError::Io(_)) => {
            Err(Reply::error(400, "malformed_body", "the body ended before its `Content-Length`"))
        }
    }
}

/// Parse a JSON body into `T`, whose fields are all it may carry.
fn parse_body<T: DeserializeOwned>(body: Option<Vec<u8>>) -> Result<T, Reply> {
    let body = body.unwrap_or_default();
    serde_json::from_slice(&body)
        .map_err(|err| Reply::error(400, "malformed_body", format!("the JSON body does not fit this route: {err}")))
}

/// The query string's parameters, percent-decoded, each at most once.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, Reply> {
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| percent_decode(&text.replace('+', " "));
            let (Some(key), Some(value)) = (decode(key), decode(value)) else {
                return Err(Reply::error(
                    400,
                    "malformed_query",
                    "the query string is not valid percent-encoded UTF-8",
                ));
            };
            if params.iter().any(|(seen, _)| *seen == key) {
                return Err(Reply::error(400, "malformed_query", format!("`{key}` is given twice")));
            }
            params.push((key, value));
        }
        Ok(Query(params))
    }

    /// Refuse any parameter not in `known`, naming it.
    fn only(&self, known: &[&str]) -> Result<(), Reply> {
        match self.0.iter().find(|(key, _)| !known.contains(&key.as_str())) {
            None => Ok(()),
            Some((key, _)) => {
                let message = if known.is_empty() {
                    format!("unknown query parameter `{key}`: this route takes none")
                } else {
                    format!("unknown query parameter `{key}`: this route takes {}", known.join(", "))
                };
                Err(Reply::error(400, "malformed_query", message))
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(seen, _)| seen == key).map(|(_, value)| value.as_str())
    }

    fn required(&self, key: &str) -> Result<&str, Reply> {
        self.get(key).ok_or_else(|| Reply::error(400, "malformed_query", format!("`{key}` is required here")))
    }

    fn number(&self, key: &str) -> Result<Option<u64>, Reply> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| {
                Reply::error(400, "malformed_query", format!("`{key}` must be a whole number, not `{value}`"))
            }),
        }
    }
}

/// Decode `%XX` escapes; `None` if one is broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_told_apart_by_method_and_path() {
        assert_eq!(route("POST", "keys"), Ok(Route::CreateKey));
        assert_eq!(route("GET", "keys"), Ok(Route::ListKeys));
        assert_eq!(route("DELETE", "keys/abc"), Ok(Route::RevokeKey("abc".into())));
        assert_eq!(
            route("PUT", "rooms/dm%3Aa%3Ab/members/bob"),
            Ok(Route::AddMember { room: "dm:a:b".into(), user: "bob".into() })
        );
        assert_eq!(route("GET", "rooms/r-1/messages"), Ok(Route::History("r-1".into())));
        assert_eq!(route("PATCH", "rooms/r-1/messages").unwrap_err().status, 405);
        assert_eq!(route("GET", "rooms//messages").unwrap_err().status, 404);
        assert_eq!(route("GET", "nothing").unwrap_err().status, 404);
        assert_eq!(route("POST", "webhooks/wh_1/enable"), Ok(Route::EnableWebhook("wh_1".into())));
        assert_eq!(route("GET", "webhooks/wh_1").unwrap_err().status, 405);
        assert_eq!(route("GET", "rooms/%ff/messages").unwrap_err().status, 404);
    }

    #[test]
    fn queries_are_decoded_and_checked() {
        let query = Query::parse(Some("as=al%20ice&limit=5")).unwrap();
        assert_eq!(query.get("as"), Some("al ice"));
        assert_eq!(query.number("limit").unwrap(), Some(5));
        assert!(query.only(&["as", "limit"]).is_ok());
        assert_eq!(query.only(&["as"]).unwrap_err().status, 400);
        assert_eq!(Query::parse(Some("as=a&as=b")).unwrap_err().status, 400);
        assert_eq!(Query::parse(Some("as=%zz")).unwrap_err().status, 400);
        assert_eq!(Query::parse(Some("limit=x")).unwrap().number("limit").unwrap_err().status, 400);
    }
}
