//! # observe: traces, metrics and logs for every mlstack component
//!
//! The concept: a distributed system is only debuggable when every hop reports
//! *what happened* (logs), *how much and how fast* (metrics) and *which request
//! caused it* (traces, with context carried across process boundaries). This crate
//! gives each component those three with one call, following the OpenTelemetry
//! specification (W3C Trace Context for propagation, OTLP for export) and
//! Prometheus's exposition format and naming conventions.
//!
//! Background: *Distributed Systems Observability* (C. Sridharan), the Dapper paper
//! (Sigelman et al., 2010) for trace trees, and the W3C Trace Context
//! recommendation for the `traceparent` header.
//!
//! ```no_run
//! # async fn run() -> Result<(), observe::Error> {
//! let telemetry = observe::init("kv")?; // logs + traces (OTLP when configured)
//! let ready = observe::Readiness::new();
//! let metrics = observe::MetricsServer::start(
//!     "127.0.0.1:9101".parse().unwrap(),
//!     observe::registry().clone(),
//!     ready.clone(),
//! )
//! .await?;
//! ready.set_ready(true); // /readyz now answers 200
//! observe::shutdown_signal().await; // SIGINT or SIGTERM
//! metrics.stop().await;
//! telemetry.shutdown().await?; // flushes buffered spans
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`telemetry`]: [`init`] / [`init_with`]: the `tracing` subscriber (text or
//!   JSON, level from `RUST_LOG`), the OpenTelemetry tracer provider with a batching
//!   OTLP/gRPC exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the
//!   [`Telemetry`] handle that flushes on shutdown.
//! - [`propagation`]: W3C trace context across gRPC ([`grpc::InjectContext`],
//!   [`grpc::server_span`]), HTTP ([`http_trace::server`],
//!   [`http_trace::headers`]) and Kafka message headers ([`carrier::inject`],
//!   [`carrier::extract`]); span links through stored contexts
//!   ([`traceparent_of`], [`link`]).
//! - [`metrics`]: the process-wide Prometheus [`registry`] (with process metrics)
//!   and the HTTP [`MetricsServer`] serving `/metrics`, `/healthz` and `/readyz`.
//! - [`shutdown`]: [`shutdown_signal`] for SIGINT/SIGTERM.
//! - [`machine`]: the `machine` object of benchmark reports.
//! - [`traces`]: the trace store: [`traces::SpanStore`], spans kept in the
//!   `storage` LSM (filled by `proto::trace_receiver`), and
//!   [`traces::TraceView`], one trace as a tree (`mlstack trace show`).

pub mod machine;
pub mod metrics;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;
pub mod traces;

pub use metrics::{MetricsServer, Readiness, registry};
pub use propagation::{
    carrier, current_span_id, current_trace_id, grpc, http_trace, link, traceparent_of,
};
pub use shutdown::shutdown_signal;
pub use telemetry::{Config, LogFormat, Telemetry, init, init_with, instance_id};

/// Errors from setting up or tearing down observability.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A global `tracing` subscriber was already installed in this process.
    #[error("installing the tracing subscriber for service {service:?}: {reason}")]
    SubscriberInit { service: String, reason: String },
    /// `RUST_LOG` did not parse as a filter directive.
    #[error("RUST_LOG={value:?} is not a valid filter: {reason}")]
    BadLogFilter { value: String, reason: String },
    /// `--log-format` / `MLSTACK_LOG_FORMAT` named an unknown format.
    #[error("unknown log format {value:?} (expected \"text\" or \"json\")")]
    BadLogFormat { value: String },
    /// The OTLP exporter could not be built for the endpoint.
    #[error("building the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    /// Flushing or shutting down the tracer provider failed.
    #[error("flushing spans for service {service:?}: {reason}")]
    Flush { service: String, reason: String },
    /// A metric could not be registered (usually a duplicate name).
    #[error("registering metric {name:?}: {source}")]
    Register {
        name: String,
        #[source]
        source: prometheus::Error,
    },
    /// The trace store could not be opened, read or written.
    #[error("trace store {dir}: {reason}")]
    TraceStore {
        dir: std::path::PathBuf,
        reason: String,
    },
    /// A trace id that is not 32 hex digits (or is all zeros).
    #[error("{value:?} is not a trace id (32 hex digits, not all zero)")]
    BadTraceId { value: String },
    /// No span of the trace is stored.
    #[error("no span of trace {trace_id} in {source_}")]
    TraceNotFound { trace_id: String, source_: String },
    /// The metrics HTTP server could not bind its address.
    #[error("binding the metrics server to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
