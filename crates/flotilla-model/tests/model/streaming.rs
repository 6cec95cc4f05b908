use crate::client::{LIMIT, Server, config, events};
use flotilla_testkit::bounded;
use hyper::Method;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn a_streamed_chat_completion_arrives_token_by_token_and_ends_with_done() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let sent = Instant::now();
        let response = server
            .send(
                Method::POST,
                "/v1/chat/completions",
                r#"{"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}}"#,
            )
            .await;
        assert_eq!(response.status(), 200);
        let header = |n: &str| response.headers().get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "text/event-stream");
        assert_eq!(header("x-flotilla-replica"), "r-1");
        assert_eq!(header("x-flotilla-cluster"), "east");

        let events = events(response).await;
        let (done_at, done) = events.last().unwrap();
        assert_eq!(done, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|(_, e)| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "llama-8b"));
        assert!(chunks.iter().all(|c| c["flotilla"]["replica"] == "r-1"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Flotilla moves models to where the ");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 6);

        // Chunks come over time: the first after the time to first token, the last
        // token five token delays later.
        let first_at = events[0].0;
        assert!(first_at - sent >= Duration::from_millis(40), "first token after {:?}", first_at - sent);
        assert!(*done_at - first_at >= Duration::from_millis(50), "tokens spread over {:?}", *done_at - first_at);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_streamed_text_completion_ends_with_done() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let response = server
            .send(
                Method::POST,
                "/v1/completions",
                r#"{"model": "qwen-7b", "prompt": "x", "max_tokens": 3, "stream": true}"#,
            )
            .await;
        let events = events(response).await;
        let data: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(data.len(), 5, "three tokens, the finish, [DONE]: {data:?}");
        assert_eq!(data[4], "[DONE]");
        let text: String = data[..4]
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, "Flotilla moves models ");
        server.stop().await;
    })
    .await;
}
