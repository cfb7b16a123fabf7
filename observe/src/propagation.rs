//! W3C Trace Context across process boundaries.
//!
//! A trace is one tree of spans spread over many processes. What crosses the wire
//! is only the parent's identity: the `traceparent` header
//! (`00-<trace id, 32 hex>-<span id, 16 hex>-<flags>`) and optional `tracestate`.
//! The sender *injects* the current span's context into request metadata; the
//! receiver *extracts* it and makes it the parent of its own server span. Both
//! sides here use [`TraceContextPropagator`] directly rather than the global
//! propagator, so the wire format cannot change with process configuration.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current `tracing` span's trace id as 32 lowercase hex chars, or `None` when
/// no valid OpenTelemetry context is active.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The current `tracing` span's span id as 16 lowercase hex chars.
pub fn current_span_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_string())
}

/// `span`'s context as a W3C `traceparent` string when its trace is
/// sampled (recorded, so the span will exist in the trace store); `None`
/// otherwise. Stored in records that outlive the span (a dataset snapshot,
/// a registry entry) so a later span can [`link`] to it.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    carrier::inject_sampled(span)
        .into_iter()
        .find(|(k, _)| k == "traceparent")
        .and_then(|(_, v)| String::from_utf8(v).ok())
}

/// Adds a span link from `span` to the span a stored `traceparent` names:
/// "this was caused by that" without making it the parent (a training run
/// reads a snapshot made in another trace, a file holds many records).
/// A `traceparent` that does not parse adds nothing.
pub fn link(span: &tracing::Span, traceparent: &str) {
    let cx = carrier::extract([("traceparent", traceparent.as_bytes())]);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// HTTP: the server span for an incoming request (an axum middleware) and
/// the headers a client sends.
pub mod http_trace {
    use super::*;

    /// An axum middleware (`Router::layer(axum::middleware::from_fn(observe::http_trace::server))`)
    /// that runs each request's handler inside an `http.server` span parented
    /// to the `traceparent` the client sent, as [`grpc::server_span`] does for
    /// gRPC. The span ends with the response head: a streamed (SSE) body's
    /// work is in the handler's own spans, which the engine keeps open until
    /// the stream ends. Named after the matched route (`POST /v1/completions`),
    /// not the raw path, so a client cannot mint span names; a 5xx marks it
    /// an error.
    pub async fn server(
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        use tracing::Instrument;
        let parent =
            TraceContextPropagator::new().extract(&grpc::HeaderExtractor(request.headers()));
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or("(no route)", |m| m.as_str())
            .to_string();
        let span = tracing::info_span!(
            "http.server",
            otel.name = %format!("{} {route}", request.method()),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %request.method(),
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let response = next.run(request).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        response
    }

    /// The current span's context as HTTP headers (`traceparent`,
    /// `tracestate`), for a client request.
    pub fn headers() -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in carrier::inject() {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_bytes(&v),
            ) {
                map.insert(k, v);
            }
        }
        map
    }
}

/// gRPC: inject on the client, extract on the server.
pub mod grpc {
    use super::*;
    use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

    /// The Raft peer transport's gRPC service (checked against the generated
    /// name in `proto`'s tests).
    pub const RAFT_SERVICE: &str = "mlstack.raft.v1.Raft";
    /// OpenTelemetry's OTLP trace export service.
    pub const OTLP_TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

    /// A tonic client interceptor that writes the current span's context into the
    /// outgoing request's metadata (`traceparent`, `tracestate`).
    ///
    /// ```ignore
    /// let client = DiagClient::with_interceptor(channel, observe::grpc::InjectContext);
    /// ```
    ///
    /// The interceptor runs when the call is made, inside the caller's span, so
    /// the callee's server span becomes a child of whatever span issued the call
    /// (use [`client_span`] to give the call a span of its own).
    #[derive(Clone, Copy, Debug, Default)]
    pub struct InjectContext;

    impl tonic::service::Interceptor for InjectContext {
        fn call(
            &mut self,
            mut request: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            inject(&tracing::Span::current().context(), request.metadata_mut());
            Ok(request)
        }
    }

    /// Writes `cx` into gRPC metadata.
    pub fn inject(cx: &Context, metadata: &mut MetadataMap) {
        TraceContextPropagator::new().inject_context(cx, &mut MetadataInjector(metadata));
    }

    /// Reads a context from gRPC metadata (an empty context when absent or invalid).
    pub fn extract(metadata: &MetadataMap) -> Context {
        TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
    }

    /// Builds the server span for an incoming gRPC request, parented to the context
    /// the client sent. Pass it to tonic's `Server::builder().trace_fn(...)`: tonic
    /// then runs the whole request (handler and response body) inside this span.
    ///
    /// The span is named after the method (`mlstack.kv.v1.KV/Put`) with the
    /// OpenTelemetry RPC semantic-convention attributes.
    pub fn server_span(request: &http::Request<()>) -> tracing::Span {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        // Raft's own traffic between peers (heartbeats and replication,
        // about ten RPCs a second per follower) is not a request anyone
        // made: without a caller's context it gets no span, instead of a
        // new trace each. A client's write is still followed onto every
        // node through the context stored in its log entry.
        if service == RAFT_SERVICE && !parent.span().span_context().is_valid() {
            return tracing::Span::none();
        }
        // A trace receiver's Export calls carry spans; a span for each would
        // be exported in turn, forever.
        if service == OTLP_TRACE_SERVICE {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        // set_parent fails only when the span is disabled by the filter; there is
        // then nothing to parent.
        let _ = span.set_parent(parent);
        span
    }

    /// A span for an outgoing call (`otel.kind = client`). Enter it (or
    /// `.instrument()` the call's future) before calling through an
    /// [`InjectContext`] client so the callee's span hangs below it.
    pub fn client_span(service: &str, method: &str) -> tracing::Span {
        tracing::info_span!(
            "grpc.client",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        )
    }

    struct MetadataInjector<'a>(&'a mut MetadataMap);

    impl Injector for MetadataInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            // Keys from the W3C propagator are lowercase ASCII and values are
            // printable ASCII, so these conversions do not fail in practice; a
            // failure drops only the header, never the request.
            if let (Ok(k), Ok(v)) = (
                MetadataKey::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                self.0.insert(k, v);
            }
        }
    }

    struct MetadataExtractor<'a>(&'a MetadataMap);

    impl Extractor for MetadataExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|k| match k {
                    tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                    tonic::metadata::KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }

    pub(super) struct HeaderExtractor<'a>(pub(super) &'a http::HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
}

/// Trace context in a carrier of `(name, bytes)` pairs: Kafka message headers
/// (so a consumer's processing span can link to or continue the producer's
/// trace) and records stored on the way, such as a Raft log entry (so each
/// node's apply joins the client's trace).
///
/// Plain pairs keep this crate free of a Kafka client; `stream` adapts them to
/// `rdkafka`'s `OwnedHeaders`, `consensus` stores them in its log entries.
pub mod carrier {
    use super::*;
    use std::collections::HashMap;

    /// The current span's context as carrier pairs (`traceparent`, and
    /// `tracestate` when set). Empty when no valid context is active.
    pub fn inject() -> Vec<(String, Vec<u8>)> {
        inject_context(&tracing::Span::current().context())
    }

    /// `span`'s context as headers only when its trace is sampled (recorded);
    /// empty otherwise. For contexts copied into stored data on a hot path
    /// (the KV's log entries), where an unsampled one would only make every
    /// reader build a non-recording span (see the sampler in
    /// [`crate::telemetry::init_with`]).
    pub fn inject_sampled(span: &tracing::Span) -> Vec<(String, Vec<u8>)> {
        let cx = span.context();
        if cx.span().span_context().is_sampled() {
            inject_context(&cx)
        } else {
            Vec::new()
        }
    }

    /// `cx` as carrier pairs.
    pub fn inject_context(cx: &Context) -> Vec<(String, Vec<u8>)> {
        let mut map: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut map);
        let mut headers: Vec<_> = map.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        headers.sort();
        headers
    }

    /// The context carried by a carrier's pairs. Header values that are not
    /// UTF-8 are ignored; with no valid `traceparent` the result is empty.
    pub fn extract<'a, I>(headers: I) -> Context
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let map: HashMap<String, String> = headers
            .into_iter()
            .filter_map(|(k, v)| {
                std::str::from_utf8(v)
                    .ok()
                    .map(|v| (k.to_ascii_lowercase(), v.to_string()))
            })
            .collect();
        TraceContextPropagator::new().extract(&map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote_cx() -> (Context, TraceId, SpanId) {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
        let sc = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        (
            Context::new().with_remote_span_context(sc),
            trace_id,
            span_id,
        )
    }

    #[test]
    fn kafka_headers_round_trip_the_w3c_context() {
        let (cx, trace_id, span_id) = remote_cx();
        let headers = carrier::inject_context(&cx);
        let tp = headers
            .iter()
            .find(|(k, _)| k == "traceparent")
            .map(|(_, v)| String::from_utf8_lossy(v).to_string());
        assert_eq!(
            tp.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let back = carrier::extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let sc = back.span().span_context().clone();
        assert!(sc.is_remote());
        assert_eq!(sc.trace_id(), trace_id);
        assert_eq!(sc.span_id(), span_id);
    }

    #[test]
    fn kafka_extract_ignores_garbage() {
        let garbage: Vec<(&str, &[u8])> = vec![
            ("traceparent", b"not-a-traceparent"),
            ("other", &[0xff, 0xfe]),
        ];
        let cx = carrier::extract(garbage);
        assert!(!cx.span().span_context().is_valid());
        assert!(
            carrier::extract(Vec::<(&str, &[u8])>::new())
                .span()
                .span_context()
                .trace_id()
                == TraceId::INVALID
        );
    }

    #[test]
    fn grpc_metadata_round_trips_the_w3c_context() {
        let (cx, trace_id, span_id) = remote_cx();
        let mut md = tonic::metadata::MetadataMap::new();
        grpc::inject(&cx, &mut md);
        assert!(md.get("traceparent").is_some(), "{md:?}");
        let back = grpc::extract(&md);
        assert_eq!(back.span().span_context().trace_id(), trace_id);
        assert_eq!(back.span().span_context().span_id(), span_id);
    }

    #[test]
    fn no_active_span_means_no_ids() {
        // No subscriber in this unit-test process: nothing to report.
        assert_eq!(current_trace_id(), None);
        assert!(carrier::inject().is_empty());
    }
}
