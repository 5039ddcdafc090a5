//! Accepts TCP connections and serves HTTP/1.1 on each, with upgrades, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::Body;
use crate::broker::Broker;

/// Largest request head (request line and headers) read.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Serves until the broker's shutdown token is cancelled; in-flight requests finish.
pub(crate) async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = broker.shutdown().cancelled() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(stream, broker.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // New connections are refused from here on, rather than queued until the process exits.
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(broker.config().shutdown_timeout(), connections.wait()).await;
}

async fn serve_connection(stream: TcpStream, broker: Arc<Broker>) {
    let _ = stream.set_nodelay(true);
    match broker.tls() {
        None => serve_http(stream, broker).await,
        Some(acceptor) => {
            let limit = Duration::from_millis(broker.config().tls_handshake_timeout_ms);
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_http(tls, broker).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<I>(io: I, broker: Arc<Broker>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = broker.shutdown().clone();
    let read_timeout = broker.config().request_read_timeout();
    let service = service_fn(move |request| dispatch(broker.clone(), request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(64 * 1024)
        // Headers past this answer 431: a request's headers are a few hundred bytes.
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn dispatch(broker: Arc<Broker>, request: Request<Incoming>) -> Result<Response<Body>, std::convert::Infallible> {
    Ok(super::router::dispatch(broker, request).await)
}
