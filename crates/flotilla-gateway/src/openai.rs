//! The OpenAI-compatible surface: reading `model` from a request body, and errors in
//! the shape OpenAI clients already parse.

use crate::body::{ProxyBody, full};
use hyper::{Response, StatusCode, header};
use serde::Serialize;

/// Paths whose JSON body names the model.
pub(crate) fn is_model_path(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions")
}

#[derive(serde::Deserialize)]
struct ModelField {
    model: String,
}

/// The `model` of a request body, or why there is none: what the gateway routes an
/// OpenAI request by.
pub fn model_of(body: &[u8]) -> Result<String, String> {
    match serde_json::from_slice::<ModelField>(body) {
        Ok(m) if !m.model.is_empty() => Ok(m.model),
        Ok(_) => Err("the `model` field is empty".to_owned()),
        Err(e) => Err(format!(
            "the request body must be a JSON object with a `model` string: {e}"
        )),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

/// An error response in OpenAI's format:
/// `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error(
    status: StatusCode,
    kind: &str,
    code: &str,
    param: Option<&str>,
    message: &str,
) -> Response<ProxyBody> {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    })
    .unwrap_or_default();
    json_response(status, body)
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    owned_by: &'static str,
}

/// `GET /v1/models`: the models the federation serves now.
pub(crate) fn model_list<'a>(models: impl Iterator<Item = &'a str>) -> Response<ProxyBody> {
    let list = ModelList {
        object: "list",
        data: models
            .map(|id| ModelEntry {
                id,
                object: "model",
                owned_by: "flotilla",
            })
            .collect(),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).unwrap_or_default(),
    )
}
