//! The stand-in's protocol, tested over real sockets on 127.0.0.1:0 with a small
//! hyper client: one binary, one module per subject.

// Tests unwrap on what they wrote themselves; a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod client;
mod completions;
mod drain;
mod errors;
mod overload;
mod streaming;
