//! The life of a component process, written once for every long-running
//! `mlstack` command (`kv serve`, `infer serve`, `ingest run`, `diag serve`):
//!
//! 1. `/metrics`, `/healthz` and `/readyz` come up first, not ready, so a
//!    probe can watch the start-up;
//! 2. the command starts its servers (a gRPC server through
//!    [`proto::server::GrpcServer`]), then [`Component::ready`] flips
//!    `/readyz` and prints one JSON line with the bound ports (scripts and
//!    tests read it: ports may be the OS's choice);
//! 3. [`Component::wait_for_signal`] returns on SIGINT/SIGTERM having marked
//!    the process not ready, so load balancers stop sending before the
//!    servers drain;
//! 4. the command stops its servers, then [`Component::stop`] stops the
//!    metrics server, and the caller flushes spans.

use std::net::SocketAddr;

use crate::Error;

/// The process-level half of a running component: readiness and metrics.
#[derive(Debug)]
pub struct Component {
    readiness: observe::Readiness,
    metrics: observe::MetricsServer,
}

impl Component {
    /// Serves `/metrics`, `/healthz` and `/readyz` (503 until [`Component::ready`]).
    pub async fn start(metrics_listen: SocketAddr) -> Result<Self, Error> {
        let readiness = observe::Readiness::new();
        let metrics = observe::MetricsServer::start(
            metrics_listen,
            observe::registry().clone(),
            readiness.clone(),
        )
        .await?;
        Ok(Self { readiness, metrics })
    }

    /// The bound address of `/metrics`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr()
    }

    /// Marks the process ready and prints its one machine-readable line:
    /// `ports` (a JSON object) with `"metrics"` added.
    pub fn ready(&self, mut ports: serde_json::Value) {
        if let Some(o) = ports.as_object_mut() {
            o.insert("metrics".into(), self.metrics_addr().to_string().into());
        }
        self.readiness.set_ready(true);
        println!("{ports}");
    }

    /// Waits for SIGINT or SIGTERM, then marks the process not ready.
    pub async fn wait_for_signal(&self) {
        observe::shutdown_signal().await;
        self.readiness.set_ready(false);
        tracing::info!("shutting down");
    }

    /// Stops the metrics server (last: it reports the shutdown too).
    pub async fn stop(self) {
        self.readiness.set_ready(false);
        self.metrics.stop().await;
    }
}
