//! Renders the Kubernetes and Istio objects that run Flotilla on Kubernetes.
//!
//! - [`install`]: the manifests for one cluster (`flotilla install`): namespace,
//!   service accounts and RBAC, the server StatefulSet, the node DaemonSet (agent and
//!   gateway), services, disruption budgets, network policies, the join-token Secret.
//! - [`istio`]: the Istio objects (`ServiceEntry`, `WorkloadEntry`,
//!   `DestinationRule`) that make Istio's east-west gateway carry the traffic core's
//!   route table describes.
//! - [`output`]: multi-document YAML or a JSON `List`, what `kubectl apply -f -` reads.
//!
//! This crate must not talk to a Kubernetes API server (no kube-rs client here): it
//! is pure functions from Flotilla's state and options to `serde_json::Value`s, so
//! the CLI, the committed kustomize base and the tests all print the same bytes. The
//! controller that applies these objects belongs in the agent.

pub mod install;
pub mod istio;
pub mod names;
pub mod output;

/// The label every object Flotilla renders carries, so that nothing it did not
/// create is ever touched (and `kubectl get -l` finds everything it did).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "flotilla");
