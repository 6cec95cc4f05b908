//! The node agent's materializer: each replica placed on this cluster runs as a
//! local `flotilla model` process ([`local::LocalProcesses`]).
//!
//! The seam and the loop around it ([`flotilla_client::materialize`]) are shared
//! with the Kubernetes controller (`flotilla-controller`), which makes replicas as
//! Deployments instead.

pub mod local;
pub mod records;
