//! Generation for one sequence: prefill the prompt in one batched forward
//! pass, then decode one token per step until EOS, a stop string or
//! `max_tokens`, streaming text as it is produced.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::model::{KvCache, Logits, Model, ModelError};
use crate::request::{DecodeError, Finish, Next, Request, TokenStep};
use crate::sampling::InvalidParam;
use model::gguf::GgufFile;
use model::tokenizer::{Tokenizer, TokenizerError};

/// Errors from loading or generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Sampling(#[from] InvalidParam),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("prompt of {prompt} tokens + max_tokens {max_tokens} exceeds the context of {context}")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
}

/// A model with its tokenizer.
#[derive(Debug)]
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl Engine {
    /// Loads a `.gguf` file, or a Hugging Face checkpoint directory
    /// (`config.json`, `*.safetensors`, `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Engine, GenerateError> {
        if path.is_dir() {
            return Ok(Engine {
                model: Model::from_safetensors_dir(path)?,
                tokenizer: Tokenizer::from_hf_dir(path)?,
            });
        }
        let file = Arc::new(GgufFile::open(path).map_err(ModelError::from)?);
        let tokenizer = Tokenizer::from_gguf(&file.header)?;
        Ok(Engine {
            model: Model::from_gguf(file)?,
            tokenizer,
        })
    }
}

/// The result with timings.
#[derive(Clone, Debug)]
pub struct Output {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

impl Output {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// Decode rate over the tokens after the first (the first comes from
    /// the prefill's logits).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

impl Engine {
    /// Generates for `req`, calling `on_text` with each piece of text as it
    /// becomes final.
    pub fn generate(
        &self,
        req: &Request,
        mut on_text: impl FnMut(&str),
    ) -> Result<Output, GenerateError> {
        if req.prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let context = self.model.config.context_length;
        if req
            .prompt
            .len()
            .checked_add(req.max_tokens)
            .is_none_or(|total| total > context)
        {
            return Err(GenerateError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                context,
            });
        }
        let mut step = TokenStep::new(&self.tokenizer, req)?;
        let mut cache = KvCache::new(&self.model.config, req.prompt.len() + req.max_tokens);
        let mut history = req.prompt.clone();
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut finish = Finish::Length;

        let t0 = Instant::now();
        let mut logits = self.model.forward(&req.prompt, &mut cache, Logits::Last)?;
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        while tokens.len() < req.max_tokens {
            let Next::Token {
                id,
                text: out,
                stopped,
            } = step.next(&logits, &history)?
            else {
                finish = Finish::Stop;
                break;
            };
            tokens.push(id);
            history.push(id);
            on_text(&out);
            text.push_str(&out);
            if stopped {
                finish = Finish::Stop;
                break;
            }
            if tokens.len() < req.max_tokens {
                logits = self.model.forward(&[id], &mut cache, Logits::Last)?;
            }
        }
        let rest = step.finish()?;
        on_text(&rest);
        text.push_str(&rest);
        Ok(Output {
            tokens,
            text,
            finish,
            prompt_tokens: req.prompt.len(),
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
        })
    }
}
