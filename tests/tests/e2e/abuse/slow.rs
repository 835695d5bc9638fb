//! Slow-loris: connections that send their request headers a byte at a time, or nothing at
//! all, and agents that connect and never say hello. The coordinator cuts each off on its own
//! clock (`header_timeout_s`, the gateway's hello timeout) while serving everyone else.
//! Bounds are generous: only "cut off, eventually and not never" is asserted.

use std::time::{Duration, Instant};

use infermine_protocol::CloseCode;
use infermine_tests::raw::RawAgent;
use infermine_tests::{Backend, TestServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::Tables;
use crate::on_both_databases;

/// Far beyond the 2 s header timeout these servers run with, for a loaded machine.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(20);

async fn server(backend: &Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.header_timeout_s = 2;
        c.review.enabled = false;
    })
    .await
}

/// A normal request on a connection of its own.
async fn served(server: &TestServer) {
    let response = reqwest::get(format!("{}/v1/models", server.http()))
        .await
        .expect("send");
    assert_eq!(response.status(), 200, "others are served meanwhile");
}

/// Reads until the server closes the connection (or errs); returns what it said.
async fn until_closed(mut stream: tokio::net::tcp::OwnedReadHalf) -> String {
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&said).into_owned(),
            Ok(n) => said.extend_from_slice(&buf[..n]),
        }
    }
}

/// Twenty connections each send the start of a request, then one more header byte every
/// 200 ms, never finishing: each is closed (with 408 or without a word), and a normal
/// request is served while they dribble.
async fn slow_loris_headers(backend: Backend) {
    let server = server(&backend).await;
    let started = Instant::now();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..20 {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"GET /v1/models HTTP/1.1\r\nHost: abuse\r\nX-Slow: ")
            .await
            .expect("write");
        readers.push(tokio::spawn(until_closed(read)));
        writers.push(write);
    }
    let mut served_meanwhile = false;
    while readers.iter().any(|r| !r.is_finished()) {
        assert!(
            started.elapsed() < CUT_OFF_WITHIN,
            "slow connections still open after {CUT_OFF_WITHIN:?}"
        );
        for write in &mut writers {
            // A failed write means the server has already hung up.
            let _ = write.write_all(b"a").await;
        }
        if !served_meanwhile {
            served(&server).await;
            served_meanwhile = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for reader in readers {
        let said = reader.await.expect("reader");
        assert!(
            said.is_empty() || said.starts_with("HTTP/1.1 408"),
            "no response but a timeout: {said:?}"
        );
    }
    assert!(served_meanwhile);
    served(&server).await;
}
on_both_databases!(slow_loris_headers);

/// A connection that never sends a byte is closed too.
async fn silent_connection(backend: Backend) {
    let server = server(&backend).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (read, _write) = stream.into_split();
    let reader = tokio::spawn(until_closed(read));
    served(&server).await;
    let said = tokio::time::timeout(CUT_OFF_WITHIN, reader)
        .await
        .expect("the silent connection is closed")
        .expect("reader");
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said:?}"
    );
    served(&server).await;
}
on_both_databases!(silent_connection);

/// A WebSocket that never sends its hello is closed after the gateway's 10 s with 4000-range
/// `HelloExpected`; nothing is registered or stored.
async fn websocket_without_a_hello(backend: Backend) {
    let server = server(&backend).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let mut agent = RawAgent::connect(&server.ws()).await.expect("connect");
    served(&server).await;
    let (code, reason) = agent.closed(CUT_OFF_WITHIN).await;
    assert_eq!(code, CloseCode::HelloExpected.code(), "{reason}");
    assert!(reason.contains("no hello"), "{reason}");
    let status = server.wait_status("status", |_| true).await;
    assert_eq!(status["agents"], 0, "{status}");
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(websocket_without_a_hello);
