//! The OTLP/gRPC trace receiver (`mlstack trace serve`): the
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` method the
//! OpenTelemetry Collector and Jaeger accept on port 4317, writing every span
//! to an `observe::traces::SpanStore`, and a small HTTP query port (Jaeger's
//! UI port, 16686, by default) that `mlstack trace show` reads while the
//! receiver runs. The gRPC side starts through [`GrpcServer`] like every
//! other server (health, reflection, drain on stop); its own Export calls
//! get no server span (`observe::grpc::server_span`), or each export would
//! make spans to export.
//!
//! ```text
//! exporters ──OTLP/gRPC Export──▶ receiver ──validate──▶ SpanStore (LSM)
//!                                                          │
//! mlstack trace show ◀──GET /api/traces/{id} (JSON)───── query port
//! ```
//!
//! Hostile or broken input: requests are capped at 4 MiB (the Collector's
//! default), and at 64 MiB once stored (each span is stored with its
//! resource, so a large resource shared by many small spans is refused
//! before it is copied: `RESOURCE_EXHAUSTED`); a span without a 16-byte
//! trace id and an 8-byte span id (both non-zero), with a parent id of the
//! wrong size, or with a name over 1 KiB is rejected and counted in the
//! answer's `partial_success`, as the OTLP specification prescribes, while
//! the request's valid spans are kept. An all-zero parent id is a root.

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

use observe::traces::{SpanStore, TraceView};
use prost::Message;

use crate::Error;
use crate::http_server::HttpServer;
use crate::server::GrpcServer;

/// The largest Export request accepted (the Collector's default).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// The longest span name accepted.
pub const MAX_NAME_BYTES: usize = 1024;
/// The most one request may take once stored (each span with its resource).
pub const MAX_STORED_BYTES: usize = 64 << 20;

/// A span's name for an error message: at most 64 characters.
fn short(name: &str) -> String {
    let mut s: String = name.chars().take(64).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    s
}

/// Why a span is refused, or `None` when it is well-formed.
pub fn invalid(span: &Span) -> Option<String> {
    let zero = |b: &[u8]| b.iter().all(|&x| x == 0);
    if span.name.len() > MAX_NAME_BYTES {
        return Some(format!(
            "span name of {} bytes (limit {MAX_NAME_BYTES})",
            span.name.len()
        ));
    }
    if span.trace_id.len() != 16 || zero(&span.trace_id) {
        return Some(format!(
            "span {:?}: trace id must be 16 non-zero bytes, got {}",
            short(&span.name),
            span.trace_id.len()
        ));
    }
    if span.span_id.len() != 8 || zero(&span.span_id) {
        return Some(format!(
            "span {:?}: span id must be 8 non-zero bytes, got {}",
            short(&span.name),
            span.span_id.len()
        ));
    }
    if !(span.parent_span_id.is_empty() || span.parent_span_id.len() == 8) {
        return Some(format!(
            "span {:?}: parent span id must be empty or 8 bytes, got {}",
            short(&span.name),
            span.parent_span_id.len()
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
        let mut req = request.into_inner();
        // What storing would take: every span carries its resource and scope.
        let stored: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| {
                let shared = rs.resource.as_ref().map_or(0, Message::encoded_len);
                rs.scope_spans.iter().map(move |ss| {
                    let per = shared + ss.scope.as_ref().map_or(0, Message::encoded_len);
                    ss.spans
                        .iter()
                        .map(|sp| per.saturating_add(sp.encoded_len()))
                        .fold(0usize, usize::saturating_add)
                })
            })
            .fold(0usize, usize::saturating_add);
        if stored > MAX_STORED_BYTES {
            return Err(tonic::Status::resource_exhausted(format!(
                "this export would store {stored} bytes (each span with its resource); the limit is {MAX_STORED_BYTES}: send fewer spans per request"
            )));
        }
        // An all-zero parent id is no parent (some SDKs send one for roots).
        for sp in req
            .resource_spans
            .iter_mut()
            .flat_map(|rs| rs.scope_spans.iter_mut())
            .flat_map(|ss| ss.spans.iter_mut())
        {
            if !sp.parent_span_id.is_empty() && sp.parent_span_id.iter().all(|&b| b == 0) {
                sp.parent_span_id.clear();
            }
        }
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
pub struct TraceReceiver {
    grpc: Option<GrpcServer>,
    tls: bool,
    store: Arc<SpanStore>,
    query: Option<HttpServer>,
}

impl TraceReceiver {
    /// Binds the OTLP port (and the query port, when given; port 0 picks a
    /// free one) and serves until [`stop`](Self::stop). Both ports are bound
    /// before either serves, so a failed bind leaves nothing running. With
    /// `tls`, both speak TLS only (OTLP/gRPC over TLS, HTTPS queries).
    pub async fn start(
        otlp: SocketAddr,
        query: Option<SocketAddr>,
        store: SpanStore,
        tls: Option<&crate::tls::ServerTls>,
    ) -> Result<Self, Error> {
        let store = Arc::new(store);
        let query_port = match query {
            Some(q) => Some(HttpServer::bind(q, tls).await?),
            None => None,
        };
        let svc = TraceServiceServer::new(Export {
            store: store.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let grpc = GrpcServer::start_tls(otlp, "trace", None, tls, |routes| {
            routes.add_service(svc);
        })
        .await?;
        grpc.health
            .set_serving::<TraceServiceServer<Export>>()
            .await;
        let query = query_port.map(|port| {
            let app = axum::Router::new()
                .route("/api/traces", axum::routing::get(recent))
                .route("/api/traces/{trace_id}", axum::routing::get(one_trace))
                .with_state(store.clone());
            port.serve(app, "trace query")
        });
        tracing::info!(otlp = %grpc.addr, query = ?query.as_ref().map(|q| q.addr), tls = tls.is_some(), dir = %store.dir().display(), "trace receiver listening");
        Ok(Self {
            grpc: Some(grpc),
            tls: tls.is_some(),
            store,
            query,
        })
    }

    /// The OTLP endpoint to export to (`OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// `https://` when it serves TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.otlp_addr())
    }

    pub fn otlp_addr(&self) -> SocketAddr {
        self.grpc
            .as_ref()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |g| g.addr)
    }

    pub fn query_addr(&self) -> Option<SocketAddr> {
        self.query.as_ref().map(|q| q.addr)
    }

    pub fn store(&self) -> &SpanStore {
        &self.store
    }

    /// Stops accepting, waits for in-flight exports and queries, and closes
    /// the store (when the last request holding it is done).
    pub async fn stop(mut self) {
        let query = self.query.take();
        let grpc = self.grpc.take();
        let (_, grpc) = tokio::join!(
            async {
                if let Some(q) = query {
                    q.stop().await;
                }
            },
            async {
                match grpc {
                    Some(g) => g.stop().await,
                    None => Ok(()),
                }
            }
        );
        if let Err(e) = grpc {
            tracing::error!(error = %e, "OTLP receiver failed");
        }
    }
}

impl Drop for TraceReceiver {
    /// Dropped without [`stop`](Self::stop): both servers stop accepting and
    /// end on their own.
    fn drop(&mut self) {
        if let Some(q) = &self.query {
            q.stop_token().cancel();
        }
        if let Some(g) = &self.grpc {
            g.stop_token().cancel();
        }
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
        Ok(Err(e @ observe::Error::BadTraceId { .. })) => {
            json_error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Err(e @ observe::Error::TraceNotFound { .. })) => {
            json_error(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
