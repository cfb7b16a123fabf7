//! Generation for one sequence: prefill the prompt in one batched forward
//! pass, then decode one token per step until EOS, a stop string or
//! `max_tokens`, streaming text as it is produced.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::model::{KvCache, Logits, Model, ModelError};
use crate::sampling::{InvalidParam, Sampler, SamplingParams};
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

/// What to generate.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains any of these (excluded from
    /// the output).
    pub stop: Vec<String>,
    /// Keep generating past EOS (benchmarks).
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS token or a stop string.
    Stop,
    /// max_tokens reached.
    Length,
}

/// The result with timings.
#[derive(Clone, Debug)]
pub struct Output {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
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

/// Holds back text that might be the start of a stop string, so a stop string
/// is never streamed and then retracted.
#[derive(Debug)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub(crate) fn new(stops: Vec<String>) -> StopFilter {
        StopFilter {
            stops,
            pending: String::new(),
        }
    }

    /// Adds text; returns (text safe to emit, whether a stop string was hit).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n) && self.pending.ends_with(&s[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
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
        if req.prompt.len() + req.max_tokens > context {
            return Err(GenerateError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                context,
            });
        }
        let mut sampler = Sampler::new(req.sampling.clone())?;
        let mut cache = KvCache::new(&self.model.config, req.prompt.len() + req.max_tokens);
        let mut history = req.prompt.clone();
        let mut stream = self.tokenizer.stream();
        let mut filter = StopFilter {
            stops: req.stop.clone(),
            pending: String::new(),
        };
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;

        let t0 = Instant::now();
        let mut logits = self.model.forward(&req.prompt, &mut cache, Logits::Last)?;
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        while tokens.len() < req.max_tokens {
            let next = sampler.sample(&logits, &history);
            if !req.ignore_eos && self.tokenizer.eos_ids().contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            tokens.push(next);
            history.push(next);
            if let Some(delta) = stream.push(next)? {
                let (out, stopped) = filter.push(&delta);
                on_text(&out);
                text.push_str(&out);
                if stopped {
                    finish = FinishReason::Stop;
                    break;
                }
            }
            if tokens.len() < req.max_tokens {
                logits = self.model.forward(&[next], &mut cache, Logits::Last)?;
            }
        }
        if finish == FinishReason::Length || !filter.pending.is_empty() {
            let mut rest = stream.finish()?.unwrap_or_default();
            rest = filter.push(&rest).0 + &filter.flush();
            on_text(&rest);
            text.push_str(&rest);
        }
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

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut f = StopFilter {
            stops: vec!["\nUser:".into()],
            pending: String::new(),
        };
        assert_eq!(f.push("Hello"), ("Hello".into(), false));
        // "\nUs" could start the stop string: held back.
        assert_eq!(f.push(" world\nUs"), (" world".into(), false));
        assert_eq!(f.push("er: more"), (String::new(), true));
        let mut f = StopFilter {
            stops: vec!["\nUser:".into()],
            pending: String::new(),
        };
        assert_eq!(f.push("a\nU"), ("a".into(), false));
        assert_eq!(f.push("nder"), ("\nUnder".into(), false));
        assert_eq!(f.flush(), "");
    }
}
