//! Whole-process benchmark: 3 flotilla servers and 3 etcd members on loopback, fsync on
//! for both, driven by the same load generator at 1, 16 and 64 concurrent clients with
//! the same 256-byte payload. Reports writes/s and p50/p99 commit latency for each, and
//! the ratio flotilla / etcd.
//!
//! ```sh
//! benches/setup-etcd.sh        # etcd-server and protoc (for the etcd-client crate)
//! cargo bench -p flotilla-tests --features etcd-bench --bench registry_vs_etcd
//! ```
//! `BENCH_SECS` (default 5) sets the measured seconds per concurrency level,
//! `BENCH_CLIENTS` (default `1,16,64`) the levels.
//!
//! The flotilla servers are this same executable re-run with `--serve-flotilla`, so each
//! is its own process like each etcd member is. Writes go to the leader of each: an
//! etcd `Put` of a 256-byte value, a flotilla `Propose` whose command JSON is 256 bytes
//! (a `register_cluster` padded with a label), both acknowledged once committed.
//!
//! What is compared, and why it is even: each client task owns one connection (one
//! HTTP/2 channel) to the leader for either system, so neither pays for forwarding or
//! connection setup per request; both write one of 64 keys (etcd) or names (flotilla),
//! so both overwrite; both acknowledge after a majority has fsynced the entry and the
//! leader applied it. Both clusters run throughout, the idle one only heartbeating, and
//! the load generator shares the machine with them for both (it costs about as much CPU
//! as the three servers together at 64 clients, so results on a small machine are
//! CPU-bound for both). Differences that remain: flotilla stores a timestamped openraft
//! entry in JSON (about 350 bytes for the 256-byte command) where etcd stores the
//! protobuf put; flotilla runs first at each level.
//!
//! After each flotilla level every server prints its store's I/O counters on stderr
//! (appends, entries per append, commands per entry, fsyncs and their time): compare
//! those rather than wall-clock numbers when the machine is shared.

use flotilla_client::RegistryClient;
use flotilla_registry::{Bootstrap, RegistryServer, ServerConfig, TransportSecurity};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PAYLOAD: usize = 256;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.iter().any(|a| a == "--serve-flotilla") {
        return rt.block_on(serve(&args));
    }
    if args.iter().any(|a| a == "--list") {
        println!("registry_vs_etcd: bench");
        return Ok(());
    }
    rt.block_on(run())
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The child role: one flotilla server until stdin closes (the parent went away).
async fn serve(args: &[String]) -> Result<(), BoxError> {
    let dir = arg(args, "--data-dir").ok_or("--data-dir")?;
    let listen: SocketAddr = arg(args, "--listen").ok_or("--listen")?.parse()?;
    let id: u64 = arg(args, "--node-id").ok_or("--node-id")?.parse()?;
    let bootstrap = match arg(args, "--join") {
        Some(addr) => Bootstrap::Join(addr.to_owned()),
        None => Bootstrap::Init,
    };
    let mut config = ServerConfig::new(dir, "bench");
    config.node_id = Some(id);
    config.fsync = true;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let server = RegistryServer::start(config, listener, bootstrap).await?;
    // Each line on stdin asks for the store's I/O counters since the last one (on
    // stderr); end of input stops the server.
    tokio::task::spawn_blocking(move || {
        let mut last = flotilla_registry::store::io_stats();
        for line in std::io::BufRead::lines(std::io::stdin().lock()) {
            let Ok(label) = line else { break };
            let now = flotilla_registry::store::io_stats();
            eprintln!("{}", io_line(id, label.trim(), &last, &now));
            last = now;
        }
    })
    .await?;
    server.shutdown().await?;
    Ok(())
}

/// One server's I/O during one level: what the issue asks to count instead of trusting
/// wall-clock numbers on a shared machine.
fn io_line(
    id: u64,
    label: &str,
    a: &flotilla_registry::store::IoStats,
    b: &flotilla_registry::store::IoStats,
) -> String {
    let d = |x: u64, y: u64| y.saturating_sub(x);
    let per = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let fsyncs = d(a.durable_commits, b.durable_commits);
    let commands = d(a.applied_commands, b.applied_commands);
    format!(
        "  io node {id} {label}: {} appends ({:.1} entries each), {} entries applied ({:.1} commands each), {fsyncs} fsyncs ({:.0} us each, {:.3} per command), {} lazy commits",
        d(a.appends, b.appends),
        per(
            d(a.appended_entries, b.appended_entries),
            d(a.appends, b.appends)
        ),
        d(a.applied_entries, b.applied_entries),
        per(commands, d(a.applied_entries, b.applied_entries)),
        per(d(a.durable_commit_micros, b.durable_commit_micros), fsyncs),
        per(fsyncs, commands),
        d(a.lazy_commits, b.lazy_commits),
    )
}

fn free_port() -> Result<u16, BoxError> {
    Ok(flotilla_testkit::free_addr()?.port())
}

/// Child processes, killed when dropped.
struct Procs(Vec<Child>);

impl Procs {
    /// Asks every child (flotilla servers only) to report its I/O counters.
    fn report_io(&mut self, label: &str) {
        for c in &mut self.0 {
            if let Some(stdin) = c.stdin.as_mut() {
                let _ = std::io::Write::write_all(stdin, format!("{label}\n").as_bytes());
                let _ = std::io::Write::flush(stdin);
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_flotilla(root: &Path) -> Result<(Procs, String), BoxError> {
    let exe = std::env::current_exe()?;
    let mut procs = Procs(Vec::new());
    let mut addrs: Vec<String> = Vec::new();
    for id in 1..=3u64 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&exe);
        cmd.arg("--serve-flotilla")
            .args([
                "--data-dir",
                &root.join(format!("flotilla-{id}")).to_string_lossy(),
            ])
            .args(["--listen", &addr])
            .args(["--node-id", &id.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        if let Some(first) = addrs.first() {
            cmd.args(["--join", first.as_str()]);
        }
        procs.0.push(cmd.spawn()?);
        addrs.push(addr.clone());
        if id == 1 {
            wait_for(
                "the first flotilla server",
                Duration::from_secs(20),
                || async {
                    let mut c = RegistryClient::new(&addr, &TransportSecurity::Plaintext).ok()?;
                    let s = c.status().await.ok()?;
                    (s.leader_id == 1).then_some(())
                },
            )
            .await?;
        }
    }
    let first = addrs[0].clone();
    let leader = wait_for("3 flotilla voters", Duration::from_secs(60), || async {
        let mut c = RegistryClient::new(&first, &TransportSecurity::Plaintext).ok()?;
        let s = c.status().await.ok()?;
        let voters = s.members.iter().filter(|m| m.voter).count();
        (voters == 3 && !s.leader_address.is_empty()).then_some(s.leader_address)
    })
    .await?;
    Ok((procs, leader))
}

async fn start_etcd(root: &Path) -> Result<(Procs, Vec<String>), BoxError> {
    let mut members = Vec::new();
    for i in 1..=3 {
        members.push((format!("etcd-{i}"), free_port()?, free_port()?));
    }
    let cluster = members
        .iter()
        .map(|(n, _, peer)| format!("{n}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Procs(Vec::new());
    for (name, client, peer) in &members {
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(root.join(format!("{name}.log")))?;
        procs.0.push(
            Command::new("etcd")
                .args(["--name", name])
                .args(["--data-dir", &root.join(name).to_string_lossy()])
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "flotilla-bench"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start etcd (run benches/setup-etcd.sh): {e}"))?,
        );
    }
    let endpoints: Vec<String> = members
        .iter()
        .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
        .collect();
    // Find the leader: puts go to it, as they do for flotilla.
    let eps = endpoints.clone();
    let leader = wait_for("an etcd leader", Duration::from_secs(30), || {
        let eps = eps.clone();
        async move {
            for ep in &eps {
                let mut c = etcd_client::Client::connect([ep.as_str()], None)
                    .await
                    .ok()?;
                let s = c.status().await.ok()?;
                if s.leader() != 0 && s.leader() == s.header()?.member_id() {
                    return Some(ep.clone());
                }
            }
            None
        }
    })
    .await?;
    Ok((procs, vec![leader]))
}

#[derive(Debug, Default)]
struct Stats {
    writes: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.secs
    }
}

/// The load generator, written once: `clients` tasks each doing `op` back to back.
async fn drive<C, F, Fut>(clients: Vec<C>, secs: f64, op: F) -> Stats
where
    C: Send + 'static,
    F: Fn(&mut C, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let warmup = Duration::from_millis(500);
    let measure = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (n, mut client) in clients.into_iter().enumerate() {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut i = 0u64;
            loop {
                let now = Instant::now();
                if now >= start + warmup + measure {
                    break;
                }
                i += 1;
                let ok = op(&mut client, (n as u64) << 32 | i).await;
                let took = now.elapsed();
                if now >= start + warmup {
                    if ok {
                        lat.push(took);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Stats {
        writes: all.len(),
        secs,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    }
}

/// A 256-byte flotilla command: a register_cluster padded with a label.
fn flotilla_payload(key: u64) -> String {
    let name = format!("bench-{}", key % 64);
    let make = |pad: usize| {
        format!(
            r#"{{"type":"register_cluster","spec":{{"name":"{name}","region":"europe","labels":{{"pad":"{}"}}}}}}"#,
            "x".repeat(pad)
        )
    };
    let base = make(0).len();
    make(PAYLOAD.saturating_sub(base))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run() -> Result<(), BoxError> {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let levels: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let root = std::env::temp_dir().join(format!("flotilla-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = bench(&root, secs, &levels).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn bench(root: &Path, secs: f64, levels: &[usize]) -> Result<(), BoxError> {
    let (mut flotilla, leader) = start_flotilla(root).await?;
    flotilla.report_io("setup");
    let (_etcd, etcd_eps) = start_etcd(root).await?;
    assert_eq!(flotilla_payload(7).len(), PAYLOAD);
    println!(
        "3 flotilla servers (leader {leader}) and 3 etcd members (leader {}), fsync on, {PAYLOAD}-byte writes, {secs}s per level\n",
        etcd_eps[0]
    );
    println!(
        "| clients | flotilla writes/s | p50 ms | p99 ms | etcd writes/s | p50 ms | p99 ms | ratio w/s | ratio p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in levels {
        // One connection per client for both systems.
        let mut fc = Vec::new();
        for _ in 0..n {
            fc.push(RegistryClient::new(&leader, &TransportSecurity::Plaintext)?);
        }
        let f = drive(fc, secs, |c: &mut RegistryClient, key| {
            let mut c = c.clone();
            async move { matches!(c.propose_json(flotilla_payload(key)).await, Ok(r) if r.applied) }
        })
        .await;
        flotilla.report_io(&format!("{n} clients"));
        let mut ec = Vec::new();
        for _ in 0..n {
            ec.push(etcd_client::Client::connect(etcd_eps.clone(), None).await?);
        }
        let value = vec![b'v'; PAYLOAD];
        let e = drive(ec, secs, move |c: &mut etcd_client::Client, key| {
            let mut kv = c.kv_client();
            let value = value.clone();
            async move {
                kv.put(format!("bench-{}", key % 64), value, None)
                    .await
                    .is_ok()
            }
        })
        .await;
        println!(
            "| {n} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            f.rate(),
            ms(f.p50),
            ms(f.p99),
            e.rate(),
            ms(e.p50),
            ms(e.p99),
            f.rate() / e.rate().max(1e-9),
            ms(f.p99) / ms(e.p99).max(1e-9),
        );
        if f.errors + e.errors > 0 {
            println!("  (errors: flotilla {}, etcd {})", f.errors, e.errors);
        }
    }
    Ok(())
}
