//! `mlstack diag serve|ping`: a server with only the standard services, and
//! the client of `mlstack.diag.v1.Diag` (the service itself is
//! `proto::diag_service`, mounted by every mlstack gRPC server), which relays
//! a ping through a chain of servers and prints each hop's trace and span id.

use std::time::{Duration, Instant};

use futures::FutureExt;
use proto::diag::v1::diag_client::DiagClient;
use proto::diag::v1::{PingReply, PingRequest};
use proto::server::GrpcServer;
use tonic::{Request, Response};
use tracing::Instrument;

use crate::Error;
use crate::cli::{DiagPingArgs, DiagServeArgs};
use crate::component::Component;

/// The longest a relayed ping may take at a `diag serve` server (each hop's
/// own call carries the caller's deadline too).
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(30);

/// `mlstack diag serve`: a gRPC server with only the standard services
/// (health, reflection, `Diag`), until SIGINT/SIGTERM, then drains.
pub async fn serve_until_signal(
    args: &DiagServeArgs,
    telemetry: &observe::Telemetry,
) -> Result<(), Error> {
    // A bad certificate or key fails here, naming the file, before any port
    // is bound.
    let tls = crate::server_tls(&args.tls_cert, &args.tls_key)?;
    let component = Component::start(args.metrics_listen).await?;
    let server = GrpcServer::start_tls(
        args.listen,
        telemetry.service(),
        Some(RELAY_TIMEOUT),
        tls.as_ref(),
        |_| {},
    )
    .await?;
    component.ready(serde_json::json!({
        "grpc": server.addr.to_string(),
        "instance_id": telemetry.instance_id(),
        "tls": if tls.is_some() { "on" } else { "off" },
    }));
    component.wait_for_signal().await;
    let served = server.stop().await;
    component.stop().await;
    Ok(served?)
}

/// Sends one ping (optionally relayed) and returns the reply. The call runs in
/// a client span, so the whole chain shares the caller's trace.
pub async fn ping(
    endpoint: &str,
    via: &[String],
    payload: &str,
    timeout: Duration,
    ca: Option<&std::path::Path>,
) -> Result<PingReply, Error> {
    let tls = crate::client_tls(ca)?;
    let channel = proto::server::channel_tls(endpoint, tls.as_ref())?;
    let mut client = DiagClient::with_interceptor(channel, observe::grpc::InjectContext);
    let mut request = Request::new(PingRequest {
        payload: payload.to_string(),
        forward_to: via.to_vec(),
    });
    request.set_timeout(timeout);
    let span = observe::grpc::client_span("mlstack.diag.v1.Diag", "Ping");
    async move { client.ping(request).await }
        .instrument(span)
        .map(|r| r.map(Response::into_inner))
        .await
        .map_err(|s| Error::rpc("Diag.Ping", endpoint, s))
}

/// `mlstack diag ping`.
pub async fn ping_command(args: &DiagPingArgs) -> Result<(), Error> {
    let started = Instant::now();
    let reply = ping(
        &args.endpoint,
        &args.via,
        &args.payload,
        Duration::from_secs_f64(args.timeout.max(0.001)),
        args.ca.as_deref(),
    )
    .await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let hops: Vec<_> = reply
            .hops
            .iter()
            .map(|h| {
                serde_json::json!({
                    "service": h.service, "instance_id": h.instance_id,
                    "address": h.address, "trace_id": h.trace_id, "span_id": h.span_id,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"payload": reply.payload, "round_trip_ms": elapsed_ms, "hops": hops})
        );
    } else {
        println!("reply {:?} in {elapsed_ms:.2} ms", reply.payload);
        for (i, h) in reply.hops.iter().enumerate() {
            println!(
                "  hop {i}: {}@{} instance {} trace {} span {}",
                h.service, h.address, h.instance_id, h.trace_id, h.span_id
            );
        }
    }
    Ok(())
}
