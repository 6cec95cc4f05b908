//! Flotilla on real Kubernetes control planes: `flotilla install` applied to a real
//! API server, the controller running with its own ServiceAccount's token, and a
//! replica moving between two clusters, seen by both API servers.
//!
//! The control planes (etcd, kube-apiserver with `Node,RBAC`, controller-manager,
//! scheduler, kwok for the nodes) come from `flotilla_testkit::kube`, which builds
//! pinned versions from the Go module proxy once (`tests/kube/setup.sh`, cached
//! outside the clone). The Flotilla side runs as host processes of this build: a
//! server, one node agent per GPU node (simulated GPUs named like the Kubernetes
//! nodes) and one controller per cluster; no container runs.

mod support;

use flotilla_testkit::kube::{GpuNode, KubeCluster, gateway_api_crds, kube_binaries};
use flotilla_testkit::{TestResult, bounded, eventually, free_addr};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Child, flotilla, text};
use tokio::time::Instant;

const NAMESPACE: &str = "flotilla";
const H100: &str = "NVIDIA H100 80GB HBM3";
const A100: &str = "NVIDIA A100-SXM4-80GB";
const INSTALL_CLUSTERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/install-clusters.sh"
);
const ISTIO_CRDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/schemas/istio-crds.yaml"
);

fn succeeded(what: &str, out: &Output) -> TestResult<String> {
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
        .into())
    }
}

/// `flotilla install` for `cluster`, as YAML.
fn install(cluster: &str, region: &str, extra: &[&str]) -> TestResult<String> {
    let mut args = vec![
        "install",
        "--cluster",
        cluster,
        "--region",
        region,
        "--init",
    ];
    args.extend_from_slice(extra);
    succeeded("flotilla install", &flotilla(&args))
}

/// Applies `manifests` the way the walk-through does. A server-side dry run of a
/// namespaced object fails while its namespace does not exist, so the namespace
/// (the first document) is applied alone first; then the whole install is dry-run,
/// applied, and diffed, which must show nothing to change.
fn apply_install(kube: &KubeCluster, manifests: &str) -> TestResult {
    let apply = [
        "apply",
        "--server-side",
        "--field-manager=flotilla-install",
        "-f",
        "-",
    ];
    let namespace = manifests
        .split("\n---\n")
        .next()
        .ok_or("an empty install")?;
    assert!(
        namespace.contains("kind: Namespace"),
        "the namespace comes first"
    );
    succeeded(
        "kubectl apply (the namespace)",
        &kube.kubectl(&apply, Some(namespace.as_bytes()))?,
    )?;
    let dry = kube.kubectl(
        &[&apply[..], &["--dry-run=server"]].concat(),
        Some(manifests.as_bytes()),
    )?;
    let dry = succeeded("kubectl apply --server-side --dry-run=server", &dry)?;
    assert!(dry.contains("(server dry run)"), "{dry}");
    succeeded(
        "kubectl apply --server-side",
        &kube.kubectl(&apply, Some(manifests.as_bytes()))?,
    )?;
    let diff = kube.kubectl(
        &[
            "diff",
            "--server-side",
            "--field-manager=flotilla-install",
            "-f",
            "-",
        ],
        Some(manifests.as_bytes()),
    )?;
    assert!(
        diff.status.success(),
        "re-applying the install changes something:\n{}{}",
        text(&diff.stdout),
        text(&diff.stderr)
    );
    Ok(())
}

fn forbidden(result: Result<impl std::fmt::Debug, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden from the API server, got {other:?}"),
    }
}

/// The install applies cleanly, re-applying changes nothing, and each account can
/// do what its component needs and nothing more, as the real RBAC and admission
/// judge it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_applies_and_each_account_gets_only_what_it_needs() -> TestResult {
    bounded(Duration::from_secs(300), async {
        let kube = KubeCluster::start("c1").await?;
        let manifests = install("c1", "us-east", &[])?;
        apply_install(&kube, &manifests)?;

        // Someone else took a field over: the dry run refuses the install with a
        // 409 naming the field and its manager, before anything is applied.
        let theirs = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: flotilla-cluster\n  namespace: flotilla\ndata:\n  FLOTILLA_REGION: elsewhere\n";
        succeeded(
            "kubectl apply as someone else",
            &kube.kubectl(
                &["apply", "--server-side", "--field-manager=someone-else", "--force-conflicts", "-f", "-"],
                Some(theirs.as_bytes()),
            )?,
        )?;
        let refused = kube.kubectl(
            &["apply", "--server-side", "--field-manager=flotilla-install", "--dry-run=server", "-f", "-"],
            Some(manifests.as_bytes()),
        )?;
        let why = text(&refused.stderr);
        assert!(!refused.status.success(), "a conflicting install was accepted");
        assert!(
            why.contains("conflict") && why.contains("someone-else") && why.contains("FLOTILLA_REGION"),
            "{why}"
        );
        let region = kube.kubectl(
            &["get", "configmap", "flotilla-cluster", "-n", NAMESPACE, "-o", "jsonpath={.data.FLOTILLA_REGION}"],
            None,
        )?;
        assert_eq!(text(&region.stdout), "elsewhere", "the dry run changed nothing");

        let (_, controller) = kube
            .as_service_account(NAMESPACE, "flotilla-controller")
            .await?;
        let deployments: Api<Deployment> = Api::namespaced(controller.clone(), NAMESPACE);
        let pods: Api<Pod> = Api::namespaced(controller.clone(), NAMESPACE);
        deployments.list(&ListParams::default()).await?;
        pods.list(&ListParams::default()).await?;

        // What it needs: a server-side apply of a replica's Deployment creates it.
        let ours = deployment("chat-r1", Some("c1"));
        let apply = PatchParams::apply("flotilla").force();
        deployments
            .patch("chat-r1", &apply, &Patch::Apply(&ours))
            .await?;
        deployments
            .delete("chat-r1", &DeleteParams::default())
            .await?;

        // What it must not do.
        let secrets: Api<Secret> = Api::namespaced(controller.clone(), NAMESPACE);
        forbidden(
            secrets.get("flotilla-join-server").await,
            "the controller reads a join Secret",
        );
        forbidden(
            secrets.list(&ListParams::default()).await,
            "the controller lists Secrets",
        );
        let elsewhere: Api<Deployment> = Api::namespaced(controller.clone(), "default");
        forbidden(
            elsewhere
                .patch(
                    "chat-r1",
                    &apply,
                    &Patch::Apply(&deployment("chat-r1", Some("c1"))),
                )
                .await,
            "the controller writes in another namespace",
        );
        let admin = kube.admin().await?;
        let theirs: Api<Deployment> = Api::namespaced(admin, NAMESPACE);
        theirs
            .create(&PostParams::default(), &deployment("someone-elses", None))
            .await?;
        // The API server loads a new admission policy a moment after it is created.
        let dry_run = DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        };
        eventually("the admission policy to be in force", Duration::from_secs(30), || async {
            matches!(
                deployments.delete("someone-elses", &dry_run).await,
                Err(kube::Error::Api(s)) if s.code == 403
            )
            .then_some(())
        })
        .await?;
        forbidden(
            deployments
                .delete("someone-elses", &DeleteParams::default())
                .await,
            "the controller deletes a Deployment it did not make",
        );
        forbidden(
            deployments
                .patch(
                    "someone-elses",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": 0}})),
                )
                .await,
            "the controller scales a Deployment it did not make",
        );
        forbidden(
            deployments
                .patch(
                    "other-cluster",
                    &apply,
                    &Patch::Apply(&deployment("other-cluster", Some("c2"))),
                )
                .await,
            "the controller makes a Deployment labelled for another cluster",
        );

        // A controller whose account is refused, or whose kubeconfig points at
        // nothing, says what was refused or unreachable.
        let (gateway_config, _) = kube
            .as_service_account(NAMESPACE, "flotilla-gateway")
            .await?;
        let refused = controller_with(&gateway_config)?;
        let line = refused.wait_for("watch failed");
        assert!(
            line.contains("forbidden") && line.contains("flotilla-gateway"),
            "{line}"
        );
        let nowhere = kube.dir().join("nowhere.kubeconfig");
        let dead = free_addr()?;
        std::fs::write(
            &nowhere,
            std::fs::read_to_string(kube.admin_kubeconfig())?
                .replace(&kube.server, &format!("https://{dead}")),
        )?;
        let unreachable = controller_with(&nowhere)?;
        let line = unreachable.wait_for("watch failed");
        assert!(line.contains(&dead.to_string()), "{line}");

        // The agent and the gateway call no Kubernetes API: their accounts get nothing.
        for account in ["flotilla-agent", "flotilla-gateway", "flotilla-server"] {
            let (_, client) = kube.as_service_account(NAMESPACE, account).await?;
            let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
            forbidden(
                secrets.list(&ListParams::default()).await,
                &format!("{account} lists Secrets"),
            );
            let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
            forbidden(
                pods.list(&ListParams::default()).await,
                &format!("{account} lists pods"),
            );
            let deployments: Api<Deployment> = Api::namespaced(client, NAMESPACE);
            forbidden(
                deployments
                    .patch("chat-r1", &apply, &Patch::Apply(&ours))
                    .await,
                &format!("{account} applies a Deployment"),
            );
        }
        Ok(())
    })
    .await
}

/// `flotilla controller` for cluster c1 with `kubeconfig`, and no registry.
fn controller_with(kubeconfig: &Path) -> TestResult<Child> {
    Ok(Child::spawn_with_env(
        &[
            "controller",
            "--cluster",
            "c1",
            "--insecure",
            "--namespace",
            NAMESPACE,
            "--servers",
            &free_addr()?.to_string(),
            "--admin-listen",
            &free_addr()?.to_string(),
        ],
        &[("KUBECONFIG", path(kubeconfig))],
    ))
}

/// A minimal Deployment; labelled as a replica of `cluster`'s when given.
fn deployment(name: &str, cluster: Option<&str>) -> Deployment {
    let mut labels = json!({"app": name});
    if let Some(cluster) = cluster {
        labels = json!({
            "app": name,
            "app.kubernetes.io/managed-by": "flotilla",
            "flotilla.dev/cluster": cluster,
            "flotilla.dev/workload": "chat",
            "flotilla.dev/replica": "1",
        });
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "example.com/x:1"}]},
            },
        },
    }))
    .expect("a valid Deployment")
}

#[test]
fn install_refuses_bad_input_before_printing_anything() {
    let out = flotilla(&[
        "install",
        "--cluster",
        "Not_A_Label",
        "--region",
        "r",
        "--init",
    ]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing is printed: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("--cluster"),
        "{}",
        text(&out.stderr)
    );
}

/// A host-process federation of one server, with an admin identity.
struct Federation {
    dir: tempfile::TempDir,
    addr: String,
    _server: Child,
}

impl Federation {
    fn start() -> TestResult<Federation> {
        let dir = tempfile::tempdir()?;
        let (data, config) = (dir.path().join("data"), dir.path().join("config"));
        succeeded(
            "federation init",
            &flotilla(&[
                "federation",
                "init",
                "--federation",
                "acme",
                "--cluster",
                "a",
                "--data-dir",
                path(&data),
                "--config-dir",
                path(&config),
            ]),
        )?;
        let server = Child::spawn(&[
            "server",
            "--init",
            "--data-dir",
            path(&data),
            "--listen",
            "127.0.0.1:0",
        ]);
        let running = server.wait_for("flotilla server running");
        let addr = running
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .ok_or("the server logs its address")?
            .to_owned();
        Ok(Federation {
            dir,
            addr,
            _server: server,
        })
    }

    fn ctl(&self, args: &[&str]) -> TestResult<String> {
        let config = self.dir.path().join("config");
        let mut all = vec!["ctl", "--server", &self.addr, "--config-dir", path(&config)];
        all.extend_from_slice(args);
        succeeded(&format!("flotilla ctl {args:?}"), &flotilla(&all))
    }

    /// A join token for `cluster`'s `role`, made where the CA is, as the
    /// walk-through makes them.
    fn token(&self, cluster: &str, role: &str, uses: u32) -> TestResult<String> {
        let data = self.dir.path().join("data");
        let out = succeeded(
            "federation token",
            &flotilla(&[
                "federation",
                "token",
                "--cluster",
                cluster,
                "--role",
                role,
                "--uses",
                &uses.to_string(),
                "--server",
                &self.addr,
                "--data-dir",
                path(&data),
            ]),
        )?;
        Ok(out.trim().to_owned())
    }

    /// The workload's replicas as `ctl get placements -o json` shows them.
    fn replicas(&self, workload: &str) -> TestResult<Vec<Value>> {
        let out = self.ctl(&["get", "placements", "-o", "json"])?;
        let all: Value = serde_json::from_str(&out)?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["workload"] == workload)
            .flat_map(|p| p["replicas"].as_array().cloned().unwrap_or_default())
            .collect())
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One cluster: its control plane, GPU nodes, node agents and controller.
struct Member {
    kube: KubeCluster,
    agent_admin: String,
    _agents: Vec<Child>,
    controller: Child,
}

impl Member {
    /// A cluster with Istio's CRDs (and in ambient mode Gateway API's and an
    /// `istio-system` namespace, as an Istio install leaves them), Flotilla
    /// installed for `istio_mode`, its GPU nodes with their agents, and its
    /// controller.
    async fn start(
        name: &str,
        region: &str,
        istio_mode: &str,
        starts_federation: bool,
        nodes: &[(GpuNode, &str)],
        federation: &Federation,
    ) -> TestResult<Member> {
        let kube = KubeCluster::start(name).await?;
        let mut crds = std::fs::read(ISTIO_CRDS)?;
        if istio_mode == "ambient" {
            crds.extend_from_slice(b"\n---\n");
            crds.extend(std::fs::read(gateway_api_crds())?);
            crds.extend_from_slice(
                b"\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: istio-system\n",
            );
        }
        succeeded(
            "kubectl apply (Istio's and Gateway API's CRDs)",
            &kube.kubectl(&["apply", "--server-side", "-f", "-"], Some(&crds))?,
        )?;
        succeeded(
            "kubectl wait (Istio CRDs)",
            &kube.kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "crd",
                    "--all",
                    "--timeout=60s",
                ],
                None,
            )?,
        )?;
        // deploy/install-clusters.sh installs it as the walk-through does: the first
        // cluster's install starts the federation, the others join it with tokens
        // made where the CA is. (The install's own pods never run here: kwok runs
        // no containers; the servers, agents and controllers below are this
        // build's processes.)
        let spec = format!(
            "{name}:{region}:{}:{}",
            path(&kube.admin_kubeconfig()),
            nodes.len()
        );
        let mode = format!("--istio-mode={istio_mode}");
        let data = federation.dir.path().join("data");
        let mut args = vec![
            "--federation",
            "acme",
            "--server",
            &federation.addr,
            "--data-dir",
            path(&data),
        ];
        if !starts_federation {
            args.push("--joining");
        }
        args.extend([spec.as_str(), "--", "--istio", &mode]);
        let out = Command::new(INSTALL_CLUSTERS)
            .args(&args)
            .env("FLOTILLA", env!("CARGO_BIN_EXE_flotilla"))
            .env("KUBECTL", kube_binaries().join("kubectl"))
            .output()?;
        succeeded("deploy/install-clusters.sh", &out)?;
        let namespace = kube.kubectl(&["get", "namespace", NAMESPACE, "-o", "name"], None)?;
        succeeded("the install's namespace exists", &namespace)?;
        // Each node's agent joins as its own node, the controller as the cluster's
        // agent: tokens of their own, as the install's Secrets hold them.
        let node_token = federation.token(name, "node", u32::try_from(nodes.len())?)?;
        let controller_token = federation.token(name, "agent", 1)?;
        let state = kube.dir().join("flotilla");
        let mut agents = Vec::new();
        let mut agent_admin = String::new();
        for (node, fleet) in nodes {
            kube.add_node(node).await?;
            let fleet_file = state.join(format!("{}.toml", node.name));
            std::fs::create_dir_all(&state)?;
            std::fs::write(&fleet_file, fleet)?;
            let admin = free_addr()?.to_string();
            let agent = Child::spawn(&[
                "agent",
                "--cluster",
                name,
                "--region",
                region,
                "--servers",
                &federation.addr,
                "--gpu-source",
                "simulated",
                "--fleet",
                path(&fleet_file),
                "--report-scope",
                "node",
                "--node",
                &node.name,
                "--materializer",
                "none",
                "--admin-listen",
                &admin,
                "--sample-interval",
                "200ms",
                "--join",
                &node_token,
                "--state-dir",
                path(&state.join(format!("agent-{}", node.name))),
            ]);
            if agent_admin.is_empty() {
                agent_admin = admin;
            }
            agents.push(agent);
        }
        // The controller speaks to Kubernetes as its own ServiceAccount.
        let (kubeconfig, _) = kube
            .as_service_account(NAMESPACE, "flotilla-controller")
            .await?;
        let controller = Child::spawn_with_env(
            &[
                "controller",
                "--cluster",
                name,
                "--servers",
                &federation.addr,
                "--namespace",
                NAMESPACE,
                "--istio",
                &mode,
                "--resync-interval",
                "1s",
                "--admin-listen",
                &free_addr()?.to_string(),
                "--join",
                &controller_token,
                "--state-dir",
                path(&state.join("controller")),
            ],
            &[("KUBECONFIG", path(&kubeconfig))],
        );
        Ok(Member {
            kube,
            agent_admin,
            _agents: agents,
            controller,
        })
    }

    async fn pods_of(&self, workload: &str) -> TestResult<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.kube.admin().await?, NAMESPACE);
        let selector = format!("flotilla.dev/workload={workload}");
        Ok(pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }
}

fn fleet(node: &str, model: &str, gpus: u32) -> String {
    format!(
        "[[nodes]]\nname = \"{node}\"\n\n[[nodes.devices]]\nmodel = \"{model}\"\nmemory_mib = 81920\ncount = {gpus}\n"
    )
}

fn mig_fleet(node: &str) -> String {
    format!(
        "[[nodes]]\nname = \"{node}\"\n\n[[nodes.devices]]\nmodel = \"{A100}\"\nmemory_mib = 81920\nmig = [{{ profile = \"1g.10gb\" }}, {{ profile = \"1g.10gb\" }}]\n"
    )
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn limit(pod: &Pod, resource: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .first()?
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get(resource)
        .map(|q| q.0.clone())
}

/// What the API servers saw, with when the test's watches saw it.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<(Instant, String)>>,
}

impl Seen {
    fn first(&self, what: &str) -> Option<Instant> {
        let events = self.events.lock().expect("not poisoned");
        events.iter().find(|(_, e)| e == what).map(|(t, _)| *t)
    }
}

/// Records B's replica pods becoming Ready, and A's Deployment being scaled down
/// or deleted, as the API servers' watches deliver them.
fn record(a: &KubeCluster, b: &KubeCluster, workload: &str, seen: &Arc<Seen>) -> TestResult<()> {
    let selector = format!("flotilla.dev/workload={workload}");
    let a_config = a.admin_kubeconfig();
    let b_config = b.admin_kubeconfig();
    let (seen_a, seen_b) = (seen.clone(), seen.clone());
    let (sel_a, sel_b) = (selector.clone(), selector);
    tokio::spawn(async move {
        let Ok(client) = KubeCluster::client_from(&b_config).await else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
        let mut events = std::pin::pin!(watcher(pods, watcher::Config::default().labels(&sel_b)));
        while let Some(Ok(event)) = events.next().await {
            if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event
                && pod_ready(&pod)
            {
                seen_b
                    .events
                    .lock()
                    .expect("not poisoned")
                    .push((Instant::now(), "b pod ready".into()));
            }
        }
    });
    tokio::spawn(async move {
        let Ok(client) = KubeCluster::client_from(&a_config).await else {
            return;
        };
        let deployments: Api<Deployment> = Api::namespaced(client, NAMESPACE);
        let mut events = std::pin::pin!(watcher(
            deployments,
            watcher::Config::default().labels(&sel_a)
        ));
        while let Some(Ok(event)) = events.next().await {
            let what = match event {
                watcher::Event::Apply(d) if d.spec.as_ref().and_then(|s| s.replicas) == Some(0) => {
                    "a scaled down"
                }
                watcher::Event::Delete(_) => "a deleted",
                _ => continue,
            };
            seen_a
                .events
                .lock()
                .expect("not poisoned")
                .push((Instant::now(), what.into()));
        }
    });
    Ok(())
}

/// A workload placed in cluster A becomes a Deployment pinned to the node whose GPU
/// Flotilla reserved; another tenant takes A's GPUs, and the replica moves to B,
/// make-before-break as both API servers see it; Istio's objects follow, and drift
/// is put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_between_real_clusters_make_before_break() -> TestResult {
    bounded(Duration::from_secs(540), async {
        let federation = Federation::start()?;
        let h100 = |name: &str| GpuNode {
            name: name.into(),
            product: "NVIDIA-H100-80GB-HBM3".into(),
            gpus: 2,
            mig: None,
        };
        let mig = GpuNode {
            name: "a-mig".into(),
            product: "NVIDIA-A100-SXM4-80GB".into(),
            gpus: 0,
            mig: Some(("1g.10gb".into(), 2)),
        };
        // A's Istio is sidecar-era, B's ambient: both renderings meet a real API
        // server through the whole move.
        let a = Member::start(
            "a",
            "us-east",
            "sidecar",
            true,
            &[
                (h100("a-h100"), &fleet("a-h100", H100, 2)),
                (mig, &mig_fleet("a-mig")),
            ],
            &federation,
        )
        .await?;
        let b = Member::start(
            "b",
            "eu-west",
            "ambient",
            false,
            &[(h100("b-h100"), &fleet("b-h100", H100, 2))],
            &federation,
        )
        .await?;

        let workloads = federation.dir.path().join("workloads.yaml");
        std::fs::write(
            &workloads,
            format!(
                "kind: Workload\nname: chat\nmodel: acme/chat\nreplicas: {{min: 1, max: 1}}\n\
                 gpu: {{count: 1, models: [\"{H100}\"]}}\n\
                 constraints: {{preferred_regions: [{{region: us-east, weight: 100}}]}}\n\
                 ---\n\
                 kind: Workload\nname: tiny\nmodel: acme/tiny\nreplicas: {{min: 1, max: 1}}\n\
                 gpu: {{count: 1, mig_profile: 1g.10gb}}\nconstraints: {{regions: [us-east]}}\n"
            ),
        )?;
        federation.ctl(&["apply", "-f", path(&workloads)])?;

        // 3. Ready in the registry only once the pod is Ready, on the reserved node.
        let ready_in = |cluster: &'static str, workload: &'static str| {
            let federation = &federation;
            async move {
                eventually(
                    &format!("{workload} Ready in {cluster}"),
                    Duration::from_secs(120),
                    || async {
                        federation
                            .replicas(workload)
                            .ok()?
                            .into_iter()
                            .find(|r| r["cluster"] == cluster && r["phase"] == "Ready")
                    },
                )
                .await
            }
        };
        let chat = ready_in("a", "chat").await?;
        let pods = a.pods_of("chat").await?;
        assert_eq!(pods.len(), 1, "one pod for the replica");
        assert!(
            pod_ready(&pods[0]),
            "the registry says Ready only after the pod is"
        );
        let reserved = chat["devices"][0]
            .as_str()
            .and_then(|d| d.split_once('/'))
            .map(|(n, _)| n.to_owned());
        assert_eq!(reserved.as_deref(), Some("a-h100"));
        let node = pods[0].spec.as_ref().and_then(|s| s.node_name.clone());
        assert_eq!(
            node, reserved,
            "kube-scheduler put the pod on the node Flotilla reserved"
        );
        assert_eq!(limit(&pods[0], "nvidia.com/gpu").as_deref(), Some("1"));

        ready_in("a", "tiny").await?;
        let tiny = a.pods_of("tiny").await?;
        assert_eq!(tiny.len(), 1);
        assert_eq!(
            limit(&tiny[0], "nvidia.com/mig-1g.10gb").as_deref(),
            Some("1"),
            "a MIG workload asks for its slice"
        );
        assert_eq!(
            limit(&tiny[0], "nvidia.com/gpu"),
            None,
            "and for no whole GPU"
        );
        assert_eq!(
            tiny[0].spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("a-mig")
        );

        // 4. Another tenant claims A's GPUs: the replica moves to B, make-before-break.
        let seen = Arc::new(Seen::default());
        record(&a.kube, &b.kube, "chat", &seen)?;
        let claimed = Instant::now();
        for device in ["0", "1"] {
            federation.ctl(&[
                "gpus",
                "set",
                "a-h100",
                device,
                "--claimed-by-other",
                "true",
                "--agent",
                &a.agent_admin,
            ])?;
        }
        ready_in("b", "chat").await?;
        let ready_in_b = claimed.elapsed();
        eventually(
            "chat's replica in a to be Gone",
            Duration::from_secs(120),
            || async {
                let replicas = federation.replicas("chat").ok()?;
                replicas.iter().all(|r| r["cluster"] != "a").then_some(())
            },
        )
        .await?;
        eprintln!(
            "A's GPUs claimed: Ready in B after {ready_in_b:?}, Gone from A after {:?}",
            claimed.elapsed()
        );
        assert!(
            a.pods_of("chat").await?.is_empty(),
            "the registry said Gone while A's pod still existed"
        );
        let b_ready = seen
            .first("b pod ready")
            .ok_or("B's pod was never seen Ready")?;
        let a_down = seen
            .first("a scaled down")
            .or_else(|| seen.first("a deleted"))
            .ok_or("A's Deployment was never seen scaled down or deleted")?;
        assert!(
            b_ready < a_down,
            "B's pod was Ready before A's Deployment went down"
        );

        // 5. Istio's objects follow the routes in both clusters, accepted by each API server.
        eventually(
            "a WorkloadEntry in a for b's replica",
            Duration::from_secs(60),
            || async {
                let out = a
                    .kube
                    .kubectl(
                        &[
                            "get",
                            "workloadentries.networking.istio.io",
                            "-n",
                            NAMESPACE,
                            "-o",
                            "name",
                        ],
                        None,
                    )
                    .ok()?;
                text(&out.stdout).contains("-b").then_some(())
            },
        )
        .await?;
        let b_rule = eventually(
            "b's DestinationRule to send all of chat's traffic to b's locality",
            Duration::from_secs(60),
            || async {
                let out = b
                    .kube
                    .kubectl(&["get", "destinationrules.networking.istio.io", "-n", NAMESPACE, "-o", "json"], None)
                    .ok()?;
                let list: Value = serde_json::from_slice(&out.stdout).ok()?;
                list["items"].as_array()?.iter().find_map(|r| {
                    let distribute = &r["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["distribute"];
                    (r["metadata"]["annotations"]["flotilla.dev/model-id"] == "acme/chat"
                        && distribute == &json!([{"from": "*", "to": {"eu-west/*": 100}}]))
                    .then(|| r.clone())
                })
            },
        )
        .await?;
        let service = b_rule["metadata"]["name"].as_str().ok_or("a named rule")?;
        let out = b.kube.kubectl(&["get", "service", service, "-n", NAMESPACE, "-o", "json"], None)?;
        let global: Value = serde_json::from_str(&succeeded("kubectl get service", &out)?)?;
        assert_eq!(global["metadata"]["labels"]["istio.io/global"], "true", "{global}");
        assert_eq!(global["metadata"]["labels"]["istio.io/use-waypoint"], "flotilla-waypoint");
        assert!(
            !a.controller.saw("cannot apply the Istio objects"),
            "a's API server refused an Istio object"
        );
        assert!(
            !b.controller.saw("cannot apply the Istio objects"),
            "b's API server refused an Istio object"
        );

        // 6. Drift: a Deployment deleted or scaled by hand is put back; someone
        // else's is never touched.
        let admin: Api<Deployment> = Api::namespaced(b.kube.admin().await?, NAMESPACE);
        let name = admin
            .list(&ListParams::default().labels("flotilla.dev/workload=chat"))
            .await?
            .items
            .first()
            .and_then(|d| d.metadata.name.clone())
            .ok_or("b has chat's Deployment")?;
        let foreign = admin
            .create(&PostParams::default(), &deployment("not-flotillas", None))
            .await?;
        admin
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 3}})),
            )
            .await?;
        eventually(
            "the scaled Deployment to be put back",
            Duration::from_secs(30),
            || async {
                let d = admin.get(&name).await.ok()?;
                (d.spec?.replicas == Some(1)).then_some(())
            },
        )
        .await?;
        let old_uid = admin.get(&name).await?.metadata.uid;
        admin.delete(&name, &DeleteParams::default()).await?;
        eventually(
            "the deleted Deployment to be made again",
            Duration::from_secs(30),
            || async {
                let d = admin.get(&name).await.ok()?;
                (d.metadata.uid != old_uid).then_some(())
            },
        )
        .await?;
        // Its status moves (the Deployment controller's); its spec and fields do not.
        let after = admin.get("not-flotillas").await?;
        assert_eq!(
            after.metadata.generation, foreign.metadata.generation,
            "its spec was changed"
        );
        let managers: Vec<_> = after
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(
            !managers.iter().any(|m| m == "flotilla"),
            "flotilla wrote to it: {managers:?}"
        );
        Ok(())
    })
    .await
}
