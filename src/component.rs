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
//!
//! [`probe`] is the other side of step 1: `mlstack health`, the containers'
//! health check (the images carry no curl).

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

/// `mlstack health`: GET `url` within `timeout`; `Ok` on a 2xx answer. The
/// error names the status and the first line of the body (`/readyz` says
/// `not ready`).
pub async fn probe(url: &str, timeout: std::time::Duration) -> Result<(), Error> {
    let http = |reason: String| Error::Http {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| http(e.to_string()))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        println!("{status}: {}", body.lines().next().unwrap_or(""));
        Ok(())
    } else {
        Err(http(format!(
            "{status}: {}",
            body.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>()
        )))
    }
}
