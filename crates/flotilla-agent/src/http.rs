//! The one HTTP call the agent makes itself: a replica's `/health`, over a fresh
//! HTTP/1 connection with a deadline (a replica that hangs must not hold up the
//! materializer).

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// `GET path` on `addr`; the status, or why there is none.
pub(crate) async fn get_status(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection task ends with this call: the sender is dropped below.
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        drop(sender);
        driver.abort();
        Ok(status)
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
