//! The trace receiver the cross-component tests read: the project's own
//! (`observe::traces::Receiver`, what `mlstack trace serve` runs), on a free
//! port with its store in a temporary directory. The processes under test
//! export to it with their real batching OTLP exporters.

pub use observe::traces::StoredSpan as ReceivedSpan;

/// A running receiver; spans accumulate until read.
#[derive(Debug)]
pub struct Receiver {
    inner: Option<observe::traces::Receiver>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir for the trace store");
        let store = observe::traces::SpanStore::open(dir.path()).expect("opening the trace store");
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let inner = observe::traces::Receiver::start(any, None, store)
            .await
            .expect("starting the OTLP receiver");
        Receiver {
            inner: Some(inner),
            _dir: dir,
        }
    }

    fn inner(&self) -> &observe::traces::Receiver {
        self.inner.as_ref().expect("receiver running")
    }

    pub fn endpoint(&self) -> String {
        self.inner().endpoint()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.inner().store().all().expect("reading the trace store")
    }
}
