//! Compiles `proto/` with protox (pure Rust, no `protoc`), writes the file descriptor
//! set for gRPC reflection, and generates tonic/prost code from it.

use prost::Message;
use std::path::PathBuf;

const FILES: &[&str] = &[
    "flotilla/raft/v1/raft.proto",
    "flotilla/registry/v1/registry.proto",
    "flotilla/v1/federation.proto",
    "flotilla/v1/capacity.proto",
    "flotilla/v1/workloads.proto",
    "flotilla/v1/placements.proto",
    "flotilla/v1/routes.proto",
    "flotilla/v1/policies.proto",
    "flotilla/v1/tenants.proto",
    "flotilla/v1/pki.proto",
    "flotilla/v1alpha1/signals.proto",
    "flotilla/v1alpha1/mcp.proto",
];

/// Protocols between the servers of one federation (and their admins' tools).
const INTERNAL_PACKAGES: &[&str] = &["flotilla.raft.v1", "flotilla.registry.v1"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for f in FILES {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // What reflection lists: the public APIs, without the servers' own protocols.
    let mut public = fds.clone();
    public
        .file
        .retain(|f| !INTERNAL_PACKAGES.contains(&f.package()));
    std::fs::write(
        out.join("flotilla_public_descriptor.bin"),
        public.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
