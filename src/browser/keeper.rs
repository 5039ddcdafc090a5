//! The identity keeper: a DevTools connection of the broker's own to a browser, auto-attached
//! to every target (new ones wait for it before they run a line of script), which puts on
//! each target the identity of the session it belongs to ([`identity`]), hands that target's
//! events to that session's [`Watch`], and lets it go. Overrides last as long as the
//! connection that set them, which is why it stays open.
//!
//! A process session's browser is all its own: [`keep`] gives it a keeper for the session's
//! life, every context of the browser mapped to that session. A shared browser has one
//! keeper for its life ([`ContextKeeper`]) whatever the number of its context sessions: each
//! registers its browser context. A target is handled by its context
//! (`targetInfo.browserContextId`; a frame or worker by its page's), and one of a context no
//! session holds (a spare, one being disposed) is let go untouched. So a new tab waits for
//! one keeper, not for one per live context, and no session's identity or watch reaches
//! another context's targets.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::blocking;
use super::cdp::CdpError;
use super::egress::Egress;
use super::identity::{self, BrowserFacts, Identity};
use super::upstream::{Upstream, UpstreamStream};
use super::watch::Watch;

const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message the keeper reads. Chrome sends what pages make (a console line of a
/// page is one message, whole), and one connection serves every context of a shared
/// browser: well past what a page can make in passing, and no frame limit of its own.
const MAX_MESSAGE: usize = 256 << 20;

/// Times a shared browser's keeper connects again after its connection dropped.
const RECONNECTS: usize = 3;

type Socket = tokio_tungstenite::WebSocketStream<UpstreamStream>;

/// What one session wants of its targets.
struct Kept {
    identity: Identity,
    watch: Watch,
}

/// A target the keeper is attached to (one of its CDP sessions).
struct Attached {
    target: String,
    /// Its browser context: a frame's or worker's is its page's.
    context: String,
    kind: String,
    /// The CDP session it was attached through; none for the browser's auto-attach.
    parent: Option<String>,
    /// Its session's overrides are on it.
    applied: bool,
    /// A spare's page: the commands of a session that asks for nothing, put on it ahead
    /// of any session (`ContextKeeper::spare`).
    dressed: Option<Vec<(&'static str, Value)>>,
    /// Everything sent to it has been answered (a spare's page, probed as it was dressed):
    /// a session that takes it as dressed need not wait for another round trip.
    landed: bool,
}

impl Attached {
    fn is_page(&self) -> bool {
        matches!(self.kind.as_str(), "page" | "iframe")
    }
}

enum Command {
    Register {
        context: String,
        kept: Arc<Kept>,
        done: oneshot::Sender<Result<(), CdpError>>,
    },
    Unregister {
        context: String,
    },
    Spare {
        context: String,
        done: oneshot::Sender<()>,
    },
    Unspare {
        context: String,
    },
}

/// Puts `identity` on every target of the session's own browser at `upstream` (those open
/// now before this answers, later ones before they run) and keeps it there until `until`
/// fires; what `identity` leaves unset is the browser's own, without automation tells.
pub(crate) async fn keep(
    upstream: &Upstream,
    egress: &Egress,
    identity: Identity,
    watch: Watch,
    until: CancellationToken,
) -> Result<(), CdpError> {
    let kept = Arc::new(Kept { identity, watch });
    let setup = async {
        let mut keeper = Keeper::connect(upstream, egress, Some(kept.clone())).await?;
        if let Some(params) = kept.watch.blocking.fetch_params() {
            // On the browser target: every request of the browser, a tab opened with a URL
            // included (a target's own interception misses the first document's requests
            // of such a tab). A session whose blocking does not hold is refused.
            keeper.call(None, "Fetch.enable", params).await?;
        }
        keeper.attach_all().await?;
        keeper.land(None).await?;
        Ok::<_, CdpError>(keeper)
    };
    let keeper = tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| CdpError::Timeout)??;
    tokio::spawn(keeper.run(None, until));
    Ok(())
}

/// A shared browser's one keeper, for the browser's life: its context sessions register
/// their browser contexts with it.
pub(crate) struct ContextKeeper {
    commands: mpsc::UnboundedSender<Command>,
    registered: Arc<AtomicUsize>,
    spares: Arc<AtomicUsize>,
}

impl ContextKeeper {
    /// Attaches to every target of the shared browser at `upstream`, straight (the broker's
    /// own connection, not a context's filtered one).
    pub(crate) async fn start(upstream: &Upstream, egress: Arc<Egress>) -> Result<ContextKeeper, CdpError> {
        let setup = async {
            let mut keeper = Keeper::connect(upstream, &egress, None).await?;
            keeper.again = Some((upstream.clone(), egress.clone()));
            keeper.attach_all().await?;
            Ok::<_, CdpError>(keeper)
        };
        let keeper = tokio::time::timeout(SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| CdpError::Timeout)??;
        let (commands, receiver) = mpsc::unbounded_channel();
        let (registered, spares) = (keeper.registered.clone(), keeper.spare_count.clone());
        tokio::spawn(keeper.run(Some(receiver), CancellationToken::new()));
        Ok(ContextKeeper {
            commands,
            registered,
            spares,
        })
    }

    /// Puts `identity` on every target of `context` (those open now before this answers,
    /// later ones before they run) and hands their events to `watch`, until `until` fires:
    /// then the keeper lets the context's targets go and the capture is finished.
    pub(crate) async fn register(
        &self,
        context: &str,
        identity: Identity,
        watch: Watch,
        until: CancellationToken,
    ) -> Result<(), CdpError> {
        let gone = || CdpError::Http("the shared browser's identity keeper has stopped".into());
        let (done, answer) = oneshot::channel();
        let kept = Arc::new(Kept { identity, watch });
        let register = Command::Register {
            context: context.to_owned(),
            kept,
            done,
        };
        self.commands.send(register).map_err(|_| gone())?;
        // Sent after the registration, so it comes after it: even one not answered in time
        // is undone at the session's end.
        let (commands, context) = (self.commands.clone(), context.to_owned());
        tokio::spawn(async move {
            until.cancelled().await;
            let _ = commands.send(Command::Unregister { context });
        });
        tokio::time::timeout(SETUP_TIMEOUT + Duration::from_secs(1), answer)
            .await
            .map_err(|_| CdpError::Timeout)?
            .map_err(|_| gone())?
    }

    /// Takes `context` for a spare: its pages get the overrides of a session that asks for
    /// nothing as they open, so that such a session, the most common, finds them there
    /// when it registers (a round trip through the page instead of the page's script), and
    /// one that asks for more gets the rest on top. Not while the sessions registering ask
    /// for a page script of their own (a fingerprint): their spares stay bare. Called
    /// before the context's first tab is made; answers once the keeper knows.
    pub(crate) async fn spare(&self, context: &str) {
        let (done, answer) = oneshot::channel();
        let spare = Command::Spare {
            context: context.to_owned(),
            done,
        };
        // A keeper still busy past the limit (connecting again) leaves the tab bare: it
        // gets its session's overrides as the session registers.
        if self.commands.send(spare).is_ok() {
            let _ = tokio::time::timeout(SETUP_TIMEOUT, answer).await;
        }
    }

    /// Forgets `context` as a spare: it is being disposed unused.
    pub(crate) fn unspare(&self, context: &str) {
        let _ = self.commands.send(Command::Unspare {
            context: context.to_owned(),
        });
    }

    /// Whether it still keeps the browser's targets (it stops with the browser, or when it
    /// could not connect again): a browser without it takes no new context.
    pub(crate) fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// The contexts registered now.
    pub(crate) fn registered(&self) -> usize {
        self.registered.load(Relaxed)
    }

    /// The spare contexts it dresses now.
    pub(crate) fn spares(&self) -> usize {
        self.spares.load(Relaxed)
    }
}

struct Keeper {
    ws: Socket,
    /// Where a shared browser's keeper connects again if its connection drops.
    again: Option<(Upstream, Arc<Egress>)>,
    facts: BrowserFacts,
    /// A process session's: every context of the browser is its.
    whole: Option<Arc<Kept>>,
    /// A shared browser's: each context session's, by its browser context.
    contexts: HashMap<String, Arc<Kept>>,
    /// A shared browser's spare contexts (no session yet), each with whether its first
    /// page (the spare's tab; the only one dressed) has attached.
    spares: HashMap<String, bool>,
    spare_count: Arc<AtomicUsize>,
    /// Whether new spares are dressed: the last session to register could have taken a
    /// dressed page as it was or with overrides on top (not one with a page script of its
    /// own, for which a dressed page is dressed again, slower than an undressed one).
    dress_spares: bool,
    registered: Arc<AtomicUsize>,
    /// Some session captures console / network events (else they are not parsed).
    console: bool,
    network: bool,
    next_id: u64,
    /// CDP session → the target it reaches.
    attached: HashMap<String, Attached>,
    /// `Network.getResponseBody` calls in flight → (CDP session, request id).
    bodies: HashMap<u64, (String, String)>,
    /// Probes of spares' pages in flight → CDP session: answered, the page has landed.
    probes: HashMap<u64, String>,
    /// How long it waits for the answers to what it sent before it gives up.
    answer_limit: Duration,
    /// When the registration under way gives up, whatever it waits for then.
    deadline: Option<tokio::time::Instant>,
}

impl Keeper {
    /// Connects and reads what the browser says of itself.
    async fn connect(upstream: &Upstream, egress: &Egress, whole: Option<Arc<Kept>>) -> Result<Keeper, CdpError> {
        let mut keeper = Keeper::over(open(upstream, egress).await?, whole);
        let version = keeper.call(None, "Browser.getVersion", json!({})).await?;
        keeper.facts = BrowserFacts::of(&version);
        Ok(keeper)
    }

    /// A keeper on the connection `ws`, attached to nothing yet.
    fn over(ws: Socket, whole: Option<Arc<Kept>>) -> Keeper {
        let mut keeper = Keeper {
            ws,
            again: None,
            facts: BrowserFacts::default(),
            whole,
            contexts: HashMap::new(),
            spares: HashMap::new(),
            spare_count: Arc::default(),
            dress_spares: true,
            registered: Arc::default(),
            console: false,
            network: false,
            next_id: 0,
            attached: HashMap::new(),
            bodies: HashMap::new(),
            probes: HashMap::new(),
            answer_limit: SETUP_TIMEOUT,
            deadline: None,
        };
        keeper.note_captures();
        keeper
    }

    /// Serves the connection until it closes (for good), `commands` close, or `until`
    /// fires; then finishes what its sessions captured.
    async fn run(mut self, mut commands: Option<mpsc::UnboundedReceiver<Command>>, until: CancellationToken) {
        loop {
            tokio::select! {
                message = self.ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if self.on_message(&text).await.is_err() && !self.reconnect().await {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => if !self.reconnect().await {
                        break;
                    },
                },
                command = next_command(&mut commands) => match command {
                    Some(Command::Register { context, kept, done }) => {
                        // Not one whose create has given up waiting (queued behind a slow
                        // one): that session is refused, and its Unregister follows.
                        if done.is_closed() {
                            continue;
                        }
                        // Bounded by its reads (`answers`), never cut mid-way: an event of
                        // another context's (a new tab held until it has its overrides) is
                        // handled whole before a registration can time out.
                        self.deadline = Some(tokio::time::Instant::now() + self.answer_limit);
                        let registered = self.register(&context, kept).await;
                        self.deadline = None;
                        if registered.is_err() {
                            self.forget(&context).await;
                        }
                        let _ = done.send(registered);
                    }
                    Some(Command::Unregister { context }) => self.unregister(&context).await,
                    Some(Command::Unspare { context }) => self.drop_spare(&context),
                    Some(Command::Spare { context, done }) => {
                        // Not one whose caller has given up waiting: its tab is open bare.
                        if self.dress_spares && !done.is_closed() {
                            self.spares.insert(context, false);
                        }
                        self.spare_count.store(self.spares.len(), Relaxed);
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = until.cancelled() => break,
            }
        }
        for kept in self.whole.iter().chain(self.contexts.values()) {
            if let Some(capture) = &kept.watch.capture {
                capture.finish();
            }
        }
        self.registered.store(0, Relaxed);
    }

    /// A shared browser's keeper whose connection dropped (a message past [`MAX_MESSAGE`],
    /// say) while the browser runs connects again and puts every registered context's
    /// overrides back on its targets: one tenant's page must not leave the others' pages
    /// unkept. False if it cannot (the browser is gone).
    async fn reconnect(&mut self) -> bool {
        let Some((upstream, egress)) = self.again.clone() else {
            return false;
        };
        // The spares' tabs keep the plain script's run in their documents: attached again
        // undressed, and dressed again (a fresh document) when a session takes one.
        let stale: Vec<String> = self.spares.drain().map(|(context, _)| context).collect();
        self.spare_count.store(0, Relaxed);
        for _ in 0..RECONNECTS {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = async {
                self.ws = open(&upstream, &egress).await?;
                self.attached.clear();
                self.bodies.clear();
                self.probes.clear();
                self.attach_all().await?;
                for page in self
                    .attached
                    .values_mut()
                    .filter(|a| a.is_page() && stale.contains(&a.context))
                {
                    page.dressed = Some(Vec::new());
                }
                self.land(None).await
            };
            if let Ok(Ok(())) = tokio::time::timeout(SETUP_TIMEOUT, again).await {
                tracing::warn!("the shared browser's identity keeper lost its connection and connected again");
                return true;
            }
        }
        false
    }

    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<u64, CdpError> {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| CdpError::Http(e.to_string()))?;
        Ok(self.next_id)
    }

    /// Sends a command and answers its result (or its refusal), serving the other messages
    /// meanwhile.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, CdpError> {
        let id = self.send(session, method, params).await?;
        let mut reply = self.answers(HashMap::from([(id, session.map(str::to_owned))])).await?;
        let Some(reply) = reply.remove(&id) else {
            return Err(CdpError::Protocol(format!(
                "{method}: its target closed before it answered"
            )));
        };
        if let Some(error) = reply.get("error") {
            return Err(CdpError::Refused {
                method: method.into(),
                message: error.to_string(),
            });
        }
        Ok(reply["result"].clone())
    }

    /// Reads until the commands `waiting` (each with the CDP session it went to) are all
    /// answered, serving the other messages. One whose session detaches meanwhile is not
    /// waited for: Chrome drops what was sent to a target that closes (a tab a profile's
    /// origins were loaded through, closed as its context's session registers), unanswered.
    async fn answers(&mut self, mut waiting: HashMap<u64, Option<String>>) -> Result<HashMap<u64, Value>, CdpError> {
        let mut replies = HashMap::new();
        let own = tokio::time::Instant::now() + self.answer_limit;
        let deadline = self.deadline.map_or(own, |d| d.min(own));
        while !waiting.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return Err(CdpError::Timeout);
            }
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await;
            let Some(message) = next.map_err(|_| CdpError::Timeout)? else {
                return Err(CdpError::Protocol("the connection closed during setup".into()));
            };
            let Message::Text(text) = message.map_err(|e| CdpError::Http(e.to_string()))? else {
                continue;
            };
            let id = super::filter::leading_id(&text).and_then(|id| u64::try_from(id).ok());
            match id {
                Some(id) if waiting.remove(&id).is_some() => {
                    let reply = serde_json::from_str(&text).map_err(|e| CdpError::Protocol(e.to_string()))?;
                    replies.insert(id, reply);
                }
                _ => {
                    self.on_message(&text).await?;
                    let before = waiting.len();
                    waiting.retain(|_, on| on.as_ref().is_none_or(|s| self.attached.contains_key(s)));
                    if waiting.len() < before {
                        tracing::debug!("a target closed before it answered the keeper");
                    }
                }
            }
        }
        Ok(replies)
    }

    /// Auto-attaches to every target of the browser, holding new ones until they have
    /// their overrides; the ones open now are attached (and kept) before this answers.
    async fn attach_all(&mut self) -> Result<(), CdpError> {
        let params = json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true });
        self.call(None, "Target.setAutoAttach", params).await.map(drop)
    }

    /// One round trip on each page (of `context`, or all) after its overrides: they have
    /// landed once it answers.
    async fn land(&mut self, context: Option<&str>) -> Result<(), CdpError> {
        let pages: Vec<String> = self
            .attached
            .iter()
            .filter(|(_, a)| a.applied && !a.landed && a.is_page() && context.is_none_or(|c| a.context == c))
            .map(|(s, _)| s.clone())
            .collect();
        let mut probes = HashMap::new();
        for page in pages {
            let probe = json!({ "expression": "0" });
            probes.insert(self.send(Some(&page), "Runtime.evaluate", probe).await?, Some(page));
        }
        self.answers(probes).await.map(drop)
    }

    /// What the session holding `context` wants, if one does.
    fn kept_for(&self, context: &str) -> Option<Arc<Kept>> {
        self.whole.clone().or_else(|| self.contexts.get(context).cloned())
    }

    fn note_captures(&mut self) {
        let captures = || {
            self.whole
                .iter()
                .chain(self.contexts.values())
                .filter_map(|k| k.watch.capture.as_ref())
        };
        self.console = captures().any(|c| c.wants.console);
        self.network = captures().any(|c| c.wants.network);
    }

    /// Takes on `context`'s session: its targets open now get their overrides before this
    /// answers (a spare context's first tab), later ones as they attach.
    async fn register(&mut self, context: &str, kept: Arc<Kept>) -> Result<(), CdpError> {
        self.drop_spare(context);
        self.dress_spares = on_top_of(&self.plain_commands("page"), self.commands_for(&kept, "page")).is_some();
        self.contexts.insert(context.to_owned(), kept.clone());
        self.registered.store(self.contexts.len(), Relaxed);
        self.note_captures();
        let open: Vec<String> = self
            .attached
            .iter()
            .filter(|(_, a)| a.context == context && !a.applied)
            .map(|(s, _)| s.clone())
            .collect();
        for session in open {
            let Some((dressed, kind)) = self
                .attached
                .get_mut(&session)
                .map(|a| (a.dressed.take(), a.kind.clone()))
            else {
                continue;
            };
            let Some(dressed) = dressed else {
                self.apply(&session, &kept).await?;
                continue;
            };
            match on_top_of(&dressed, self.commands_for(&kept, &kind)) {
                Some(rest) => {
                    if let Some(attached) = self.attached.get_mut(&session) {
                        attached.applied = true;
                        attached.landed &= rest.is_empty();
                    }
                    if !rest.is_empty() {
                        // Its probe, if still coming, no longer says all it was sent landed.
                        self.probes.retain(|_, probed| probed != &session);
                    }
                    for (method, params) in rest {
                        self.send(Some(&session), method, params).await?;
                    }
                }
                None => self.redress(&session).await?,
            }
        }
        self.land(Some(context)).await
    }

    fn drop_spare(&mut self, context: &str) {
        if self.spares.remove(context).is_some() {
            self.spare_count.store(self.spares.len(), Relaxed);
        }
    }

    /// The commands of a session that asks for nothing, on a target of `kind`: a spare's
    /// dressing.
    fn plain_commands(&self, kind: &str) -> Vec<(&'static str, Value)> {
        identity::target_commands(&Identity::default(), &self.facts, kind, None, None)
    }

    /// The commands that put `kept`'s identity on a target of `kind`.
    fn commands_for(&self, kept: &Kept, kind: &str) -> Vec<(&'static str, Value)> {
        // A process session's blocking is on the browser target; a context's, on each of
        // its targets.
        let fetch = match self.whole {
            Some(_) => None,
            None => kept.watch.blocking.fetch_params(),
        };
        let capture = kept.watch.capture.as_deref();
        identity::target_commands(&kept.identity, &self.facts, kind, fetch, capture)
    }

    /// Puts a session that asks for something on a spare's page dressed for one that asks
    /// for nothing: the CDP session that dressed it goes (its overrides and scripts with
    /// it), a new one gets the session's (as it attaches: `on_attached`), and the page
    /// loads a new blank document, on which the plain script has not run.
    async fn redress(&mut self, session: &str) -> Result<(), CdpError> {
        let Some(old) = self.attached.remove(session) else {
            return Ok(());
        };
        let detach = json!({ "sessionId": session });
        self.call(old.parent.as_deref(), "Target.detachFromTarget", detach)
            .await?;
        let attach = json!({ "targetId": old.target, "flatten": true });
        let attached = self.call(None, "Target.attachToTarget", attach).await?;
        let Some(new) = attached["sessionId"].as_str().map(str::to_owned) else {
            return Err(CdpError::Protocol("Target.attachToTarget answered no session".into()));
        };
        if !self.attached.contains_key(&new) {
            // Chrome tells of the attachment before it answers; in case it has not yet,
            // the page is taken on here (and the event, when it comes, is not acted on).
            let event = json!({ "params": { "sessionId": new, "targetInfo": {
                "targetId": old.target, "type": old.kind, "browserContextId": old.context,
            }}});
            self.on_attached(&event).await?;
        }
        match self
            .call(Some(&new), "Page.navigate", json!({ "url": "about:blank" }))
            .await
        {
            // The tab closed meanwhile: nothing is left to dress.
            Err(_) if !self.attached.contains_key(&new) => Ok(()),
            navigated => navigated.map(drop),
        }
    }

    /// Lets `context`'s targets go (their overrides and capture end with the keeper's
    /// sessions to them) and forgets its session; answers what it wanted.
    async fn forget(&mut self, context: &str) -> Option<Arc<Kept>> {
        let kept = self.contexts.remove(context);
        self.drop_spare(context);
        self.registered.store(self.contexts.len(), Relaxed);
        self.note_captures();
        let sessions: Vec<(String, Option<String>)> = self
            .attached
            .iter()
            .filter(|(_, a)| a.context == context)
            .map(|(s, a)| (s.clone(), a.parent.clone()))
            .collect();
        for (session, parent) in sessions {
            self.attached.remove(&session);
            let detach = json!({ "sessionId": session });
            let _ = self.send(parent.as_deref(), "Target.detachFromTarget", detach).await;
        }
        kept
    }

    /// The session of `context` has ended.
    async fn unregister(&mut self, context: &str) {
        if let Some(capture) = self.forget(context).await.and_then(|k| k.watch.capture.clone()) {
            capture.finish();
        }
    }

    async fn on_message(&mut self, text: &str) -> Result<(), CdpError> {
        // Only events about attachments, blocked requests, navigations, dialogs and what
        // is captured matter, and the bodies asked for; other replies are not awaited
        // (commands to one target run in order, so the overrides land before it is let go).
        let wanted = [
            "\"Target.attachedToTarget\"",
            "\"Target.detachedFromTarget\"",
            "\"Fetch.requestPaused\"",
            "\"Page.frameNavigated\"",
            "\"Page.javascriptDialogOpening\"",
        ];
        let console = [
            "\"Runtime.consoleAPICalled\"",
            "\"Runtime.exceptionThrown\"",
            "\"Log.entryAdded\"",
        ];
        let captured =
            (self.network && text.contains("\"Network.")) || (self.console && console.iter().any(|w| text.contains(w)));
        let reply = text.starts_with("{\"id\":");
        if reply && !self.probes.is_empty() && self.probe_answered(text) {
            return Ok(());
        }
        let body = !self.bodies.is_empty() && reply;
        if !captured && !body && !wanted.iter().any(|w| text.contains(w)) {
            return Ok(());
        }
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return Ok(());
        };
        if let Some((session, request)) = message["id"].as_u64().and_then(|id| self.bodies.remove(&id)) {
            if let Some(capture) = self.watch_of(&session).and_then(|k| k.watch.capture.clone()) {
                capture.body(&session, &request, &message["result"]);
            }
            return Ok(());
        }
        match message["method"].as_str() {
            Some("Target.attachedToTarget") => self.on_attached(&message).await,
            Some("Target.detachedFromTarget") => {
                if let Some(gone) = message["params"]["sessionId"].as_str() {
                    self.drop_session(gone);
                }
                Ok(())
            }
            Some(_) => self.observe(&message).await,
            None => Ok(()),
        }
    }

    /// What the session holding the target of CDP session `session` wants (the browser
    /// target's own events, without a session, are a process session's).
    fn watch_of(&self, session: &str) -> Option<Arc<Kept>> {
        if session.is_empty() {
            return self.whole.clone();
        }
        self.kept_for(&self.attached.get(session)?.context)
    }

    /// Forgets a CDP session that Chrome closed, and the ones attached through it.
    /// A spare page's probe answered: that page has landed. False for any other reply.
    fn probe_answered(&mut self, text: &str) -> bool {
        let id = super::filter::leading_id(text).and_then(|id| u64::try_from(id).ok());
        let Some(session) = id.and_then(|id| self.probes.remove(&id)) else {
            return false;
        };
        let answered = serde_json::from_str::<Value>(text).is_ok_and(|m| m.get("result").is_some());
        if let Some(attached) = self.attached.get_mut(&session) {
            attached.landed = answered;
        }
        true
    }

    fn drop_session(&mut self, gone: &str) {
        self.probes.retain(|_, session| session != gone);
        let mut stack = vec![gone.to_owned()];
        while let Some(session) = stack.pop() {
            self.attached.remove(&session);
            stack.extend(
                self.attached
                    .iter()
                    .filter(|(_, a)| a.parent.as_deref() == Some(session.as_str()))
                    .map(|(s, _)| s.clone()),
            );
        }
    }

    /// A new target: its session's overrides go on it if a session holds its context,
    /// and it is let go.
    async fn on_attached(&mut self, event: &Value) -> Result<(), CdpError> {
        let params = &event["params"];
        let Some(session) = params["sessionId"].as_str() else {
            return Ok(());
        };
        if self.attached.contains_key(session) {
            return Ok(());
        }
        let info = &params["targetInfo"];
        let parent = event["sessionId"].as_str().map(str::to_owned);
        // A frame or worker is its page's, whatever it says of itself.
        let context = match parent.as_deref().and_then(|p| self.attached.get(p)) {
            Some(page) => page.context.clone(),
            None => info["browserContextId"].as_str().unwrap_or("").to_owned(),
        };
        let attached = Attached {
            target: info["targetId"].as_str().unwrap_or("").to_owned(),
            context,
            kind: info["type"].as_str().unwrap_or("").to_owned(),
            parent,
            applied: false,
            dressed: None,
            landed: false,
        };
        let kept = self.kept_for(&attached.context);
        // Only the spare's own tab: pages opened later in its context (a profile's origins
        // being loaded into it) are left bare, and closed before the session registers.
        let spare = kept.is_none()
            && attached.is_page()
            && self
                .spares
                .get_mut(&attached.context)
                .is_some_and(|seen| !std::mem::replace(seen, true));
        let kind = attached.kind.clone();
        self.attached.insert(session.to_owned(), attached);
        if let Some(kept) = kept {
            self.apply(session, &kept).await?;
        } else if spare {
            let plain = self.plain_commands(&kind);
            for (method, params) in &plain {
                self.send(Some(session), method, params.clone()).await?;
            }
            if let Some(attached) = self.attached.get_mut(session) {
                attached.dressed = Some(plain);
            }
        }
        self.send(Some(session), "Runtime.runIfWaitingForDebugger", json!({}))
            .await?;
        if spare {
            // Answered after all of the above (one target runs its commands in order):
            // the session that takes the spare finds it landed.
            let probe = self
                .send(Some(session), "Runtime.evaluate", json!({ "expression": "0" }))
                .await?;
            self.probes.insert(probe, session.to_owned());
        }
        Ok(())
    }

    /// Sets a session's overrides on one of its targets (not yet let go, or a spare's
    /// page already running).
    async fn apply(&mut self, session: &str, kept: &Kept) -> Result<(), CdpError> {
        let Some(attached) = self.attached.get_mut(session) else {
            return Ok(());
        };
        attached.applied = true;
        let kind = attached.kind.clone();
        for (method, params) in self.commands_for(kept, &kind) {
            self.send(Some(session), method, params).await?;
        }
        Ok(())
    }

    /// Acts on an event a session's watch wants: a blocked request, a frame's navigation,
    /// a dialog, what is captured. Only the watch of the session whose target sent it.
    async fn observe(&mut self, event: &Value) -> Result<(), CdpError> {
        let session = event["sessionId"].as_str().unwrap_or("");
        let kept = self.watch_of(session);
        let on = (!session.is_empty()).then_some(session);
        if event["method"] == "Fetch.requestPaused" {
            let params = &event["params"];
            // A request paused for a session that has just ended runs on.
            let answer = match &kept {
                Some(kept) => kept.watch.paused(params),
                None => blocking::passage(params).map(|p| ("Fetch.continueRequest", p)),
            };
            if let Some((method, params)) = answer {
                self.send(on, method, params).await?;
            }
            return Ok(());
        }
        let Some(kept) = kept else { return Ok(()) };
        let watch = &kept.watch;
        let target = self.attached.get(session).map_or("", |a| a.target.as_str()).to_owned();
        match event["method"].as_str() {
            Some("Page.frameNavigated") => watch.navigated(event, &target),
            Some("Page.javascriptDialogOpening") => watch.dialog(event, &target),
            Some(_) if on.is_some() => {
                let Some(capture) = &watch.capture else { return Ok(()) };
                let taken = capture.event(session, &target, event);
                if let Some(seen) = taken.error {
                    watch.error(seen);
                }
                if let Some(request) = taken.body {
                    let params = json!({ "requestId": request });
                    let id = self.send(on, "Network.getResponseBody", params).await?;
                    self.bodies.insert(id, (session.to_owned(), request));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What is left to send to a page dressed with `dressed` for it to have `wanted`: the
/// commands it has not had as they are, if every command it had is one `wanted` sends too
/// (an override that the new one replaces) and its page script is `wanted`'s (a second
/// script would run beside the first on every document). `None`: it must be dressed again.
fn on_top_of(
    dressed: &[(&'static str, Value)],
    wanted: Vec<(&'static str, Value)>,
) -> Option<Vec<(&'static str, Value)>> {
    /// Commands whose second sending replaces what the first one set, whole.
    const REPLACED: [&str; 2] = ["Emulation.setUserAgentOverride", "Network.setUserAgentOverride"];
    const SCRIPT: &str = "Page.addScriptToEvaluateOnNewDocument";
    let scripts = |commands: &[(&'static str, Value)]| commands.iter().filter(|(m, _)| *m == SCRIPT).count();
    // Every command the page had is sent again as it was, or replaced: the one page script
    // is the same (not among the replaced: a second one would run beside it).
    let kept = dressed
        .iter()
        .all(|had| wanted.contains(had) || (REPLACED.contains(&had.0) && wanted.iter().any(|(m, _)| *m == had.0)));
    if !kept || scripts(dressed) != 1 || scripts(&wanted) != 1 {
        return None;
    }
    Some(
        wanted
            .into_iter()
            .filter(|command| !dressed.contains(command))
            .collect(),
    )
}

/// The keeper's connection to the browser at `upstream`.
async fn open(upstream: &Upstream, egress: &Egress) -> Result<Socket, CdpError> {
    let (stream, early) = upstream
        .connect_raw(&upstream.browser_path, egress, SETUP_TIMEOUT)
        .await
        .map_err(|e| CdpError::Http(e.to_string()))?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(None);
    Ok(tokio_tungstenite::WebSocketStream::from_partially_read(stream, early, Role::Client, Some(config)).await)
}

async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<Command>>) -> Option<Command> {
    match commands {
        Some(commands) => commands.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::browser::devices;
    use crate::browser::fingerprint::OwnVersion;

    fn plain() -> Vec<(&'static str, Value)> {
        vec![
            ("Emulation.setUserAgentOverride", json!({ "userAgent": "Chrome/156" })),
            ("Page.enable", json!({})),
            ("Page.addScriptToEvaluateOnNewDocument", json!({ "source": "patch()" })),
            ("Target.setAutoAttach", json!({ "autoAttach": true })),
        ]
    }

    #[test]
    fn a_dressed_page_takes_only_what_it_lacks_or_is_dressed_again() {
        assert_eq!(on_top_of(&plain(), plain()), Some(vec![]));
        // Another user agent and a time zone: the override replaced, the zone added.
        let mut wanted = plain();
        wanted[0].1 = json!({ "userAgent": "Agent/7" });
        wanted.push(("Emulation.setTimezoneOverride", json!({ "timezoneId": "Asia/Tokyo" })));
        let rest = on_top_of(&plain(), wanted.clone()).unwrap();
        assert_eq!(rest, vec![wanted[0].clone(), wanted[4].clone()]);
        // Another page script (a fingerprint's) would run beside the first one.
        let mut wanted = plain();
        wanted[2].1 = json!({ "source": "patch(fingerprint)" });
        assert_eq!(on_top_of(&plain(), wanted), None);
        // An override the session would not send would stay on.
        let wanted: Vec<_> = plain()
            .into_iter()
            .filter(|(m, _)| !m.starts_with("Emulation"))
            .collect();
        assert_eq!(on_top_of(&plain(), wanted), None);
        // A command that is not known to replace the first, with other parameters.
        let mut wanted = plain();
        wanted[3].1 = json!({ "autoAttach": false });
        assert_eq!(on_top_of(&plain(), wanted), None);
        // A page attached again after the keeper lost its connection: nothing is known.
        assert_eq!(on_top_of(&[], plain()), None);
    }

    /// The headless shell's real commands: what fits on top of the plain dressing.
    #[test]
    fn what_fits_on_the_shells_plain_dressing() {
        let version = json!({
            "product": "HeadlessChrome/156.0.8078.114",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.8078.114 Safari/537.36",
        });
        let facts = BrowserFacts::of(&version);
        assert!(facts.disguise.is_some());
        let commands = |identity: &Identity, fetch: Option<Value>| {
            identity::target_commands(identity, &facts, "page", fetch, None)
        };
        let plain = commands(&Identity::default(), None);
        let fits = |identity: Identity, fetch: Option<Value>| on_top_of(&plain, commands(&identity, fetch));
        assert_eq!(fits(Identity::default(), None), Some(vec![]));
        let ua = Identity {
            user_agent: Some("Agent/7.0".into()),
            ..Identity::default()
        };
        let rest = fits(ua, None).unwrap();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(rest[0].1["userAgent"], "Agent/7.0");
        assert!(
            rest[0].1.get("userAgentMetadata").is_none(),
            "no Chrome hints for it: {rest:?}"
        );
        let local = Identity {
            locale: Some("de-DE".into()),
            timezone: Some("Asia/Tokyo".into()),
            ..Identity::default()
        };
        let methods: Vec<_> = fits(local, None).unwrap().into_iter().map(|(m, _)| m).collect();
        assert_eq!(
            methods,
            [
                "Emulation.setUserAgentOverride",
                "Emulation.setLocaleOverride",
                "Emulation.setTimezoneOverride"
            ]
        );
        let blocking = Some(json!({ "patterns": [{ "urlPattern": "*" }] }));
        let methods: Vec<_> = fits(Identity::default(), blocking)
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(methods, ["Fetch.enable"]);
        let own = OwnVersion::of("156.0.8078.114").unwrap();
        let device = Identity {
            fingerprint: devices::pick("Pixel 8", &own, 1),
            ..Identity::default()
        };
        assert!(device.fingerprint.is_some());
        assert_eq!(fits(device, None), None, "a fingerprint's page script: dressed again");
    }

    /// A keeper and the browser's end of its connection, over a pipe.
    async fn keeper_and_browser(
        buffer: usize,
    ) -> (Keeper, tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(UpstreamStream::Filtered(ours), Role::Client, None);
        let browser = tokio_tungstenite::WebSocketStream::from_raw_socket(theirs, Role::Server, None);
        (Keeper::over(ws.await, None), browser.await)
    }

    /// Sends the run loop a plain session's registration of `context`; answers its reply.
    fn register_plain(
        commands: &mpsc::UnboundedSender<Command>,
        context: &str,
    ) -> oneshot::Receiver<Result<(), CdpError>> {
        let (done, answer) = oneshot::channel();
        let context = context.to_owned();
        let kept = plain_session();
        commands.send(Command::Register { context, kept, done }).unwrap();
        answer
    }

    fn plain_session() -> Arc<Kept> {
        Arc::new(Kept {
            identity: Identity::default(),
            watch: Watch {
                blocking: Default::default(),
                ads: None,
                traffic: None,
                challenges: Arc::default(),
                metrics: Arc::default(),
                events: None,
                capture: None,
            },
        })
    }

    fn page(session: &str, context: &str, waiting: bool) -> Value {
        json!({ "method": "Target.attachedToTarget", "params": {
            "sessionId": session, "waitingForDebugger": waiting,
            "targetInfo": { "targetId": format!("T-{session}"), "type": "page", "browserContextId": context } } })
    }

    fn methods(commands: Vec<(&'static str, Value)>) -> Vec<String> {
        commands.into_iter().map(|(m, _)| m.to_owned()).collect()
    }

    /// A context registers while one of its tabs closes (a profile's origins were loaded
    /// through it): Chrome answers nothing sent to that tab and says it detached. The
    /// registration ends with the tab forgotten once it has detached, not at its time
    /// limit (a refused create), nor on another message.
    #[tokio::test]
    async fn a_tab_closing_as_its_context_registers_is_not_waited_for() {
        let (mut keeper, mut browser) = keeper_and_browser(1 << 16).await;
        keeper.on_attached(&page("S1", "C", false)).await.unwrap();
        let chrome = tokio::spawn(async move {
            let mut sent_to_tab = Vec::new();
            while let Some(Ok(Message::Text(text))) = browser.next().await {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["sessionId"], "S1", "only the tab is spoken to: {message}");
                sent_to_tab.push(message["method"].as_str().unwrap().to_owned());
                if message["method"] == "Runtime.evaluate" {
                    // Something else first, then the tab is gone: what was sent to it stays
                    // unanswered.
                    let other = json!({ "method": "Target.targetInfoChanged", "params": { "targetInfo": {} } });
                    browser.send(Message::text(other.to_string())).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let detached = json!({ "method": "Target.detachedFromTarget",
                        "params": { "sessionId": "S1", "targetId": "T-S1" } });
                    browser.send(Message::text(detached.to_string())).await.unwrap();
                    return (sent_to_tab, browser);
                }
            }
            panic!("the keeper closed its connection");
        });
        let began = std::time::Instant::now();
        let registered = tokio::time::timeout(Duration::from_secs(5), keeper.register("C", plain_session())).await;
        assert!(matches!(registered, Ok(Ok(()))), "{registered:?}");
        assert!(
            began.elapsed() >= Duration::from_millis(300),
            "it waited for the tab until it went"
        );
        assert!(keeper.attached.is_empty(), "the closed tab is forgotten");
        let (sent_to_tab, _browser) = chrome.await.unwrap();
        let mut expected = vec!["Runtime.runIfWaitingForDebugger".to_owned()];
        expected.extend(methods(keeper.plain_commands("page")));
        expected.push("Runtime.evaluate".to_owned());
        assert_eq!(sent_to_tab, expected, "let go, its session's overrides, the probe");
    }

    /// A registration whose page never answers gives up at the keeper's limit, and until
    /// then the keeper serves the other contexts: another tenant's new tab, held until it
    /// has its overrides, opened just before the limit, gets them whole and is let go,
    /// even when sending them takes past the limit (a browser slow to read: a small pipe).
    #[tokio::test]
    async fn a_registration_that_times_out_holds_up_no_other_context() {
        let (mut keeper, mut browser) = keeper_and_browser(1024).await;
        let limit = Duration::from_millis(600);
        keeper.answer_limit = limit;
        let plain = methods(keeper.plain_commands("page"));
        keeper.on_attached(&page("S1", "C", false)).await.unwrap();
        let (commands, receiver) = mpsc::unbounded_channel();
        let running = tokio::spawn(keeper.run(Some(receiver), CancellationToken::new()));
        let register = |context: &str| register_plain(&commands, context);
        register("D").await.unwrap().unwrap();
        let chrome = tokio::spawn(async move {
            let mut sent_to_other = Vec::new();
            while let Some(Ok(Message::Text(text))) = browser.next().await {
                let message: Value = serde_json::from_str(&text).unwrap();
                match (message["sessionId"].as_str(), message["method"].as_str()) {
                    // C's page never answers; just before the limit D opens a tab.
                    (Some("S1"), Some("Runtime.evaluate")) => {
                        tokio::time::sleep(limit - Duration::from_millis(100)).await;
                        browser
                            .send(Message::text(page("S2", "D", true).to_string()))
                            .await
                            .unwrap();
                        // Read nothing until past the limit: the overrides wait in the pipe.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    (Some("S2"), Some(method)) => sent_to_other.push(method.to_owned()),
                    _ => {}
                }
                if sent_to_other.last().map(String::as_str) == Some("Runtime.runIfWaitingForDebugger") {
                    return (sent_to_other, browser);
                }
            }
            panic!("the keeper closed its connection");
        });
        let began = std::time::Instant::now();
        let registered = tokio::time::timeout(Duration::from_secs(5), register("C")).await;
        assert!(matches!(registered, Ok(Ok(Err(CdpError::Timeout)))), "{registered:?}");
        assert!(began.elapsed() >= limit);
        let (sent_to_other, _browser) = tokio::time::timeout(Duration::from_secs(5), chrome)
            .await
            .unwrap()
            .unwrap();
        let mut expected = plain;
        expected.push("Runtime.runIfWaitingForDebugger".to_owned());
        assert_eq!(sent_to_other, expected, "D's overrides, then it runs");
        drop(commands);
        running.await.unwrap();
    }

    /// A registration whose create gave up waiting before the keeper came to it (queued
    /// behind a slow one) is dropped unread: nothing is put on the refused session's tab.
    #[tokio::test]
    async fn a_registration_nobody_waits_for_is_not_made() {
        let (mut keeper, mut browser) = keeper_and_browser(1 << 16).await;
        keeper.answer_limit = Duration::from_millis(300);
        keeper.on_attached(&page("S1", "C", false)).await.unwrap();
        let chrome = tokio::spawn(async move {
            let mut sent_to_tab = Vec::new();
            while let Some(Ok(Message::Text(text))) = browser.next().await {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["sessionId"] == "S1" {
                    sent_to_tab.push(message["method"].as_str().unwrap().to_owned());
                }
            }
            sent_to_tab
        });
        let (commands, receiver) = mpsc::unbounded_channel();
        let running = tokio::spawn(keeper.run(Some(receiver), CancellationToken::new()));
        let register = |context: &str| register_plain(&commands, context);
        drop(register("C"));
        register("D").await.unwrap().unwrap();
        drop(commands);
        running.await.unwrap();
        let sent_to_tab = tokio::time::timeout(Duration::from_secs(5), chrome)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            sent_to_tab,
            ["Runtime.runIfWaitingForDebugger"],
            "only let go as it attached"
        );
    }
}
