use crate::support::*;
use flotilla_core::TenantPolicy;
use flotilla_gateway::{Governance, ReplicaPhase::*};
use flotilla_testkit::bounded;
use http_body_util::Full;
use hyper::Request;

#[tokio::test]
async fn tenants_reach_only_approved_models() {
    bounded(LIMIT, async {
        let llama = Upstream::start("llama", Mode::Echo).await;
        let qwen = Upstream::start("qwen", Mode::Echo).await;
        let mut cfg = config("a");
        cfg.governance = Governance {
            enforce: true,
            ..Default::default()
        };
        cfg.governance
            .api_keys
            .insert("key-1".into(), "team-a".into());
        cfg.governance
            .api_keys
            .insert("key-2".into(), "team-b".into());
        cfg.governance.policies.insert(
            "team-a".into(),
            TenantPolicy {
                tenant: "team-a".into(),
                approved_models: vec!["llama".into()],
                requests_per_minute: 0,
            },
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
        let mut cfg = config("a");
        cfg.governance.enforce = true;
        cfg.governance
            .api_keys
            .insert("key-1".into(), "team-a".into());
        cfg.governance.policies.insert(
            "team-a".into(),
            TenantPolicy {
                tenant: "team-a".into(),
                approved_models: vec!["*".into()],
                requests_per_minute: 2,
            },
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
        let retry_after: u64 = refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
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
