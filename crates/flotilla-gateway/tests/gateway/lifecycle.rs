use crate::support::*;
use bytes::Bytes;
use flotilla_gateway::{ReplicaPhase::*, RouteEvent};
use flotilla_testkit::bounded;
use std::time::Duration;

#[tokio::test]
async fn fail_static_keeps_serving_the_last_routes() {
    bounded(LIMIT, async {
        let up = Upstream::start("llama", Mode::Echo).await;
        let mut gw = start_gateway(
            config("a"),
            None,
            Routes {
                revision: 7,
                routes: vec![],
                replicas: vec![("llama", up.addr, Ready)],
                gateways: vec![],
            }
            .table("a"),
        )
        .await;
        let status = gw.status().await;
        assert_eq!(
            (
                status["registry"].as_str(),
                status["route_revision"].as_u64()
            ),
            (Some("connected"), Some(7))
        );
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_fail_static 0")
        );

        gw.events
            .as_ref()
            .unwrap()
            .send(RouteEvent::RegistryLost)
            .await
            .unwrap();
        while !gw.state.fail_static() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let status = gw.status().await;
        assert_eq!(status["registry"], "fail_static");
        assert_eq!(status["registry_connected"], false);
        assert!(status["fail_static_since_unix_ms"].as_u64().unwrap() > 0);
        assert!(
            gw.metrics()
                .await
                .contains("flotilla_gateway_fail_static 1")
        );
        assert_eq!(
            post_chat(gw.inference, "llama").await.0,
            200,
            "still served on revision 7"
        );

        // Back again.
        gw.events
            .as_ref()
            .unwrap()
            .send(RouteEvent::RegistryConnected)
            .await
            .unwrap();
        while gw.state.fail_static() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A source that ends for good is a lost registry too.
        drop(gw.events.take());
        while !gw.state.fail_static() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(post_chat(gw.inference, "llama").await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_streams_finish() {
    bounded(LIMIT, async {
        let up = Upstream::start("llama", Mode::Sse).await;
        let mut gw = start_gateway(
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
        let mut body = resp.into_body();
        let tx = up.next_stream().await;
        tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
        assert!(next_chunk(&mut body).await.is_some());

        let done = gw.begin_shutdown();
        // New connections are refused once the listener is gone.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(gw.inference).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the listener closes at shutdown");
        assert!(!done.is_finished(), "it waits for the stream");
        tx.send(Bytes::from_static(b"data: 2\n\n")).await.unwrap();
        drop(tx);
        assert_eq!(next_chunk(&mut body).await.unwrap(), &b"data: 2\n\n"[..]);
        assert!(next_chunk(&mut body).await.is_none());
        done.await.unwrap().unwrap();
    })
    .await;
}
