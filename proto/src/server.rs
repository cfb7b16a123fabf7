//! The one way an mlstack gRPC server starts: bind, mount the standard
//! services (health, reflection, `Diag`) beside the component's own, serve on
//! a task with trace context extracted from every request, and drain on stop.
//! The KV node, the inference server and `mlstack diag serve` all start here.
//!
//! ```ignore
//! let server = proto::server::GrpcServer::start(listen, "kv-1", None, |routes| {
//!     routes.add_service(KvServer::new(kv));
//! })
//! .await?;
//! server.health.set_serving::<KvServer<Kv>>().await;
//! // ...
//! server.stop().await?;
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::{Channel, Endpoint};
use tonic_health::server::HealthReporter;

use crate::Error;
use crate::diag::v1::diag_server::DiagServer;
use crate::diag_service::DiagService;

/// A route set pre-loaded with `grpc.health.v1.Health` and server reflection
/// (`grpc.reflection.v1` and `v1alpha`, covering every mlstack package and the
/// health service itself), plus the reporter that flips per-service health.
///
/// The overall server status (the empty service name) starts `SERVING`; each
/// component sets its own services' status once it is ready to answer.
fn standard_routes() -> Result<(RoutesBuilder, HealthReporter), Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((routes, reporter))
}

/// A gRPC server serving on a task: health, reflection and `Diag`, plus the
/// services its caller added.
#[derive(Debug)]
pub struct GrpcServer {
    /// The bound address (the port is the OS's choice when `listen` had 0).
    pub addr: SocketAddr,
    /// Flips per-service health; `Diag` is already `SERVING`.
    pub health: HealthReporter,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Binds `listen`, mounts the standard services and whatever `add` puts
    /// in, and serves until [`GrpcServer::stop`]. `service` names this server
    /// in `Diag.Ping` replies; `timeout` bounds every request (`None`: only the
    /// client's `grpc-timeout`).
    pub async fn start(
        listen: SocketAddr,
        service: &str,
        timeout: Option<Duration>,
        add: impl FnOnce(&mut RoutesBuilder),
    ) -> Result<Self, Error> {
        Self::start_tls(listen, service, timeout, None, add).await
    }

    /// [`GrpcServer::start`], over TLS when `tls` is given.
    pub async fn start_tls(
        listen: SocketAddr,
        service: &str,
        timeout: Option<Duration>,
        tls: Option<&crate::tls::ServerTls>,
        add: impl FnOnce(&mut RoutesBuilder),
    ) -> Result<Self, Error> {
        let bind = |source| Error::Bind {
            addr: listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (mut routes, health) = standard_routes()?;
        let diag = DiagService::new(service, observe::instance_id(), addr);
        // On a TLS server, Diag answers but does not relay: it sits outside
        // the services' gates, and a relay dials in plaintext.
        let diag = if tls.is_some() {
            diag.without_relay()
        } else {
            diag
        };
        routes.add_service(DiagServer::new(diag));
        add(&mut routes);
        health.set_serving::<DiagServer<DiagService>>().await;
        let stop = CancellationToken::new();
        // TCP_NODELAY: a unary gRPC reply is small; without it Nagle's algorithm
        // holds it until the client's delayed ACK (~40 ms per hop on Linux).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        if let Some(tls) = tls {
            builder =
                builder
                    .tls_config(tls.config()?)
                    .map_err(|e| crate::tls::TlsError::Invalid {
                        what: "server TLS",
                        reason: e.to_string(),
                    })?;
        }
        let task = tokio::spawn(
            builder
                // Every request's span continues the caller's trace.
                .trace_fn(observe::grpc::server_span)
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        tracing::info!(%addr, service, tls = tls.is_some(), "gRPC server listening");
        Ok(Self {
            addr,
            health,
            stop,
            task,
        })
    }

    /// A token that stops the server when cancelled (for owners that stop
    /// several tasks together).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting, lets in-flight calls finish, and waits.
    pub async fn stop(self) -> Result<(), Error> {
        self.stop.cancel();
        match self.task.await {
            Ok(r) => r.map_err(|source| Error::Serve {
                addr: self.addr,
                reason: source.to_string(),
            }),
            Err(e) => Err(Error::Serve {
                addr: self.addr,
                reason: format!("server task: {e}"),
            }),
        }
    }
}

/// Normalises `host:port` or `http://host:port` into a lazily connected channel
/// with the timeouts every mlstack client uses. Connection reuse comes from
/// tonic's channel: clone it freely, it multiplexes over one HTTP/2 connection.
pub fn channel(endpoint: &str) -> Result<Channel, Error> {
    channel_tls(endpoint, None)
}

/// [`channel`] over TLS when `tls` is given (`host:port` then means
/// `https://host:port`; the host is checked against the server's
/// certificate).
pub fn channel_tls(
    endpoint: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Channel, Error> {
    Ok(endpoint_of(endpoint, tls)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The endpoint of `host:port` or a URI, with TLS when given.
pub fn endpoint_of(
    endpoint: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, Error> {
    let invalid = |e: &dyn std::fmt::Display| Error::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    };
    if tls.is_some() && endpoint.contains("://") && !endpoint.starts_with("https://") {
        return Err(invalid(
            &"TLS is configured: the address must be host:port or https://host:port (an http:// address would connect in plaintext)",
        ));
    }
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let ep = Endpoint::from_shared(uri).map_err(|e| invalid(&e))?;
    match tls {
        Some(t) => ep.tls_config(t.clone()).map_err(|e| invalid(&e)),
        None => Ok(ep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_set_names_every_versioned_package() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor set decodes");
        let packages: Vec<_> = fds.file.iter().filter_map(|f| f.package.clone()).collect();
        for want in ["mlstack.diag.v1", "mlstack.kv.v1", "mlstack.infer.v1"] {
            assert!(
                packages.iter().any(|p| p == want),
                "{want} missing from {packages:?}"
            );
        }
    }

    #[test]
    fn the_services_observe_names_are_the_generated_ones() {
        // server_span drops these services' spans by name: a rename here
        // would silently turn that off.
        assert_eq!(
            observe::grpc::RAFT_SERVICE,
            crate::raft::v1::raft_server::SERVICE_NAME
        );
        assert_eq!(
            observe::grpc::OTLP_TRACE_SERVICE,
            opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME
        );
    }

    #[test]
    fn endpoint_without_scheme_gets_http() {
        assert!(channel_uri_ok("127.0.0.1:7001"));
        assert!(channel_uri_ok("http://127.0.0.1:7001"));
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { channel("http://bad host:1").map(|_| ()) });
        assert!(matches!(err, Err(Error::InvalidEndpoint { .. })), "{err:?}");
    }

    #[test]
    fn with_tls_an_http_address_is_refused_not_dialled_in_plaintext() {
        let tls = tonic::transport::ClientTlsConfig::new();
        let e = endpoint_of("http://127.0.0.1:7001", Some(&tls)).expect_err("http with TLS");
        assert!(e.to_string().contains("plaintext"), "{e}");
        assert!(endpoint_of("127.0.0.1:7001", Some(&tls)).is_ok());
        assert!(endpoint_of("https://127.0.0.1:7001", Some(&tls)).is_ok());
    }

    fn channel_uri_ok(ep: &str) -> bool {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { channel(ep).is_ok() })
    }
}
