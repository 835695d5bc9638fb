//! The errors an operator gets for a broken registry file: each names the file, the model
//! and the field.

use crate::registry::{Registry, RegistryError};

/// A small valid registry the error tests break one field at a time.
const BASE: &str = r#"
[gpu_tiers]
"3070" = 130
"4090" = 220

[[model]]
id = "img"
kind = "image"
display_name = "Image"
family = "sdxl"
points_multiplier = 1.0
min_gpu = ["3070"]
target_latency_ms = 5000
deadline_ms = 18000

[model.limits]
max_width = 1024
max_height = 1024
max_pixels = 1048576
max_steps = 50
max_prompt_chars = 1000

[[model.files]]
name = "w.safetensors"
url = "https://example.org/w.safetensors"
size_bytes = 10
sha256 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"

[[model]]
id = "chat"
kind = "llm"
display_name = "Chat"
family = "llama3"
points_multiplier = 0.5
min_vram_mb = 15000
target_latency_ms = 30000
deadline_ms = 180000

[model.limits]
context_tokens = 8192
max_tokens = 4096
max_prompt_chars = 32000

[[model.files]]
name = "m.safetensors"
url = "https://example.org/m.safetensors"

[[model]]
id = "synth"
kind = "synthetic"
display_name = "Synthetic"
family = "synthetic"
points_multiplier = 0.0
allow_cpu = true
target_latency_ms = 1000
deadline_ms = 30000

[model.limits]
max_output_bytes = 1024
max_delay_ms = 1000
max_stream_tokens = 8
"#;

/// The message for `BASE` with the first `from` replaced by `to`; panics if it is accepted.
fn error_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "the base registry contains `{from}`");
    let text = BASE.replacen(from, to, 1);
    match Registry::from_toml(&text, "test.toml") {
        Ok(_) => panic!("replacing `{from}` with `{to}` should be refused"),
        Err(error) => error.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{message}` mentions `{part}`");
    }
}

#[test]
fn base_registry_is_valid() {
    let registry = Registry::from_toml(BASE, "test.toml").expect("valid");
    assert_eq!(registry.models().count(), 3);
    assert_eq!(registry.origin(), "test.toml");
    let unpinned: Vec<_> = registry
        .unpinned_files()
        .map(|(m, f)| (&m.id, &f.name))
        .collect();
    assert_eq!(unpinned.len(), 1);
    assert_eq!(unpinned[0].1, "m.safetensors");
}

#[test]
fn model_field_errors_name_file_model_and_field() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "points_multiplier = 1.0",
            "points_multiplier = 0.0",
            &["test.toml: model `img`: points_multiplier must be > 0"],
        ),
        (
            "points_multiplier = 1.0",
            "points_multiplier = -2.0",
            &["(got -2)"],
        ),
        (
            "points_multiplier = 1.0",
            "points_multiplier = nan",
            &["must be > 0 and finite"],
        ),
        (
            "points_multiplier = 0.0",
            "points_multiplier = 0.5",
            &["model `synth`: points_multiplier must be 0 for synthetic models"],
        ),
        (
            "target_latency_ms = 5000",
            "target_latency_ms = 18000",
            &["model `img`: target_latency_ms (18000) must be below deadline_ms (18000)"],
        ),
        (
            "min_gpu = [\"3070\"]",
            "min_gpu = [\"3070\", \"9999 Ultra\"]",
            &["min_gpu[1] `9999 Ultra` is not in [gpu_tiers]"],
        ),
        (
            "size_bytes = 10",
            "size_bytes = 0",
            &["files[0].size_bytes must be > 0"],
        ),
        (
            "sha256 = \"6ce0",
            "sha256 = \"6CE0",
            &["files[0].sha256 must be 64 lowercase hex"],
        ),
        (
            "sha256 = \"6ce0161689",
            "sha256 = \"",
            &["files[0].sha256", "64 lowercase hex"],
        ),
        (
            "name = \"w.safetensors\"",
            "name = \"../w.safetensors\"",
            &["files[0].name must be a relative path"],
        ),
        (
            "url = \"https://example.org/w",
            "url = \"http://example.org/w",
            &["files[0].url must be an https:// URL"],
        ),
        (
            "url = \"https://example.org/w.safetensors\"",
            "url = \"synth:img\"",
            &["files[0].url", "synth: URLs", "demo models only"],
        ),
        (
            "max_width = 1024",
            "max_width = 1020",
            &["limits.max_width (1020) must be a multiple of 8"],
        ),
        (
            "max_pixels = 1048576",
            "max_pixels = 2000000",
            &["limits.max_pixels (2000000)"],
        ),
        (
            "max_steps = 50\n",
            "",
            &["model `img`: limits.max_steps is required for image models"],
        ),
        (
            "max_steps = 50",
            "max_steps = 50\nmax_tokens = 10",
            &["limits.max_tokens does not apply to image models"],
        ),
        (
            "context_tokens = 8192",
            "context_tokens = 1024",
            &["model `chat`: limits.context_tokens (1024) must be at least max_tokens (4096)"],
        ),
        (
            "family = \"sdxl\"",
            "family = \"llama3\"",
            &["family `llama3` is a family of llm models"],
        ),
        (
            "id = \"img\"",
            "id = \"Img!\"",
            &["id must be 1 to 64 lowercase letters"],
        ),
        (
            "display_name = \"Image\"",
            "display_name = \" \"",
            &["display_name must not be empty"],
        ),
        (
            "min_gpu = [\"3070\"]",
            "min_gpu = [\"3070\"]\nallow_cpu = true",
            &["allow_cpu cannot be true when min_gpu is set"],
        ),
        (
            "deadline_ms = 30000",
            "deadline_ms = 30000\nslot_concurrency = 0",
            &["model `synth`: slot_concurrency must be between 1 and 64 (got 0)"],
        ),
        (
            "max_output_bytes = 1024",
            "max_output_bytes = 99999999",
            &["limits.max_output_bytes (99999999) must be between 1 and"],
        ),
        (
            "deadline_ms = 18000",
            "deadline_ms = 18000\nlora_file = \"w.safetensors\"",
            &["model `img`: lora_file names the model's only file"],
        ),
        (
            "deadline_ms = 18000",
            "deadline_ms = 18000\nlora_file = \"lora.safetensors\"",
            &["lora_file `lora.safetensors` is not one of the model's files"],
        ),
        (
            "deadline_ms = 180000",
            "deadline_ms = 180000\nlora_file = \"m.safetensors\"",
            &["model `chat`: lora_file applies to image models only, not llm models"],
        ),
    ];
    for (from, to, parts) in cases {
        let message = error_with(from, to);
        assert_mentions(&message, parts);
    }
}

#[test]
fn image_and_llm_models_need_files() {
    let without_files = BASE.replacen("[[model.files]]\nname = \"m.safetensors\"", "", 1);
    let text = without_files.replacen("url = \"https://example.org/m.safetensors\"", "", 1);
    let message = Registry::from_toml(&text, "test.toml")
        .expect_err("no files")
        .to_string();
    assert_mentions(
        &message,
        &["model `chat`: files must list at least one file"],
    );
}

#[test]
fn duplicate_ids_are_refused() {
    let message = error_with("id = \"chat\"", "id = \"img\"");
    assert_mentions(
        &message,
        &["test.toml", "model id `img` is defined more than once"],
    );
}

#[test]
fn duplicate_file_names_are_refused() {
    let message = error_with(
        "name = \"m.safetensors\"",
        "name = \"m.safetensors\"\nurl = \"https://example.org/m\"\n[[model.files]]\nname = \"m.safetensors\"",
    );
    assert_mentions(&message, &["files[1].name `m.safetensors` is listed twice"]);
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let cases = [
        (
            "display_name = \"Image\"",
            "display_name = \"Image\"\ncolour = \"red\"",
            "colour",
        ),
        (
            "max_steps = 50",
            "max_steps = 50\nmax_frames = 3",
            "max_frames",
        ),
        ("size_bytes = 10", "size_bytes = 10\nmd5 = \"x\"", "md5"),
        ("[gpu_tiers]", "modles = 1\n[gpu_tiers]", "modles"),
    ];
    for (from, to, key) in cases {
        let message = error_with(from, to);
        assert_mentions(&message, &["test.toml is not a valid model registry", key]);
    }
    let message = error_with("kind = \"image\"", "kind = \"video\"");
    assert_mentions(&message, &["video", "image"]);
}

#[test]
fn gpu_table_and_empty_registry_errors() {
    let message = error_with("\"4090\" = 220", "\"4090\" = 0");
    assert_mentions(&message, &["test.toml: [gpu_tiers]: `4090` has tier 0"]);
    let text = "[gpu_tiers]\n\"3070\" = 1\n";
    let message = Registry::from_toml(text, "empty.toml")
        .expect_err("no models")
        .to_string();
    assert_mentions(&message, &["empty.toml: no models are defined"]);
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("models.toml");
    std::fs::write(&path, BASE).expect("write registry");
    let registry = Registry::load(&path).expect("valid file");
    assert_eq!(registry.origin(), path.display().to_string());

    std::fs::write(
        &path,
        BASE.replacen("deadline_ms = 18000", "deadline_ms = 100", 1),
    )
    .expect("write registry");
    let message = Registry::load(&path).expect_err("invalid").to_string();
    assert_mentions(&message, &[&path.display().to_string(), "model `img`"]);

    let missing = dir.path().join("nope.toml");
    let error = Registry::load(&missing).expect_err("missing file");
    assert!(matches!(error, RegistryError::Read { .. }));
    assert_mentions(
        &error.to_string(),
        &["nope.toml", "cannot read the model registry"],
    );
}

/// Demo models' files are made by the agent (`synth:` URLs); only demo models may name them.
#[test]
fn demo_models_may_list_synthesized_files() {
    let demo = BASE.replacen(
        "url = \"https://example.org/m.safetensors\"",
        "url = \"synth:tiny-chat\"",
        1,
    );
    let demo = demo.replacen(
        "points_multiplier = 0.5",
        "points_multiplier = 0.5\ndemo = true",
        1,
    );
    let registry = Registry::from_toml(&demo, "test.toml").expect("valid");
    let chat = registry.get("chat").expect("chat");
    assert!(chat.demo);
    assert_eq!(chat.files[0].url, "synth:tiny-chat");
    assert!(
        !registry.get("img").expect("img").demo,
        "demo defaults to false"
    );

    let bad = demo.replacen("synth:tiny-chat", "synth:Tiny Chat", 1);
    let message = Registry::from_toml(&bad, "test.toml")
        .expect_err("bad recipe name")
        .to_string();
    assert_mentions(&message, &["files[0].url", "synth:tiny-llama"]);
    let bad = demo.replacen("synth:tiny-chat", "synth:", 1);
    assert!(Registry::from_toml(&bad, "test.toml").is_err());
}
