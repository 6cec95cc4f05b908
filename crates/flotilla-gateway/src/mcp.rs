//! MCP (the Model Context Protocol, Streamable HTTP transport) as a gateway sees
//! it: pure decisions about the JSON-RPC 2.0 messages a client POSTs, the answers
//! that refuse them, the `tools/list` results a tenant may see, and the session
//! ids that keep a session on its backend. The IO is in `mcp_proxy`.
//!
//! **Sessions.** A server that keeps sessions names one in the `Mcp-Session-Id`
//! header of its answer to `initialize`, and the client sends it on every later
//! request. The gateway hands the client `fl1-<pin>-<id>` instead, where the pin
//! is a hash of the replica (or, at ingress, the other cluster's gateway) that
//! answered, and strips it again on the way in. So the gateway keeps no session
//! table (nothing to grow, nothing lost on a restart, and any gateway of the
//! cluster can route the session), and the replica's address is not shown to the
//! client. Over the east-west hop each gateway adds and strips its own pin.

use crate::health::EndpointKey;
use serde_json::{Map, Value, json};

/// The session header of MCP's Streamable HTTP transport.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The prefix of a session id that carries a gateway's pin.
const PIN_PREFIX: &str = "fl1-";

/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the JSON is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: the method's parameters are invalid.
pub const INVALID_PARAMS: i64 = -32602;
/// A server error (JSON-RPC's implementation-defined range): the caller's tenant
/// may not call the tool.
pub const TOOL_NOT_ALLOWED: i64 = -32003;
/// A server error: the caller is not a tenant, or not one this server admits.
pub const NOT_ADMITTED: i64 = -32004;
/// A server error: the caller's tenant is over its request budget (HTTP 429,
/// with `Retry-After`).
pub const RATE_LIMITED: i64 = -32005;

/// What the gateway needs to know of a POSTed message or batch.
#[derive(Debug, Default, PartialEq)]
pub struct Inspected {
    pub batch: bool,
    /// The id of every request in it (notifications and responses have none).
    pub request_ids: Vec<Value>,
    /// Every `tools/call`: its id (null for a notification) and the tool named.
    pub tool_calls: Vec<(Value, String)>,
    /// The ids of its `tools/list` requests.
    pub tool_lists: Vec<Value>,
}

/// Why a POSTed body is not something to send on.
#[derive(Debug, PartialEq)]
pub struct Malformed {
    pub code: i64,
    pub message: String,
}

fn invalid(message: String) -> Malformed {
    Malformed {
        code: INVALID_REQUEST,
        message,
    }
}

/// Reads a POSTed body: one JSON-RPC 2.0 message or a batch of them.
pub fn inspect(body: &[u8]) -> Result<Inspected, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Malformed {
        code: PARSE_ERROR,
        message: format!("the body is not JSON: {e}"),
    })?;
    let mut out = Inspected::default();
    match value {
        Value::Array(messages) => {
            if messages.is_empty() {
                return Err(invalid("an empty batch".into()));
            }
            out.batch = true;
            for (i, m) in messages.iter().enumerate() {
                message(m, &mut out).map_err(|e| Malformed {
                    code: e.code,
                    message: format!("batch[{i}]: {}", e.message),
                })?;
            }
        }
        one => message(&one, &mut out)?,
    }
    Ok(out)
}

fn message(m: &Value, out: &mut Inspected) -> Result<(), Malformed> {
    let Some(m) = m.as_object() else {
        return Err(invalid(format!(
            "a JSON-RPC message is an object, not {}",
            kind_of(m)
        )));
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\"".into()));
    }
    let id = m.get("id");
    if let Some(id) = id
        && !(id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err(invalid(format!(
            "\"id\" must be a string or an integer, not {}",
            kind_of(id)
        )));
    }
    let Some(method) = m.get("method") else {
        // A response to a request the server made: exactly one of result and error.
        return match (id, m.contains_key("result"), m.contains_key("error")) {
            (Some(_), true, false) | (Some(_), false, true) => Ok(()),
            _ => Err(invalid(
                "neither a request (no \"method\") nor a response (an \"id\" and one of \"result\" or \"error\")".into(),
            )),
        };
    };
    let Some(method) = method.as_str() else {
        return Err(invalid("\"method\" must be a string".into()));
    };
    if let Some(params) = m.get("params")
        && !params.is_object()
    {
        return Err(invalid(format!(
            "\"params\" of {method} must be an object, not {}",
            kind_of(params)
        )));
    }
    if let Some(id) = id {
        out.request_ids.push(id.clone());
    }
    match method {
        "tools/call" => {
            let tool = m
                .get("params")
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| Malformed {
                    code: INVALID_PARAMS,
                    message: "tools/call needs \"params.name\", the tool's name".into(),
                })?;
            out.tool_calls
                .push((id.cloned().unwrap_or(Value::Null), tool.to_owned()));
        }
        "tools/list" => {
            if let Some(id) = id {
                out.tool_lists.push(id.clone());
            }
        }
        _ => {}
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON-RPC error answer.
pub fn error(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// The tool calls of `inspected` that `allowed` refuses, in order.
pub fn forbidden(inspected: &Inspected, allowed: impl Fn(&str) -> bool) -> Vec<&(Value, String)> {
    inspected
        .tool_calls
        .iter()
        .filter(|(_, tool)| !allowed(tool))
        .collect()
}

/// The answer to a message or batch that calls a tool the tenant may not call:
/// nothing of it is sent on. Each forbidden call is answered with an error naming
/// the tool; in a batch, every other request is answered with one saying it was
/// not sent and why. `None` when nothing in it can be answered (only
/// notifications): the refusal is then the HTTP status alone.
pub fn refusal(
    inspected: &Inspected,
    forbidden: &[&(Value, String)],
    tenant: &str,
    server: &str,
) -> Option<Value> {
    let (_, first) = forbidden.first()?;
    let not_allowed = |tool: &str| {
        format!("tool `{tool}` is not allowed for tenant `{tenant}` on MCP server `{server}`")
    };
    let data = |tool: &str| json!({ "tool": tool, "tenant": tenant, "server": server });
    let answer = |id: &Value| match forbidden.iter().find(|(fid, _)| fid == id) {
        Some((_, tool)) => error(
            id.clone(),
            TOOL_NOT_ALLOWED,
            &not_allowed(tool),
            Some(data(tool)),
        ),
        None => error(
            id.clone(),
            TOOL_NOT_ALLOWED,
            &format!(
                "not sent: this batch also calls {}; nothing in it was sent",
                not_allowed(first)
            ),
            Some(data(first)),
        ),
    };
    if !inspected.batch {
        return inspected.request_ids.first().map(answer);
    }
    let answers: Vec<Value> = inspected.request_ids.iter().map(answer).collect();
    (!answers.is_empty()).then_some(Value::Array(answers))
}

/// `body` (JSON or an SSE stream, by `content_type`) with the `tools` of the
/// results to `list_ids` cut down to those `allowed`.
pub fn filter_tools(
    body: &[u8],
    content_type: &str,
    list_ids: &[Value],
    allowed: impl Fn(&str) -> bool,
) -> Result<Vec<u8>, String> {
    if content_type.starts_with("text/event-stream") {
        let text =
            std::str::from_utf8(body).map_err(|e| format!("the event stream is not UTF-8: {e}"))?;
        return Ok(filter_events(text, list_ids, &allowed).into_bytes());
    }
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the server's answer is not JSON: {e}"))?;
    filter_value(&mut value, list_ids, &allowed);
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

fn filter_value(value: &mut Value, list_ids: &[Value], allowed: &impl Fn(&str) -> bool) {
    match value {
        Value::Array(items) => {
            for item in items {
                filter_value(item, list_ids, allowed);
            }
        }
        Value::Object(m) => {
            if !m.get("id").is_some_and(|id| list_ids.contains(id)) {
                return;
            }
            if let Some(Value::Array(tools)) = m.get_mut("result").and_then(|r| r.get_mut("tools"))
            {
                tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(allowed));
            }
        }
        _ => {}
    }
}

/// An event stream with each event's data filtered; events whose data is not a
/// tools/list result pass unchanged.
fn filter_events(text: &str, list_ids: &[Value], allowed: &impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    // SSE ends a line with CRLF, LF or a lone CR.
    let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = normalised.split("\n\n").peekable();
    while let Some(event) = events.next() {
        let last = events.peek().is_none();
        out.push_str(&filter_event(event, list_ids, allowed));
        if !last {
            out.push_str("\n\n");
        }
    }
    out
}

fn filter_event(event: &str, list_ids: &[Value], allowed: &impl Fn(&str) -> bool) -> String {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    let Ok(mut value) = serde_json::from_str::<Value>(&data.join("\n")) else {
        return event.to_owned();
    };
    let before = value.clone();
    filter_value(&mut value, list_ids, allowed);
    if value == before {
        return event.to_owned();
    }
    let mut out: Vec<String> = event
        .lines()
        .filter(|l| !l.starts_with("data:"))
        .map(str::to_owned)
        .collect();
    out.push(format!("data: {value}"));
    out.join("\n")
}

/// The pin of an endpoint: 16 hex digits of a hash of what names it.
pub fn pin_of(key: &EndpointKey) -> String {
    let named = match key {
        EndpointKey::Replica(address) => format!("replica {address}"),
        EndpointKey::Gateway(cluster) => format!("gateway {cluster}"),
    };
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in named.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The session id the client gets for the server's `session` on `key`.
pub fn pinned(key: &EndpointKey, session: &str) -> String {
    format!("{PIN_PREFIX}{}-{session}", pin_of(key))
}

/// A client's session id split into this gateway's pin and the id it stands
/// for; `None` when it carries no pin (the gateway did not hand it out).
pub fn unpin(session: &str) -> Option<(&str, &str)> {
    let rest = session.strip_prefix(PIN_PREFIX)?;
    let (pin, inner) = rest.split_at_checked(16)?;
    let inner = inner.strip_prefix('-')?;
    (pin.bytes().all(|b| b.is_ascii_hexdigit()) && !inner.is_empty()).then_some((pin, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64, tool: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[test]
    fn a_message_is_read_for_its_requests_tool_calls_and_tool_lists() {
        let batch = json!([
            call(1, "search"),
            {"jsonrpc": "2.0", "id": "l", "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 9, "result": {}},
        ]);
        let got = inspect(&bytes(&batch)).unwrap();
        assert!(got.batch);
        assert_eq!(got.request_ids, vec![json!(1), json!("l")]);
        assert_eq!(got.tool_calls, vec![(json!(1), "search".to_owned())]);
        assert_eq!(got.tool_lists, vec![json!("l")]);
    }

    #[test]
    fn what_is_not_json_rpc_is_refused_naming_the_problem() {
        let refused = |body: &[u8]| inspect(body).unwrap_err();
        assert_eq!(refused(b"{not json").code, PARSE_ERROR);
        let cases: [(&[u8], &str); 7] = [
            (b"[]", "an empty batch"),
            (b"42", "is an object, not a number"),
            (
                br#"{"id":1,"method":"ping"}"#,
                "\"jsonrpc\" must be \"2.0\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                "not null",
            ),
            (br#"{"jsonrpc":"2.0","id":1}"#, "neither a request"),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":7}"#,
                "must be a string",
            ),
            (br#"[{"jsonrpc":"2.0","method":"ping"}, 5]"#, "batch[1]:"),
        ];
        for (body, says) in cases {
            let e = refused(body);
            assert_eq!(e.code, INVALID_REQUEST, "{e:?}");
            assert!(e.message.contains(says), "{says:?} not in {e:?}");
        }
        let nameless = refused(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
        assert_eq!(nameless.code, INVALID_PARAMS);
    }

    #[test]
    fn a_forbidden_call_is_answered_with_an_error_naming_the_tool() {
        let got = inspect(&bytes(&call(7, "delete_everything"))).unwrap();
        let bad = forbidden(&got, |t| t == "search");
        let answer = refusal(&got, &bad, "acme", "tools").unwrap();
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["error"]["code"], TOOL_NOT_ALLOWED);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("`delete_everything`"), "{message}");
        assert!(message.contains("tenant `acme`"), "{message}");
    }

    #[test]
    fn a_batch_mixing_allowed_and_forbidden_tools_is_refused_whole() {
        let batch = json!([call(1, "search"), call(2, "delete_everything")]);
        let got = inspect(&bytes(&batch)).unwrap();
        let bad = forbidden(&got, |t| t == "search");
        let answers = refusal(&got, &bad, "acme", "tools").unwrap();
        let answers = answers.as_array().unwrap();
        assert_eq!(answers.len(), 2);
        let not_sent = answers[0]["error"]["message"].as_str().unwrap();
        assert!(
            not_sent.starts_with("not sent") && not_sent.contains("`delete_everything`"),
            "{not_sent}"
        );
        assert_eq!(answers[1]["id"], 2);
        assert_eq!(answers[1]["error"]["data"]["tool"], "delete_everything");
    }

    #[test]
    fn a_tool_list_shows_only_the_allowed_tools_in_json_and_in_events() {
        let result = json!({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
            {"name": "search", "inputSchema": {"type": "object"}},
            {"name": "delete_everything", "inputSchema": {"type": "object"}},
        ]}});
        let allowed = |t: &str| t == "search";
        let ids = [json!(3)];
        let filtered = filter_tools(&bytes(&result), "application/json", &ids, allowed).unwrap();
        let v: Value = serde_json::from_slice(&filtered).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["result"]["tools"][0]["name"], "search");

        let stream = format!(
            "event: message\nid: a\ndata: {}\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}}\n\n",
            result
        );
        let filtered = filter_tools(stream.as_bytes(), "text/event-stream", &ids, allowed).unwrap();
        let text = String::from_utf8(filtered).unwrap();
        assert!(!text.contains("delete_everything"), "{text}");
        assert!(text.contains("event: message\nid: a\ndata: {"), "{text}");
        assert!(text.contains("notifications/progress"), "{text}");
        // Another request's result is left alone.
        let other =
            filter_tools(&bytes(&result), "application/json", &[json!(4)], allowed).unwrap();
        assert!(
            String::from_utf8(other)
                .unwrap()
                .contains("delete_everything")
        );
    }

    #[test]
    fn every_line_end_an_event_stream_may_use_is_read_so_filtering_twice_changes_nothing() {
        // Found by the mcp_message fuzz target: "\r\r\n" was a CR left over
        // after the first pass, and a line end only in the second.
        let stream = "event: message\r\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"ab\"},{\"name\":\"abc\"}]}}\r\rdata: x\r\n\r\n";
        let allowed = |t: &str| t == "ab";
        let ids = [json!(1)];
        let once = filter_tools(stream.as_bytes(), "text/event-stream", &ids, allowed).unwrap();
        let twice = filter_tools(&once, "text/event-stream", &ids, allowed).unwrap();
        assert_eq!(once, twice);
        assert!(!once.contains(&b'\r'));
    }

    #[test]
    fn numbers_in_a_filtered_answer_keep_their_value() {
        // Found by the mcp_message fuzz target: without correctly rounded float
        // parsing, each pass through the filter could move a large number by one
        // unit in the last place.
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[],"n":776777777777700000000000000000000000000000000000001840760665}}"#;
        let ids = [json!(1)];
        let once = filter_tools(body, "application/json", &ids, |_| true).unwrap();
        let twice = filter_tools(&once, "application/json", &ids, |_| true).unwrap();
        assert_eq!(once, twice);
        let n = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap()["result"]["n"].as_f64();
        assert_eq!(n(&once), Some(7.767777777777e59));
    }

    #[test]
    fn a_pinned_session_id_gives_back_the_pin_and_the_servers_id() {
        let key = EndpointKey::Replica("10.0.0.7:8000".into());
        let id = pinned(&key, "abc-123");
        assert!(!id.contains("10.0.0.7"), "{id}");
        assert_eq!(unpin(&id), Some((pin_of(&key).as_str(), "abc-123")));
        assert_eq!(unpin("abc-123"), None);
        assert_eq!(unpin("fl1-zz"), None);
        assert_ne!(
            pin_of(&key),
            pin_of(&EndpointKey::Gateway("10.0.0.7:8000".into()))
        );
    }
}
