use super::super::synth_tokenizer::{ChatStyle, SynthTokenizer, synth_tokenizer};
use super::*;

/// A fresh folder under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "infermine-{tag}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes a synthetic tokenizer's files into a fresh folder.
pub(crate) fn write_synth(synth: &SynthTokenizer, tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    fs::write(dir.0.join(TOKENIZER_FILE), &synth.tokenizer_json).expect("write");
    fs::write(
        dir.0.join(TOKENIZER_CONFIG_FILE),
        &synth.tokenizer_config_json,
    )
    .expect("write");
    fs::write(
        dir.0.join(GENERATION_CONFIG_FILE),
        &synth.generation_config_json,
    )
    .expect("write");
    dir
}

fn load(style: ChatStyle, vocab: usize, tag: &str) -> (TempDir, TextTokenizer, SynthTokenizer) {
    let synth = synth_tokenizer(style, vocab).expect("synthetic tokenizer");
    let dir = write_synth(&synth, tag);
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    (dir, tok, synth)
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content: content.to_owned(),
    }
}

const MIXED: &str = "naïve café 東京 🙂 — the quick brown fox, Ünïcödé ü€𝄞 and done.";

#[test]
fn the_text_side_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<TextTokenizer>();
    shared::<ChatTemplate>();
    shared::<super::super::sampling::Sampler>();
}

#[test]
fn llama3_style_loads_and_round_trips() {
    let (_dir, tok, synth) = load(ChatStyle::Llama3, 600, "llama3");
    assert_eq!(tok.vocab_size(), 600);
    assert_eq!(tok.bos_id(), Some(synth.bos_id));
    assert_eq!(tok.token_to_id("<|begin_of_text|>"), Some(synth.bos_id));
    assert_eq!(tok.token_to_id("<|eot_id|>"), Some(synth.eos_id));
    // eot_id from tokenizer_config, then end_of_text from generation_config.
    let end_of_text = tok.token_to_id("<|end_of_text|>").expect("special token");
    assert_eq!(tok.eos_ids(), [synth.eos_id, end_of_text]);
    assert!(tok.is_eos(end_of_text));
    assert!(!tok.add_bos_token());
    for text in [
        MIXED,
        "",
        " leading space",
        "tabs\tand\nnewlines\r\n",
        "The the THE",
    ] {
        let ids = tok.encode(text).expect("encodes");
        assert_eq!(tok.decode(&ids).expect("decodes"), text);
    }
}

#[test]
fn special_tokens_in_text_map_to_their_ids_and_decode_to_nothing() {
    let (_dir, tok, synth) = load(ChatStyle::ChatMl, 500, "chatml-special");
    let im_start = tok.token_to_id("<|im_start|>").expect("special");
    let ids = tok
        .encode("<|im_start|>user\nhi<|im_end|>")
        .expect("encodes");
    assert_eq!(ids.first(), Some(&im_start));
    assert_eq!(ids.last(), Some(&synth.eos_id));
    assert_eq!(tok.decode(&ids).expect("decodes"), "user\nhi");
    // No BOS is added by encode.
    assert_ne!(
        tok.encode("hello").expect("encodes").first(),
        Some(&synth.bos_id)
    );
}

#[test]
fn chat_prompts_render_and_encode() {
    let (_dir, tok, synth) = load(ChatStyle::Llama3, 600, "llama3-chat");
    let messages = [msg("system", "Be brief."), msg("user", "Hi!")];
    let text = tok.render_chat(&messages).expect("renders");
    assert_eq!(
        text,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let ids = tok.encode_chat(&messages).expect("encodes");
    assert_eq!(ids[0], synth.bos_id);
    assert_eq!(ids.iter().filter(|&&i| i == synth.eos_id).count(), 2);

    let (_dir, tok, _) = load(ChatStyle::ChatMl, 500, "chatml-chat");
    assert_eq!(
        tok.render_chat(&messages).expect("renders"),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n\
             <|im_start|>assistant\n"
    );
}

/// Feeds `ids` one at a time; returns the pieces (the flush last).
fn stream(tok: &TextTokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = tok.incremental();
    let mut pieces: Vec<String> = ids
        .iter()
        .map(|&id| dec.push(id).expect("decodes"))
        .collect();
    assert_eq!(dec.ids(), ids);
    pieces.push(dec.finish().expect("decodes"));
    pieces
}

#[test]
fn streamed_pieces_concatenate_to_the_full_decode() {
    let (_dir, tok, _) = load(ChatStyle::Llama3, 400, "stream");
    let eot = tok.token_to_id("<|eot_id|>").expect("special");
    let mut ids = tok.encode(MIXED).expect("encodes");
    // A special token in the middle and at the end is skipped.
    ids.insert(3, eot);
    ids.push(eot);
    let pieces = stream(&tok, &ids);
    let full = tok.decode(&ids).expect("decodes");
    assert_eq!(pieces.concat(), full);
    assert_eq!(full, MIXED);
    // Multi-byte characters are split over several byte tokens here, and no piece ever
    // holds a partial character.
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    assert!(
        pieces.iter().filter(|p| p.is_empty()).count() > 2,
        "{pieces:?}"
    );

    // Every prefix of the stream, and ids cut mid-character: pieces + flush = decode.
    for end in 0..=ids.len() {
        let part = &ids[..end];
        assert_eq!(
            stream(&tok, part).concat(),
            tok.decode(part).expect("decodes")
        );
    }
}

#[test]
fn a_trailing_incomplete_character_flushes_as_in_a_full_decode() {
    let (_dir, tok, _) = load(ChatStyle::ChatMl, 300, "stream-cut");
    // The smallest vocab is bytes only: "🙂" is four byte tokens.
    let ids = tok.encode("a🙂").expect("encodes");
    assert_eq!(ids.len(), 5);
    let pieces = stream(&tok, &ids[..3]);
    assert_eq!(pieces, ["a", "", "", "\u{FFFD}"]);
    assert_eq!(pieces.concat(), tok.decode(&ids[..3]).expect("decodes"));
    let pieces = stream(&tok, &ids);
    assert_eq!(pieces, ["a", "", "", "", "🙂", ""]);
}

#[test]
fn chat_template_forms_are_read() {
    let synth = synth_tokenizer(ChatStyle::ChatMl, 300).expect("synthetic tokenizer");
    let dir = write_synth(&synth, "forms");
    let config_path = dir.0.join(TOKENIZER_CONFIG_FILE);
    let mut config: Json = serde_json::from_str(&synth.tokenizer_config_json).expect("json");
    let chatml = config["chat_template"].clone();

    // A list of named templates: "default" is used.
    config["chat_template"] = serde_json::json!([
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": chatml},
    ]);
    // AddedToken objects for the special tokens.
    config["eos_token"] = serde_json::json!({"content": "<|im_end|>", "special": true});
    fs::write(&config_path, config.to_string()).expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    assert_eq!(
        tok.render_chat(&[msg("user", "x")]).expect("renders"),
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    );

    // No default: loading works, rendering names the problem.
    config["chat_template"] = serde_json::json!([{"name": "tool_use", "template": "T"}]);
    fs::write(&config_path, config.to_string()).expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    let err = tok
        .render_chat(&[msg("user", "x")])
        .expect_err("no default");
    assert!(matches!(err, TextError::NoDefaultTemplate { .. }), "{err}");

    // No template at all: a base model.
    config
        .as_object_mut()
        .expect("object")
        .remove("chat_template");
    fs::write(&config_path, config.to_string()).expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    let err = tok
        .render_chat(&[msg("user", "x")])
        .expect_err("no template");
    assert!(matches!(err, TextError::NoChatTemplate { .. }), "{err}");
    assert!(err.to_string().contains("instruct"), "{err}");

    // chat_template.jinja next to it is used.
    fs::write(
        dir.0.join(CHAT_TEMPLATE_FILE),
        "J:{{ messages[0].content }}",
    )
    .expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    assert_eq!(
        tok.render_chat(&[msg("user", "x")]).expect("renders"),
        "J:x"
    );
}

#[test]
fn eos_ids_come_from_both_files_without_repeats() {
    let synth = synth_tokenizer(ChatStyle::Llama3, 300).expect("synthetic tokenizer");
    let dir = write_synth(&synth, "eos");
    let gen_path = dir.0.join(GENERATION_CONFIG_FILE);
    fs::write(&gen_path, format!("{{\"eos_token_id\": {}}}", synth.eos_id)).expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    assert_eq!(tok.eos_ids(), [synth.eos_id]);

    fs::write(&gen_path, "{\"eos_token_id\": [1, 1, 2]}").expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    assert_eq!(tok.eos_ids(), [synth.eos_id, 1, 2]);

    fs::remove_file(&gen_path).expect("remove");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    assert_eq!(tok.eos_ids(), [synth.eos_id]);

    fs::write(&gen_path, "{\"eos_token_id\": 300}").expect("write");
    let err = TextTokenizer::load(&dir.0).expect_err("out of range");
    assert!(
        matches!(err, TextError::IdOutOfRange { id: 300, .. }),
        "{err}"
    );
}

#[test]
fn broken_folders_give_errors_that_name_the_file() {
    let synth = synth_tokenizer(ChatStyle::ChatMl, 300).expect("synthetic tokenizer");
    let dir = write_synth(&synth, "broken");
    let config_path = dir.0.join(TOKENIZER_CONFIG_FILE);

    fs::write(&config_path, "{\"eos_token\": \"<|nope|>\"}").expect("write");
    let err = TextTokenizer::load(&dir.0).expect_err("unknown token");
    assert!(
        matches!(
            err,
            TextError::UnknownToken {
                field: "eos_token",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");

    fs::write(&config_path, "{\"eos_token\": 5}").expect("write");
    let err = TextTokenizer::load(&dir.0).expect_err("bad type");
    assert!(matches!(err, TextError::Config { .. }), "{err}");

    fs::write(&config_path, "{}").expect("write");
    fs::write(dir.0.join(GENERATION_CONFIG_FILE), "{}").expect("write");
    let err = TextTokenizer::load(&dir.0).expect_err("no eos");
    assert!(matches!(err, TextError::NoEos { .. }), "{err}");

    // special_tokens_map.json fills in what tokenizer_config.json lacks.
    fs::write(
        dir.0.join(SPECIAL_TOKENS_MAP_FILE),
        "{\"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"</s>\"}",
    )
    .expect("write");
    let tok = TextTokenizer::load(&dir.0).expect("loads");
    assert_eq!(tok.eos_ids(), [tok.token_to_id("</s>").expect("special")]);
    assert_eq!(tok.bos_id(), tok.token_to_id("<s>"));

    fs::write(
        &config_path,
        "{\"chat_template\": \"{% if %}\", \"eos_token\": \"</s>\"}",
    )
    .expect("write");
    let err = TextTokenizer::load(&dir.0).expect_err("bad template");
    assert!(
        err.to_string()
            .contains("tokenizer_config.json does not compile"),
        "{err}"
    );

    fs::write(dir.0.join(TOKENIZER_FILE), "{\"model\": 1}").expect("write");
    let err = TextTokenizer::load(&dir.0).expect_err("bad tokenizer");
    assert!(matches!(err, TextError::Tokenizer { .. }), "{err}");

    let err = TextTokenizer::load(&dir.0.join("missing")).expect_err("no folder");
    assert!(matches!(err, TextError::Read { .. }), "{err}");
}
