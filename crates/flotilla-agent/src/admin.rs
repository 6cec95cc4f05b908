//! The agent's local admin endpoint: small HTTP/1 JSON on loopback, for operators
//! (curl) and, until the typed API carries endpoints, for gateways.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `{"status":"ok","source":KIND,"runs_replicas":BOOL,"reporting":{…}}` (`source` is `none` in a process that reads no GPUs) |
//! | `GET /gpus` | the source's current [`Snapshot`](crate::gpu::Snapshot); 404 saying so in a process that reads no GPUs (`flotilla controller`) |
//! | `POST /gpus/{node}/{device}` with a JSON [`DeviceChange`] | the node after the change; 404 for an unknown node or device, 400 for a bad change, 409 on a source that reads real GPUs |
//! | `GET /replicas` | the replicas this agent runs, with their addresses ([`ReplicaView`](flotilla_client::materialize::ReplicaView)); 404 saying so when the agent runs none (`--materializer none`) |
//!
//! ```sh
//! curl -s 127.0.0.1:9410/gpus
//! curl -s -X POST 127.0.0.1:9410/gpus/gpu-0/3 -d '{"change":"fail","reason":"Xid 79"}'
//! curl -s -X POST 127.0.0.1:9410/gpus/gpu-0/3 -d '{"change":"recover"}'
//! curl -s 127.0.0.1:9410/replicas
//! ```
//!
//! It has no authentication: it binds loopback by default and changes only a
//! simulated fleet.

use crate::AgentError;
use crate::gpu::GpuSource;
use crate::gpu::simulated::{DeviceChange, SimulatedFleet};
use crate::report::StatusHandle;
use bytes::Bytes;
use flotilla_client::materialize::ReplicaTable;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Change bodies are a few dozen bytes.
const MAX_BODY: usize = 64 * 1024;

/// `GET /replicas` of an agent that runs no replicas.
/// `GET /gpus` of a process that reads no GPUs.
const NO_GPUS: &str = "this process reads no GPUs (flotilla controller): the cluster's node agents report them; the registry has them (flotilla ctl get gpus)";

const NO_REPLICAS: &str = "this agent runs no replicas (--materializer none): another controller makes the replicas of this cluster; their placements and endpoints are in the registry (flotilla ctl get placements)";

/// What the endpoint shows and changes.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Where GPUs are read; `None` in a process that reads none (`flotilla
    /// controller`), so that `GET /gpus` does not answer an empty fleet that would
    /// read as "every GPU is gone".
    pub source: Option<Arc<dyn GpuSource>>,
    /// The same fleet as `source` when it is simulated; `None` for NVML.
    pub fleet: Option<SimulatedFleet>,
    /// The replicas this agent runs; `None` when it runs none (`--materializer none`:
    /// another controller makes them), so that `GET /replicas` does not answer an
    /// empty list that would read as "nothing runs here".
    pub replicas: Option<ReplicaTable>,
    pub reporting: StatusHandle,
}

/// Serves on `listener` until `shutdown` is cancelled; connections in flight are
/// closed with it (every request is short).
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let admin = Arc::new(admin);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors or a reset before accept: pause rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
    Ok(())
}

async fn handle(admin: &Admin, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["health"]) => ok(&json!({
            "status": "ok",
            "source": admin.source.as_ref().map_or("none", |s| s.kind()),
            "runs_replicas": admin.replicas.is_some(),
            "reporting": admin.reporting.get(),
        })),
        (&Method::GET, ["gpus"]) => {
            let Some(source) = admin.source.clone() else {
                return error(StatusCode::NOT_FOUND, NO_GPUS);
            };
            match tokio::task::spawn_blocking(move || source.snapshot()).await {
                Ok(Ok(snapshot)) => ok(&snapshot),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (&Method::POST, ["gpus", node, device]) => {
            let (node, device) = ((*node).to_owned(), (*device).to_owned());
            change(admin, &node, &device, request).await
        }
        (&Method::GET, ["replicas"]) => match &admin.replicas {
            Some(table) => ok(&table.get()),
            None => error(StatusCode::NOT_FOUND, NO_REPLICAS),
        },
        (_, ["health" | "gpus" | "replicas"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} takes GET"))
        }
        (_, ["gpus", _, _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} takes POST with a JSON change"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no route for {path}; this endpoint has GET /health, GET /gpus, POST /gpus/{{node}}/{{device}}, GET /replicas"
            ),
        ),
    }
}

async fn change(
    admin: &Admin,
    node: &str,
    device: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(source) = &admin.source else {
        return error(StatusCode::NOT_FOUND, NO_GPUS);
    };
    let Some(fleet) = &admin.fleet else {
        let e = AgentError::NotChangeable {
            kind: source.kind(),
        };
        return error(StatusCode::CONFLICT, &e.to_string());
    };
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
            );
        }
    };
    let change: DeviceChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body is not a device change ({e}); e.g. {{\"change\":\"fail\",\"reason\":\"Xid 79\"}}, {{\"change\":\"detach\"}}, {{\"change\":\"recover\"}}, {{\"change\":\"claim\"}}, {{\"change\":\"release\"}}, {{\"change\":\"usage\",\"memory_used_mib\":1024,\"utilization_pct\":50}}, {{\"change\":\"reset\"}}"
                ),
            );
        }
    };
    match fleet.set(node, device, change) {
        Ok(node) => ok(&node),
        Err(e @ (AgentError::UnknownNode { .. } | AgentError::UnknownDevice { .. })) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn ok<T: Serialize + ?Sized>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("encode: {e}")),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&json!({ "error": message })).unwrap_or_default();
    respond(status, body)
}

fn respond(status: StatusCode, mut body: Vec<u8>) -> Response<Full<Bytes>> {
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Asks the agent whose admin endpoint is at `addr` to change one simulated device
/// (`POST /gpus/{node}/{device}`): what `flotilla ctl gpus set` calls. Answers the
/// HTTP status and the body (the node after the change, or the error's JSON). Only
/// a failure to reach the endpoint is an `Err`.
pub async fn request_device_change(
    addr: std::net::SocketAddr,
    node: &str,
    device: &str,
    change: &DeviceChange,
    timeout: std::time::Duration,
) -> Result<(u16, String), AgentError> {
    let unreachable = |message: String| AgentError::Config {
        field: "agent".into(),
        message: format!("admin endpoint {addr}: {message}"),
    };
    for (what, segment) in [("node", node), ("device", device)] {
        if segment.is_empty()
            || !segment
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '/' && c != '?' && c != '#' && c != '%')
        {
            return Err(AgentError::InvalidChange {
                node: node.to_owned(),
                device: device.to_owned(),
                message: format!(
                    "the {what} name must be printable ASCII without '/', '?', '#' or '%'"
                ),
            });
        }
    }
    let body = serde_json::to_string(change).map_err(|e| unreachable(e.to_string()))?;
    let (status, text) =
        crate::http::post_json(addr, &format!("/gpus/{node}/{device}"), body, timeout)
            .await
            .map_err(unreachable)?;
    Ok((status.as_u16(), text))
}
