//! Flotilla's protobuf services, generated from `proto/` at build time.
//!
//! This crate owns code generation (protox compiles the `.proto` files, so no `protoc`
//! is needed) and nothing else: conversions to core types live at each service's edge.

#![allow(unreachable_pub, missing_debug_implementations, clippy::unwrap_used)]

/// The public APIs' (`flotilla.v1`, `flotilla.v1alpha1`) `FileDescriptorSet`, for
/// gRPC reflection: the servers' internal protocols are not listed.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_public_descriptor.bin"));

pub mod raft {
    pub mod v1 {
        //! Raft between the servers of one federation (`flotilla.raft.v1`).
        tonic::include_proto!("flotilla.raft.v1");
    }
}

pub mod registry {
    pub mod v1 {
        //! The registry's client-facing service (`flotilla.registry.v1`).
        tonic::include_proto!("flotilla.registry.v1");
    }
}

pub mod v1 {
    //! The stable public API (`flotilla.v1`): federation and clusters, capacity,
    //! workloads, placements, routes, policies, and the PKI join.
    tonic::include_proto!("flotilla.v1");
}

pub mod v1alpha1 {
    //! Experimental APIs (`flotilla.v1alpha1`): replica load signals and MCP servers.
    //! May change.
    tonic::include_proto!("flotilla.v1alpha1");
}
