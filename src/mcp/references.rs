//! The element references each session's latest snapshot gave out. An action names one of
//! them or nothing: a node id guessed, read by other means (a CDP client's own `DOM`
//! calls) or left from a page that was replaced is refused before the browser is asked,
//! so an agent acts only on what it was shown.

use std::collections::HashSet;
use std::sync::LazyLock;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// Session id → the node ids its latest snapshot named. An entry lives as long as its
/// session (removed when `ended` fires), so there is at most one per running session.
static ISSUED: LazyLock<DashMap<String, HashSet<u64>>> = LazyLock::new(DashMap::new);

/// Records `nodes` as the references session `id` may act on, in place of the last
/// snapshot's.
pub fn issue(id: &str, ended: &CancellationToken, nodes: impl IntoIterator<Item = u64>) {
    if ended.is_cancelled() {
        return;
    }
    let nodes: HashSet<u64> = nodes.into_iter().collect();
    if ISSUED.insert(id.to_owned(), nodes).is_none() {
        let (id, ended) = (id.to_owned(), ended.clone());
        tokio::spawn(async move {
            ended.cancelled().await;
            ISSUED.remove(&id);
        });
    }
}

/// Chrome's node id in `reference` (`eN`) when session `id`'s latest snapshot gave it out.
pub fn issued(id: &str, reference: &str) -> Option<u64> {
    let node: u64 = reference.strip_prefix('e')?.parse().ok()?;
    ISSUED.get(id).filter(|nodes| nodes.contains(&node)).map(|_| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_latest_snapshots_references_and_none_after_the_end() {
        let ended = CancellationToken::new();
        assert_eq!(issued("s1", "e5"), None, "nothing before a snapshot");
        issue("s1", &ended, [5, 7]);
        assert_eq!(issued("s1", "e5"), Some(5));
        assert_eq!(issued("s1", "e6"), None);
        assert_eq!(issued("s2", "e5"), None, "another session's reference");
        for malformed in ["5", "e", "e-5", "e5 ", "E5", "e99999999999999999999999"] {
            assert_eq!(issued("s1", malformed), None, "{malformed}");
        }
        issue("s1", &ended, [6]);
        assert_eq!(issued("s1", "e5"), None, "replaced by the next snapshot");
        assert_eq!(issued("s1", "e6"), Some(6));
        ended.cancel();
        for _ in 0..100 {
            if !ISSUED.contains_key("s1") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!ISSUED.contains_key("s1"), "kept after the session ended");
        issue("s1", &ended, [6]);
        assert_eq!(issued("s1", "e6"), None, "issued to an ended session");
    }
}
