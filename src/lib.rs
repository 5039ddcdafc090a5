//! cdpgate: a Chrome DevTools Protocol reverse proxy and browser session broker.
//!
//! `POST /public/sessions` hands a caller a browser from a warm pool and a `cdp_url`
//! through which any CDP client drives it; the broker relays every frame and cuts the
//! connections off when the session's TTL runs out.
//!
//! # Layout
//!
//! - [`config`]: `config.toml`, `CDPGATE_*` overrides and their validation.
//! - [`server`]: the accept loop; HTTP/1.1 with upgrades on each connection.
//! - [`api`]: the JSON API (`/public/sessions…`, `/health`, `/metrics`).
//! - [`proxy`]: the CDP WebSocket relay and the per-session discovery endpoints.
//! - [`live`]: the live view page and its filtered CDP connection.
//! - [`action`]: Run Single Action: instructions in words, carried out in a session's browser.
//! - [`upstream`]: how a session's browser is reached (managed on loopback, or external).
//! - [`byo`]: bring-your-own browsers: probing a user's `cdp_url`, the egress policy.
//! - [`broker`]: shared state: sessions, pool, secrets, URLs; ends sessions on time.
//! - [`session`]: one session's record and lifecycle.
//! - [`records`]: session records on disk, readable after a restart.
//! - [`pool`]: the warm pool of browsers and the cap on concurrent sessions.
//! - [`browser`]: one Chrome process, its scratch directory and its reaping.
//! - [`profile`]: browser profiles on disk, copied into sessions and saved back atomically.
//! - [`storage_state`]: Playwright `storageState` documents in and out of profiles.
//! - [`cdp`]: the broker's own small DevTools client.
//! - [`auth`]: API keys (tenants) and signed connection tokens.
//! - [`tls`]: the rustls acceptor, when TLS is configured.
//! - [`limits`]: per-tenant rate limits.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`error`]: the one place errors become `{"detail": …}` answers.

#![deny(unsafe_code)]

pub mod action;
pub mod api;
pub mod auth;
pub mod broker;
pub mod browser;
pub mod byo;
pub mod cdp;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod pool;
pub mod profile;
pub mod proxy;
pub mod records;
pub mod relay;
pub mod server;
pub mod session;
pub mod storage_state;
pub mod tls;
pub mod upstream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use broker::{Broker, StartError};
pub use config::Config;

/// Starts the broker on an already bound listener and serves until `shutdown` is
/// cancelled, then ends every session and stops every browser.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let broker = start(&listener, config, shutdown).await?;
    serve(listener, broker).await;
    Ok(())
}

/// The first half of [`run`]: prepares the broker (tests use it to reach its state).
pub async fn start(
    listener: &TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<Arc<Broker>, StartError> {
    let bound = listener.local_addr().map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    Broker::start(config, bound, shutdown).await
}

/// The second half of [`run`]: serves, then stops the broker.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    server::serve(listener, broker.clone()).await;
    broker.stop().await;
}
