//! The link to the coordinator: dial, run a [`session`], and dial again with backoff, until
//! shutdown or a refusal that reconnecting cannot fix.

mod backoff;
mod session;
#[cfg(test)]
mod socket_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use infermine_protocol::{Hello, MAX_FRAME_BYTES, ModelInfo, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use self::backoff::{Backoff, HEALTHY_SESSION, INITIAL_BACKOFF};
use self::session::{Session, SessionEnd};
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::gpu::Devices;
use crate::slots::{SlotEvent, Slots};

/// The build this agent announces in its hello.
pub(crate) const AGENT_VERSION: &str = concat!("infermine-agent ", env!("CARGO_PKG_VERSION"));

/// TCP connect, TLS and the WebSocket upgrade together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the link borrows from the agent for its whole life.
pub(crate) struct Link<'a> {
    pub(crate) config: &'a AgentConfig,
    /// Manifest digest of each verified model with files.
    pub(crate) digests: &'a HashMap<String, String>,
    pub(crate) devices: Arc<Devices>,
    pub(crate) slots: &'a Slots,
    pub(crate) events: &'a mut mpsc::Receiver<SlotEvent>,
    pub(crate) shutdown: &'a mut watch::Receiver<bool>,
}

impl Link<'_> {
    /// Keeps a session with the coordinator up until shutdown (`Ok`) or a refusal (`Err`).
    pub(crate) async fn run(mut self) -> Result<(), AgentError> {
        let hello = hello(self.config, &self.devices, self.digests);
        #[cfg(feature = "cheat-lab")]
        let hello = crate::cheat::claim_gpus(hello);
        let mut backoff = Backoff::new(INITIAL_BACKOFF, self.config.max_backoff);
        loop {
            let started = Instant::now();
            let connected = tokio::select! {
                connected = connect(&self.config.coordinator) => connected,
                () = shutdown_requested(self.shutdown) => return Ok(()),
            };
            let end = match connected {
                Ok(socket) => {
                    let (sink, stream) = socket.split();
                    let session = Session {
                        hello: hello.clone(),
                        devices: Arc::clone(&self.devices),
                        slots: self.slots,
                        events: self.events,
                        shutdown: self.shutdown,
                        drain_timeout: self.config.drain_timeout,
                        models_dir: self.config.models_dir.clone(),
                    };
                    session::run(sink, stream, session).await
                }
                Err(end) => end,
            };
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Refused(refusal) => return Err(refusal),
                SessionEnd::Lost(why) => tracing::warn!("coordinator link down: {why}"),
            }
            if self.slots.in_flight() > 0 {
                tracing::info!(
                    "{} job(s) still running; their results will be discarded (the coordinator \
                     requeues them)",
                    self.slots.in_flight()
                );
            }
            if started.elapsed() > HEALTHY_SESSION {
                backoff.reset();
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tracing::info!("reconnecting in {:.1} s", delay.as_secs_f64());
            if !self.pause(delay).await {
                return Ok(());
            }
        }
    }

    /// Waits between attempts, discarding what the slots report for jobs of the lost session.
    /// Returns false when shutdown was requested meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = &mut wake => return true,
                () = shutdown_requested(self.shutdown) => return false,
                Some(event) = self.events.recv() => {
                    if let SlotEvent::Finished { job, .. } = event {
                        tracing::info!(%job, "job finished while disconnected; result discarded");
                    }
                }
            }
        }
    }
}

fn hello(config: &AgentConfig, devices: &Devices, digests: &HashMap<String, String>) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.to_owned(),
        token: config.token.clone(),
        gpus: devices.infos().to_vec(),
        models: config
            .models
            .iter()
            .map(|id| ModelInfo {
                id: id.clone(),
                sha256: digests.get(id).cloned().unwrap_or_default(),
            })
            .collect(),
    }
}

/// Dials the coordinator. An upgrade answered 401 or 403 is a refusal; anything else is
/// worth retrying.
async fn connect(url: &str) -> Result<Socket, SessionEnd> {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES));
    let dialed = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await;
    match dialed {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(WsError::Http(response))) => {
            let status = response.status();
            let body: String = response
                .body()
                .as_deref()
                .map(|body| String::from_utf8_lossy(body).chars().take(200).collect())
                .unwrap_or_default();
            if status == 401 || status == 403 {
                let reason = format!("HTTP {status} {body}");
                return Err(SessionEnd::Refused(AgentError::Unauthorized { reason }));
            }
            let hint = if status == 404 {
                " (is the coordinator URL right? its agent endpoint is /v1/agent/ws)"
            } else {
                ""
            };
            Err(SessionEnd::Lost(format!(
                "{url} answered HTTP {status}{hint} {body}"
            )))
        }
        Ok(Err(e)) => Err(SessionEnd::Lost(format!("could not connect to {url}: {e}"))),
        Err(_) => Err(SessionEnd::Lost(format!(
            "could not connect to {url} within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// Resolves once shutdown is requested; never, if the sender is gone without asking.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
