//! A running replica and a minimal HTTP/1 client for it.

use bytes::Bytes;
use flotilla_model::{ModelConfig, ModelError, Replica};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every test finishes within this (with `flotilla_testkit::bounded`), or fails.
pub(crate) const LIMIT: Duration = Duration::from_secs(10);

pub(crate) fn config() -> ModelConfig {
    let mut c = ModelConfig::new(vec!["llama-8b".into(), "qwen-7b".into()], "r-1", "east");
    c.ttft = Duration::from_millis(40);
    c.token_delay = Duration::from_millis(10);
    c
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) replica: Replica,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ModelError>>,
}

impl Server {
    pub(crate) async fn start(config: ModelConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let replica = Replica::new(config).unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = replica.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stop.await;
                })
                .await
        });
        Server {
            addr,
            replica,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    pub(crate) fn shutdown_signal(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }

    pub(crate) async fn finished(self) -> Result<(), ModelError> {
        self.task.await.unwrap()
    }

    pub(crate) async fn send(&self, method: Method, path: &str, body: &str) -> Response<Incoming> {
        send(self.addr, method, path, body).await
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: &str) -> Reply {
        let r = self.send(method, path, body).await;
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn post(&self, path: &str, body: &str) -> Reply {
        self.call(Method::POST, path, body).await
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, "").await
    }

    /// One value of a metric line such as `vllm:num_requests_waiting{model_name="llama-8b"}`.
    pub(crate) async fn metric(&self, line_start: &str) -> f64 {
        let text = self.get("/metrics").await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
    }
}

pub(crate) async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    // The connection task ends when the response is read and the sender dropped.
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    sender.send_request(request).await.unwrap()
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `error` object of an OpenAI-shaped error, checked for its shape.
    pub(crate) fn error(&self) -> Value {
        let e = self.json()["error"].clone();
        for field in ["message", "type", "code"] {
            assert!(
                e[field].is_string(),
                "error.{field} missing in {}",
                self.text()
            );
        }
        e
    }
}

/// The `data:` events of a server-sent-event stream, each with when it arrived.
pub(crate) async fn events(response: Response<Incoming>) -> Vec<(Instant, String)> {
    let mut body = response.into_body();
    let mut events = Vec::new();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        let at = Instant::now();
        pending.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let data = event
                .trim_end()
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {event:?}"));
            events.push((at, data.to_owned()));
        }
    }
    assert!(
        pending.is_empty(),
        "the stream ended mid-event: {pending:?}"
    );
    events
}
