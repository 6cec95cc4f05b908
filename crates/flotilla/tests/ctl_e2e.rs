//! `flotilla ctl` against a live `flotilla server` over mTLS on loopback: what a
//! person or a script sees, exit codes included.
//!
//! Each test makes its own federation (`federation init` into a temp dir) and its
//! own server on a port the OS picks, read back from the server's log; the server
//! is killed when the test ends, pass or fail.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{Child, flotilla, text};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/examples/workloads.yaml"
);
const POLICIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/examples/policies.yaml"
);

/// A server of a fresh federation, on a port the OS picks.
fn spawn_server(data_dir: &Path) -> Child {
    Child::spawn(&[
        "server",
        "--init",
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--housekeeping-ms",
        "0",
    ])
}

/// A one-server federation "acme" and the admin identity `federation init` wrote.
struct Federation {
    dir: tempfile::TempDir,
    config: PathBuf,
    addr: String,
    _server: Child,
}

impl Federation {
    fn start() -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        let (data, config) = (dir.path().join("data"), dir.path().join("config"));
        let init = flotilla(&[
            "federation",
            "init",
            "--federation",
            "acme",
            "--cluster",
            "eu-1",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--config-dir",
            config.to_str().expect("utf-8"),
        ]);
        assert!(init.status.success(), "{}", text(&init.stderr));
        let server = spawn_server(&data);
        let running = server.wait_for("flotilla server running");
        let addr = running
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("the server logs its address")
            .to_owned();
        let federation = Federation {
            dir,
            config,
            addr,
            _server: server,
        };
        // The single voter elects itself shortly after start; status exits 0 then.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = federation.ctl(&["status", "-o", "json"]);
            if out.status.success() {
                break federation;
            }
            assert!(
                Instant::now() < deadline,
                "no leader in time: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `flotilla ctl --server ADDR --config-dir CONFIG ARGS…` (mTLS, admin identity).
    fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "ctl",
            "--server",
            &self.addr,
            "--config-dir",
            self.config.to_str().expect("utf-8"),
        ];
        all.extend_from_slice(args);
        flotilla(&all)
    }

    /// Runs ctl, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?} failed ({:?}): {}",
            out.status.code(),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs ctl, asserts it fails with `code`, returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.ctl(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "ctl {args:?}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// `ctl apply -f -` with `file` on standard input; asserts success.
    fn apply_stdin(&self, file: &str) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["ctl", "--server", &self.addr, "--config-dir"])
            .arg(&self.config)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the flotilla binary runs");
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, file.as_bytes()).expect("write");
        drop(stdin);
        let out = child.wait_with_output().expect("ctl ends");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// A second server, joined with a server token for cluster `cluster`.
    fn join_server(&self, cluster: &str) -> Child {
        let data = self.dir.path().join("data");
        let out = flotilla(&[
            "federation",
            "token",
            "--cluster",
            cluster,
            "--role",
            "server",
            "--server",
            &self.addr,
            "--data-dir",
            data.to_str().expect("utf-8"),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let token = text(&out.stdout).trim().to_owned();
        let joined = self.dir.path().join(format!("data-{cluster}"));
        let server = Child::spawn(&[
            "server",
            "--join",
            &token,
            "--data-dir",
            joined.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--housekeeping-ms",
            "0",
        ]);
        server.wait_for("flotilla server running");
        server
    }

    /// `status -o json`'s members, once there are `count` of them.
    fn members(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status: serde_json::Value =
                serde_json::from_str(&self.ok(&["status", "-o", "json"])).expect("JSON");
            let members = status["members"].as_array().cloned().unwrap_or_default();
            if members.len() == count {
                return members;
            }
            assert!(Instant::now() < deadline, "not {count} members: {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn workload_names(&self) -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ok(&["get", "workloads", "-o", "json"])).expect("JSON");
        json.as_array()
            .expect("a list")
            .iter()
            .map(|w| w["name"].as_str().expect("name").to_owned())
            .collect()
    }
}

#[test]
fn the_yaml_example_applies_and_reads_back_as_json_and_yaml() {
    let f = Federation::start();
    let applied = f.ok(&["apply", "-f", EXAMPLE]);
    assert!(applied.contains("workload/llama-70b applied"), "{applied}");

    assert_eq!(
        f.workload_names(),
        ["embeddings-eu", "llama-70b", "llama-8b-chat"]
    );
    let yaml: Vec<serde_json::Value> =
        serde_saphyr::from_str(&f.ok(&["get", "workloads", "-o", "yaml"])).expect("YAML");
    let big = yaml
        .iter()
        .find(|w| w["name"] == "llama-70b")
        .expect("llama-70b in the YAML");
    assert_eq!(big["gpu"]["count"], 4);
    assert_eq!(big["gpu"]["models"][0], "NVIDIA H100 80GB HBM3");
    assert_eq!(big["constraints"]["regions"][0], "us-east-1");

    // Deleting one leaves the others; asking for it by name is then "not found".
    let deleted = f.ok(&["delete", "llama-8b-chat"]);
    assert!(
        deleted.contains("workload/llama-8b-chat deleted"),
        "{deleted}"
    );
    assert_eq!(f.workload_names(), ["embeddings-eu", "llama-70b"]);
    let err = f.fails(&["get", "workloads", "llama-8b-chat"], 3);
    assert!(err.contains("`flotilla ctl get workloads`"), "{err}");
}

#[test]
fn status_shows_the_federation_leader_members_and_workloads_on_one_screen() {
    let f = Federation::start();
    f.ok(&["apply", "-f", EXAMPLE]);

    let screen = f.ok(&["status"]);
    assert!(
        screen.starts_with("Federation acme: leader node"),
        "{screen}"
    );
    assert!(screen.contains("voter (leader)"), "{screen}");
    assert!(screen.contains("Workloads  3;"), "{screen}");
    assert!(screen.contains("GPUs       0 total"), "{screen}");

    for format in ["json", "yaml"] {
        let out = f.ok(&["status", "-o", format]);
        let v: serde_json::Value = if format == "json" {
            serde_json::from_str(&out).expect("JSON")
        } else {
            serde_saphyr::from_str(&out).expect("YAML")
        };
        assert_eq!(v["federation"], "acme", "{format}");
        let member = &v["members"][0];
        assert_eq!(member["role"], "voter");
        assert_eq!(member["leader"], true);
        assert_eq!(member["address"], f.addr.as_str());
        assert_eq!(member["lag"], 0);
        assert_eq!(v["leader"]["address"], f.addr.as_str());
        assert_eq!(v["workloads"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["moves_in_flight"], serde_json::json!([]));
    }
}

#[test]
fn a_server_that_joined_is_a_member_until_member_remove_takes_it_out() {
    let f = Federation::start();
    let _joined = f.join_server("us-1");
    let members = f.members(2);
    let joined = members
        .iter()
        .find(|m| m["leader"] != true)
        .and_then(|m| m["node_id"].as_u64())
        .expect("the joined server is listed");
    let id = joined.to_string();

    let out = f.ok(&["member", "remove", &id]);
    assert!(out.contains(&format!("member {id} removed")), "{out}");
    assert!(!out.contains(&format!("now: {id} ")), "{out}");
    assert_eq!(f.members(1)[0]["leader"], true);

    let err = f.fails(&["member", "remove", &id], 3);
    assert!(err.contains("`flotilla ctl status`"), "{err}");
    f.fails(&["member", "remove", "one"], 2);
}

#[test]
fn moves_and_drains_toward_what_does_not_exist_exit_3_and_say_what_to_do() {
    let f = Federation::start();
    f.ok(&["apply", "-f", EXAMPLE]);

    let err = f.fails(&["move", "llama-70b", "--to", "atlantis"], 3);
    assert!(err.contains("cluster \"atlantis\" not found"), "{err}");
    assert!(err.contains("`flotilla ctl get clusters`"), "{err}");

    let err = f.fails(&["move", "no-such-workload", "--to", "eu-1"], 3);
    assert!(err.contains("`flotilla ctl get workloads`"), "{err}");

    let err = f.fails(&["drain", "atlantis"], 3);
    assert!(err.contains("atlantis"), "{err}");
    assert!(err.contains("`flotilla ctl get clusters`"), "{err}");

    // A usage mistake is 2, before anything is sent.
    f.fails(&["drain", "atlantis", "--wait", "--timeout", "soon"], 2);
    let err = f.fails(&["--identity", "nobody", "get", "clusters"], 2);
    assert!(err.contains("--identity names"), "{err}");
}

#[test]
fn yaml_on_standard_input_applies_like_a_file() {
    let f = Federation::start();
    f.apply_stdin(&std::fs::read_to_string(EXAMPLE).expect("example"));
    assert_eq!(
        f.workload_names(),
        ["embeddings-eu", "llama-70b", "llama-8b-chat"]
    );
}

#[test]
fn a_bad_file_is_refused_whole_naming_file_document_line_and_field() {
    let f = Federation::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "kind: Workload\nname: fine\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 1}\n---\nkind: Workload\nname: typo\nmodel: m\nreplicas: {min: 1, max: 1}\ngpu: {count: 1}\nregoins: [eu]\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let err = f.fails(&["apply", "-f", path], 4);
    assert!(
        err.contains(&format!("{path}: document 2 (from line 7)")),
        "{err}"
    );
    assert!(err.contains("regoins") && err.contains("line 12"), "{err}");
    // The good first document was not applied either.
    assert!(f.workload_names().is_empty());

    let err = f.fails(&["apply", "-f", "/nonexistent/w.yaml"], 2);
    assert!(err.contains("reading /nonexistent/w.yaml"), "{err}");
    let err = f.fails(&["apply", "-f", "workloads.json"], 2);
    assert!(err.contains(".yaml, .yml or .toml"), "{err}");
}

#[test]
fn tenant_policies_are_set_listed_and_deleted() {
    let f = Federation::start();
    // A policy approves only what a workload serves: a typo would approve nothing.
    let err = f.fails(&["apply", "-f", POLICIES], 6);
    assert!(
        err.contains("no workload serves model \"meta-llama/Llama-3.1-8B-Instruct\""),
        "{err}"
    );
    f.ok(&["apply", "-f", EXAMPLE]);
    f.ok(&["apply", "-f", POLICIES]);
    f.apply_stdin(
        "workloads:\n  - {name: one, model: m1, replicas: {min: 1, max: 1}, gpu: {count: 1}}\n  - {name: two, model: m2, replicas: {min: 1, max: 1}, gpu: {count: 1}}\n",
    );
    f.ok(&["policy", "set", "beta", "--models", "m1,m2"]);

    let yaml: Vec<serde_json::Value> =
        serde_saphyr::from_str(&f.ok(&["get", "policies", "-o", "yaml"])).expect("YAML");
    let tenants: Vec<&str> = yaml.iter().filter_map(|p| p["tenant"].as_str()).collect();
    assert_eq!(tenants, ["acme", "beta", "internal-tools"]);
    assert_eq!(yaml[1]["approved_models"], serde_json::json!(["m1", "m2"]));

    f.ok(&["policy", "delete", "beta"]);
    let err = f.fails(&["get", "policies", "beta"], 3);
    assert!(err.contains("`flotilla ctl get policies`"), "{err}");
    // Invalid names are refused with the field named, before any call.
    let err = f.fails(&["policy", "set", "Not A Name", "--models", "m"], 4);
    assert!(err.contains("tenant"), "{err}");
}

#[test]
fn an_edit_from_a_stale_read_exits_9_and_changes_nothing() {
    let f = Federation::start();
    f.apply_stdin(
        "workloads:\n  - {name: x, model: x, replicas: {min: 1, max: 1}, gpu: {count: 1}}\n  - {name: y, model: y, replicas: {min: 1, max: 1}, gpu: {count: 1}}\n  - {name: z, model: z, replicas: {min: 1, max: 1}, gpu: {count: 1}}\n",
    );
    f.ok(&["policy", "set", "acme", "--models", "x,y"]);
    let read: serde_json::Value =
        serde_json::from_str(&f.ok(&["get", "policies", "acme", "-o", "json"])).expect("JSON");
    let etag = read[0]["etag"].as_str().expect("an etag").to_owned();

    // Someone else removes x; then our edit, made from the same read, arrives.
    f.ok(&["policy", "set", "acme", "--models", "y", "--etag", &etag]);
    let err = f.fails(
        &[
            "policy", "set", "acme", "--models", "x,y,z", "--etag", &etag,
        ],
        9,
    );
    assert!(err.contains("changed since it was read"), "{err}");
    assert!(err.contains("read it again"), "{err}");

    // The same from a file: a document carries the etag it was read at.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("acme.yaml");
    std::fs::write(
        &file,
        format!("kind: TenantPolicy\netag: \"{etag}\"\ntenant: acme\napproved_models: [x, y]\n"),
    )
    .expect("write");
    f.fails(&["apply", "-f", file.to_str().expect("utf-8")], 9);

    let now: serde_json::Value =
        serde_json::from_str(&f.ok(&["get", "policies", "acme", "-o", "json"])).expect("JSON");
    assert_eq!(now[0]["approved_models"], serde_json::json!(["y"]));
}

#[test]
fn tenants_and_api_keys_are_made_shown_once_revoked_and_deleted() {
    let f = Federation::start();
    f.ok(&[
        "tenant",
        "create",
        "acme",
        "--spiffe-id",
        "spiffe://acme/ns/chat/sa/app",
    ]);
    let err = f.fails(&["tenant", "create", "acme"], 9);
    assert!(err.contains("exists already"), "{err}");
    let err = f.fails(&["tenant", "create", "beta", "--spiffe-id", "https://x"], 4);
    assert!(err.contains("identities[0]"), "{err}");

    // The key is printed once; the registry lists only its record.
    let key = f.ok(&["key", "create", "--tenant", "acme", "--expires", "720h"]);
    let key = key.trim();
    assert!(
        key.starts_with("flk_") && key.len() == 4 + 16 + 1 + 43,
        "{key}"
    );
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&f.ok(&["key", "list", "-o", "json"])).expect("JSON");
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().expect("an id").to_owned();
    assert!(key.contains(&id));
    assert!(!f.ok(&["key", "list", "-o", "json"]).contains(key));
    assert_eq!(listed[0]["revoked"], false);

    f.fails(&["key", "create", "--tenant", "nobody"], 3);
    let err = f.fails(
        &["key", "create", "--tenant", "acme", "--expires", "soon"],
        4,
    );
    assert!(err.contains("--expires"), "{err}");

    f.ok(&["key", "revoke", &id]);
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&f.ok(&["key", "list", "--tenant", "acme", "-o", "json"]))
            .expect("JSON");
    assert_eq!(listed[0]["revoked"], true);

    f.ok(&["tenant", "delete", "acme"]);
    f.fails(&["tenant", "get", "acme"], 3);
    assert_eq!(f.ok(&["key", "list", "-o", "json"]).trim(), "[]");
}
