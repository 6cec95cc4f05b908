//! The Raft envelope between servers: the gRPC message, then its JSON payload as
//! each RPC decodes it (appends carry the log's commands).
#![no_main]
use flotilla_proto::raft::v1::RaftRequest;
use flotilla_registry::types::TypeConfig;
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = RaftRequest::decode(data) {
        let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&request.payload);
        let _ = serde_json::from_slice::<VoteRequest<u64>>(&request.payload);
    }
    let _ = serde_json::from_slice::<flotilla_core::Entry>(data);
});
