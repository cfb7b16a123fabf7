//! The one HTTP server start-up beside a gRPC server (the inference
//! server's OpenAI API, the trace receiver's query port): plaintext through
//! `axum::serve`, or HTTPS through `axum-server` on rustls with the same
//! certificate as the gRPC port ([`crate::tls::ServerTls::rustls_config`]).
//!
//! Binding and serving are two steps ([`HttpServer::bind`], then
//! [`BoundHttp::serve`]) so an owner can bind every port, and check every
//! certificate, before anything serves: a failure then leaves nothing
//! running.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::tls::ServerTls;

/// A bound port, not serving yet.
#[derive(Debug)]
pub struct BoundHttp {
    pub addr: SocketAddr,
    listener: Listener,
}

enum Listener {
    Plain(tokio::net::TcpListener),
    Tls(Box<axum_server::Server<SocketAddr, axum_server::tls_rustls::RustlsAcceptor>>),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Plain(_) => "Plain",
            Listener::Tls(_) => "Tls",
        })
    }
}

/// A serving HTTP(S) port, until [`HttpServer::stop`].
#[derive(Debug)]
pub struct HttpServer {
    pub addr: SocketAddr,
    pub tls: bool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen`; with `tls` the port will speak HTTPS only. A bad
    /// certificate or key fails here, naming itself, before the bind.
    pub async fn bind(listen: SocketAddr, tls: Option<&ServerTls>) -> Result<BoundHttp, Error> {
        let config = tls.map(ServerTls::rustls_config).transpose()?;
        let bind = |source| Error::BindHttp {
            addr: listen,
            source,
        };
        let l = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let addr = l.local_addr().map_err(bind)?;
        let listener = match config {
            None => Listener::Plain(l),
            Some(config) => Listener::Tls(Box::new(
                axum_server::from_tcp_rustls(
                    l.into_std().map_err(bind)?,
                    axum_server::tls_rustls::RustlsConfig::from_config(config),
                )
                .map_err(bind)?,
            )),
        };
        Ok(BoundHttp { addr, listener })
    }

    /// A token that stops the server when cancelled (an owner dropped
    /// without `stop`).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops accepting, lets in-flight responses finish, and waits.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl BoundHttp {
    /// Serves `app` on the bound port; `what` names it in the log.
    pub fn serve(self, app: axum::Router, what: &'static str) -> HttpServer {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let addr = self.addr;
        let (tls, task) = match self.listener {
            Listener::Plain(listener) => (
                false,
                tokio::spawn(async move {
                    let r = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped.cancelled_owned())
                        .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, %addr, what, "HTTP server failed");
                    }
                }),
            ),
            Listener::Tls(server) => {
                // axum-server runs each connection's handshake in its own
                // task with a 10 s limit, so a client that never finishes
                // one holds no one else up.
                let handle = axum_server::Handle::new();
                let on_stop = handle.clone();
                tokio::spawn(async move {
                    stopped.cancelled().await;
                    // As axum::serve's graceful shutdown: stop accepting,
                    // let in-flight responses finish.
                    on_stop.graceful_shutdown(None);
                });
                (
                    true,
                    tokio::spawn(async move {
                        if let Err(e) = server.handle(handle).serve(app.into_make_service()).await {
                            tracing::error!(error = %e, %addr, what, "HTTPS server failed");
                        }
                    }),
                )
            }
        };
        HttpServer {
            addr,
            tls,
            stop,
            task,
        }
    }
}
