//! Prometheus metrics: one process-wide registry and the HTTP endpoint a
//! Prometheus server scrapes.
//!
//! Naming follows `docs/ARCHITECTURE.md`: `mlstack_<component>_<what>_<unit>`, with
//! `_total` for counters and base units (`_seconds`, `_bytes`). Process metrics
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, open fds, ...)
//! are registered on first use of [`registry`].
//!
//! Endpoints served by [`MetricsServer`]:
//! - `GET /metrics`: text exposition format 0.0.4.
//! - `GET /healthz`: 200 while the process is alive (liveness).
//! - `GET /readyz`: 200 once the component called [`Readiness::set_ready`], 503
//!   before and after (readiness: a load balancer sends traffic only on 200).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::Error;

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    {
        // Registration fails only on a duplicate, impossible on a fresh registry.
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    r
});

/// The process-wide registry every component registers its metrics in.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers `collector` in the process-wide registry and hands it back.
///
/// ```
/// let c = observe::metrics::register(prometheus::IntCounter::new(
///     "mlstack_example_things_total", "Things seen.").unwrap()).unwrap();
/// c.inc();
/// ```
pub fn register<C>(collector: C) -> Result<C, Error>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let name = collector
        .desc()
        .first()
        .map(|d| d.fq_name.clone())
        .unwrap_or_default();
    registry()
        .register(Box::new(collector.clone()))
        .map_err(|source| Error::Register { name, source })?;
    Ok(collector)
}

/// The readiness flag behind `/readyz`. Cheap to clone; all clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Starts not ready.
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_ready(&self, ready: bool) {
        // Release/Acquire: whatever the component initialised before saying it
        // is ready is visible to a thread that observes the flag.
        self.0.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    readiness: Readiness,
}

/// A running `/metrics` + `/healthz` + `/readyz` HTTP server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    readiness: Readiness,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `listen` (port 0 picks a free port) and serves until [`stop`](Self::stop).
    pub async fn start(
        listen: SocketAddr,
        registry: Registry,
        readiness: Readiness,
    ) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz_handler))
            .with_state(AppState {
                registry,
                readiness: readiness.clone(),
            });
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, %local_addr, "metrics server failed");
            }
        });
        tracing::info!(%local_addr, "metrics server listening");
        Ok(Self {
            local_addr,
            readiness,
            cancel,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Marks the process not ready, stops accepting, and waits for in-flight
    /// scrapes to finish.
    pub async fn stop(self) {
        self.readiness.set_ready(false);
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let families = state.registry.gather();
    let mut body = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn readyz_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
