//! Flotilla's east-west gateway: the data plane.
//!
//! Every cluster runs one. Clients send inference requests to their own cluster's
//! gateway; it delivers each to a ready replica of the model — here if one is
//! Ready, else through the gateway of a cluster that hosts it, over mTLS and
//! HTTP/2. OpenAI-compatible requests are routed by the body's `model`; MCP servers
//! (`flotilla.v1alpha1`) by their host or path rule, with each tenant's tools
//! enforced; other HTTP and gRPC by host and path. Responses, SSE token streams included, pass through
//! frame by frame.
//!
//! Routes come in through a [`RouteSource`] — the registry's route watch
//! ([`RegistryRouteSource`]) or a static routes file — and are swapped atomically;
//! a request keeps the snapshot it started with. When the source is lost the gateway keeps
//! serving its last table (fail-static) and says so on `/flotilla/status` and
//! `/metrics`.
//!
//! **What it must not do:** decide placements or weights (that is
//! `flotilla-core`'s job; the gateway only follows the route table), send a request
//! whose body reached a model a second time, or forward a request that already
//! crossed the east-west hop.

mod body;
mod eastwest;
mod error;
mod external;
mod governance;
mod health;
mod identity;
mod limits;
pub mod mcp;
mod mcp_proxy;
mod metrics;
mod openai;
mod proxy;
mod registry_source;
mod select;
mod server;
mod source;
mod static_routes;
mod table;
mod usage;

pub use body::ProxyBody;
pub use eastwest::PeerCheck;
pub use error::GatewayError;
pub use external::{ExternalEndpoint, load_file as load_external_endpoints};
pub use governance::{Governance, TENANT_HEADER};
pub use health::{EjectedEndpoint, EndpointKey, HealthSettings};
pub use identity::{PeerIdentity, san_uris};
pub use openai::model_of;
pub use proxy::{EXTERNAL_HEADER, HOP_HEADER, NOT_PROCESSED_HEADER, ROUTE_HEADER};
pub use registry_source::{Connector, RegistryProgress, RegistryRouteSource, RegistrySourceConfig};
pub use server::{Gateway, GatewayConfig, Listeners};
pub use source::{RegistryStatus, RouteEvent, RouteSource, RouteState};
pub use static_routes::{StaticEndpoint, StaticReplica, StaticRoute, StaticRoutes};
pub use table::{
    GatewayAddress, HostRule, LoadSignals, LocalReplica, ModelRoutes, RemoteGateway, ReplicaPhase,
    RoutingTable, UpstreamProtocol,
};
pub use usage::tokens_spent;
