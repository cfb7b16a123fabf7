//! # stream: Kafka to Parquet, exactly once
//!
//! DDIA chapter 11 ("Stream Processing"): a consumer-group consumer (`rdkafka`)
//! that decodes JSON records into Arrow batches and writes rolling Parquet files,
//! committing files, then the manifest, then Kafka offsets, so a crash at any
//! point neither loses nor duplicates a record.
//!
//! Status: not built yet; issue #5 specifies it.
