use crate::client::{LIMIT, Server, config, events};
use flotilla_testkit::bounded;
use hyper::Method;
use std::time::Duration;

const STREAM: &str = r#"{"model": "llama-8b", "prompt": "x", "max_tokens": 5, "stream": true}"#;

#[tokio::test]
async fn past_the_concurrency_limit_requests_queue_and_past_the_queue_they_get_429() {
    bounded(LIMIT, async {
        let mut c = config();
        c.max_concurrency = 1;
        c.queue = 1;
        c.ttft = Duration::from_millis(200);
        let server = Server::start(c).await;

        // The first request runs: its stream's headers mean it was admitted.
        let running = server.send(Method::POST, "/v1/completions", STREAM).await;
        assert_eq!(running.status(), 200);
        // The second waits for the slot.
        let addr = server.addr;
        let queued = tokio::spawn(async move {
            events(crate::client::send(addr, Method::POST, "/v1/completions", STREAM).await).await
        });
        while server
            .metric("vllm:num_requests_waiting{model_name=\"llama-8b\"}")
            .await
            < 1.0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            server
                .metric("vllm:num_requests_running{model_name=\"llama-8b\"}")
                .await,
            1.0
        );
        assert_eq!(
            server
                .metric("vllm:gpu_cache_usage_perc{model_name=\"llama-8b\"}")
                .await,
            1.0
        );

        // The third finds the queue full.
        let refused = server.post("/v1/completions", STREAM).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.header("retry-after"), "1");
        let e = refused.error();
        assert_eq!(e["code"], "rate_limit_exceeded");
        assert_eq!(
            e["message"],
            "replica r-1 is at its limit of 1 running and 1 waiting requests"
        );

        // Both admitted requests still finish.
        assert_eq!(events(running).await.last().unwrap().1, "[DONE]");
        assert_eq!(queued.await.unwrap().last().unwrap().1, "[DONE]");
        assert_eq!(
            server
                .metric("flotilla_model_responses_total{code=\"429\"}")
                .await,
            1.0
        );
        server.stop().await;
    })
    .await;
}
