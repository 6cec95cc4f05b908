//! Real Kubernetes control planes for whole-system tests.
//!
//! [`KubeCluster::start`] runs, on 127.0.0.1, an etcd, a kube-apiserver
//! (authorization `Node,RBAC`, ServiceAccount tokens signed by a key of the run), a
//! kube-controller-manager, a kube-scheduler and kwok, which plays the kubelets of
//! the nodes [`KubeCluster::add_node`] creates: pods are scheduled, bound, become
//! Running and Ready, and go when deleted, but no container runs. Everything else is
//! the real control plane: admission, RBAC, server-side apply, Deployment →
//! ReplicaSet → Pod, scheduling by resources, affinity and taints, CRD validation.
//!
//! The binaries come from `tests/kube/setup.sh`, which builds them from the Go module
//! proxy at pinned versions and caches them outside the clone ([`kube_binaries`]).
//! Every process of a cluster is killed when the cluster is dropped; its logs stay
//! in the cluster's directory until then ([`KubeCluster::log_tails`]).

use crate::{Reaped, TestResult, eventually, free_addr};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a control plane may take to answer: the API server, then the
/// controller-manager's first ServiceAccount (a loaded 2-core machine is slow).
const START_WITHIN: Duration = Duration::from_secs(120);

/// The directory of the control-plane binaries, built (or found in the cache) by
/// `tests/kube/setup.sh` once per test process. Panics with the script's output
/// when it fails: these tests never fall back to anything else.
pub fn kube_binaries() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/kube/setup.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}); the real-Kubernetes tests need its binaries",
            script.display(),
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Gateway API's CRDs (standard channel, pinned in `tests/kube/setup.sh`), for
/// the tests of ambient Istio's objects.
pub fn gateway_api_crds() -> PathBuf {
    kube_binaries().join("gateway-api-crds.yaml")
}

/// A fake GPU node, as NVIDIA's GPU feature discovery and device plugin would
/// label and size it.
#[derive(Debug, Clone)]
pub struct GpuNode {
    pub name: String,
    /// `nvidia.com/gpu.product`, e.g. `NVIDIA-H100-80GB-HBM3`.
    pub product: String,
    /// Whole GPUs (`nvidia.com/gpu`).
    pub gpus: u32,
    /// MIG instances: profile (`1g.10gb`) and how many (`nvidia.com/mig-<profile>`).
    pub mig: Option<(String, u32)>,
}

/// One cluster's control plane; see the module documentation.
pub struct KubeCluster {
    pub name: String,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    dir: tempfile::TempDir,
    /// Killed in reverse order of start when dropped (kwok first, etcd last).
    processes: Vec<(&'static str, Reaped)>,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        while let Some((_, process)) = self.processes.pop() {
            drop(process);
        }
    }
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The run's CA, which issues every certificate of one cluster.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(cluster: &str) -> TestResult<(Pki, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("{cluster} test CA"), &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key)?.pem();
        Ok((
            Pki {
                issuer: Issuer::new(params, key),
            },
            pem,
        ))
    }

    /// A certificate and key for `common_name` in `groups` (Kubernetes reads the
    /// user from CN and the groups from O), valid for `sans` when it serves.
    fn leaf(
        &self,
        common_name: &str,
        groups: &[&str],
        sans: Vec<SanType>,
    ) -> TestResult<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, groups);
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn name(common_name: &str, groups: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for group in groups {
        dn.push(DnType::OrganizationName, *group);
    }
    dn
}

/// Who a kubeconfig speaks as.
#[derive(Debug, Clone)]
pub enum Credentials {
    ClientCert { cert: PathBuf, key: PathBuf },
    Token(String),
}

impl KubeCluster {
    /// Starts a cluster named `name` and waits until its API server answers and its
    /// controller-manager has made the `default` ServiceAccount.
    pub async fn start(name: &str) -> TestResult<KubeCluster> {
        let bin = kube_binaries();
        let dir = tempfile::Builder::new()
            .prefix(&format!("kube-{name}-"))
            .tempdir()?;
        let d = &dir.path().to_owned();
        std::fs::create_dir_all(d.join("logs"))?;
        let (pki, ca_pem) = Pki::new(name)?;
        write(d, "ca.pem", &ca_pem)?;
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let service_ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));
        let mut sans = vec![
            SanType::IpAddress(localhost),
            SanType::IpAddress(service_ip),
        ];
        for dns in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ] {
            sans.push(SanType::DnsName(dns.try_into()?));
        }
        let (cert, key) = pki.leaf("kube-apiserver", &[], sans)?;
        write(d, "apiserver.pem", &cert)?;
        write(d, "apiserver-key.pem", &key)?;
        for (file, user, groups) in [
            ("admin", "flotilla-test-admin", &["system:masters"][..]),
            ("controller-manager", "system:kube-controller-manager", &[]),
            ("scheduler", "system:kube-scheduler", &[]),
        ] {
            let (cert, key) = pki.leaf(user, groups, Vec::new())?;
            write(d, &format!("{file}.pem"), &cert)?;
            write(d, &format!("{file}-key.pem"), &key)?;
        }
        // The ServiceAccount token signing key (ES256), and its public half, which
        // the API server checks tokens with.
        let signing = KeyPair::generate()?;
        write(d, "sa-key.pem", &signing.serialize_pem())?;
        write(d, "sa.pem", &signing.public_key_pem())?;

        let etcd_client = free_addr()?;
        let etcd_peer = free_addr()?;
        let secure = free_addr()?;
        let server = format!("https://{secure}");
        let mut cluster = KubeCluster {
            name: name.to_owned(),
            server,
            dir,
            processes: Vec::new(),
        };
        for who in ["admin", "controller-manager", "scheduler"] {
            let creds = Credentials::ClientCert {
                cert: d.join(format!("{who}.pem")),
                key: d.join(format!("{who}-key.pem")),
            };
            cluster.write_kubeconfig(&d.join(format!("{who}.kubeconfig")), &creds)?;
        }
        let p = |f: &str| d.join(f).display().to_string();

        cluster.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name=default",
                &format!("--data-dir={}", p("etcd")),
                &format!("--listen-client-urls=http://{etcd_client}"),
                &format!("--advertise-client-urls=http://{etcd_client}"),
                &format!("--listen-peer-urls=http://{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://{etcd_peer}"),
                &format!("--initial-cluster=default=http://{etcd_peer}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
        )?;
        cluster.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                &format!("--etcd-servers=http://{etcd_client}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                // The `kubernetes` Service cannot point at loopback; nothing here
                // uses it (no pod runs).
                "--endpoint-reconciler-type=none",
                &format!("--secure-port={}", secure.port()),
                &format!("--cert-dir={}", p("apiserver-certs")),
                &format!("--tls-cert-file={}", p("apiserver.pem")),
                &format!("--tls-private-key-file={}", p("apiserver-key.pem")),
                &format!("--client-ca-file={}", p("ca.pem")),
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", p("sa.pem")),
                &format!("--service-account-signing-key-file={}", p("sa-key.pem")),
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--profiling=false",
            ]),
        )?;
        let admin = cluster.admin().await?;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        cluster
            .wait_for(&format!("{name}'s API server to answer"), || async {
                namespaces.get("default").await.ok()
            })
            .await?;

        cluster.spawn(
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager")).args([
                &format!("--kubeconfig={}", p("controller-manager.kubeconfig")),
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                &format!("--service-account-private-key-file={}", p("sa-key.pem")),
                &format!("--root-ca-file={}", p("ca.pem")),
                "--secure-port=0",
                "--profiling=false",
            ]),
        )?;
        cluster.spawn(
            "kube-scheduler",
            Command::new(bin.join("kube-scheduler")).args([
                &format!("--kubeconfig={}", p("scheduler.kubeconfig")),
                "--leader-elect=false",
                "--secure-port=0",
                "--profiling=false",
            ]),
        )?;
        cluster.spawn(
            "kwok",
            Command::new(bin.join("kwok")).args([
                &format!("--kubeconfig={}", p("admin.kubeconfig")),
                &format!("--config={}", bin.join("kwok-stages.yaml").display()),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1",
                "--cidr=10.244.0.0/16",
            ]),
        )?;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, "default");
        cluster
            .wait_for(
                &format!("{name}'s controller-manager to make the default ServiceAccount"),
                || async { accounts.get("default").await.ok() },
            )
            .await?;
        Ok(cluster)
    }

    fn spawn(&mut self, what: &'static str, command: &mut Command) -> TestResult {
        let log = std::fs::File::create(self.dir.path().join("logs").join(format!("{what}.log")))?;
        let process = Reaped::spawn(
            command
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )
        .map_err(|e| format!("cannot start {what}: {e}"))?;
        self.processes.push((what, process));
        Ok(())
    }

    /// The first process of the control plane that has exited, if any (a zombie:
    /// it is reaped only when the cluster is dropped).
    fn exited(&self) -> Option<&'static str> {
        self.processes.iter().find_map(|(what, process)| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.id()));
            // The state follows the command name in parentheses.
            let state = stat
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()));
            matches!(state, None | Some(Some('Z' | 'X'))).then_some(*what)
        })
    }

    /// Waits for `check` to answer, failing early (with the logs) when a process of
    /// the control plane exits.
    async fn wait_for<T, F, Fut>(&self, what: &str, check: F) -> TestResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let answer = eventually(what, START_WITHIN, || async {
            if let Some(dead) = self.exited() {
                return Some(Err(format!("{dead} exited while waiting for {what}")));
            }
            check().await.map(Ok)
        })
        .await
        .and_then(|r| r);
        answer.map_err(|e| self.failed(e))
    }

    fn failed(&self, why: String) -> crate::BoxError {
        format!("{why}\n{}", self.log_tails(20)).into()
    }

    /// The last `lines` lines of every process's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (what, _) in &self.processes {
            let log =
                std::fs::read_to_string(self.dir.path().join("logs").join(format!("{what}.log")))
                    .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {} {what} (last {lines} lines)\n", self.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// The cluster's directory (certificates, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The administrator's kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Writes a kubeconfig for this cluster that speaks as `credentials`.
    pub fn write_kubeconfig(&self, path: &Path, credentials: &Credentials) -> TestResult {
        let user = match credentials {
            Credentials::ClientCert { cert, key } => format!(
                "    client-certificate: {}\n    client-key: {}\n",
                cert.display(),
                key.display()
            ),
            Credentials::Token(token) => format!("    token: {token}\n"),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: user\ncurrent-context: {name}\n",
            name = self.name,
            server = self.server,
            ca = self.dir.path().join("ca.pem").display(),
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// A client from a kubeconfig file.
    pub async fn client_from(path: &Path) -> TestResult<kube::Client> {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(path)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A client with the administrator's credentials.
    pub async fn admin(&self) -> TestResult<kube::Client> {
        Self::client_from(&self.admin_kubeconfig()).await
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (valid
    /// an hour), as a pod of that account would be given.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> TestResult<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        Ok(answer
            .status
            .ok_or("a TokenRequest without a status")?
            .token)
    }

    /// A kubeconfig (written into the cluster's directory) and a client that speak
    /// as ServiceAccount `namespace/name`, with a token from the TokenRequest API.
    pub async fn as_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> TestResult<(PathBuf, kube::Client)> {
        let token = self.service_account_token(namespace, name).await?;
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        self.write_kubeconfig(&path, &Credentials::Token(token))?;
        let client = Self::client_from(&path).await?;
        Ok((path, client))
    }

    /// Creates a node that kwok plays: labelled and tainted as a GPU node, with its
    /// GPUs (and MIG instances) as extended resources.
    pub async fn add_node(&self, node: &GpuNode) -> TestResult<Node> {
        let mut resources = serde_json::json!({
            "cpu": "64", "memory": "512Gi", "pods": "110",
            "nvidia.com/gpu": node.gpus.to_string(),
        });
        let mut labels = serde_json::json!({
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": node.product,
        });
        if let Some((profile, count)) = &node.mig {
            resources[format!("nvidia.com/mig-{profile}")] = count.to_string().into();
            labels["nvidia.com/mig.strategy"] = "mixed".into();
        }
        let object: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": labels,
            },
            "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
            "status": {"capacity": resources.clone(), "allocatable": resources},
        }))?;
        let nodes: Api<Node> = Api::all(self.admin().await?);
        let created = nodes.create(&PostParams::default(), &object).await?;
        self.wait_for(&format!("node {} to be Ready", node.name), || async {
            let n = nodes.get(&node.name).await.ok()?;
            let ready = n
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(())
        })
        .await?;
        Ok(created)
    }

    /// Runs the pinned `kubectl` with the administrator's kubeconfig.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> TestResult<Output> {
        self.kubectl_as(&self.admin_kubeconfig(), args, stdin)
    }

    /// Runs the pinned `kubectl` with `kubeconfig`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> TestResult<Output> {
        let mut child = Command::new(kube_binaries().join("kubectl"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .ok_or("kubectl's stdin")?
                .write_all(input)?;
        }
        drop(child.stdin.take());
        Ok(child.wait_with_output()?)
    }
}

fn write(dir: &Path, file: &str, text: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), text)
}
