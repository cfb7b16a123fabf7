//! What a generation request is, how it ends, and the per-token step every
//! generation loop runs (the one-sequence loop in [`crate::generate`] and the
//! engine thread in [`crate::engine_loop`]):
//!
//! ```text
//! logits ─► sample (seeded sampler, repetition history) ─► EOS? ─► end (Stop)
//!                                                          │ no
//!                                                          ▼
//!        UTF-8 stream decoder (holds back a partial character)
//!                                                          ▼
//!        stop filter (holds back what may start a stop string; a hit ends it)
//!                                                          ▼
//!                                                 text that is final
//! ```

use model::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

use crate::sampling::{InvalidParam, Sampler, SamplingParams};
use crate::stop::StopFilter;

/// A generation request, already tokenized.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains any of these (excluded from
    /// the output).
    pub stop: Vec<String>,
    /// Scheduling priority (the engine loop; higher first).
    pub priority: i32,
    /// Keep generating past EOS (benchmarks, tests).
    pub ignore_eos: bool,
}

/// Most stop strings a request may carry (OpenAI allows 4; vLLM has no
/// limit): each one steps through every byte of every token on the single
/// engine thread ([`crate::stop`]: O(1) amortised per byte and string).
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

impl Request {
    /// Refuses stop strings beyond [`MAX_STOP_STRINGS`] or [`MAX_STOP_BYTES`],
    /// naming the limit.
    pub fn check_stop(&self) -> Result<(), String> {
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(format!(
                "{} stop strings; the limit is {MAX_STOP_STRINGS}",
                self.stop.len()
            ));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(format!(
                "a stop string of {} bytes; the limit is {MAX_STOP_BYTES} bytes",
                s.len()
            ));
        }
        Ok(())
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// EOS token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client went away (the engine loop only).
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// What one step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The sampled token was EOS: the sequence ends (not counted, not shown).
    Eos,
    /// A generated token and the text that became final with it (possibly
    /// empty); `stopped`: a stop string was hit and the sequence ends.
    Token {
        id: u32,
        text: String,
        stopped: bool,
    },
}

/// The sampled token could not be decoded to text.
#[derive(Debug, thiserror::Error)]
#[error("decoding token {id}: {source}")]
pub struct DecodeError {
    pub id: u32,
    #[source]
    pub source: TokenizerError,
}

/// One sequence's sampler, EOS check, stream decoder and stop filter.
#[derive(Debug)]
pub struct TokenStep<'a> {
    sampler: Sampler,
    eos: &'a [u32],
    ignore_eos: bool,
    decoder: StreamDecoder<'a>,
    filter: StopFilter,
    stopped: bool,
}

impl<'a> TokenStep<'a> {
    pub fn new(tokenizer: &'a Tokenizer, req: &Request) -> Result<Self, InvalidParam> {
        Ok(Self {
            sampler: Sampler::new(req.sampling.clone())?,
            eos: tokenizer.eos_ids(),
            ignore_eos: req.ignore_eos,
            decoder: tokenizer.stream(),
            filter: StopFilter::new(&req.stop),
            stopped: false,
        })
    }

    /// Samples from `logits` (`history`: prompt and generated tokens, for the
    /// repetition penalty) and runs the token through the decoder and filter.
    pub fn next(&mut self, logits: &[f32], history: &[u32]) -> Result<Next, DecodeError> {
        let id = self.sampler.sample(logits, history);
        if !self.ignore_eos && self.eos.contains(&id) {
            return Ok(Next::Eos);
        }
        let delta = self
            .decoder
            .push(id)
            .map_err(|source| DecodeError { id, source })?;
        let text = match delta {
            Some(delta) => {
                let (out, stopped) = self.filter.push(&delta);
                self.stopped |= stopped;
                out
            }
            None => String::new(),
        };
        Ok(Next::Token {
            id,
            text,
            stopped: self.stopped,
        })
    }

    /// The text still held back when the sequence ends (a partial character,
    /// a possible stop-string prefix); nothing after a stop string.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        if self.stopped {
            return Ok(String::new());
        }
        let tail = self.decoder.finish()?.unwrap_or_default();
        Ok(self.filter.push(&tail).0 + &self.filter.flush())
    }
}
