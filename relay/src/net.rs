//! Accepting connections: TCP, then TLS when the relay terminates it, then HTTP/1.1 with upgrades.
//!
//! The first stop of every recorder and subscriber on its way into [`crate::server`]'s router. It replaces
//! `axum::serve` to bound what a client that never finishes costs: the TLS handshake and the request headers
//! each have `hello_timeout_s` (a slow-loris handshake or header trickle is dropped, not kept forever), request
//! headers are limited to 64 KiB, every
//! socket gets `TCP_NODELAY` (acks are small and must leave at once), and shutdown stops accepting, lets plain
//! HTTP requests in flight finish, and leaves upgraded WebSockets to the server's own drain.

use std::convert::Infallible;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::TlsFiles;
use crate::metrics::{Metrics, Refused};

/// A TLS certificate or key that cannot be used: one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    path: String,
    message: String,
}

/// Loads the certificate chain and key into a TLS acceptor (HTTP/1.1 only: WebSockets upgrade from it).
///
/// # Errors
///
/// A file that cannot be read, holds no certificate or key, or a key that does not match.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let fail = |path: &Path, message: String| TlsError { path: path.display().to_string(), message };
    let open = |path: &Path| {
        std::fs::File::open(path).map(BufReader::new).map_err(|e| fail(path, format!("cannot read: {e}")))
    };
    let certs = rustls_pemfile::certs(&mut open(&files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&files.cert, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail(&files.cert, "holds no PEM certificate".into()));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key)?)
        .map_err(|e| fail(&files.key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| fail(&files.key, "holds no PEM private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail(&files.key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (router, tls, metrics, shutdown) = (router.clone(), tls.clone(), Arc::clone(&metrics), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => http(tcp, peer, router, handshake_timeout, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => http(stream, peer, router, handshake_timeout, shutdown).await,
                    Ok(Err(e)) => {
                        metrics.refused(Refused::TlsHandshake);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.refused(Refused::TlsHandshake);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
            }
        });
    }
    connections.close();
    // Plain requests finish quickly; upgraded WebSockets have left this tracker and drain in the server.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}

/// One HTTP/1.1 connection; its request headers must arrive within `header_timeout`.
async fn http<I>(io: I, peer: SocketAddr, router: Router, header_timeout: Duration, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(request.map(Body::new)).await.unwrap_or_else(|e| match e {})) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Request headers beyond 64 KiB get 431 (a browser's are a few KiB).
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
