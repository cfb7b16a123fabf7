//! The OTLP/gRPC trace receiver (`mlstack trace serve`): the
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` method the
//! OpenTelemetry Collector and Jaeger accept on port 4317, writing every span
//! to a [`SpanStore`], and a small HTTP query port (Jaeger's UI port, 16686,
//! by default) that `mlstack trace show` reads while the receiver runs.
//!
//! ```text
//! exporters ──OTLP/gRPC Export──▶ receiver ──validate──▶ SpanStore (LSM)
//!                                                          │
//! mlstack trace show ◀──GET /api/traces/{id} (JSON)───── query port
//! ```
//!
//! Hostile or broken input: requests are capped at 4 MiB (the Collector's
//! default); a span without a 16-byte trace id and an 8-byte span id (both
//! non-zero), with a parent id of the wrong size, or with a name over
//! 1 KiB is rejected and counted in the answer's `partial_success`, as the
//! OTLP specification prescribes, while the request's valid spans are kept.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_util::sync::CancellationToken;

use super::store::SpanStore;
use super::tree::TraceView;
use crate::Error;

/// The largest Export request accepted (the Collector's default).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// The longest span name accepted.
pub const MAX_NAME_BYTES: usize = 1024;

/// Why a span is refused, or `None` when it is well-formed.
pub fn invalid(span: &Span) -> Option<String> {
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    if span.trace_id.len() != 16 || zero(&span.trace_id) {
        return Some(format!(
            "span {:?}: trace id must be 16 non-zero bytes, got {}",
            span.name,
            span.trace_id.len()
        ));
    }
    if span.span_id.len() != 8 || zero(&span.span_id) {
        return Some(format!(
            "span {:?}: span id must be 8 non-zero bytes, got {}",
            span.name,
            span.span_id.len()
        ));
    }
    if !(span.parent_span_id.is_empty() || span.parent_span_id.len() == 8) {
        return Some(format!(
            "span {:?}: parent span id must be empty or 8 bytes, got {}",
            span.name,
            span.parent_span_id.len()
        ));
    }
    if span.name.len() > MAX_NAME_BYTES {
        return Some(format!(
            "span name of {} bytes (limit {MAX_NAME_BYTES})",
            span.name.len()
        ));
    }
    None
}

#[derive(Clone)]
struct Export {
    store: Arc<SpanStore>,
}

#[tonic::async_trait]
impl TraceService for Export {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let store = self.store.clone();
        // The store's write is blocking file I/O: off the runtime's workers.
        let (rejected, first_error) = tokio::task::spawn_blocking(move || {
            let mut keep = Vec::new();
            let (mut rejected, mut first_error) = (0i64, String::new());
            for rs in &req.resource_spans {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        match invalid(span) {
                            None => keep.push((rs.resource.as_ref(), ss.scope.as_ref(), span)),
                            Some(why) => {
                                rejected += 1;
                                if first_error.is_empty() {
                                    first_error = why;
                                }
                            }
                        }
                    }
                }
            }
            store.put(&keep).map(|()| (rejected, first_error))
        })
        .await
        .map_err(|e| tonic::Status::internal(format!("export task: {e}")))?
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: first_error,
            }),
        }))
    }
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    otlp_addr: SocketAddr,
    query_addr: Option<SocketAddr>,
    store: Arc<SpanStore>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = l
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    Ok((l, local))
}

impl Receiver {
    /// Binds the OTLP port (and the query port, when given; port 0 picks a
    /// free one) and serves until [`stop`](Self::stop).
    pub async fn start(
        otlp: SocketAddr,
        query: Option<SocketAddr>,
        store: SpanStore,
    ) -> Result<Self, Error> {
        let store = Arc::new(store);
        let cancel = CancellationToken::new();
        let (listener, otlp_addr) = bind(otlp).await?;
        let svc = TraceServiceServer::new(Export {
            store: store.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let stop = cancel.clone();
        let mut tasks = vec![tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.cancelled_owned(),
                )
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, %otlp_addr, "OTLP receiver failed");
            }
        })];
        let mut query_addr = None;
        if let Some(q) = query {
            let (listener, addr) = bind(q).await?;
            query_addr = Some(addr);
            let app = axum::Router::new()
                .route("/api/traces", axum::routing::get(recent))
                .route("/api/traces/{trace_id}", axum::routing::get(one_trace))
                .with_state(store.clone());
            let stop = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, %addr, "trace query server failed");
                }
            }));
        }
        tracing::info!(%otlp_addr, ?query_addr, dir = %store.dir().display(), "trace receiver listening");
        Ok(Self {
            otlp_addr,
            query_addr,
            store,
            cancel,
            tasks,
        })
    }

    /// The OTLP endpoint to export to (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.otlp_addr)
    }

    pub fn otlp_addr(&self) -> SocketAddr {
        self.otlp_addr
    }

    pub fn query_addr(&self) -> Option<SocketAddr> {
        self.query_addr
    }

    pub fn store(&self) -> &SpanStore {
        &self.store
    }

    /// Stops accepting, waits for in-flight exports, and closes the store.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Receiver {
    /// Dropped without [`stop`](Self::stop): the servers stop accepting and
    /// end on their own (the store closes when the last request is done).
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(serde::Deserialize)]
struct RecentQuery {
    limit: Option<usize>,
}

fn json_error(code: StatusCode, msg: String) -> Response {
    (code, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// `GET /api/traces?limit=N`: the most recent traces (N ≤ 1000, default 20).
async fn recent(State(store): State<Arc<SpanStore>>, Query(q): Query<RecentQuery>) -> Response {
    let limit = q.limit.unwrap_or(20).min(1000);
    match tokio::task::spawn_blocking(move || store.recent(limit)).await {
        Ok(Ok(list)) => axum::Json(serde_json::json!({ "traces": list })).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/traces/{trace_id}`: one trace as a [`TraceView`]; 400 for an
/// id that is not 32 hex digits, 404 when no span of it is stored.
async fn one_trace(
    State(store): State<Arc<SpanStore>>,
    UrlPath(trace_id): UrlPath<String>,
) -> Response {
    match tokio::task::spawn_blocking(move || TraceView::load(&store, &trace_id)).await {
        Ok(Ok(view)) => axum::Json(view).into_response(),
        Ok(Err(e @ Error::BadTraceId { .. })) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e @ Error::TraceNotFound { .. })) => {
            json_error(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
