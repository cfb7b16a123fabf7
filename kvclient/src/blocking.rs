//! The client for synchronous callers.
//!
//! Some callers cannot `.await`: ingest's manifest is called from librdkafka's
//! rebalance callbacks, which run inside the consumer's poll on a runtime
//! worker. Blocking on the caller's runtime there would panic ("cannot start a
//! runtime from within a runtime"), so, as `reqwest::blocking` does, this
//! client owns a small runtime of its own: a call spawns the async
//! [`crate::Client`]'s future onto it and waits on a channel for the answer.
//! The retry rules, leader hints and request ids are the async client's; there
//! is no second implementation of them here.

use std::future::Future;
use std::sync::Arc;

use crate::error::ClientError;

/// A blocking handle on [`crate::Client`]. Calls may come from any thread,
/// including a thread of another tokio runtime.
#[derive(Debug)]
pub struct Client {
    inner: Arc<crate::Client>,
    /// Dropped with `shutdown_background` (a plain drop blocks, which panics
    /// when the owner is dropped inside another runtime).
    rt: Option<tokio::runtime::Runtime>,
}

impl Client {
    /// A client over `endpoints` (`host:port`), any of the cluster's nodes.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self, ClientError> {
        Self::with_timeouts(endpoints, crate::Timeouts::default())
    }

    /// [`Client::new`] with the async client's time limits set.
    pub fn with_timeouts<S: AsRef<str>>(
        endpoints: &[S],
        timeouts: crate::Timeouts,
    ) -> Result<Self, ClientError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kv-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime {
                reason: format!("starting the runtime: {e}"),
            })?;
        // The channels' connection tasks are spawned onto this runtime.
        let inner = {
            let _guard = rt.enter();
            crate::Client::new(endpoints)?.with_timeouts(timeouts)
        };
        Ok(Self {
            inner: Arc::new(inner),
            rt: Some(rt),
        })
    }

    /// The async client underneath (its settings, its client id).
    pub fn inner(&self) -> &crate::Client {
        &self.inner
    }

    /// Runs `call` on the client's runtime and blocks until it answers.
    pub fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(Arc<crate::Client>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(rt) = self.rt.as_ref() else {
            return Err(ClientError::Runtime {
                reason: "the client was shut down".into(),
            });
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = call(self.inner.clone());
        // The caller's span goes with the call: a task spawned on another
        // runtime has no current span of its own, and the trace context the
        // client injects into each request (`traceparent`) comes from it, so
        // without this the servers' spans would start traces of their own.
        let span = tracing::Span::current();
        rt.spawn(tracing::Instrument::instrument(
            async move {
                let _ = tx.send(fut.await);
            },
            span,
        ));
        rx.recv().map_err(|_| ClientError::Runtime {
            reason: "the runtime stopped before the call answered".into(),
        })?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A call from inside another runtime (where `block_on` would panic)
    /// runs the async client's retry loop and returns its error.
    #[test]
    fn a_call_from_inside_a_runtime_gets_the_async_clients_answer() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        outer.block_on(async {
            let timeouts = crate::Timeouts {
                attempt: Duration::from_millis(100),
                overall: Duration::from_millis(300),
                backoff: Duration::from_millis(10),
            };
            // Nothing listens on loopback port 9: every attempt fails.
            let c = Client::with_timeouts(&["127.0.0.1:9"], timeouts).expect("client");
            let t0 = Instant::now();
            let err = c
                .call(|c| async move { c.put(b"k", b"v").await })
                .expect_err("no server");
            assert!(
                matches!(err, ClientError::Unavailable { attempts, .. } if attempts > 1),
                "{err:?}"
            );
            assert!(t0.elapsed() < Duration::from_secs(5));
            drop(c); // inside a runtime: must not panic
        });
    }
}
