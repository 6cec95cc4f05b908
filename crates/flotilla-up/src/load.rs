//! A steady request load through the gateways, recording for every request where it
//! entered, which cluster and replica served it, and how it ended.
//!
//! Requests go out on a fixed schedule (not closed-loop), so a slow or failing path
//! shows as errors and latency instead of quietly lowering the rate. Every other
//! request streams (SSE), so moves are checked against streams in flight too.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Each cluster's gateway inference listener: requests enter round-robin.
    pub gateways: Vec<(String, SocketAddr)>,
    /// The models the federation serves: requests go to each in turn.
    pub models: Vec<String>,
    /// Requests per second, all gateways together.
    pub rate: f64,
    pub max_tokens: u32,
    /// A request that takes longer counts as failed.
    pub timeout: Duration,
    /// Clusters whose clients are gone with them (a lost cluster): no requests
    /// enter there until they leave this set.
    pub paused: Paused,
    /// How requests are sent (and the API key they carry).
    pub sender: Sender,
}

/// The load's HTTP client, and the API key its requests carry when the gateways
/// enforce the registry's governance (`flotilla up --governance`).
#[derive(Debug, Clone)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    api_key: Option<Arc<str>>,
}

impl Sender {
    pub fn new(api_key: Option<&str>) -> Sender {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Sender {
            client: Client::builder(TokioExecutor::new()).build(connector),
            api_key: api_key.map(Arc::from),
        }
    }
}

/// Origins that send nothing for now.
#[derive(Debug, Clone, Default)]
pub struct Paused(Arc<Mutex<std::collections::BTreeSet<String>>>);

impl Paused {
    pub fn set(&self, cluster: &str, paused: bool) {
        if let Ok(mut p) = self.0.lock() {
            if paused {
                p.insert(cluster.to_owned());
            } else {
                p.remove(cluster);
            }
        }
    }

    fn contains(&self, cluster: &str) -> bool {
        self.0.lock().is_ok_and(|p| p.contains(cluster))
    }
}

/// One request, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Since the start of the run.
    pub started: Duration,
    pub finished: Duration,
    /// The cluster whose gateway it entered.
    pub origin: String,
    pub model: String,
    pub streamed: bool,
    /// 0 when no response came.
    pub status: u16,
    /// From the model's `x-flotilla-cluster` / `x-flotilla-replica` headers.
    pub served_by: Option<String>,
    pub replica: Option<String>,
    /// Success: 200 and a whole body (for a stream, up to `data: [DONE]`).
    pub ok: bool,
    pub error: Option<String>,
}

/// Every record so far, shared with the view and the summary.
#[derive(Debug, Clone, Default)]
pub struct LoadLog(Arc<Mutex<Vec<Record>>>);

impl LoadLog {
    pub fn push(&self, r: Record) {
        if let Ok(mut v) = self.0.lock() {
            v.push(r);
        }
    }

    pub fn snapshot(&self) -> Vec<Record> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Sends requests until `stop`, then waits for those in flight to end.
pub async fn run(config: LoadConfig, log: LoadLog, epoch: Instant, stop: CancellationToken) {
    if config.gateways.is_empty() || config.models.is_empty() || config.rate <= 0.0 {
        return;
    }
    let sender = config.sender.clone();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    let mut n: usize = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let (origin, gateway) = match config.gateways.get(n % config.gateways.len()) {
            Some(g) => g.clone(),
            None => continue,
        };
        let model = match config
            .models
            .get((n / config.gateways.len()) % config.models.len())
        {
            Some(m) => m.clone(),
            None => continue,
        };
        let streamed = n % 2 == 1;
        n += 1;
        if config.paused.contains(&origin) {
            continue;
        }
        let (sender, log, max_tokens, timeout) = (
            sender.clone(),
            log.clone(),
            config.max_tokens,
            config.timeout,
        );
        in_flight.spawn(async move {
            let record = request(
                &sender, origin, gateway, model, streamed, max_tokens, timeout, epoch,
            )
            .await;
            log.push(record);
        });
        // Reap finished requests so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

/// Whether `model` answers one small, non-streamed request through `gateway` now.
pub async fn probe(sender: &Sender, gateway: SocketAddr, model: &str, timeout: Duration) -> bool {
    let record = request(
        sender,
        "probe".into(),
        gateway,
        model.to_owned(),
        false,
        1,
        timeout,
        Instant::now(),
    )
    .await;
    record.ok
}

/// One request through `gateway`, recorded with times since `epoch`.
#[allow(clippy::too_many_arguments)]
async fn request(
    sender: &Sender,
    origin: String,
    gateway: SocketAddr,
    model: String,
    streamed: bool,
    max_tokens: u32,
    timeout: Duration,
    epoch: Instant,
) -> Record {
    let started = epoch.elapsed();
    let mut record = Record {
        started,
        finished: started,
        origin,
        model: model.clone(),
        streamed,
        status: 0,
        served_by: None,
        replica: None,
        ok: false,
        error: None,
    };
    let sent = tokio::time::timeout(
        timeout,
        send(sender, gateway, &model, streamed, max_tokens, &mut record),
    )
    .await;
    if sent.is_err() {
        record.ok = false;
        record.error = Some(format!("no complete answer within {timeout:?}"));
    }
    record.finished = epoch.elapsed();
    record
}

async fn send(
    sender: &Sender,
    gateway: SocketAddr,
    model: &str,
    streamed: bool,
    max_tokens: u32,
    record: &mut Record,
) {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello from wherever you run."}],
        "max_tokens": max_tokens,
        "stream": streamed,
    });
    let mut request = Request::post(format!("http://{gateway}/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(key) = &sender.api_key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(Full::new(Bytes::from(body.to_string())));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(format!("building the request: {e}"));
            return;
        }
    };
    let response = match sender.client.request(request).await {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(format!("gateway {gateway}: {e}"));
            return;
        }
    };
    record.status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    record.served_by = header("x-flotilla-cluster");
    record.replica = header("x-flotilla-replica");
    let ok_status = response.status().is_success();
    match response.into_body().collect().await {
        Ok(body) => {
            let bytes = body.to_bytes();
            let complete = !streamed || ends_stream(&bytes);
            record.ok = ok_status && complete;
            if !ok_status {
                record.error = Some(error_message(&bytes));
            } else if !complete {
                record.error = Some("the stream ended before `data: [DONE]`".into());
            }
        }
        Err(e) => record.error = Some(format!("reading the response: {e}")),
    }
}

fn ends_stream(body: &[u8]) -> bool {
    String::from_utf8_lossy(body)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim() == "data: [DONE]")
}

/// The OpenAI-style error message, or the start of the body.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_complete_only_with_its_done_marker() {
        assert!(ends_stream(b"data: {\"x\":1}\n\ndata: [DONE]\n\n"));
        assert!(!ends_stream(b"data: {\"x\":1}\n\n"));
        assert!(!ends_stream(b""));
    }

    #[test]
    fn errors_are_read_from_the_openai_envelope() {
        let body = br#"{"error":{"message":"no ready replica of `m`","type":"server_error"}}"#;
        assert_eq!(error_message(body), "no ready replica of `m`");
        assert_eq!(error_message(b"plain text"), "plain text");
    }
}
