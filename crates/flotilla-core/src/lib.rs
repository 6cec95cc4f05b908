//! Every decision Flotilla makes, and nothing else.
//!
//! This crate holds the registry's domain types with their validation, the registry
//! state machine ([`apply`]), the scheduler ([`plan`]) with its make-before-break
//! migrations, and the route table derived from placements.
//!
//! **What it must not do:** IO, async, reading clocks or unseeded randomness. Time is
//! an input (commands carry their own timestamps; `plan` is told what time it is), so
//! the servers, the simulator and the tests all run this same code and get the same
//! answers. Keep it that way: a dependency on tokio, std::time::SystemTime or a
//! file system here is a design bug.

pub mod certificates;
pub mod cluster;
pub mod command;
pub mod error;
pub mod fixtures;
pub mod gpu;
pub mod mcp;
pub mod names;
pub mod placement;
pub mod policy;
pub mod route;
pub mod scheduler;
pub mod settings;
pub mod snapshot;
pub mod state;
pub mod tenant;
pub mod time;
pub mod workload;

pub use certificates::{Certificates, IssuedCertificate, Revoked};
pub use cluster::{AddressRange, Cluster, ClusterSpec, ClusterState};
pub use command::{
    Command, Entry, Event, Expectation, LossCause, MigrationOutcome, SETTINGS_NAME, apply,
};
pub use error::{ObjectKind, Rejection, ValidationError};
pub use gpu::{Device, DeviceRef, DeviceReport, GpuNeed, Inventory, Node, NodeReport, ReportScope};
pub use mcp::McpServer;
pub use placement::{
    Migration, MoveReason, Phase, PlacedReplica, Placement, PlacementChange, Replica, ReplicaId,
    validate_endpoint,
};
pub use policy::{MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE, TenantPolicy};
pub use route::{Compacted, Route, RouteEndpoint, RouteTable, TOMBSTONE_REVISIONS};
pub use scheduler::{plan, plan_with_lease_floor};
pub use settings::{PlacementPolicy, Settings};
pub use snapshot::{SNAPSHOT_FORMAT, SnapshotError};
pub use state::{Overcommit, State};
pub use tenant::{ApiKey, KeyRefusal, Tenant};
pub use time::{Millis, Timestamp};
pub use workload::{
    Constraints, ContainerPort, ContainerResources, ContainerSpec, Mobility, PortProtocol,
    RegionPreference, Replicas, SecretKeyRef, Slo, Workload, names_a_credential,
};
