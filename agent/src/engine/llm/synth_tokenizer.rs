//! Small byte-level BPE tokenizers, trained here on a fixed corpus, for synthetic test models
//! in the layout of a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`).
//!
//! The files are the same bytes on every run and every machine, so a registry can pin their
//! SHA-256. The `tokenizers` BPE trainer keeps its state in randomly seeded hash maps, and it
//! is deterministic only up to the first merge that re-creates a token already in the
//! vocabulary (say `ab`+`c` after `a`+`bc`): such a merge puts a second queue entry for the
//! same pair and count next to the first, and which one pops first depends on hash order.
//! [`synth_tokenizer`] therefore stops training just before the first such merge (training
//! again with that vocabulary size) and fills the rest of the vocabulary with reserved
//! special tokens, as Llama 3 does.

use std::collections::HashSet;

use serde_json::{Value as Json, json};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerBuilder, TokenizerImpl};

use super::tokenizer::TextError;

/// The chat format (special tokens and chat template) of a synthetic tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatStyle {
    /// Llama 3 Instruct: `<|begin_of_text|>`, `<|start_header_id|>`, `<|eot_id|>`, ..., and
    /// Llama 3's pre-tokenizer regex.
    Llama3,
    /// ChatML (OpenHermes, Dolphin): `<|im_start|>`, `<|im_end|>`, with GPT-2's byte-level
    /// pre-tokenizer.
    ChatMl,
}

/// The files of a synthetic tokenizer, ready to be written into a model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthTokenizer {
    /// `tokenizer.json`.
    pub tokenizer_json: String,
    /// `tokenizer_config.json` (special tokens, chat template, `add_bos_token: false`).
    pub tokenizer_config_json: String,
    /// `generation_config.json` (BOS and EOS ids).
    pub generation_config_json: String,
    /// The id of the beginning-of-sequence token.
    pub bos_id: u32,
    /// The id of the end-of-turn token (`eos_token`).
    pub eos_id: u32,
    /// The number of token ids, special tokens included: exactly what was asked for.
    pub vocab_size: usize,
}

/// The chat template of Meta-Llama-3-8B-Instruct.
pub const LLAMA3_CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// The ChatML chat template of OpenHermes 2.5 and Dolphin.
pub const CHATML_CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Llama 3's pre-tokenizer split pattern (from its `tokenizer.json`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The context length written as `model_max_length`.
const MODEL_MAX_LENGTH: u32 = 8192;

/// Byte-level BPE starts from one token per byte value.
const BYTE_TOKENS: usize = 256;

/// The most BPE tokens (bytes plus merges) [`CORPUS`] yields: every word is one token by
/// then. Larger vocabularies are padded with reserved special tokens.
pub const CORPUS_BPE_TOKENS: usize = 1473;

/// The training text: fixed, so the tokenizer is too. Mostly English, with accents, CJK,
/// Cyrillic, Greek and emoji so that multi-byte sequences get merges of their own.
const CORPUS: &str = "\
The infermine network connects people who have graphics cards with people who need \
inference. A miner runs the agent, which keeps a connection to the coordinator, reports \
its devices, and waits for work. When a job arrives, the agent loads the model if it is \
not already in memory, runs the request, and streams the result back token by token.
Language models read text as tokens. A tokenizer splits the text into pieces that the \
model knows, and each piece has a number. The model predicts the next number; the \
tokenizer turns the numbers back into text. Byte-level tokenizers never meet a character \
they cannot encode, because every byte has a token of its own.
It was a bright cold day in April, and the clocks were striking thirteen. The quick brown \
fox jumps over the lazy dog. She sells sea shells by the sea shore, and the shells she \
sells are surely sea shells. How much wood would a woodchuck chuck if a woodchuck could \
chuck wood? Peter Piper picked a peck of pickled peppers.
There are 365 days in a year, 24 hours in a day, and 60 minutes in an hour. In 2024 the \
price was $1,299.99; in 2025 it fell to $999. The answer is 42. Call 555-0123 before \
10:30 on 2025-03-14. Version 3.1.4 fixed bug #271828.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
fn main() { let total: u64 = (1..=10).sum(); println!(\"{total}\"); }
{\"role\": \"user\", \"content\": \"What is the capital of France?\"}
Question: What is the capital of France? Answer: The capital of France is Paris.
Question: Who wrote Hamlet? Answer: William Shakespeare wrote Hamlet.
I'm sure you'll agree that we've seen this before, and they'd say it isn't new. Don't \
worry; it's fine. We're here, you're there, and that's that.
Le café est très bon, mais la crème brûlée est meilleure. Où est la bibliothèque ? \
C'est à côté de l'église. Ça va très bien, merci ! Naïve, déjà vu, façade, garçon.
Die Straße ist schön, und die Bäume blühen. Größe, Übung, Öl, Müller, Fußgänger. \
Grüße aus München und Köln.
El niño comió una manzana. ¿Dónde está la estación? ¡Mañana será otro día! Señor, \
corazón, canción, año.
東京は日本の首都です。今日はいい天気ですね。私は寿司が好きです。ありがとうございます。
北京是中国的首都。我们今天去公园散步。你好，世界！谢谢你的帮助。
Москва — столица России. Привет, как дела? Спасибо, всё хорошо.
Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Καλημέρα, τι κάνεις;
서울은 한국의 수도입니다. 안녕하세요, 감사합니다.
Emoji: 🙂 😀 🎉 🚀 ❤️ 👍 🌍 🔥 ✨ ☕ — and symbols: € £ ¥ © ® ™ ° ± × ÷ ≤ ≥ ≠ ∞ √ π ∑ 𝄞 …
The agent reports its temperature, its memory, and its power draw. The coordinator \
assigns each job to a slot, and every slot runs one job at a time. If a miner goes away, \
its jobs return to the queue and run somewhere else. Results are checked: a validator \
runs a sample of the jobs again and compares the tokens, so honest miners are paid and \
dishonest ones are not.
Once upon a time there was a little robot who wanted to learn how to write poems. Every \
night it read the books in the library, one word at a time, until the words began to \
sound like music. The robot wrote: the moon is a lamp, the sea is a drum, and the wind \
sings the songs of the morning.
";

impl ChatStyle {
    /// The special tokens, BOS first, then the end-of-turn token (`eos_token`).
    fn special_tokens(self) -> &'static [&'static str] {
        match self {
            Self::Llama3 => &[
                "<|begin_of_text|>",
                "<|eot_id|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
            ],
            Self::ChatMl => &["<s>", "<|im_end|>", "</s>", "<|im_start|>"],
        }
    }

    fn chat_template(self) -> &'static str {
        match self {
            Self::Llama3 => LLAMA3_CHAT_TEMPLATE,
            Self::ChatMl => CHATML_CHAT_TEMPLATE,
        }
    }

    /// The smallest vocabulary: the byte tokens plus the special tokens.
    pub fn min_vocab_size(self) -> usize {
        BYTE_TOKENS + self.special_tokens().len()
    }
}

type Trainable = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

fn synth_error(what: &str, e: impl std::fmt::Display) -> TextError {
    TextError::Synth {
        reason: format!("{what}: {e}"),
    }
}

/// Builds the synthetic tokenizer of `style` with exactly `vocab_size` ids (at least
/// [`ChatStyle::min_vocab_size`]): byte tokens, BPE merges learned from the built-in corpus,
/// the style's special tokens, then reserved special tokens (`<|reserved_special_token_N|>`)
/// for whatever the corpus cannot fill (it yields [`CORPUS_BPE_TOKENS`] BPE tokens at most).
/// Deterministic: the same bytes on every run and machine.
pub fn synth_tokenizer(style: ChatStyle, vocab_size: usize) -> Result<SynthTokenizer, TextError> {
    let specials = style.special_tokens();
    let min = style.min_vocab_size();
    if vocab_size < min {
        return Err(TextError::Synth {
            reason: format!(
                "a vocabulary of {vocab_size} is too small for {style:?}: it needs \
                 {BYTE_TOKENS} byte tokens and {} special tokens; ask for at least {min}",
                specials.len()
            ),
        });
    }
    if u32::try_from(vocab_size).is_err() {
        return Err(TextError::Synth {
            reason: format!("a vocabulary of {vocab_size} does not fit u32 token ids"),
        });
    }
    let bpe_target = vocab_size - specials.len();
    let mut tokenizer = train(style, bpe_target)?;
    // Stop before the first merge that re-creates an existing token (see the module docs).
    if let Some(clean) = deterministic_prefix(&tokenizer)?
        && clean < bpe_target
    {
        tokenizer = train(style, clean)?;
    }
    let bpe_vocab = tokenizer.get_vocab_size(false);

    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .chain(
            (0..bpe_target - bpe_vocab)
                .map(|i| AddedToken::from(format!("<|reserved_special_token_{i}|>"), true)),
        )
        .collect();
    tokenizer.add_special_tokens(&added);
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| synth_error("special token missing after training", token))
    };
    let bos_id = id(specials[0])?;
    let eos_id = id(specials[1])?;
    let end_id = id(specials[2])?;

    if style == ChatStyle::Llama3 {
        // Llama 3's post-processor: byte-level offsets, then BOS when special tokens are
        // added (which this agent never asks for: its templates write BOS).
        let template = TemplateProcessing::builder()
            .try_single(format!("{} $A", specials[0]))
            .and_then(|b| b.try_pair(format!("{} $A {} $B:1", specials[0], specials[0])))
            .map_err(|e| synth_error("post-processor template", e))?
            .special_tokens(vec![(specials[0], bos_id)])
            .build()
            .map_err(|e| synth_error("post-processor", e))?;
        tokenizer.with_post_processor(Some(PostProcessorWrapper::Sequence(PostSequence::new(
            vec![
                PostProcessorWrapper::ByteLevel(ByteLevel::new(true, false, true)),
                PostProcessorWrapper::Template(template),
            ],
        ))));
    }

    let size = tokenizer.get_vocab_size(true);
    if size != vocab_size {
        return Err(synth_error(
            "vocabulary size mismatch",
            format!("built {size} ids, asked for {vocab_size}"),
        ));
    }
    let tokenizer_json = tokenizer
        .to_string(true)
        .map_err(|e| synth_error("serializing tokenizer.json", e))?;

    // serde_json's maps are sorted, so these files are canonical too.
    let config = json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": specials[0],
        "eos_token": specials[1],
        "chat_template": style.chat_template(),
        "clean_up_tokenization_spaces": false,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let eos_token_id: Json = match style {
        ChatStyle::Llama3 => json!([end_id, eos_id]),
        ChatStyle::ChatMl => json!(eos_id),
    };
    let generation = json!({
        "bos_token_id": bos_id,
        "eos_token_id": eos_token_id,
    });
    let pretty = |v: &Json| {
        serde_json::to_string_pretty(v)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| synth_error("serializing a config file", e))
    };
    Ok(SynthTokenizer {
        tokenizer_json,
        tokenizer_config_json: pretty(&config)?,
        generation_config_json: pretty(&generation)?,
        bos_id,
        eos_id,
        vocab_size,
    })
}

/// Trains the byte-level BPE (no special tokens yet) up to `bpe_vocab` tokens.
fn train(style: ChatStyle, bpe_vocab: usize) -> Result<Trainable, TextError> {
    let pre_tokenizer = match style {
        ChatStyle::Llama3 => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| synth_error("Llama 3 split pattern", e))?;
            PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ]))
        }
        ChatStyle::ChatMl => PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    };
    let mut tokenizer: Trainable = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(
            true, false, true,
        ))))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
        .build()
        .map_err(|e| synth_error("assembling the tokenizer", e))?;
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(bpe_vocab)
        .min_frequency(0)
        .initial_alphabet(alphabet)
        .build();
    tokenizer
        .train(&mut trainer, CORPUS.lines())
        .map_err(|e| synth_error("training", e))?;
    Ok(tokenizer)
}

/// The vocabulary size just before the first merge whose result was already a token, or
/// `None` when every merge made a new token.
fn deterministic_prefix(tokenizer: &Trainable) -> Result<Option<usize>, TextError> {
    let json: Json = serde_json::from_str(
        &tokenizer
            .to_string(false)
            .map_err(|e| synth_error("serializing the trained model", e))?,
    )
    .map_err(|e| synth_error("reading the trained model", e))?;
    let merges = json["model"]["merges"]
        .as_array()
        .ok_or_else(|| synth_error("reading the trained model", "no merges list"))?
        .iter()
        .map(|m| match (m[0].as_str(), m[1].as_str()) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(synth_error("reading the trained model", m)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(first_reuse(&merges))
}

/// The vocabulary size (byte tokens plus merged ones) reached before the first merge, in
/// rank order, whose result is already a token.
fn first_reuse(merges: &[(&str, &str)]) -> Option<usize> {
    let mut known: HashSet<String> = ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    for (a, b) in merges {
        if !known.insert(format!("{a}{b}")) {
            return Some(known.len());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tokenizer::TextTokenizer;
    use super::super::tokenizer::tests::write_synth;
    use super::*;
    use sha2::{Digest, Sha256};

    fn digest(t: &SynthTokenizer) -> String {
        let mut h = Sha256::new();
        for part in [
            &t.tokenizer_json,
            &t.tokenizer_config_json,
            &t.generation_config_json,
        ] {
            h.update(Sha256::digest(part.as_bytes()));
        }
        hex::encode(h.finalize())
    }

    fn build(style: ChatStyle, vocab: usize) -> SynthTokenizer {
        synth_tokenizer(style, vocab).expect("synthetic tokenizer")
    }

    #[test]
    fn vocab_size_is_exact() {
        for style in [ChatStyle::Llama3, ChatStyle::ChatMl] {
            for vocab in [style.min_vocab_size(), 300, 512, 1000, 4096] {
                let synth = build(style, vocab);
                assert_eq!(synth.vocab_size, vocab);
                let dir = write_synth(&synth, "vocab");
                let tok = TextTokenizer::load(&dir.0).expect("loads");
                assert_eq!(tok.vocab_size(), vocab, "{style:?} {vocab}");
                // Every id has a token: no holes.
                let json: Json = serde_json::from_str(&synth.tokenizer_json).expect("json");
                let model = json["model"]["vocab"].as_object().expect("vocab").len();
                let added = json["added_tokens"].as_array().expect("added").len();
                assert_eq!(model + added, vocab);
            }
        }
    }

    #[test]
    fn training_stops_before_a_merge_that_recreates_a_token() {
        assert_eq!(first_reuse(&[("a", "b"), ("b", "c"), ("ab", "c")]), None);
        // "abc" from "a"+"bc" after "ab"+"c": the vocabulary then held 256 + 3 tokens.
        assert_eq!(
            first_reuse(&[("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc"), ("c", "d")]),
            Some(259)
        );
        // The built-in corpus never gets there, so no vocabulary is cut short by it.
        for style in [ChatStyle::Llama3, ChatStyle::ChatMl] {
            let trained = train(style, 4096).expect("trains");
            assert_eq!(deterministic_prefix(&trained).expect("reads"), None);
            assert_eq!(trained.get_vocab_size(false), CORPUS_BPE_TOKENS);
        }
    }

    #[test]
    fn too_small_a_vocab_is_refused() {
        let err = synth_tokenizer(ChatStyle::Llama3, 260).expect_err("too small");
        assert!(err.to_string().contains("at least 261"), "{err}");
    }

    #[test]
    fn special_tokens_follow_the_bpe_vocabulary() {
        let synth = build(ChatStyle::Llama3, 600);
        let dir = write_synth(&synth, "layout");
        let tok = TextTokenizer::load(&dir.0).expect("loads");
        let bos = tok.token_to_id("<|begin_of_text|>").expect("bos");
        assert_eq!(bos, synth.bos_id);
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(synth.eos_id));
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(bos + 1));
        let config: Json = serde_json::from_str(&synth.tokenizer_config_json).expect("json");
        assert_eq!(config["add_bos_token"], false);
        assert_eq!(config["chat_template"], LLAMA3_CHAT_TEMPLATE);
        assert_eq!(config["model_max_length"], MODEL_MAX_LENGTH);
        // Training text encodes to far fewer tokens than bytes.
        let text = "The quick brown fox jumps over the lazy dog.";
        let n = tok.encode(text).expect("encodes").len();
        assert!(
            n * 3 < text.len() * 2,
            "{n} tokens for {} bytes",
            text.len()
        );
    }

    #[test]
    fn training_is_deterministic_within_a_process() {
        for style in [ChatStyle::Llama3, ChatStyle::ChatMl] {
            for vocab in [300, 1000, 2048] {
                assert_eq!(
                    build(style, vocab),
                    build(style, vocab),
                    "{style:?} {vocab}"
                );
            }
        }
    }

    /// SHA-256 of the files, taken from separate processes (and machines): a change means
    /// the files changed, and any registry entry pinning them must change too.
    const PINNED: [(ChatStyle, usize, &str); 4] = [
        (
            ChatStyle::Llama3,
            512,
            "00cc795180d745eafb6a69be9b5d1af00a89be5c57eba57fe9bdb13301ca617b",
        ),
        (
            ChatStyle::Llama3,
            2048,
            "88f1f4b6cbb8e2165505d83f4c4e74ef6fe4b393b53b9657b1bc33aeb6dad176",
        ),
        (
            ChatStyle::ChatMl,
            512,
            "122656d96a9dfb9693d8b04a2aa75892b6e7b6078c4a9f0f166eb4e8f9d0338e",
        ),
        (
            ChatStyle::ChatMl,
            2048,
            "5a3aa818de1ef73f59b0cbc987c22c0a528853a1ea4cff989542787d0b6e7334",
        ),
    ];

    #[test]
    fn files_are_pinned_across_processes() {
        let mut got = Vec::new();
        for (style, vocab, want) in PINNED {
            let d = digest(&build(style, vocab));
            eprintln!("synth digest {style:?} {vocab}: {d}");
            got.push((style, vocab, d.clone(), want));
        }
        for (style, vocab, d, want) in got {
            assert_eq!(d, want, "{style:?} {vocab}");
        }
    }
}
