//! The trace receiver the cross-component tests read: the project's own
//! (`proto::trace_receiver::TraceReceiver`, what `mlstack trace serve` runs),
//! on a free port with its store in a temporary directory. The processes
//! under test export to it with their real batching OTLP exporters.

pub use observe::traces::StoredSpan as ReceivedSpan;

/// A running receiver; spans accumulate until read. Dropping it stops the
/// receiver before its directory is removed.
#[derive(Debug)]
pub struct Receiver {
    inner: proto::trace_receiver::TraceReceiver,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir for the trace store");
        let store = observe::traces::SpanStore::open(dir.path()).expect("opening the trace store");
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let inner = proto::trace_receiver::TraceReceiver::start(any, None, store, None)
            .await
            .expect("starting the OTLP receiver");
        Receiver { inner, _dir: dir }
    }

    pub fn endpoint(&self) -> String {
        self.inner.endpoint()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.inner.store().all().expect("reading the trace store")
    }
}
