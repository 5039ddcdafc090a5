//! cdpgate: a Chrome DevTools Protocol reverse proxy and browser session broker.
//!
//! `POST /public/sessions` hands a caller a browser from a warm pool and a `cdp_url`
//! through which any CDP client drives it; the broker relays every frame and cuts the
//! connections off when the session's TTL runs out.
//!
//! # Layout
//!
//! The layers, top down; a module imports only from layers below it (and its own):
//!
//! - [`http`]: the accept loop, the route table, request reading, errors into answers, and
//!   the handlers: sessions, profiles, single actions, live view.
//! - [`proxy`]: authorizes and relays CDP connections (the relay follows frame headers),
//!   and the discovery endpoints with their addresses rewritten.
//! - [`render`]: one-call renders (screenshot, PDF, HTML, markdown, scrape) in a fresh
//!   context session or a given one.
//! - [`broker`]: the composition root: builds the parts, holds the sessions running here,
//!   and is the one lookup path for a session by id.
//! - [`action`]: the single-action engine (instruction parser, page driver, cache, model).
//! - [`session`]: a running session's node-local handles and lifecycle.
//! - [`artifacts`]: what sessions leave behind: their files (downloads, uploads) and
//!   recordings.
//! - [`profile`]: a profile's state in and out of browsers: work in a browser started on a
//!   copy of it, session cookies, `storageState` documents (export, import, validation).
//! - [`browser`]: launcher, warm pool, the broker's own CDP client, upstreams, the egress
//!   policy, bring-your-own probes; shared browsers and the CDP filter of context sessions.
//! - [`store`]: persistence only: session records behind the [`store::SessionStore`]
//!   trait, the cluster's nodes, profiles and their data, writer leases.
//! - Below them all: [`config`], [`auth`] (API keys, tokens), [`limits`], [`quota`]
//!   (sessions per key at once), [`metrics`],
//!   [`tls`], [`telemetry`] (log lines and OTLP spans), [`values`] (plain values several
//!   layers share) and [`error`] (whose fault an error is).

#![warn(unreachable_pub)]

pub(crate) mod action;
pub(crate) mod artifacts;
pub mod auth;
pub mod broker;
pub mod browser;
pub(crate) mod capture;
pub mod config;
pub(crate) mod console_patch;
pub(crate) mod egress_rules;
pub mod error;
pub(crate) mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub(crate) mod limits;
pub(crate) mod markdown;
pub mod mcp;
pub mod metrics;
pub(crate) mod profile;
pub(crate) mod proxy;
pub(crate) mod quota;
pub mod render;
pub(crate) mod session;
pub mod store;
pub mod telemetry;
pub mod tls;
pub(crate) mod values;
pub(crate) mod webhooks;

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
    let broker = Broker::start(config, bound, shutdown).await?;
    http::pools::restore(&broker).await;
    http::pools::keep_in_step(&broker);
    Ok(broker)
}

/// The second half of [`run`]: serves, then stops the broker.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    http::server::serve(listener, broker.clone()).await;
    broker.stop().await;
}
