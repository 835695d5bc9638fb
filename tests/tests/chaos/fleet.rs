//! Synthetic agents that behave like real ones under a process supervisor: they answer jobs
//! (after the delay a job asks for), answer heartbeats, and when they lose their connection
//! they come back. The chaos monkey kills them (the socket drops mid-job, as when the process
//! dies) or wedges them (the socket stays open but nothing is read or answered, as when a
//! machine hangs), at random.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use infermine_protocol::{
    AgentMessage, CoordinatorMessage, DeviceKind, GpuInfo, Hello, JobOutput, JobParams, JobResult,
    LlmUsage, Metrics, ModelInfo, PROTOCOL_VERSION,
};
use infermine_tests::raw::{Frame, RawAgent, synthetic_output};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Rng;

/// The LLM every agent serves besides `synthetic-echo`, and what each completion claims.
pub const LLM: &str = "dolphin-2.9-llama3-8b";
pub const PROMPT_TOKENS: u32 = 4;
pub const COMPLETION_TOKENS: u32 = 996;

/// What the monkey does to an agent.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    /// Drop the connection at once, then reconnect after `down`.
    Kill { down: Duration },
    /// Stop reading and answering for `hang`, then drop the connection and reconnect.
    Wedge { hang: Duration },
}

/// Counts of what happened to the fleet.
#[derive(Debug, Default)]
pub struct Counts {
    pub sessions: AtomicU64,
    pub results: AtomicU64,
    pub kills: AtomicU64,
    pub wedges: AtomicU64,
    pub connect_failures: AtomicU64,
}

#[derive(Debug)]
pub struct Fleet {
    orders: Vec<mpsc::UnboundedSender<Order>>,
    tasks: Vec<JoinHandle<()>>,
    pub counts: Arc<Counts>,
}

fn hello(token: &str, index: usize) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "chaos-agent".to_owned(),
        token: token.to_owned(),
        gpus: vec![GpuInfo {
            index: 0,
            kind: DeviceKind::Cuda,
            uuid: format!("GPU-chaos-{index}"),
            name: "NVIDIA H100 80GB HBM3".to_owned(),
            vram_mb: 81_559,
        }],
        models: ["synthetic-echo", LLM]
            .iter()
            .map(|id| ModelInfo {
                id: (*id).to_owned(),
                sha256: String::new(),
            })
            .collect(),
    }
}

/// What an honest engine returns for `params`.
fn output_for(params: &JobParams) -> JobOutput {
    match params {
        JobParams::Llm(_) => JobOutput::Text {
            text: "The lighthouse keeper lit the lamp.".to_owned(),
            usage: LlmUsage {
                prompt_tokens: PROMPT_TOKENS,
                completion_tokens: COMPLETION_TOKENS,
            },
            finish_reason: "length".to_owned(),
            token_ids: Vec::new(),
        },
        _ => synthetic_output(params),
    }
}

fn delay_of(params: &JobParams) -> Duration {
    match params {
        JobParams::Synthetic(p) => Duration::from_millis(u64::from(p.delay_ms)),
        _ => Duration::from_millis(5),
    }
}

impl Fleet {
    /// Starts one supervised agent per token, each with one GPU, against `ws` (which may be
    /// down for a while: they keep trying).
    pub fn start(ws: &str, tokens: &[String]) -> Self {
        let counts = Arc::new(Counts::default());
        let mut orders = Vec::new();
        let mut tasks = Vec::new();
        for (index, token) in tokens.iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            orders.push(tx);
            tasks.push(tokio::spawn(supervise(
                ws.to_owned(),
                hello(token, index),
                rx,
                Arc::clone(&counts),
            )));
        }
        Self {
            orders,
            tasks,
            counts,
        }
    }

    /// Until `calm`, every 250 ms kills a random agent (down for 50 ms to 1 s) or, one time in
    /// ten, wedges one for 7 s (longer than the coordinator's 5 s agent timeout).
    pub fn unleash_monkey(&self, seed: u64, calm: Arc<AtomicBool>) -> JoinHandle<()> {
        let orders = self.orders.clone();
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            while !calm.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let victim = rng.below(orders.len() as u64) as usize;
                let order = if rng.below(10) == 0 {
                    Order::Wedge {
                        hang: Duration::from_secs(7),
                    }
                } else {
                    Order::Kill {
                        down: Duration::from_millis(50 + rng.below(950)),
                    }
                };
                let _ = orders[victim].send(order);
            }
        })
    }

    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Runs agent sessions until aborted, reconnecting after every loss.
async fn supervise(
    ws: String,
    hello: Hello,
    mut orders: mpsc::UnboundedReceiver<Order>,
    counts: Arc<Counts>,
) {
    loop {
        let mut agent = match RawAgent::join_with(&ws, hello.clone()).await {
            Ok((agent, _)) => agent,
            Err(_) => {
                counts.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        agent.answer_heartbeats();
        counts.sessions.fetch_add(1, Ordering::Relaxed);
        let pause = match session(&mut agent, &mut orders, &counts).await {
            Some(Order::Kill { down }) => {
                counts.kills.fetch_add(1, Ordering::Relaxed);
                down
            }
            Some(Order::Wedge { hang }) => {
                counts.wedges.fetch_add(1, Ordering::Relaxed);
                // Holds the socket without reading it: the coordinator must notice by itself.
                tokio::time::sleep(hang).await;
                Duration::ZERO
            }
            // The coordinator went away or closed the session: back shortly, like a service
            // manager's restart.
            None => Duration::from_millis(100),
        };
        drop(agent);
        tokio::time::sleep(pause).await;
    }
}

/// Serves jobs in arrival order until the connection ends (`None`) or an order comes.
async fn session(
    agent: &mut RawAgent,
    orders: &mut mpsc::UnboundedReceiver<Order>,
    counts: &Counts,
) -> Option<Order> {
    let mut pending: VecDeque<(Instant, JobResult)> = VecDeque::new();
    loop {
        let next_due = pending.front().map(|(due, _)| *due);
        tokio::select! {
            order = orders.recv() => return order,
            () = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some((_, result)) = pending.pop_front() else { continue };
                if agent.send(&AgentMessage::Result(result)).await.is_err() {
                    return None;
                }
                counts.results.fetch_add(1, Ordering::Relaxed);
            }
            frame = agent.next(Duration::from_secs(30)) => match frame {
                Frame::Message(CoordinatorMessage::Job(job)) => {
                    // One slot: a job starts when the one before it is done.
                    let start = pending.back().map_or_else(Instant::now, |(due, _)| *due);
                    let result = JobResult {
                        job: job.id,
                        output: output_for(&job.params),
                        metrics: Metrics::default(),
                    };
                    pending.push_back((start + delay_of(&job.params), result));
                }
                Frame::Message(_) => {}
                Frame::Closed { .. } | Frame::TimedOut => return None,
            },
        }
    }
}
