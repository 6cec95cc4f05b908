use crate::support::*;
use bytes::Bytes;
use flotilla_gateway::{HostRule, ReplicaPhase::*};
use flotilla_testkit::bounded;
use http_body_util::Full;
use hyper::Request;

#[tokio::test]
async fn routes_by_model_host_and_path() {
    bounded(LIMIT, async {
        let llama = Upstream::start("llama", Mode::Echo).await;
        let qwen = Upstream::start("qwen", Mode::Echo).await;
        let grpc = Upstream::start("embedder", Mode::Echo).await;
        let mut file = Routes {
            revision: 1,
            routes: vec![],
            replicas: vec![
                ("llama", llama.addr, Ready),
                ("qwen", qwen.addr, Ready),
                ("embedder", grpc.addr, Ready),
            ],
            gateways: vec![],
        }
        .file();
        file.hosts = vec![HostRule {
            host: Some("embed.internal".into()),
            path_prefix: "/".into(),
            service: "embedder".into(),
        }];
        let gw = start_gateway(config("a"), None, file.to_table("a").unwrap()).await;

        assert!(
            post_chat(gw.inference, "llama")
                .await
                .1
                .starts_with("llama POST /v1/chat/completions")
        );
        assert!(
            post_chat(gw.inference, "qwen")
                .await
                .1
                .starts_with("qwen POST")
        );
        let completions = Request::post("/v1/completions")
            .body(Full::new(Bytes::from(r#"{"prompt":"x","model":"qwen"}"#)))
            .unwrap();
        assert!(
            text(send(gw.inference, completions).await)
                .await
                .1
                .starts_with("qwen POST /v1/completions")
        );

        // Not OpenAI-shaped: by host; the body streams through untouched.
        let req = Request::post("/any/Method")
            .header("host", "embed.internal:8080")
            .body(Full::new(Bytes::from(vec![7u8; 5000])))
            .unwrap();
        assert_eq!(
            text(send(gw.inference, req).await).await.1,
            "embedder POST /any/Method 5000"
        );

        let (s, body) = get(gw.inference, "/v1/models").await;
        assert_eq!(s, 200);
        let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["embedder", "llama", "qwen"]);

        let (s, body) = post_chat(gw.inference, "mistral").await;
        assert_eq!(s, 404);
        let e = error_json(&body);
        assert_eq!(e["code"], "model_not_found");
        assert_eq!(e["param"], "model");
        assert!(e["message"].as_str().unwrap().contains("`mistral`"));

        let (s, body) = get(gw.inference, "/unrouted").await;
        assert_eq!(
            (s, error_json(&body)["code"].as_str().unwrap()),
            (404, "route_not_found")
        );

        let bad = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from("{not json")))
            .unwrap();
        let (s, body) = text(send(gw.inference, bad).await).await;
        assert_eq!(
            (s, error_json(&body)["code"].as_str().unwrap()),
            (400, "invalid_model")
        );

        let huge = format!(r#"{{"model":"llama","prompt":"{}"}}"#, "x".repeat(2 << 20));
        let (s, body) = text(
            send(
                gw.inference,
                Request::post("/v1/completions")
                    .body(Full::new(Bytes::from(huge)))
                    .unwrap(),
            )
            .await,
        )
        .await;
        assert_eq!(
            (s, error_json(&body)["code"].as_str().unwrap()),
            (413, "request_too_large")
        );
        assert_eq!(
            llama.hits(),
            1,
            "a request over the limit never reaches the model"
        );

        let metrics = gw.metrics().await;
        assert!(
            metrics
                .contains(r#"flotilla_gateway_requests_total{model="llama",outcome="success"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                r#"flotilla_gateway_requests_total{model="_other",outcome="unknown_model"} 2"#
            ),
            "{metrics}"
        );
        assert!(
            !metrics.contains("mistral"),
            "unknown names must not become labels"
        );
    })
    .await;
}

#[tokio::test]
async fn local_first_then_remote_clusters_by_weight() {
    bounded(LIMIT, async {
        let pki = Pki::new("fed");
        let here = Upstream::start("a-replica", Mode::Echo).await;
        let in_b = Upstream::start("b-replica", Mode::Echo).await;
        let in_c = Upstream::start("c-replica", Mode::Echo).await;
        let lone = |c: &'static str, up: &Upstream| Routes {
            revision: 1,
            routes: vec![("llama", vec![(c, 100)])],
            replicas: vec![("llama", up.addr, Ready)],
            gateways: vec![],
        };
        let b = start_gateway(config("b"), Some(&pki), lone("b", &in_b).table("b")).await;
        let c = start_gateway(config("c"), Some(&pki), lone("c", &in_c).table("c")).await;
        let routes = |phase| Routes {
            revision: 1,
            routes: vec![("llama", vec![("a", 100), ("b", 75), ("c", 25)])],
            replicas: vec![("llama", here.addr, phase)],
            gateways: vec![("b", b.east_west.unwrap()), ("c", c.east_west.unwrap())],
        };
        let a = start_gateway(config("a"), Some(&pki), routes(Ready).table("a")).await;

        for _ in 0..20 {
            assert!(
                post_chat(a.inference, "llama")
                    .await
                    .1
                    .starts_with("a-replica")
            );
        }
        assert_eq!(
            (in_b.hits(), in_c.hits()),
            (0, 0),
            "a Ready local replica takes everything"
        );

        // The local replica drains: it gets nothing new; remote clusters share 75:25.
        let mut draining = routes(Draining);
        draining.revision = 2;
        a.swap(draining.table("a")).await;
        for _ in 0..100 {
            let (s, body) = post_chat(a.inference, "llama").await;
            assert_eq!(s, 200, "{body}");
        }
        assert_eq!(here.hits(), 20);
        assert_eq!((in_b.hits(), in_c.hits()), (75, 25));
    })
    .await;
}

#[test]
fn the_example_routes_file_builds_a_table() {
    let file: flotilla_gateway::StaticRoutes = toml::from_str(include_str!(
        "../../../../deploy/examples/gateway-routes.toml"
    ))
    .unwrap();
    let table = file.to_table("us-east").unwrap();
    let llama = &table.models["llama-3.1-8b-instruct"];
    assert_eq!((llama.local.len(), llama.remote.len()), (2, 1));
    assert_eq!(llama.local[1].phase, Draining);
    assert!(table.models["qwen2.5-7b-instruct"].local.is_empty());
    assert_eq!(
        table.match_host(Some("embed.internal"), "/grpc.Embed/Run"),
        Some("embedder")
    );
    // Seen from eu-west, which has no gateway entry for us-east, the file is wrong.
    assert!(file.to_table("eu-west").is_err());
}
