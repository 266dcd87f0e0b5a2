//! Accepting connections: TCP, then TLS when the relay terminates it, then HTTP/1.1 with upgrades.
//!
//! The first stop of every recorder and subscriber on its way into [`crate::http`]'s router. It replaces
//! `axum::serve` to bound what a client that never finishes costs:
//! - connections not yet upgraded to a WebSocket are counted per client address (`max_connections_per_client`,
//!   unless `client_ip_header` says an ingress is in front: then every peer is the ingress) and in all
//!   (`max_connections`); over either, a new connection is closed at once (counted in `/metrics`);
//! - the TLS handshake and the request headers each have `hello_timeout_s` (a slow-loris handshake or header
//!   trickle is dropped); a request whose line and headers exceed `max_header_bytes` (16 KiB by default, as
//!   Node.js caps them) gets 431; and a connection that has not upgraded after [`HTTP_LIFETIME`] is closed (a
//!   download nobody reads);
//! - every socket gets `TCP_NODELAY` (acks are small and must leave at once);
//! - shutdown stops accepting, gives plain HTTP requests in flight 5 s to finish, and leaves upgraded
//!   WebSockets to the server's own drain.

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
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::{Limits, TlsFiles};
use crate::doors::limits::Clients;
use crate::metrics::{Metrics, Refused};

/// Longest a connection may stay plain HTTP (static files, probes) before it is closed; upgraded WebSockets
/// leave hyper at the upgrade and are not bound by it.
pub const HTTP_LIFETIME: Duration = Duration::from_secs(120);

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
    limits: (&Limits, usize),
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (limits, max_connections) = limits;
    let handshake_timeout = limits.hello_timeout;
    let max_header_bytes = limits.max_header_bytes;
    // Behind an ingress every peer is the ingress: count per address only when clients connect directly.
    let per_client = limits.client_ip_header.is_none().then_some(limits.connections_per_client);
    let pending_by_client = Arc::new(Clients::default());
    let pending = Arc::new(tokio::sync::Semaphore::new(max_connections));
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
        let client_slot = match per_client {
            Some(max) => match pending_by_client.try_acquire(crate::doors::limits::per_subscriber(peer.ip()), max) {
                Some(slot) => Some(slot),
                None => {
                    metrics.refused(Refused::PendingPerClient);
                    continue; // dropping the socket closes it
                }
            },
            None => None,
        };
        let Ok(slot) = Arc::clone(&pending).try_acquire_owned() else {
            metrics.refused(Refused::PendingMax);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (router, tls, metrics, shutdown) = (router.clone(), tls.clone(), Arc::clone(&metrics), shutdown.clone());
        connections.spawn(async move {
            let _slots = (slot, client_slot);
            match tls {
                None => {
                    http(tcp, peer, router, (handshake_timeout, max_header_bytes), Arc::clone(&metrics), shutdown).await
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        http(
                            stream,
                            peer,
                            router,
                            (handshake_timeout, max_header_bytes),
                            Arc::clone(&metrics),
                            shutdown,
                        )
                        .await;
                    }
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

/// The bytes of a request's line and headers as they came on the wire (`GET /path HTTP/1.1`, each
/// `name: value`, the CRLFs).
pub fn head_bytes<B>(request: &Request<B>) -> usize {
    let line = request.method().as_str().len() + 1 + request.uri().to_string().len() + " HTTP/1.1\r\n".len();
    let fields: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    line + fields + 2
}

/// One HTTP/1.1 connection; its request headers must arrive within `header_timeout` and hold at most
/// `max_header_bytes`. What hyper refuses on its own (late or oversized headers, bytes that are not HTTP), requests
/// with too many header bytes and connections closed for their age are counted.
async fn http<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    (header_timeout, max_header_bytes): (Duration, usize),
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A keep-alive connection that served requests and then idles also ends in a header timeout: not a refusal.
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served_by_service = Arc::clone(&served);
    let metrics_for_service = Arc::clone(&metrics);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        served_by_service.store(true, std::sync::atomic::Ordering::Relaxed);
        let head = head_bytes(&request);
        let too_large = (head > max_header_bytes).then(|| {
            metrics_for_service.refused(Refused::HeadersTooLarge);
            tracing::debug!(%peer, head, "refused a request: headers too large");
            let body =
                format!("the request line and headers are {head} bytes; at most {max_header_bytes} are accepted\n");
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, body).into_response()
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            Ok::<_, Infallible>(match too_large {
                Some(refusal) => refusal,
                None => router.oneshot(request.map(Body::new)).await.unwrap_or_else(|e| match e {}),
            })
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper's read buffer, a backstop for heads that never end: room for `max_header_bytes` and a read more.
        // The exact limit is the check above (hyper's own stops somewhere past its buffer, not at it).
        .max_buf_size((max_header_bytes + 8 * 1024).max(8192))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                if e.is_timeout() {
                    if !served.load(std::sync::atomic::Ordering::Relaxed) {
                        metrics.refused(Refused::HeaderTimeout);
                    }
                } else if e.is_parse_too_large() {
                    metrics.refused(Refused::HeadersTooLarge);
                } else if e.is_parse() {
                    metrics.refused(Refused::BadHttp);
                }
            }
        }
        () = tokio::time::sleep(HTTP_LIFETIME) => {
            metrics.refused(Refused::HttpLifetime);
            tracing::debug!(%peer, "closing an HTTP connection that outlived its lifetime without upgrading");
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_counts_the_request_as_it_came_on_the_wire() {
        let wire = "GET /ws/record?x=1 HTTP/1.1\r\nhost: relay:8080\r\nx-fill: abc\r\n\r\n";
        let request = Request::builder()
            .uri("/ws/record?x=1")
            .header("host", "relay:8080")
            .header("x-fill", "abc")
            .body(())
            .expect("request");
        assert_eq!(head_bytes(&request), wire.len());
    }
}
