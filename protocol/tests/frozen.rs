//! Frames written by protocol version 1 peers must keep parsing, and must mean the same thing
//! after a round trip. A failure here means a change would break deployed agents or
//! coordinators: make the new field optional instead.

use std::path::Path;

use infermine_protocol::{
    AgentMessage, CoordinatorMessage, JobOutput, JobParams, decode_agent, decode_coordinator,
    encode,
};

fn frozen(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/frozen/v1")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn frozen_files(prefix: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frozen/v1");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("frozen dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Re-encoding must not lose or change anything the frozen frame said (defaults the frozen
/// frame left out may appear).
fn assert_round_trip(name: &str, text: &str, reencoded: &str) {
    let before: serde_json::Value = serde_json::from_str(text).expect("frozen json");
    let after: serde_json::Value = serde_json::from_str(reencoded).expect("re-encoded json");
    assert_subset(name, "", &before, &after);
}

fn assert_subset(name: &str, path: &str, before: &serde_json::Value, after: &serde_json::Value) {
    match (before, after) {
        (serde_json::Value::Object(b), serde_json::Value::Object(a)) => {
            for (key, value) in b {
                let inner = format!("{path}.{key}");
                let found = a
                    .get(key)
                    .unwrap_or_else(|| panic!("{name}: `{inner}` lost"));
                assert_subset(name, &inner, value, found);
            }
        }
        (serde_json::Value::Array(b), serde_json::Value::Array(a)) => {
            assert_eq!(b.len(), a.len(), "{name}: `{path}` length changed");
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                assert_subset(name, &format!("{path}[{i}]"), bv, av);
            }
        }
        _ => assert_eq!(before, after, "{name}: `{path}` changed"),
    }
}

#[test]
fn every_frozen_agent_frame_parses_and_round_trips() {
    let names = frozen_files("agent-");
    assert_eq!(names.len(), 9, "frozen agent frames: {names:?}");
    for name in names {
        let text = frozen(&name);
        let message = decode_agent(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_round_trip(&name, &text, &encode(&message));
    }
}

#[test]
fn every_frozen_coordinator_frame_parses_and_round_trips() {
    let names = frozen_files("coordinator-");
    assert_eq!(names.len(), 8, "frozen coordinator frames: {names:?}");
    for name in names {
        let text = frozen(&name);
        let message = decode_coordinator(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_round_trip(&name, &text, &encode(&message));
    }
}

#[test]
fn hello_carries_devices_and_models() {
    let AgentMessage::Hello(hello) = decode_agent(&frozen("agent-hello.json")).expect("parse")
    else {
        panic!("not a hello")
    };
    assert_eq!(hello.protocol, 1);
    assert_eq!(hello.gpus.len(), 2);
    assert_eq!(hello.gpus[0].vram_mb, 24564);
    assert_eq!(hello.models[1].id, "dolphin-2.9-llama3-8b");
}

#[test]
fn omitted_optional_fields_take_their_defaults() {
    let CoordinatorMessage::Job(job) =
        decode_coordinator(&frozen("coordinator-job-synthetic.json")).expect("parse")
    else {
        panic!("not a job")
    };
    let JobParams::Synthetic(params) = job.params else {
        panic!("not synthetic")
    };
    assert_eq!(
        (params.output_bytes, params.delay_ms, params.fail),
        (64, 5, false)
    );

    let AgentMessage::Result(result) =
        decode_agent(&frozen("agent-result-image.json")).expect("parse")
    else {
        panic!("not a result")
    };
    assert_eq!(result.metrics.infer_ms, 0);
    assert!(matches!(
        result.output,
        JobOutput::Image { png_b64: None, .. }
    ));
}

#[test]
fn unknown_type_and_unknown_param_fields_are_refused() {
    let err = decode_agent(r#"{"type":"mine_faster"}"#).expect_err("unknown type");
    assert!(err.to_string().contains("unknown variant"), "{err}");
    let err = decode_coordinator(
        r#"{"type":"job","id":"0193a6f0-7c1e-7cc0-9d2a-5f1c3b2a1e00","model":"m","slot":0,
            "params":{"kind":"synthetic","output_bytes":1,"colour":"red"},"lease_ms":1}"#,
    )
    .expect_err("unknown field");
    assert!(err.to_string().contains("unknown field"), "{err}");
}
