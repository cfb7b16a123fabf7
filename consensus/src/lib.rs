//! # consensus: a Raft-replicated key-value cluster
//!
//! DDIA chapters 5 ("Replication") and 9 ("Consistency and Consensus") as a
//! running cluster: Raft (`openraft`) over gRPC, with the `storage` LSM under
//! each node, a linearizable client API and chaos drills checked by a
//! linearizability checker. The stack's metadata store, as etcd is Kubernetes'.
//!
//! Status: not built yet; issue #4 specifies it.
