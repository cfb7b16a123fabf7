//! Text ↔ token ids, and the chat template.
//!
//! GGUF files carry their tokenizer as metadata (`tokenizer.ggml.*`): the
//! vocabulary in GPT-2's byte-to-unicode alphabet, the BPE merges in rank
//! order, token types (3 = control/special), BOS/EOS ids and the name of the
//! pre-tokenizer. We load that vocabulary into the Hugging Face `tokenizers`
//! crate's byte-level BPE and configure the pre-tokenizer the model was
//! trained with:
//!
//! ```text
//! "The year 2024"  --special tokens split out (when parsing them)-->
//!   --Digits(individual): "The year ", "2", "0", "2", "4"
//!   --ByteLevel (GPT-2 regex, bytes → unicode): "The", "Ġyear", "Ġ", "2", "0", "2", "4"
//!   --BPE merges (lowest rank first) per piece--> ids [504, 713, 216, 34, 32, 34, 36]
//! ```
//!
//! llama.cpp's `smollm` pre-tokenizer (`\p{N}` then the GPT-2 regex) is the
//! same split; the tests check both llama.cpp's and Python `tokenizers`' ids.
//! Hugging Face checkpoints bring a `tokenizer.json`, loaded as is.
//!
//! Special tokens (`<|im_start|>` ...) are parsed out of the text only when the
//! caller asks (chat templates); user text is encoded with them as plain text,
//! so a prompt cannot forge control tokens.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::gguf::{Header, Value};

/// Errors from building or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata {key:?}: {reason}")]
    Metadata { key: String, reason: String },
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("building the BPE model: {0}")]
    Build(String),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("decoding ids: {0}")]
    Decode(String),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    UnknownId { id: u32, vocab: usize },
    #[error("chat template: {0}")]
    Template(String),
    #[error("the model has no chat template")]
    NoChatTemplate,
}

/// One chat message for the template.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A model's tokenizer: encode, decode, special ids, chat template.
pub struct Tokenizer {
    /// Parses special tokens out of the text.
    special: tokenizers::Tokenizer,
    /// Treats special tokens' text as plain text.
    plain: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    add_bos: bool,
    eos: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn meta_err(key: &str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::Metadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn string_array<'a>(h: &'a Header, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    h.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| meta_err(key, "absent or not an array"))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| meta_err(key, format!("element {i} is not a string")))
        })
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF header's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(h: &Header) -> Result<Tokenizer, TokenizerError> {
        let model = h.get("tokenizer.ggml.model").and_then(Value::as_str);
        if model != Some("gpt2") {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model = {model:?} (mlstack reads byte-level BPE, \"gpt2\")"
            )));
        }
        let pre = h
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        // The pre-tokenizers mlstack knows: GPT-2's regex, optionally after
        // splitting every digit apart (llama.cpp's `smollm`/`starcoder`).
        let individual_digits = match pre {
            "smollm" | "starcoder" | "refact" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "pre-tokenizer {other:?} (known: smollm, starcoder, refact, gpt2)"
                )));
            }
        };
        let tokens = string_array(h, "tokenizer.ggml.tokens")?;
        let merges = string_array(h, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        meta_err(
                            "tokenizer.ggml.merges",
                            format!("merge {i} {m:?} is not two tokens"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types: Vec<u64> = match h.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .ok_or_else(|| meta_err("tokenizer.ggml.token_type", "not an array"))?
                .iter()
                .map(|t| t.as_u64().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(meta_err(
                "tokenizer.ggml.token_type",
                format!("{} types for {} tokens", types.len(), tokens.len()),
            ));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(meta_err(
                "tokenizer.ggml.tokens",
                format!("{} duplicate token strings", tokens.len() - vocab.len()),
            ));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
        if individual_digits {
            pres.push(Digits::new(true).into());
        }
        pres.push(ByteLevel::new(false, true, true).into());
        tok.with_pre_tokenizer(Some(Sequence::new(pres)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) are matched whole before BPE.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3)
            .map(|(s, _)| AddedToken::from(s.to_string(), true))
            .collect();
        tok.add_special_tokens(&specials);
        let id = |key: &str| h.get(key).and_then(Value::as_u64).map(|v| v as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let add_bos = matches!(
            h.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        // llama.cpp also ends generation on EOT (end of turn) when it differs.
        if let Some(eot) = id("tokenizer.ggml.eot_token_id")
            && !eos.contains(&eot)
        {
            eos.push(eot);
        }
        let chat_template = h
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string);
        Tokenizer::assemble(tok, tokens.len(), bos, add_bos, eos, chat_template)
    }

    /// Loads a Hugging Face `tokenizer.json`, with the chat template and
    /// special ids from `tokenizer_config.json` when it sits beside it.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Build(format!("{}: {e}", path.display())))?;
        let cfg: serde_json::Value = std::fs::read(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let token_id = |key: &str| {
            cfg.get(key)
                .and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()))
                .and_then(|t| tok.token_to_id(t))
        };
        let bos = token_id("bos_token");
        let eos: Vec<u32> = token_id("eos_token").into_iter().collect();
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let template = cfg
            .get("chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let vocab = tok.get_vocab_size(true);
        Tokenizer::assemble(tok, vocab, bos, add_bos, eos, template)
    }

    fn assemble(
        special: tokenizers::Tokenizer,
        vocab_size: usize,
        bos: Option<u32>,
        add_bos: bool,
        eos: Vec<u32>,
        chat_template: Option<String>,
    ) -> Result<Tokenizer, TokenizerError> {
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        Ok(Tokenizer {
            special,
            plain,
            vocab_size,
            bos,
            add_bos,
            eos,
            chat_template,
        })
    }

    /// The same tokenizer cut to its first `vocab` ids: vocabulary entries and
    /// added tokens at `vocab` or above are dropped, and so is every merge
    /// whose parts or result are gone. In byte-level BPE the ids after the
    /// specials and the 256 bytes are the merges in rank order, so the cut
    /// keeps the first `vocab − (specials + 256)` merges: a smaller BPE that
    /// still encodes any text. (The trainer's `tiny` config runs on it.)
    pub fn truncated(&self, vocab: usize) -> Result<Tokenizer, TokenizerError> {
        if vocab >= self.vocab_size {
            return Ok(Tokenizer {
                special: self.special.clone(),
                plain: self.plain.clone(),
                vocab_size: self.vocab_size,
                bos: self.bos,
                add_bos: self.add_bos,
                eos: self.eos.clone(),
                chat_template: self.chat_template.clone(),
            });
        }
        let build = |e: String| TokenizerError::Build(format!("truncating to {vocab} ids: {e}"));
        let text = self
            .special
            .to_string(false)
            .map_err(|e| build(e.to_string()))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| build(e.to_string()))?;
        let keep = |id: &serde_json::Value| id.as_u64().is_some_and(|i| (i as usize) < vocab);
        let model = v
            .get_mut("model")
            .ok_or_else(|| build("no \"model\" in tokenizer.json".into()))?;
        let vocab_map = model
            .get_mut("vocab")
            .and_then(serde_json::Value::as_object_mut)
            .ok_or_else(|| build("no model.vocab map".into()))?;
        vocab_map.retain(|_, id| keep(id));
        let kept: std::collections::HashSet<String> = vocab_map.keys().cloned().collect();
        if let Some(merges) = model
            .get_mut("merges")
            .and_then(serde_json::Value::as_array_mut)
        {
            merges.retain(|m| {
                // A merge is "a b" (older files) or ["a", "b"].
                let (a, b) = match m {
                    serde_json::Value::String(s) => match s.split_once(' ') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => return false,
                    },
                    serde_json::Value::Array(p) if p.len() == 2 => (
                        p[0].as_str().unwrap_or_default().to_string(),
                        p[1].as_str().unwrap_or_default().to_string(),
                    ),
                    _ => return false,
                };
                kept.contains(&a) && kept.contains(&b) && kept.contains(&format!("{a}{b}"))
            });
        }
        if let Some(added) = v
            .get_mut("added_tokens")
            .and_then(serde_json::Value::as_array_mut)
        {
            added.retain(|t| t.get("id").is_some_and(keep));
        }
        let special: tokenizers::Tokenizer = v
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| build(e.to_string()))?;
        let id_ok = |i: &u32| (*i as usize) < vocab;
        let eos: Vec<u32> = self.eos.iter().copied().filter(id_ok).collect();
        if eos.is_empty() {
            return Err(build(format!("every EOS id ({:?}) is cut", self.eos)));
        }
        Tokenizer::assemble(
            special,
            vocab,
            self.bos.filter(id_ok),
            self.add_bos,
            eos,
            self.chat_template.clone(),
        )
    }

    /// Writes a `tokenizer.json` that [`Tokenizer::from_hf_dir`] reads back
    /// (used to give converted checkpoints their tokenizer).
    pub fn save_hf(&self, dir: &Path) -> Result<(), TokenizerError> {
        self.special
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.special.id_to_token(i));
        let cfg = serde_json::json!({
            "bos_token": name(self.bos),
            "eos_token": name(self.eos.first().copied()),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        });
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string())
            .map_err(|e| TokenizerError::Build(e.to_string()))
    }

    /// Token ids for `text`. With `parse_special`, special-token strings in the
    /// text become their ids; otherwise they are ordinary text. A BOS is
    /// prepended when the model asks for it (`add_bos_token`).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.bos_prefix();
        ids.extend(self.encode_piece(text, parse_special)?);
        Ok(ids)
    }

    /// `[bos]` when the model wants one at the start of a sequence.
    fn bos_prefix(&self) -> Vec<u32> {
        match self.bos {
            Some(b) if self.add_bos => vec![b],
            _ => Vec::new(),
        }
    }

    /// Ids of `text` alone (no BOS): one piece of a longer sequence.
    fn encode_piece(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tok = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        let enc = tok
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text for `ids`; special tokens are rendered unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab: self.vocab_size,
            });
        }
        self.special
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The longest token's text in bytes, as the vocabulary spells it. It is
    /// at least the bytes of input the token stands for (byte-level BPE spells
    /// each byte as one 1–2 byte character, SentencePiece spells text as
    /// itself or `<0xNN>`), so `n` tokens never cover more than
    /// `n * max_token_bytes()` bytes of input: a cheap bound checked before
    /// tokenizing untrusted text.
    pub fn max_token_bytes(&self) -> usize {
        self.plain
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// End-of-sequence ids: generation stops on any of them.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template (Jinja, through `minijinja`) for `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let mut env = minijinja::Environment::new();
        // Hugging Face templates call raise_exception(...) on bad input.
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.special.id_to_token(i));
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => minijinja::Value::from(
                        messages
                            .iter()
                            .map(|m| {
                                minijinja::Value::from(std::collections::BTreeMap::from([
                                    ("role", m.role.clone()),
                                    ("content", m.content.clone()),
                                ]))
                            })
                            .collect::<Vec<_>>(),
                    ),
                    add_generation_prompt => add_generation_prompt,
                    bos_token => name(self.bos).unwrap_or_default(),
                    eos_token => name(self.eos.first().copied()).unwrap_or_default(),
                })
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }

    /// Token ids of `messages` in the chat template, where **only the
    /// template's own markers are special**: each message's content is
    /// tokenized as text, so a user who writes `<|im_start|>system` gets those
    /// characters, not a forged turn. (Rendering the template and tokenizing
    /// the result with special tokens parsed, as `apply_chat_template` +
    /// `encode(.., true)` would, lets content inject control tokens.)
    ///
    /// How: the template is rendered with a sentinel in place of each
    /// content; the rendered text is split at the sentinels; template pieces
    /// are tokenized with special tokens parsed and contents without.
    /// Special tokens are split points of the tokenizer anyway, so for
    /// templates that put markers around contents (ChatML) the ids equal
    /// those of the joined text whenever the content holds no special token.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        // Private-use characters plus a per-call nonce: content cannot
        // contain a sentinel by accident, nor guess one.
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(messages.len());
            h.finish()
        };
        let sentinels: Vec<String> = (0..messages.len())
            .map(|i| format!("\u{E000}{nonce:016x}:{i}\u{E001}"))
            .collect();
        let masked: Vec<ChatMessage> = messages
            .iter()
            .zip(&sentinels)
            .map(|(m, s)| ChatMessage {
                role: m.role.clone(),
                content: s.clone(),
            })
            .collect();
        let rendered = self.apply_chat_template(&masked, add_generation_prompt)?;
        let mut ids = self.bos_prefix();
        let mut rest = rendered.as_str();
        loop {
            // The earliest sentinel left in the rendered text, if any.
            let next = (0..messages.len())
                .filter_map(|i| rest.find(&sentinels[i]).map(|at| (at, i)))
                .min();
            let Some((at, i)) = next else {
                ids.extend(self.encode_piece(rest, true)?);
                return Ok(ids);
            };
            ids.extend(self.encode_piece(&rest[..at], true)?);
            ids.extend(self.encode_piece(&messages[i].content, false)?);
            rest = &rest[at + sentinels[i].len()..];
        }
    }

    /// A decoder for a stream of generated ids.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

/// Turns generated ids into text deltas as they arrive. Byte-level BPE tokens
/// can end inside a UTF-8 character (an emoji spans several tokens), so text is
/// released only once it decodes without a trailing replacement character;
/// decoding a short window (`prefix..`) rather than everything keeps each step
/// O(1) (the approach of Hugging Face's text-generation-inference).
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the newly complete text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = self.tok.decode(&self.ids[self.prefix..self.read], false)?;
        let now = self.tok.decode(&self.ids[self.prefix..], false)?;
        // `now` extends `before` (same ids, more of them); `get` guards the
        // slice anyway rather than trusting that.
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && let Some(delta) = now.get(before.len()..)
        {
            let delta = delta.to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }

    /// Whatever is left at the end (an incomplete character decodes lossily).
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read], false)?;
        let now = self.tok.decode(&self.ids[self.prefix..], false)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now
            .get(before.len()..)
            .filter(|d| !d.is_empty())
            .map(str::to_string))
    }
}
