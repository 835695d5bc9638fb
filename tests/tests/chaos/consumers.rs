//! Consumers that behave like careful API clients: submit at a steady pace, retry a submit the
//! coordinator did not answer (it may be restarting), then long-poll the job until it is final,
//! riding out the restart too. A job counts as submitted only once the coordinator answered
//! `202` with its id: from then on it must never be lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use super::fleet::{COMPLETION_TOKENS, LLM};

/// How many jobs, over how long, how many in flight.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub jobs: u32,
    pub seconds: f64,
    pub concurrency: usize,
}

/// One accepted job and how it ended, as the consumer saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    /// The final status, or `None` if the consumer gave up waiting.
    pub status: Option<String>,
}

#[derive(Debug, Default)]
pub struct Counts {
    /// Submits sent again because the first try got no answer or a 503.
    pub submit_retries: AtomicU64,
    /// Waits sent again for the same reasons.
    pub wait_retries: AtomicU64,
    /// Jobs whose end the consumer saw.
    pub ended: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub seen: Vec<Seen>,
    /// Answers that must never happen (a 5xx other than 503, a 404 for an accepted job,
    /// a refused submit), with their bodies.
    pub errors: Vec<String>,
    pub counts: Counts,
}

/// Every job `i`: every fifth is a chat completion (earns Llama points), the rest synthetic.
fn request(i: u32) -> Value {
    if i.is_multiple_of(5) {
        json!({ "model": LLM, "params": {
            "messages": [{ "role": "user", "content": format!("Tell me about lighthouse {i}.") }],
            "max_tokens": COMPLETION_TOKENS,
            "seed": i,
        }})
    } else {
        json!({ "model": "synthetic-echo", "params": {
            "output_bytes": 64 + i % 1024, "delay_ms": i % 40, "seed": i,
        }})
    }
}

/// Submits `pace.jobs` jobs evenly over `pace.seconds` and waits for each to be final.
/// `outcome` fills as jobs end (a progress report may read its counts meanwhile).
pub async fn run(base: &str, key: &str, pace: Pace, outcome: Arc<Mutex<Outcome>>) -> Outcome {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let permits = Arc::new(Semaphore::new(pace.concurrency));
    let started = Instant::now();
    let gap = Duration::from_secs_f64(pace.seconds / f64::from(pace.jobs.max(1)));
    let mut tasks = Vec::with_capacity(pace.jobs as usize);
    for i in 0..pace.jobs {
        tokio::time::sleep_until(started + gap * i).await;
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("semaphore");
        let (http, base, key) = (http.clone(), base.to_owned(), key.to_owned());
        let outcome = Arc::clone(&outcome);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            one_job(&http, &base, &key, i, &outcome).await;
        }));
    }
    for task in tasks {
        task.await.expect("consumer task");
    }
    std::mem::take(&mut *outcome.lock().await)
}

async fn one_job(http: &reqwest::Client, base: &str, key: &str, i: u32, outcome: &Mutex<Outcome>) {
    let body = request(i);
    let give_up = Instant::now() + Duration::from_secs(300);
    let id = loop {
        match send(http.post(format!("{base}/v1/jobs")).json(&body), key).await {
            Some((202, view)) => break view["id"].as_str().expect("id").to_owned(),
            None | Some((503, _)) if Instant::now() < give_up => {
                // One statement: the lock must not be held across the sleep.
                outcome
                    .lock()
                    .await
                    .counts
                    .submit_retries
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => {
                let error = format!("submit of job {i}: {other:?}");
                outcome.lock().await.errors.push(error);
                return;
            }
        }
    };
    let mut status = None;
    while Instant::now() < give_up {
        let url = format!("{base}/v1/jobs/{id}?wait=20");
        match send(http.get(url), key).await {
            Some((200, view)) => {
                let state = view["status"].as_str().unwrap_or_default();
                if matches!(state, "completed" | "failed" | "cancelled") {
                    status = Some(state.to_owned());
                    break;
                }
            }
            None | Some((503, _)) => {
                outcome
                    .lock()
                    .await
                    .counts
                    .wait_retries
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(other) => {
                let error = format!("wait for job {id}: {other:?}");
                outcome.lock().await.errors.push(error);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut outcome = outcome.lock().await;
    if status.is_some() {
        outcome.counts.ended.fetch_add(1, Ordering::Relaxed);
    }
    outcome.seen.push(Seen { id, status });
}

/// Sends with the API key; `None` when no answer came (refused, reset, timed out).
async fn send(request: reqwest::RequestBuilder, key: &str) -> Option<(u16, Value)> {
    let response = request.bearer_auth(key).send().await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}
