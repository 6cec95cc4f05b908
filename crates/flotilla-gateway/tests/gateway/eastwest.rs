use crate::support::*;
use bytes::Bytes;
use flotilla_gateway::ReplicaPhase::*;
use flotilla_testkit::{bounded, free_addr};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Speaks HTTP/2 over TLS straight to an east-west listener, as another gateway
/// would, and returns the status, or the error if the connection failed.
async fn call_east_west(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    model: &str,
) -> Result<u16, String> {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(server_name("b")).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let body = format!(r#"{{"model":"{model}"}}"#);
    let req = Request::post(format!("https://{}/v1/completions", server_name("b")))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[tokio::test]
async fn hop_over_mtls_delivers_in_the_hosting_cluster() {
    bounded(LIMIT, async {
        let pki = Pki::new("fed");
        let in_b = Upstream::start("b-replica", Mode::Echo).await;
        let b = start_gateway(
            config("b"),
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![("llama", vec![("b", 100)])],
                replicas: vec![("llama", in_b.addr, Ready)],
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
                routes: vec![("llama", vec![("b", 100)])],
                replicas: vec![],
                gateways: vec![("b", b.east_west.unwrap())],
            }
            .table("a"),
        )
        .await;

        for _ in 0..5 {
            let (s, body) = post_chat(a.inference, "llama").await;
            assert_eq!(s, 200, "{body}");
            assert!(
                body.starts_with("b-replica POST /v1/chat/completions"),
                "{body}"
            );
        }
        let seen = in_b.last_headers.lock().unwrap().clone().unwrap();
        assert!(
            seen.get("flotilla-hop").is_none() && seen.get("flotilla-route").is_none(),
            "hop headers stay between gateways"
        );
        assert!(
            a.metrics()
                .await
                .contains("flotilla_gateway_upstream_seconds_count{target=\"remote\"} 5")
        );

        // Straight to B's east-west listener: a gateway of this federation gets in...
        assert_eq!(
            call_east_west(
                b.east_west.unwrap(),
                pki.client_config("c", "gateway"),
                "llama"
            )
            .await,
            Ok(200)
        );
        // ...a client with a certificate from another CA does not, nor one without any.
        let foreign = Pki::new("elsewhere");
        let forged = foreign.client_config_trusting(&pki, "a", "gateway");
        assert!(
            call_east_west(b.east_west.unwrap(), forged, "llama")
                .await
                .is_err()
        );
        assert!(
            call_east_west(b.east_west.unwrap(), pki.anonymous_client_config(), "llama")
                .await
                .is_err()
        );
        assert_eq!(in_b.hits(), 6);
    })
    .await;
}

#[tokio::test]
async fn a_hopped_request_is_never_forwarded_again() {
    bounded(LIMIT, async {
        let pki = Pki::new("fed");
        let in_a = Upstream::start("a-replica", Mode::Echo).await;
        // Stale tables that point at each other: B thinks only A serves the model.
        let b = start_gateway(
            config("b"),
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![("llama", vec![("a", 100)])],
                replicas: vec![],
                gateways: vec![("a", free_addr().unwrap())],
            }
            .table("b"),
        )
        .await;
        let a = start_gateway(
            config("a"),
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![("llama", vec![("b", 100)])],
                replicas: vec![("llama", in_a.addr, Draining)],
                gateways: vec![("b", b.east_west.unwrap())],
            }
            .table("a"),
        )
        .await;
        let (s, body) = post_chat(a.inference, "llama").await;
        assert_eq!(s, 503, "{body}");
        assert_eq!(in_a.hits(), 0);
        // The client-facing listener ignores a hop header a client made up.
        let spoofed = chat_with(
            "llama",
            &[("flotilla-hop", "x"), ("flotilla-route", "other")],
        );
        assert_eq!(text(send(a.inference, spoofed).await).await.0, 503);
    })
    .await;
}

#[tokio::test]
async fn the_tenant_travels_with_the_hop() {
    bounded(LIMIT, async {
        let pki = Pki::new("fed");
        let in_b = Upstream::start("b-replica", Mode::Echo).await;
        let keys = [("key-1", "team-a")];
        let cb = enforcing("b", &keys, [policy("team-a", &["llama"])]);
        let ca = enforcing("a", &keys, [policy("team-a", &["llama"])]);
        let b = start_gateway(
            cb,
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![("llama", vec![("b", 100)])],
                replicas: vec![("llama", in_b.addr, Ready)],
                gateways: vec![],
            }
            .table("b"),
        )
        .await;
        let a = start_gateway(
            ca,
            Some(&pki),
            Routes {
                revision: 1,
                routes: vec![("llama", vec![("b", 100)])],
                replicas: vec![],
                gateways: vec![("b", b.east_west.unwrap())],
            }
            .table("a"),
        )
        .await;
        let (s, body) = text(
            send(
                a.inference,
                chat_with("llama", &[("authorization", "Bearer key-1")]),
            )
            .await,
        )
        .await;
        assert_eq!(s, 200, "{body}");
        // B checked the policy again for the tenant A named, trusting A's certificate.
        assert_eq!(
            call_east_west(
                b.east_west.unwrap(),
                pki.client_config("c", "gateway"),
                "llama"
            )
            .await,
            Ok(401)
        );
    })
    .await;
}

#[tokio::test]
async fn a_peer_with_no_ready_replica_is_passed_over_for_another_cluster() {
    bounded(LIMIT, async {
        let pki = Pki::new("fed");
        // B's only replica is draining; C's serves.
        let in_b = Upstream::start("b-replica", Mode::NotProcessed).await;
        let in_c = Upstream::start("c-replica", Mode::Echo).await;
        let peer = |name: &'static str, addr| Routes {
            revision: 1,
            routes: vec![("llama", vec![(name, 100)])],
            replicas: vec![("llama", addr, Ready)],
            gateways: vec![],
        };
        let b = start_gateway(config("b"), Some(&pki), peer("b", in_b.addr).table("b")).await;
        let c = start_gateway(config("c"), Some(&pki), peer("c", in_c.addr).table("c")).await;
        let a = start_gateway(
            config("a"),
            Some(&pki),
            Routes {
                revision: 1,
                // B first: the weights walk B before C.
                routes: vec![("llama", vec![("b", 100), ("c", 100)])],
                replicas: vec![],
                gateways: vec![("b", b.east_west.unwrap()), ("c", c.east_west.unwrap())],
            }
            .table("a"),
        )
        .await;
        for _ in 0..4 {
            let (s, body) = post_chat(a.inference, "llama").await;
            assert_eq!(s, 200, "{body}");
            assert!(body.starts_with("c-replica POST"), "{body}");
        }
        assert!(in_b.hits() >= 1, "B was tried");
        assert_eq!(in_c.hits(), 4);
    })
    .await;
}
