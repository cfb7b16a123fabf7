//! A span started in one gRPC server, calling a second server, arrives at an OTLP
//! receiver with one shared trace id and correct parent/child links.
//!
//! Two real `mlstack diag serve` processes export over OTLP/gRPC (the batching
//! exporter, flushed by their SIGTERM shutdown path) to an in-test receiver. The
//! test calls A with a W3C `traceparent` it made up; A relays to B.

use std::time::{Duration, Instant};

use proto::diag::v1::PingRequest;
use proto::diag::v1::diag_client::DiagClient;
use tests::Proc;
use tests::otlp::{ReceivedSpan, Receiver};

const TRACE_ID: &str = "5af7183fb1d4cf5f2a3c9c1d0e0e4736";
const TEST_PARENT_SPAN: &str = "b7ad6b7169203331";
/// OTLP SpanKind values.
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;

fn find<'a>(spans: &'a [ReceivedSpan], instance: &str, kind: i32) -> &'a ReceivedSpan {
    let hits: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.instance_id == instance && s.span.kind == kind && s.span.name.ends_with("Diag/Ping")
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one kind-{kind} Diag/Ping span from {instance}, got {hits:#?}\nall: {spans:#?}"
    );
    hits[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_two_servers_reaches_the_otlp_receiver() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("RUST_LOG", "info"),
    ];

    let mut b = Proc::spawn_diag_server(&env);
    let mut a = Proc::spawn_diag_server(&env);
    let (a_addr, b_addr) = (a.field("grpc"), b.field("grpc"));
    let (a_inst, b_inst) = (a.field("instance_id"), b.field("instance_id"));

    let channel = proto::server::channel(&a_addr).expect("channel to A");
    let mut client = DiagClient::new(channel);
    let mut request = tonic::Request::new(PingRequest {
        payload: "trace me".into(),
        forward_to: vec![format!("http://{b_addr}")],
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{TEST_PARENT_SPAN}-01")
            .parse()
            .expect("ascii metadata"),
    );
    let reply = client
        .ping(request)
        .await
        .expect("ping through A to B")
        .into_inner();
    assert_eq!(reply.payload, "trace me");
    assert_eq!(reply.hops.len(), 2, "{reply:?}");
    for hop in &reply.hops {
        assert_eq!(
            hop.trace_id, TRACE_ID,
            "hop left the caller's trace: {hop:?}"
        );
    }
    assert_eq!(reply.hops[0].instance_id, a_inst);
    assert_eq!(reply.hops[1].instance_id, b_inst);

    // Graceful shutdown must flush the batch exporter: nothing is exported
    // before it (the batch delay is seconds), so every span below proves it.
    assert!(
        a.terminate(Duration::from_secs(15)).success(),
        "A exited badly"
    );
    assert!(
        b.terminate(Duration::from_secs(15)).success(),
        "B exited badly"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id_hex() == TRACE_ID)
            .collect();
        let from_a = spans.iter().filter(|s| s.instance_id == a_inst).count();
        let from_b = spans.iter().filter(|s| s.instance_id == b_inst).count();
        if (from_a >= 2 && from_b >= 1) || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let a_server = find(&spans, &a_inst, KIND_SERVER);
    let a_client = find(&spans, &a_inst, KIND_CLIENT);
    let b_server = find(&spans, &b_inst, KIND_SERVER);

    // Links: test -> A server -> A client -> B server.
    assert_eq!(a_server.parent_span_id_hex(), TEST_PARENT_SPAN);
    assert_eq!(a_client.parent_span_id_hex(), a_server.span_id_hex());
    assert_eq!(b_server.parent_span_id_hex(), a_client.span_id_hex());
    // The ids each server reported in the reply are the ids it exported.
    assert_eq!(reply.hops[0].span_id, a_server.span_id_hex());
    assert_eq!(reply.hops[1].span_id, b_server.span_id_hex());
    assert_eq!(a_server.span.name, "mlstack.diag.v1.Diag/Ping");
    // Resource attributes.
    for s in [a_server, a_client, b_server] {
        assert_eq!(s.service_name, "diag");
        assert!(
            !s.service_version.is_empty(),
            "service.version missing: {s:?}"
        );
    }
    assert_ne!(
        a_inst, b_inst,
        "service.instance.id must differ per process"
    );
}
