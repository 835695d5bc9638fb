//! SQL metacharacters, quotes, comments, NUL bytes and unicode ([`NASTY`]) in every string a
//! consumer, a miner or an admin can send. Each is either refused with a 4xx naming the field,
//! or stored verbatim: read back byte for byte from the tables and the API, with every table
//! still there and holding exactly the rows expected.

use infermine_protocol::{
    AgentMessage, CloseCode, CoordinatorMessage, Hello, JobOutput, JobParams, JobResult, LlmUsage,
    Metrics, ModelInfo, PROTOCOL_VERSION,
};
use infermine_tests::raw::{Frame, RawAgent, cpu_device};
use infermine_tests::{Backend, Client, WALLET};
use serde_json::{Value, json};

use super::{
    NASTY, Tables, WAIT, admin_token, call, hello_closes, next_job, seed_case, server,
    wallet_session,
};
use crate::chat::join;
use crate::on_both_databases;

/// `text` as one URL path segment or query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

fn nasty() -> Vec<String> {
    sorted(NASTY.iter().map(|s| (*s).to_owned()).collect())
}

fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// What may be stored: every payload but those with a NUL character (PostgreSQL cannot keep
/// one in text, so the coordinator refuses it everywhere), sorted.
fn storable() -> Vec<String> {
    sorted(
        NASTY
            .iter()
            .filter(|s| !has_nul(s))
            .map(|s| (*s).to_owned())
            .collect(),
    )
}

/// A NUL character refused: 400 `invalid_character`, naming `param`.
fn nul_refused(status: u16, body: &Value, param: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_character", "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("NUL"), "{message}");
}

/// The non-null texts of `sql`'s first column, sorted.
async fn column(tables: &Tables, sql: &str) -> Vec<String> {
    sorted(tables.texts(sql).await.into_iter().flatten().collect())
}

async fn model_names(backend: Backend) {
    let server = server(&backend).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let client = server.client();
    for model in NASTY {
        let (status, body) = client.submit(model, json!({})).await;
        let chat = json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] });
        let reply = call(
            "POST",
            &format!("{}/v1/chat/completions", server.http()),
            Some(&server.api_key),
            Some(&chat),
        )
        .await;
        if has_nul(model) {
            nul_refused(status, &body, "model");
            nul_refused(reply.status, &reply.body, "model");
            continue;
        }
        assert_eq!(
            (status, &body["error"]["param"]),
            (404, &json!("model")),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(model),
            "the message quotes it verbatim: {body}"
        );
        assert_eq!(reply.status, 404, "{}", reply.text);
        assert_eq!(reply.body["error"]["param"], "model");
    }
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(model_names);

/// Chat messages and stop strings as prompts (a NUL is refused, naming the message), and the
/// miner's completion text (a NUL included: it is stored as JSON): stored, sent to the agent
/// and returned to the consumer byte for byte.
async fn chat_prompts_and_completions(backend: Backend) {
    let server = server(&backend).await;
    let mut agent = join(&server, "tiny-llama").await;
    let client = server.client();
    for text in NASTY {
        let chat = |content: &str| json!({ "messages": [{ "role": "user", "content": content }], "stop": [content], "max_tokens": 8 });
        let prompt = if has_nul(text) {
            let (status, body) = client.submit("tiny-llama", chat(text)).await;
            nul_refused(status, &body, "params.messages[0].content");
            let mut openai = chat(text);
            openai["model"] = json!("tiny-llama");
            let reply = call(
                "POST",
                &format!("{}/v1/chat/completions", server.http()),
                Some(&server.api_key),
                Some(&openai),
            )
            .await;
            nul_refused(reply.status, &reply.body, "messages[0].content");
            "plain"
        } else {
            text
        };
        let id = client.submit_ok("tiny-llama", chat(prompt)).await;
        let job = next_job(&mut agent).await;
        let JobParams::Llm(sent) = &job.params else {
            panic!("an LLM job: {:?}", job.params)
        };
        assert_eq!(
            sent.messages[0].content, prompt,
            "the agent gets it verbatim"
        );
        assert_eq!(sent.stop, [prompt]);
        let result = AgentMessage::Result(JobResult {
            job: job.id,
            output: JobOutput::Text {
                text: text.to_owned(),
                usage: LlmUsage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
                finish_reason: "stop".to_owned(),
                token_ids: Vec::new(),
            },
            metrics: Metrics::default(),
        });
        agent.send(&result).await.expect("result");
        let done = client.wait_final(&id, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["output"]["text"], text, "returned verbatim");
    }
    let tables = Tables::open(&server).await;
    let stored: Vec<String> = tables
        .texts("SELECT params FROM jobs")
        .await
        .into_iter()
        .flatten()
        .map(|p| {
            let params: Value = serde_json::from_str(&p).expect("params JSON");
            assert_eq!(params["stop"][0], params["messages"][0]["content"]);
            params["messages"][0]["content"]
                .as_str()
                .expect("content")
                .to_owned()
        })
        .collect();
    let mut prompts = storable();
    prompts.push("plain".to_owned());
    assert_eq!(sorted(stored), sorted(prompts), "stored verbatim");
    let outputs: Vec<String> = column(&tables, "SELECT output FROM jobs")
        .await
        .iter()
        .map(|o| {
            let output: Value = serde_json::from_str(o).expect("output JSON");
            output["text"].as_str().expect("text").to_owned()
        })
        .collect();
    assert_eq!(sorted(outputs), nasty());
    assert_eq!(tables.count("jobs").await, 7);
    assert_eq!(tables.count("ledger").await, 7);
    assert_eq!(tables.count("job_objects").await, 21);
}
on_both_databases!(chat_prompts_and_completions);

async fn image_prompts(backend: Backend) {
    let server = server(&backend).await;
    let client = server.client();
    for text in NASTY {
        let params = |prompt: &str, negative: &str| {
            json!({
                "prompt": prompt, "negative_prompt": negative,
                "width": 1024, "height": 1024, "steps": 20,
            })
        };
        if has_nul(text) {
            let (status, body) = client.submit("sdxl-base-1.0", params(text, "x")).await;
            nul_refused(status, &body, "params.prompt");
            let (status, body) = client.submit("sdxl-base-1.0", params("x", text)).await;
            nul_refused(status, &body, "params.negative_prompt");
        } else {
            client.submit_ok("sdxl-base-1.0", params(text, text)).await;
        }
    }
    let tables = Tables::open(&server).await;
    let mut prompts = Vec::new();
    for params in column(&tables, "SELECT params FROM jobs").await {
        let params: Value = serde_json::from_str(&params).expect("params JSON");
        assert_eq!(params["prompt"], params["negative_prompt"]);
        prompts.push(params["prompt"].as_str().expect("prompt").to_owned());
    }
    assert_eq!(sorted(prompts), storable(), "stored verbatim");
    assert_eq!(tables.count("jobs").await, 6);
}
on_both_databases!(image_prompts);

async fn wallet_addresses(backend: Backend) {
    let server = server(&backend).await;
    let admin = admin_token(&server).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let base = server.http();
    for address in NASTY {
        // A NUL is refused first, naming the field (the path, or the query parameter).
        let nul = has_nul(address);
        let reply = call(
            "POST",
            &format!("{base}/api/v1/auth/nonce"),
            None,
            Some(&json!({ "address": address })),
        )
        .await;
        if nul {
            nul_refused(reply.status, &reply.body, "address");
        } else {
            reply.refused(422, "is not a 0x-prefixed 40-digit hex address");
            assert_eq!(reply.body["error"]["param"], "address");
        }
        let slash = json!({ "address": address, "fraction": 1.0, "reason": "x" });
        let reply = call(
            "POST",
            &format!("{base}/api/v1/admin/slashes"),
            Some(&admin),
            Some(&slash),
        )
        .await;
        if nul {
            nul_refused(reply.status, &reply.body, "address");
        } else {
            reply.refused(400, "0x-prefixed");
        }
        let encoded = encode(address);
        for (path, bearer) in [
            (format!("/api/v1/wallets/{encoded}"), None),
            (format!("/api/v1/wallets/{encoded}/ledger"), None),
            (format!("/api/v1/wallets/{encoded}/points-history"), None),
            (format!("/api/v1/slashes?address={encoded}"), None),
            (
                format!("/api/v1/admin/cases?address={encoded}"),
                Some(&admin),
            ),
        ] {
            let reply = call(
                "GET",
                &format!("{base}{path}"),
                bearer.map(String::as_str),
                None,
            )
            .await;
            if !nul {
                reply.refused(400, "0x-prefixed");
            } else if path.contains('?') {
                nul_refused(reply.status, &reply.body, "address");
            } else {
                reply.refused(400, "the path contains a NUL character");
            }
        }
    }
    assert_eq!(tables.snapshot().await, before, "nothing stored");
}
on_both_databases!(wallet_addresses);

async fn miner_token_names(backend: Backend) {
    let server = server(&backend).await;
    let session = wallet_session(&server, WALLET);
    let tables = Tables::open(&server).await;
    for name in NASTY {
        let reply = call(
            "POST",
            &format!("{}/api/v1/miner-tokens", server.http()),
            Some(&session),
            Some(&json!({ "name": name })),
        )
        .await;
        if has_nul(name) {
            nul_refused(reply.status, &reply.body, "name");
        } else {
            reply.refused(422, "letters, digits");
            assert_eq!(reply.body["error"]["param"], "name");
        }
        let minted = infermine_server::mint_miner_token(&server.config, WALLET, name).await;
        assert!(minted.is_err(), "the CLI refuses it too");
    }
    assert_eq!(tables.count("miner_tokens").await, 0, "nothing minted");
}
on_both_databases!(miner_token_names);

async fn slash_reasons(backend: Backend) {
    let server = server(&backend).await;
    seed_case(&server).await;
    let admin = admin_token(&server).await;
    for reason in NASTY {
        let body = json!({
            "address": WALLET, "kind": "waifu", "points": 0.001, "reason": reason,
        });
        let reply = call(
            "POST",
            &format!("{}/api/v1/admin/slashes", server.http()),
            Some(&admin),
            Some(&body),
        )
        .await;
        if has_nul(reason) {
            nul_refused(reply.status, &reply.body, "reason");
        } else {
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
    }
    let tables = Tables::open(&server).await;
    let stored = column(&tables, "SELECT reason FROM ledger WHERE entry = 'slash'").await;
    assert_eq!(stored, storable(), "stored verbatim");
    let public = server
        .get_json(&format!("/api/v1/slashes?address={WALLET}"))
        .await;
    let shown: Vec<String> = public["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["reason"].as_str().expect("reason").to_owned())
        .collect();
    assert_eq!(sorted(shown), storable(), "read back verbatim");
    assert_eq!(tables.count("ledger").await, 7, "one credit, six slashes");
}
on_both_databases!(slash_reasons);

/// A rig whose GPUs are named (and identified) by `names`, offering models named by every
/// payload besides `synthetic-echo`.
fn nasty_rig(token: &str, names: &[String]) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: NASTY[0].to_owned(),
        token: token.to_owned(),
        gpus: (0u32..)
            .zip(names)
            .map(|(index, text)| {
                let mut gpu = cpu_device(index);
                gpu.name.clone_from(text);
                gpu.uuid.clone_from(text);
                gpu
            })
            .collect(),
        models: NASTY
            .iter()
            .map(|id| ModelInfo {
                id: (*id).to_owned(),
                sha256: (*id).to_owned(),
            })
            .chain([ModelInfo {
                id: "synthetic-echo".to_owned(),
                sha256: String::new(),
            }])
            .collect(),
    }
}

/// GPU names and UUIDs from a miner's hello (a NUL refuses the hello), then each GPU suspended
/// with a payload as the reason (a NUL is refused, naming `reason`).
async fn gpu_names_and_suspension_reasons(backend: Backend) {
    let server = server(&backend).await;
    let token = server.miner_token("rig").await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    for text in NASTY.iter().filter(|t| has_nul(t)) {
        let (code, reason) = hello_closes(&server, nasty_rig(&token, &[(*text).to_owned()])).await;
        assert_eq!(code, CloseCode::PolicyViolation.code(), "{reason}");
        assert!(reason.contains("NUL"), "{reason}");
    }
    assert_eq!(tables.snapshot().await, before, "nothing stored");

    let names = storable();
    let (mut agent, welcome) = RawAgent::join_with(&server.ws(), nasty_rig(&token, &names))
        .await
        .expect("join");
    assert_eq!(welcome.slots.len(), names.len());
    assert!(
        welcome.slots.iter().all(|s| s.models == ["synthetic-echo"]),
        "unknown model ids are ignored: {welcome:?}"
    );
    assert_eq!(column(&tables, "SELECT gpu_name FROM miners").await, names);
    assert_eq!(column(&tables, "SELECT gpu_uuid FROM miners").await, names);
    for (index, text) in names.iter().enumerate() {
        let miner = server
            .get_json(&format!("/api/v1/miners/{WALLET}-rig-gpu{index}"))
            .await;
        assert_eq!(miner["gpu"], *text, "read back verbatim");
    }

    let admin = admin_token(&server).await;
    let mut gpu = 0;
    for reason in NASTY {
        let reply = call(
            "POST",
            &format!(
                "{}/api/v1/admin/miners/{WALLET}-rig-gpu{gpu}/suspend",
                server.http()
            ),
            Some(&admin),
            Some(&json!({ "reason": reason })),
        )
        .await;
        if has_nul(reason) {
            nul_refused(reply.status, &reply.body, "reason");
        } else {
            assert_eq!(reply.status, 200, "{}", reply.text);
            gpu += 1;
        }
    }
    assert!(matches!(agent.next(WAIT).await, Frame::Closed { .. }));
    let stored = column(&tables, "SELECT suspended_reason FROM miners").await;
    assert_eq!(stored, storable(), "stored verbatim");
    for (index, reason) in NASTY.iter().filter(|t| !has_nul(t)).enumerate() {
        let miner = server
            .get_json(&format!("/api/v1/miners/{WALLET}-rig-gpu{index}"))
            .await;
        assert_eq!(miner["suspension"]["reason"], *reason, "read back verbatim");
    }
    assert_eq!(tables.count("miners").await, 6);
}
on_both_databases!(gpu_names_and_suspension_reasons);

/// A miner's failure reasons: stored and shown verbatim, save that a NUL (which PostgreSQL
/// cannot store) becomes U+FFFD rather than losing the report.
async fn failure_reasons(backend: Backend) {
    let server = server(&backend).await;
    let (mut agent, _) = RawAgent::join(&server.ws(), &server.miner_token("rig").await, 1)
        .await
        .expect("join");
    let client = server.client();
    let recorded = |reason: &str| reason.replace('\0', "\u{FFFD}");
    for reason in NASTY {
        let id = client.submit_ok("synthetic-echo", json!({})).await;
        let job = next_job(&mut agent).await;
        let failed = AgentMessage::Failed {
            job: job.id,
            reason: reason.to_owned(),
            retryable: false,
        };
        agent.send(&failed).await.expect("failed");
        let done = client.wait_final(&id, WAIT).await;
        assert_eq!(done["status"], "failed", "{done}");
        let error = done["error"].as_str().expect("error");
        assert!(error.contains(&recorded(reason)), "read back: {error:?}");
    }
    let tables = Tables::open(&server).await;
    let stored = column(&tables, "SELECT error FROM jobs").await;
    assert_eq!(stored.len(), 7);
    for reason in NASTY {
        assert!(
            stored.iter().any(|e| e.contains(&recorded(reason))),
            "{reason:?} stored: {stored:?}"
        );
    }
    // The session survived every one of them.
    assert!(matches!(
        agent.next(std::time::Duration::from_millis(200)).await,
        Frame::TimedOut | Frame::Message(CoordinatorMessage::Heartbeat { .. })
    ));
}
on_both_databases!(failure_reasons);

async fn case_notes(backend: Backend) {
    let server = server(&backend).await;
    let admin = admin_token(&server).await;
    for note in NASTY {
        let case = seed_case(&server).await;
        let reply = call(
            "POST",
            &format!("{}/api/v1/admin/cases/{case}/dismiss", server.http()),
            Some(&admin),
            Some(&json!({ "note": note })),
        )
        .await;
        let view = call(
            "GET",
            &format!("{}/api/v1/admin/cases/{case}", server.http()),
            Some(&admin),
            None,
        )
        .await;
        if has_nul(note) {
            nul_refused(reply.status, &reply.body, "note");
            assert_eq!(view.body["status"], "open", "not decided: {}", view.text);
        } else {
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(view.body["note"], note, "read back verbatim");
        }
    }
    let tables = Tables::open(&server).await;
    assert_eq!(
        column(&tables, "SELECT note FROM review_cases").await,
        storable()
    );
    assert_eq!(tables.count("review_cases").await, 7);
}
on_both_databases!(case_notes);

/// API key names (given to `infermine-server api-key create`): stored verbatim, the keys work;
/// a NUL is refused.
async fn api_key_names(backend: Backend) {
    let server = server(&backend).await;
    for name in NASTY {
        let created = infermine_server::create_api_key(&server.config, name).await;
        if has_nul(name) {
            let err = created.expect_err("a NUL is refused");
            assert!(err.to_string().contains("NUL"), "{err}");
            continue;
        }
        let key = created.expect("created");
        let (status, body) = Client::new(&server.http(), &key)
            .submit("synthetic-echo", json!({}))
            .await;
        assert_eq!(status, 202, "the key works: {body}");
    }
    let tables = Tables::open(&server).await;
    let mut expected = storable();
    expected.push("tests".to_owned());
    assert_eq!(
        column(&tables, "SELECT name FROM api_keys").await,
        sorted(expected),
        "stored verbatim"
    );
    assert_eq!(tables.count("jobs").await, 6);
}
on_both_databases!(api_key_names);

/// Query parameters and path ids: refused with a 4xx, tables untouched.
async fn query_parameters_and_path_ids(backend: Backend) {
    let server = server(&backend).await;
    let admin = admin_token(&server).await;
    let session = wallet_session(&server, WALLET);
    let id = server.client().submit_ok("synthetic-echo", json!({})).await;
    let tables = Tables::open(&server).await;
    let before = tables.snapshot().await;
    let base = server.http();
    for text in NASTY {
        let p = encode(text);
        let wallet = format!("/api/v1/wallets/{WALLET}");
        let requests: [(&str, String, Option<&str>, &str); 16] = [
            ("GET", format!("/api/v1/leaderboard?kind={p}"), None, "kind"),
            (
                "GET",
                format!("/api/v1/leaderboard?kind=waifu&period={p}"),
                None,
                "period",
            ),
            ("GET", format!("{wallet}/ledger?cursor={p}"), None, "cursor"),
            ("GET", format!("{wallet}/ledger?kind={p}"), None, "kind"),
            (
                "GET",
                format!("{wallet}/points-history?bucket={p}"),
                None,
                "bucket",
            ),
            ("GET", format!("/api/v1/slashes?cursor={p}"), None, "cursor"),
            (
                "GET",
                format!("/api/v1/admin/cases?status={p}"),
                Some(&admin),
                "status",
            ),
            (
                "GET",
                format!("/api/v1/admin/cases?cursor={p}"),
                Some(&admin),
                "cursor",
            ),
            (
                "GET",
                format!("/v1/jobs/{id}?wait={p}"),
                Some(&server.api_key),
                "wait",
            ),
            ("GET", format!("/v1/jobs/{p}"), Some(&server.api_key), ""),
            ("DELETE", format!("/v1/jobs/{p}"), Some(&server.api_key), ""),
            ("GET", format!("/api/v1/miners/{p}"), None, ""),
            ("GET", format!("/api/v1/admin/cases/{p}"), Some(&admin), ""),
            (
                "POST",
                format!("/api/v1/admin/miners/{p}/unsuspend"),
                Some(&admin),
                "",
            ),
            (
                "PUT",
                format!("/api/v1/admin/validators/{p}"),
                Some(&admin),
                "",
            ),
            (
                "DELETE",
                format!("/api/v1/miner-tokens/{p}"),
                Some(&session),
                "",
            ),
        ];
        for (method, path, bearer, names) in requests {
            let reply = call(method, &format!("{base}{path}"), bearer, None).await;
            assert!(
                (400..500).contains(&reply.status),
                "{method} {path}: {} {}",
                reply.status,
                reply.text
            );
            assert!(
                reply.text.contains(names),
                "{path} should name `{names}`: {}",
                reply.text
            );
        }
    }
    assert_eq!(tables.snapshot().await, before, "nothing stored");
    let (status, view) = server.client().get(&id, 0.0).await;
    assert_eq!((status, &view["status"]), (200, &json!("queued")), "{view}");
}
on_both_databases!(query_parameters_and_path_ids);
