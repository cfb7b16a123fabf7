//! A member's address as the membership stores it: `CLIENT`, where the
//! client API and the Raft transport share one port, or `CLIENT+PEER`, where
//! Raft has a port of its own (etcd's `--listen-peer-urls` beside
//! `--listen-client-urls`; its member records hold both URL lists).
//!
//! Both halves live in the one string of openraft's `BasicNode`, so the
//! stored membership format is unchanged and a member written before peer
//! ports existed reads as one port. Raft dials [`peer_of`]; clients are sent
//! to [`client_of`] (leader hints, `Status.leader_address`).

/// Separates the client and the peer address.
pub const SEP: char = '+';

/// Where clients reach the member.
pub fn client_of(addr: &str) -> &str {
    addr.split_once(SEP).map_or(addr, |(client, _)| client)
}

/// Where peers reach the member's Raft transport.
pub fn peer_of(addr: &str) -> &str {
    addr.split_once(SEP).map_or(addr, |(_, peer)| peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_serves_both_and_two_split() {
        assert_eq!(client_of("10.0.0.1:7001"), "10.0.0.1:7001");
        assert_eq!(peer_of("10.0.0.1:7001"), "10.0.0.1:7001");
        assert_eq!(client_of("10.0.0.1:7001+10.0.0.1:7101"), "10.0.0.1:7001");
        assert_eq!(peer_of("10.0.0.1:7001+10.0.0.1:7101"), "10.0.0.1:7101");
    }
}
