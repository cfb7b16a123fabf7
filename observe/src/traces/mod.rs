//! A trace store of the project's own: spans kept in the `storage` LSM, and
//! the text view of one trace. The OTLP/gRPC receiver that fills it
//! (`proto::trace_receiver`, `mlstack trace serve`) stands in for Jaeger
//! where none runs (the demo, the offline compose path), and the
//! cross-component tests read what the real exporters sent from it.
//!
//! - [`store`]: [`SpanStore`], spans keyed by trace id in an LSM database.
//! - [`tree`]: [`TraceView`], one trace as a tree with links, durations and
//!   services (`mlstack trace show`).

pub mod store;
pub mod tree;

pub use store::{SpanStore, StoredSpan, TraceSummary, parse_trace_id};
pub use tree::{LinkView, SpanView, TraceView};
