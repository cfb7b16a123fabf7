//! `mlstack_ingest_*` Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub records_in: IntCounter,
    pub bytes_in: IntCounter,
    pub dlq_records: IntCounterVec,
    pub files_written: IntCounter,
    pub file_bytes: IntCounter,
    pub rows_written: IntCounter,
    pub commit_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub e2e_latency_seconds: Histogram,
    pub replayed_skipped: IntCounter,
    pub fenced_commits: IntCounter,
    pub forced_rolls: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// Constant names and help strings: construction cannot fail.
impl Metrics {
    pub fn new() -> Self {
        let c = |n: &str, h: &str| {
            IntCounter::with_opts(Opts::new(n, h)).unwrap_or_else(|_| unreachable!())
        };
        let buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
        ];
        Self {
            records_in: c("mlstack_ingest_records_total", "Kafka records consumed."),
            bytes_in: c("mlstack_ingest_bytes_total", "Payload bytes consumed."),
            dlq_records: IntCounterVec::new(
                Opts::new(
                    "mlstack_ingest_dlq_records_total",
                    "Records sent to the dead-letter topic, by reason.",
                ),
                &["reason"],
            )
            .unwrap_or_else(|_| unreachable!()),
            files_written: c(
                "mlstack_ingest_files_written_total",
                "Parquet part files committed.",
            ),
            file_bytes: c(
                "mlstack_ingest_file_bytes_total",
                "Bytes of committed Parquet files.",
            ),
            rows_written: c(
                "mlstack_ingest_rows_written_total",
                "Rows in committed Parquet files.",
            ),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "mlstack_ingest_commit_latency_seconds",
                    "Close + fsync + rename + manifest + Kafka offset commit of one file.",
                )
                .buckets(buckets.clone()),
            )
            .unwrap_or_else(|_| unreachable!()),
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "mlstack_ingest_consumer_lag",
                    "Records behind the partition's high watermark (librdkafka statistics).",
                ),
                &["topic", "partition"],
            )
            .unwrap_or_else(|_| unreachable!()),
            e2e_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "mlstack_ingest_end_to_end_latency_seconds",
                    "Record timestamp to the commit of the file holding it.",
                )
                .buckets(buckets),
            )
            .unwrap_or_else(|_| unreachable!()),
            replayed_skipped: c(
                "mlstack_ingest_replayed_records_skipped_total",
                "Records below the manifest's next offset (already in a committed file) skipped on replay.",
            ),
            fenced_commits: c(
                "mlstack_ingest_fenced_commits_total",
                "Commits refused because another consumer claimed the partition since (this one was a zombie); their files were dropped.",
            ),
            forced_rolls: c(
                "mlstack_ingest_forced_rolls_total",
                "Partitions rolled early because a record's date would have opened more than the bound of open files per partition.",
            ),
        }
    }

    pub fn register(&self) -> Result<(), observe::Error> {
        observe::metrics::register(self.records_in.clone())?;
        observe::metrics::register(self.bytes_in.clone())?;
        observe::metrics::register(self.dlq_records.clone())?;
        observe::metrics::register(self.files_written.clone())?;
        observe::metrics::register(self.file_bytes.clone())?;
        observe::metrics::register(self.rows_written.clone())?;
        observe::metrics::register(self.commit_seconds.clone())?;
        observe::metrics::register(self.consumer_lag.clone())?;
        observe::metrics::register(self.e2e_latency_seconds.clone())?;
        observe::metrics::register(self.replayed_skipped.clone())?;
        observe::metrics::register(self.fenced_commits.clone())?;
        observe::metrics::register(self.forced_rolls.clone())?;
        Ok(())
    }
}
