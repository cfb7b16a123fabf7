//! Wiring every mlstack gRPC server shares: health checking and reflection.
//!
//! ```ignore
//! let (mut routes, health) = proto::server::standard_routes()?;
//! routes.add_service(MyServiceServer::new(svc));
//! health.set_serving::<MyServiceServer<Svc>>().await;
//! tonic::transport::Server::builder()
//!     .trace_fn(observe::grpc::server_span)
//!     .add_routes(routes.routes())
//!     .serve_with_incoming_shutdown(incoming, shutdown)
//!     .await?;
//! ```

use tonic::service::RoutesBuilder;
use tonic::transport::{Channel, Endpoint};
use tonic_health::server::HealthReporter;

use crate::Error;

/// A route set pre-loaded with `grpc.health.v1.Health` and server reflection
/// (`grpc.reflection.v1` and `v1alpha`, covering every mlstack package and the
/// health service itself), plus the reporter that flips per-service health.
///
/// The overall server status (the empty service name) starts `SERVING`; each
/// component sets its own services' status once it is ready to answer.
pub fn standard_routes() -> Result<(RoutesBuilder, HealthReporter), Error> {
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

/// Normalises `host:port` or `http://host:port` into a lazily connected channel
/// with the timeouts every mlstack client uses. Connection reuse comes from
/// tonic's channel: clone it freely, it multiplexes over one HTTP/2 connection.
pub fn channel(endpoint: &str) -> Result<Channel, Error> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let ep = Endpoint::from_shared(uri).map_err(|e| Error::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    })?;
    Ok(ep
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_lazy())
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

    fn channel_uri_ok(ep: &str) -> bool {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { channel(ep).is_ok() })
    }
}
