//! API keys: OpenAI's scheme (`Authorization: Bearer <key>`), on HTTP as a
//! header and on gRPC as metadata. The inference server and the KV nodes both
//! read them from here.
//!
//! Keys come from a file (`--api-keys-file`), one per line: the key, a name,
//! and the grants beyond the plain API:
//!
//! ```text
//! # key                                name    grants
//! sk-mlstack-3f9c2a7e51d04b8e9a6c      alice   priority
//! sk-mlstack-88b1e0d4c6a24f31b7de      bob
//! sk-mlstack-0d6e2b9a4c7f11e3a8b5      ops     admin
//! ```
//!
//! - `priority`: may set an inference request's `priority`.
//! - `admin`: may change a KV cluster's membership (etcd's root role).
//!
//! or from the environment (`MLSTACK_API_KEYS=key1,key2`: no names, no
//! priority). Only each key's SHA-256 is kept, and a presented key is looked
//! up by its digest, so the lookup's timing says nothing about how much of a
//! guess matched. With no keys configured the server is open, as before.
//!
//! The request `priority` (gRPC only) is honoured for keys marked `priority`;
//! any other caller setting it is refused (`PERMISSION_DENIED`), so a
//! tenant cannot jump the queue by asking.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The shortest key accepted: a guessable key is no key.
pub const MIN_KEY_CHARS: usize = 16;

/// Who a request came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (from the file; `env-<n>` for keys from the environment).
    pub name: String,
    /// May set the request `priority`.
    pub may_set_priority: bool,
    /// May change a KV cluster's membership.
    pub admin: bool,
}

/// A bad key file or key list.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("reading API keys {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API keys {source_}, line {line}: {reason}")]
    Line {
        source_: String,
        line: usize,
        reason: String,
    },
    #[error("API keys {source_}: no key (an empty list would leave the server open by mistake)")]
    Empty { source_: String },
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing API key: send it as 'Authorization: Bearer <key>' (HTTP header or gRPC metadata)"
    )]
    Missing,
    #[error("the Authorization value is not 'Bearer <key>'")]
    Malformed,
    #[error("invalid API key")]
    Invalid,
}

/// The configured keys.
#[derive(Clone)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl std::fmt::Debug for ApiKeys {
    // Never print digests, let alone keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.by_digest.len())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn check_key(key: &str) -> Result<(), String> {
    if key.chars().count() < MIN_KEY_CHARS {
        return Err(format!(
            "a key of {} characters (at least {MIN_KEY_CHARS})",
            key.chars().count()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a key must be printable ASCII without spaces".into());
    }
    Ok(())
}

impl ApiKeys {
    /// Parses a key file's text; `source_` names it in errors.
    pub fn parse(text: &str, source_: &str) -> Result<Self, KeysError> {
        let mut by_digest = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| KeysError::Line {
                source_: source_.to_string(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (key, name, flags) = match fields.as_slice() {
                [key, name, flags @ ..] => (*key, *name, flags),
                _ => return Err(err("expected 'KEY NAME [priority] [admin]'".into())),
            };
            check_key(key).map_err(err)?;
            let (mut may_set_priority, mut admin) = (false, false);
            for f in flags {
                match *f {
                    "priority" => may_set_priority = true,
                    "admin" => admin = true,
                    other => {
                        return Err(err(format!(
                            "unknown grant {other:?} ('priority' or 'admin')"
                        )));
                    }
                }
            }
            let caller = Caller {
                name: name.to_string(),
                may_set_priority,
                admin,
            };
            if by_digest.insert(digest(key), caller).is_some() {
                return Err(err(format!("the key of {name} is listed twice")));
            }
        }
        if by_digest.is_empty() {
            return Err(KeysError::Empty {
                source_: source_.to_string(),
            });
        }
        Ok(Self { by_digest })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Comma-separated keys (`MLSTACK_API_KEYS`), named `env-1`, `env-2`, ...
    pub fn from_list(list: &str) -> Result<Self, KeysError> {
        let text: String = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| format!("{k} env-{}\n", i + 1))
            .collect();
        Self::parse(&text, "MLSTACK_API_KEYS")
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Never true: an empty key list is refused when parsed.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The caller an `Authorization` value names.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let raw = authorization.ok_or(AuthError::Missing)?;
        let text = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
        let (scheme, key) = text.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        self.by_digest
            .get(&digest(key.trim()))
            .cloned()
            .ok_or(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# key name flags\n\
        sk-aaaaaaaaaaaaaaaaaaaa alice priority admin\n\
        \n\
        sk-bbbbbbbbbbbbbbbbbbbb bob   # no priority\n";

    #[test]
    fn keys_are_found_by_bearer_and_carry_their_rights() {
        let k = ApiKeys::parse(FILE, "t").expect("parse");
        let alice = k
            .check(Some(b"Bearer sk-aaaaaaaaaaaaaaaaaaaa"))
            .expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(alice.may_set_priority && alice.admin);
        let bob = k
            .check(Some(b"bearer  sk-bbbbbbbbbbbbbbbbbbbb"))
            .expect("bob");
        assert!(!bob.may_set_priority && !bob.admin);
        assert_eq!(k.check(None), Err(AuthError::Missing));
        assert_eq!(
            k.check(Some(b"sk-aaaaaaaaaaaaaaaaaaaa")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            k.check(Some(b"Basic sk-aaaaaaaaaaaaaaaaaaaa")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            k.check(Some(b"Bearer sk-aaaaaaaaaaaaaaaaaaab")),
            Err(AuthError::Invalid)
        );
        assert_eq!(k.check(Some(&[0xff, 0xfe])), Err(AuthError::Malformed));
        assert!(!format!("{k:?}").contains("sk-"), "keys never printed");
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for (text, want) in [
            ("short alice\n", "at least 16"),
            ("sk-aaaaaaaaaaaaaaaaaaaa\n", "expected 'KEY NAME"),
            ("sk-aaaaaaaaaaaaaaaaaaaa alice root\n", "unknown grant"),
            (
                "sk-aaaaaaaaaaaaaaaaaaaa a\nsk-aaaaaaaaaaaaaaaaaaaa b\n",
                "listed twice",
            ),
            ("# nothing\n", "no key"),
        ] {
            let e = ApiKeys::parse(text, "f").expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let env = ApiKeys::from_list(" sk-cccccccccccccccccccc , ").expect("env keys");
        assert_eq!(
            env.check(Some(b"Bearer sk-cccccccccccccccccccc"))
                .map(|c| c.name),
            Ok("env-1".to_string())
        );
        assert!(ApiKeys::from_list(",,").is_err());
    }
}
