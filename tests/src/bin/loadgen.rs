//! Load benchmark for the coordinator.
//!
//! Starts `infermine-server` as its own process (so its memory can be read), connects
//! synthetic agents over real WebSockets (they answer every job at once, so what is measured is
//! the coordinator: HTTP, persistence, dispatch, the socket round trip), submits jobs over HTTP
//! and waits for each result with a long-poll. Prints throughput, round-trip percentiles and the
//! server's peak RSS.
//!
//! ```text
//! cargo run --release -p infermine-tests --bin loadgen -- --agents 64 --jobs 20000 --concurrency 128
//! cargo run --release -p infermine-tests --bin loadgen -- --agents 64 --jobs 10000 --rate 1000
//! cargo run --release -p infermine-tests --bin loadgen -- --agents 1 --jobs 0 --idle-agents 10000
//! ```

#![expect(clippy::print_stdout, reason = "the figures are the program's output")]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use infermine_protocol::{AgentMessage, CoordinatorMessage, JobResult, Metrics};
use infermine_server::config::Config;
use infermine_tests::raw::{Frame, RawAgent, synthetic_output};
use infermine_tests::{Client, WALLET};
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(about = "Measure the coordinator: jobs/s, round-trip latency, memory")]
struct Args {
    /// Synthetic agents that answer jobs (one slot each)
    #[arg(long, default_value_t = 8)]
    agents: u32,
    /// Jobs to submit
    #[arg(long, default_value_t = 10_000)]
    jobs: u32,
    /// Jobs in flight at once (closed loop); ignored with --rate
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Submit at this many jobs per second (open loop) instead of as fast as possible
    #[arg(long)]
    rate: Option<u32>,
    /// Extra agents that connect, say hello and stay idle (connection-count test)
    #[arg(long, default_value_t = 0)]
    idle_agents: u32,
    /// Bytes each job returns
    #[arg(long, default_value_t = 64)]
    output_bytes: u32,
    /// The server binary [default: infermine-server next to this binary]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Database URL for the server [default: SQLite in a temporary directory]
    #[arg(long)]
    database_url: Option<String>,
    /// Also print one machine-readable line at the end (`loadgen-summary: key=value ...`:
    /// completed, failed, elapsed_s, jobs_per_s, round-trip p50/p90/p99/max in ms,
    /// server_cpu_us_per_job); bench/dispatch-vs-celery.sh reads it
    #[arg(long)]
    summary_line: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::with_data_dir(dir.path());
    config.database_url = args.database_url.clone();
    let api_key = infermine_server::create_api_key(&config, "loadgen").await?;
    let token = infermine_server::mint_miner_token(&config, WALLET, "loadgen").await?;
    let port = free_port()?;
    let mut server = spawn_server(&args, &config, port)?;
    let base = format!("127.0.0.1:{port}");
    wait_healthy(&base).await?;
    let pid = server.id();
    let client = Client::new(&format!("http://{base}"), &api_key);

    let started = Instant::now();
    for _ in 0..args.agents {
        let (agent, _) = RawAgent::join(&format!("ws://{base}"), &token, 1).await?;
        tokio::spawn(answer_jobs(agent));
    }
    let mut idle = Vec::with_capacity(args.idle_agents as usize);
    for i in 0..args.idle_agents {
        let (agent, _) = RawAgent::join(&format!("ws://{base}"), &token, 1)
            .await
            .with_context(|| format!("idle agent {i}"))?;
        idle.push(tokio::spawn(stay_idle(agent)));
        if (i + 1) % 1000 == 0 {
            eprintln!("loadgen: {} idle agents connected", i + 1);
        }
    }
    let agents = args.agents + args.idle_agents;
    if agents > 0 {
        eprintln!(
            "loadgen: {agents} agents connected in {:.1} s; server RSS {} MiB",
            started.elapsed().as_secs_f64(),
            rss_kib(pid, "VmRSS")? / 1024
        );
    }

    let cpu_before = cpu_seconds(pid)?;
    let (elapsed, latencies, failures) = submit_all(&args, &client).await;
    let server_cpu = cpu_seconds(pid)? - cpu_before;
    let completed = latencies.round_trip.len();
    let rss_now = rss_kib(pid, "VmRSS")?;
    let rss_peak = rss_kib(pid, "VmHWM")?;
    let _ = server.kill();

    println!(
        "loadgen: agents={} idle_agents={} jobs={} mode={}",
        args.agents,
        args.idle_agents,
        args.jobs,
        args.rate.map_or_else(
            || format!("closed-loop concurrency={}", args.concurrency),
            |r| format!("open-loop rate={r}/s")
        )
    );
    if args.jobs > 0 {
        println!(
            "loadgen: completed={completed} failed={failures} elapsed={:.2}s throughput={:.0} jobs/s",
            elapsed.as_secs_f64(),
            completed as f64 / elapsed.as_secs_f64()
        );
        println!(
            "loadgen: server cpu={server_cpu:.2}s ({:.0} us/job, {:.0}% of one core)",
            server_cpu * 1e6 / completed.max(1) as f64,
            server_cpu * 100.0 / elapsed.as_secs_f64()
        );
        let line = |name: &str, sorted: &[u64]| {
            println!(
                "loadgen: {name}: p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
                percentile(sorted, 0.50),
                percentile(sorted, 0.90),
                percentile(sorted, 0.99),
                percentile(sorted, 1.0)
            );
        };
        line(
            "round trip submit->result (agent work ~0)",
            &latencies.round_trip,
        );
        line(
            "inside the coordinator (job persisted -> result persisted, 1 ms resolution)",
            &latencies.server,
        );
    }
    println!(
        "loadgen: server rss_now={} MiB rss_peak={} MiB",
        rss_now / 1024,
        rss_peak / 1024
    );
    if args.summary_line {
        let rt = &latencies.round_trip;
        println!(
            "loadgen-summary: completed={completed} failed={failures} elapsed_s={:.3} \
             jobs_per_s={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} \
             server_cpu_us_per_job={:.0}",
            elapsed.as_secs_f64(),
            completed as f64 / elapsed.as_secs_f64(),
            percentile(rt, 0.50),
            percentile(rt, 0.90),
            percentile(rt, 0.99),
            percentile(rt, 1.0),
            server_cpu * 1e6 / completed.max(1) as f64
        );
    }
    if failures > 0 {
        bail!("{failures} jobs did not complete");
    }
    Ok(())
}

fn spawn_server(args: &Args, config: &Config, port: u16) -> anyhow::Result<std::process::Child> {
    let binary = match &args.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("infermine-server"),
    };
    let mut command = std::process::Command::new(&binary);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&config.data_dir)
        .env("RUST_LOG", "warn")
        // One client on loopback is the whole point here, not abuse.
        .env("INFERMINE_RATE_LIMITS_ENABLED", "false")
        .stdin(Stdio::null());
    if let Some(url) = &config.database_url {
        command.args(["--database-url", url]);
    }
    command.spawn().with_context(|| {
        format!(
            "cannot start {} (build it with `cargo build --release -p infermine-server`)",
            binary.display()
        )
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_healthy(base: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if reqwest::get(format!("http://{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not become healthy on {base}")
}

/// A synthetic agent: every job is answered at once with the bytes it asked for.
async fn answer_jobs(mut agent: RawAgent) {
    loop {
        match agent.next(Duration::from_secs(3600)).await {
            Frame::Message(CoordinatorMessage::Job(job)) => {
                let result = JobResult {
                    job: job.id,
                    output: synthetic_output(&job.params),
                    metrics: Metrics::default(),
                };
                if agent.send(&AgentMessage::Result(result)).await.is_err() {
                    return;
                }
            }
            Frame::Message(_) => {}
            Frame::Closed { .. } | Frame::TimedOut => return,
        }
    }
}

/// An agent that only keeps its session alive.
async fn stay_idle(mut agent: RawAgent) {
    loop {
        if let Frame::Closed { .. } = agent.next(Duration::from_secs(10)).await {
            return;
        }
        if agent
            .send(&AgentMessage::Heartbeat { gpus: vec![] })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Per-job latencies in µs, sorted.
#[derive(Debug, Default)]
struct Latencies {
    /// What the consumer saw: from sending the submit to holding the result.
    round_trip: Vec<u64>,
    /// What the coordinator measured: from persisting the job to persisting its result
    /// (millisecond resolution).
    server: Vec<u64>,
}

/// Submits every job and waits for each result; returns wall time, latencies, failures.
async fn submit_all(args: &Args, client: &Client) -> (Duration, Latencies, usize) {
    let limit = Arc::new(Semaphore::new(
        args.rate.map_or(args.concurrency, |_| 100_000),
    ));
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.jobs as usize);
    for i in 0..args.jobs {
        if let Some(interval) = interval {
            tokio::time::sleep_until((started + interval * i).into()).await;
        }
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .expect("semaphore open");
        let client = client.clone();
        let params = json!({ "output_bytes": args.output_bytes, "seed": i });
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let (status, body) = client.submit("synthetic-echo", params).await;
            if status != 202 {
                return None;
            }
            let id = body["id"].as_str()?.to_owned();
            let view = client.wait_final(&id, Duration::from_secs(60)).await;
            let round_trip = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            let server_us = view["total_ms"].as_u64().unwrap_or(u64::MAX / 1000) * 1000;
            (view["status"] == "completed").then_some((round_trip, server_us))
        }));
    }
    let mut latencies = Latencies::default();
    let mut failures = 0;
    for task in tasks {
        match task.await {
            Ok(Some((round_trip, server))) => {
                latencies.round_trip.push(round_trip);
                latencies.server.push(server);
            }
            _ => failures += 1,
        }
    }
    latencies.round_trip.sort_unstable();
    latencies.server.sort_unstable();
    (started.elapsed(), latencies, failures)
}

fn percentile(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    Ok(ticks / 100.0)
}

/// A memory figure of a process from /proc, in KiB (`VmRSS` now, `VmHWM` peak).
fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{field} not in /proc/{pid}/status"))
}
