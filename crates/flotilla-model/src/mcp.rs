//! A small MCP server (the Model Context Protocol's Streamable HTTP transport) at
//! every path under `/mcp`, for tests of the gateway's MCP routing: sessions that
//! only this replica knows (so a request sent to another replica is 404, as MCP
//! says), three tools, and answers as JSON or, when the client accepts it, as an
//! event stream for `tools/*`.
//!
//! Tools: `whoami` (this replica and cluster), `echo` (its `text`), and
//! `delete_everything`, which deletes nothing: it is the tool a policy should
//! refuse.

use crate::api::Body;
use crate::server::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Mutex;

/// The versions this server speaks, newest first.
const PROTOCOL_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
const SESSION_HEADER: &str = "mcp-session-id";
const MAX_SESSIONS: usize = 4096;
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The sessions this replica started; the oldest are forgotten beyond
/// [`MAX_SESSIONS`].
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<VecDeque<String>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, id: String) {
        let mut s = self.lock();
        if s.len() == MAX_SESSIONS {
            s.pop_front();
        }
        s.push_back(id);
    }

    fn knows(&self, id: &str) -> bool {
        self.lock().iter().any(|s| s == id)
    }

    fn end(&self, id: &str) -> bool {
        let mut s = self.lock();
        let before = s.len();
        s.retain(|x| x != id);
        s.len() != before
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Body> {
    reply(status, "application/json", value.to_string())
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn session_of(request: &Request<Incoming>) -> Option<String> {
    request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(crate) async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    match *request.method() {
        Method::POST => post(shared, request).await,
        Method::DELETE => match session_of(&request) {
            Some(id) if shared.mcp_sessions.end(&id) => reply(StatusCode::OK, "text/plain", ""),
            _ => json_reply(
                StatusCode::NOT_FOUND,
                &error(Value::Null, -32600, "no such session"),
            ),
        },
        _ => {
            // No server-initiated messages here, so no stream to GET.
            let mut r = json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &error(Value::Null, -32600, "this server takes POST and DELETE"),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
            r
        }
    }
}

async fn post(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let session = session_of(&request);
    let streams = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let body = match Limited::new(request.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let msg = format!("the body could not be read: {e}");
            return json_reply(StatusCode::BAD_REQUEST, &error(Value::Null, -32600, &msg));
        }
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            &error(Value::Null, -32700, "not JSON"),
        );
    };
    let messages = match &message {
        Value::Array(m) => m.clone(),
        one => vec![one.clone()],
    };
    let initializing = messages
        .iter()
        .any(|m| m.get("method").and_then(Value::as_str) == Some("initialize"));
    let mut started = None;
    if initializing {
        let id = format!(
            "{}-{}",
            shared.config.replica,
            shared
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        shared.mcp_sessions.start(id.clone());
        started = Some(id);
    } else {
        match &session {
            None => {
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    &error(Value::Null, -32600, "no Mcp-Session-Id: initialize first"),
                );
            }
            Some(id) if !shared.mcp_sessions.knows(id) => {
                return json_reply(
                    StatusCode::NOT_FOUND,
                    &error(
                        Value::Null,
                        -32600,
                        &format!("session {id:?} is not known to this replica"),
                    ),
                );
            }
            Some(_) => {}
        }
    }
    let answers: Vec<Value> = messages.iter().filter_map(|m| answer(shared, m)).collect();
    let tools = messages.iter().any(|m| {
        m.get("method")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("tools/"))
    });
    let mut response = match (message.is_array(), answers.as_slice()) {
        (_, []) => reply(StatusCode::ACCEPTED, "text/plain", ""),
        (false, [one]) if streams && tools => reply(
            StatusCode::OK,
            "text/event-stream",
            format!("event: message\ndata: {one}\n\n"),
        ),
        (false, [one, ..]) => json_reply(StatusCode::OK, one),
        (true, all) => json_reply(StatusCode::OK, &Value::Array(all.to_vec())),
    };
    if let Some(id) = started
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

/// The answer to one message; `None` for notifications and responses.
fn answer(shared: &Shared, message: &Value) -> Option<Value> {
    let id = message.get("id")?.clone();
    let method = message.get("method").and_then(Value::as_str)?;
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = PROTOCOL_VERSIONS
                .into_iter()
                .find(|v| Some(*v) == asked)
                .unwrap_or(PROTOCOL_VERSIONS[0]);
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "flotilla-model", "version": env!("CARGO_PKG_VERSION")},
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            tool("whoami", "Names the replica and cluster that answered.", json!({})),
            tool("echo", "Answers with its text.", json!({"text": {"type": "string"}})),
            tool("delete_everything", "Deletes nothing: the tool a policy should refuse.", json!({})),
        ]}),
        "tools/call" => {
            let text = match params.get("name").and_then(Value::as_str) {
                Some("whoami") => format!(
                    "replica {} of cluster {}",
                    shared.config.replica, shared.config.cluster
                ),
                Some("echo") => params
                    .get("arguments")
                    .and_then(|a| a.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                Some("delete_everything") => "deleted nothing (a stand-in)".to_owned(),
                other => {
                    return Some(error(
                        id,
                        -32602,
                        &format!("unknown tool: {}", other.unwrap_or("(none)")),
                    ));
                }
            };
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        other => return Some(error(id, -32601, &format!("method not found: {other}"))),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn tool(name: &str, description: &str, properties: Value) -> Value {
    json!({
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": properties},
    })
}
