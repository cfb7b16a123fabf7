//! Internal keys: how one user key's versions are ordered.
//!
//! ```text
//! internal key = user key ++ trailer (8 bytes, little endian)
//! trailer      = sequence number << 8 | kind        (kind: 0 = delete, 1 = put)
//! order        = user key ascending, then trailer descending (newest first)
//! ```
//!
//! Newest-first within a user key means a forward scan meets the version a
//! reader should see first, and a point lookup seeks to `(key, snapshot seq)`
//! and takes the first entry with that user key.

use std::cmp::Ordering;

/// Largest sequence number (56 bits).
pub const MAX_SEQ: u64 = (1 << 56) - 1;
pub const TRAILER_LEN: usize = 8;

/// What an entry records about its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    Delete = 0,
    Put = 1,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Delete),
            1 => Some(Kind::Put),
            _ => None,
        }
    }
}

/// Builds an internal key.
pub fn make_ikey(user_key: &[u8], seq: u64, kind: Kind) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + TRAILER_LEN);
    k.extend_from_slice(user_key);
    k.extend_from_slice(&((seq << 8) | kind as u64).to_le_bytes());
    k
}

/// The seek key that finds the newest version of `user_key` visible at `seq`:
/// every version with a larger sequence number sorts before it.
pub fn seek_key(user_key: &[u8], seq: u64) -> Vec<u8> {
    make_ikey(user_key, seq, Kind::Put)
}

/// The user-key part. Callers only pass keys that passed [`parse`] or were
/// built by [`make_ikey`]; shorter slices yield an empty user key.
pub fn user_key(ikey: &[u8]) -> &[u8] {
    &ikey[..ikey.len().saturating_sub(TRAILER_LEN)]
}

fn trailer(ikey: &[u8]) -> u64 {
    let n = ikey.len();
    if n < TRAILER_LEN {
        return 0;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&ikey[n - TRAILER_LEN..]);
    u64::from_le_bytes(b)
}

/// Sequence number of an internal key.
pub fn seq(ikey: &[u8]) -> u64 {
    trailer(ikey) >> 8
}

/// Splits an internal key; `None` when it is too short or has an unknown kind.
pub fn parse(ikey: &[u8]) -> Option<(&[u8], u64, Kind)> {
    if ikey.len() < TRAILER_LEN {
        return None;
    }
    let t = trailer(ikey);
    Some((user_key(ikey), t >> 8, Kind::from_u8((t & 0xff) as u8)?))
}

/// The internal-key order: user key ascending, then trailer descending.
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a)
        .cmp(user_key(b))
        .then_with(|| trailer(b).cmp(&trailer(a)))
}

/// The smallest byte string greater than every string starting with `prefix`
/// (`None` when no such string exists: the prefix is empty or all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_sort_first_and_user_keys_ascend() {
        let a5 = make_ikey(b"a", 5, Kind::Put);
        let a7 = make_ikey(b"a", 7, Kind::Delete);
        let ab1 = make_ikey(b"ab", 1, Kind::Put);
        assert_eq!(compare(&a7, &a5), Ordering::Less);
        // "a" is a prefix of "ab": the trailer must not take part in the user-key order.
        assert_eq!(compare(&a5, &ab1), Ordering::Less);
        assert_eq!(parse(&a7), Some((&b"a"[..], 7, Kind::Delete)));
        // The seek key at seq 6 lands after a7 and at or before a5.
        let s = seek_key(b"a", 6);
        assert_eq!(compare(&a7, &s), Ordering::Less);
        assert_ne!(compare(&s, &a5), Ordering::Greater);
    }

    #[test]
    fn prefix_successor_covers_the_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
