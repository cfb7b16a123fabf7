//! A trace store of the project's own: an OTLP/gRPC receiver that keeps
//! spans in the `storage` LSM, and the text view of one trace. It stands in
//! for Jaeger where none runs (the demo, the offline compose path), and the
//! cross-component tests read what the real exporters sent from it.
//!
//! - [`store`]: [`SpanStore`], spans keyed by trace id in an LSM database.
//! - [`receiver`]: [`Receiver`], the `TraceService/Export` server and the
//!   `/api/traces` query port.
//! - [`tree`]: [`TraceView`], one trace as a tree with links, durations and
//!   services (`mlstack trace show`).

pub mod receiver;
pub mod store;
pub mod tree;

pub use receiver::Receiver;
pub use store::{SpanStore, StoredSpan, TraceSummary, parse_trace_id};
pub use tree::{LinkView, SpanView, TraceView};
