use crate::client::{LIMIT, Server, config};
use flotilla_testkit::bounded;
use hyper::Method;

#[tokio::test]
async fn bad_json_is_a_400_whose_message_names_the_problem() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let reply = server
            .post(
                "/v1/chat/completions",
                r#"{"model": "llama-8b", "messages": ["#,
            )
            .await;
        assert_eq!(reply.status, 400);
        let e = reply.error();
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "invalid_json");
        let message = e["message"].as_str().unwrap();
        assert!(
            message
                .starts_with("the body is not a valid chat completion request: EOF while parsing"),
            "{message}"
        );
        assert_eq!(reply.header("x-flotilla-replica"), "r-1");

        let missing = server
            .post("/v1/chat/completions", r#"{"model": "llama-8b"}"#)
            .await;
        let message = missing.error()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("missing field `messages`"), "{message}");

        let empty = server
            .post(
                "/v1/chat/completions",
                r#"{"model": "llama-8b", "messages": []}"#,
            )
            .await;
        assert_eq!(empty.status, 400);
        assert_eq!(empty.error()["message"], "messages must not be empty");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_unknown_model_is_a_404_that_lists_the_served_ones() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let reply = server
            .post("/v1/completions", r#"{"model": "gpt-9", "prompt": "x"}"#)
            .await;
        assert_eq!(reply.status, 404);
        let e = reply.error();
        assert_eq!(e["code"], "model_not_found");
        assert_eq!(
            e["message"],
            "the model \"gpt-9\" does not exist on this replica; it serves llama-8b, qwen-7b"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_methods_and_paths_get_openai_shaped_errors() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        let get = server.call(Method::GET, "/v1/chat/completions", "").await;
        assert_eq!(get.status, 405);
        assert_eq!(get.header("allow"), "POST");
        assert_eq!(get.error()["code"], "method_not_allowed");
        let post = server.call(Method::POST, "/health", "").await;
        assert_eq!((post.status.as_u16(), post.header("allow")), (405, "GET"));
        let nowhere = server.get("/v2/anything").await;
        assert_eq!(nowhere.status, 404);
        assert_eq!(nowhere.error()["code"], "not_found");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    bounded(LIMIT, async {
        let server = Server::start(config()).await;
        // Just over the limit: the rest fits in socket buffers, so the client finishes
        // sending before it reads the refusal.
        let prompt = "x".repeat(1024 * 1024 + 16);
        let reply = server
            .post(
                "/v1/completions",
                &format!(r#"{{"model": "llama-8b", "prompt": "{prompt}"}}"#),
            )
            .await;
        assert_eq!(reply.status, 413);
        assert_eq!(reply.error()["code"], "body_too_large");
        server.stop().await;
    })
    .await;
}
