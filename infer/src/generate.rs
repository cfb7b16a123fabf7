//! Generation for one sequence: prefill the prompt in one batched forward
//! pass, then decode one token per step until EOS, a stop string or
//! `max_tokens`, streaming text as it is produced.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::model::cuda::{CudaModel, CudaSeq};
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

/// A model with its tokenizer, and its weights on a GPU when
/// [`Engine::use_cuda`] was called.
#[derive(Debug)]
pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub cuda: Option<CudaModel>,
}

/// The device a forward pass runs on (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(format!("unknown device {s:?} (cpu, cuda)")),
        }
    }
}

/// One sequence's forward passes and cache, on the engine's device.
#[derive(Debug)]
pub enum Session<'a> {
    Cpu(&'a Model, KvCache),
    Cuda(Box<CudaSeq<'a>>),
}

impl Session<'_> {
    /// Runs `tokens` at the next positions; the last token's logits (vocab,).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        match self {
            Session::Cpu(m, cache) => m.forward(tokens, cache, Logits::Last),
            Session::Cuda(seq) => seq.forward(tokens),
        }
    }
}

impl Engine {
    /// Loads a `.gguf` file, or a Hugging Face checkpoint directory
    /// (`config.json`, `*.safetensors`, `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Engine, GenerateError> {
        if path.is_dir() {
            return Ok(Engine {
                model: Model::from_safetensors_dir(path)?,
                tokenizer: Tokenizer::from_hf_dir(path)?,
                cuda: None,
            });
        }
        let file = Arc::new(GgufFile::open(path).map_err(ModelError::from)?);
        let tokenizer = Tokenizer::from_gguf(&file.header)?;
        Ok(Engine {
            model: Model::from_gguf(file)?,
            tokenizer,
            cuda: None,
        })
    }

    /// Moves the forward passes to GPU 0: opens it (a clear error when there
    /// is none) and uploads the weights. The CPU copy stays (the tokenizer
    /// and the serving engine use it).
    pub fn use_cuda(&mut self) -> Result<(), GenerateError> {
        let gpu = kernels::cuda::Gpu::open(0).map_err(ModelError::from)?;
        self.cuda = Some(CudaModel::upload(&self.model, std::sync::Arc::new(gpu))?);
        Ok(())
    }

    /// A new sequence with room for `max_tokens` positions, on the GPU when
    /// the weights are there.
    pub fn session(&self, max_tokens: usize) -> Result<Session<'_>, ModelError> {
        Ok(match &self.cuda {
            Some(m) => Session::Cuda(Box::new(CudaSeq::new(m, max_tokens)?)),
            None => Session::Cpu(&self.model, KvCache::new(&self.model.config, max_tokens)),
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
        let mut seq = self.session(req.prompt.len() + req.max_tokens)?;
        let mut history = req.prompt.clone();
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut finish = Finish::Length;

        let t0 = Instant::now();
        let mut logits = seq.forward(&req.prompt)?;
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
                logits = seq.forward(&[id])?;
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
