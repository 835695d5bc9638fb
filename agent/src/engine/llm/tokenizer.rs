//! The text side of a Hugging Face model folder: `tokenizer.json` (through the `tokenizers`
//! library), the special tokens and chat template of `tokenizer_config.json`, and the
//! end-of-sequence ids of `generation_config.json`.
//!
//! Prompts are rendered with the chat template (which writes BOS itself) and encoded without
//! adding special tokens; special tokens written in the text (`<|eot_id|>`, `<|im_start|>`)
//! still map to their ids. Decoding skips special tokens, and [`IncrementalDecoder`] streams
//! the same text piece by piece.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use infermine_protocol::ChatMessage;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::template::{ChatTemplate, SpecialTokens, TemplateError};

/// The tokenizer file of a Hugging Face model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Special tokens, chat template and tokenizer options.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Generation defaults, among them the end-of-sequence ids.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// Older folders keep the special tokens here when `tokenizer_config.json` does not name them.
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// Newer `transformers` versions save the chat template in its own file.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Why the text side of a model could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error(
        "could not read {path}: {source}; check that the model folder is complete and readable"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `tokenizer.json` is not a tokenizer the `tokenizers` library can load.
    #[error(
        "{path} is not a tokenizer this agent can load: {reason}; download the model's \
         tokenizer.json again (a fast-tokenizer file written by transformers or tokenizers)"
    )]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the `tokenizers` library said.
        reason: String,
    },
    /// A JSON configuration file is malformed or has a field of the wrong type.
    #[error("{path} is not valid: {reason}; download the model's configuration files again")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A special token named in a configuration file is not in the vocabulary.
    #[error(
        "{field} {token:?} in {path} is not a token of {TOKENIZER_FILE}: the tokenizer and its \
         configuration do not belong together; download both from the same model revision"
    )]
    UnknownToken {
        /// The file naming the token.
        path: PathBuf,
        /// The field (`eos_token`, `bos_token`).
        field: &'static str,
        /// The token text.
        token: String,
    },
    /// An end-of-sequence id is outside the vocabulary.
    #[error(
        "eos_token_id {id} in {path} is outside the vocabulary of {vocab_size} tokens: the \
         tokenizer and generation_config.json do not belong together; download both from the \
         same model revision"
    )]
    IdOutOfRange {
        /// The file naming the id.
        path: PathBuf,
        /// The id.
        id: u64,
        /// The vocabulary size (special tokens included).
        vocab_size: usize,
    },
    /// No end-of-sequence token is known, so generation could never end on its own.
    #[error(
        "the model in {dir} names no end-of-sequence token: set eos_token in \
         {TOKENIZER_CONFIG_FILE} or eos_token_id in {GENERATION_CONFIG_FILE}"
    )]
    NoEos {
        /// The model folder.
        dir: PathBuf,
    },
    /// The model has no chat template, so it cannot serve chat requests.
    #[error(
        "the model in {dir} has no chat template (no chat_template in {TOKENIZER_CONFIG_FILE} \
         and no {CHAT_TEMPLATE_FILE}): it is a base model; use its instruct or chat variant"
    )]
    NoChatTemplate {
        /// The model folder.
        dir: PathBuf,
    },
    /// The model ships several named chat templates and none is called `default`.
    #[error(
        "{path} has chat templates named {names:?} but none named \"default\": add a \
         \"default\" entry naming the template for plain chat"
    )]
    NoDefaultTemplate {
        /// The file.
        path: PathBuf,
        /// The names it has.
        names: Vec<String>,
    },
    /// The chat template failed to compile or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Encoding or decoding failed inside the `tokenizers` library.
    #[error("the tokenizer of {dir} failed to {action}: {reason}")]
    Codec {
        /// The model folder.
        dir: PathBuf,
        /// `encode` or `decode`.
        action: &'static str,
        /// What the `tokenizers` library said.
        reason: String,
    },
    /// A synthetic tokenizer could not be built (see `synth_tokenizer`).
    #[error("building the synthetic tokenizer failed: {reason}")]
    Synth {
        /// What went wrong.
        reason: String,
    },
}

/// Where the chat template stands.
#[derive(Debug)]
enum TemplateSlot {
    Ready(Box<ChatTemplate>),
    Missing,
    NoDefault { path: PathBuf, names: Vec<String> },
}

/// A model's tokenizer with its special tokens and chat template.
#[derive(Debug)]
pub struct TextTokenizer {
    dir: PathBuf,
    tokenizer: Tokenizer,
    special: SpecialTokens,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos_token: bool,
    template: TemplateSlot,
}

impl TextTokenizer {
    /// Loads the tokenizer of the Hugging Face model folder `dir`: `tokenizer.json` and
    /// `tokenizer_config.json` (both required), then `generation_config.json`,
    /// `special_tokens_map.json` and `chat_template.jinja` when present.
    pub fn load(dir: &Path) -> Result<Self, TextError> {
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tokenizer_json = read(&tokenizer_path)?;
        let tokenizer =
            Tokenizer::from_bytes(tokenizer_json.as_bytes()).map_err(|e| TextError::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let vocab_size = tokenizer.get_vocab_size(true);

        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = parse_json(&config_path, &read(&config_path)?)?;
        let map_path = dir.join(SPECIAL_TOKENS_MAP_FILE);
        let special_map = read_optional(&map_path)?
            .map(|text| parse_json(&map_path, &text))
            .transpose()?;

        // bos_token / eos_token: tokenizer_config.json, else special_tokens_map.json.
        let mut special = SpecialTokens::default();
        let mut bos_id = None;
        let mut eos_ids = Vec::new();
        for field in ["bos_token", "eos_token"] {
            let mut found = token_field(&config_path, &config, field)?.map(|t| (t, &config_path));
            if found.is_none()
                && let Some(map) = &special_map
            {
                found = token_field(&map_path, map, field)?.map(|t| (t, &map_path));
            }
            let Some((text, path)) = found else { continue };
            let id = tokenizer
                .token_to_id(&text)
                .ok_or_else(|| TextError::UnknownToken {
                    path: path.clone(),
                    field,
                    token: text.clone(),
                })?;
            if field == "bos_token" {
                bos_id = Some(id);
                special.bos_token = Some(text);
            } else {
                eos_ids.push(id);
                special.eos_token = Some(text);
            }
        }

        let add_bos_token = match config.get("add_bos_token") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                return Err(TextError::Config {
                    path: config_path,
                    reason: format!("add_bos_token is {other}, not true or false"),
                });
            }
        };

        let generation_path = dir.join(GENERATION_CONFIG_FILE);
        if let Some(text) = read_optional(&generation_path)? {
            let generation = parse_json(&generation_path, &text)?;
            let ids = match generation.get("eos_token_id") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Array(items)) => items.iter().collect(),
                Some(one) => vec![one],
            };
            for value in ids {
                let id = value.as_u64().ok_or_else(|| TextError::Config {
                    path: generation_path.clone(),
                    reason: format!("eos_token_id holds {value}, not a token id"),
                })?;
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| usize::try_from(id).is_ok_and(|i| i < vocab_size))
                    .ok_or_else(|| TextError::IdOutOfRange {
                        path: generation_path.clone(),
                        id,
                        vocab_size,
                    })?;
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        if eos_ids.is_empty() {
            return Err(TextError::NoEos {
                dir: dir.to_owned(),
            });
        }

        let template = match config.get("chat_template") {
            None | Some(Json::Null) => {
                let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
                match read_optional(&jinja_path)? {
                    Some(source) => {
                        TemplateSlot::Ready(Box::new(ChatTemplate::new(source, jinja_path)?))
                    }
                    None => TemplateSlot::Missing,
                }
            }
            Some(Json::String(source)) => {
                TemplateSlot::Ready(Box::new(ChatTemplate::new(source.as_str(), config_path)?))
            }
            Some(Json::Array(entries)) => named_template(&config_path, entries)?,
            Some(other) => {
                return Err(TextError::Config {
                    path: config_path,
                    reason: format!(
                        "chat_template is {}, not a string or a list of {{name, template}}",
                        kind(other)
                    ),
                });
            }
        };

        Ok(Self {
            dir: dir.to_owned(),
            tokenizer,
            special,
            bos_id,
            eos_ids,
            add_bos_token,
            template,
        })
    }

    /// The model folder this tokenizer came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of token ids, special tokens included (the model's embedding may be
    /// larger; ids beyond this decode to nothing).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a token, given its text as the vocabulary spells it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Every id that ends a generation: `eos_token` of `tokenizer_config.json` then the ids
    /// of `generation_config.json`, without repeats. Never empty.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends a generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The beginning-of-sequence id, when the model names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The special tokens' text (`bos_token`, `eos_token`) as the chat template sees them.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// `add_bos_token` of `tokenizer_config.json`: whether a raw (non-chat) prompt should
    /// start with BOS. Chat prompts get BOS from the template.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// The model's chat template, if it has a usable one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        match &self.template {
            TemplateSlot::Ready(t) => Some(t),
            _ => None,
        }
    }

    /// Token ids of `text`, adding no special tokens (no BOS); special tokens written in the
    /// text map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| self.codec("encode", &e))
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| self.codec("decode", &e))
    }

    /// A streaming decoder for generated ids.
    pub fn incremental(&self) -> IncrementalDecoder<'_> {
        IncrementalDecoder {
            tokenizer: self,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            emitted: String::new(),
        }
    }

    /// The prompt text of a conversation, ending with the header that opens the assistant's
    /// reply (`add_generation_prompt`).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, TextError> {
        self.render_chat_at(messages, SystemTime::now())
    }

    /// [`Self::render_chat`] with the clock of templates that print today's date pinned.
    pub fn render_chat_at(
        &self,
        messages: &[ChatMessage],
        now: SystemTime,
    ) -> Result<String, TextError> {
        match &self.template {
            TemplateSlot::Ready(t) => Ok(t.render_at(messages, &self.special, true, now)?),
            TemplateSlot::Missing => Err(TextError::NoChatTemplate {
                dir: self.dir.clone(),
            }),
            TemplateSlot::NoDefault { path, names } => Err(TextError::NoDefaultTemplate {
                path: path.clone(),
                names: names.clone(),
            }),
        }
    }

    /// The prompt ids of a conversation: [`Self::render_chat`] then [`Self::encode`].
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TextError> {
        self.encode(&self.render_chat(messages)?)
    }

    fn codec(&self, action: &'static str, e: &tokenizers::Error) -> TextError {
        TextError::Codec {
            dir: self.dir.clone(),
            action,
            reason: e.to_string(),
        }
    }
}

/// Turns generated ids into text as they arrive. Each [`push`](Self::push) returns the text
/// that became complete; the pieces plus [`finish`](Self::finish) equal
/// [`TextTokenizer::decode`] of all the ids.
///
/// It decodes a window of ids twice, with and without the newest ones, and emits the
/// difference once it does not end in an incomplete character (U+FFFD), the way
/// text-generation-inference and vLLM do. The window keeps the previous piece's ids as
/// context, so decoders that strip or merge around word boundaries come out as in a full
/// decode.
#[derive(Debug)]
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    /// Start of the decoding window.
    prefix: usize,
    /// End of the ids already turned into emitted text.
    read: usize,
    emitted: String,
}

impl IncrementalDecoder<'_> {
    /// Takes the next generated id; returns the newly completed text (often empty: a special
    /// token, or part of a multi-byte character).
    pub fn push(&mut self, id: u32) -> Result<String, TextError> {
        self.ids.push(id);
        let prefix_text = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let new_text = self.tokenizer.decode(&self.ids[self.prefix..])?;
        if new_text.len() > prefix_text.len()
            && !new_text.ends_with('\u{FFFD}')
            && let Some(piece) = new_text.strip_prefix(prefix_text.as_str())
        {
            self.prefix = self.read;
            self.read = self.ids.len();
            self.emitted.push_str(piece);
            return Ok(piece.to_owned());
        }
        Ok(String::new())
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The end of the stream: the text not emitted yet (an incomplete character decodes as
    /// U+FFFD, as in a full decode).
    pub fn finish(self) -> Result<String, TextError> {
        let full = self.tokenizer.decode(&self.ids)?;
        if let Some(rest) = full.strip_prefix(self.emitted.as_str()) {
            return Ok(rest.to_owned());
        }
        // Only a decoder whose output changes retroactively gets here: flush the window.
        let prefix_text = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let new_text = self.tokenizer.decode(&self.ids[self.prefix..])?;
        Ok(new_text
            .strip_prefix(prefix_text.as_str())
            .map_or(new_text.clone(), str::to_owned))
    }
}

fn read(path: &Path) -> Result<String, TextError> {
    fs::read_to_string(path).map_err(|source| TextError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, TextError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TextError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_json(path: &Path, text: &str) -> Result<Json, TextError> {
    let value: Json = serde_json::from_str(text).map_err(|e| TextError::Config {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(TextError::Config {
            path: path.to_owned(),
            reason: format!("the file holds {}, not a JSON object", kind(&value)),
        });
    }
    Ok(value)
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// A special token field: a string, an AddedToken object `{"content": ...}`, or null/absent.
fn token_field(
    path: &Path,
    config: &Json,
    field: &'static str,
) -> Result<Option<String>, TextError> {
    match config.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(TextError::Config {
                path: path.to_owned(),
                reason: format!("{field} is an object without a string \"content\""),
            }),
        },
        Some(other) => Err(TextError::Config {
            path: path.to_owned(),
            reason: format!(
                "{field} is {}, not a string or an AddedToken object",
                kind(other)
            ),
        }),
    }
}

/// The `default` entry of a list of `{name, template}` chat templates.
fn named_template(path: &Path, entries: &[Json]) -> Result<TemplateSlot, TextError> {
    let mut names = Vec::new();
    for entry in entries {
        let (Some(name), Some(source)) = (
            entry.get("name").and_then(Json::as_str),
            entry.get("template").and_then(Json::as_str),
        ) else {
            return Err(TextError::Config {
                path: path.to_owned(),
                reason: "a chat_template list entry lacks a string \"name\" or \"template\""
                    .to_owned(),
            });
        };
        if name == "default" {
            return Ok(TemplateSlot::Ready(Box::new(ChatTemplate::new(
                source, path,
            )?)));
        }
        names.push(name.to_owned());
    }
    Ok(TemplateSlot::NoDefault {
        path: path.to_owned(),
        names,
    })
}

#[cfg(test)]
pub(crate) mod tests;
