//! An API answer: an HTTP status and a JSON body, with the headers some statuses need
//! (`WWW-Authenticate` on 401, `Allow` on 405, `Retry-After` on 429 and 503).
//!
//! Answers of the request functions are protocol frames; [`Reply::from_frame`] turns a frame
//! into the route's success body (the frame's fields without `type` and `req`) or, for an error
//! frame, into `{"error": code, "message": …}` with the status its code stands for.

use std::io;

use actors::hub::Hub;
use actors::requests;
use actors::store::StoreError;
use protocol::{ErrorCode, ServerFrame};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::request;

#[derive(Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Seconds, for 429 and 503.
    retry_after: Option<u64>,
    /// The methods a path takes, for 405.
    allow: Option<&'static str>,
}

impl Reply {
    pub fn ok(status: u16, body: Value) -> Reply {
        Reply { status, body, retry_after: None, allow: None }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
        Reply::ok(status, json!({ "error": code, "message": message.into() }))
    }

    pub fn unauthorized(message: &str) -> Reply {
        Reply::error(401, "unauthorized", message)
    }

    pub fn not_found(path: &str) -> Reply {
        let message =
            format!("no route `{}{}`; docs/openapi.json lists them", super::PREFIX, requests::bounded_message(path));
        Reply::error(404, "no_such_route", message)
    }

    pub fn method_not_allowed(method: &str, allow: &'static str) -> Reply {
        let message = format!("{} is not served here; this path takes {allow}", requests::bounded_message(method));
        Reply { allow: Some(allow), ..Reply::error(405, "method_not_allowed", message) }
    }

    /// A store failure, as a request function would answer it (faults logged, not shown).
    pub fn store_error(hub: &Hub, err: StoreError) -> Reply {
        Reply::from_frame(requests::store_error_frame(hub, None, err), 200)
    }

    /// The reply for a request function's answer: `success` with the frame's fields, or the
    /// error frame's status and body.
    pub fn from_frame(frame: ServerFrame, success: u16) -> Reply {
        if let ServerFrame::Error { code, message, retry_after_ms, .. } = frame {
            let status = status_of(code);
            let retry_after = match (retry_after_ms, status) {
                (Some(ms), _) => Some(ms.div_ceil(1000).max(1)),
                (None, 503) => Some(1),
                (None, _) => None,
            };
            let mut body = json!({ "error": code, "message": message });
            if let Some(ms) = retry_after_ms {
                body["retry_after_ms"] = ms.into();
            }
            return Reply { status, body, retry_after, allow: None };
        }
        let mut body = serde_json::to_value(&frame).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut body {
            fields.remove("type");
            fields.remove("req");
        }
        Reply::ok(success, body)
    }

    pub async fn send(self, stream: &mut TcpStream) -> io::Result<()> {
        let mut headers = String::new();
        if self.status == 401 {
            headers.push_str("WWW-Authenticate: Bearer realm=\"palaver api\"\r\n");
        }
        if let Some(allow) = self.allow {
            headers.push_str(&format!("Allow: {allow}\r\n"));
        }
        if let Some(seconds) = self.retry_after {
            headers.push_str(&format!("Retry-After: {seconds}\r\n"));
        }
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        request::respond_with(stream, self.status, "application/json", &headers, &body).await
    }
}

/// The HTTP status a protocol error code stands for.
fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::NoSuchRoom | ErrorCode::NoSuchUser | ErrorCode::NoSuchMessage | ErrorCode::NoSuchDevice => 404,
        // A media id in the body names no usable upload: the request is wrong, like a mention
        // of a non-member; the route itself exists.
        ErrorCode::NoSuchMedia => 400,
        ErrorCode::NotMember | ErrorCode::Forbidden | ErrorCode::Banned => 403,
        ErrorCode::UserExists
        | ErrorCode::RoomFull
        | ErrorCode::TooManyRooms
        | ErrorCode::Unchanged
        | ErrorCode::MessageDeleted
        | ErrorCode::MediaInUse => 409,
        ErrorCode::RateLimited | ErrorCode::SlowDown => 429,
        ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
        ErrorCode::MalformedFrame
        | ErrorCode::UnknownType
        | ErrorCode::InvalidField
        | ErrorCode::FrameTooLarge
        | ErrorCode::UnsupportedVersion
        | ErrorCode::HelloRequired
        | ErrorCode::AlreadyGreeted
        | ErrorCode::NotAuthenticated
        | ErrorCode::AlreadyAuthenticated
        | ErrorCode::InvalidCredentials
        | ErrorCode::InvalidName
        | ErrorCode::InvalidPassword
        | ErrorCode::TokenInvalid
        | ErrorCode::TokenExpired
        | ErrorCode::TokenRevoked
        | ErrorCode::EmptyBody
        | ErrorCode::BodyTooLarge
        | ErrorCode::InvalidMessageId
        | ErrorCode::CursorAhead => 400,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_bodies_and_errors_statuses() {
        let ack = ServerFrame::Ack { req: 0, room: "r".into(), id: "m1".into(), seq: 3, ts: 9, duplicate: false };
        let reply = Reply::from_frame(ack, 201);
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body, json!({"room": "r", "id": "m1", "seq": 3, "ts": 9, "duplicate": false}));
        let busy = ServerFrame::Error {
            req: None,
            code: ErrorCode::RateLimited,
            message: "wait".into(),
            retry_after_ms: Some(1500),
        };
        let reply = Reply::from_frame(busy, 201);
        assert_eq!((reply.status, reply.retry_after), (429, Some(2)));
        assert_eq!(reply.body["error"], "rate_limited");
        let gone = requests::error_frame(None, ErrorCode::NoSuchRoom, "no room");
        assert_eq!(Reply::from_frame(gone, 200).status, 404);
        let down = requests::error_frame(None, ErrorCode::Unavailable, "later");
        assert_eq!(Reply::from_frame(down, 200).retry_after, Some(1));
    }
}
