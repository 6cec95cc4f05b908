//! The HTTP calls the agent crate makes itself: a replica's `/health`, over a fresh
//! HTTP/1 connection with a deadline (a replica that hangs must not hold up the
//! materializer), and a JSON POST to an agent's admin endpoint (for `flotilla ctl`).

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// Sends `request` to `addr` over a fresh HTTP/1 connection, within `timeout`: the
/// status, and the body or why it could not be read.
async fn exchange<B>(
    addr: SocketAddr,
    request: Request<B>,
    timeout: Duration,
) -> Result<(StatusCode, Result<Bytes, String>), String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection task ends with this call: the sender is dropped below.
        let driver = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the answer: {e}"));
        drop(sender);
        driver.abort();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// `GET path` on `addr`; the status, or why there is none.
pub(crate) async fn get_status(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    // Only the status counts; a body cut short does not change it.
    let (status, _) = exchange(addr, request, timeout).await?;
    Ok(status)
}

/// `POST path` with a JSON body on `addr`; the status and the body as text.
pub(crate) async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: String,
    timeout: Duration,
) -> Result<(StatusCode, String), String> {
    let request = Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let (status, answer) = exchange(addr, request, timeout).await?;
    let bytes = answer?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
