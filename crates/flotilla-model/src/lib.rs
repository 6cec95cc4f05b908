//! `flotilla model`: a stand-in for an inference server such as vLLM, TGI or SGLang.
//!
//! It speaks the part of the OpenAI-compatible HTTP API those servers speak
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`, streaming over SSE),
//! reports health and vLLM-named Prometheus metrics, and behaves like a loaded GPU
//! replica: a time to first token, a delay per token, a concurrency limit with a
//! bounded queue (then 429), and a graceful drain. It runs no model: the tokens are
//! made up. Every response says which model, replica and cluster served it
//! (`x-flotilla-replica`, `x-flotilla-cluster` headers and a `flotilla` object in
//! the body), so tests of routing and migration can see where traffic went. It is
//! also a small MCP server under `/mcp` (module `mcp`), for tests of MCP routing.
//!
//! **What it must not do:** pretend to be more than a stand-in. Anything a test
//! learns about latency here is about Flotilla's routing and draining, not about
//! inference.
//!
//! Bind, then spawn: [`serve`] takes a bound listener, so tests use `127.0.0.1:0`.

mod api;
mod body;
mod config;
mod error;
mod mcp;
mod metrics;
mod server;

pub use api::NOT_PROCESSED_HEADER;
pub use config::ModelConfig;
pub use error::ModelError;
pub use server::{Replica, serve};
