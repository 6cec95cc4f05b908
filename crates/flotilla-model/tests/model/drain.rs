use crate::client::{LIMIT, Server, config, events};
use flotilla_testkit::bounded;
use hyper::Method;
use std::time::Duration;
use tokio::net::TcpStream;

const SLOW_STREAM: &str = r#"{"model": "llama-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": true}"#;

#[tokio::test]
async fn a_drain_refuses_new_requests_and_waits_for_the_stream_in_flight() {
    bounded(LIMIT, async {
        let mut c = config();
        // Long enough that the checks below run while the stream is still going.
        c.token_delay = Duration::from_millis(50);
        let server = Server::start(c).await;
        let stream = server
            .send(Method::POST, "/v1/chat/completions", SLOW_STREAM)
            .await;
        assert_eq!(stream.status(), 200);
        let reading = tokio::spawn(events(stream));

        let replica = server.replica.clone();
        let drain = tokio::spawn(async move { replica.drain().await });
        while !server.replica.is_draining() {
            tokio::task::yield_now().await;
        }
        let health = server.get("/health").await;
        assert_eq!(health.status, 503);
        assert_eq!(health.json()["status"], "draining");
        let refused = server
            .post("/v1/completions", r#"{"model": "llama-8b", "prompt": "x"}"#)
            .await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.error()["code"], "draining");
        // Nothing was generated, so a gateway may send it elsewhere.
        assert_eq!(
            refused.header(flotilla_model::NOT_PROCESSED_HEADER),
            "draining"
        );
        assert!(!drain.is_finished(), "the drain waits for the stream");
        assert_eq!(server.replica.in_flight(), 1);

        let events = reading.await.unwrap();
        assert_eq!(events.len(), 12, "ten tokens, the finish and [DONE]");
        assert_eq!(events.last().unwrap().1, "[DONE]");
        drain.await.unwrap();
        assert_eq!(server.replica.in_flight(), 0);
        assert_eq!(server.metric("flotilla_model_draining").await, 1.0);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_the_stream_finish_then_stops_serving() {
    bounded(LIMIT, async {
        let mut server = Server::start(config()).await;
        let addr = server.addr;
        let stream = server
            .send(Method::POST, "/v1/chat/completions", SLOW_STREAM)
            .await;
        let reading = tokio::spawn(events(stream));
        server.shutdown_signal();
        let events = reading.await.unwrap();
        assert_eq!(events.last().unwrap().1, "[DONE]");
        server.finished().await.unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed once serve returns"
        );
    })
    .await;
}

#[tokio::test]
async fn a_stream_that_outlives_the_drain_deadline_is_cut_and_serve_returns() {
    bounded(LIMIT, async {
        let mut c = config();
        c.token_delay = Duration::from_secs(60);
        c.drain_deadline = Duration::from_millis(100);
        let mut server = Server::start(c).await;
        let stream = server
            .send(Method::POST, "/v1/chat/completions", SLOW_STREAM)
            .await;
        let mut body = stream.into_body();
        // Wait for the first token, so the request is surely generating.
        use http_body_util::BodyExt;
        body.frame().await.unwrap().unwrap();
        server.shutdown_signal();
        tokio::time::timeout(Duration::from_secs(2), server.finished())
            .await
            .expect("serve returns soon after the deadline")
            .unwrap();
        // The client sees the stream end early (no [DONE]).
        let rest = body.collect().await.map(|b| b.to_bytes());
        assert!(rest.map_or(true, |b| !String::from_utf8_lossy(&b).contains("[DONE]")));
    })
    .await;
}
