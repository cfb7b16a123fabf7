//! The engine loop: one thread runs the model step after step for every
//! request in flight, under the [`Scheduler`]; gRPC and HTTP handlers
//! ([`crate::api`]) submit requests and read their token streams through
//! channels.
//!
//! ```text
//!  handlers (tokio) ──submit──▶ [waiting count check] ──cmd channel──▶ engine thread
//!        ▲                                                              │ loop:
//!        │   Event::Delta / Finished / Failed (per-request channel)     │  intake, drop cancelled
//!        └──────────────────────────────────────────────────────────────│  schedule()
//!                                                                       │  forward_batch (rayon)
//!                                                                       │  sample, stream, finish
//! ```
//!
//! Why one engine thread: the model step is the unit of work and every
//! running sequence is in it; the parallelism is *inside* the step (rayon
//! over matrix rows and attention heads, the step itself run on a pool
//! thread by `forward_batch`, so this thread sleeps once per step rather
//! than once per parallel region). Handlers never touch the model.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::generate::Engine;
use crate::model::{Logits, SeqInput};
use crate::paged::PagedKvCache;
pub use crate::request::{Finish, Request};
use crate::request::{Next, TokenStep};
use crate::scheduler::{Scheduler, SchedulerConfig, SeqId};

/// Server-side limits.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// KV cache budget; the block pool is as many blocks as fit.
    pub kv_cache_bytes: usize,
    /// Tokens per KV block.
    pub block_tokens: usize,
    pub max_batched_tokens: usize,
    pub max_running_seqs: usize,
    /// Requests allowed to wait; more are refused (RESOURCE_EXHAUSTED / 429).
    pub max_waiting: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            kv_cache_bytes: 256 << 20,
            block_tokens: 16,
            max_batched_tokens: 512,
            max_running_seqs: 64,
            max_waiting: 256,
        }
    }
}

/// Counts and timings reported with the last event.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
    pub preemptions: u32,
}

/// What a request's stream carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One generated token and the text it completed (may be empty while a
    /// UTF-8 character or a possible stop string is incomplete).
    Token {
        id: u32,
        text: String,
    },
    Finished {
        reason: Finish,
        text: String,
        usage: Usage,
    },
    Failed(String),
}

/// Why a request was refused at submission.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("server overloaded: {waiting} requests waiting (limit {limit}); retry later")]
    QueueFull { waiting: usize, limit: usize },
    #[error("{0}")]
    Invalid(String),
    /// A fault of the server, not of the request (a tokenizer thread died).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the serving engine has stopped")]
    Stopped,
}

enum Command {
    Add {
        id: SeqId,
        req: Request,
        tx: tokio::sync::mpsc::UnboundedSender<Event>,
        span: tracing::Span,
        submitted: Instant,
    },
    Shutdown,
}

/// Prometheus metrics of the serving engine (`mlstack_infer_*`).
#[derive(Clone, Debug)]
pub struct ServeMetrics {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub waiting: IntGauge,
    pub running: IntGauge,
    pub blocks_used: IntGauge,
    pub blocks_free: IntGauge,
    pub kv_usage_ratio: prometheus::Gauge,
    pub kv_utilization: prometheus::Gauge,
    pub prefix_queries: IntCounter,
    pub prefix_hits: IntCounter,
    pub prefix_hit_ratio: prometheus::Gauge,
    pub preemptions: IntCounter,
    pub prompt_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub batch_tokens: Histogram,
    pub batch_seqs: Histogram,
    pub requests: IntCounterVec,
}

impl ServeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<ServeMetrics, prometheus::Error> {
        let lat = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let secs = vec![
            0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
        ];
        let m = ServeMetrics {
            ttft: lat(
                "mlstack_infer_time_to_first_token_seconds",
                "Submission to first generated token.",
                secs.clone(),
            )?,
            itl: lat(
                "mlstack_infer_inter_token_latency_seconds",
                "Time between consecutive tokens of one request.",
                vec![0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
            )?,
            e2e: lat(
                "mlstack_infer_request_duration_seconds",
                "Submission to the last token.",
                secs,
            )?,
            waiting: IntGauge::new("mlstack_infer_requests_waiting", "Requests waiting.")?,
            running: IntGauge::new("mlstack_infer_requests_running", "Requests running.")?,
            blocks_used: IntGauge::new("mlstack_infer_kv_blocks_used", "KV blocks in use.")?,
            blocks_free: IntGauge::new(
                "mlstack_infer_kv_blocks_free",
                "KV blocks free or parked in the prefix cache.",
            )?,
            kv_usage_ratio: prometheus::Gauge::new(
                "mlstack_infer_kv_usage_ratio",
                "KV blocks in use / blocks in the pool.",
            )?,
            kv_utilization: prometheus::Gauge::new(
                "mlstack_infer_kv_utilization_ratio",
                "Token slots holding keys / slots in allocated blocks.",
            )?,
            prefix_queries: IntCounter::new(
                "mlstack_infer_prefix_cache_queries_total",
                "Prompt blocks looked up in the prefix cache.",
            )?,
            prefix_hits: IntCounter::new(
                "mlstack_infer_prefix_cache_hits_total",
                "Prompt blocks found in the prefix cache.",
            )?,
            prefix_hit_ratio: prometheus::Gauge::new(
                "mlstack_infer_prefix_cache_hit_ratio",
                "Prefix-cache hits / queries since start.",
            )?,
            preemptions: IntCounter::new(
                "mlstack_infer_preemptions_total",
                "Sequences preempted (blocks freed, recomputed later).",
            )?,
            prompt_tokens: IntCounter::new(
                "mlstack_infer_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
            )?,
            generated_tokens: IntCounter::new(
                "mlstack_infer_generation_tokens_total",
                "Tokens generated.",
            )?,
            batch_tokens: lat(
                "mlstack_infer_batch_tokens",
                "Tokens per model step.",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            )?,
            batch_seqs: lat(
                "mlstack_infer_batch_sequences",
                "Sequences per model step.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            )?,
            requests: IntCounterVec::new(
                Opts::new("mlstack_infer_requests_total", "Requests by outcome."),
                &["outcome"],
            )?,
        };
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.ttft.clone()),
            Box::new(m.itl.clone()),
            Box::new(m.e2e.clone()),
            Box::new(m.waiting.clone()),
            Box::new(m.running.clone()),
            Box::new(m.blocks_used.clone()),
            Box::new(m.blocks_free.clone()),
            Box::new(m.kv_usage_ratio.clone()),
            Box::new(m.kv_utilization.clone()),
            Box::new(m.prefix_queries.clone()),
            Box::new(m.prefix_hits.clone()),
            Box::new(m.prefix_hit_ratio.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generated_tokens.clone()),
            Box::new(m.batch_tokens.clone()),
            Box::new(m.batch_seqs.clone()),
            Box::new(m.requests.clone()),
        ];
        for c in all {
            registry.register(c)?;
        }
        Ok(m)
    }
}

/// A snapshot of the engine's state (admin/tests).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub kv_utilization: f64,
    pub steps: u64,
}

/// A place in the engine's queue, taken before the costly part of a request
/// (tokenization); dropping it unused gives the place back.
#[derive(Debug)]
pub struct Admission {
    /// `None` once the engine owns the place.
    pending: Option<Arc<AtomicUsize>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The handlers' side: submit requests, read stats. Cheap to clone.
#[derive(Clone)]
pub struct ServingHandle {
    tx: mpsc::Sender<Command>,
    pending: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
    pub engine: Arc<Engine>,
    pub config: ServeConfig,
    pub metrics: ServeMetrics,
    stats: Arc<std::sync::Mutex<EngineStats>>,
    capacity_tokens: usize,
    /// The longest prompt text worth tokenizing: twice what could fit the
    /// context (context length × the vocabulary's longest token in bytes);
    /// the factor 2 leaves room for a normalizer that shrinks text (NFKC
    /// composition) before tokens are counted.
    max_prompt_bytes: usize,
}

impl std::fmt::Debug for ServingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingHandle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServingHandle {
    /// Takes a place in the queue, or refuses at once when it is full
    /// (`max_waiting`). The API takes it *before* tokenizing a prompt or
    /// rendering a chat template, so that work counts against the same limit
    /// as the queue: a flood of large prompts is refused, not tokenized.
    pub fn admit(&self) -> Result<Admission, SubmitError> {
        // Reserve first so concurrent admissions cannot overshoot the limit.
        let waiting = self.pending.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.config.max_waiting {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.metrics.requests.with_label_values(&["rejected"]).inc();
            return Err(SubmitError::QueueFull {
                waiting,
                limit: self.config.max_waiting,
            });
        }
        Ok(Admission {
            pending: Some(self.pending.clone()),
        })
    }

    /// Validates and queues a request; its events arrive on the receiver.
    /// Dropping the receiver cancels the request within one step.
    pub fn submit(
        &self,
        req: Request,
    ) -> Result<(SeqId, tokio::sync::mpsc::UnboundedReceiver<Event>), SubmitError> {
        self.submit_admitted(self.admit()?, req)
    }

    /// [`ServingHandle::submit`] with a place already taken
    /// ([`ServingHandle::admit`]); a refused request gives it back.
    pub fn submit_admitted(
        &self,
        mut admission: Admission,
        req: Request,
    ) -> Result<(SeqId, tokio::sync::mpsc::UnboundedReceiver<Event>), SubmitError> {
        let context = self.engine.model.config.context_length;
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid(
                "empty prompt: at least one token is needed".into(),
            ));
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::Invalid("max_tokens must be at least 1".into()));
        }
        req.check_stop().map_err(SubmitError::Invalid)?;
        // Checked: max_tokens is the client's number (usize::MAX over HTTP).
        let Some(total) = req.prompt.len().checked_add(req.max_tokens) else {
            return Err(SubmitError::Invalid(format!(
                "max_tokens {} is beyond the context length of {context} tokens",
                req.max_tokens
            )));
        };
        if total > context {
            return Err(SubmitError::Invalid(format!(
                "prompt of {} tokens + max_tokens {} = {total} exceeds the context length of {context} tokens",
                req.prompt.len(),
                req.max_tokens
            )));
        }
        if total > self.capacity_tokens {
            return Err(SubmitError::Invalid(format!(
                "prompt of {} tokens + max_tokens {} = {total} exceeds the KV cache of {} tokens (--kv-cache-bytes)",
                req.prompt.len(),
                req.max_tokens,
                self.capacity_tokens
            )));
        }
        if let Some(&id) = req
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.engine.model.config.vocab_size)
        {
            return Err(SubmitError::Invalid(format!(
                "token id {id} is outside the vocabulary of {}",
                self.engine.model.config.vocab_size
            )));
        }
        req.sampling
            .validate()
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        // From here the engine owns the place: it gives it back when the
        // request ends (or below, if the engine is gone).
        admission.pending = None;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.tx
            .send(Command::Add {
                id,
                req,
                tx,
                span: tracing::Span::current(),
                submitted: Instant::now(),
            })
            .map_err(|_| {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                SubmitError::Stopped
            })?;
        Ok((id, rx))
    }

    pub fn stats(&self) -> EngineStats {
        *self.stats.lock().expect("stats lock")
    }

    /// Requests holding a place: being tokenized, waiting, or running
    /// before their first step.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// The longest prompt text (bytes) worth tokenizing.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_prompt_bytes
    }

    /// Token slots in the whole KV pool.
    pub fn capacity_tokens(&self) -> usize {
        self.capacity_tokens
    }

    /// Asks the engine thread to stop after the current step.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// Per-request state the engine keeps beside the scheduler's.
struct Live<'a> {
    req: Request,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    step: TokenStep<'a>,
    text: String,
    generated: usize,
    submitted: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    span: tracing::Span,
    queue_span: Option<tracing::span::EnteredSpan>,
    phase_span: Option<tracing::Span>,
}

/// Starts the engine thread.
pub fn start(
    engine: Arc<Engine>,
    config: ServeConfig,
    metrics: ServeMetrics,
) -> (ServingHandle, std::thread::JoinHandle<()>) {
    let cache = PagedKvCache::with_budget(
        &engine.model.config,
        config.block_tokens,
        config.kv_cache_bytes,
    );
    let capacity_tokens = cache.n_blocks() * config.block_tokens;
    let (tx, rx) = mpsc::channel();
    let handle = ServingHandle {
        tx,
        pending: Arc::new(AtomicUsize::new(0)),
        next_id: Arc::new(AtomicU64::new(1)),
        engine: engine.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        stats: Arc::new(std::sync::Mutex::new(EngineStats {
            blocks_total: cache.n_blocks(),
            ..EngineStats::default()
        })),
        capacity_tokens,
        max_prompt_bytes: engine
            .model
            .config
            .context_length
            .saturating_mul(engine.tokenizer.max_token_bytes())
            .saturating_mul(2),
    };
    let scheduler = Scheduler::new(
        SchedulerConfig {
            max_batched_tokens: config.max_batched_tokens,
            max_running_seqs: config.max_running_seqs,
        },
        cache,
    );
    let pending = handle.pending.clone();
    let stats = handle.stats.clone();
    let thread = std::thread::Builder::new()
        .name("infer-engine".into())
        .spawn(move || run(&engine, scheduler, rx, pending, metrics, stats))
        .expect("spawning the engine thread");
    (handle, thread)
}

/// The engine loop.
fn run(
    engine: &Engine,
    mut sched: Scheduler,
    rx: mpsc::Receiver<Command>,
    pending: Arc<AtomicUsize>,
    m: ServeMetrics,
    stats: Arc<std::sync::Mutex<EngineStats>>,
) {
    let tok = &engine.tokenizer;
    let mut live: HashMap<SeqId, Live<'_>> = HashMap::new();
    let (mut last_queries, mut last_hits, mut steps) = (0u64, 0u64, 0u64);
    'outer: loop {
        // 1. Intake: block when idle, otherwise take what has arrived.
        let mut cmds = Vec::new();
        if sched.is_idle() {
            match rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        while let Ok(c) = rx.try_recv() {
            cmds.push(c);
        }
        for c in cmds {
            match c {
                Command::Shutdown => break 'outer,
                Command::Add {
                    id,
                    req,
                    tx,
                    span,
                    submitted,
                } => {
                    let step = TokenStep::new(tok, &req).expect("validated at submit");
                    let queue_span = tracing::info_span!(parent: &span, "infer.queue").entered();
                    sched.add(id, req.prompt.clone(), req.priority);
                    m.prompt_tokens.inc_by(req.prompt.len() as u64);
                    live.insert(
                        id,
                        Live {
                            req,
                            tx,
                            step,
                            text: String::new(),
                            generated: 0,
                            submitted,
                            admitted: None,
                            first_token: None,
                            last_token: None,
                            span,
                            queue_span: Some(queue_span),
                            phase_span: None,
                        },
                    );
                }
            }
        }
        // 2. Cancellation: a closed stream (client gone, deadline passed)
        // frees the sequence's blocks before the next step is planned.
        let closed: Vec<SeqId> = live
            .iter()
            .filter(|(_, l)| l.tx.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in closed {
            end(&mut sched, &mut live, id, Finish::Cancelled, &m, &pending);
        }
        // 3. Plan the step.
        let report = sched.schedule();
        m.preemptions.inc_by(report.preempted.len() as u64);
        for id in report.unschedulable {
            if let Some(l) = live.get(&id) {
                let _ = l.tx.send(Event::Failed(format!(
                    "request needs more KV blocks than the pool has ({} blocks of {} tokens)",
                    sched.cache.n_blocks(),
                    sched.cache.block_tokens
                )));
            }
            fail(&mut sched, &mut live, id, &m, &pending);
        }
        let mut admitted = 0;
        for b in &report.batch {
            if let Some(l) = live.get_mut(&b.id)
                && l.admitted.is_none()
            {
                l.admitted = Some(Instant::now());
                l.queue_span = None; // closes infer.queue
                admitted += 1;
                l.phase_span = Some(tracing::info_span!(
                    parent: &l.span,
                    "infer.prefill",
                    gen_ai.usage.input_tokens = l.req.prompt.len()
                ));
            }
        }
        if admitted > 0 {
            // Publish the stats that count them as running *before* they
            // leave `pending`: a reader that sees both `pending` at zero and
            // an idle snapshot then knows the engine is idle (the snapshot
            // is otherwise a step old, and a long step once let a drained
            // check pass with three requests in flight).
            publish(&sched, &m, &stats, steps, &mut last_queries, &mut last_hits);
            pending.fetch_sub(admitted, Ordering::SeqCst);
        }
        if report.batch.is_empty() {
            publish(&sched, &m, &stats, steps, &mut last_queries, &mut last_hits);
            if !sched.is_idle() {
                // Waiting for blocks that only a cancellation can free; do not spin.
                std::thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        // 4. Run it.
        let inputs: Vec<(Vec<u32>, Vec<u32>)> = report
            .batch
            .iter()
            .map(|b| {
                let s = sched.get(b.id).expect("scheduled sequence");
                (s.tokens[b.start..b.start + b.len].to_vec(), s.table.clone())
            })
            .collect();
        let seqs: Vec<SeqInput<'_>> = report
            .batch
            .iter()
            .zip(&inputs)
            .map(|(b, (tokens, table))| SeqInput {
                tokens,
                start: b.start,
                table,
                logits: if b.sample { Logits::Last } else { Logits::None },
            })
            .collect();
        m.batch_tokens
            .observe(report.batch.iter().map(|b| b.len).sum::<usize>() as f64);
        m.batch_seqs.observe(report.batch.len() as f64);
        let result = engine.model.forward_batch(&seqs, &mut sched.cache);
        steps += 1;
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A model error fails the step's requests, not the server.
                for b in &report.batch {
                    if let Some(l) = live.get(&b.id) {
                        let _ = l.tx.send(Event::Failed(format!("model step failed: {e}")));
                    }
                    fail(&mut sched, &mut live, b.id, &m, &pending);
                }
                continue;
            }
        };
        // 5. Sample, stream, finish.
        for (b, logits) in report.batch.iter().zip(logits) {
            sched.computed(b);
            if !b.sample {
                continue;
            }
            let Some(l) = live.get_mut(&b.id) else {
                continue;
            };
            let history = &sched.get(b.id).expect("sequence").tokens;
            // A decoder error (an id the vocabulary cannot render) streams
            // no text for the token rather than failing the request.
            let next = l
                .step
                .next(&logits, history)
                .unwrap_or_else(|e| Next::Token {
                    id: e.id,
                    text: String::new(),
                    stopped: false,
                });
            let now = Instant::now();
            if l.first_token.is_none() {
                l.first_token = Some(now);
                m.ttft.observe((now - l.submitted).as_secs_f64());
                l.phase_span = Some(tracing::info_span!(parent: &l.span, "infer.decode"));
            } else if let Some(prev) = l.last_token {
                m.itl.observe((now - prev).as_secs_f64());
            }
            l.last_token = Some(now);
            let Next::Token {
                id: next,
                text: out,
                stopped,
            } = next
            else {
                end(&mut sched, &mut live, b.id, Finish::Stop, &m, &pending);
                continue;
            };
            l.generated += 1;
            m.generated_tokens.inc();
            sched.append(b.id, next);
            l.text.push_str(&out);
            if l.tx
                .send(Event::Token {
                    id: next,
                    text: out,
                })
                .is_err()
            {
                end(&mut sched, &mut live, b.id, Finish::Cancelled, &m, &pending);
                continue;
            }
            if stopped {
                end(&mut sched, &mut live, b.id, Finish::Stop, &m, &pending);
            } else if l.generated >= l.req.max_tokens {
                end(&mut sched, &mut live, b.id, Finish::Length, &m, &pending);
            }
        }
        publish(&sched, &m, &stats, steps, &mut last_queries, &mut last_hits);
    }
    // Shutting down: tell everyone still in flight.
    for (_, l) in live.drain() {
        let _ = l.tx.send(Event::Failed("server shutting down".into()));
    }
}

/// Updates gauges and the stats snapshot.
fn publish(
    sched: &Scheduler,
    m: &ServeMetrics,
    stats: &std::sync::Mutex<EngineStats>,
    steps: u64,
    last_queries: &mut u64,
    last_hits: &mut u64,
) {
    let a = &sched.cache.alloc;
    m.waiting.set(sched.n_waiting() as i64);
    m.running.set(sched.n_running() as i64);
    m.blocks_used.set(a.used() as i64);
    m.blocks_free.set(a.available() as i64);
    m.kv_usage_ratio.set(a.used() as f64 / a.n_blocks() as f64);
    let util = sched.kv_utilization();
    m.kv_utilization.set(util);
    m.prefix_queries.inc_by(a.prefix_queries - *last_queries);
    m.prefix_hits.inc_by(a.prefix_hits - *last_hits);
    (*last_queries, *last_hits) = (a.prefix_queries, a.prefix_hits);
    if a.prefix_queries > 0 {
        m.prefix_hit_ratio
            .set(a.prefix_hits as f64 / a.prefix_queries as f64);
    }
    *stats.lock().expect("stats lock") = EngineStats {
        waiting: sched.n_waiting(),
        running: sched.n_running(),
        blocks_total: a.n_blocks(),
        blocks_used: a.used(),
        kv_utilization: util,
        steps,
    };
}

/// Ends a request normally (stop, length) or by cancellation.
fn end(
    sched: &mut Scheduler,
    live: &mut HashMap<SeqId, Live<'_>>,
    id: SeqId,
    reason: Finish,
    m: &ServeMetrics,
    pending: &AtomicUsize,
) {
    let state = sched.finish(id);
    let Some(mut l) = live.remove(&id) else {
        return;
    };
    if l.admitted.is_none() {
        pending.fetch_sub(1, Ordering::SeqCst);
    }
    let rest = if reason == Finish::Cancelled {
        String::new()
    } else {
        l.step.finish().unwrap_or_default()
    };
    l.text.push_str(&rest);
    let now = Instant::now();
    let ms = |a: Instant, b: Option<Instant>| b.map_or(0.0, |b| (b - a).as_secs_f64() * 1e3);
    let usage = Usage {
        prompt_tokens: l.req.prompt.len(),
        completion_tokens: l.generated,
        cached_tokens: state.as_ref().map_or(0, |s| s.cached_tokens),
        queue_ms: ms(l.submitted, l.admitted),
        ttft_ms: ms(l.submitted, l.first_token),
        total_ms: (now - l.submitted).as_secs_f64() * 1e3,
        preemptions: state.as_ref().map_or(0, |s| s.preemptions),
    };
    m.e2e.observe(usage.total_ms / 1e3);
    let outcome = reason.as_str();
    m.requests.with_label_values(&[outcome]).inc();
    l.span.record("gen_ai.usage.output_tokens", l.generated);
    l.span.record("gen_ai.response.finish_reasons", outcome);
    let _ = l.tx.send(Event::Finished {
        reason,
        text: rest,
        usage,
    });
}

/// Drops a request that failed (its Failed event was already sent).
fn fail(
    sched: &mut Scheduler,
    live: &mut HashMap<SeqId, Live<'_>>,
    id: SeqId,
    m: &ServeMetrics,
    pending: &AtomicUsize,
) {
    sched.finish(id);
    if let Some(l) = live.remove(&id)
        && l.admitted.is_none()
    {
        pending.fetch_sub(1, Ordering::SeqCst);
    }
    m.requests.with_label_values(&["error"]).inc();
}
