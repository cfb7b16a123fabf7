//! # storage: a log-structured merge-tree key-value engine
//!
//! DDIA chapter 3 ("Storage and Retrieval") as a running engine: writes go to a
//! write-ahead log and an in-memory table, which is flushed to sorted, immutable
//! files (SSTables) and merged in the background by leveled compaction. It is the
//! log and state-machine store under every Raft node of `consensus`.
//!
//! Status: not built yet; issue #3 specifies it.
