//! The trace receiver at its edges: a real OTLP/gRPC client sends it good
//! and malformed spans and an oversized request; its query port answers
//! with the trace, 400 for a bad id and 404 for an unknown one; what was
//! stored survives a restart.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Link;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use observe::traces::{SpanStore, TraceView};
use proto::trace_receiver::TraceReceiver as Receiver;

const TRACE: [u8; 16] = [0xab; 16];

fn span(id: u8, parent: Option<u8>, name: &str) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        start_time_unix_nano: 1_000_000 * u64::from(id),
        end_time_unix_nano: 1_000_000 * u64::from(id) + 500_000,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("svc".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

#[tokio::test]
async fn keeps_good_spans_refuses_bad_ones_and_answers_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let receiver = Receiver::start(
        any,
        Some(any),
        SpanStore::open(dir.path()).expect("open store"),
        None,
    )
    .await
    .expect("start receiver");
    let mut client = TraceServiceClient::connect(receiver.endpoint())
        .await
        .expect("connect");

    let mut child = span(2, Some(1), "child");
    child.links.push(Link {
        trace_id: TRACE.to_vec(),
        span_id: vec![1; 8],
        ..Default::default()
    });
    let mut short_trace = span(3, None, "short trace id");
    short_trace.trace_id = vec![1, 2, 3];
    let zero_span = Span {
        span_id: vec![0; 8],
        ..span(4, None, "zero span id")
    };
    let bad_parent = Span {
        parent_span_id: vec![9; 3],
        ..span(5, None, "bad parent")
    };
    let long_name = span(6, None, &"n".repeat(2000));
    let reply = client
        .export(request(vec![
            span(1, None, "root"),
            child,
            short_trace,
            zero_span,
            bad_parent,
            long_name,
        ]))
        .await
        .expect("export")
        .into_inner();
    let partial = reply.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_spans, 4, "{partial:?}");
    assert!(
        partial.error_message.contains("trace id must be 16"),
        "{partial:?}"
    );

    // Over the 4 MiB cap: refused as a whole, nothing stored.
    let mut huge = span(7, None, "huge");
    huge.attributes.push(KeyValue {
        key: "blob".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue("x".repeat(5 << 20))),
        }),
        ..Default::default()
    });
    let status = client
        .export(request(vec![huge]))
        .await
        .expect_err("a 5 MiB request is over the limit");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );

    // Small on the wire, huge once stored: a 1 MiB resource shared by 100
    // spans would be copied into each. Refused before anything is built.
    let mut amplified = request((10..110).map(|i| span(i, None, "tiny")).collect());
    if let Some(r) = amplified.resource_spans[0].resource.as_mut() {
        r.attributes.push(KeyValue {
            key: "padding".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("p".repeat(1 << 20))),
            }),
            ..Default::default()
        });
    }
    let status = client
        .export(amplified)
        .await
        .expect_err("100 MiB once stored");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");

    // The query port.
    let base = format!("http://{}", receiver.query_addr().expect("query port"));
    let hex = "ab".repeat(16);
    let resp = reqwest::get(format!("{base}/api/traces/{hex}"))
        .await
        .expect("GET trace");
    assert_eq!(resp.status(), 200);
    let view: TraceView = resp.json().await.expect("a TraceView");
    let names: Vec<&str> = view.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["root", "child"],
        "only the valid spans were kept, none of the amplified request"
    );
    assert_eq!(view.spans[1].links[0].name.as_deref(), Some("root"));
    assert_eq!(view.spans[0].service, "svc");
    let text = view.render(3);
    assert!(text.contains("└─ child [svc] 0.5 ms"), "{text}");
    assert!(text.contains("↳ link to root [svc]"), "{text}");
    let bad = reqwest::get(format!("{base}/api/traces/not-hex"))
        .await
        .expect("GET");
    assert_eq!(bad.status(), 400);
    let missing = reqwest::get(format!("{base}/api/traces/{}", "cd".repeat(16)))
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    let list: serde_json::Value = reqwest::get(format!("{base}/api/traces?limit=5"))
        .await
        .expect("GET list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(list["traces"][0]["trace_id"], hex, "{list}");
    assert_eq!(list["traces"][0]["root"], "root", "{list}");

    // A second opener is refused while the receiver holds the store ...
    let err = SpanStore::open(dir.path()).expect_err("the store is locked");
    assert!(err.to_string().contains("--query"), "{err}");
    // ... and after it stops, the spans are still there.
    receiver.stop().await;
    let store = SpanStore::open(dir.path()).expect("reopen");
    assert_eq!(store.trace(&hex).expect("read").len(), 2);
}
