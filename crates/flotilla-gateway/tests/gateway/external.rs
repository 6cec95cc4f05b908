//! The last tier: an approved external endpoint takes a tenant's request only
//! when no replica in the federation can, only for tenants whose policy names it,
//! and with the gateway's credential, never the client's.

use crate::support::*;
use flotilla_core::TenantPolicy;
use flotilla_gateway::{EXTERNAL_HEADER, ExternalEndpoint, ReplicaPhase::*};
use flotilla_testkit::bounded;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `tenant` may call llama, and fall back to the `external` endpoints.
fn with_external(tenant: &str, external: &[&str]) -> TenantPolicy {
    TenantPolicy {
        external_endpoints: external.iter().map(|e| e.to_string()).collect(),
        ..policy(tenant, &["llama"])
    }
}

#[tokio::test]
async fn an_approved_external_endpoint_serves_only_when_the_federation_cannot() {
    bounded(LIMIT, async {
        let pki = Pki::new("provider");
        let provider = Provider::start(pki.ip_server_config()).await;
        // As an operator writes it: the credential and the provider's CA in files
        // beside the endpoints file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("credential"), "provider-secret\n").unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        let file = dir.path().join("external.toml");
        let port = provider.addr.port();
        std::fs::write(
            &file,
            format!(
                "[[endpoint]]\nname = \"stand-in\"\nurl = \"https://127.0.0.1:{port}/v1\"\n\
                 credential_file = \"credential\"\nca_file = \"ca.pem\"\n\
                 models = {{ llama = \"their-llama\" }}\n"
            ),
        )
        .unwrap();
        let mut endpoints = flotilla_gateway::load_external_endpoints(&file).unwrap();
        let endpoint = endpoints.pop().unwrap();
        let llama = Upstream::start("llama", Mode::Echo).await;
        let mut cfg = enforcing(
            "a",
            &[("key-a", "team-a"), ("key-b", "team-b")],
            [
                with_external("team-a", &["stand-in"]),
                with_external("team-b", &[]),
            ],
        );
        cfg.external_endpoints = vec![Arc::new(endpoint)];
        let routes = |phase| Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![("llama", llama.addr, phase)],
            gateways: vec![],
        };
        let gw = start_gateway(cfg, None, routes(Draining).table("a")).await;
        let call = |key: &str| {
            send(
                gw.inference,
                chat_with("llama", &[("authorization", &format!("Bearer {key}"))]),
            )
        };

        // No ready replica anywhere: team-a's policy names the endpoint.
        let resp = call("key-a").await;
        assert_eq!(
            resp.headers().get(EXTERNAL_HEADER).map(|v| v.as_bytes()),
            Some(&b"stand-in"[..])
        );
        let (status, body) = text(resp).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("from the provider"), "{body}");
        {
            let seen = provider.seen.lock().unwrap();
            let (auth, sent) = &seen[0];
            assert_eq!(auth.as_deref(), Some("Bearer provider-secret"));
            assert_eq!(sent["model"], "their-llama", "the provider's own id");
            assert_eq!(
                sent["messages"][0]["content"], "hi",
                "the body, otherwise as sent"
            );
        }

        // team-b's policy names none: the federation's answer stands.
        let (status, body) = text(call("key-b").await).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(error_json(&body)["code"], "no_ready_replica");
        assert_eq!(provider.seen.lock().unwrap().len(), 1);

        // A replica is Ready again: traffic comes back to the federation.
        gw.swap(routes(Ready).table("a")).await;
        let (status, body) = text(call("key-a").await).await;
        assert_eq!(
            (status, body.starts_with("llama POST")),
            (200, true),
            "{body}"
        );
        assert_eq!(provider.seen.lock().unwrap().len(), 1);
        assert!(
            gw.metrics()
                .await
                .contains(r#"flotilla_gateway_upstream_seconds_count{target="external"} 1"#)
        );

        // The replica dies. Once failed connects have ejected it, team-a's
        // requests go to the last tier without trying it first; team-b, with
        // nowhere else to go, still tries it.
        let dead = flotilla_testkit::free_addr().unwrap();
        let dead_replica = Routes {
            revision: 2,
            routes: vec![],
            replicas: vec![("llama", dead, Ready)],
            gateways: vec![],
        };
        gw.swap(dead_replica.table("a")).await;
        for _ in 0..3 {
            assert_eq!(text(call("key-a").await).await.0, 200);
        }
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 3")
        );
        for _ in 0..2 {
            assert_eq!(text(call("key-a").await).await.0, 200);
        }
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 3"),
            "an ejected replica was tried before the last tier"
        );
        let (status, body) = text(call("key-b").await).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("(1 tried)"), "{body}");
    })
    .await;
}

#[tokio::test]
async fn a_failing_external_endpoint_is_a_502_naming_it() {
    bounded(LIMIT, async {
        let pki = Pki::new("provider");
        // Nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let endpoint = ExternalEndpoint::new(
            "gone",
            &format!("https://127.0.0.1:{port}/v1"),
            BTreeMap::from([("llama".to_owned(), "llama".to_owned())]),
            "provider-secret",
            pki.anonymous_client_config(),
        )
        .unwrap();
        let mut cfg = enforcing(
            "a",
            &[("key-a", "team-a")],
            [with_external("team-a", &["gone"])],
        );
        cfg.external_endpoints = vec![Arc::new(endpoint)];
        let llama = Upstream::start("llama", Mode::Echo).await;
        let routes = Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![("llama", llama.addr, Draining)],
            gateways: vec![],
        };
        let gw = start_gateway(cfg, None, routes.table("a")).await;
        let (status, body) = text(
            send(
                gw.inference,
                chat_with("llama", &[("authorization", "Bearer key-a")]),
            )
            .await,
        )
        .await;
        assert_eq!(status, 502, "{body}");
        let e = error_json(&body);
        assert_eq!(e["code"], "upstream_failed");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("no ready replica of `llama`")
                && message.contains("external endpoint gone"),
            "{message}"
        );
        assert_eq!(llama.hits(), 0, "a draining replica gets nothing new");
    })
    .await;
}
