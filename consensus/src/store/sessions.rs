//! Client sessions: the request-deduplication table and its expiry.
//!
//! A client stamps each write with `(client_id, seq)`; the state machine
//! keeps the answer of each applied request so a retry gets the first answer
//! instead of a second application (Raft thesis §6.3, "Implementing
//! linearizable semantics"). Per client it keeps the last
//! [`DEDUP_WINDOW`] answers.
//!
//! Without expiry the table grows with every client id ever seen, and every
//! CLI invocation is a new client. As the thesis says, replicas must agree on
//! *when* a session expires, so expiry is itself a log entry: the leader
//! proposes `Op::ExpireSessions { before_index }` (the index it had applied
//! [`crate::NodeConfig::session_ttl`] ago), and every replica drops the
//! clients whose last command sits below that index, at the same point of
//! the log. No replica reads its own clock while applying. etcd does the
//! same for leases: the leader proposes the revocation.
//!
//! Two bounds, both decided in the log: the TTL above, and at most
//! [`MAX_SESSIONS`] clients (the least recently seen one is evicted when a
//! new client would exceed it).
//!
//! A retry that arrives after its client's session expired is applied again.
//! `kvclient` retries for seconds; the TTL is minutes.
//!
//! Keys: `d/<client u64 BE><seq u64 BE>` → the encoded answer;
//! `c/<client u64 BE>` → the log index of the client's last command (u64 BE).

use super::*;

/// The prefix of the per-client "last seen at log index" keys.
pub(super) const SESSION_PREFIX: &[u8] = b"c/";

/// At most this many clients keep deduplication state.
pub const MAX_SESSIONS: usize = 16_384;

/// The deduplication table, in memory (mirrors the `d/` and `c/` keys).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Per client: the seqs whose answers are kept.
    seqs: HashMap<u64, BTreeSet<u64>>,
    /// Per client: the log index of its last command.
    last_seen: HashMap<u64, u64>,
    /// `(last_seen, client)`, oldest first: eviction and expiry order.
    by_age: BTreeSet<(u64, u64)>,
}

pub(super) fn session_key(client: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(SESSION_PREFIX);
    k[2..].copy_from_slice(&client.to_be_bytes());
    k
}

impl Sessions {
    /// Rebuilds the table from the `d/` and `c/` keys of `entries`.
    pub(super) fn from_keys<'a>(entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut s = Sessions::default();
        for (k, v) in entries {
            if k.starts_with(DEDUP_PREFIX) && k.len() == 18 {
                let c = u64::from_be_bytes(k[2..10].try_into().unwrap_or_default());
                let seq = u64::from_be_bytes(k[10..18].try_into().unwrap_or_default());
                s.seqs.entry(c).or_default().insert(seq);
            } else if k.starts_with(SESSION_PREFIX) && k.len() == 10 && v.len() == 8 {
                let c = u64::from_be_bytes(k[2..10].try_into().unwrap_or_default());
                let at = u64::from_be_bytes(v.try_into().unwrap_or_default());
                s.last_seen.insert(c, at);
            }
        }
        // Clients with answers but no session key (state written before
        // sessions existed) count as last seen at index 0: the first expiry
        // takes them.
        for &c in s.seqs.keys() {
            s.last_seen.entry(c).or_insert(0);
        }
        s.by_age = s.last_seen.iter().map(|(&c, &at)| (at, c)).collect();
        s
    }

    /// Loads the table from the database.
    pub(super) fn load(db: &Db) -> Result<Self, std::io::Error> {
        let mut kvs = Vec::new();
        for prefix in [DEDUP_PREFIX, SESSION_PREFIX] {
            for kv in db
                .prefix(prefix, false, &ReadOptions::default())
                .map_err(io_err)?
            {
                kvs.push(kv.map_err(io_err)?);
            }
        }
        Ok(Self::from_keys(
            kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ))
    }

    pub(crate) fn clients(&self) -> usize {
        self.last_seen.len()
    }

    /// The log index of the least recently seen client's last command.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.by_age.first().map(|&(at, _)| at)
    }

    /// Was `id` applied (and is its answer still kept)?
    pub(super) fn contains(&self, id: RequestId) -> bool {
        self.seqs
            .get(&id.client_id)
            .is_some_and(|q| q.contains(&id.seq))
    }

    /// Is `id` older than every answer kept for its client, with the window
    /// full? Then it may have been applied and its answer pruned: refuse it
    /// rather than risk a second application.
    pub(super) fn is_pruned(&self, id: RequestId) -> bool {
        self.seqs
            .get(&id.client_id)
            .is_some_and(|q| q.len() >= DEDUP_WINDOW && q.first().is_some_and(|&f| id.seq < f))
    }

    /// Records that `id` was applied at log index `index` (its answer is put
    /// by the caller), pruning the client's window and evicting the least
    /// recently seen client past [`MAX_SESSIONS`] (returns how many).
    pub(super) fn record(&mut self, id: RequestId, index: u64, batch: &mut WriteBatch) -> usize {
        let c = id.client_id;
        if let Some(old) = self.last_seen.insert(c, index) {
            self.by_age.remove(&(old, c));
        }
        self.by_age.insert((index, c));
        batch.put(session_key(c), index.to_be_bytes());
        let q = self.seqs.entry(c).or_default();
        q.insert(id.seq);
        if q.len() > DEDUP_WINDOW
            && let Some(old) = q.pop_first()
        {
            batch.delete(dedup_key(RequestId {
                client_id: c,
                seq: old,
            }));
        }
        let mut evicted = 0;
        while self.last_seen.len() > MAX_SESSIONS {
            let Some(&(_, oldest)) = self.by_age.first() else {
                break;
            };
            self.forget(oldest, batch);
            evicted += 1;
        }
        evicted
    }

    /// Drops every client whose last command is below `before_index`.
    /// Returns how many.
    pub(super) fn expire_before(&mut self, before_index: u64, batch: &mut WriteBatch) -> usize {
        let old: Vec<u64> = self
            .by_age
            .iter()
            .take_while(|(at, _)| *at < before_index)
            .map(|&(_, c)| c)
            .collect();
        for &c in &old {
            self.forget(c, batch);
        }
        old.len()
    }

    fn forget(&mut self, c: u64, batch: &mut WriteBatch) {
        if let Some(at) = self.last_seen.remove(&c) {
            self.by_age.remove(&(at, c));
        }
        for seq in self.seqs.remove(&c).unwrap_or_default() {
            batch.delete(dedup_key(RequestId { client_id: c, seq }));
        }
        batch.delete(session_key(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client_id: u64, seq: u64) -> RequestId {
        RequestId { client_id, seq }
    }

    #[test]
    fn expiry_drops_old_clients_and_their_answers() {
        let mut s = Sessions::default();
        let mut b = WriteBatch::new();
        s.record(id(1, 1), 10, &mut b);
        s.record(id(2, 1), 20, &mut b);
        s.record(id(1, 2), 30, &mut b);
        assert_eq!(s.expire_before(25, &mut b), 1, "client 2 (seen at 20)");
        assert!(s.contains(id(1, 1)) && s.contains(id(1, 2)));
        assert!(!s.contains(id(2, 1)));
        assert_eq!(s.clients(), 1);
        assert_eq!(s.expire_before(31, &mut b), 1);
        assert_eq!(s.clients(), 0);
    }

    #[test]
    fn the_least_recently_seen_client_is_evicted_past_the_bound() {
        let mut s = Sessions::default();
        let mut b = WriteBatch::new();
        for c in 0..MAX_SESSIONS as u64 + 3 {
            s.record(id(c, 1), 100 + c, &mut b);
        }
        assert_eq!(s.clients(), MAX_SESSIONS);
        assert!(!s.contains(id(0, 1)) && !s.contains(id(2, 1)));
        assert!(s.contains(id(3, 1)));
    }

    #[test]
    fn rebuilt_from_keys_it_matches_and_legacy_clients_expire_first() {
        let mut live = Sessions::default();
        let mut b = WriteBatch::new();
        live.record(id(7, 1), 5, &mut b);
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (dedup_key(id(7, 1)).to_vec(), vec![1]),
            (session_key(7).to_vec(), 5u64.to_be_bytes().to_vec()),
            // An answer with no session key: written before sessions existed.
            (dedup_key(id(9, 4)).to_vec(), vec![1]),
        ];
        let mut s = Sessions::from_keys(kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert!(s.contains(id(7, 1)) && s.contains(id(9, 4)));
        assert_eq!(s.expire_before(1, &mut b), 1, "the legacy client, at 0");
        assert!(s.contains(id(7, 1)));
    }
}
