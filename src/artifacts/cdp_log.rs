//! A session's CDP log (`"log_cdp": true`): one JSON object per line in `cdp-log.jsonl`
//! among its files, written by a task of its own so that the relays only queue lines.
//! What goes in a line is decided by the proxy's tap (method names, ids, sizes, timings;
//! never a payload).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session_files::SessionFiles;

/// The log's name among the session's files.
pub(crate) const NAME: &str = "cdp-log.jsonl";
/// How often queued lines reach the disk.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How long the log takes lines after the session ended.
const LAST_LINES: Duration = Duration::from_secs(2);

/// Where a session's connections send their log lines.
pub struct CdpLog {
    lines: mpsc::UnboundedSender<String>,
    connections: AtomicU64,
}

impl CdpLog {
    /// Starts the session's log writer; it ends a moment after `until` (the session's end),
    /// once the connections' last lines are in.
    pub fn start(files: Arc<SessionFiles>, until: CancellationToken, tracker: &TaskTracker) -> std::io::Result<CdpLog> {
        let path = files.begin_log(NAME)?;
        let (lines, rx) = mpsc::unbounded_channel();
        tracker.spawn(write(path, rx, files, until));
        Ok(CdpLog {
            lines,
            connections: AtomicU64::new(0),
        })
    }

    /// A number for the next connection, so that its lines can be told apart.
    pub fn next_connection(&self) -> u64 {
        self.connections.fetch_add(1, Relaxed) + 1
    }

    pub fn line(&self, line: String) {
        let _ = self.lines.send(line);
    }
}

async fn write(
    path: std::path::PathBuf,
    mut rx: mpsc::UnboundedReceiver<String>,
    files: Arc<SessionFiles>,
    until: CancellationToken,
) {
    let Ok(file) = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .await
    else {
        tracing::warn!(file = %path.display(), "the CDP log cannot be written");
        return;
    };
    let mut out = tokio::io::BufWriter::new(file);
    let mut size = 0u64;
    let mut full = false;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    // After the session's end, its connections close within a second or so.
    let last_lines = async {
        until.cancelled().await;
        tokio::time::sleep(LAST_LINES).await;
    };
    tokio::pin!(last_lines);
    loop {
        tokio::select! {
            _ = &mut last_lines => break,
            line = rx.recv() => {
                let Some(line) = line else { break };
                if full {
                    continue;
                }
                let bytes = line.len() as u64 + 1;
                // The log counts against the session's quota like any file; past it, it stops.
                if !files.grow_log(NAME, size + bytes) {
                    full = true;
                    let _ = out.write_all(b"{\"truncated\":\"the session's files quota was reached\"}\n").await;
                    continue;
                }
                size += bytes;
                if out.write_all(line.as_bytes()).await.is_err() || out.write_all(b"\n").await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                let _ = out.flush().await;
            }
        }
    }
    let _ = out.flush().await;
    files.settle_log(NAME);
}
