//! Who may call a client API: a tonic interceptor combining the two
//! credentials etcd accepts, a client certificate and a bearer key
//! ([`crate::auth`]), and what the handlers ask afterwards (is this caller
//! an admin?).
//!
//! Each credential that is configured is required:
//! - `require_cert`: the connection presented a certificate (the TLS
//!   handshake has verified its chain against the accepted CAs);
//! - `keys`: the request carries `authorization: Bearer <key>` naming a
//!   configured key; the key's [`Caller`] rides in the request's extensions.
//!
//! With neither configured the API is open (the tests and the demo run so),
//! and [`Access::admin`] lets anyone change membership, as before. With any
//! configured, only a key with the `admin` grant may: a certificate alone
//! never makes an admin.

use std::sync::Arc;

use crate::auth::{ApiKeys, Caller};

/// The access policy of one API.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub keys: Option<Arc<ApiKeys>>,
    pub require_cert: bool,
}

/// Marks a request let through an open API (no credentials configured).
#[derive(Clone, Copy, Debug)]
struct Open;

impl Access {
    /// Whether any credential is required.
    pub fn is_open(&self) -> bool {
        self.keys.is_none() && !self.require_cert
    }

    /// The interceptor's check: `UNAUTHENTICATED` naming what is missing.
    /// A caller let through carries its [`Caller`] (or the open marker) in
    /// the request's extensions for [`Access::admin`].
    pub fn check(
        &self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if self.is_open() {
            request.extensions_mut().insert(Open);
            return Ok(request);
        }
        if self.require_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(tonic::Status::unauthenticated(
                "this API needs a client certificate (MLSTACK_KV_CERT and MLSTACK_KV_KEY, over TLS)",
            ));
        }
        if let Some(keys) = &self.keys {
            let value = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes().to_vec());
            let caller = keys
                .check(value.as_deref())
                .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }

    /// For a handler of an admin call (membership): `PERMISSION_DENIED`
    /// unless the API is open or the caller's key has the `admin` grant.
    pub fn admin<T>(request: &tonic::Request<T>, what: &str) -> Result<(), tonic::Status> {
        if request.extensions().get::<Open>().is_some() {
            return Ok(());
        }
        match request.extensions().get::<Caller>() {
            Some(c) if c.admin => Ok(()),
            Some(c) => Err(tonic::Status::permission_denied(format!(
                "{what} needs a key with the admin grant; {:?} has none",
                c.name
            ))),
            None => Err(tonic::Status::permission_denied(format!(
                "{what} needs an admin key (--api-keys-file with an 'admin' grant): a certificate alone is not an admin"
            ))),
        }
    }
}

/// The interceptor form of [`Access::check`].
impl tonic::service::Interceptor for Access {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.check(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "sk-aaaaaaaaaaaaaaaaaaaa ops admin\nsk-bbbbbbbbbbbbbbbbbbbb app\n";

    fn with_key(key: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(k) = key {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {k}").parse().expect("ascii"),
            );
        }
        r
    }

    #[test]
    fn keys_are_required_and_only_admin_keys_change_membership() {
        let a = Access {
            keys: Some(Arc::new(ApiKeys::parse(KEYS, "t").expect("keys"))),
            require_cert: false,
        };
        let e = a.check(with_key(None)).expect_err("no key");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = a
            .check(with_key(Some("sk-cccccccccccccccccccc")))
            .expect_err("bad key");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let app = a
            .check(with_key(Some("sk-bbbbbbbbbbbbbbbbbbbb")))
            .expect("app");
        let e = Access::admin(&app, "change-membership").expect_err("app is no admin");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let ops = a
            .check(with_key(Some("sk-aaaaaaaaaaaaaaaaaaaa")))
            .expect("ops");
        Access::admin(&ops, "change-membership").expect("ops is admin");
    }

    #[test]
    fn a_certificate_is_required_when_configured_and_never_makes_an_admin() {
        let a = Access {
            keys: None,
            require_cert: true,
        };
        // No TLS connection info at all: no certificate.
        let e = a.check(tonic::Request::new(())).expect_err("no cert");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("client certificate"), "{e}");
        let open = Access::default();
        let r = open.check(tonic::Request::new(())).expect("open");
        Access::admin(&r, "add-learner").expect("open API: anyone");
        // A request that never went through the gate is no admin.
        assert!(Access::admin(&tonic::Request::new(()), "add-learner").is_err());
    }
}
