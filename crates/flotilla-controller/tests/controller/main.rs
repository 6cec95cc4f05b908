//! The Kubernetes controller's specification tests: one binary, one module per
//! subject.

// Helpers outside #[test] functions may unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod api;
mod decide;
mod istio;
mod objects;
mod real_api;
