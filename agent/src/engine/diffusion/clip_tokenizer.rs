//! CLIP's tokenizer, as SD 1.5 and SDXL pipelines call it: lowercased byte-level BPE with a
//! `</w>` end-of-word suffix, `<|startoftext|>` … `<|endoftext|>` around the text, truncated and
//! padded to 77 ids.
//!
//! Built from the `vocab.json` and `merges.txt` of a diffusers `tokenizer/` folder the way
//! transformers 5.24's `CLIPTokenizer` builds its `tokenizers` pipeline
//! (models/clip/tokenization_clip.py): NFC, whitespace runs to one space, lowercase; split on
//! CLIP's word pattern; byte-level mapping; BPE; RoBERTa-style special tokens. The pad token
//! comes from the folder's `special_tokens_map.json` or `tokenizer_config.json`: SD 1.5's and
//! SDXL's first tokenizer pad with `<|endoftext|>`, SDXL's second with `!`.
//!
//! [`synth_vocab`] writes a small vocabulary in the same format for the demo models.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::weights::WeightsError;

/// The beginning-of-text token.
pub const BOS: &str = "<|startoftext|>";
/// The end-of-text token (also the unknown token, and SD 1.5's pad token).
pub const EOS: &str = "<|endoftext|>";
/// Ids per prompt in SD pipelines (`model_max_length`).
pub const MAX_LENGTH: usize = 77;

/// CLIP's word pattern, with the special tokens kept whole.
const WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer that pads and truncates every prompt to a fixed length.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` folder: `vocab.json`, `merges.txt`, and the pad token and
    /// `model_max_length` from `special_tokens_map.json` / `tokenizer_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self, WeightsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|error| WeightsError::Io { path, error })
        };
        let vocab = read("vocab.json")?;
        let merges = read("merges.txt")?;
        let mut pad = EOS.to_owned();
        let mut max_length = MAX_LENGTH;
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            if !dir.join(name).is_file() {
                continue;
            }
            let json: serde_json::Value =
                serde_json::from_str(&read(name)?).map_err(|e| WeightsError::File {
                    path: dir.join(name),
                    problem: format!("is not valid JSON ({e}); download it again"),
                })?;
            if let Some(token) = special_token(&json["pad_token"]) {
                pad = token;
            }
            if let Some(n) = json["model_max_length"].as_u64().filter(|n| *n <= 1024) {
                max_length = n as usize;
            }
        }
        Self::new(&vocab, &merges, &pad, max_length).map_err(|problem| WeightsError::File {
            path: dir.to_owned(),
            problem,
        })
    }

    /// CLIP's own vocabulary (49,408 tokens, the one SD 1.5's CLIP-L and SDXL's two encoders
    /// use), built from the merge list shipped with the agent (`agent/assets/clip/`), padding
    /// with `pad`. Single-file checkpoints carry no tokenizer files; this stands in for them.
    pub fn builtin(pad: &str) -> Result<Self, String> {
        let (vocab, merges) = builtin_vocab()?;
        Self::new(&vocab, &merges, pad, MAX_LENGTH)
    }

    /// Builds the tokenizer from the text of `vocab.json` and `merges.txt`.
    pub fn new(vocab: &str, merges: &str, pad: &str, max_length: usize) -> Result<Self, String> {
        let vocab: HashMap<String, u32> = serde_json::from_str(vocab)
            .map_err(|e| format!("vocab.json is not a token → id map ({e}); download it again"))?;
        let id = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                format!("the vocabulary has no `{token}`; this is not a CLIP tokenizer")
            })
        };
        let (bos, eos, pad_id) = (id(BOS)?, id(EOS)?, id(pad)?);
        let merges = parse_merges(merges)?;
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .unk_token(EOS.to_owned())
            .end_of_word_suffix("</w>".to_owned())
            .continuing_subword_prefix(String::new())
            .build()
            .map_err(|e| {
                format!("the BPE model cannot be built ({e}); download the files again")
            })?;
        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".to_owned()),
            " ",
        )
        .map_err(|e| e.to_string())?;
        tokenizer.with_normalizer(Some(NormSequence::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        let words = Split::new(
            SplitPattern::Regex(WORD_PATTERN.to_owned()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| e.to_string())?;
        tokenizer.with_pre_tokenizer(Some(PreSequence::new(vec![
            words.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((EOS.to_owned(), eos), (BOS.to_owned(), bos))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        // transformers registers the pad token as a special token too, so SDXL's `!` pad
        // splits a `!!` in the prompt into two `!` tokens; the same happens here.
        tokenizer.add_special_tokens(&[
            AddedToken::from(BOS, true),
            AddedToken::from(EOS, true),
            AddedToken::from(pad, true),
        ]);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| e.to_string())?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad.to_owned(),
        }));
        Ok(Self {
            tokenizer,
            max_length,
        })
    }

    /// The ids of `text`: BOS, at most `max_length - 2` text ids, EOS, then padding, exactly
    /// `max_length` in all (what the pipelines feed the text encoders).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| format!("cannot tokenize the prompt: {e}"))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        debug_assert_eq!(ids.len(), self.max_length);
        Ok(ids)
    }

    /// Ids per encoded prompt.
    pub fn max_length(&self) -> usize {
        self.max_length
    }
}

/// The merge list of OpenAI's CLIP, gzip-compressed.
const CLIP_MERGES_GZ: &[u8] = include_bytes!("../../../assets/clip/bpe_simple_vocab_16e6.txt.gz");
/// Merges CLIP uses from that list (49,408 tokens − 2 × 256 byte symbols − 2 special tokens).
const CLIP_MERGES: usize = 49_152 - 256 - 2;

/// `vocab.json` and `merges.txt` text of CLIP's vocabulary, derived from the merge list as
/// OpenAI's `simple_tokenizer.py` derives it: the byte symbols in GPT-2's order, the same with
/// `</w>`, one token per merge, then the two special tokens.
fn builtin_vocab() -> Result<(String, String), String> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(CLIP_MERGES_GZ)
        .read_to_string(&mut text)
        .map_err(|e| format!("the built-in CLIP merge list is damaged ({e}); rebuild the agent"))?;
    let merges: Vec<&str> = text.lines().skip(1).take(CLIP_MERGES).collect();
    let symbols = gpt2_byte_symbols();
    let mut tokens: Vec<String> = symbols.iter().map(char::to_string).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    tokens.extend([BOS.to_owned(), EOS.to_owned()]);
    let vocab: BTreeMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let vocab = serde_json::to_string(&vocab).expect("a map of strings serializes");
    Ok((vocab, format!("#version: 0.2\n{}\n", merges.join("\n"))))
}

/// GPT-2's `bytes_to_unicode` symbols in its order: the printable Latin-1 bytes as themselves,
/// then the other bytes mapped to U+0100 onwards.
fn gpt2_byte_symbols() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut symbols: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    symbols.extend(
        (0..256u32)
            .filter(|&b| !printable(b))
            .enumerate()
            .filter_map(|(n, _)| char::from_u32(256 + n as u32)),
    );
    symbols
}

/// A special token as tokenizer configs write it: a string, or `{"content": ...}`.
fn special_token(value: &serde_json::Value) -> Option<String> {
    value
        .as_str()
        .or_else(|| value["content"].as_str())
        .map(str::to_owned)
}

fn parse_merges(text: &str) -> Result<Vec<(String, String)>, String> {
    text.lines()
        .enumerate()
        .filter(|(i, line)| !(line.is_empty() || *i == 0 && line.starts_with("#version")))
        .map(|(i, line)| {
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                format!(
                    "merges.txt line {} is not two tokens separated by a space; download it again",
                    i + 1
                )
            })?;
            Ok((a.to_owned(), b.to_owned()))
        })
        .collect()
}

/// The files of a synthesized CLIP vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthVocab {
    /// `vocab.json`.
    pub vocab_json: String,
    /// `merges.txt`.
    pub merges_txt: String,
    /// Token ids, special tokens included.
    pub vocab_size: usize,
}

/// Prompt-like text the demo vocabulary's merges are learned from.
const CORPUS: &str = "a photo of a cat sitting on a red chair, portrait of an astronaut riding a \
    horse on the moon, a watercolor painting of a lighthouse at dawn, highly detailed digital art \
    of a castle in the mountains, cinematic lighting, a cute anime girl with long hair and blue \
    eyes, a bowl of fruit on a wooden table, oil painting of a stormy sea, a futuristic city at \
    night with neon lights, a dog running in the snow, the forest in autumn with golden leaves, \
    masterpiece best quality, a close up photograph of a flower, an old man reading a book by \
    the fire, studio photograph of a sports car, a dragon flying over the ocean at sunset";

/// A CLIP vocabulary in the original order: the 256 byte symbols, the same with `</w>`, one
/// token per merge, then `<|startoftext|>` and `<|endoftext|>`. The merges are learned greedily
/// from a fixed corpus (most frequent pair first, ties broken by the pair's text), so the files
/// are the same bytes on every machine.
pub fn synth_vocab(merges: usize) -> SynthVocab {
    let mut symbols: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    symbols.sort_unstable();
    let mut tokens: Vec<String> = symbols.iter().map(char::to_string).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for word in CORPUS
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
    {
        let mut parts: Vec<String> = word.chars().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        *words.entry(parts).or_default() += 1;
    }
    let mut learned = Vec::new();
    while learned.len() < merges {
        let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (word, count) in &words {
            for pair in word.windows(2) {
                *pairs.entry((pair[0].clone(), pair[1].clone())).or_default() += count;
            }
        }
        let Some(best) = pairs
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(pair, _)| pair)
        else {
            break;
        };
        words = words
            .into_iter()
            .map(|(word, count)| (merge_pair(&word, &best), count))
            .collect();
        tokens.push(format!("{}{}", best.0, best.1));
        learned.push(best);
    }
    tokens.extend([BOS.to_owned(), EOS.to_owned()]);
    let vocab: BTreeMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in &learned {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    SynthVocab {
        vocab_json: serde_json::to_string(&vocab).expect("a map of strings serializes"),
        merges_txt,
        vocab_size: tokens.len(),
    }
}

fn merge_pair(word: &[String], pair: &(String, String)) -> Vec<String> {
    let mut out = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if i + 1 < word.len() && word[i] == pair.0 && word[i + 1] == pair.1 {
            out.push(format!("{}{}", pair.0, pair.1));
            i += 2;
        } else {
            out.push(word[i].clone());
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTokenizer {
        let v = synth_vocab(120);
        ClipTokenizer::new(&v.vocab_json, &v.merges_txt, EOS, MAX_LENGTH).expect("succeeds")
    }

    #[test]
    fn prompts_are_wrapped_and_padded_to_the_fixed_length() {
        let v = synth_vocab(120);
        let vocab: HashMap<String, i64> = serde_json::from_str(&v.vocab_json).expect("succeeds");
        let ids = tiny().encode("A photo of a CAT").expect("succeeds");
        assert_eq!(ids.len(), MAX_LENGTH);
        assert_eq!(ids[0], vocab[BOS]);
        let eos = ids
            .iter()
            .position(|&id| id == vocab[EOS])
            .expect("succeeds");
        assert!(eos > 1 && eos < 10, "eos at {eos}");
        assert!(ids[eos..].iter().all(|&id| id == vocab[EOS]));
        // Lowercased: the same ids as the lowercase prompt.
        assert_eq!(ids, tiny().encode("a photo  of a cat").expect("succeeds"));
    }

    #[test]
    fn long_prompts_are_truncated_keeping_the_end_token() {
        let v = synth_vocab(120);
        let vocab: HashMap<String, i64> = serde_json::from_str(&v.vocab_json).expect("succeeds");
        let ids = tiny().encode(&"castle ".repeat(200)).expect("succeeds");
        assert_eq!(ids.len(), MAX_LENGTH);
        assert_eq!(ids[MAX_LENGTH - 1], vocab[EOS]);
        assert_ne!(ids[MAX_LENGTH - 2], vocab[EOS]);
    }

    #[test]
    fn the_synthesized_vocabulary_is_deterministic_and_sized() {
        let (a, b) = (synth_vocab(120), synth_vocab(120));
        assert_eq!(a, b);
        assert_eq!(a.vocab_size, 512 + 120 + 2);
        assert_eq!(a.merges_txt.lines().count(), 121);
    }

    #[test]
    fn the_builtin_vocabulary_is_clips() {
        let tokenizer = ClipTokenizer::builtin(EOS).expect("succeeds");
        let ids = tokenizer.encode("a photo of a cat").expect("succeeds");
        assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
        assert!(ids[7..].iter().all(|&id| id == 49407));
        let sdxl_second = ClipTokenizer::builtin("!").expect("succeeds");
        let ids = sdxl_second.encode("a photo of a cat").expect("succeeds");
        assert_eq!(ids[7..], [0; 70]);
        let (vocab, _) = builtin_vocab().expect("succeeds");
        let vocab: HashMap<String, u32> = serde_json::from_str(&vocab).expect("succeeds");
        assert_eq!(vocab.len(), 49_408);
    }

    #[test]
    fn a_vocabulary_without_the_special_tokens_is_refused() {
        let err =
            ClipTokenizer::new(r#"{"a": 0}"#, "#version: 0.2\n", EOS, 77).expect_err("is refused");
        assert!(err.contains("<|startoftext|>"), "{err}");
        let v = synth_vocab(4);
        let err = ClipTokenizer::new(&v.vocab_json, "#version: 0.2\nab\n", EOS, 77)
            .expect_err("is refused");
        assert!(err.contains("line 2"), "{err}");
    }
}
