//! A reader of server-sent events over a live HTTP response, event by event as they arrive,
//! so tests can check that a stream is really streamed (and act between events).

use std::time::Duration;

/// Reads `data` of events (lines joined with `\n`) from a `text/event-stream` response.
#[derive(Debug)]
pub struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The data of the next event (comments, such as keep-alives, are skipped); `None` when
    /// the stream ended. Panics if nothing arrives `within`.
    pub async fn next(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(bytes).expect("events are UTF-8");
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|line| {
                        line.strip_prefix("data: ")
                            .or_else(|| line.strip_prefix("data:"))
                    })
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no server-sent event within {within:?}; buffered: {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    )
                })
                .expect("read the stream");
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    assert!(
                        self.buffer.iter().all(u8::is_ascii_whitespace),
                        "stream ended mid-event: {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    );
                    return None;
                }
            }
        }
    }

    /// Every remaining event's data, until the stream ends.
    pub async fn rest(&mut self, within: Duration) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(event) = self.next(within).await {
            events.push(event);
        }
        events
    }
}
