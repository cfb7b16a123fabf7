//! Producer-controlled timestamps (issue 15, section 3): records whose
//! timestamps alternate between days used to close a file per record (a new
//! date rolled the partition's one open file). Now a partition keeps up to
//! `max_open_files_per_partition` files open, one per date, committed
//! together; a date beyond the bound rolls them all first. In process,
//! against a tansu broker, with the local manifest.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, StringArray};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use stream::broker::Tansu;
use stream::ingest::IngestConfig;
use stream::manifest::{LOCAL_MANIFEST, LocalManifest, read_local};

const DAY_MS: i64 = 86_400_000;

/// Day 0's timestamp: two days ago (recent, so no broker retention applies).
fn base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| chrono::Utc::now().timestamp_millis() - 2 * DAY_MS)
}

/// Produces `n` records to partition 0 of `topic`; record `i` has id `r<i>`
/// and the Kafka timestamp of day `i % days` after [`base_ms`].
async fn produce(brokers: &str, topic: &str, n: usize, days: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in 0..n {
        let ts = base_ms() + (i % days) as i64 * DAY_MS;
        let payload = format!(r#"{{"id":"r{i}","text":"record {i}","ts":{ts}}}"#);
        p.send(
            FutureRecord::<str, str>::to(topic)
                .partition(0)
                .timestamp(ts)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("send");
    }
}

/// Ingests `topic` into `out` until the manifest holds `n` rows.
async fn ingest(
    brokers: &str,
    topic: &str,
    out: &Path,
    n: u64,
    bound: usize,
) -> stream::ingest::Summary {
    let mut cfg = IngestConfig::new(brokers, topic, "dates", out.to_path_buf());
    cfg.assign_all = true;
    cfg.roll.max_age = Duration::from_millis(300);
    cfg.max_open_files_per_partition = bound;
    let manifest = Box::new(LocalManifest::open(out).expect("manifest"));
    let done_out = out.to_path_buf();
    let stop = async move {
        let t0 = std::time::Instant::now();
        while read_local(&done_out).map(|s| s.rows()).unwrap_or(0) < n {
            assert!(t0.elapsed() < Duration::from_secs(120), "ingest stalled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    stream::ingest::run(cfg, manifest, stream::metrics::Metrics::new(), stop)
        .await
        .expect("ingest")
}

/// Each commit's (files, first offset, last offset), from the manifest's lines.
fn commits(out: &Path) -> Vec<(usize, i64, i64)> {
    let text = std::fs::read_to_string(out.join(LOCAL_MANIFEST)).expect("manifest");
    text.lines()
        .map(|l| {
            let json = l.split_once(' ').expect("crc json").1;
            let v: serde_json::Value = serde_json::from_str(json).expect("json");
            let files = match v {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            };
            let first = files
                .iter()
                .map(|f| f["first_offset"].as_i64().unwrap_or(-1))
                .min();
            let last = files
                .iter()
                .map(|f| f["last_offset"].as_i64().unwrap_or(-1))
                .max();
            (files.len(), first.unwrap_or(-1), last.unwrap_or(-1))
        })
        .collect()
}

/// Every id in the listed files, each checked to sit under its day's date.
fn listed_ids(out: &Path, days: usize) -> BTreeMap<String, u32> {
    let mut ids = BTreeMap::new();
    for f in read_local(out).expect("manifest").files {
        let bytes = std::fs::read(out.join(&f.path)).expect("listed file exists");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .expect("parquet")
        .build()
        .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let col = batch
                .column_by_name("id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("id column")
                .clone();
            for i in 0..col.len() {
                let id = col.value(i).to_string();
                let n: usize = id[1..].parse().expect("r<i>");
                let ts = base_ms() + (n % days) as i64 * DAY_MS;
                let date = stream::writer::date_of(ts);
                assert!(
                    f.path.contains(&format!("date={date}/")),
                    "{id} (day {date}) is in {}",
                    f.path
                );
                *ids.entry(id).or_insert(0) += 1;
            }
        }
    }
    ids
}

fn assert_contiguous(c: &[(usize, i64, i64)], n: i64) {
    assert_eq!(c.first().map(|x| x.1), Some(0));
    for w in c.windows(2) {
        assert_eq!(
            w[1].1,
            w[0].2 + 1,
            "commits {:?} and {:?} are not contiguous",
            w[0],
            w[1]
        );
    }
    assert_eq!(c.last().map(|x| x.2), Some(n - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_days_keep_files_few_and_beyond_the_bound_roll_the_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Tansu::start(&dir.path().join("broker"))
        .expect("tansu starts (scripts/test.sh installs it)");

    // Two days, alternating record by record, under the default bound.
    const N: usize = 2_000;
    b.create_topic("alt", 1).expect("topic");
    b.create_topic("alt.dlq", 1).expect("dlq topic");
    produce(&b.addr, "alt", N, 2).await;
    let out = dir.path().join("alt");
    let s = ingest(
        &b.addr,
        "alt",
        &out,
        N as u64,
        stream::ingest::DEFAULT_MAX_OPEN_FILES_PER_PARTITION,
    )
    .await;
    let c = commits(&out);
    let files: usize = c.iter().map(|x| x.0).sum();
    eprintln!("alternating: {files} files in {} commits; {s:?}", c.len());
    assert!(
        c.iter().all(|x| x.0 <= 2),
        "a commit with more than two dates: {c:?}"
    );
    assert!(files <= 40, "{files} files for {N} records over two days");
    assert_eq!(s.forced_rolls, 0);
    assert_contiguous(&c, N as i64);
    let ids = listed_ids(&out, 2);
    assert_eq!(ids.len(), N);
    assert!(ids.values().all(|n| *n == 1));

    // Three days cycling under a bound of two: every third record's date
    // finds two files open, rolls them and opens its own.
    const M: usize = 300;
    b.create_topic("cyc", 1).expect("topic");
    b.create_topic("cyc.dlq", 1).expect("dlq topic");
    produce(&b.addr, "cyc", M, 3).await;
    let out = dir.path().join("cyc");
    let s = ingest(&b.addr, "cyc", &out, M as u64, 2).await;
    let c = commits(&out);
    eprintln!("cycling: {} commits; {s:?}", c.len());
    assert!(
        c.iter().all(|x| x.0 <= 2),
        "a commit with more files than the bound: {c:?}"
    );
    assert!(s.forced_rolls >= (M / 3 - 1) as u64, "{s:?}");
    assert_contiguous(&c, M as i64);
    let ids = listed_ids(&out, 3);
    assert_eq!(ids.len(), M);
    assert!(ids.values().all(|n| *n == 1));
}
