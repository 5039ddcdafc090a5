//! A render from start to end: where it runs (a bare context for a fresh render that is
//! not kept, see `broker::BareContext`; a fresh session made through the broker's normal
//! create when it is kept or needs what only a session has; or the caller's own session),
//! the page, the output, and what was made for it ended on every path: success, error,
//! timeout, and the caller going away (the future dropped).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::RenderError;
use super::options::RenderJob;
use super::page::{Loaded, Produced, Tab};
use crate::auth::Tenant;
use crate::broker::bare::BareContext;
use crate::broker::{Broker, NewSession};
use crate::browser::upstream::Upstream;
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
    /// The id it is listed under: its session's, or its bare context's.
    pub id: String,
    /// The session it ran in, if it ran in one (not a bare context), and whether that
    /// session still runs (`keep_session`, or the caller's own).
    pub session: Option<Arc<Session>>,
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

/// Where a render runs, and what ends it.
enum Place<'a> {
    /// A session: the caller's (no guard) or one made for the render.
    Session(Arc<Session>, Option<EndOnDrop>),
    /// A bare context, disposed when dropped (boxed: it carries its record).
    Bare(Box<BareContext<'a>>),
}

impl Place<'_> {
    fn upstream(&self) -> &Upstream {
        match self {
            Place::Session(session, _) => &session.upstream,
            Place::Bare(bare) => &bare.upstream,
        }
    }

    /// Fires when the place can no longer render, with why.
    async fn lost(&self) -> String {
        match self {
            Place::Session(session, _) => {
                session.ended().cancelled().await;
                let why = session.end_reason().map_or("ended", |r| r.as_str());
                format!("the session ended ({why}) during the render")
            }
            Place::Bare(bare) => format!(
                "the render's browser context ended ({}) during the render",
                bare.lost().await
            ),
        }
    }
}

/// How long a render's steps took (zero for a step not reached).
#[derive(Default)]
struct Steps {
    /// Connecting and taking the tab (and refusing downloads in a fresh one).
    open: Duration,
    load: Duration,
    produce: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `job` for `tenant` in `target`.
pub async fn run(broker: &Broker, tenant: &Tenant, job: &RenderJob, target: Target) -> Result<Rendered, RenderError> {
    let began = Instant::now();
    let mut _turn = None;
    let place = match target {
        Target::Existing(id) => {
            let session = broker.active(Some(tenant), &id).await.map_err(RenderError::Session)?;
            let turn = session.renders.clone().try_acquire_owned();
            _turn = Some(turn.map_err(|_| RenderError::Busy(crate::session::RENDERS_AT_ONCE))?);
            Place::Session(session, None)
        }
        Target::Fresh(new) if !job.keep_session && broker.renders_bare(&new) => {
            Place::Bare(Box::new(broker.bare_context(tenant, *new).await?))
        }
        Target::Fresh(new) => {
            let session = broker.create_session(tenant.clone(), *new).await?;
            let guard = EndOnDrop {
                session: Some(session.clone()),
                metrics: broker.metrics().clone(),
            };
            Place::Session(session, Some(guard))
        }
    };
    // A tab of its own in a caller's session; the first tab of a fresh one.
    let fresh = !matches!(place, Place::Session(_, None));
    let started = Instant::now();
    let deadline = started + job.load.timeout + PRODUCE_LIMIT;
    let mut took = Steps::default();
    let work = async {
        let mut tab = Tab::open(
            place.upstream(),
            broker.egress(),
            place.upstream().parsed_ws_config(broker.config()),
            !fresh,
            deadline,
        )
        .await?;
        if fresh {
            tab.refuse_downloads().await?;
        }
        took.open = started.elapsed();
        let page = tab.load(&job.load).await?;
        took.load = started.elapsed() - took.open;
        let output = tab.produce(&job.output).await?;
        took.produce = started.elapsed() - took.open - took.load;
        Ok((page, output))
    };
    let result = tokio::select! {
        done = tokio::time::timeout_at(deadline, work) => done.unwrap_or_else(|_| Err(RenderError::Timeout {
            what: "finish rendering".into(),
            limit: deadline - started,
        })),
        why = place.lost() => Err(RenderError::Browser(why)),
    };
    let ending = Instant::now();
    let bare = matches!(place, Place::Bare(_));
    let (id, session, kept) = match place {
        Place::Bare(bare) => {
            let id = bare.id.clone();
            bare.finish().await;
            (id, None, false)
        }
        Place::Session(session, None) => (session.id.clone(), Some(session), true),
        Place::Session(session, Some(guard)) if job.keep_session && result.is_ok() => {
            guard.keep();
            (session.id.clone(), Some(session), true)
        }
        Place::Session(session, Some(guard)) => {
            guard.end(broker).await;
            (session.id.clone(), Some(session), false)
        }
    };
    // Where a render's time went, for `RUST_LOG=cdpgate::render=debug`
    // (docs/benchmarks.md's breakdown).
    tracing::debug!(
        bare,
        place_ms = ms(started - began),
        open_ms = ms(took.open),
        load_ms = ms(took.load),
        produce_ms = ms(took.produce),
        end_ms = ms(ending.elapsed()),
        total_ms = ms(began.elapsed()),
        ok = result.is_ok(),
        "render timed"
    );
    let (page, output) = result?;
    Ok(Rendered {
        output,
        page,
        id,
        session,
        kept,
    })
}
