//! The single-action engine behind `POST /public/single-actions/run-action`. One
//! instruction in words, carried out in a session's browser: by the built-in interpreter ([`instruction`]), or by
//! a model when one is configured and the interpreter does not understand it ([`model`]);
//! replayed from the [`cache`] when the caller gave an `id`.
//!
//! A failure of the action itself is an [`Answer`] with `success: false`. Actions on one
//! session run one at a time, in arrival order.

pub(crate) mod cache;
pub(crate) mod error;
pub(crate) mod instruction;
pub(crate) mod keys;
pub(crate) mod model;
pub(crate) mod page;
pub(crate) mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Tenant;
use crate::browser::egress::Egress;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session::Session;
use cache::{ActionCache, Entry};
use page::Page;
use run::{Runner, summarize};

/// A cached step gets less time than a fresh one: if its element is not there soon, the
/// page has changed and the step is resolved afresh.
const REPLAY_WAIT: Duration = Duration::from_secs(3);
/// How long a page may take to load.
const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What actions share across requests: the cache and the model, if configured.
pub struct Actions {
    pub cache: ActionCache,
    pub model: Option<model::ModelClient>,
    pub metrics: Arc<Metrics>,
}

/// One action to run: the instruction, its cache id and its variables' values.
pub struct Job {
    pub action: String,
    pub id: Option<String>,
    pub values: HashMap<String, String>,
    pub set_cache: bool,
    /// The session's files, for upload steps.
    pub files: Option<std::sync::Arc<crate::artifacts::SessionFiles>>,
    /// Where the session's browser may read a file put on an input (its downloads folder).
    pub browser_downloads: Option<std::path::PathBuf>,
}

/// What came of an action.
#[derive(Default)]
pub struct Answer {
    pub success: bool,
    pub result: String,
    pub credits: u32,
    pub error: Option<String>,
    pub used_cache: bool,
    pub set_cache: bool,
    pub cache_failed: bool,
}

impl Actions {
    /// Waits for the session's earlier actions (the lock is fair: arrival order), then runs.
    pub async fn run_in_turn(
        &self,
        tenant: &Tenant,
        session: &Session,
        request: &Job,
        config: &Config,
        egress: &Egress,
    ) -> Answer {
        let mut current_tab = session.actions.lock().await;
        let timeout = config.action_timeout();
        let kind = serde_json::json!({ "kind": "action" });
        session.event(crate::events::EventType::ClientConnected, kind.clone());
        let run = self.run_action(tenant, session, request, config, egress, &mut current_tab);
        let answer = match tokio::time::timeout(timeout, run).await {
            Ok(answer) => answer,
            Err(_) => Answer {
                error: Some(format!("The action did not finish within {} s", timeout.as_secs())),
                ..Answer::default()
            },
        };
        session.event(crate::events::EventType::ClientDisconnected, kind);
        answer
    }

    async fn run_action(
        &self,
        tenant: &Tenant,
        session: &Session,
        request: &Job,
        config: &Config,
        egress: &Egress,
        current_tab: &mut Option<String>,
    ) -> Answer {
        let page = Page::attach(
            &session.upstream,
            egress,
            session.upstream.timeout(config.byo_timeout()),
            session.upstream.parsed_ws_config(config),
            current_tab.as_deref(),
        )
        .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                return Answer {
                    error: Some(e.0),
                    ..Answer::default()
                };
            }
        };
        let mut runner = Runner {
            page,
            files: request.files.clone(),
            browser_downloads: request.browser_downloads.clone(),
            values: request.values.clone(),
            wait: config.action_wait(),
            navigation: NAVIGATION_TIMEOUT,
        };
        let mut answer = self.execute(tenant, request, config, &mut runner).await;
        let dialogs = runner.page.dialogs();
        if dialogs.count > 0 && answer.success {
            let more = dialogs.count - dialogs.first.len();
            answer.result.push_str(&format!(
                " The page showed {} dialog(s), accepted: \"{}\"{}.",
                dialogs.count,
                dialogs.first.join("\", \""),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        *current_tab = Some(runner.page.target_id.clone());
        runner.page.detach().await;
        answer
    }

    /// Replays the cached steps if there are any for this action, else (or if the replay
    /// fails) resolves the action afresh; keeps what was resolved.
    async fn execute(&self, tenant: &Tenant, request: &Job, config: &Config, runner: &mut Runner) -> Answer {
        let actions = self;
        let mut answer = Answer::default();
        let cached = request
            .id
            .as_ref()
            .and_then(|id| actions.cache.get(tenant, id))
            .filter(|entry| entry.is_for(&request.action));
        let mut done_before = Vec::new();
        let mut resolved_before = Vec::new();
        let mut resume_at = 0;
        if let Some(entry) = cached {
            match runner.run_all(&entry.steps, REPLAY_WAIT.min(runner.wait)).await {
                Ok((outcomes, _)) => {
                    self.metrics.action_cache_hits.inc();
                    answer.success = true;
                    answer.used_cache = true;
                    answer.result = summarize(&outcomes);
                    return answer;
                }
                Err(failed) => {
                    self.metrics.action_cache_failures.inc();
                    // Not the error's text: it may name an element by a variable's value.
                    tracing::info!(step = failed.index, "a cached step failed; resolving afresh");
                    answer.cache_failed = true;
                    // The steps before the failed one are done: go on from there.
                    resume_at = failed.index;
                    done_before = failed.done;
                    resolved_before = entry.steps[..failed.index].to_vec();
                }
            }
        }
        let fresh = match instruction::parse(&request.action) {
            Ok(steps) => {
                let rest = if resume_at < steps.len() {
                    &steps[resume_at..]
                } else {
                    &steps[..]
                };
                match runner.run_all(rest, runner.wait).await {
                    Ok((outcomes, resolved)) => {
                        done_before.extend(outcomes);
                        resolved_before.extend(resolved);
                        Ok((summarize(&done_before), resolved_before))
                    }
                    Err(failed) => {
                        let n = steps.len();
                        let at = resume_at + failed.index;
                        done_before.extend(failed.done);
                        answer.result = summarize(&done_before);
                        Err(if n > 1 {
                            format!("Step {} of {n} failed: {}", at + 1, failed.error)
                        } else {
                            failed.error.0
                        })
                    }
                }
            }
            Err(unknown) => match &actions.model {
                Some(client) => {
                    let max = config.model_max_calls;
                    let (result, credits) = runner.run_with_model(client, &request.action, max).await;
                    answer.credits = credits;
                    result.map_err(|e| e.0)
                }
                None => Err(format!(
                    "The instruction \"{unknown}\" is not understood, and no model is configured for \
                     instructions the built-in interpreter does not know. It understands: {}",
                    instruction::UNDERSTOOD
                )),
            },
        };
        match fresh {
            Ok((result, steps)) => {
                answer.success = true;
                answer.result = result;
                if let Some(id) = request.id.as_ref().filter(|_| request.set_cache && !steps.is_empty()) {
                    answer.set_cache = actions.cache.put(tenant, id, Entry::new(&request.action, steps));
                }
            }
            Err(error) => answer.error = Some(error),
        }
        answer
    }
}
