//! `mlstack.diag.v1.Diag`: a relayable ping, mounted by every mlstack server.
//!
//! Each hop answers with its identity and the trace id it handled the request
//! in. Because the relay call goes through [`observe::grpc::InjectContext`] and
//! each server builds its span with [`observe::grpc::server_span`], a healthy
//! deployment reports one trace id across all hops: a one-command check that both
//! the servers and trace propagation work.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use proto::diag::v1::diag_client::DiagClient;
use proto::diag::v1::diag_server::{Diag, DiagServer};
use proto::diag::v1::{Hop, PingReply, PingRequest};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::Error;
use crate::cli::{DiagPingArgs, DiagServeArgs};

/// Largest payload a ping may carry.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest relay chain a ping may ask for.
pub const MAX_FORWARD_HOPS: usize = 8;

struct DiagMetrics {
    pings_total: IntCounterVec,
    ping_duration_seconds: HistogramVec,
}

/// Registered once per process: several servers in one process (the demo, tests)
/// share the series and tell themselves apart by the `service` label.
static METRICS: LazyLock<DiagMetrics> = LazyLock::new(|| {
    let pings_total = IntCounterVec::new(
        Opts::new(
            "mlstack_diag_pings_total",
            "Diag.Ping requests answered, by outcome.",
        ),
        &["service", "outcome"],
    )
    .and_then(|c| {
        observe::registry().register(Box::new(c.clone()))?;
        Ok(c)
    });
    let ping_duration_seconds = HistogramVec::new(
        HistogramOpts::new(
            "mlstack_diag_ping_duration_seconds",
            "Diag.Ping latency at the server, relays included.",
        )
        .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10).unwrap_or_default()),
        &["service"],
    )
    .and_then(|h| {
        observe::registry().register(Box::new(h.clone()))?;
        Ok(h)
    });
    match (pings_total, ping_duration_seconds) {
        (Ok(pings_total), Ok(ping_duration_seconds)) => DiagMetrics {
            pings_total,
            ping_duration_seconds,
        },
        // The names are constants and registered only here, so this is a
        // programming error (e.g. a second LazyLock with the same name).
        (Err(e), _) | (_, Err(e)) => panic!("registering diag metrics: {e}"),
    }
});

/// The Diag service of one server process.
#[derive(Clone, Debug)]
pub struct DiagService {
    service: String,
    instance_id: String,
    address: String,
}

impl DiagService {
    pub fn new(service: &str, instance_id: &str, address: SocketAddr) -> Self {
        LazyLock::force(&METRICS);
        Self {
            service: service.to_string(),
            instance_id: instance_id.to_string(),
            address: address.to_string(),
        }
    }

    async fn relay(&self, next: &str, request: PingRequest) -> Result<PingReply, Status> {
        let channel = proto::server::channel(next)
            .map_err(|e| Status::invalid_argument(format!("forward_to: {e}")))?;
        let mut client = DiagClient::with_interceptor(channel, observe::grpc::InjectContext);
        // The client span makes the next hop's server span a child of *this call*,
        // not of our whole handler: the trace then shows the relay as its own step.
        let span = observe::grpc::client_span("mlstack.diag.v1.Diag", "Ping");
        async move { client.ping(request).await }
            .instrument(span)
            .await
            .map(Response::into_inner)
            .map_err(|s| Status::unavailable(format!("relaying to {next}: {}", s.message())))
    }
}

#[tonic::async_trait]
impl Diag for DiagService {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let started = Instant::now();
        let result = self.ping_inner(request.into_inner()).await;
        let m = &*METRICS;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        m.pings_total
            .with_label_values(&[&self.service, outcome])
            .inc();
        m.ping_duration_seconds
            .with_label_values(&[&self.service])
            .observe(started.elapsed().as_secs_f64());
        result.map(Response::new)
    }
}

impl DiagService {
    async fn ping_inner(&self, request: PingRequest) -> Result<PingReply, Status> {
        if request.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Status::invalid_argument(format!(
                "payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                request.payload.len()
            )));
        }
        if request.forward_to.len() > MAX_FORWARD_HOPS {
            return Err(Status::invalid_argument(format!(
                "forward_to has {} hops; the limit is {MAX_FORWARD_HOPS}",
                request.forward_to.len()
            )));
        }
        let me = Hop {
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
            trace_id: observe::current_trace_id().unwrap_or_default(),
            span_id: observe::current_span_id().unwrap_or_default(),
            address: self.address.clone(),
        };
        tracing::debug!(trace_id = %me.trace_id, forward = ?request.forward_to, "ping");
        let mut forward = request.forward_to.into_iter();
        match forward.next() {
            None => Ok(PingReply {
                payload: request.payload,
                hops: vec![me],
            }),
            Some(next) => {
                let downstream = self
                    .relay(
                        &next,
                        PingRequest {
                            payload: request.payload,
                            forward_to: forward.collect(),
                        },
                    )
                    .await?;
                let mut hops = Vec::with_capacity(downstream.hops.len() + 1);
                hops.push(me);
                hops.extend(downstream.hops);
                Ok(PingReply {
                    payload: downstream.payload,
                    hops,
                })
            }
        }
    }
}

/// A Diag gRPC server (with health and reflection) running on a task.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight calls finish, and waits.
    pub async fn stop(self) -> Result<(), Error> {
        self.stop.cancel();
        let addr = self.addr.to_string();
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Serve {
                what: "gRPC server",
                addr,
                reason: e.to_string(),
            }),
            Err(e) => Err(Error::Serve {
                what: "gRPC server task",
                addr,
                reason: e.to_string(),
            }),
        }
    }
}

/// Binds `listen` and serves Diag + health + reflection until [`RunningServer::stop`].
pub async fn spawn_server(
    listen: SocketAddr,
    service: &str,
    instance_id: &str,
) -> Result<RunningServer, Error> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Serve {
            what: "binding gRPC",
            addr: listen.to_string(),
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Serve {
        what: "reading bound address",
        addr: listen.to_string(),
        reason: e.to_string(),
    })?;
    let (mut routes, health) = proto::server::standard_routes()?;
    let diag = DiagServer::new(DiagService::new(service, instance_id, addr));
    routes.add_service(diag);
    health.set_serving::<DiagServer<DiagService>>().await;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    // TCP_NODELAY: a unary gRPC reply is small; without it Nagle's algorithm
    // holds it until the client's delayed ACK (~40 ms per hop on Linux).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(observe::grpc::server_span)
            .timeout(Duration::from_secs(30))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned()),
    );
    tracing::info!(%addr, service, "gRPC server listening");
    Ok(RunningServer {
        addr,
        health,
        stop,
        task,
    })
}

/// `mlstack diag serve`: serves until SIGINT/SIGTERM, then drains.
pub async fn serve_until_signal(
    args: &DiagServeArgs,
    telemetry: &observe::Telemetry,
) -> Result<(), Error> {
    let readiness = observe::Readiness::new();
    let metrics = observe::MetricsServer::start(
        args.metrics_listen,
        observe::registry().clone(),
        readiness.clone(),
    )
    .await?;
    let server = spawn_server(args.listen, telemetry.service(), telemetry.instance_id()).await?;
    readiness.set_ready(true);
    // One machine-readable line so scripts and tests learn the bound ports.
    println!(
        "{}",
        serde_json::json!({
            "grpc": server.addr.to_string(),
            "metrics": metrics.local_addr().to_string(),
            "instance_id": telemetry.instance_id(),
        })
    );
    observe::shutdown_signal().await;
    // Order: stop being ready (load balancers drain), stop the server (in-flight
    // calls finish), then the caller flushes spans.
    readiness.set_ready(false);
    let served = server.stop().await;
    metrics.stop().await;
    served
}

/// Sends one ping (optionally relayed) and returns the reply. The call runs in
/// a client span, so the whole chain shares the caller's trace.
pub async fn ping(
    endpoint: &str,
    via: &[String],
    payload: &str,
    timeout: Duration,
) -> Result<PingReply, Error> {
    let channel = proto::server::channel(endpoint)?;
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
