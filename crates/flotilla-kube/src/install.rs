//! The manifests for one cluster of a federation (`flotilla install`).
//!
//! What runs where, and why:
//!
//! - **server**: a StatefulSet (`flotilla-server`, `server_replicas` pods) with a
//!   PersistentVolumeClaim each for the Raft log (`/var/lib/flotilla/data`, a
//!   subdirectory because a fresh volume's `lost+found` makes the registry refuse the
//!   directory) and a headless Service that publishes not-ready pods, so that members
//!   find each other before they are ready. Each pod decides at start: a registry on
//!   its volume → resume; a join token under key `server-<ordinal>` of the Secret
//!   `flotilla-join-server` (mounted into server pods only) → join; ordinal 0 of the cluster that starts the federation →
//!   `federation init` (once) and `server --init`; otherwise it exits, naming the
//!   token it needs. Server tokens are single-use, so every server pod that joins
//!   needs its own.
//! - **agent**: a DaemonSet (`flotilla-agent`) on every node NVIDIA's GPU feature
//!   discovery labelled `nvidia.com/gpu.present=true`. Each agent reads its node's
//!   GPUs through NVML (the host driver, mounted by the NVIDIA runtime class) and
//!   reports that node only (`--report-scope=node`), with a lease per node, so
//!   agents of one cluster never overwrite each other and a node whose agent stops
//!   reporting is dropped from the inventory. Agents run no replicas. Each joins as
//!   its own node (`spiffe://F/cluster/C/node/N`: it may report that node and set
//!   the phase of replicas on it, nothing else) with the `node` token of Secret
//!   `flotilla-join-node` (mounted into agent pods only), which admits each node
//!   once, up to one join per GPU node (`flotilla federation token --role node
//!   --uses N`); each keeps its identity on a host path, so a restarted agent needs
//!   no join.
//! - **controller**: a one-pod Deployment (`flotilla controller`) that turns the
//!   cluster's placements into Deployments and Services (and, with `istio`, Istio's
//!   objects) with watches and server-side apply, and reports replicas Ready with
//!   their Service's address. It is the only component that calls the Kubernetes
//!   API, so only its account has a token and a Role. It joins as the cluster's
//!   agent with the single-use `agent` token of Secret `flotilla-join-controller`.
//! - **gateway**: a one-pod Deployment for the east-west gateway, exposed by a
//!   LoadBalancer Service (east-west, mTLS) and a ClusterIP Service (inference). It
//!   learns local replicas (their Services) from the registry.
//! - The controller and the gateway keep their identities on small
//!   PersistentVolumeClaims, which is why each is one pod replaced with `Recreate`.
//! - Per-cluster values (cluster, region, zone, federation, servers, addresses) live
//!   in the ConfigMap `flotilla-cluster` and reach the processes as environment
//!   variables, so a kustomize overlay changes a cluster by replacing one ConfigMap.

use crate::MANAGED_BY;
use crate::istio::{CLUSTER_LABEL, GLOBAL_LABEL, IstioMode, WAYPOINT};
use crate::names::{is_dns_label, is_dns_subdomain};
use flotilla_core::ObjectKind;
use flotilla_core::names::validate_name;
use serde_json::{Map, Value, json};

/// The uid and gid every Flotilla container runs as (Debian's `nonroot`-style id,
/// the same as the Dockerfile's user).
pub const RUN_AS: u64 = 65532;
/// The registry's port (Raft, the API and health share it).
pub const SERVER_PORT: u16 = 7400;
/// The gateway's inference listener.
pub const INFERENCE_PORT: u16 = 8080;
/// The gateway's east-west listener (mTLS, HTTP/2).
pub const EAST_WEST_PORT: u16 = 8443;
/// The gateway's admin listener (`/healthz`, `/flotilla/status`, `/metrics`).
pub const GATEWAY_ADMIN_PORT: u16 = 9090;
/// The agent's admin endpoint (`/health`, `/gpus`).
pub const AGENT_ADMIN_PORT: u16 = 9410;
/// The controller's admin endpoint (`/health`, `/replicas`).
pub const CONTROLLER_ADMIN_PORT: u16 = 9411;
/// The node label NVIDIA's GPU feature discovery sets on nodes with a GPU; agents
/// run where it is `"true"`.
pub const GPU_PRESENT_LABEL: &str = "nvidia.com/gpu.present";
/// The volume holding the controller's or the gateway's identity (a few KiB).
pub const STATE_VOLUME_SIZE: &str = "64Mi";

/// CPU and memory for one container: requests, and a memory limit equal to the
/// request (no CPU limit: throttling a Raft member or a proxy costs more than it saves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
}

impl Resources {
    fn new(cpu: &str, memory: &str) -> Self {
        Resources {
            cpu: cpu.into(),
            memory: memory.into(),
        }
    }
}

/// Join tokens, by the process that redeems them. The caller (the CLI) decodes and
/// sorts them; this crate only places them in the Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinTokens {
    /// One per server pod that joins, in ordinal order.
    pub servers: Vec<String>,
    /// The controller's: an agent token (the cluster's agent identity).
    pub agent: Option<String>,
    /// Redeemed by every GPU node's agent, each as its own node (a counted node
    /// token, one join per node).
    pub node: Option<String>,
    pub gateway: Option<String>,
}

/// Everything `flotilla install` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    pub cluster: String,
    pub region: String,
    /// Empty: no zone.
    pub zone: String,
    pub federation: String,
    /// This cluster starts the federation (its server 0 holds the CA).
    pub init: bool,
    pub join: JoinTokens,
    /// The gateway enforces no governance (`--open`); by default it follows the
    /// registry's tenants, API keys and policies and enforces them.
    pub open: bool,
    /// A Secret (the operator's) holding the gateway's approved external
    /// endpoints: `endpoints.toml` and the credential and CA files it names,
    /// mounted read-only into the gateway only.
    pub external_endpoints_secret: Option<String>,
    /// The controller also applies Istio objects (and may manage those kinds).
    pub istio: bool,
    /// With `istio`: clusters' Istio networks (`CLUSTER=NETWORK`), passed to the
    /// controller; a cluster not named is its own network.
    pub istio_networks: Vec<String>,
    /// With `istio`: sidecar or ambient objects. Ambient also labels the namespace
    /// into the ambient mesh and renders its waypoint and this cluster's ambient
    /// east-west gateway.
    pub istio_mode: IstioMode,
    pub namespace: String,
    pub image: String,
    pub server_replicas: u32,
    /// How other clusters reach server N: `host:port` with `{ordinal}` in it
    /// (`flotilla-{ordinal}.c1.example.com:7400`). When set, each server pod also
    /// gets a LoadBalancer Service to point that name at. Empty: cluster-local names.
    pub server_advertise: String,
    /// Where other clusters reach this cluster's east-west gateway (`host:port`),
    /// reported to the registry by the agent; empty until the load balancer has one.
    pub gateway_address: String,
    /// The RuntimeClass that exposes the host's NVIDIA driver; `None`: the node's default.
    pub runtime_class: Option<String>,
    pub storage_size: String,
    pub storage_class: Option<String>,
    pub server_resources: Resources,
    pub agent_resources: Resources,
    pub controller_resources: Resources,
    pub gateway_resources: Resources,
}

impl InstallOptions {
    /// This version's image.
    pub fn default_image() -> String {
        format!(
            "ghcr.io/flotilla-dev/flotilla:{}",
            env!("CARGO_PKG_VERSION")
        )
    }

    /// The defaults for a cluster: namespace `flotilla`, one server, the `nvidia`
    /// runtime class, the image of this version.
    pub fn new(cluster: &str, region: &str) -> Self {
        InstallOptions {
            cluster: cluster.into(),
            region: region.into(),
            zone: String::new(),
            federation: "flotilla".into(),
            init: false,
            join: JoinTokens::default(),
            open: false,
            external_endpoints_secret: None,
            istio: false,
            istio_networks: Vec::new(),
            istio_mode: IstioMode::Sidecar,
            namespace: "flotilla".into(),
            image: Self::default_image(),
            server_replicas: 1,
            server_advertise: String::new(),
            gateway_address: String::new(),
            runtime_class: Some("nvidia".into()),
            storage_size: "10Gi".into(),
            storage_class: None,
            server_resources: Resources::new("500m", "1Gi"),
            agent_resources: Resources::new("100m", "128Mi"),
            controller_resources: Resources::new("100m", "256Mi"),
            gateway_resources: Resources::new("500m", "256Mi"),
        }
    }
}

/// Why the manifests could not be rendered. Each names the option at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error("--{option} {value:?}: {problem}")]
    Invalid {
        option: &'static str,
        value: String,
        problem: String,
    },
    /// With `--init`, server 0 starts the federation and server tokens are for the
    /// other pods; without it, server 0 needs a token too.
    #[error(
        "a cluster either starts the federation (--init) or joins it (--join with a server token); neither was given"
    )]
    Bootstrap,
}

fn invalid(option: &'static str, value: &str, problem: impl Into<String>) -> InstallError {
    InstallError::Invalid {
        option,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// A Kubernetes quantity in the forms people write (`500m`, `1.5`, `256Mi`, `10Gi`).
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    SUFFIXES.iter().any(|suffix| {
        s.strip_suffix(suffix).is_some_and(|number| {
            let mut parts = number.splitn(2, '.');
            let whole = parts.next().unwrap_or("");
            let frac = parts.next();
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

fn check(o: &InstallOptions) -> Result<(), InstallError> {
    let label = |option: &'static str, value: &str| {
        validate_name(ObjectKind::Cluster, value, option)
            .map_err(|e| invalid(option, value, e.message))
    };
    label("cluster", &o.cluster)?;
    label("region", &o.region)?;
    if !o.zone.is_empty() {
        label("zone", &o.zone)?;
    }
    label("federation", &o.federation)?;
    if !is_dns_label(&o.namespace) {
        return Err(invalid(
            "namespace",
            &o.namespace,
            "must be a DNS label: lower-case letters, digits and '-', at most 63",
        ));
    }
    if o.image.is_empty() || o.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "image",
            &o.image,
            "must be an image reference without spaces",
        ));
    }
    // Raft needs a majority; more than 7 voters only slows every write down.
    if !(1..=7).contains(&o.server_replicas) {
        return Err(invalid(
            "server-replicas",
            &o.server_replicas.to_string(),
            "must be between 1 and 7 (3 or 5 for a highly available cluster)",
        ));
    }
    if let Some(secret) = &o.external_endpoints_secret
        && !is_dns_subdomain(secret)
    {
        return Err(invalid(
            "external-endpoints-secret",
            secret,
            "must be a Secret's name: a DNS subdomain",
        ));
    }
    if let Some(rc) = &o.runtime_class
        && !is_dns_subdomain(rc)
    {
        return Err(invalid("runtime-class", rc, "must be a DNS subdomain name"));
    }
    if let Some(sc) = &o.storage_class
        && !is_dns_subdomain(sc)
    {
        return Err(invalid("storage-class", sc, "must be a DNS subdomain name"));
    }
    let quantities = [
        ("storage-size", &o.storage_size),
        ("server-cpu", &o.server_resources.cpu),
        ("server-memory", &o.server_resources.memory),
        ("agent-cpu", &o.agent_resources.cpu),
        ("agent-memory", &o.agent_resources.memory),
        ("controller-cpu", &o.controller_resources.cpu),
        ("controller-memory", &o.controller_resources.memory),
        ("gateway-cpu", &o.gateway_resources.cpu),
        ("gateway-memory", &o.gateway_resources.memory),
    ];
    for (option, q) in quantities {
        if !is_quantity(q) {
            return Err(invalid(
                option,
                q,
                "is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 10Gi)",
            ));
        }
    }
    for (option, address) in [
        ("server-advertise", &o.server_advertise),
        ("gateway-address", &o.gateway_address),
    ] {
        let ok = address.is_empty()
            || address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
        if !ok {
            return Err(invalid(option, address, "must be HOST:PORT"));
        }
    }
    if o.server_replicas > 1
        && !o.server_advertise.is_empty()
        && !o.server_advertise.contains("{ordinal}")
    {
        return Err(invalid(
            "server-advertise",
            &o.server_advertise,
            "must contain {ordinal} when there is more than one server",
        ));
    }
    let tokens = o
        .join
        .servers
        .iter()
        .chain(&o.join.agent)
        .chain(&o.join.node)
        .chain(&o.join.gateway);
    for token in tokens {
        if !token.starts_with("flotilla-join.") || token.contains(char::is_whitespace) {
            return Err(invalid(
                "join",
                "<token>",
                "is not a join token (they start with \"flotilla-join.\"; see `flotilla federation token`)",
            ));
        }
    }
    if !o.istio_networks.is_empty() && !o.istio {
        return Err(invalid(
            "istio-network",
            &o.istio_networks[0],
            "needs --istio",
        ));
    }
    for n in &o.istio_networks {
        let ok = n.split_once('=').is_some_and(|(cluster, network)| {
            validate_name(ObjectKind::Cluster, cluster, "istio-network").is_ok()
                && is_dns_subdomain(network)
        });
        if !ok {
            return Err(invalid(
                "istio-network",
                n,
                "must be CLUSTER=NETWORK (a cluster name and an Istio network name)",
            ));
        }
    }
    if !o.init && o.join.servers.is_empty() {
        return Err(InstallError::Bootstrap);
    }
    let joining = o.join.servers.len() + usize::from(o.init);
    if joining > o.server_replicas as usize {
        return Err(invalid(
            "join",
            &format!("{} server tokens", o.join.servers.len()),
            format!(
                "more server tokens than server pods ({}); one token per joining server",
                o.server_replicas
            ),
        ));
    }
    Ok(())
}

struct Ctx<'a> {
    o: &'a InstallOptions,
}

impl Ctx<'_> {
    fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "flotilla",
            "app.kubernetes.io/part-of": "flotilla",
            "app.kubernetes.io/component": component,
            MANAGED_BY.0: MANAGED_BY.1,
        })
    }

    fn selector(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "flotilla",
            "app.kubernetes.io/component": component,
        })
    }

    fn meta(&self, name: &str, component: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.o.namespace,
            "labels": self.labels(component),
        })
    }

    fn object(
        &self,
        api_version: &str,
        kind: &str,
        name: &str,
        component: &str,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
        m.insert("metadata".into(), self.meta(name, component));
        m
    }

    fn servers(&self) -> String {
        (0..self.o.server_replicas)
            .map(|i| self.server_address(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Agents and gateways in this cluster reach servers by their stable in-cluster
    /// names; other clusters by `server_advertise`.
    fn server_address(&self, ordinal: u32) -> String {
        format!(
            "flotilla-server-{ordinal}.flotilla-server.{}.svc.cluster.local:{SERVER_PORT}",
            self.o.namespace
        )
    }
}

fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn resources(r: &Resources) -> Value {
    json!({
        "requests": { "cpu": r.cpu, "memory": r.memory },
        "limits": { "memory": r.memory },
    })
}

fn env_from_cluster() -> Value {
    json!([{ "configMapRef": { "name": "flotilla-cluster" } }])
}

/// Where a pod finds its component's join Secret, if there is one. The volume is
/// optional so the same pods start whether or not tokens were given (a restarted
/// member needs none: its identity is on its volume).
const JOIN_DIR: &str = "/etc/flotilla/join";
/// Where the gateway reads its approved external endpoints (`--external-endpoints-secret`).
const EXTERNAL_DIR: &str = "/etc/flotilla/external";

/// Whose join tokens a Secret holds. One Secret per component, mounted only into
/// that component's pods: a server token, which makes a Raft voter, never leaves
/// the server pods, and a compromised GPU node holds only the node token, which
/// admits node identities (each node once) and nothing more.
#[derive(Debug, Clone, Copy)]
enum Joiner {
    Server,
    /// The controller: it joins as the cluster's agent.
    Controller,
    /// The node agents: each joins as its own node.
    Node,
    Gateway,
}

impl Joiner {
    fn secret(self) -> &'static str {
        match self {
            Joiner::Server => "flotilla-join-server",
            Joiner::Controller => "flotilla-join-controller",
            Joiner::Node => "flotilla-join-node",
            Joiner::Gateway => "flotilla-join-gateway",
        }
    }
}

fn join_volume(joiner: Joiner) -> Value {
    json!({
        "name": "join",
        "secret": { "secretName": joiner.secret(), "optional": true, "defaultMode": 0o440 },
    })
}

/// The server pod's start: resume, join, or start the federation. A shell script
/// because the choice depends on the pod's ordinal and its volume, known only there.
fn server_script() -> String {
    format!(
        r#"set -eu
data=/var/lib/flotilla/data
mkdir -p "$data"
ordinal="${{POD_NAME##*-}}"
advertise="$(printf '%s' "$FLOTILLA_SERVER_ADVERTISE" | sed "s/{{ordinal}}/$ordinal/g")"
if [ -z "$advertise" ]; then
  advertise="$POD_NAME.flotilla-server.$POD_NAMESPACE.svc.cluster.local:{SERVER_PORT}"
fi
set -- server --data-dir="$data" --listen=0.0.0.0:{SERVER_PORT} --advertise="$advertise"
if [ -f "$data/registry.redb" ]; then
  exec flotilla "$@"
fi
token="{JOIN_DIR}/server-$ordinal"
if [ -s "$token" ]; then
  exec flotilla "$@" --join="$(cat "$token")"
fi
if [ "$FLOTILLA_INIT" = true ] && [ "$ordinal" = 0 ]; then
  if [ ! -f "$data/pki/server.pem" ]; then
    flotilla federation init --federation="$FLOTILLA_FEDERATION" --cluster="$FLOTILLA_CLUSTER" --data-dir="$data" --config-dir=/var/lib/flotilla/admin
  fi
  exec flotilla "$@" --init --federation="$FLOTILLA_FEDERATION"
fi
echo "flotilla-server-$ordinal: $data holds no registry and Secret flotilla-join-server has no key server-$ordinal; make a token where the CA is: flotilla federation token --cluster $FLOTILLA_CLUSTER --role server --server HOST:PORT" >&2
exit 1
"#
    )
}

/// Runs `flotilla ARGS…`, adding `--join=<token>` when the Secret holds one for this
/// process. The token is read from the mounted Secret at start, never written into
/// the manifest.
fn with_join(key: &str, args: Vec<String>) -> (Value, Value) {
    let script = format!(
        r#"token="{JOIN_DIR}/{key}"; if [ -s "$token" ]; then exec flotilla "$@" --join="$(cat "$token")"; fi; exec flotilla "$@""#
    );
    (json!(["/bin/sh", "-c", script, "flotilla"]), json!(args))
}

/// Renders the manifests for one cluster, in the order `kubectl apply` needs them
/// (namespace first, workloads after what they mount).
pub fn render(o: &InstallOptions) -> Result<Vec<Value>, InstallError> {
    check(o)?;
    let c = Ctx { o };
    let mut out = vec![c.namespace()];
    out.extend(c.service_accounts());
    out.extend(c.controller_role());
    out.extend(c.controller_admission_policy());
    out.extend(c.ambient_gateways());
    out.push(c.cluster_config());
    out.extend(c.join_secrets());
    out.extend(c.server());
    out.push(c.agents());
    out.extend(c.controller());
    out.extend(c.gateway());
    out.push(c.server_disruption_budget());
    out.extend(c.network_policies());
    Ok(out)
}

/// Cluster-scoped objects have no namespace.
fn strip_namespace(object: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
        meta.remove("namespace");
    }
}

fn tcp_probe(port: &str, period: u32, failures: u32) -> Value {
    json!({ "tcpSocket": { "port": port }, "periodSeconds": period, "failureThreshold": failures })
}

fn http_probe(path: &str, port: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": { "path": path, "port": port },
        "periodSeconds": period,
        "failureThreshold": failures,
    })
}

/// Ingress on one named port from anywhere.
fn from_anywhere(port: &str) -> Value {
    json!({ "ports": [{ "port": port, "protocol": "TCP" }] })
}

/// Shared pieces: the namespace, the accounts, the controller's Role, the cluster's
/// ConfigMap and the join Secret, and the builders the components use.
impl Ctx<'_> {
    /// An object with a `spec`.
    fn with_spec(
        &self,
        api_version: &str,
        kind: &str,
        name: &str,
        component: &str,
        spec: Value,
    ) -> Value {
        let mut m = self.object(api_version, kind, name, component);
        m.insert("spec".into(), spec);
        Value::Object(m)
    }

    fn namespace(&self) -> Value {
        let mut labels = self.labels("namespace");
        if self.ambient() {
            // Every pod of the namespace (the replicas) joins the ambient mesh.
            labels["istio.io/dataplane-mode"] = "ambient".into();
        }
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": self.o.namespace, "labels": labels },
        })
    }

    fn ambient(&self) -> bool {
        self.o.istio && self.o.istio_mode == IstioMode::Ambient
    }

    /// This cluster's Istio network: as `--istio-network` names it, else the
    /// cluster's name (the controller's rule too).
    fn istio_network(&self) -> String {
        self.o
            .istio_networks
            .iter()
            .find_map(|n| {
                let (cluster, network) = n.split_once('=')?;
                (cluster == self.o.cluster).then(|| network.to_owned())
            })
            .unwrap_or_else(|| self.o.cluster.clone())
    }

    /// Ambient multicluster, as Istio's guide installs it: the namespace's
    /// waypoint (through which each model's global Service is served, so that the
    /// controller's DestinationRules apply), its Service global too; and this
    /// cluster's ambient east-west gateway in `istio-system`, on its network. A
    /// mesh installed with its own east-west gateway does not need the second.
    fn ambient_gateways(&self) -> Vec<Value> {
        if !self.ambient() {
            return Vec::new();
        }
        let mut waypoint = self.object(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            WAYPOINT,
            "waypoint",
        );
        if let Some(labels) = waypoint
            .get_mut("metadata")
            .and_then(|m| m.get_mut("labels"))
            .and_then(Value::as_object_mut)
        {
            labels.insert("istio.io/waypoint-for".into(), "service".into());
        }
        waypoint.insert(
            "spec".into(),
            json!({
                "gatewayClassName": "istio-waypoint",
                "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE" }],
                // Carried to the waypoint's Service: global, like the models'.
                "infrastructure": { "labels": { GLOBAL_LABEL: "true" } },
            }),
        );
        let mut east_west = self.object(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "istio-eastwestgateway",
            "east-west",
        );
        if let Some(Value::Object(meta)) = east_west.get_mut("metadata") {
            meta.insert("namespace".into(), "istio-system".into());
            if let Some(Value::Object(labels)) = meta.get_mut("labels") {
                labels.insert(
                    "topology.istio.io/network".into(),
                    self.istio_network().into(),
                );
            }
        }
        east_west.insert(
            "spec".into(),
            json!({
                "gatewayClassName": "istio-east-west",
                "listeners": [{
                    "name": "mesh",
                    "port": 15008,
                    "protocol": "HBONE",
                    "tls": {
                        "mode": "Terminate",
                        "options": { "gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL" },
                    },
                }],
            }),
        );
        vec![Value::Object(waypoint), Value::Object(east_west)]
    }

    /// One account per component. Only the controller calls the Kubernetes API, so
    /// only its account gets a token.
    fn service_accounts(&self) -> Vec<Value> {
        [
            ("server", false),
            ("agent", false),
            ("controller", true),
            ("gateway", false),
        ]
        .into_iter()
        .map(|(component, automount)| {
            let mut sa = self.object(
                "v1",
                "ServiceAccount",
                &format!("flotilla-{component}"),
                component,
            );
            sa.insert("automountServiceAccountToken".into(), automount.into());
            Value::Object(sa)
        })
        .collect()
    }

    /// The Istio kinds the controller writes: ambient needs only DestinationRules
    /// (a model's global Service is a core Service).
    fn istio_kinds(&self) -> Value {
        match self.o.istio_mode {
            IstioMode::Sidecar => json!(["serviceentries", "workloadentries", "destinationrules"]),
            IstioMode::Ambient => json!(["destinationrules"]),
        }
    }

    /// The controller's Role and its binding to the controller's account.
    fn controller_role(&self) -> [Value; 2] {
        // What the controller does with replicas: watch and list its objects by label,
        // read one by name before taking it over, server-side apply, delete. An apply
        // is a PATCH, but one that creates the object is authorized as `create` too
        // (a real API server refuses it with `patch` alone). No `update`. Which of
        // the namespace's objects it may write is the admission policy's business.
        let verbs = json!(["get", "list", "watch", "create", "patch", "delete"]);
        let mut rules = vec![
            json!({ "apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs }),
            json!({ "apiGroups": [""], "resources": ["services"], "verbs": verbs }),
            // A draining replica is Gone only once its pod is (a Pod watch).
            json!({ "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] }),
        ];
        if self.o.istio {
            rules.push(json!({
                "apiGroups": ["networking.istio.io"],
                "resources": self.istio_kinds(),
                "verbs": verbs,
            }));
        }
        let mut role = self.object(
            "rbac.authorization.k8s.io/v1",
            "Role",
            "flotilla-controller",
            "controller",
        );
        role.insert("rules".into(), Value::Array(rules));
        let mut binding = self.object(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "flotilla-controller",
            "controller",
        );
        binding.insert(
            "roleRef".into(),
            json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flotilla-controller" }),
        );
        binding.insert(
            "subjects".into(),
            json!([{ "kind": "ServiceAccount", "name": "flotilla-controller", "namespace": self.o.namespace }]),
        );
        [Value::Object(role), Value::Object(binding)]
    }

    /// What RBAC cannot say: the controller may patch and delete Deployments and
    /// Services in its namespace, but only those it made. A ValidatingAdmissionPolicy
    /// refuses any write by the controller's account to an object (before or after
    /// the write) without `app.kubernetes.io/managed-by: flotilla` and this
    /// cluster's `flotilla.dev/cluster` label. Cluster-scoped, so named after the
    /// namespace: two installs on one cluster each get their own.
    fn controller_admission_policy(&self) -> [Value; 2] {
        let o = self.o;
        let name = format!("flotilla-controller.{}", o.namespace);
        let account = format!("system:serviceaccount:{}:flotilla-controller", o.namespace);
        let operations = json!(["CREATE", "UPDATE", "DELETE"]);
        let mut resources = vec![
            json!({ "apiGroups": ["apps"], "apiVersions": ["v1"], "operations": operations, "resources": ["deployments"] }),
            json!({ "apiGroups": [""], "apiVersions": ["v1"], "operations": operations, "resources": ["services"] }),
        ];
        if o.istio {
            resources.push(json!({
                "apiGroups": ["networking.istio.io"], "apiVersions": ["*"], "operations": operations,
                "resources": self.istio_kinds(),
            }));
        }
        let ours = |object: &str| {
            format!(
                "{object} == null || (has({object}.metadata.labels) \
                 && '{managed}' in {object}.metadata.labels && {object}.metadata.labels['{managed}'] == '{flotilla}' \
                 && '{cluster_label}' in {object}.metadata.labels && {object}.metadata.labels['{cluster_label}'] == '{cluster}')",
                managed = MANAGED_BY.0,
                flotilla = MANAGED_BY.1,
                cluster_label = CLUSTER_LABEL,
                cluster = o.cluster,
            )
        };
        let labels = format!(
            "{}={} and {CLUSTER_LABEL}={}",
            MANAGED_BY.0, MANAGED_BY.1, o.cluster
        );
        let mut policy = self.object(
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            &name,
            "controller",
        );
        strip_namespace(&mut policy);
        policy.insert(
            "spec".into(),
            json!({
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": resources },
                "matchConditions": [{
                    "name": "the-flotilla-controller",
                    "expression": format!("request.userInfo.username == '{account}'"),
                }],
                "validations": [
                    {
                        "expression": ours("oldObject"),
                        "message": format!("the flotilla controller changes and deletes only objects it made ({labels})"),
                        "reason": "Forbidden",
                    },
                    {
                        "expression": ours("object"),
                        "message": format!("the flotilla controller writes only objects labelled {labels}"),
                        "reason": "Forbidden",
                    },
                ],
            }),
        );
        let mut binding = self.object(
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicyBinding",
            &name,
            "controller",
        );
        strip_namespace(&mut binding);
        binding.insert(
            "spec".into(),
            json!({ "policyName": name, "validationActions": ["Deny"] }),
        );
        [Value::Object(policy), Value::Object(binding)]
    }

    /// The ConfigMap `flotilla-cluster`: every per-cluster value, in one place for
    /// overlays.
    fn cluster_config(&self) -> Value {
        let o = self.o;
        let mut config = self.object("v1", "ConfigMap", "flotilla-cluster", "config");
        config.insert(
            "data".into(),
            json!({
                "FLOTILLA_CLUSTER": o.cluster,
                "FLOTILLA_REGION": o.region,
                "FLOTILLA_ZONE": o.zone,
                "FLOTILLA_FEDERATION": o.federation,
                "FLOTILLA_INIT": if o.init { "true" } else { "false" },
                "FLOTILLA_SERVERS": self.servers(),
                "FLOTILLA_SERVER_ADVERTISE": o.server_advertise,
                "FLOTILLA_GATEWAY_ADDRESS": o.gateway_address,
            }),
        );
        Value::Object(config)
    }

    /// One Secret per component that was given tokens (see [`Joiner`]).
    fn join_secrets(&self) -> Vec<Value> {
        let join = &self.o.join;
        // With --init, server 0 starts the federation; tokens are for the others.
        let servers = join.servers.iter().enumerate().map(|(i, t)| {
            let ordinal = i + usize::from(self.o.init);
            (format!("server-{ordinal}"), t.clone())
        });
        let agent = join.agent.iter().map(|t| ("agent".to_owned(), t.clone()));
        let node = join.node.iter().map(|t| ("node".to_owned(), t.clone()));
        let gateway = join
            .gateway
            .iter()
            .map(|t| ("gateway".to_owned(), t.clone()));
        [
            (Joiner::Server, servers.collect::<Vec<_>>()),
            (Joiner::Controller, agent.collect()),
            (Joiner::Node, node.collect()),
            (Joiner::Gateway, gateway.collect()),
        ]
        .into_iter()
        .filter(|(_, tokens)| !tokens.is_empty())
        .map(|(joiner, tokens)| {
            let data: Map<String, Value> = tokens.into_iter().map(|(k, t)| (k, t.into())).collect();
            let mut secret = self.object("v1", "Secret", joiner.secret(), "config");
            secret.insert("type".into(), "Opaque".into());
            secret.insert("stringData".into(), Value::Object(data));
            Value::Object(secret)
        })
        .collect()
    }

    /// A ReadWriteOnce claim's spec, in the configured storage class.
    fn claim_spec(&self, size: &str) -> Value {
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": size } },
        });
        if let Some(sc) = &self.o.storage_class {
            spec["storageClassName"] = sc.clone().into();
        }
        spec
    }

    /// The one root step of a pod: the kubelet creates host paths and fresh volumes
    /// root-owned, and the identity below must be writable by the process.
    fn chown_state(&self, dirs: &str) -> Value {
        json!({
            "name": "state-dir",
            "image": self.o.image,
            "command": ["/bin/sh", "-c", format!("mkdir -p {dirs} && chown {RUN_AS}:{RUN_AS} {dirs}")],
            "resources": resources(&Resources::new("10m", "32Mi")),
            "securityContext": {
                "runAsNonRoot": false,
                "runAsUser": 0,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": { "drop": ["ALL"], "add": ["CHOWN"] },
            },
            "volumeMounts": [{ "name": "state", "mountPath": "/var/lib/flotilla" }],
        })
    }

    // The controller and the gateway keep their identity on a small volume, so a
    // restarted pod needs no new token. One pod each, replaced with Recreate: two
    // pods cannot share a ReadWriteOnce volume.

    fn state_claim(&self, name: &str, component: &str) -> Value {
        self.with_spec(
            "v1",
            "PersistentVolumeClaim",
            name,
            component,
            self.claim_spec(STATE_VOLUME_SIZE),
        )
    }

    fn single_pod(&self, name: &str, component: &str, spec: Value) -> Value {
        self.with_spec(
            "apps/v1",
            "Deployment",
            name,
            component,
            json!({
                "replicas": 1,
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": self.selector(component) },
                "template": { "metadata": { "labels": self.labels(component) }, "spec": spec },
            }),
        )
    }
}

/// The server: a headless Service, a LoadBalancer per pod when other clusters
/// reach the servers, and the StatefulSet.
impl Ctx<'_> {
    fn server(&self) -> Vec<Value> {
        let mut out = vec![self.server_headless_service()];
        out.extend(self.server_pod_services());
        out.push(self.server_statefulset());
        out
    }

    fn server_headless_service(&self) -> Value {
        self.with_spec(
            "v1",
            "Service",
            "flotilla-server",
            "server",
            json!({
                "clusterIP": "None",
                // Raft members must find each other before any of them is ready.
                "publishNotReadyAddresses": true,
                "selector": self.selector("server"),
                "ports": [{ "name": "grpc", "port": SERVER_PORT, "targetPort": "grpc", "protocol": "TCP" }],
            }),
        )
    }

    /// With `server_advertise`, each server pod is reachable through its own load
    /// balancer.
    fn server_pod_services(&self) -> Vec<Value> {
        if self.o.server_advertise.is_empty() {
            return Vec::new();
        }
        (0..self.o.server_replicas)
            .map(|i| {
                let pod = format!("flotilla-server-{i}");
                self.with_spec(
                    "v1",
                    "Service",
                    &pod,
                    "server",
                    json!({
                        "type": "LoadBalancer",
                        "publishNotReadyAddresses": true,
                        "selector": { "statefulset.kubernetes.io/pod-name": pod },
                        "ports": [{ "name": "grpc", "port": SERVER_PORT, "targetPort": "grpc", "protocol": "TCP" }],
                    }),
                )
            })
            .collect()
    }

    fn server_statefulset(&self) -> Value {
        self.with_spec(
            "apps/v1",
            "StatefulSet",
            "flotilla-server",
            "server",
            json!({
                "serviceName": "flotilla-server",
                "replicas": self.o.server_replicas,
                // Server 0 must be up before the others can join through it.
                "podManagementPolicy": "OrderedReady",
                "selector": { "matchLabels": self.selector("server") },
                "template": {
                    "metadata": { "labels": self.labels("server") },
                    "spec": {
                        "serviceAccountName": "flotilla-server",
                        "automountServiceAccountToken": false,
                        "securityContext": pod_security(),
                        "terminationGracePeriodSeconds": 30,
                        "containers": [self.server_container()],
                        "volumes": [join_volume(Joiner::Server)],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": { "name": "data", "labels": self.labels("server") },
                    "spec": self.claim_spec(&self.o.storage_size),
                }],
            }),
        )
    }

    fn server_container(&self) -> Value {
        json!({
            "name": "server",
            "image": self.o.image,
            "command": ["/bin/sh", "-c", server_script()],
            "envFrom": env_from_cluster(),
            "env": [
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
            ],
            "ports": [{ "name": "grpc", "containerPort": SERVER_PORT, "protocol": "TCP" }],
            // TCP, not gRPC health: kubelet's gRPC probe cannot present a
            // client certificate to an mTLS-only server.
            "startupProbe": tcp_probe("grpc", 5, 60),
            "readinessProbe": tcp_probe("grpc", 5, 3),
            "livenessProbe": tcp_probe("grpc", 10, 6),
            "resources": resources(&self.o.server_resources),
            "securityContext": container_security(),
            "volumeMounts": [
                { "name": "data", "mountPath": "/var/lib/flotilla" },
                { "name": "join", "mountPath": JOIN_DIR, "readOnly": true },
            ],
        })
    }
}

/// The agents: a DaemonSet, one pod per GPU node, each reporting its own node.
impl Ctx<'_> {
    fn agents(&self) -> Value {
        self.with_spec(
            "apps/v1",
            "DaemonSet",
            "flotilla-agent",
            "agent",
            json!({
                "selector": { "matchLabels": self.selector("agent") },
                "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "template": { "metadata": { "labels": self.labels("agent") }, "spec": self.agent_pod() },
            }),
        )
    }

    fn agent_pod(&self) -> Value {
        let mut spec = json!({
            "serviceAccountName": "flotilla-agent",
            "automountServiceAccountToken": false,
            "securityContext": pod_security(),
            "terminationGracePeriodSeconds": 10,
            // Nodes NVIDIA's GPU feature discovery found a GPU on.
            "nodeSelector": { GPU_PRESENT_LABEL: "true" },
            "tolerations": [
                { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
            ],
            "initContainers": [self.chown_state("/var/lib/flotilla/agent")],
            "containers": [self.agent_container()],
            "volumes": [
                // The identity outlives the pod: the join token it came from may be spent.
                { "name": "state", "hostPath": { "path": format!("/var/lib/flotilla/{}", self.o.namespace), "type": "DirectoryOrCreate" } },
                join_volume(Joiner::Node),
            ],
        });
        if let Some(rc) = &self.o.runtime_class {
            spec["runtimeClassName"] = rc.clone().into();
        }
        spec
    }

    fn agent_container(&self) -> Value {
        let (command, args) = with_join(
            "node",
            vec![
                "agent".into(),
                "--cluster=$(FLOTILLA_CLUSTER)".into(),
                "--region=$(FLOTILLA_REGION)".into(),
                "--zone=$(FLOTILLA_ZONE)".into(),
                "--gateway-address=$(FLOTILLA_GATEWAY_ADDRESS)".into(),
                "--servers=$(FLOTILLA_SERVERS)".into(),
                "--gpu-source=nvml".into(),
                "--node=$(NODE_NAME)".into(),
                "--report-scope=node".into(),
                "--materializer=none".into(),
                "--state-dir=/var/lib/flotilla/agent".into(),
                format!("--admin-listen=0.0.0.0:{AGENT_ADMIN_PORT}"),
            ],
        );
        json!({
            "name": "agent",
            "image": self.o.image,
            "command": command,
            "args": args,
            "envFrom": env_from_cluster(),
            "env": [
                { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                // The NVIDIA runtime mounts the host's driver (libnvidia-ml.so.1)
                // and every GPU of the node into this container, to read, not to use.
                { "name": "NVIDIA_VISIBLE_DEVICES", "value": "all" },
                { "name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility" },
            ],
            "ports": [{ "name": "agent-admin", "containerPort": AGENT_ADMIN_PORT, "protocol": "TCP" }],
            "startupProbe": http_probe("/health", "agent-admin", 5, 60),
            "readinessProbe": http_probe("/health", "agent-admin", 10, 3),
            "livenessProbe": http_probe("/health", "agent-admin", 10, 6),
            "resources": resources(&self.o.agent_resources),
            "securityContext": container_security(),
            "volumeMounts": [
                { "name": "state", "mountPath": "/var/lib/flotilla" },
                { "name": "join", "mountPath": JOIN_DIR, "readOnly": true },
            ],
        })
    }
}

/// The controller: replicas as Deployments and Services (and Istio's objects).
impl Ctx<'_> {
    fn controller(&self) -> [Value; 2] {
        [
            self.state_claim("flotilla-controller-state", "controller"),
            self.single_pod("flotilla-controller", "controller", self.controller_pod()),
        ]
    }

    fn controller_pod(&self) -> Value {
        json!({
            "serviceAccountName": "flotilla-controller",
            "automountServiceAccountToken": true,
            "securityContext": pod_security(),
            "terminationGracePeriodSeconds": 30,
            "initContainers": [self.chown_state("/var/lib/flotilla/controller")],
            "containers": [self.controller_container()],
            "volumes": [
                { "name": "state", "persistentVolumeClaim": { "claimName": "flotilla-controller-state" } },
                join_volume(Joiner::Controller),
            ],
        })
    }

    fn controller_container(&self) -> Value {
        let (command, args) = with_join("agent", self.controller_args());
        json!({
            "name": "controller",
            "image": self.o.image,
            "command": command,
            "args": args,
            "envFrom": env_from_cluster(),
            "ports": [{ "name": "admin", "containerPort": CONTROLLER_ADMIN_PORT, "protocol": "TCP" }],
            "startupProbe": http_probe("/health", "admin", 5, 60),
            "readinessProbe": http_probe("/health", "admin", 10, 3),
            "livenessProbe": http_probe("/health", "admin", 10, 6),
            "resources": resources(&self.o.controller_resources),
            "securityContext": container_security(),
            "volumeMounts": [
                { "name": "state", "mountPath": "/var/lib/flotilla" },
                { "name": "join", "mountPath": JOIN_DIR, "readOnly": true },
            ],
        })
    }

    fn controller_args(&self) -> Vec<String> {
        let o = self.o;
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--cluster=$(FLOTILLA_CLUSTER)".into(),
            "--servers=$(FLOTILLA_SERVERS)".into(),
            format!("--namespace={}", o.namespace),
            "--state-dir=/var/lib/flotilla/controller".into(),
            format!("--admin-listen=0.0.0.0:{CONTROLLER_ADMIN_PORT}"),
        ];
        // Replicas of workloads without a container run `flotilla model` from this image;
        // the controller's default is its own version's image, which is the default here.
        if o.image != InstallOptions::default_image() {
            args.push(format!("--replica-image={}", o.image));
        }
        if o.istio {
            args.push("--istio".into());
            if o.istio_mode != IstioMode::Sidecar {
                args.push(format!("--istio-mode={}", o.istio_mode.as_str()));
            }
            args.extend(
                o.istio_networks
                    .iter()
                    .map(|n| format!("--istio-network={n}")),
            );
        }
        args
    }
}

/// The east-west gateway: local replicas are the controller's Services, found
/// through the registry, so the gateway needs no node and no agent beside it.
impl Ctx<'_> {
    fn gateway(&self) -> [Value; 4] {
        [
            self.state_claim("flotilla-gateway-state", "gateway"),
            self.single_pod("flotilla-gateway", "gateway", self.gateway_pod()),
            self.gateway_service(
                "flotilla-gateway",
                json!({
                    "type": "LoadBalancer",
                    "selector": self.selector("gateway"),
                    "ports": [{ "name": "east-west", "port": EAST_WEST_PORT, "targetPort": "east-west", "protocol": "TCP" }],
                }),
            ),
            self.gateway_service(
                "flotilla-inference",
                json!({
                    "type": "ClusterIP",
                    "selector": self.selector("gateway"),
                    "ports": [{ "name": "http", "port": INFERENCE_PORT, "targetPort": "http", "protocol": "TCP" }],
                }),
            ),
        ]
    }

    fn gateway_service(&self, name: &str, spec: Value) -> Value {
        self.with_spec("v1", "Service", name, "gateway", spec)
    }

    fn gateway_pod(&self) -> Value {
        let mut volumes = vec![
            json!({ "name": "state", "persistentVolumeClaim": { "claimName": "flotilla-gateway-state" } }),
            join_volume(Joiner::Gateway),
        ];
        if let Some(secret) = &self.o.external_endpoints_secret {
            // Not optional: a gateway told to use endpoints it cannot read does
            // not start, and the pod's events say why.
            volumes.push(json!({
                "name": "external",
                "secret": { "secretName": secret, "defaultMode": 0o440 },
            }));
        }
        json!({
            "serviceAccountName": "flotilla-gateway",
            "automountServiceAccountToken": false,
            "securityContext": pod_security(),
            // In-flight requests and streams finish before the gateway exits.
            "terminationGracePeriodSeconds": 60,
            "initContainers": [self.chown_state("/var/lib/flotilla/gateway")],
            "containers": [self.gateway_container()],
            "volumes": volumes,
        })
    }

    fn gateway_container(&self) -> Value {
        let mut args = vec![
            "gateway".into(),
            "--cluster=$(FLOTILLA_CLUSTER)".into(),
            "--federation=$(FLOTILLA_FEDERATION)".into(),
            "--servers=$(FLOTILLA_SERVERS)".into(),
            "--state-dir=/var/lib/flotilla/gateway".into(),
            format!("--listen=0.0.0.0:{INFERENCE_PORT}"),
            format!("--east-west-listen=0.0.0.0:{EAST_WEST_PORT}"),
            format!("--admin-listen=0.0.0.0:{GATEWAY_ADMIN_PORT}"),
        ];
        if !self.o.open {
            args.push("--registry-governance".into());
        }
        let mut mounts = vec![
            json!({ "name": "state", "mountPath": "/var/lib/flotilla" }),
            json!({ "name": "join", "mountPath": JOIN_DIR, "readOnly": true }),
        ];
        if self.o.external_endpoints_secret.is_some() {
            args.push(format!(
                "--external-endpoints={EXTERNAL_DIR}/endpoints.toml"
            ));
            mounts.push(json!({ "name": "external", "mountPath": EXTERNAL_DIR, "readOnly": true }));
        }
        let (command, args) = with_join("gateway", args);
        json!({
            "name": "gateway",
            "image": self.o.image,
            "command": command,
            "args": args,
            "envFrom": env_from_cluster(),
            "ports": [
                { "name": "http", "containerPort": INFERENCE_PORT, "protocol": "TCP" },
                { "name": "east-west", "containerPort": EAST_WEST_PORT, "protocol": "TCP" },
                { "name": "gw-admin", "containerPort": GATEWAY_ADMIN_PORT, "protocol": "TCP" },
            ],
            "startupProbe": http_probe("/healthz", "gw-admin", 5, 60),
            "readinessProbe": http_probe("/healthz", "gw-admin", 5, 3),
            "livenessProbe": http_probe("/healthz", "gw-admin", 10, 6),
            "resources": resources(&self.o.gateway_resources),
            "securityContext": container_security(),
            "volumeMounts": mounts,
        })
    }
}

/// Policies: the servers' disruption budget and the network policies.
impl Ctx<'_> {
    /// Keeps a Raft majority through voluntary evictions. (An eviction ignores
    /// DaemonSet pods, so the agents need no budget; the gateway and the controller
    /// are single pods that a budget could only block.)
    fn server_disruption_budget(&self) -> Value {
        let replicas = self.o.server_replicas;
        let mut spec = if replicas >= 3 {
            json!({ "minAvailable": replicas / 2 + 1 })
        } else {
            // One or two servers have no spare member; blocking every drain would only
            // stall node maintenance, so allow one out.
            json!({ "maxUnavailable": 1 })
        };
        spec["selector"] = json!({ "matchLabels": self.selector("server") });
        self.with_spec(
            "policy/v1",
            "PodDisruptionBudget",
            "flotilla-server",
            "server",
            spec,
        )
    }

    /// Ingress only where a peer must reach. Admin ports are left to the node
    /// (kubelet probes); the agents and the controller take no traffic.
    fn network_policies(&self) -> [Value; 4] {
        [
            // Other clusters' servers and agents come through load balancers from
            // addresses not known here; mTLS decides who may speak.
            self.network_policy("server", json!([from_anywhere("grpc")])),
            self.network_policy(
                "gateway",
                json!([
                    from_anywhere("east-west"),
                    { "from": [{ "namespaceSelector": {} }], "ports": [{ "port": "http", "protocol": "TCP" }] },
                ]),
            ),
            self.network_policy("agent", json!([])),
            self.network_policy("controller", json!([])),
        ]
    }

    /// No ingress rules (`ingress` left out) denies all ingress. An empty list
    /// would mean the same, but the API server drops it, so every re-apply would
    /// see a change and bump the object's generation.
    fn network_policy(&self, component: &str, ingress: Value) -> Value {
        let mut spec = json!({
            "podSelector": { "matchLabels": self.selector(component) },
            "policyTypes": ["Ingress"],
        });
        if ingress.as_array().is_some_and(|rules| !rules.is_empty()) {
            spec["ingress"] = ingress;
        }
        self.with_spec(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &format!("flotilla-{component}"),
            component,
            spec,
        )
    }
}
