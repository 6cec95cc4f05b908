use crate::client::{LIMIT, Server, config};
use flotilla_testkit::bounded;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn a_chat_completion_names_the_model_replica_and_cluster_that_served_it() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let started = Instant::now();
        let reply = server
            .post(
                "/v1/chat/completions",
                r#"{"model": "qwen-7b", "messages": [{"role": "user", "content": "where are the GPUs"}], "max_tokens": 5, "temperature": 0.2}"#,
            )
            .await;
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-flotilla-replica"), "r-1");
        assert_eq!(reply.header("x-flotilla-cluster"), "east");
        assert_eq!(reply.header("x-flotilla-model"), "qwen-7b");
        let body = reply.json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "qwen-7b");
        assert_eq!(body["system_fingerprint"], "flotilla:east/r-1");
        assert_eq!(body["flotilla"], serde_json::json!({"model": "qwen-7b", "replica": "r-1", "cluster": "east"}));
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Flotilla moves models to where ");
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(body["usage"], serde_json::json!({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}));
        // 40 ms to the first token, then 10 ms for each of the other four.
        assert!(took >= Duration::from_millis(80), "answered after {took:?}");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_text_completion_without_max_tokens_gets_the_default_length() {
    bounded(LIMIT, async {
        let mut c = config();
        c.default_max_tokens = 3;
        c.ttft = Duration::ZERO;
        let server = Server::start(c).await;
        let reply = server
            .post(
                "/v1/completions",
                r#"{"model": "llama-8b", "prompt": "Once upon a time"}"#,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "Flotilla moves models ");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], 4);
        assert!(body["id"].as_str().unwrap().starts_with("cmpl-r-1-"));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn max_tokens_is_capped() {
    bounded(LIMIT, async {
        let mut c = config();
        c.max_tokens_cap = 2;
        c.ttft = Duration::ZERO;
        let server = Server::start(c).await;
        let reply = server
            .post(
                "/v1/completions",
                r#"{"model": "llama-8b", "prompt": "x", "max_tokens": 100000}"#,
            )
            .await;
        assert_eq!(reply.json()["usage"]["completion_tokens"], 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn models_health_and_metrics_describe_the_replica() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let models = server.get("/v1/models").await;
        assert_eq!(models.status, 200);
        let ids: Vec<String> = models.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["llama-8b", "qwen-7b"]);

        let health = server.get("/health").await;
        assert_eq!(health.status, 200);
        assert_eq!(health.json()["status"], "ready");
        assert_eq!(health.header("x-flotilla-replica"), "r-1");

        server
            .post(
                "/v1/completions",
                r#"{"model": "llama-8b", "prompt": "a b c", "max_tokens": 2}"#,
            )
            .await;
        let metrics = server.get("/metrics").await;
        assert!(
            metrics
                .header("content-type")
                .starts_with("text/plain; version=0.0.4")
        );
        let text = metrics.text();
        for line in [
            "# TYPE vllm:num_requests_running gauge",
            "vllm:num_requests_running{model_name=\"llama-8b\"} 0",
            "vllm:num_requests_waiting{model_name=\"qwen-7b\"} 0",
            "vllm:gpu_cache_usage_perc{model_name=\"llama-8b\"} 0",
            "vllm:request_success_total{finished_reason=\"length\",model_name=\"llama-8b\"} 1",
            "vllm:prompt_tokens_total{model_name=\"llama-8b\"} 3",
            "vllm:generation_tokens_total{model_name=\"llama-8b\"} 2",
            "flotilla_model_responses_total{code=\"200\"} 3",
            "flotilla_model_draining 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_loading_replica_is_not_ready_until_its_load_time_has_passed() {
    bounded(LIMIT, async {
        let mut c = config();
        c.load_time = Duration::from_millis(300);
        let server = Server::start(c).await;
        let health = server.get("/health").await;
        assert_eq!(
            (health.status.as_u16(), health.json()["status"].clone()),
            (503, "loading".into())
        );
        let refused = server
            .post("/v1/completions", r#"{"model": "llama-8b", "prompt": "x"}"#)
            .await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.error()["code"], "loading");
        // Nothing was generated, so a gateway may send it elsewhere.
        assert_eq!(
            refused.header(flotilla_model::NOT_PROCESSED_HEADER),
            "loading"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(server.get("/health").await.status, 200);
        server.stop().await;
    })
    .await;
}
