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
    "flotilla/v1/pki.proto",
    "flotilla/v1alpha1/signals.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for f in FILES {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("flotilla_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
