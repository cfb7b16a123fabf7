//! The leader's half of client-session expiry (the replicas' half is
//! `store/sessions.rs`).
//!
//! Replicas must forget a client at the same point of the log, so none of
//! them may consult its own clock while applying. The leader alone turns
//! time into a log index: every `ttl / 4` it samples `(now, applied index)`,
//! and once a sample is `ttl` old, its index is the boundary: a client
//! whose last command sits below it has been silent for at least `ttl`. The
//! leader then proposes `Op::ExpireSessions { before_index }`, which every
//! replica applies identically. A new leader starts with no samples, so it
//! waits a full `ttl` before expiring anything (late, never early).

use crate::store::Shared;
use crate::types::{Command, Op, Raft};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Runs until `stop`: proposes session expiries while this node leads.
pub async fn expire_sessions(
    raft: Raft,
    shared: Arc<Shared>,
    ttl: Duration,
    stop: CancellationToken,
) {
    let period = (ttl / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (when, applied index then), oldest first; only while leading.
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut proposed = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            samples.clear();
            continue;
        }
        let now = Instant::now();
        samples.push_back((now, shared.applied_index()));
        // The newest sample at least `ttl` old is the boundary.
        let mut before = None;
        while let Some(&(t, index)) = samples.front() {
            if now.duration_since(t) < ttl {
                break;
            }
            before = Some(index);
            samples.pop_front();
        }
        let Some(before) = before else { continue };
        let stale = shared.oldest_session().is_some_and(|at| at < before);
        if before <= proposed || !stale {
            continue;
        }
        let cmd = Command {
            request_id: None,
            op: Op::ExpireSessions {
                before_index: before,
            },
            trace: Vec::new(),
        };
        match raft.client_write(cmd).await {
            Ok(_) => proposed = before,
            // Lost leadership or shutting down: the next leader takes over.
            Err(e) => tracing::debug!(error = %e, "proposing session expiry"),
        }
    }
}
