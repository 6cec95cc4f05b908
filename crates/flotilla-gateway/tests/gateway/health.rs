use crate::support::*;
use bytes::Bytes;
use flotilla_gateway::{LoadSignals, ReplicaPhase::*, RoutingTable};
use flotilla_testkit::{bounded, free_addr};
use http_body_util::Full;
use hyper::Request;
use std::net::SocketAddr;
use std::time::Duration;

/// `first` is preferred (the other reports a long queue), so tests know where the
/// first attempt goes.
fn two_replicas(revision: u64, first: SocketAddr, second: SocketAddr) -> RoutingTable {
    let mut file = Routes {
        revision,
        routes: vec![],
        replicas: vec![("llama", first, Ready), ("llama", second, Ready)],
        gateways: vec![],
    }
    .file();
    file.replicas[1].load = Some(LoadSignals {
        queue_depth: 50,
        kv_cache_use: 0.5,
    });
    file.to_table("a").unwrap()
}

#[tokio::test]
async fn no_retry_once_the_body_reached_the_model() {
    bounded(LIMIT, async {
        let dies = Upstream::start("dies", Mode::DieAfterBody).await;
        let spare = Upstream::start("spare", Mode::Echo).await;
        let gw = start_gateway(config("a"), None, two_replicas(1, dies.addr, spare.addr)).await;
        let (s, body) = post_chat(gw.inference, "llama").await;
        assert_eq!(s, 502, "{body}");
        let e = error_json(&body);
        assert_eq!(e["code"], "upstream_failed");
        assert!(
            e["message"].as_str().unwrap().contains("not retried"),
            "{body}"
        );
        assert_eq!(
            (dies.hits(), spare.hits()),
            (1, 0),
            "one generation at most"
        );
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 0")
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_connect_is_retried_elsewhere() {
    bounded(LIMIT, async {
        let spare = Upstream::start("spare", Mode::Echo).await;
        let mut file = Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![
                ("llama", free_addr().unwrap(), Ready),
                ("llama", spare.addr, Ready),
            ],
            gateways: vec![],
        }
        .file();
        file.replicas[1].load = Some(LoadSignals {
            queue_depth: 50,
            kv_cache_use: 0.5,
        });
        file.hosts = vec![flotilla_gateway::HostRule {
            host: None,
            path_prefix: "/upload".into(),
            service: "llama".into(),
        }];
        let gw = start_gateway(config("a"), None, file.to_table("a").unwrap()).await;
        let (s, body) = post_chat(gw.inference, "llama").await;
        assert_eq!((s, body.starts_with("spare")), (200, true), "{body}");
        // A streamed (not buffered) body is handed back by the failed attempt and sent whole.
        let upload = Request::post("/upload")
            .body(Full::new(Bytes::from(vec![1u8; 100_000])))
            .unwrap();
        assert_eq!(
            text(send(gw.inference, upload).await).await,
            (200, "spare POST /upload 100000".into())
        );
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 2")
        );
    })
    .await;
}

#[tokio::test]
async fn consecutive_failures_eject_and_the_backoff_brings_it_back() {
    bounded(LIMIT, async {
        let spare = Upstream::start("spare", Mode::Echo).await;
        let flaky = free_addr().unwrap();
        let mut cfg = config("a");
        cfg.health.failures_to_eject = 2;
        cfg.health.base_ejection = Duration::from_millis(400);
        let gw = start_gateway(cfg, None, two_replicas(1, flaky, spare.addr)).await;
        for _ in 0..2 {
            assert_eq!(post_chat(gw.inference, "llama").await.0, 200);
        }
        let status = gw.status().await;
        assert_eq!(
            status["ejected"][0]["endpoint"],
            format!("replica {flaky}"),
            "{status}"
        );
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_ejected_endpoints 1")
        );
        // Ejected: requests go straight to the spare, no failed connect first.
        assert_eq!(post_chat(gw.inference, "llama").await.0, 200);
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 2")
        );

        // The replica comes back; after the back-off it is preferred again.
        let back = Upstream::start_on(flaky, "back", Mode::Echo).await;
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(post_chat(gw.inference, "llama").await.1.starts_with("back"));
        assert_eq!(gw.status().await["ejected"].as_array().unwrap().len(), 0);
        assert_eq!(back.hits(), 1);
    })
    .await;
}

#[tokio::test]
async fn active_checks_eject_a_dead_replica_without_traffic() {
    bounded(LIMIT, async {
        let spare = Upstream::start("spare", Mode::Echo).await;
        let dead = free_addr().unwrap();
        let mut cfg = config("a");
        cfg.health.failures_to_eject = 2;
        cfg.health.active_interval = Some(Duration::from_millis(50));
        let gw = start_gateway(cfg, None, two_replicas(1, dead, spare.addr)).await;
        while gw.status().await["ejected"].as_array().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(post_chat(gw.inference, "llama").await.0, 200);
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 0"),
            "the first request already skips it"
        );
    })
    .await;
}

#[tokio::test]
async fn a_replica_that_accepts_connections_again_is_back_within_one_active_check() {
    bounded(LIMIT, async {
        let spare = Upstream::start("spare", Mode::Echo).await;
        let flaky = free_addr().unwrap();
        let mut cfg = config("a");
        cfg.health.failures_to_eject = 1;
        cfg.health.base_ejection = Duration::from_secs(600);
        cfg.health.active_interval = Some(Duration::from_millis(50));
        let gw = start_gateway(cfg, None, two_replicas(1, flaky, spare.addr)).await;
        while gw.status().await["ejected"].as_array().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Back long before its 10-minute back-off ends.
        let back = Upstream::start_on(flaky, "back", Mode::Echo).await;
        while !gw.status().await["ejected"].as_array().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(post_chat(gw.inference, "llama").await.1.starts_with("back"));
        assert_eq!(back.hits(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_ejected_replica_is_tried_when_no_other_can_take_the_request() {
    bounded(LIMIT, async {
        let only = free_addr().unwrap();
        let mut cfg = config("a");
        cfg.health.failures_to_eject = 1;
        cfg.health.base_ejection = Duration::from_secs(600);
        cfg.health.active_interval = None;
        let table = Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![("llama", only, Ready)],
            gateways: vec![],
        }
        .file()
        .to_table("a")
        .unwrap();
        let gw = start_gateway(cfg, None, table).await;
        let (s, body) = post_chat(gw.inference, "llama").await;
        assert_eq!(s, 503, "{body}");
        assert!(body.contains("(1 tried)"), "{body}");
        // Ejected for ten minutes, and the only replica: it is tried anyway, so
        // a replica that came back serves at once instead of the gateway
        // answering "no ready replica" without trying.
        let back = Upstream::start_on(only, "back", Mode::Echo).await;
        assert_eq!(gw.status().await["ejected"].as_array().unwrap().len(), 1);
        let (s, body) = post_chat(gw.inference, "llama").await;
        assert_eq!((s, body.starts_with("back")), (200, true), "{body}");
        assert_eq!(back.hits(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_upstream_error_status_passes_through_unretried() {
    bounded(LIMIT, async {
        let busy = Upstream::start("busy", Mode::Status(503)).await;
        let spare = Upstream::start("spare", Mode::Echo).await;
        let gw = start_gateway(config("a"), None, two_replicas(1, busy.addr, spare.addr)).await;
        assert_eq!(
            post_chat(gw.inference, "llama").await,
            (503, "busy".to_owned())
        );
        assert_eq!(spare.hits(), 0);
        assert!(
            gw.metrics()
                .await
                .contains(r#"{model="llama",outcome="upstream_5xx"} 1"#)
        );
    })
    .await;
}

#[tokio::test]
async fn a_refusal_that_processed_nothing_is_retried_elsewhere() {
    bounded(LIMIT, async {
        let draining = Upstream::start("draining", Mode::NotProcessed).await;
        let spare = Upstream::start("spare", Mode::Echo).await;
        let gw = start_gateway(
            config("a"),
            None,
            two_replicas(1, draining.addr, spare.addr),
        )
        .await;
        let (s, body) = post_chat(gw.inference, "llama").await;
        assert_eq!(s, 200, "{body}");
        assert!(body.starts_with("spare POST"), "{body}");
        assert_eq!((draining.hits(), spare.hits()), (1, 1));
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_retries_total 1")
        );

        // With nowhere else to go, the gateway's own answer says nothing was
        // processed, so that a gateway in front of it can try another cluster.
        let gw = start_gateway(
            config("a"),
            None,
            Routes {
                revision: 1,
                routes: vec![],
                replicas: vec![("llama", draining.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;
        let resp = send(gw.inference, chat("llama")).await;
        assert_eq!(
            resp.headers()
                .get(flotilla_gateway::NOT_PROCESSED_HEADER)
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("no_ready_replica".to_owned())
        );
        let (s, body) = text(resp).await;
        assert_eq!(s, 503);
        assert_eq!(error_json(&body)["code"], "no_ready_replica");
    })
    .await;
}

#[tokio::test]
async fn a_refusal_is_passed_through_when_the_streamed_body_is_gone() {
    bounded(LIMIT, async {
        // A host-routed body is streamed; the upstream read it before refusing, so
        // it cannot be sent again and the refusal is the answer.
        let draining = Upstream::start("draining", Mode::NotProcessed).await;
        let spare = Upstream::start("spare", Mode::Echo).await;
        let mut file = Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![("svc", draining.addr, Ready), ("svc", spare.addr, Ready)],
            gateways: vec![],
        }
        .file();
        file.replicas[1].load = Some(LoadSignals {
            queue_depth: 50,
            kv_cache_use: 0.5,
        });
        file.hosts = vec![flotilla_gateway::HostRule {
            host: None,
            path_prefix: "/api".into(),
            service: "svc".into(),
        }];
        let gw = start_gateway(config("a"), None, file.to_table("a").unwrap()).await;
        let req = Request::post("/api/x")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let (s, body) = text(send(gw.inference, req).await).await;
        assert_eq!((s, body.as_str()), (503, "draining"));
        assert_eq!((draining.hits(), spare.hits()), (1, 0));
    })
    .await;
}
