use crate::support::*;
use bytes::Bytes;
use flotilla_gateway::ReplicaPhase::*;
use flotilla_testkit::bounded;

/// Sends one SSE event upstream and checks the client has it before the upstream
/// sends the next: nothing is buffered whole.
async fn relay_events(up: &Upstream, mut body: hyper::body::Incoming) {
    let tx = up.next_stream().await;
    for i in 0..3 {
        let event = format!("data: {{\"token\":{i}}}\n\n");
        tx.send(Bytes::from(event.clone())).await.unwrap();
        assert_eq!(
            next_chunk(&mut body).await.unwrap(),
            event.as_bytes(),
            "chunk {i} arrives while the stream is open"
        );
    }
    tx.send(Bytes::from_static(b"data: [DONE]\n\n"))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        next_chunk(&mut body).await.unwrap(),
        &b"data: [DONE]\n\n"[..]
    );
    assert!(next_chunk(&mut body).await.is_none());
}

#[tokio::test]
async fn sse_tokens_pass_through_chunk_by_chunk() {
    bounded(LIMIT, async {
        let up = Upstream::start("llama", Mode::Sse).await;
        let gw = start_gateway(
            config("a"),
            None,
            Routes {
                revision: 1,
                routes: vec![],
                replicas: vec![("llama", up.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;
        let resp = send(gw.inference, chat("llama")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        relay_events(&up, resp.into_body()).await;
    })
    .await;
}

#[tokio::test]
async fn sse_tokens_pass_through_the_east_west_hop() {
    bounded(LIMIT, async {
        let pki = Pki::new("fed");
        let up = Upstream::start("llama", Mode::Sse).await;
        let b = start_gateway(
            config("b"),
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![],
                replicas: vec![("llama", up.addr, Ready)],
                gateways: vec![],
            }
            .table("b"),
        )
        .await;
        let a = start_gateway(
            config("a"),
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![("llama", vec![("b", 1)])],
                replicas: vec![],
                gateways: vec![("b", b.east_west.unwrap())],
            }
            .table("a"),
        )
        .await;
        let resp = send(a.inference, chat("llama")).await;
        assert_eq!(resp.status(), 200);
        relay_events(&up, resp.into_body()).await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_finishes_on_the_route_it_started_with() {
    bounded(LIMIT, async {
        let old = Upstream::start("old", Mode::Sse).await;
        let new = Upstream::start("new", Mode::Echo).await;
        let gw = start_gateway(
            config("a"),
            None,
            Routes {
                revision: 1,
                routes: vec![],
                replicas: vec![("llama", old.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;
        let resp = send(gw.inference, chat("llama")).await;
        let mut body = resp.into_body();
        let tx = old.next_stream().await;
        tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
        assert_eq!(next_chunk(&mut body).await.unwrap(), &b"data: 1\n\n"[..]);

        // The workload moves: the old replica drains, a new one is Ready.
        gw.swap(
            Routes {
                revision: 2,
                routes: vec![],
                replicas: vec![("llama", old.addr, Draining), ("llama", new.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;
        for _ in 0..3 {
            assert!(post_chat(gw.inference, "llama").await.1.starts_with("new"));
        }
        assert_eq!(old.hits(), 1, "a draining replica gets no new requests");

        // The stream that started before the swap runs to its end.
        tx.send(Bytes::from_static(b"data: 2\n\n")).await.unwrap();
        drop(tx);
        assert_eq!(next_chunk(&mut body).await.unwrap(), &b"data: 2\n\n"[..]);
        assert!(next_chunk(&mut body).await.is_none());
    })
    .await;
}
