use crate::support::*;
use flotilla_core::TenantPolicy;
use flotilla_gateway::ReplicaPhase::*;
use flotilla_testkit::bounded;
use http_body_util::Full;
use hyper::Request;

#[tokio::test]
async fn tenants_reach_only_approved_models() {
    bounded(LIMIT, async {
        let llama = Upstream::start("llama", Mode::Echo).await;
        let qwen = Upstream::start("qwen", Mode::Echo).await;
        let cfg = enforcing(
            "a",
            &[("key-1", "team-a"), ("key-2", "team-b")],
            [policy("team-a", &["llama"])],
        );
        let gw = start_gateway(
            cfg,
            None,
            Routes {
                revision: 1,
                routes: vec![],
                replicas: vec![("llama", llama.addr, Ready), ("qwen", qwen.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;

        let ok = text(
            send(
                gw.inference,
                chat_with("llama", &[("authorization", "Bearer key-1")]),
            )
            .await,
        )
        .await;
        assert_eq!(ok.0, 200);
        let ok =
            text(send(gw.inference, chat_with("llama", &[("x-api-key", "key-1")])).await).await;
        assert_eq!(ok.0, 200);
        let seen = llama.last_headers.lock().unwrap().clone().unwrap();
        assert!(
            seen.get("authorization").is_none() && seen.get("x-api-key").is_none(),
            "the client's credentials reached the replica: {seen:?}"
        );

        let (s, body) = text(
            send(
                gw.inference,
                chat_with("qwen", &[("authorization", "Bearer key-1")]),
            )
            .await,
        )
        .await;
        assert_eq!(s, 403);
        let e = error_json(&body);
        assert_eq!(e["type"], "permission_denied");
        assert_eq!(e["code"], "model_not_approved");
        assert_eq!(e["param"], "model");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("`qwen`") && msg.contains("policy `team-a`"),
            "{msg}"
        );
        assert_eq!(qwen.hits(), 0);

        let (s, body) =
            text(send(gw.inference, chat_with("qwen", &[("x-api-key", "key-2")])).await).await;
        assert_eq!(s, 403);
        assert!(
            error_json(&body)["message"]
                .as_str()
                .unwrap()
                .contains("no policy names this tenant")
        );

        let (s, body) =
            text(send(gw.inference, chat_with("gemma", &[("x-api-key", "key-1")])).await).await;
        assert_eq!(s, 404);
        assert_eq!(error_json(&body)["code"], "model_not_found");

        for headers in [&[][..], &[("x-api-key", "stolen")][..]] {
            let (s, body) = text(send(gw.inference, chat_with("llama", headers)).await).await;
            assert_eq!(s, 401);
            assert_eq!(error_json(&body)["code"], "invalid_api_key");
        }
        // The model list shows a tenant what it may use, and no one else anything.
        let models = |key: &'static str| {
            let request = Request::get("/v1/models")
                .header("x-api-key", key)
                .body(Full::default())
                .unwrap();
            send(gw.inference, request)
        };
        let (s, body) = text(models("key-1").await).await;
        assert_eq!(s, 200);
        let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(ids, ["llama"]);
        assert_eq!(get(gw.inference, "/v1/models").await.0, 401);

        let metrics = gw.metrics().await;
        assert!(metrics.contains(r#"{model="qwen",outcome="forbidden"} 2"#));
        for line in [
            r#"flotilla_gateway_denied_total{tenant="team-a",reason="model_not_approved"} 1"#,
            r#"flotilla_gateway_denied_total{tenant="team-b",reason="model_not_approved"} 1"#,
            r#"flotilla_gateway_denied_total{tenant="_none",reason="unauthenticated"} 3"#,
            "flotilla_gateway_governance_enforced 1",
        ] {
            assert!(metrics.contains(line), "{line} missing from\n{metrics}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_tenant_over_its_request_budget_gets_429_with_retry_after() {
    bounded(LIMIT, async {
        let llama = Upstream::start("llama", Mode::Echo).await;
        let cfg = enforcing(
            "a",
            &[("key-1", "team-a")],
            [TenantPolicy {
                requests_per_minute: 2,
                ..policy("team-a", &["*"])
            }],
        );
        let gw = start_gateway(
            cfg,
            None,
            Routes {
                revision: 1,
                routes: vec![],
                replicas: vec![("llama", llama.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;
        let call = || send(gw.inference, chat_with("llama", &[("x-api-key", "key-1")]));
        for _ in 0..2 {
            assert_eq!(text(call().await).await.0, 200);
        }
        let refused = call().await;
        let retry_after = retry_after(&refused);
        let (s, body) = text(refused).await;
        assert_eq!(s, 429);
        assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
        let e = error_json(&body);
        assert_eq!(e["code"], "rate_limit_exceeded");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("2 requests a minute")
        );
        assert_eq!(llama.hits(), 2, "the refused request reached no replica");
        assert!(
            gw.metrics().await.contains(
                r#"flotilla_gateway_denied_total{tenant="team-a",reason="rate_limited"} 1"#
            )
        );
    })
    .await;
}

/// A chat request of `team-a`'s key, with these fields added to the body.
fn keyed_chat(model: &str, extra: serde_json::Value) -> Request<Full<bytes::Bytes>> {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer key-1")
        .body(Full::new(body.to_string().into()))
        .unwrap()
}

fn total_tokens(v: &serde_json::Value) -> u64 {
    v["usage"]["total_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn tokens_are_counted_from_usage_streamed_or_not_and_a_spent_budget_gets_429() {
    bounded(LIMIT, async {
        let llama = model(1, "a", "llama").await;
        let metered = TenantPolicy {
            tokens_per_minute: 1000,
            ..policy("team-a", &["llama"])
        };
        let cfg = enforcing("a", &[("key-1", "team-a")], [metered.clone()]);
        let routes = Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![("llama", llama.addr, Ready)],
            gateways: vec![],
        };
        let gw = start_gateway(cfg, None, routes.table("a")).await;

        let (s, body) =
            text(send(gw.inference, keyed_chat("llama", serde_json::json!({}))).await).await;
        assert_eq!(s, 200, "{body}");
        let whole = total_tokens(&serde_json::from_str(&body).unwrap());
        let streamed =
            serde_json::json!({"stream": true, "stream_options": {"include_usage": true}});
        let (s, body) = text(send(gw.inference, keyed_chat("llama", streamed)).await).await;
        assert_eq!(s, 200, "{body}");
        let last_chunk = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .rfind(|d| *d != "[DONE]")
            .unwrap();
        let final_usage = total_tokens(&serde_json::from_str(last_chunk).unwrap());
        let spent = format!(
            r#"flotilla_gateway_tokens_total{{tenant="team-a"}} {}"#,
            whole + final_usage
        );
        let counted = flotilla_testkit::eventually("the spend counted", LIMIT, || async {
            gw.metrics().await.contains(&spent).then_some(())
        })
        .await;
        assert!(
            counted.is_ok(),
            "{spent} missing from\n{}",
            gw.metrics().await
        );

        // A budget smaller than one answer: the first is admitted and spends it all.
        drop(gw);
        let small_budget = TenantPolicy {
            tokens_per_minute: 5,
            ..metered
        };
        let small = enforcing("a", &[("key-1", "team-a")], [small_budget]);
        assert!(whole >= 5, "an answer spends {whole} tokens");
        let gw = start_gateway(small, None, routes.table("a")).await;
        let first =
            text(send(gw.inference, keyed_chat("llama", serde_json::json!({}))).await).await;
        assert_eq!(first.0, 200);
        // The spend is charged as the answer ends, a moment after the client has it.
        let refused = flotilla_testkit::eventually("a 429", LIMIT, || async {
            let r = send(gw.inference, keyed_chat("llama", serde_json::json!({}))).await;
            (r.status() == 429).then_some(r)
        })
        .await
        .unwrap();
        let retry_after = retry_after(&refused);
        assert!(
            (1..=120).contains(&retry_after),
            "Retry-After {retry_after}"
        );
        let (_, body) = text(refused).await;
        let e = error_json(&body);
        assert_eq!(e["code"], "rate_limit_exceeded");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("5 tokens a minute") && msg.contains("policy `team-a`"),
            "{msg}"
        );
    })
    .await;
}
