//! Topic administration over the Kafka protocol: create a topic (the
//! `kafka-topics.sh --create --if-not-exists` of a compose stack's init job)
//! and read each partition's high watermark (how far a sink must get to be
//! caught up, as Kafka Connect's lag is measured).
//!
//! Both go through librdkafka's admin and consumer clients, so they work
//! against any Kafka-protocol broker (Apache Kafka, tansu).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result, kafka};

/// What `create` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The topic was there already (its partition count is not changed).
    Existed,
}

/// Creates `topic` with `partitions` partitions and `replication` replicas;
/// a topic that exists already is not an error (`--if-not-exists`).
pub async fn create(
    brokers: &str,
    topic: &str,
    partitions: u32,
    replication: u32,
    timeout: Duration,
) -> Result<Created> {
    let partitions_i32 = i32::try_from(partitions)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| Error::Config {
            reason: format!("--partitions {partitions}: must be 1 to {}", i32::MAX),
        })?;
    let replication_i32 = i32::try_from(replication)
        .ok()
        .filter(|r| *r >= 1)
        .ok_or_else(|| Error::Config {
            reason: format!("--replication {replication}: must be 1 to {}", i32::MAX),
        })?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(kafka("create admin client"))?;
    let new = NewTopic::new(
        topic,
        partitions_i32,
        TopicReplication::Fixed(replication_i32),
    );
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new()
                .operation_timeout(Some(timeout))
                .request_timeout(Some(timeout)),
        )
        .await
        .map_err(kafka("create topic"))?;
    // One topic asked for, one result.
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(Created::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Created::Existed),
        // The broker's answer (not ready, no controller yet, ...): a Kafka
        // error, which a caller may retry; bad arguments are `Config`.
        Some(Err((_, code))) => Err(Error::Kafka {
            op: "create topic",
            source: rdkafka::error::KafkaError::AdminOp(code),
        }),
        None => Err(Error::Kafka {
            op: "create topic (no result for the topic)",
            source: rdkafka::error::KafkaError::AdminOp(RDKafkaErrorCode::Unknown),
        }),
    }
}

/// Per partition of `topic`: the high watermark (the offset the next record
/// will get). Fails when the topic does not exist.
pub fn high_watermarks(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(kafka("create consumer"))?;
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka("fetch metadata"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::Config {
            reason: format!("topic {topic:?} is not in {brokers}'s metadata"),
        })?;
    if let Some(e) = t.error() {
        return Err(Error::Config {
            reason: format!(
                "topic {topic:?} at {brokers}: {:?}",
                RDKafkaErrorCode::from(e)
            ),
        });
    }
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let (_low, high) = c
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(kafka("fetch watermarks"))?;
        out.insert(p.id(), high);
    }
    if out.is_empty() {
        return Err(Error::Config {
            reason: format!("topic {topic:?} at {brokers} has no partitions"),
        });
    }
    Ok(out)
}
