//! MCP servers (`flotilla.v1alpha1`) from a real registry, served by two real
//! `flotilla model` replicas (whose MCP server keeps its sessions to itself): the
//! gateway routes by the path rule, keeps each session on its replica, shows and
//! lets a tenant call only its tools, and refuses what is not JSON-RPC.

use crate::registry::{
    WITHIN, acme_policy, add_cluster, apply_workload, registry, registry_gateway_with,
    serving_replica, tenant_with_key,
};
use crate::support::*;
use bytes::Bytes;
use flotilla_core::McpServer;
use flotilla_gateway::mcp::{
    INVALID_REQUEST, PARSE_ERROR, RATE_LIMITED, SESSION_HEADER as MCP_SESSION_HEADER,
    TOOL_NOT_ALLOWED,
};
use flotilla_proto::v1alpha1 as alpha;
use flotilla_registry::TransportSecurity;
use flotilla_testkit::{Federation, TestResult, bounded, eventually};
use http_body_util::Full;
use hyper::Request;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Registers MCP server `tools` at `/mcp`, served by `tools-mcp`, granting each
/// tenant its tools.
async fn register_tools_server(f: &Federation, grants: &[(&str, &[&str])]) -> TestResult {
    let server = McpServer {
        name: "tools".into(),
        host: String::new(),
        path_prefix: "/mcp".into(),
        service: "tools-mcp".into(),
        tools: grants
            .iter()
            .map(|(t, tools)| (t.to_string(), tools.iter().map(|s| s.to_string()).collect()))
            .collect::<BTreeMap<_, _>>(),
    };
    let ch = TransportSecurity::Plaintext.channel(&f.addr(1), Duration::from_secs(2))?;
    alpha::mcp_service_client::McpServiceClient::new(ch)
        .set_mcp_server(alpha::SetMcpServerRequest {
            server: Some(flotilla_client::convert::mcp::server_to(&server)),
        })
        .await?;
    Ok(())
}

/// One MCP answer: status, session header, and the JSON-RPC message(s) in it
/// (from JSON or from an event stream's `data:`).
struct Answer {
    status: u16,
    session: Option<String>,
    retry_after: Option<u64>,
    message: Value,
}

async fn post(
    gateway: SocketAddr,
    key: Option<&str>,
    session: Option<&str>,
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::post(format!("http://{gateway}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(s) = session {
        req = req.header(MCP_SESSION_HEADER, s);
    }
    let resp = send(gateway, req.body(Full::new(body.into())).unwrap()).await;
    let session = resp
        .headers()
        .get(MCP_SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (status, text) = text(resp).await;
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let json = if data.is_empty() { text } else { data };
    Answer {
        status,
        session,
        retry_after,
        message: serde_json::from_str(&json).unwrap_or(Value::Null),
    }
}

fn call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {"text": "hi"}}})
}

fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}})
    .to_string()
}

/// MCP server `tools` (at `/mcp`, granting `grants`) served by `replicas` real
/// replicas in cluster "a", tenant `acme` with a key, and an enforcing gateway of
/// cluster "a" that follows the registry's governance. Bind every field: what is
/// dropped stops.
struct ToolsBehindAGateway {
    f: Federation,
    gw: TestGateway,
    key: String,
    _replicas: Vec<Model>,
}

async fn tools_behind_a_gateway(
    replicas: u32,
    grants: &[(&str, &[&str])],
) -> TestResult<ToolsBehindAGateway> {
    let f = registry().await?;
    add_cluster(&f, "a", String::new(), replicas).await?;
    apply_workload(&f, "tools", "tools-mcp", 1, replicas).await?;
    let mut serving = Vec::new();
    for gpu in 0..replicas {
        serving.push(serving_replica(&f, "tools", "tools-mcp", "a", gpu).await?.1);
    }
    let key = tenant_with_key(&f, &["tools-mcp"]).await?;
    register_tools_server(&f, grants).await?;
    let mut config = config("a");
    config.governance.enforce = true;
    let (gw, _) = registry_gateway_with(config, None, vec![f.addr(1)], |s| {
        s.follow_governance = true;
    })
    .await;
    Ok(ToolsBehindAGateway {
        f,
        gw,
        key,
        _replicas: serving,
    })
}

/// `acme`'s answer to `initialize` once it has `status`: governance and routes
/// reach the gateway by watch.
async fn initialize_until(
    gw: &TestGateway,
    key: &str,
    status: u16,
    what: &str,
) -> TestResult<Answer> {
    Ok(eventually(what, WITHIN, || async {
        let a = post(gw.inference, Some(key), None, initialize()).await;
        (a.status == status).then_some(a)
    })
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_stays_on_its_replica_and_a_tenant_sees_and_calls_only_its_tools()
-> TestResult {
    bounded(Duration::from_secs(60), async {
        let ToolsBehindAGateway {
            f: _f,
            gw,
            key,
            _replicas,
        } = tools_behind_a_gateway(2, &[("acme", &["whoami", "echo"])]).await?;

        let started = initialize_until(&gw, &key, 200, "an MCP session to start").await?;
        let session = started.session.ok_or("no Mcp-Session-Id")?;
        assert!(session.starts_with("fl1-"), "{session}");
        assert!(
            !session.contains("127.0.0.1"),
            "a replica address leaked: {session}"
        );
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let a = post(
            gw.inference,
            Some(&key),
            Some(&session),
            initialized.to_string(),
        )
        .await;
        assert_eq!(a.status, 202);

        // Every call of the session reaches the replica that began it: the other
        // one does not know the session and would answer 404.
        let mut answered_by = std::collections::BTreeSet::new();
        for id in 1..=12 {
            let a = post(
                gw.inference,
                Some(&key),
                Some(&session),
                call(id, "whoami").to_string(),
            )
            .await;
            assert_eq!(a.status, 200, "{}", a.message);
            answered_by.insert(a.message["result"]["content"][0]["text"].to_string());
        }
        assert_eq!(answered_by.len(), 1, "{answered_by:?}");

        // tools/list (answered as an event stream) shows acme's tools only.
        let list = json!({"jsonrpc": "2.0", "id": 20, "method": "tools/list"});
        let a = post(gw.inference, Some(&key), Some(&session), list.to_string()).await;
        let names: Vec<&str> = a.message["result"]["tools"]
            .as_array()
            .ok_or("no tools")?
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(names, ["whoami", "echo"]);

        // A tool not granted: a JSON-RPC error naming it, and a denial counted.
        let a = post(
            gw.inference,
            Some(&key),
            Some(&session),
            call(21, "delete_everything").to_string(),
        )
        .await;
        assert_eq!(a.message["id"], 21);
        assert_eq!(a.message["error"]["code"], TOOL_NOT_ALLOWED);
        let says = a.message["error"]["message"].as_str().unwrap_or("");
        assert!(
            says.contains("`delete_everything`") && says.contains("tenant `acme`"),
            "{says}"
        );
        assert!(
            gw.metrics().await.contains(r#"reason="tool_not_allowed""#),
            "the denial is counted by reason"
        );

        // A batch mixing allowed and forbidden tools is refused whole.
        let batch = json!([call(22, "echo"), call(23, "delete_everything")]);
        let a = post(gw.inference, Some(&key), Some(&session), batch.to_string()).await;
        let answers = a.message.as_array().ok_or("not a batch answer")?;
        assert_eq!(answers.len(), 2);
        assert!(
            answers
                .iter()
                .all(|m| m["error"]["code"] == TOOL_NOT_ALLOWED),
            "{answers:?}"
        );
        assert!(
            answers[0]["error"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("not sent")
        );

        // What is not JSON-RPC 2.0 never reaches the server.
        let a = post(gw.inference, Some(&key), Some(&session), "{not json").await;
        assert_eq!(
            (a.status, a.message["error"]["code"].clone()),
            (400, json!(PARSE_ERROR))
        );
        let a = post(
            gw.inference,
            Some(&key),
            Some(&session),
            r#"{"id":1,"method":"ping"}"#,
        )
        .await;
        assert_eq!(
            (a.status, a.message["error"]["code"].clone()),
            (400, json!(INVALID_REQUEST))
        );

        // No key, or a session id the gateway did not pin to a live replica.
        assert_eq!(
            post(gw.inference, None, None, initialize()).await.status,
            401
        );
        let stale = format!("fl1-{}-gone", "0".repeat(16));
        let a = post(
            gw.inference,
            Some(&key),
            Some(&stale),
            call(30, "echo").to_string(),
        )
        .await;
        assert_eq!(a.status, 404, "a client starts a new session on 404");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_the_server_grants_nothing_is_refused_and_a_star_grant_sees_every_tool()
-> TestResult {
    bounded(Duration::from_secs(60), async {
        let ToolsBehindAGateway {
            f,
            gw,
            key,
            _replicas,
        } = tools_behind_a_gateway(1, &[("ops", &["*"])]).await?;

        let refused = initialize_until(&gw, &key, 403, "acme to be refused the server").await?;
        let says = refused.message["error"]["message"].as_str().unwrap_or("");
        assert!(
            says.contains("tenant `acme` may not use MCP server `tools`"),
            "{says}"
        );

        // Granted every tool, acme sees all three and may call any.
        register_tools_server(&f, &[("acme", &["*"])]).await?;
        let started = initialize_until(&gw, &key, 200, "acme to be admitted").await?;
        let session = started.session.ok_or("no Mcp-Session-Id")?;
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let a = post(gw.inference, Some(&key), Some(&session), list.to_string()).await;
        assert_eq!(
            a.message["result"]["tools"].as_array().map(Vec::len),
            Some(3)
        );
        let a = post(
            gw.inference,
            Some(&key),
            Some(&session),
            call(3, "delete_everything").to_string(),
        )
        .await;
        assert_eq!(
            a.message["result"]["content"][0]["text"],
            "deleted nothing (a stand-in)"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_messages_spend_the_tenants_request_budget_and_ending_a_session_spends_none()
-> TestResult {
    bounded(Duration::from_secs(60), async {
        let ToolsBehindAGateway {
            f,
            gw,
            key,
            _replicas,
        } = tools_behind_a_gateway(1, &[("acme", &["*"])]).await?;
        let started = initialize_until(&gw, &key, 200, "acme to be admitted").await?;
        let session = started.session.ok_or("no Mcp-Session-Id")?;

        acme_policy(&f, &["tools-mcp"], 2).await?;
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
        let refused = eventually("a message over the budget", WITHIN, || async {
            let a = post(gw.inference, Some(&key), Some(&session), list.clone()).await;
            (a.status == 429).then_some(a)
        })
        .await?;
        assert_eq!(refused.message["error"]["code"], RATE_LIMITED);
        let says = refused.message["error"]["message"].as_str().unwrap_or("");
        assert!(
            says.contains("over its limit of 2 requests a minute"),
            "{says}"
        );
        let retry = refused.retry_after.ok_or("no Retry-After")?;
        assert!((1..=60).contains(&retry), "Retry-After {retry}");

        let end = Request::delete(format!("http://{}/mcp", gw.inference))
            .header("authorization", format!("Bearer {key}"))
            .header(MCP_SESSION_HEADER, &session)
            .body(Full::new(Bytes::new()))?;
        let ended = send(gw.inference, end).await.status();
        assert_ne!(ended, 429, "ending a session spent the budget");
        assert!(
            gw.metrics()
                .await
                .contains(r#"flotilla_gateway_denied_total{tenant="acme",reason="rate_limited"}"#)
        );
        Ok(())
    })
    .await
}
