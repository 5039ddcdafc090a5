//! Records a session's active tab as video: the CDP screencast the live view draws, taken
//! on the broker's own connection (through a context session's filter), handed to ffmpeg
//! at a steady frame rate (the last frame again while the page is still), encoded as
//! H.264 in fragmented MP4. Each fragment is complete on disk as it is written, so a
//! recording cut off by a killed broker still plays up to its last second or two.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::entry::RecordingInfo;
use super::session_files::SessionFiles;
use crate::browser::cdp::{CallError, Client};
use crate::browser::egress::Egress;
use crate::browser::upstream::Upstream;
use crate::metrics::Metrics;

const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ffmpeg may take to finish the file once its input ends.
pub(super) const FINISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often, and how far apart, the tabs are asked which shows once the watched one hid.
const FRONT_TRIES: u32 = 5;
const FRONT_RETRY: Duration = Duration::from_millis(100);
/// A page busy in a script answers late; the video keeps its last frame meanwhile.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a recording needs.
pub(crate) struct Spec {
    pub ffmpeg: PathBuf,
    pub fps: u32,
    pub max_bytes: u64,
    /// The session's screen: the video's size (rounded down to even sides for H.264).
    pub width: u32,
    pub height: u32,
    pub files: Arc<SessionFiles>,
    pub metrics: Arc<Metrics>,
    /// The limits of the browser's messages (`Upstream::parsed_ws_config`).
    pub ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("ffmpeg could not be started: {0}")]
    Ffmpeg(std::io::Error),
    #[error("the session's browser could not be reached: {0}")]
    Browser(String),
}

/// Starts recording the session at `upstream` until `until` fires (or its browser goes).
/// Answers once ffmpeg runs and the screencast is asked for.
pub(crate) async fn start(
    upstream: &Upstream,
    egress: &Egress,
    spec: Spec,
    until: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), RecordError> {
    let browser = |e: String| RecordError::Browser(e);
    let (stream, early) = upstream
        .connect_raw(&upstream.browser_path, egress, SETUP_TIMEOUT)
        .await
        .map_err(|e| browser(e.to_string()))?;
    let ws = tokio_tungstenite::WebSocketStream::from_partially_read(stream, early, Role::Client, Some(spec.ws_config))
        .await;
    let client = Client::start(ws);
    let events = client.subscribe();
    let call = |method: &'static str, params: Value| {
        let client = &client;
        async move { client.call(None, method, params, SETUP_TIMEOUT).await }
    };
    call("Target.setDiscoverTargets", json!({ "discover": true }))
        .await
        .map_err(|e| browser(format!("{e:?}")))?;
    let targets = call("Target.getTargets", json!({}))
        .await
        .map_err(|e| browser(format!("{e:?}")))?;
    let first = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["targetId"].as_str())
        .map(str::to_owned);
    let ffmpeg = spawn_ffmpeg(&spec).map_err(RecordError::Ffmpeg)?;
    spec.metrics.recordings_started.inc();
    spec.files.set_recording(RecordingInfo {
        fps: spec.fps,
        ..RecordingInfo::default()
    });
    let (frames_tx, frames_rx) = watch::channel(None);
    let recorder = Recorder {
        client,
        frames: frames_tx,
        watched: None,
        width: spec.width,
        height: spec.height,
    };
    // On the broker's tracker: a broker that stops waits for ffmpeg to finish the file.
    tracker.spawn(feed(ffmpeg, frames_rx, spec, until.clone()).in_current_span());
    tracker.spawn(recorder.run(first, events, until).in_current_span());
    Ok(())
}

fn spawn_ffmpeg(spec: &Spec) -> std::io::Result<Child> {
    let (w, h) = (spec.width & !1, spec.height & !1);
    let fps = spec.fps.to_string();
    let filter =
        format!("scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,format=yuv420p");
    // Under `nice`: encoding yields to the sessions' own browsers on a busy machine.
    Command::new("nice")
        .args(["-n", "10"])
        .arg(&spec.ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        // The input is known (JPEG frames at `fps`): without these ffmpeg reads 5 MB of
        // frames to probe it (20-30 s of a recording) before it encodes any, and a broker
        // killed in that time left an empty file.
        .args(["-probesize", "32", "-analyzeduration", "0"])
        .args(["-f", "image2pipe", "-framerate", &fps, "-c:v", "mjpeg", "-i", "pipe:0"])
        .args(["-vf", &filter, "-r", &fps])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-crf", "30"])
        .args(["-g", &(spec.fps * 2).to_string()])
        .args(["-movflags", "+frag_keyframe+empty_moov+default_base_moof"])
        // Each fragment on disk as it is made: buffered, a page that changes little (small
        // fragments) was a minute behind, and a killed broker lost that minute.
        .args(["-flush_packets", "1"])
        .args(["-f", "mp4", "-y"])
        .arg(spec.files.recording_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Writes the latest frame to ffmpeg `fps` times a second until `until` fires, the
/// recording reaches its size limit, or ffmpeg goes; then lets ffmpeg finish the file.
async fn feed(mut ffmpeg: Child, mut frames: watch::Receiver<Option<Bytes>>, spec: Spec, until: CancellationToken) {
    let _writing = spec.files.writing();
    let Some(mut stdin) = ffmpeg.stdin.take() else { return };
    let mut info = RecordingInfo {
        fps: spec.fps,
        ..RecordingInfo::default()
    };
    // Nothing to show before the first frame.
    tokio::select! {
        changed = frames.wait_for(Option::is_some) => if changed.is_err() { return },
        _ = until.cancelled() => {}
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / spec.fps);
    let path = spec.files.recording_path();
    while !until.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = until.cancelled() => break,
        }
        let Some(frame) = frames.borrow().clone() else { continue };
        if stdin.write_all(&frame).await.is_err() {
            break;
        }
        info.frames += 1;
        // Checked once a second: the file grows in fragments.
        if info.frames.is_multiple_of(u64::from(spec.fps)) {
            let size = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
            if size >= spec.max_bytes {
                info.truncated = true;
                spec.metrics.recordings_truncated.inc();
                tracing::info!(bytes = size, "recording stopped at max_recording_bytes");
                break;
            }
            spec.files.set_recording(info.clone());
        }
    }
    drop(stdin);
    let finished = tokio::time::timeout(FINISH_TIMEOUT, ffmpeg.wait_with_output()).await;
    match finished {
        Ok(Ok(out)) if out.status.success() => info.complete = true,
        Ok(Ok(out)) => tracing::warn!(
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "ffmpeg failed on the recording"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "ffmpeg could not be waited for"),
        // Dropped with the future: killed (kill_on_drop); the fragments written stay playable.
        Err(_) => tracing::warn!("ffmpeg did not finish the recording in time"),
    }
    spec.files.set_recording(info);
}

/// Follows the session's tabs and passes their screencast frames on.
struct Recorder {
    client: Client,
    frames: watch::Sender<Option<Bytes>>,
    /// The tab watched and the CDP session attached to it.
    watched: Option<(String, String)>,
    width: u32,
    height: u32,
}

impl Recorder {
    async fn run(
        mut self,
        first: Option<String>,
        mut events: tokio::sync::broadcast::Receiver<Arc<Value>>,
        until: CancellationToken,
    ) {
        if let Some(target) = first {
            self.watch(&target).await;
        }
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = until.cancelled() => return,
                _ = self.client.closed().cancelled() => return,
            };
            let event = match event {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            self.on_event(&event).await;
        }
    }

    async fn on_event(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Page.screencastFrame") => {
                let Some((_, session)) = &self.watched else { return };
                if event["sessionId"].as_str() != Some(session) {
                    return;
                }
                let _ = self.client.send(
                    Some(session),
                    "Page.screencastFrameAck",
                    json!({ "sessionId": params["sessionId"] }),
                );
                if let Some(Ok(jpeg)) = params["data"].as_str().map(|d| BASE64.decode(d)) {
                    self.frames.send_replace(Some(Bytes::from(jpeg)));
                }
            }
            // A tab the automation opens is where it works next.
            Some("Target.targetCreated") if params["targetInfo"]["type"] == "page" => {
                if let Some(target) = params["targetInfo"]["targetId"].as_str() {
                    self.watch(target).await;
                }
            }
            // The watched tab was hidden: another came to the front (`Page.bringToFront`,
            // a tab switch in the live view), and the video follows it.
            Some("Page.screencastVisibilityChanged") if params["visible"] == false => {
                let Some((watched, session)) = &self.watched else {
                    return;
                };
                if event["sessionId"].as_str() != Some(session) {
                    return;
                }
                let watched = watched.clone();
                if let Some(front) = self.front_page(&watched).await {
                    self.watch(&front).await;
                }
            }
            Some("Target.targetDestroyed") => {
                let gone = params["targetId"].as_str();
                if self.watched.as_ref().map(|(t, _)| t.as_str()) == gone {
                    self.watched = None;
                    if let Some(next) = self.any_page().await {
                        self.watch(&next).await;
                    }
                }
            }
            _ => {}
        }
    }

    async fn any_page(&self) -> Option<String> {
        let targets = self
            .client
            .call(None, "Target.getTargets", json!({}), SETUP_TIMEOUT)
            .await
            .ok()?;
        targets["targetInfos"]
            .as_array()?
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned)
    }

    /// The page other than `hidden` that shows now. Chrome tells a page it was hidden
    /// before it tells the other it shows, so it is asked a few times.
    async fn front_page(&self, hidden: &str) -> Option<String> {
        for _ in 0..FRONT_TRIES {
            let targets = self
                .client
                .call(None, "Target.getTargets", json!({}), SETUP_TIMEOUT)
                .await
                .ok()?;
            let pages = targets["targetInfos"]
                .as_array()?
                .iter()
                .filter(|t| t["type"] == "page");
            for target in pages.filter_map(|t| t["targetId"].as_str()).filter(|&t| t != hidden) {
                if self.is_visible(target).await {
                    return Some(target.to_owned());
                }
            }
            tokio::time::sleep(FRONT_RETRY).await;
        }
        None
    }

    /// Attaches to `target` on the recorder's connection; answers the CDP session.
    async fn attach(&self, target: &str) -> Option<String> {
        let attached: Result<Value, CallError> = self
            .client
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                SETUP_TIMEOUT,
            )
            .await;
        attached.ok().and_then(|a| a["sessionId"].as_str().map(str::to_owned))
    }

    /// Whether the page `target` shows (its document's `visibilityState`).
    async fn is_visible(&self, target: &str) -> bool {
        let Some(session) = self.attach(target).await else {
            return false;
        };
        // Read in a world of the recorder's own: a page that watches its document's
        // getters (or counts its worlds' scripts) sees nothing of the recorder.
        let world = self
            .client
            .call(
                Some(&session),
                "Page.createIsolatedWorld",
                json!({ "frameId": target, "grantUniveralAccess": false }),
                VISIBILITY_TIMEOUT,
            )
            .await;
        let state = match world.as_ref().ok().and_then(|w| w["executionContextId"].as_i64()) {
            Some(context) => self
                .client
                .call(
                    Some(&session),
                    "Runtime.evaluate",
                    json!({ "expression": "document.visibilityState", "returnByValue": true, "contextId": context }),
                    VISIBILITY_TIMEOUT,
                )
                .await,
            None => world,
        };
        let _ = self
            .client
            .send(None, "Target.detachFromTarget", json!({ "sessionId": session }));
        state.is_ok_and(|s| s["result"]["value"] == "visible")
    }

    async fn watch(&mut self, target: &str) {
        if let Some((_, session)) = self.watched.take() {
            let _ = self
                .client
                .send(None, "Target.detachFromTarget", json!({ "sessionId": session }));
        }
        let Some(session) = self.attach(target).await else {
            return;
        };
        let started = self
            .client
            .call(
                Some(&session),
                "Page.startScreencast",
                json!({ "format": "jpeg", "quality": 70, "maxWidth": self.width, "maxHeight": self.height }),
                SETUP_TIMEOUT,
            )
            .await;
        if let Err(e) = started {
            tracing::debug!(error = ?e, "the recording could not watch a tab");
        }
        self.watched = Some((target.to_owned(), session));
    }
}
