//! A render from start to end: the session (a fresh one made through the broker's normal
//! create, so quotas, egress, metrics and the session list see it; or the caller's own),
//! the page, the output, and the fresh session ended on every path: success, error,
//! timeout, and the caller going away (the future dropped).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::RenderError;
use super::options::RenderJob;
use super::page::{Loaded, Produced, Tab};
use crate::auth::Tenant;
use crate::broker::{Broker, NewSession};
use crate::metrics::Metrics;
use crate::session::Session;
use crate::store::EndReason;

/// Time given to produce the output once the page is ready (a long PDF, a tall page).
const PRODUCE_LIMIT: Duration = Duration::from_secs(30);

/// Where a render runs.
pub enum Target {
    /// A fresh session, created with these settings.
    Fresh(Box<NewSession>),
    /// One of the caller's active sessions, by id (a tab of its own, closed after).
    Existing(String),
}

/// What a render answers.
pub struct Rendered {
    pub output: Produced,
    pub page: Loaded,
    /// The session it ran in, and whether that session still runs (`keep_session`, or the
    /// caller's own).
    pub session: Arc<Session>,
    pub kept: bool,
}

/// Ends a fresh session when dropped, unless disarmed: a caller that hangs up (its request
/// future dropped) leaves nothing running.
struct EndOnDrop {
    session: Option<Arc<Session>>,
    metrics: Arc<Metrics>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let metrics = &self.metrics;
            let _ = session.end_counted(EndReason::Terminated, || {
                metrics.sessions_terminated.inc();
            });
        }
    }
}

impl EndOnDrop {
    /// Ends the session the way terminate does (its record written before answering).
    async fn end(mut self, broker: &Broker) {
        if let Some(session) = self.session.take() {
            let _ = broker.terminate(&session).await;
        }
    }

    fn keep(mut self) {
        self.session = None;
    }
}

/// Runs `job` for `tenant` in `target`.
pub async fn run(broker: &Broker, tenant: &Tenant, job: &RenderJob, target: Target) -> Result<Rendered, RenderError> {
    let (session, guard) = match target {
        Target::Existing(id) => (
            broker.active(Some(tenant), &id).await.map_err(RenderError::Session)?,
            None,
        ),
        Target::Fresh(new) => {
            let session = broker.create_session(tenant.clone(), *new).await?;
            let guard = EndOnDrop {
                session: Some(session.clone()),
                metrics: broker.metrics().clone(),
            };
            (session, Some(guard))
        }
    };
    let fresh = guard.is_some();
    let started = Instant::now();
    let deadline = started + job.load.timeout + PRODUCE_LIMIT;
    let work = async {
        let mut tab = Tab::open(
            &session.upstream,
            broker.egress(),
            broker.config().ws_config(),
            !fresh,
            deadline,
        )
        .await?;
        if fresh {
            tab.refuse_downloads().await?;
        }
        let page = tab.load(&job.load).await?;
        let output = tab.produce(&job.output).await?;
        Ok((page, output))
    };
    let result = tokio::select! {
        done = tokio::time::timeout_at(deadline, work) => done.unwrap_or_else(|_| Err(RenderError::Timeout {
            what: "finish rendering".into(),
            limit: deadline - started,
        })),
        _ = session.ended().cancelled() => Err(RenderError::Browser(format!(
            "the session ended ({}) during the render",
            session.end_reason().map_or("ended", |r| r.as_str())
        ))),
    };
    let kept = match guard {
        Some(guard) if job.keep_session && result.is_ok() => {
            guard.keep();
            true
        }
        Some(guard) => {
            guard.end(broker).await;
            false
        }
        None => true,
    };
    let (page, output) = result?;
    Ok(Rendered {
        output,
        page,
        session,
        kept,
    })
}
