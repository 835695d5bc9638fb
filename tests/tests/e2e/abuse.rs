//! Abuse cases, one test each (tests/ABUSE.md lists them all, with the older tests that cover
//! more): forged, expired and misused tokens; miners acting for other wallets; results for jobs
//! leased to someone else, unknown, queued, cancelled or already completed; oversized frames,
//! bodies and prompts; slow-loris connections; floods; path traversal in object names and keys;
//! SQL metacharacters in every string field; admin routes without the role. Each is refused
//! with the right status (or close code), and the database proves nothing was stored: rows are
//! counted before and after, and what is stored is read back from the tables themselves.

mod admin;
mod floods;
mod jwt;
mod oversized;
mod results;
mod slow;
mod sql;
mod traversal;
mod wallets;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use infermine_protocol::{
    AgentMessage, CoordinatorMessage, Hello, JobAssignment, JobResult, Metrics,
};
use infermine_tests::raw::{Frame, RawAgent};
use infermine_tests::{Backend, TestServer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A second wallet, for a miner or a session that acts for the first one ([`infermine_tests::WALLET`]).
pub(crate) const OTHER_WALLET: &str = "0x1111111111111111111111111111111111111111";

/// Every table the coordinator writes.
const TABLES: [&str; 11] = [
    "jobs",
    "api_keys",
    "miner_tokens",
    "miners",
    "ledger",
    "holdings",
    "job_objects",
    "wallet_nonces",
    "review_cases",
    "miner_trust",
    "reviews",
];

/// The test server's database, read directly (not through the API under test).
#[derive(Debug)]
pub(crate) enum Tables {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Tables {
    pub(crate) async fn open(server: &TestServer) -> Self {
        let url = server.config.database_url();
        if url.starts_with("sqlite:") {
            Self::Sqlite(sqlx::SqlitePool::connect(&url).await.expect("open SQLite"))
        } else {
            Self::Postgres(sqlx::PgPool::connect(&url).await.expect("open PostgreSQL"))
        }
    }

    /// The values of the first column of `sql`'s rows (text, or null).
    pub(crate) async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        }
        .expect("query")
    }

    /// The integer `sql` selects (such as a count).
    pub(crate) async fn number(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect("query")
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        self.number(&format!("SELECT count(*) FROM {table}")).await
    }

    /// Every table's row count: equal snapshots around a refusal show nothing was stored,
    /// and a snapshot at all shows every table is still there.
    pub(crate) async fn snapshot(&self) -> BTreeMap<&'static str, i64> {
        let mut counts = BTreeMap::new();
        for table in TABLES {
            counts.insert(table, self.count(table).await);
        }
        counts
    }

    /// Consumer jobs only (the reviewer adds jobs of its own).
    pub(crate) async fn consumer_jobs(&self) -> i64 {
        self.number("SELECT count(*) FROM jobs WHERE purpose = 'consumer'")
            .await
    }
}

/// An answer: status, JSON body (null when not JSON) and the raw text.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    pub(crate) fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    /// Asserts the status and that the error message (or the text) mentions `mentions`.
    pub(crate) fn refused(&self, status: u16, mentions: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(
            self.text.contains(mentions),
            "the refusal should mention `{mentions}`: {}",
            self.text
        );
    }
}

pub(crate) async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, body, text }
}

/// `method url` with an optional bearer token and JSON body.
pub(crate) async fn call(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut request =
        reqwest::Client::new().request(method.parse().expect("method"), url.to_owned());
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    send(request).await
}

pub(crate) async fn admin_token(server: &TestServer) -> String {
    infermine_server::mint_admin_token(&server.config, "e2e", Duration::from_secs(3600))
        .await
        .expect("admin token")
}

pub(crate) fn now_s() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(now.as_secs()).expect("seconds")
}

/// The coordinator's signing secret, as it reads it from its data directory.
pub(crate) fn secret(server: &TestServer) -> Vec<u8> {
    std::fs::read_to_string(server.data_dir().join("jwt.secret"))
        .expect("the generated secret")
        .trim()
        .as_bytes()
        .to_vec()
}

/// HMAC (RFC 2104) over `D`, whose block is `block` bytes.
fn hmac<D: Digest>(block: usize, key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut key = if key.len() > block {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    key.resize(block, 0);
    let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = D::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    D::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with `header` and `claims`, signed with `key` by the header's `alg` (HS256 or HS512;
/// anything else, `none` included, gets an empty signature).
pub(crate) fn jwt(header: &Value, claims: &Value, key: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = match header["alg"].as_str() {
        Some("HS256") => b64(&hmac::<Sha256>(64, key, signing_input.as_bytes())),
        Some("HS512") => b64(&hmac::<Sha512>(128, key, signing_input.as_bytes())),
        _ => String::new(),
    };
    format!("{signing_input}.{signature}")
}

pub(crate) fn hs256() -> Value {
    json!({ "alg": "HS256", "typ": "JWT" })
}

/// The claims of a portal token (wallet session or admin) as the coordinator writes them.
pub(crate) fn portal_claims(sub: &str, role: &str, expires_in_s: i64) -> Value {
    json!({
        "sub": sub,
        "role": role,
        "aud": "infermine-portal",
        "iat": now_s(),
        "exp": now_s() + expires_in_s,
    })
}

/// A wallet session for `wallet`, exactly as `POST /api/v1/auth/verify` would answer it.
pub(crate) fn wallet_session(server: &TestServer, wallet: &str) -> String {
    jwt(
        &hs256(),
        &portal_claims(wallet, "wallet", 3600),
        &secret(server),
    )
}

/// Sends `hello` as the first frame and returns how the coordinator closed the socket.
pub(crate) async fn hello_closes(server: &TestServer, hello: Hello) -> (u16, String) {
    let mut agent = RawAgent::connect(&server.ws()).await.expect("connect");
    agent
        .send(&AgentMessage::Hello(hello))
        .await
        .expect("send hello");
    agent.closed(WAIT).await
}

/// The next job frame.
pub(crate) async fn next_job(agent: &mut RawAgent) -> JobAssignment {
    loop {
        match agent.next(WAIT).await {
            Frame::Message(CoordinatorMessage::Job(job)) => return job,
            Frame::Message(_) => continue,
            other => panic!("expected a job, got {other:?}"),
        }
    }
}

/// Sends a heartbeat and checks the session is still open a moment later: frames may come
/// (a cancellation, say), a close may not.
pub(crate) async fn still_connected(agent: &mut RawAgent) {
    agent
        .send(&AgentMessage::Heartbeat { gpus: vec![] })
        .await
        .expect("the session is still open");
    loop {
        match agent.next(Duration::from_millis(300)).await {
            Frame::TimedOut => return,
            Frame::Message(_) => continue,
            closed @ Frame::Closed { .. } => panic!("the session should go on, got {closed:?}"),
        }
    }
}

/// Starts a server on `backend` with the tests' defaults, save two: the reviewer is off (it
/// writes rows of its own after a job completes, which would blur the counts before and after
/// a refusal), and a raw agent may stay silent for 30 s (tests need not answer heartbeats).
pub(crate) async fn server(backend: &Backend) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.review.enabled = false;
        c.agent_timeout_s = 30;
    })
    .await
}

/// SQL metacharacters, quoting, comments, a NUL byte, and unicode beyond ASCII (right-to-left
/// marks, combining characters, an emoji, a character outside the BMP). Each must be refused
/// with a 4xx or stored verbatim.
pub(crate) const NASTY: [&str; 7] = [
    "'; DROP TABLE jobs; --",
    "\" OR 1=1 --",
    "Robert'); DELETE FROM ledger WHERE ('1'='1",
    "x' UNION SELECT key_sha256 FROM api_keys --",
    "nul\u{0}byte",
    "back\\slash \\' %_ \u{7f}",
    "\u{202e}évil ẗext \u{1F600} 𝕌 \u{FEFF}",
];

/// Credits [`infermine_tests::WALLET`] 10 Waifu points for a job on its GPU `rig-gpu0` and opens
/// an open anti-cheat case against that GPU: something for refused admin requests to leave
/// alone.
pub(crate) async fn seed_case(server: &TestServer) -> uuid::Uuid {
    crate::cases::seed(server).await
}

/// The Waifu balance of [`infermine_tests::WALLET`] as the portal shows it, in micro-points.
pub(crate) async fn waifu_balance(server: &TestServer) -> i64 {
    let wallet = server
        .get_json(&format!("/api/v1/wallets/{}", infermine_tests::WALLET))
        .await;
    wallet["balances"]["waifu"]["micro"]
        .as_i64()
        .expect("balance")
}

/// Reads one HTTP response from a raw connection: until its headers and `Content-Length`
/// bytes of body are in, the server closes, or `within` passes. Returns what came.
pub(crate) async fn read_response(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return text,
        }
    }
}

/// Sends `request` (raw bytes) on a new connection and reads the response.
pub(crate) async fn raw_http(server: &TestServer, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    read_response(&mut stream, WAIT).await
}

/// A synthetic job run to completion by a raw agent (so its objects exist); the agent, still
/// connected, and the job's id.
pub(crate) async fn completed_job(server: &TestServer) -> (RawAgent, String) {
    let (mut agent, _) = RawAgent::join(&server.ws(), &server.miner_token("rig").await, 1)
        .await
        .expect("join");
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "output_bytes": 8 }))
        .await;
    let job = next_job(&mut agent).await;
    let result = AgentMessage::Result(JobResult {
        job: job.id,
        output: infermine_tests::raw::synthetic_output(&job.params),
        metrics: Metrics::default(),
    });
    agent.send(&result).await.expect("result");
    let done = client.wait_final(&id, WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    (agent, id)
}
