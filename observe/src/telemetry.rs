//! The per-process setup: a `tracing` subscriber that writes logs and, through
//! `tracing-opentelemetry`, turns every `tracing` span into an OpenTelemetry span.
//!
//! Why one tracer provider even without an exporter: trace and span ids are
//! generated whether or not anything is exported, so trace context still crosses
//! gRPC and Kafka hops (and shows in logs and `Diag.Ping` answers) on a laptop with
//! no collector. Export is switched on by `OTEL_EXPORTER_OTLP_ENDPOINT`, as the
//! OpenTelemetry specification's environment variables prescribe.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Error;

/// Default filter when `RUST_LOG` is unset. The transport crates are held at
/// `warn`: their per-frame spans would otherwise be exported too, and the OTLP
/// exporter's own requests would generate spans about exporting spans.
const DEFAULT_FILTER: &str = "info,openraft=warn,fjall=warn,lsm_tree=warn,h2=warn,tower=warn,hyper=warn,hyper_util=warn,tonic=warn,opentelemetry=warn,opentelemetry_sdk=warn";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" | "human" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(Error::BadLogFormat {
                value: s.to_string(),
            }),
        }
    }
}

/// Everything [`init_with`] needs. [`Config::from_env`] fills it the way every
/// mlstack process does.
#[derive(Clone, Debug)]
pub struct Config {
    /// `service.name`: the component (`kv`, `ingest`, `infer`, ...).
    pub service: String,
    /// `service.instance.id`: unique per process start.
    pub instance_id: String,
    /// `service.version`.
    pub version: String,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter; `None` = [`DEFAULT_FILTER`].
    pub filter: Option<String>,
    /// OTLP/gRPC collector endpoint (`http://host:4317`); `None` = no export.
    pub otlp_endpoint: Option<String>,
    /// The CA (PEM file) that signs an `https://` collector's certificate:
    /// OpenTelemetry's `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub otlp_ca: Option<std::path::PathBuf>,
    /// Write log lines to this file (appending) instead of stderr: the
    /// demo's screen keeps its own progress while the components' logs go
    /// where it says.
    pub log_file: Option<std::path::PathBuf>,
}

impl Config {
    /// Reads `RUST_LOG`, `MLSTACK_LOG_FORMAT`, `OTEL_EXPORTER_OTLP_ENDPOINT` and
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    /// An unknown `MLSTACK_LOG_FORMAT` falls back to text (the CLI validates the
    /// flag before it gets here).
    pub fn from_env(service: &str) -> Self {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            service: service.to_string(),
            instance_id: instance_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            log_format: non_empty("MLSTACK_LOG_FORMAT")
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            filter: non_empty("RUST_LOG"),
            otlp_endpoint: non_empty("OTEL_EXPORTER_OTLP_ENDPOINT"),
            otlp_ca: non_empty("OTEL_EXPORTER_OTLP_CERTIFICATE").map(Into::into),
            log_file: None,
        }
    }
}

/// This process's instance id: the one [`init_with`] exported with its spans,
/// or, before (or without) it, a random one fixed for the process's life.
/// Servers report it in `Diag.Ping` replies, so a hop names the process that
/// answered.
pub fn instance_id() -> &'static str {
    INSTANCE_ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

static INSTANCE_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The live observability state of a process. Call [`Telemetry::shutdown`] before
/// exit: the batching exporter holds up to one batch of spans in memory.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    service: String,
    instance_id: String,
    exporting_to: Option<String>,
}

impl Telemetry {
    pub fn service(&self) -> &str {
        &self.service
    }
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
    /// The OTLP endpoint spans are exported to, if any.
    pub fn exporting_to(&self) -> Option<&str> {
        self.exporting_to.as_deref()
    }

    /// Flushes buffered spans and stops the exporter. The batch processor runs on
    /// its own thread and blocks while it exports, so the flush runs on a blocking
    /// thread: calling it directly on a runtime worker could starve the tonic
    /// connection task the export needs.
    pub async fn shutdown(self) -> Result<(), Error> {
        let service = self.service.clone();
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || {
            provider.force_flush()?;
            provider.shutdown()
        })
        .await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Flush {
                service,
                reason: e.to_string(),
            }),
            Err(e) => Err(Error::Flush {
                service,
                reason: format!("flush task failed: {e}"),
            }),
        }
    }
}

/// [`init_with`] on [`Config::from_env`].
pub fn init(service: &str) -> Result<Telemetry, Error> {
    init_with(Config::from_env(service))
}

/// Installs the global `tracing` subscriber and OpenTelemetry tracer provider and
/// the W3C trace-context propagator. Call once per process, inside a tokio
/// runtime when `otlp_endpoint` is set (the exporter's gRPC channel lives there).
pub fn init_with(config: Config) -> Result<Telemetry, Error> {
    let filter_src = config
        .filter
        .clone()
        .unwrap_or_else(|| DEFAULT_FILTER.to_string());
    let filter = EnvFilter::try_new(&filter_src).map_err(|e| Error::BadLogFilter {
        value: filter_src.clone(),
        reason: e.to_string(),
    })?;

    let resource = Resource::builder()
        .with_service_name(config.service.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", config.instance_id.clone()),
            KeyValue::new("service.version", config.version.clone()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter_err = |reason: String| Error::Exporter {
            endpoint: endpoint.clone(),
            reason,
        };
        let mut tonic = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(std::time::Duration::from_secs(5));
        // An https:// collector is dialled over TLS, trusting the CA the
        // OpenTelemetry variable names (a dev CA is in no system store, and
        // the build carries no system roots); without one, refuse rather
        // than fail every export later.
        if endpoint.starts_with("https://") {
            let Some(ca) = &config.otlp_ca else {
                return Err(exporter_err(
                    "an https:// endpoint needs OTEL_EXPORTER_OTLP_CERTIFICATE (the CA's PEM file)"
                        .into(),
                ));
            };
            let pem = std::fs::read(ca).map_err(|e| {
                exporter_err(format!(
                    "OTEL_EXPORTER_OTLP_CERTIFICATE {}: {e}",
                    ca.display()
                ))
            })?;
            tonic = tonic.with_tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            );
        }
        let exporter = tonic.build().map_err(|e| exporter_err(e.to_string()))?;
        // The SDK's default queue (2,048 spans) drops spans when a burst
        // outruns the exporter: producing the demo's corpus makes one span per
        // record in under a second. 65,536 spans of headroom (a few tens of
        // MB at most) keep a burst whole; the export interval stays 5 s.
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default()
                    .with_max_queue_size(65_536)
                    .build(),
            )
            .build();
        builder = builder.with_span_processor(batch);
    }
    // Sampling. With an exporter every new trace is recorded; without one a
    // recorded span goes nowhere, so new traces start unsampled (ids are still
    // made and propagated, flags 00) and only a caller's sampled trace
    // (`traceparent` flags 01) is followed. Unsampled spans are non-recording:
    // no attributes, events or timings are kept for them, which took about a
    // sixth of a Raft leader's CPU at 64 clients before this.
    let root = if config.otlp_endpoint.is_some() {
        Sampler::AlwaysOn
    } else {
        Sampler::AlwaysOff
    };
    builder = builder.with_sampler(Sampler::ParentBased(Box::new(root)));
    let provider = builder.build();
    let tracer = provider.tracer(config.service.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    // No per-span thread attributes or idle/busy timings: both cost on every
    // enter/exit of every span, hot paths included, and neither is read here.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_tracked_inactivity(false);
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    // The log layer skips the per-request `grpc.server` span: formatting its
    // fields into a string on every request (for log lines that almost never
    // come) cost ~3% of a busy server's CPU. The span still goes to traces, and
    // log lines inside a handler keep the handler's own spans.
    let log_spans =
        tracing_subscriber::filter::filter_fn(|m| !(m.is_span() && m.name() == "grpc.server"));
    let writer = match &config.log_file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::SubscriberInit {
                    service: config.service.clone(),
                    reason: format!("log file {}: {e}", path.display()),
                })?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let installed = match config.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(config.log_file.is_none())
                    .with_filter(log_spans),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(writer)
                    .with_filter(log_spans),
            )
            .try_init(),
    };
    installed.map_err(|e| Error::SubscriberInit {
        service: config.service.clone(),
        reason: e.to_string(),
    })?;

    let _ = INSTANCE_ID.set(config.instance_id.clone());
    tracing::debug!(
        service = %config.service,
        instance = %config.instance_id,
        otlp = ?config.otlp_endpoint,
        "observability initialised"
    );
    Ok(Telemetry {
        provider,
        service: config.service,
        instance_id: config.instance_id,
        exporting_to: config.otlp_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_and_rejects() {
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
        assert_eq!("TEXT".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        let err = "yaml"
            .parse::<LogFormat>()
            .expect_err("yaml is not a format");
        assert!(err.to_string().contains("yaml"), "{err}");
    }

    #[test]
    fn bad_filter_is_a_typed_error() {
        let mut cfg = Config::from_env("t");
        cfg.filter = Some("info,=[[[".to_string());
        let err = init_with(cfg).expect_err("filter must be rejected");
        assert!(matches!(err, Error::BadLogFilter { .. }), "{err:?}");
    }
}
