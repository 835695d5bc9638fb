//! The chaos suite: thousands of jobs through a real `infermine-server` process while its
//! agents are killed and wedged at random, the coordinator itself is killed (`SIGKILL`) and
//! started again, and its S3 server is stopped for 30 s. Then the database and the bucket are
//! read directly: no accepted job may be lost, none credited twice, no object missing.
//!
//! ```text
//! cargo test --release -p infermine-tests --test chaos               # short: 10,000 jobs, ~1 min
//! INFERMINE_CHAOS_LONG=1 cargo test --release -p infermine-tests --test chaos -- --nocapture
//! ```
//!
//! The long mode runs 100,000 jobs over 10 minutes with a coordinator kill every 150 s and a
//! 30 s S3 outage every 200 s. `INFERMINE_CHAOS_JOBS`, `INFERMINE_CHAOS_SECONDS` and
//! `INFERMINE_CHAOS_SEED` change the load and replay a run; `INFERMINE_CHAOS_KEEP=1` keeps
//! the coordinator's folder (log, data, SQLite database) for a look afterwards. It runs on SQLite, and on
//! PostgreSQL too when `INFERMINE_TEST_POSTGRES_URL` is set. It prints
//! `chaos: submitted=<n> completed=<n> failed=<n> lost=<n> double_credited=<n> objects_missing=<n>`.

#[path = "chaos/audit.rs"]
mod audit;
#[path = "chaos/consumers.rs"]
mod consumers;
#[path = "chaos/fleet.rs"]
mod fleet;
#[path = "chaos/s3.rs"]
mod s3;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet::Fleet;
use infermine_server::config::Config;
use infermine_tests::Backend;
use infermine_tests::process::ServerProcess;
use tokio::time::Instant;

macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Shared by the coordinator and this suite, which mints its tokens.
const SECRET: &str = "c4a05e7d19b3f2e8a6d4c2b0e9f7a5c3d1b9f7e5c3a1f9e7d5c3b1a9f7e5d3c1";
/// The wallets whose rigs run the agents.
const WALLETS: [&str; 4] = [
    "0x5aeda56215b167893e80b4fe645ba6d5bab767de",
    "0x6813eb9362372eef6200f3b1dbc3f819671cba69",
    "0x1eff47bc3a10a45d4b230b5d10e37751fe6aa718",
    "0xc0ffee254729296a45a3885639ac7e10f9d54979",
];
const AGENTS: usize = 16;

/// xorshift64*: enough randomness for picking victims, and a run replays from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Something the storm does at a moment of the run.
#[derive(Debug, Clone, Copy)]
enum Event {
    S3Down,
    S3Up,
    KillCoordinator,
}

#[derive(Debug)]
struct Plan {
    pace: consumers::Pace,
    events: Vec<(Duration, Event)>,
    seed: u64,
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a whole number")),
    )
}

impl Plan {
    fn from_env() -> Self {
        let long = std::env::var("INFERMINE_CHAOS_LONG").is_ok_and(|v| v == "1");
        let (jobs, seconds) = if long { (100_000, 600) } else { (10_000, 60) };
        let jobs = env_number("INFERMINE_CHAOS_JOBS").unwrap_or(jobs);
        let seconds = env_number("INFERMINE_CHAOS_SECONDS").unwrap_or(seconds);
        let at = Duration::from_secs;
        // The first outage and the kill overlap: the coordinator dies with objects spooled
        // and must upload them after it comes back.
        let mut events = vec![
            (at(10), Event::S3Down),
            (at(25), Event::KillCoordinator),
            (at(40), Event::S3Up),
        ];
        let mut next_outage = 210;
        while next_outage + 40 < seconds {
            events.push((at(next_outage), Event::S3Down));
            events.push((at(next_outage + 30), Event::S3Up));
            next_outage += 200;
        }
        let mut next_kill = 175;
        while next_kill + 10 < seconds {
            events.push((at(next_kill), Event::KillCoordinator));
            next_kill += 150;
        }
        events.sort_by_key(|(at, _)| *at);
        let seed = env_number("INFERMINE_CHAOS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
        Self {
            pace: consumers::Pace {
                jobs: u32::try_from(jobs).expect("INFERMINE_CHAOS_JOBS fits 32 bits"),
                seconds: seconds as f64,
                concurrency: 256,
            },
            events,
            seed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_credited_twice_through_kills_restarts_and_an_s3_outage() {
    infermine_tests::init();
    infermine_tests::cargo_build(&["-p", "infermine-server", "--bin", "infermine-server"]);
    let plan = Plan::from_env();
    run(&plan, None).await;
    if let Some(Backend::Postgres(url)) = Backend::postgres().await {
        run(&plan, Some(url)).await;
    }
}

async fn run(plan: &Plan, postgres: Option<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url =
        postgres.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("chaos.db").display()));
    let database = database_url.split(':').next().unwrap_or_default();
    report!(
        "chaos: {} jobs over {} s on {database}, {AGENTS} agents, seed {}",
        plan.pace.jobs,
        plan.pace.seconds,
        plan.seed
    );
    let s3 = s3::S3Server::start(&dir.path().join("s3"));
    let mut config = Config::with_data_dir(dir.path());
    config.database_url = Some(database_url.clone());
    config.jwt_secret = Some(SECRET.to_owned());
    config.storage.endpoint = Some(s3.endpoint.clone());
    config.storage.access_key = Some(s3::ACCESS_KEY.to_owned());
    config.storage.secret_key = Some(s3::SECRET_KEY.to_owned());
    config.storage.bucket = "chaos".to_owned();
    let key = infermine_server::create_api_key(&config, "chaos")
        .await
        .expect("api key");
    let mut tokens = Vec::new();
    for i in 0..AGENTS {
        let wallet = WALLETS[i % WALLETS.len()];
        let token = infermine_server::mint_miner_token(&config, wallet, &format!("rig{i}"))
            .await
            .expect("miner token");
        tokens.push(token);
    }
    let settings = format!(
        "database_url = \"{database_url}\"\n\
         jwt_secret = \"{SECRET}\"\n\
         heartbeat_interval_s = 1\n\
         agent_timeout_s = 5\n\
         [rate_limits]\nenabled = false\n\
         [review]\nenabled = false\n\
         [storage]\nendpoint = \"{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\nbucket = \"chaos\"\n",
        s3.endpoint,
        s3::ACCESS_KEY,
        s3::SECRET_KEY,
    );
    let mut server = ServerProcess::start("coordinator", dir.path(), &settings).await;
    server.wait_for("/readyz").await;
    let fleet = Fleet::start(&server.ws(), &tokens);
    let base = server.base.clone();
    let started = Instant::now();

    let calm = Arc::new(AtomicBool::new(false));
    let monkey = fleet.unleash_monkey(plan.seed, Arc::clone(&calm));
    let storm = async {
        for (at, event) in &plan.events {
            tokio::time::sleep_until(started + *at).await;
            report!(
                "chaos: {:>5.1} s {event:?}",
                started.elapsed().as_secs_f64()
            );
            match event {
                Event::S3Down => s3.stop().await,
                Event::S3Up => s3.start_again().await,
                Event::KillCoordinator => {
                    server.kill().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    server.start_again().await;
                    report!(
                        "chaos: {:>5.1} s the coordinator is back",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    };
    let shared = Arc::new(tokio::sync::Mutex::new(consumers::Outcome::default()));
    let progress = tokio::spawn(progress(base.clone(), Arc::clone(&shared), started));
    let (outcome, ()) = tokio::join!(
        consumers::run(&base, &key, plan.pace, Arc::clone(&shared)),
        storm
    );
    calm.store(true, Ordering::Release);
    progress.abort();
    let _ = monkey.await;
    let took = started.elapsed();
    report!(
        "chaos: all jobs ended after {:.0} s; waiting for the spool to drain",
        took.as_secs_f64()
    );
    wait_spool_empty(&base).await;
    let fleet_counts = Arc::clone(&fleet.counts);
    fleet.stop();
    server.terminate().await;

    let figures = audit::audit(&database_url, &config.storage, &outcome.seen).await;
    if std::env::var_os("INFERMINE_CHAOS_KEEP").is_some() {
        drop(s3);
        report!(
            "chaos: kept {} (the coordinator's log, data and database)",
            dir.keep().display()
        );
    }
    let c = &outcome.counts;
    report!(
        "chaos: submitted={} completed={} failed={} lost={} double_credited={} objects_missing={}",
        figures.submitted,
        figures.completed,
        figures.failed,
        figures.lost,
        figures.double_credited,
        figures.objects_missing
    );
    report!(
        "chaos: points credited={} expected={} (micro-Llama); objects stored={} expected={}; \
         unacknowledged={} submit_retries={} wait_retries={} on {database} in {:.0} s",
        figures.points_credited,
        figures.points_expected,
        figures.objects_stored,
        figures.objects_expected,
        figures.unacknowledged,
        c.submit_retries.load(Ordering::Relaxed),
        c.wait_retries.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
    for (reason, count) in &figures.failures {
        report!("chaos: failed {count}×: {reason}");
    }
    let f = &fleet_counts;
    report!(
        "chaos: agents: sessions={} kills={} wedges={} results_sent={} failed_connects={}",
        f.sessions.load(Ordering::Relaxed),
        f.kills.load(Ordering::Relaxed),
        f.wedges.load(Ordering::Relaxed),
        f.results.load(Ordering::Relaxed),
        f.connect_failures.load(Ordering::Relaxed)
    );
    assert!(
        outcome.errors.is_empty(),
        "answers that must not happen: {:#?}",
        &outcome.errors[..outcome.errors.len().min(20)]
    );
    assert!(figures.problems.is_empty(), "{:#?}", figures.problems);
    assert_eq!(
        figures.submitted, plan.pace.jobs as usize,
        "every job was accepted"
    );
    assert_eq!(figures.lost, 0);
    assert_eq!(figures.double_credited, 0);
    assert_eq!(figures.objects_missing, 0);
    assert_eq!(figures.completed + figures.failed, figures.submitted);
    assert_eq!(figures.points_credited, figures.points_expected);
}

/// Waits (2 minutes at most) until the coordinator's spool has uploaded everything to S3.
async fn wait_spool_empty(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: serde_json::Value = reqwest::get(format!("{base}/v1/status"))
            .await
            .expect("status")
            .json()
            .await
            .expect("status JSON");
        if status["storage"]["spool"]["objects"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the spool still holds objects 2 minutes after S3 came back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every 5 s: jobs ended so far, and what the coordinator holds (when it answers).
async fn progress(
    base: String,
    outcome: Arc<tokio::sync::Mutex<consumers::Outcome>>,
    started: Instant,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ended = outcome.lock().await.counts.ended.load(Ordering::Relaxed);
        let status = match reqwest::get(format!("{base}/v1/status")).await {
            Ok(response) => response.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let held = status.map_or_else(
            || "the coordinator does not answer".to_owned(),
            |s| {
                format!(
                    "agents={} queued={} leased={} spooled={}",
                    s["agents"], s["queued"], s["leased"], s["storage"]["spool"]["objects"]
                )
            },
        );
        report!(
            "chaos: {:>5.1} s ended={ended} {held}",
            started.elapsed().as_secs_f64()
        );
    }
}
