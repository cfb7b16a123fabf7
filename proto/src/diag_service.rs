//! `mlstack.diag.v1.Diag`: a relayable ping, mounted by every mlstack gRPC
//! server ([`crate::server::GrpcServer`] adds it beside health and reflection).
//!
//! Each hop answers with its identity and the trace id it handled the request
//! in. Because the relay call goes through [`observe::grpc::InjectContext`] and
//! each server builds its span with [`observe::grpc::server_span`], a healthy
//! deployment reports one trace id across all hops: a one-command check that both
//! the servers and trace propagation work.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::diag::v1::diag_client::DiagClient;
use crate::diag::v1::diag_server::Diag;
use crate::diag::v1::{Hop, PingReply, PingRequest};

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
    /// Whether `forward_to` is honoured (off on TLS servers: a relay dials
    /// in plaintext, and would let any caller make the node dial anywhere).
    relay: bool,
}

impl DiagService {
    pub fn new(service: &str, instance_id: &str, address: SocketAddr) -> Self {
        LazyLock::force(&METRICS);
        Self {
            service: service.to_string(),
            instance_id: instance_id.to_string(),
            address: address.to_string(),
            relay: true,
        }
    }

    /// A `Diag` that answers pings but refuses to relay them.
    pub fn without_relay(mut self) -> Self {
        self.relay = false;
        self
    }

    async fn relay(&self, next: &str, request: PingRequest) -> Result<PingReply, Status> {
        let channel = crate::server::channel(next)
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
        if !self.relay && !request.forward_to.is_empty() {
            return Err(Status::permission_denied(
                "this server does not relay pings (it serves TLS: a relay would dial in plaintext)",
            ));
        }
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
