//! The edges: `mlstack.infer.v1.Inference` over gRPC (tonic, with health and
//! reflection) and an OpenAI-compatible HTTP API (axum: `/v1/completions`,
//! `/v1/chat/completions`, `/v1/models`, with SSE streaming). Both turn
//! requests into [`Request`]s for the [`ServingHandle`] and map its
//! errors to status codes: invalid input → INVALID_ARGUMENT / 400, a full
//! waiting queue → RESOURCE_EXHAUSTED / 429.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use proto::http_server::HttpServer;
use proto::infer::v1 as pb;
use proto::server::GrpcServer;

use crate::auth::{ApiKeys, Caller};
use crate::engine_loop::{Admission, Event, Finish, Request, ServingHandle, SubmitError, Usage};
use crate::http_body::{self, BodyRequest, PromptInput};
use crate::sampling::SamplingParams;
use model::tokenizer::ChatMessage;

/// Errors starting the servers.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Proto(#[from] proto::Error),
    #[error(transparent)]
    Tls(#[from] proto::tls::TlsError),
}

/// Sampling settings from a request, with mlstack's defaults for the unset
/// ones (greedy unless a temperature is given).
pub(crate) fn sampling(
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    rep: Option<f32>,
    seed: Option<u64>,
) -> SamplingParams {
    let d = SamplingParams::default();
    SamplingParams {
        temperature: temperature.unwrap_or(d.temperature),
        top_p: top_p.unwrap_or(d.top_p),
        top_k: top_k.map_or(d.top_k, |k| k as usize),
        min_p: min_p.unwrap_or(d.min_p),
        repetition_penalty: rep.unwrap_or(d.repetition_penalty),
        seed: seed.unwrap_or(d.seed),
        ..d
    }
}

/// Takes a place in the queue, then tokenizes plain text (special tokens as
/// text) or a chat (template rendered, only its own markers special).
///
/// Tokenizing is the costly part of admitting a request, and a client
/// chooses its size, so it comes after the queue limit (a full queue refuses
/// before any tokenizing) and after a bound on the text: a prompt longer than
/// `context_length` tokens of the vocabulary's longest token cannot fit,
/// whatever it tokenizes to. So at most `--max-waiting` prompts of bounded
/// size are ever being tokenized at once, on blocking threads, not on the
/// async workers that serve every other connection.
async fn prompt_ids(
    h: &ServingHandle,
    input: PromptInput,
) -> Result<(Admission, Vec<u32>), SubmitError> {
    let admission = h.admit()?;
    let text_bytes = match &input {
        PromptInput::Chat(messages) => {
            if messages.is_empty() {
                return Err(SubmitError::Invalid("messages must not be empty".into()));
            }
            messages.iter().fold(0usize, |n, m| {
                n.saturating_add(m.content.len())
                    .saturating_add(m.role.len())
            })
        }
        PromptInput::Text(p) => p.len(),
    };
    let limit = h.max_prompt_bytes();
    if text_bytes > limit {
        return Err(SubmitError::Invalid(format!(
            "prompt of {text_bytes} bytes cannot fit in the context of {} tokens (at most {limit} bytes)",
            h.engine.model.config.context_length
        )));
    }
    let engine = h.engine.clone();
    // The place travels with the work: a client that hangs up mid-tokenize
    // drops this future, not the blocking task, so the place stays taken
    // until the tokenizer is done with it.
    let (admission, ids) = tokio::task::spawn_blocking(move || {
        let tok = &engine.tokenizer;
        let ids = match &input {
            PromptInput::Chat(messages) => tok.encode_chat(messages, true),
            PromptInput::Text(p) => tok.encode(p, false),
        };
        (admission, ids)
    })
    .await
    .map_err(|e| SubmitError::Internal(format!("tokenizing: {e}")))?;
    let ids = ids.map_err(|e| SubmitError::Invalid(e.to_string()))?;
    Ok((admission, ids))
}

fn status(e: SubmitError) -> tonic::Status {
    match e {
        SubmitError::QueueFull { .. } => tonic::Status::resource_exhausted(e.to_string()),
        SubmitError::Invalid(m) => tonic::Status::invalid_argument(m),
        SubmitError::Internal(m) => tonic::Status::internal(m),
        SubmitError::Stopped => tonic::Status::unavailable(e.to_string()),
    }
}

fn pb_usage(u: &Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: u.prompt_tokens as u32,
        completion_tokens: u.completion_tokens as u32,
        queue_ms: u.queue_ms,
        time_to_first_token_ms: u.ttft_ms,
        total_ms: u.total_ms,
    }
}

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct InferenceService {
    handle: ServingHandle,
    model_name: String,
}

/// The `grpc-timeout` header as a duration. gRPC's wire format is at most 8
/// digits and a unit (H, M, S, m, u, n); anything else is refused rather than
/// parsed, and the arithmetic is checked, so a hostile header cannot overflow.
fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, tonic::Status> {
    let Some(raw) = meta.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || {
        tonic::Status::invalid_argument(format!(
            "grpc-timeout {raw:?} is not a gRPC timeout (1 to 8 digits and a unit H, M, S, m, u or n)"
        ))
    };
    let v = raw.to_str().map_err(|_| bad())?;
    let (num, unit) = v.split_at(v.len().checked_sub(1).ok_or_else(bad)?);
    if num.is_empty() || num.len() > 8 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => n.checked_mul(3600).map(Duration::from_secs),
        "M" => n.checked_mul(60).map(Duration::from_secs),
        "S" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_millis(n)),
        "u" => Some(Duration::from_micros(n)),
        "n" => Some(Duration::from_nanos(n)),
        _ => None,
    };
    d.map(Some).ok_or_else(bad)
}

type GenStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::inference_server::Inference for InferenceService {
    type GenerateStream = GenStream;

    async fn generate(
        &self,
        request: tonic::Request<pb::GenerateRequest>,
    ) -> Result<tonic::Response<GenStream>, tonic::Status> {
        // A deadline too far to represent is no deadline (checked, not a panic).
        let deadline = grpc_timeout(request.metadata())?
            .and_then(|d| tokio::time::Instant::now().checked_add(d));
        // Set by GrpcAuth when API keys are configured.
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        if r.priority != 0
            && let Some(c) = caller.as_ref().filter(|c| !c.may_set_priority)
        {
            return Err(tonic::Status::permission_denied(format!(
                "API key {:?} may not set the request priority (mark it 'priority' in the key file)",
                c.name
            )));
        }
        let span = tracing::info_span!(
            "infer.request",
            gen_ai.system = "mlstack",
            gen_ai.operation.name = if matches!(r.input, Some(pb::generate_request::Input::Chat(_))) { "chat" } else { "text_completion" },
            gen_ai.request.model = %self.model_name,
            gen_ai.request.max_tokens = r.max_tokens,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
        );
        let s = r.sampling.unwrap_or_default();
        let opt = |v: f32| (v != 0.0).then_some(v);
        let params = sampling(
            Some(s.temperature),
            opt(s.top_p),
            (s.top_k != 0).then_some(s.top_k),
            opt(s.min_p),
            opt(s.repetition_penalty),
            s.seed,
        );
        let input = match r.input {
            Some(pb::generate_request::Input::Prompt(p)) => PromptInput::Text(p),
            Some(pb::generate_request::Input::Chat(c)) => PromptInput::Chat(
                c.messages
                    .into_iter()
                    .map(|m| ChatMessage {
                        role: m.role,
                        content: m.content,
                    })
                    .collect(),
            ),
            None => {
                return Err(status(SubmitError::Invalid(
                    "a prompt or chat messages are required".into(),
                )));
            }
        };
        let (admission, prompt) = prompt_ids(&self.handle, input).await.map_err(status)?;
        let req = Request {
            prompt,
            max_tokens: if r.max_tokens == 0 {
                256
            } else {
                r.max_tokens as usize
            },
            sampling: params,
            stop: r.stop,
            priority: r.priority,
            ignore_eos: false,
        };
        let (_, rx) = span
            .in_scope(|| self.handle.submit_admitted(admission, req))
            .map_err(status)?;
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let stream = events.map(|e| match e {
            Event::Token { id, text } => Ok(pb::GenerateResponse {
                text_delta: text,
                token_ids: vec![id],
                ..Default::default()
            }),
            Event::Finished {
                reason,
                text,
                usage,
            } => Ok(pb::GenerateResponse {
                text_delta: text,
                token_ids: vec![],
                finish_reason: match reason {
                    Finish::Stop => pb::FinishReason::Stop,
                    Finish::Length => pb::FinishReason::Length,
                    Finish::Cancelled => pb::FinishReason::Cancelled,
                } as i32,
                usage: Some(pb_usage(&usage)),
            }),
            Event::Failed(m) => Err(tonic::Status::internal(m)),
        });
        // Deadline: end the stream with DEADLINE_EXCEEDED; dropping the event
        // receiver cancels the sequence in the engine within one step.
        let stream: GenStream = match deadline {
            Some(at) => Box::pin(async_stream_with_deadline(stream, at)),
            None => Box::pin(stream),
        };
        Ok(tonic::Response::new(stream))
    }

    async fn tokenize(
        &self,
        request: tonic::Request<pb::TokenizeRequest>,
    ) -> Result<tonic::Response<pb::TokenizeResponse>, tonic::Status> {
        let r = request.into_inner();
        let ids = self
            .handle
            .engine
            .tokenizer
            .encode(&r.text, r.add_special_tokens)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(pb::TokenizeResponse {
            token_ids: ids,
        }))
    }

    async fn model_info(
        &self,
        _request: tonic::Request<pb::ModelInfoRequest>,
    ) -> Result<tonic::Response<pb::ModelInfoResponse>, tonic::Status> {
        let c = &self.handle.engine.model.config;
        let cfg = &self.handle.config;
        Ok(tonic::Response::new(pb::ModelInfoResponse {
            name: self.model_name.clone(),
            architecture: "llama".into(),
            context_length: c.context_length as u32,
            vocab_size: c.vocab_size as u32,
            n_layers: c.n_layers as u32,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            hidden_size: c.d_model as u32,
            quantization: format!("{:?}", self.handle.engine.model.weight_type()),
            kv_cache_bytes: (self.handle.stats().blocks_total
                * crate::paged::PagedKvCache::block_bytes(c, cfg.block_tokens))
                as u64,
            kv_block_size_tokens: cfg.block_tokens as u32,
        }))
    }
}

/// Yields `stream`'s items until `at`, then one DEADLINE_EXCEEDED.
fn async_stream_with_deadline(
    stream: impl Stream<Item = Result<pb::GenerateResponse, tonic::Status>> + Send + 'static,
    at: tokio::time::Instant,
) -> impl Stream<Item = Result<pb::GenerateResponse, tonic::Status>> + Send {
    let sleep = Box::pin(tokio::time::sleep_until(at));
    futures::stream::unfold(
        (Box::pin(stream), sleep, false),
        |(mut s, mut sleep, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                item = s.next() => item.map(|i| (i, (s, sleep, false))),
                () = &mut sleep => Some((
                    Err(tonic::Status::deadline_exceeded("the request's deadline passed during generation")),
                    (s, sleep, true),
                )),
            }
        },
    )
}

// ---------------------------------------------------------------- HTTP --

/// OpenAI's error shape.
fn http_error(code: StatusCode, kind: &str, message: String) -> Response {
    (
        code,
        Json(serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

fn submit_error(e: SubmitError) -> Response {
    match e {
        SubmitError::QueueFull { .. } => http_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            e.to_string(),
        ),
        SubmitError::Invalid(m) => http_error(StatusCode::BAD_REQUEST, "invalid_request_error", m),
        SubmitError::Internal(m) => {
            http_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m)
        }
        SubmitError::Stopped => http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        ),
    }
}

#[derive(Clone, Debug)]
struct HttpState {
    handle: ServingHandle,
    model_name: String,
}

async fn completions(
    state: State<HttpState>,
    body: Result<Json<http_body::CompletionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    handle_completion(state, body, false).await
}

async fn chat_completions(
    state: State<HttpState>,
    body: Result<Json<http_body::CompletionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    handle_completion(state, body, true).await
}

async fn handle_completion(
    State(st): State<HttpState>,
    body: Result<Json<http_body::CompletionBody>, axum::extract::rejection::JsonRejection>,
    chat: bool,
) -> Response {
    let Json(b) = match body {
        Ok(b) => b,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("malformed request body: {e}"),
            );
        }
    };
    let mut b = match BodyRequest::from_body(b, chat) {
        Ok(b) => b,
        Err(m) => return http_error(StatusCode::BAD_REQUEST, "invalid_request_error", m),
    };
    let input = std::mem::replace(&mut b.prompt, PromptInput::Text(String::new()));
    let (admission, prompt) = match prompt_ids(&st.handle, input).await {
        Ok(p) => p,
        Err(e) => return submit_error(e),
    };
    let stream = b.stream;
    let req = b.into_request(prompt);
    let span = tracing::info_span!(
        "infer.request",
        gen_ai.system = "mlstack",
        gen_ai.operation.name = if chat { "chat" } else { "text_completion" },
        gen_ai.request.model = %st.model_name,
        gen_ai.request.max_tokens = req.max_tokens,
        gen_ai.request.temperature = req.sampling.temperature,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
    );
    let (id, mut rx) = match span.in_scope(|| st.handle.submit_admitted(admission, req)) {
        Ok(x) => x,
        Err(e) => return submit_error(e),
    };
    let rid = format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" });
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let model = st.model_name.clone();
    let usage_json = |u: &Usage| {
        serde_json::json!({"prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens})
    };
    if !stream {
        let mut text = String::new();
        while let Some(e) = rx.recv().await {
            match e {
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::Finished {
                    reason,
                    text: t,
                    usage,
                } => {
                    text.push_str(&t);
                    let choice = if chat {
                        serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": Finish::as_str(reason)})
                    } else {
                        serde_json::json!({"index": 0, "text": text, "finish_reason": Finish::as_str(reason),
                                           "logprobs": null})
                    };
                    return Json(
                        serde_json::json!({"id": rid, "object": object, "created": created,
                        "model": model, "choices": [choice], "usage": usage_json(&usage)}),
                    )
                    .into_response();
                }
                Event::Failed(m) => {
                    return http_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m);
                }
            }
        }
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the engine dropped the request".into(),
        );
    }
    // SSE: one chunk per token, a final chunk with finish_reason, then [DONE].
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let events = async_stream_sse(rx, move |e| {
        let delta = |t: &str, finish: Option<&str>| {
            let choice = if chat {
                serde_json::json!({"index": 0, "delta": {"content": t}, "finish_reason": finish})
            } else {
                serde_json::json!({"index": 0, "text": t, "finish_reason": finish, "logprobs": null})
            };
            serde_json::json!({"id": rid, "object": chunk_object, "created": created, "model": model,
                               "choices": [choice]})
        };
        match e {
            Event::Token { text, .. } => Some(delta(&text, None)),
            Event::Finished {
                reason,
                text,
                usage,
            } => {
                let mut v = delta(&text, Some(Finish::as_str(reason)));
                v["usage"] = usage_json(&usage);
                Some(v)
            }
            Event::Failed(m) => {
                Some(serde_json::json!({"error": {"message": m, "type": "server_error"}}))
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Maps engine events to SSE data lines and ends with `data: [DONE]`.
fn async_stream_sse(
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    f: impl Fn(Event) -> Option<serde_json::Value> + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send {
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .filter_map(move |e| {
            let v = f(e);
            async move { v.map(|v| Ok(SseEvent::default().data(v.to_string()))) }
        })
        .chain(futures::stream::once(async {
            Ok(SseEvent::default().data("[DONE]"))
        }))
}

/// The OpenAPI 3 document of this HTTP API (`openapi.json` beside this
/// file; `tests/tests/infer_openapi.rs` runs schemathesis against it).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn models(State(st): State<HttpState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"object": "list", "data": [
        {"id": st.model_name, "object": "model", "created": 0, "owned_by": "mlstack"}]}))
}

/// Checks `authorization` metadata against the API keys (when configured)
/// before a call reaches the service, and hands the [`Caller`] to it.
#[derive(Clone, Debug)]
struct GrpcAuth(Option<Arc<ApiKeys>>);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(keys) = &self.0 else {
            return Ok(req);
        };
        let caller = keys
            .check(req.metadata().get("authorization").map(|v| v.as_bytes()))
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The HTTP side of [`GrpcAuth`]: 401 with OpenAI's error shape and a
/// `WWW-Authenticate: Bearer` challenge.
async fn http_auth(
    State(keys): State<Arc<ApiKeys>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match keys.check(presented) {
        Ok(_) => next.run(request).await,
        Err(e) => {
            let mut r = http_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                e.to_string(),
            );
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// The running servers.
#[derive(Debug)]
pub struct Servers {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    grpc: GrpcServer,
    http: HttpServer,
}

impl Servers {
    /// Stops accepting, lets in-flight responses finish, and waits.
    pub async fn stop(self) {
        // Both drain at once: neither port's in-flight calls wait on the
        // other's.
        let (_, grpc) = tokio::join!(self.http.stop(), self.grpc.stop());
        if let Err(e) = grpc {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }
}

/// Binds and starts the gRPC and HTTP servers on `handle`. With `keys`,
/// every Inference call and every `/v1/*` request needs one of them (gRPC
/// health and reflection stay open, as probes need them). With `tls`, both
/// ports speak TLS only (gRPC over TLS, HTTPS), with the same certificate.
pub async fn start(
    handle: ServingHandle,
    model_name: String,
    grpc: SocketAddr,
    http: SocketAddr,
    keys: Option<Arc<ApiKeys>>,
    tls: Option<&proto::tls::ServerTls>,
) -> Result<Servers, ServerError> {
    // A bad certificate or key fails here, naming itself, before any port
    // is bound; the HTTP port is bound before gRPC starts, so a failure
    // there leaves nothing running.
    let http_port = HttpServer::bind(http, tls).await.map_err(|e| match e {
        proto::Error::BindHttp { addr, source } => ServerError::Bind {
            what: "HTTP",
            addr,
            source,
        },
        other => ServerError::Proto(other),
    })?;
    let http_addr = http_port.addr;

    let svc = pb::inference_server::InferenceServer::with_interceptor(
        InferenceService {
            handle: handle.clone(),
            model_name: model_name.clone(),
        },
        GrpcAuth(keys.clone()),
    );
    let grpc = GrpcServer::start_tls(grpc, "infer", None, tls, |routes| {
        routes.add_service(svc);
    })
    .await
    .map_err(|e| match e {
        proto::Error::Bind { addr, source } => ServerError::Bind {
            what: "gRPC",
            addr,
            source,
        },
        other => ServerError::Proto(other),
    })?;
    grpc.health
        .set_serving::<pb::inference_server::InferenceServer<InferenceService>>()
        .await;
    let grpc_addr = grpc.addr;

    let app = axum::Router::new()
        .route("/v1/completions", axum::routing::post(completions))
        .route(
            "/v1/chat/completions",
            axum::routing::post(chat_completions),
        )
        .route("/v1/models", axum::routing::get(models))
        .with_state(HttpState { handle, model_name });
    let app = match keys {
        Some(k) => app.layer(axum::middleware::from_fn_with_state(k, http_auth)),
        None => app,
    }
    // The API's description is public, as vLLM's is: it holds no data.
    .route("/openapi.json", axum::routing::get(openapi))
    // Outermost: each request (refused ones too) in an `http.server` span
    // parented to the client's `traceparent`, as gRPC requests are.
    .layer(axum::middleware::from_fn(observe::http_trace::server));
    let http = http_port.serve(app, "OpenAI API");
    let scheme = if tls.is_some() { "tls" } else { "plaintext" };
    tracing::info!(%grpc_addr, %http_addr, scheme, "inference server listening");
    Ok(Servers {
        grpc_addr,
        http_addr,
        grpc,
        http,
    })
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    fn parse(v: &str) -> Result<Option<Duration>, tonic::Code> {
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert("grpc-timeout", v.parse().expect("ascii"));
        grpc_timeout(&meta).map_err(|s| s.code())
    }

    #[test]
    fn grpc_timeouts_parse_and_hostile_ones_are_refused_without_overflow() {
        assert_eq!(parse("300m"), Ok(Some(Duration::from_millis(300))));
        assert_eq!(parse("2S"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(
            parse("99999999H"),
            Ok(Some(Duration::from_secs(99_999_999 * 3600)))
        );
        for hostile in [
            "18446744073709551615S",
            "999999999H",
            "",
            "S",
            "12",
            "1x",
            "-1S",
            "1.5S",
        ] {
            assert_eq!(
                parse(hostile),
                Err(tonic::Code::InvalidArgument),
                "{hostile:?}"
            );
        }
        assert_eq!(
            grpc_timeout(&tonic::metadata::MetadataMap::new()).ok(),
            Some(None)
        );
    }
}
