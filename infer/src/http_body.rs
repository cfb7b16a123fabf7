//! An OpenAI completion or chat-completion body → what the engine is asked
//! for, before tokenization. This is where outside bytes first meet the HTTP
//! edge: `api.rs` calls it on every request, and `fuzz/fuzz_targets/http_body.rs`
//! fuzzes it with the engine's own checks after it.

use crate::request::Request;
use crate::sampling::SamplingParams;
use model::tokenizer::ChatMessage;

/// The fields of OpenAI's `/v1/completions` and `/v1/chat/completions`
/// bodies that this server reads (others are ignored, as OpenAI's are).
#[derive(Debug, serde::Deserialize)]
pub struct CompletionBody {
    prompt: Option<serde_json::Value>,
    messages: Option<Vec<ChatMessage>>,
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<serde_json::Value>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
}

/// The prompt, still text.
#[derive(Debug)]
pub enum PromptInput {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// What a body asks for.
#[derive(Debug)]
pub struct BodyRequest {
    pub prompt: PromptInput,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// OpenAI's default when the body sets no max_tokens.
pub const DEFAULT_MAX_TOKENS: usize = 256;

impl BodyRequest {
    /// Reads a body; the error is the 400's message.
    pub fn from_body(b: CompletionBody, chat: bool) -> Result<Self, String> {
        if b.n.is_some_and(|n| n != 1) {
            return Err("only n=1 is supported".into());
        }
        let prompt = if chat {
            match b.messages {
                Some(m) if m.is_empty() => return Err("messages must not be empty".into()),
                Some(m) => PromptInput::Chat(m),
                None => return Err("'messages' is required".into()),
            }
        } else {
            match b.prompt {
                Some(serde_json::Value::String(p)) => PromptInput::Text(p),
                Some(serde_json::Value::Array(mut a)) if a.len() == 1 && a[0].is_string() => {
                    match a.pop() {
                        Some(serde_json::Value::String(p)) => PromptInput::Text(p),
                        _ => return Err("'prompt' must be a string".into()),
                    }
                }
                _ => return Err("'prompt' must be a string (one prompt per request)".into()),
            }
        };
        let stop = match b.stop {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::String(s)) => vec![s],
            Some(serde_json::Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            Some(_) => return Err("'stop' must be a string or a list of strings".into()),
        };
        Ok(BodyRequest {
            prompt,
            max_tokens: b
                .max_completion_tokens
                .or(b.max_tokens)
                .unwrap_or(DEFAULT_MAX_TOKENS),
            // OpenAI's defaults: temperature 1.0, no top-p/top-k/min-p cut.
            sampling: crate::api::sampling(
                Some(b.temperature.unwrap_or(1.0)),
                b.top_p.or(Some(1.0)),
                b.top_k.or(Some(0)),
                b.min_p.or(Some(0.0)),
                b.repetition_penalty,
                b.seed,
            ),
            stop,
            stream: b.stream,
        })
    }

    /// The engine request for `prompt` (the tokenized prompt).
    pub fn into_request(self, prompt: Vec<u32>) -> Request {
        Request {
            prompt,
            max_tokens: self.max_tokens,
            sampling: self.sampling,
            stop: self.stop,
            priority: 0,
            ignore_eos: false,
        }
    }
}

/// Parses raw body bytes and applies every check that needs no model: the
/// body's shape, then the engine's own stop-string and sampling checks and
/// the checked prompt + max_tokens sum against `context` (what
/// `ServingHandle::submit` does). For the fuzzer and tests.
pub fn check_bytes(bytes: &[u8], chat: bool, context: usize) -> Result<Request, String> {
    let body: CompletionBody =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed request body: {e}"))?;
    let b = BodyRequest::from_body(body, chat)?;
    // One token per byte stands in for the tokenizer here.
    let n_prompt = match &b.prompt {
        PromptInput::Text(t) => t.len(),
        PromptInput::Chat(m) => m.iter().map(|m| m.content.len()).sum(),
    };
    let req = b.into_request(vec![1; n_prompt.clamp(1, 1 << 16)]);
    req.check_stop()?;
    req.sampling.validate().map_err(|e| e.to_string())?;
    match req.prompt.len().checked_add(req.max_tokens) {
        Some(total) if total <= context => Ok(req),
        _ => Err(format!("max_tokens {} beyond the context", req.max_tokens)),
    }
}

#[cfg(test)]
mod tests {
    use super::check_bytes;

    #[test]
    fn bodies_parse_and_hostile_ones_are_refused_with_a_reason() {
        let ok = check_bytes(br#"{"prompt":"hi","max_tokens":4,"stop":["a"]}"#, false, 64)
            .expect("valid");
        assert_eq!(ok.max_tokens, 4);
        assert_eq!(ok.stop, vec!["a".to_string()]);
        let chat = br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
        assert!(check_bytes(chat, true, 64).is_ok());
        for (body, why) in [
            (
                &br#"{"prompt":"hi","max_tokens":18446744073709551615}"#[..],
                "context",
            ),
            (br#"{"prompt":"hi","n":2}"#, "n=1"),
            (br#"{"prompt":["a","b"]}"#, "one prompt"),
            (br#"{"prompt":"hi","stop":3}"#, "'stop'"),
            (
                br#"{"prompt":"hi","max_tokens":2,"temperature":-1}"#,
                "temperature",
            ),
            (br#"{"messages":[]}"#, "empty"),
            (br#"{"prompt":"#, "malformed"),
        ] {
            let e = check_bytes(body, body.starts_with(b"{\"messages"), 64)
                .expect_err(std::str::from_utf8(body).unwrap_or("?"));
            assert!(e.contains(why), "{e}");
        }
    }
}
