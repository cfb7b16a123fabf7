//! Graceful shutdown on SIGINT (Ctrl-C) or SIGTERM (what `docker stop`, systemd
//! and Kubernetes send). Components stop accepting work, drain what is in flight,
//! then flush spans with [`crate::Telemetry::shutdown`].

/// Resolves on the first SIGINT or SIGTERM. If a signal handler cannot be
/// installed (which only happens when the process is out of resources), the
/// corresponding branch never resolves and the error is logged.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "installing the SIGINT handler");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "installing the SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
        _ = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
    }
}
