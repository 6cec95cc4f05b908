//! Flotilla's gateway against nginx as a plain reverse proxy: same upstream, same
//! load generator (wrk), same machine, one after the other.
//!
//! Every party is its own process: this binary re-runs itself as the upstream
//! (`FLOTILLA_BENCH_ROLE=upstream`) and as the gateway (`…=gateway`); nginx runs
//! from a config generated into a temporary directory, listening on 127.0.0.1
//! only. Two loads, each at 1, 16 and 64 connections:
//!
//! - `get`: `GET /`, routed by the gateway's host/path rule, the body-less case;
//! - `chat`: `POST /v1/chat/completions` with a small JSON body, which the gateway
//!   reads to route by `model` (nginx just passes it on).
//!
//! The cost of governance is measured beside it: a second gateway that enforces
//! a tenant's registry API key (found by id, SHA-256 compared), policy, request
//! and token budgets (set high enough never to refuse; every answer's `usage` is
//! read and charged) on every `chat` request, against the open one, with the same
//! key sent to both.
//!
//! Needs nginx and wrk: `benches/setup-gateway-bench.sh` installs them.
//! Run: `cargo bench -p flotilla-tests --bench gateway_vs_nginx`
//! (`FLOTILLA_BENCH_SECS`, default 10, sets each run's length;
//! `FLOTILLA_BENCH_ROUNDS`, default 1, how many times the open and the enforcing
//! gateway are measured, alternating which goes first, their medians reported;
//! `FLOTILLA_BENCH_ONLY=governance` skips the comparison with nginx).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use flotilla_gateway::{
    Gateway, GatewayConfig, HealthSettings, HostRule, Listeners, RegistryStatus, RouteEvent,
    RouteState, StaticReplica, StaticRoutes,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONNECTIONS: [u32; 3] = [1, 16, 64];
const UPSTREAM_BODY: &str = r#"{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"}}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
const CHAT_BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8}"#;

fn main() {
    match std::env::var("FLOTILLA_BENCH_ROLE").as_deref() {
        Ok("upstream") => return upstream(),
        Ok("gateway") => return gateway(),
        _ => {}
    }
    // cargo bench passes `--bench`; a plain `cargo test` run of benches must not
    // spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("gateway_vs_nginx: run with `cargo bench` to measure");
        return;
    }
    let (Some(nginx), Some(wrk)) = (find("nginx"), find("wrk")) else {
        println!(
            "gateway_vs_nginx: skipped; nginx and wrk are needed (run benches/setup-gateway-bench.sh)"
        );
        return;
    };
    let secs: u32 = std::env::var("FLOTILLA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut procs = Procs(Vec::new());
    let dir = std::env::temp_dir().join(format!("flotilla-gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let (upstream_child, upstream_addr) = spawn_role("upstream", None);
    procs.0.push(upstream_child);
    let (gateway_child, gateway_addr) = spawn_role("gateway", Some(upstream_addr));
    let gateway_pid = gateway_child.id();
    procs.0.push(gateway_child);
    let key = flotilla_pki::new_api_key().unwrap();
    let (governed_child, governed_addr) = spawn_role_with(
        "gateway",
        Some(upstream_addr),
        &[("FLOTILLA_BENCH_KEY", &key.key)],
    );
    let governed_pid = governed_child.id();
    procs.0.push(governed_child);
    let nginx_addr = flotilla_testkit::free_addr().unwrap();
    procs
        .0
        .push(start_nginx(&nginx, &dir, nginx_addr, upstream_addr));
    wait_ready(nginx_addr);

    let script = dir.join("chat.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{CHAT_BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {}\"\n",
            key.key
        ),
    )
    .unwrap();

    println!(
        "upstream {upstream_addr}, nginx {nginx_addr}, flotilla gateway {gateway_addr}; wrk, {secs} s per run, {} CPUs",
        cpus()
    );
    let rounds: usize = std::env::var("FLOTILLA_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let only_governance = std::env::var("FLOTILLA_BENCH_ONLY").as_deref() == Ok("governance");
    let mut rows = Vec::new();
    let loads = if only_governance {
        Vec::new()
    } else {
        vec![
            ("get", "/", None),
            ("chat", "/v1/chat/completions", Some(script.as_path())),
        ]
    };
    for (load, path, lua) in loads {
        for c in CONNECTIONS {
            // Warm both (pools, caches), then measure one after the other.
            for addr in [nginx_addr, gateway_addr] {
                run_wrk(&wrk, addr, path, lua, c, 1);
            }
            let n = run_wrk(&wrk, nginx_addr, path, lua, c, secs);
            let g = run_wrk(&wrk, gateway_addr, path, lua, c, secs);
            rows.push((load, c, n, g));
        }
    }

    if !only_governance {
        print_nginx_table(rows);
    }

    // Governance on the request path: the same chat load, key included, through
    // the open gateway and the one that enforces it, alternating which goes
    // first so that drift over a round falls on both alike.
    let mut governed = Vec::new();
    for c in CONNECTIONS {
        for addr in [gateway_addr, governed_addr] {
            run_wrk(&wrk, addr, "/v1/chat/completions", Some(&script), c, 1);
        }
        let (mut open, mut enforced) = (Vec::new(), Vec::new());
        let (mut open_cpu, mut enforced_cpu) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // The gateway's own CPU time per request answered: steadier on a
            // small shared machine than throughput, which the load generator and
            // the upstream share the cores for.
            let measure = |addr, pid| {
                let before = cpu_seconds(pid);
                let r = run_wrk(&wrk, addr, "/v1/chat/completions", Some(&script), c, secs);
                let per_request = (cpu_seconds(pid) - before) / (r.rps * f64::from(secs)).max(1.0);
                (r, per_request * 1e6)
            };
            let (o, e) = if round % 2 == 0 {
                let o = measure(gateway_addr, gateway_pid);
                (o, measure(governed_addr, governed_pid))
            } else {
                let e = measure(governed_addr, governed_pid);
                (measure(gateway_addr, gateway_pid), e)
            };
            open.push(o.0);
            open_cpu.push(o.1);
            enforced.push(e.0);
            enforced_cpu.push(e.1);
        }
        governed.push((
            c,
            median_run(open),
            median_run(enforced),
            median(open_cpu),
            median(enforced_cpu),
        ));
    }
    println!();
    println!(
        "| chat, conns | open req/s | enforced req/s | cost of enforcement | open CPU/req | enforced CPU/req | cost in CPU | open p99 | enforced p99 | non-2xx o/e |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, o, e, oc, ec) in governed {
        println!(
            "| {c} | {:.0} | {:.0} | {:.1}% | {oc:.1} µs | {ec:.1} µs | {:.1}% | {} | {} | {}/{} |",
            o.rps,
            e.rps,
            100.0 * (1.0 - e.rps / o.rps.max(1.0)),
            100.0 * (ec / oc.max(f64::MIN_POSITIVE) - 1.0),
            ms(o.p99_ms),
            ms(e.p99_ms),
            o.errors,
            e.errors
        );
    }
    if rounds > 1 {
        println!("(medians of {rounds} rounds by req/s)");
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// User and system CPU seconds a process has used (`/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // `pid (comm) state …`: utime and stime are the 12th and 13th fields after comm.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

/// Asked of `getconf` once: readings are taken while the load runs.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The run with the median throughput.
fn median_run(mut runs: Vec<Result>) -> Result {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.swap_remove(runs.len() / 2)
}

fn print_nginx_table(rows: Vec<(&str, u32, Result, Result)>) {
    println!();
    println!(
        "| load | conns | nginx req/s | gateway req/s | gateway/nginx | nginx p50 | gateway p50 | nginx p99 | gateway p99 | non-2xx n/g |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (load, c, n, g) in rows {
        println!(
            "| {load} | {c} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {}/{} |",
            n.rps,
            g.rps,
            g.rps / n.rps.max(1.0),
            ms(n.p50_ms),
            ms(g.p50_ms),
            ms(n.p99_ms),
            ms(g.p99_ms),
            n.errors,
            g.errors
        );
    }
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Children that are stopped when the benchmark ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first: a killed nginx master would leave its workers behind,
            // still holding the port. std has no signal API, hence `kill`.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn wait_ready(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

/// Starts this binary in another role and reads the address it bound.
fn spawn_role(role: &str, upstream: Option<SocketAddr>) -> (Child, SocketAddr) {
    spawn_role_with(role, upstream, &[])
}

fn spawn_role_with(
    role: &str,
    upstream: Option<SocketAddr>,
    env: &[(&str, &str)],
) -> (Child, SocketAddr) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("FLOTILLA_BENCH_ROLE", role)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    if let Some(u) = upstream {
        cmd.env("FLOTILLA_BENCH_UPSTREAM", u.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{role} said {line:?}"));
    (child, addr)
}

fn start_nginx(nginx: &Path, dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> Child {
    // A plain reverse proxy, configured as one would for a fair comparison:
    // upstream keep-alive on (the gateway pools its connections too), no access
    // log (the gateway keeps none), one worker per CPU.
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream model {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    Command::new(nginx)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
struct Result {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn run_wrk(
    wrk: &Path,
    addr: SocketAddr,
    path: &str,
    lua: Option<&Path>,
    conns: u32,
    secs: u32,
) -> Result {
    let mut cmd = Command::new(wrk);
    cmd.arg(format!("-t{}", conns.min(2)))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if let Some(l) = lua {
        cmd.arg("-s").arg(l);
    }
    let out = cmd.arg(format!("http://{addr}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).unwrap_or_else(|| panic!("unreadable wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Result> {
    let mut r = Result {
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => r.rps = v.parse().ok()?,
            (Some("50%"), Some(v)) => r.p50_ms = duration_ms(v)?,
            (Some("99%"), Some(v)) => r.p99_ms = duration_ms(v)?,
            (Some("Non-2xx"), _) => r.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?,
            (Some("Socket"), _) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                r.errors += line
                    .split(',')
                    .filter_map(|p| p.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (r.rps > 0.0).then_some(r)
}

fn duration_ms(v: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|x| x * factor)
}

// ------------------------------------------------------------------ roles

/// A model stand-in as small as can be: a fixed JSON answer to anything.
fn upstream() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    // Read the request to its end, as a model server would.
                    let _ = req.into_body().collect().await;
                    let mut r =
                        Response::new(Full::new(Bytes::from_static(UPSTREAM_BODY.as_bytes())));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}

/// What a gateway enforces for one tenant (`acme`) whose API key is `key`.
fn governance_for(key: &str) -> flotilla_gateway::Governance {
    use flotilla_proto::v1 as pb;
    let id = flotilla_pki::api_key_id(key).unwrap().to_owned();
    flotilla_gateway::Governance::from_registry(
        vec![pb::Tenant {
            name: "acme".into(),
            ..Default::default()
        }],
        vec![pb::ApiKey {
            id,
            tenant: "acme".into(),
            sha256: flotilla_pki::api_key_sha256(key),
            ..Default::default()
        }],
        vec![pb::TenantPolicy {
            tenant: "acme".into(),
            approved_models: vec!["bench".into()],
            // Limits that are checked and charged on every request, but never
            // reached by the load.
            requests_per_minute: flotilla_core::MAX_REQUESTS_PER_MINUTE,
            tokens_per_minute: flotilla_core::MAX_TOKENS_PER_MINUTE,
            ..Default::default()
        }],
    )
}

/// Flotilla's gateway with one local replica (the upstream) serving model
/// `bench`, also reached by a catch-all host rule.
fn gateway() {
    let upstream: SocketAddr = std::env::var("FLOTILLA_BENCH_UPSTREAM")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let routes = StaticRoutes {
            revision: 1,
            gateways: Default::default(),
            routes: vec![],
            replicas: vec![StaticReplica {
                model: "bench".into(),
                address: upstream.to_string(),
                phase: flotilla_gateway::ReplicaPhase::Ready,
                protocol: Default::default(),
                load: None,
            }],
            hosts: vec![HostRule {
                host: None,
                path_prefix: "/".into(),
                service: "bench".into(),
            }],
        };
        let state = RouteState::new(RegistryStatus::Static);
        state.apply(RouteEvent::Replace(routes.to_table("bench").unwrap()));
        let mut config = GatewayConfig::new("bench", "bench");
        // With a key: enforce a tenant that owns it and may call `bench`, as a
        // gateway following the registry's governance does.
        if let Ok(key) = std::env::var("FLOTILLA_BENCH_KEY") {
            config.governance = governance_for(&key);
        }
        config.health = HealthSettings {
            active_interval: None,
            ..HealthSettings::default()
        };
        let inference = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", inference.local_addr().unwrap());
        let (_keep, source) = tokio::sync::mpsc::channel(1);
        Gateway::new(config, state)
            .serve(
                Listeners {
                    inference,
                    east_west: None,
                    admin: None,
                },
                source,
                std::future::pending(),
            )
            .await
            .unwrap();
    });
}
