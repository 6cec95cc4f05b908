//! The last tier: approved external endpoints, OpenAI-compatible providers that a
//! request of a tenant goes to only when no cluster of the federation has a ready
//! replica of its model, and only when the tenant's policy names the endpoint
//! (`TenantPolicy::external_endpoints`). The gateway holds the provider's
//! credential and sends it; the client's own never leaves the gateway, and the
//! registry never holds either.
//!
//! Endpoints come from the gateway's `--external-endpoints` file:
//!
//! ```toml
//! [[endpoint]]
//! name = "openai"                       # what policies name
//! url = "https://api.openai.com/v1"     # the provider's base URL (https only)
//! credential_file = "/var/run/secrets/openai/api-key"
//! ca_file = "/etc/flotilla/provider-ca.pem"   # optional; else the system's roots
//! [endpoint.models]                     # federation model = the provider's id
//! "meta-llama/Llama-3.1-8B-Instruct" = "gpt-4o-mini"
//! ```
//!
//! A request goes out on a connection of its own (the tier is for outages, not
//! the hot path): `POST <url><path after /v1>`, with `Authorization: Bearer
//! <credential>`, and the body's `model` rewritten to the provider's id.

use crate::body::ProxyBody;
use crate::error::GatewayError;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One approved external endpoint.
pub struct ExternalEndpoint {
    pub name: String,
    host: String,
    port: u16,
    /// The base URL's path, without a trailing `/` (`/v1`, or empty).
    base_path: String,
    /// Federation model → the provider's model id.
    pub models: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer …`; never logged.
    credential: HeaderValue,
    tls: TlsConnector,
}

impl std::fmt::Debug for ExternalEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalEndpoint")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("base_path", &self.base_path)
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

fn config_error(endpoint: &str, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::Config(format!("external endpoint `{endpoint}`: {message}"))
}

impl ExternalEndpoint {
    /// An endpoint at `url` (https only), serving `models` (federation model →
    /// the provider's id) with `credential`, verified with `tls`'s roots.
    pub fn new(
        name: &str,
        url: &str,
        models: BTreeMap<String, String>,
        credential: &str,
        tls: rustls::ClientConfig,
    ) -> Result<ExternalEndpoint, GatewayError> {
        flotilla_core::names::validate_name(flotilla_core::ObjectKind::Policy, name, "name")
            .map_err(|e| config_error(name, format!("name: {}", e.message)))?;
        let uri: Uri = url
            .parse()
            .map_err(|e| config_error(name, format!("url {url:?}: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(config_error(
                name,
                format!("url {url:?}: only https is accepted (the credential goes with it)"),
            ));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| config_error(name, format!("url {url:?} has no host")))?;
        if uri.query().is_some() {
            return Err(config_error(name, format!("url {url:?}: no query, please")));
        }
        if models.is_empty() {
            return Err(config_error(
                name,
                "serves no model: list them under `models`",
            ));
        }
        let credential = credential.trim();
        let credential = HeaderValue::from_str(&format!("Bearer {credential}"))
            .ok()
            .filter(|_| !credential.is_empty())
            .ok_or_else(|| config_error(name, "the credential is empty or not a header value"))?;
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ExternalEndpoint {
            name: name.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(443),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            models,
            credential,
            tls: TlsConnector::from(Arc::new(tls)),
        })
    }

    fn target(&self) -> String {
        format!(
            "external endpoint {} ({}:{})",
            self.name, self.host, self.port
        )
    }

    /// The provider's answer to one request for `model` (which it serves) to
    /// `path_and_query` (under `/v1`, as clients send it): `body` with the
    /// provider's model id, and the provider's credential.
    pub(crate) async fn send(
        &self,
        model: &str,
        method: &Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, GatewayError> {
        let connect_error = |reason: String| GatewayError::Connect {
            target: self.target(),
            reason,
        };
        let body = match self.models.get(model) {
            Some(theirs) if theirs != model => with_model(&body, theirs).map_err(connect_error)?,
            _ => body,
        };
        let uri = self
            .uri_for(path_and_query)
            .map_err(|e| connect_error(format!("bad path: {e}")))?;
        let authority = match self.port {
            443 => self.host.clone(),
            port => format!("{}:{port}", self.host),
        };
        headers.insert(header::AUTHORIZATION, self.credential.clone());
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&authority).map_err(|e| connect_error(e.to_string()))?,
        );
        // The length of what is sent now, not of what the client sent.
        headers.remove(header::CONTENT_LENGTH);
        let mut req = Request::new(crate::body::full(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let mut sender = tokio::time::timeout(connect_timeout, self.connect())
            .await
            .map_err(|_| connect_error("timed out".to_owned()))??;
        sender
            .send_request(req)
            .await
            .map_err(|e| GatewayError::AfterSend {
                target: self.target(),
                reason: e.to_string(),
            })
    }

    /// The provider's URI for a client's `/v1/…` path and query.
    fn uri_for(&self, path_and_query: &str) -> Result<Uri, hyper::http::uri::InvalidUri> {
        let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
        format!("{}{rest}", self.base_path).parse()
    }

    async fn connect(&self) -> Result<http1::SendRequest<ProxyBody>, GatewayError> {
        let connect_error = |reason: String| GatewayError::Connect {
            target: self.target(),
            reason,
        };
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|e| connect_error(format!("bad server name: {e}")))?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| connect_error(format!("TLS: {e}")))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect_error(format!("HTTP/1.1: {e}")))?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %name, error = %e, "external connection ended");
            }
        });
        Ok(sender)
    }
}

/// `body` (a JSON object) with its `model` replaced.
fn with_model(body: &[u8], model: &str) -> Result<Bytes, String> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let Some(object) = v.as_object_mut() else {
        return Err("the request body is not a JSON object".to_owned());
    };
    object.insert("model".to_owned(), serde_json::Value::from(model));
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    endpoint: Vec<EndpointEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    name: String,
    url: String,
    credential_file: std::path::PathBuf,
    #[serde(default)]
    ca_file: Option<std::path::PathBuf>,
    models: BTreeMap<String, String>,
}

/// The endpoints of an `--external-endpoints` file (see the module docs); relative
/// paths in it are taken from the file's directory. Every problem names the file
/// and the endpoint.
pub fn load_file(path: &Path) -> Result<Vec<ExternalEndpoint>, GatewayError> {
    let bad = |m: String| GatewayError::Config(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: EndpointsFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut endpoints: Vec<ExternalEndpoint> = Vec::new();
    for e in file.endpoint {
        if endpoints.iter().any(|seen| seen.name == e.name) {
            return Err(bad(format!(
                "external endpoint `{}` is listed twice",
                e.name
            )));
        }
        let read = |p: &Path| {
            let p = dir.join(p);
            std::fs::read(&p).map_err(|err| {
                bad(format!(
                    "external endpoint `{}`: {}: {err}",
                    e.name,
                    p.display()
                ))
            })
        };
        let credential = String::from_utf8(read(&e.credential_file)?).map_err(|_| {
            bad(format!(
                "external endpoint `{}`: the credential file is not UTF-8",
                e.name
            ))
        })?;
        let roots = match &e.ca_file {
            Some(ca) => {
                let pem = read(ca)?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: rustls_pki_types::CertificateDer<'static> = cert.map_err(|err| {
                        bad(format!("external endpoint `{}`: ca_file: {err}", e.name))
                    })?;
                    roots.add(cert).map_err(|err| {
                        bad(format!("external endpoint `{}`: ca_file: {err}", e.name))
                    })?;
                }
                if roots.is_empty() {
                    return Err(bad(format!(
                        "external endpoint `{}`: ca_file holds no certificate",
                        e.name
                    )));
                }
                roots
            }
            None => system_roots().map_err(bad)?,
        };
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let endpoint = ExternalEndpoint::new(&e.name, &e.url, e.models, &credential, tls)
            .map_err(|err| bad(err.to_string()))?;
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no ca_file, and no system root certificates could be read ({} errors)",
            found.errors.len()
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    fn models() -> BTreeMap<String, String> {
        BTreeMap::from([("llama".to_owned(), "their-llama".to_owned())])
    }

    #[test]
    fn an_endpoint_takes_only_https_with_a_host_a_model_and_a_credential() {
        let ok = ExternalEndpoint::new("p", "https://api.example:8443/v1/", models(), "s", tls());
        let ok = ok.unwrap();
        assert_eq!(
            (ok.host.as_str(), ok.port, ok.base_path.as_str()),
            ("api.example", 8443, "/v1")
        );
        let refused = |name: &str, url: &str, models: BTreeMap<String, String>, cred: &str| {
            ExternalEndpoint::new(name, url, models, cred, tls())
                .unwrap_err()
                .to_string()
        };
        assert!(refused("p", "http://api.example/v1", models(), "s").contains("only https"));
        assert!(refused("p", "https:///v1", models(), "s").contains("url"));
        assert!(refused("p", "https://a/v1?x=1", models(), "s").contains("no query"));
        assert!(refused("p", "https://a/v1", BTreeMap::new(), "s").contains("serves no model"));
        assert!(refused("p", "https://a/v1", models(), " \n").contains("credential"));
        assert!(refused("p", "https://a/v1", models(), "a\nb").contains("credential"));
        assert!(refused("Not A Name", "https://a/v1", models(), "s").contains("name"));
    }

    #[test]
    fn a_client_path_maps_under_the_providers_base_with_its_query() {
        let at = |base: &str, pq: &str| {
            ExternalEndpoint::new("p", base, models(), "s", tls())
                .unwrap()
                .uri_for(pq)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            at("https://a/v1", "/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            at("https://a/openai/v1/", "/v1/completions?x=1"),
            "/openai/v1/completions?x=1"
        );
        assert_eq!(at("https://a", "/v1/embeddings"), "/embeddings");
    }

    #[test]
    fn the_model_is_rewritten_and_nothing_else() {
        let body =
            br#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&with_model(body, "theirs").unwrap()).unwrap();
        assert_eq!(out["model"], "theirs");
        assert_eq!(out["stream"], true);
        assert_eq!(out["messages"][0]["content"], "hi");
        assert!(with_model(b"[1]", "x").is_err());
        assert!(with_model(b"{", "x").is_err());
    }

    #[test]
    fn a_file_names_the_problem_and_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("external.toml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        write(
            "[[endpoint]]\nname = \"p\"\nurl = \"https://a/v1\"\ncredential_file = \"missing\"\nmodels = { llama = \"x\" }\n",
        );
        let err = load_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("external endpoint `p`") && err.contains("missing"),
            "{err}"
        );
        write(
            "[[endpoint]]\nname = \"p\"\nurl = \"https://a/v1\"\ncredential = \"inline\"\nmodels = { llama = \"x\" }\n",
        );
        let err = load_file(&file).unwrap_err().to_string();
        assert!(err.contains("unknown field `credential`"), "{err}");
        std::fs::write(dir.path().join("key"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        write(
            "[[endpoint]]\nname = \"p\"\nurl = \"https://a/v1\"\ncredential_file = \"key\"\nca_file = \"ca.pem\"\nmodels = { llama = \"x\" }\n",
        );
        let err = load_file(&file).unwrap_err().to_string();
        assert!(err.contains("ca_file"), "{err}");
    }
}
