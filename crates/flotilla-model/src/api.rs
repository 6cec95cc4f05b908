//! The HTTP surface: routes, OpenAI-shaped requests and responses, errors.

use crate::body::Timed;
use crate::server::{Refusal, Shared};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Request bodies larger than this are refused (413); prompts here are stand-ins.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The made-up output, one word per token.
const WORDS: [&str; 8] = [
    "Flotilla ",
    "moves ",
    "models ",
    "to ",
    "where ",
    "the ",
    "GPUs ",
    "are. ",
];

pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match (method, path.as_str()) {
        (Method::GET, "/health") => health(&shared),
        (Method::GET, "/metrics") => metrics(&shared),
        (Method::GET, "/v1/models") => models(&shared),
        (Method::POST, "/v1/chat/completions") => complete(&shared, request, Kind::Chat).await,
        (Method::POST, "/v1/completions") => complete(&shared, request, Kind::Text).await,
        (_, p) if p == "/mcp" || p.starts_with("/mcp/") => {
            crate::mcp::handle(&shared, request).await
        }
        (method, "/health" | "/metrics" | "/v1/models") => {
            not_allowed(&shared, &method, &path, "GET")
        }
        (method, "/v1/chat/completions" | "/v1/completions") => {
            not_allowed(&shared, &method, &path, "POST")
        }
        (_, path) => error(
            &shared,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!(
                "no route for {path}; this server has /v1/chat/completions, /v1/completions, /v1/models, /mcp, /health and /metrics"
            ),
        ),
    };
    shared.metrics.count_response(response.status().as_u16());
    Ok(response)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Names the replica and cluster on every response, so tests see where it went.
fn response(shared: &Shared, status: StatusCode, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    // Names were validated as DNS labels, so they are valid header values.
    if let Ok(v) = HeaderValue::from_str(&shared.config.replica) {
        headers.insert("x-flotilla-replica", v);
    }
    if let Ok(v) = HeaderValue::from_str(&shared.config.cluster) {
        headers.insert("x-flotilla-cluster", v);
    }
    r
}

fn json_response(shared: &Shared, status: StatusCode, value: &Value) -> Response<Body> {
    response(shared, status, "application/json", full(value.to_string()))
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
fn error(
    shared: &Shared,
    status: StatusCode,
    kind: &str,
    code: &str,
    message: String,
) -> Response<Body> {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut r = json_response(shared, status, &body);
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// A refusal not yet rendered: small to pass around, rendered once by
/// [`ApiError::into_response`].
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(code: &'static str, message: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            message,
        }
    }

    fn into_response(self, shared: &Shared) -> Response<Body> {
        error(shared, self.status, self.kind, self.code, self.message)
    }
}

fn not_allowed(
    shared: &Shared,
    method: &Method,
    path: &str,
    allowed: &'static str,
) -> Response<Body> {
    let mut r = error(
        shared,
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{method} is not allowed on {path}; use {allowed}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allowed));
    r
}

/// Set on a refusal that generated nothing, to the refusal's code: a gateway may send
/// the same request to another replica without it being generated twice.
pub const NOT_PROCESSED_HEADER: &str = "x-flotilla-not-processed";

fn not_processed(mut r: Response<Body>, reason: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(NOT_PROCESSED_HEADER, HeaderValue::from_static(reason));
    r
}

fn refused(shared: &Shared, refusal: Refusal) -> Response<Body> {
    match refusal {
        Refusal::Loading => not_processed(
            error(
                shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "loading",
                "the model is still loading; try again shortly".into(),
            ),
            "loading",
        ),
        Refusal::Draining => not_processed(
            error(
                shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "draining",
                format!(
                    "replica {} is draining and takes no new requests",
                    shared.config.replica
                ),
            ),
            "draining",
        ),
        // OpenAI calls the type of a request-rate limit "requests".
        Refusal::Overloaded => error(
            shared,
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            format!(
                "replica {} is at its limit of {} running and {} waiting requests",
                shared.config.replica, shared.config.max_concurrency, shared.config.queue
            ),
        ),
    }
}

fn health(shared: &Shared) -> Response<Body> {
    let (status, state) = if shared.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if shared.started.elapsed() < shared.config.load_time {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else {
        (StatusCode::OK, "ready")
    };
    json_response(
        shared,
        status,
        &json!({"status": state, "flotilla": whoami(shared, None)}),
    )
}

fn metrics(shared: &Shared) -> Response<Body> {
    let text = shared
        .metrics
        .render(shared.cache_usage(), shared.is_draining());
    response(
        shared,
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        full(text),
    )
}

fn models(shared: &Shared) -> Response<Body> {
    let created = now_secs();
    let data: Vec<Value> = shared
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": created, "owned_by": "flotilla", "root": m}))
        .collect();
    json_response(
        shared,
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    )
}

fn whoami(shared: &Shared, model: Option<&str>) -> Value {
    json!({"model": model, "replica": shared.config.replica, "cluster": shared.config.cluster})
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[allow(dead_code)]
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Deserialize)]
struct TextRequest {
    model: String,
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

/// The fields both endpoints read; every other field of a real client's request is
/// accepted and ignored.
#[derive(Debug, Deserialize)]
struct Common {
    stream: Option<bool>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    n: Option<u32>,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A parsed, checked request.
struct Job {
    kind: Kind,
    model: String,
    model_index: usize,
    stream: bool,
    include_usage: bool,
    tokens: u32,
    explicit_max: bool,
    prompt_tokens: u64,
}

/// Words in the text parts of a prompt: a stand-in for a tokenizer.
fn count_words(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Number(_) => 1,
                Value::Object(part) => part.get("text").map_or(0, count_words),
                other => count_words(other),
            })
            .sum(),
        _ => 0,
    }
}

fn parse(shared: &Shared, kind: Kind, body: &[u8]) -> Result<Job, ApiError> {
    let invalid = |e: serde_json::Error| {
        let what = match kind {
            Kind::Chat => "chat completion request",
            Kind::Text => "completion request",
        };
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not a valid {what}: {e}"),
        )
    };
    let (model, common, prompt_tokens) = match kind {
        Kind::Chat => {
            let r: ChatRequest = serde_json::from_slice(body).map_err(invalid)?;
            if r.messages.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "messages must not be empty".into(),
                ));
            }
            let words = r.messages.iter().map(|m| count_words(&m.content)).sum();
            (r.model, r.common, words)
        }
        Kind::Text => {
            let r: TextRequest = serde_json::from_slice(body).map_err(invalid)?;
            let words = count_words(&r.prompt);
            (r.model, r.common, words)
        }
    };
    let Some(model_index) = shared.config.models.iter().position(|m| *m == model) else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            message: format!(
                "the model {model:?} does not exist on this replica; it serves {}",
                shared.config.models.join(", ")
            ),
        });
    };
    if common.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "n must be 1: the stand-in makes one choice".into(),
        ));
    }
    let requested = common.max_completion_tokens.or(common.max_tokens);
    if requested == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "max_tokens must be at least 1".into(),
        ));
    }
    let tokens = requested
        .unwrap_or(shared.config.default_max_tokens)
        .min(shared.config.max_tokens_cap);
    let stream = common.stream.unwrap_or(false);
    Ok(Job {
        kind,
        model,
        model_index,
        stream,
        include_usage: stream && common.stream_options.is_some_and(|o| o.include_usage),
        tokens,
        explicit_max: requested.is_some(),
        prompt_tokens,
    })
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            code: "body_too_large",
            message: format!("the body exceeds {MAX_BODY_BYTES} bytes"),
        }),
        Err(e) => Err(ApiError::bad_request(
            "invalid_request",
            format!("the body could not be read: {e}"),
        )),
    }
}

async fn complete(shared: &Arc<Shared>, request: Request<Incoming>, kind: Kind) -> Response<Body> {
    let in_flight = match shared.enter() {
        Ok(g) => g,
        Err(refusal) => return refused(shared, refusal),
    };
    let job = match read_body(request)
        .await
        .and_then(|body| parse(shared, kind, &body[..]))
    {
        Ok(job) => job,
        Err(e) => return e.into_response(shared),
    };
    let running = match shared.admit(in_flight, job.model_index).await {
        Ok(r) => r,
        Err(refusal) => return refused(shared, refusal),
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let on_end = {
        let shared = shared.clone();
        let (index, explicit, prompt, tokens) = (
            job.model_index,
            job.explicit_max,
            job.prompt_tokens,
            job.tokens,
        );
        move || {
            if let Some(m) = shared.metrics.model(index) {
                let finished = if explicit {
                    &m.success_length
                } else {
                    &m.success_stop
                };
                finished.fetch_add(1, Ordering::Relaxed);
                m.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
                m.generation_tokens
                    .fetch_add(u64::from(tokens), Ordering::Relaxed);
            }
        }
    };
    let config = &shared.config;
    let out = Output::new(shared, &job, id);
    if job.stream {
        let mut chunks = VecDeque::new();
        for i in 0..job.tokens {
            let delay = if i == 0 {
                config.ttft
            } else {
                config.token_delay
            };
            chunks.push_back((delay, sse(&out.chunk(Some(word(i)), i == 0, None, None))));
        }
        chunks.push_back((
            Duration::ZERO,
            sse(&out.chunk(None, false, Some(out.finish_reason), None)),
        ));
        if job.include_usage {
            chunks.push_back((
                Duration::ZERO,
                sse(&out.chunk(None, false, None, Some(out.usage()))),
            ));
        }
        chunks.push_back((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
        let body = Timed::new(chunks, Box::new(running)).on_end(on_end);
        let mut r = response(
            shared,
            StatusCode::OK,
            "text/event-stream",
            body.boxed_unsync(),
        );
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        out.name_model(&mut r);
        return r;
    }
    let generating = config.ttft + config.token_delay * job.tokens.saturating_sub(1);
    tokio::time::sleep(generating).await;
    let text: String = (0..job.tokens).map(word).collect();
    let body = out.whole(&text).to_string();
    let chunks = VecDeque::from([(Duration::ZERO, Bytes::from(body))]);
    let body = Timed::new(chunks, Box::new(running)).on_end(on_end);
    let mut r = response(
        shared,
        StatusCode::OK,
        "application/json",
        body.boxed_unsync(),
    );
    out.name_model(&mut r);
    r
}

fn word(i: u32) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The parts every response body of one request shares.
struct Output {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    flotilla: Value,
    finish_reason: &'static str,
    prompt_tokens: u64,
    tokens: u32,
}

impl Output {
    fn new(shared: &Shared, job: &Job, n: u64) -> Output {
        let prefix = match job.kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        Output {
            kind: job.kind,
            id: format!("{prefix}-{}-{n}", shared.config.replica),
            created: now_secs(),
            model: job.model.clone(),
            fingerprint: format!(
                "flotilla:{}/{}",
                shared.config.cluster, shared.config.replica
            ),
            flotilla: whoami(shared, Some(&job.model)),
            finish_reason: if job.explicit_max { "length" } else { "stop" },
            prompt_tokens: job.prompt_tokens,
            tokens: job.tokens,
        }
    }

    fn name_model(&self, r: &mut Response<Body>) {
        if let Ok(v) = HeaderValue::from_str(&self.model) {
            r.headers_mut().insert("x-flotilla-model", v);
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + u64::from(self.tokens),
        })
    }

    fn envelope(&self, object: &str, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "flotilla": self.flotilla,
        })
    }

    fn whole(&self, text: &str) -> Value {
        let mut v = match self.kind {
            Kind::Chat => self.envelope(
                "chat.completion",
                json!([{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": self.finish_reason}]),
            ),
            Kind::Text => self.envelope(
                "text_completion",
                json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": self.finish_reason}]),
            ),
        };
        v["usage"] = self.usage();
        v
    }

    /// One streamed chunk: a token, the finish, or (with no choices) the usage.
    fn chunk(
        &self,
        token: Option<&str>,
        first: bool,
        finish: Option<&str>,
        usage: Option<Value>,
    ) -> Value {
        let choices = if usage.is_some() {
            json!([])
        } else {
            match self.kind {
                Kind::Chat => {
                    let mut delta = json!({});
                    if first {
                        delta["role"] = json!("assistant");
                    }
                    if let Some(t) = token {
                        delta["content"] = json!(t);
                    }
                    json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
                }
                Kind::Text => {
                    json!([{"index": 0, "text": token.unwrap_or(""), "logprobs": null, "finish_reason": finish}])
                }
            }
        };
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        let mut v = self.envelope(object, choices);
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}
