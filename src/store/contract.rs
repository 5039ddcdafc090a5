//! The behaviour every [`SessionStore`] owes the broker, written once and run against each
//! implementation: `contract::run(open)` where `open` opens the same backing store again
//! (a restart).

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde_json::Map;

use super::record::{EndReason, SessionRecord, Status};
use super::{ListQuery, SessionStore};
use crate::auth::Tenant;
use crate::values::Screen;

/// A record of `tenant` created `age_secs` before a fixed instant; `ended` is how long
/// before that instant it ended, if it has.
pub(crate) fn record(id: &str, tenant: &str, age_secs: u64, ended: Option<(Status, u64)>) -> SessionRecord {
    let base = SystemTime::now();
    let created_at = base - Duration::from_secs(age_secs);
    let (status, ended_at, end_reason) = match ended {
        None => (Status::Active, None, None),
        Some((status, ago)) => {
            let reason = if status == Status::Expired {
                EndReason::Expired
            } else {
                EndReason::Terminated
            };
            (status, Some(base - Duration::from_secs(ago)), Some(reason))
        }
    };
    SessionRecord {
        id: id.to_owned(),
        tenant: Tenant::from_id(tenant),
        status,
        created_at,
        updated_at: created_at,
        expires_at: created_at + Duration::from_secs(600),
        ended_at,
        end_reason,
        screen: Screen {
            width: 1280,
            height: 720,
        },
        metadata: Map::new(),
        profile: None,
        node: String::new(),
        options: Default::default(),
        network: None,
        challenges: Vec::new(),
    }
}

fn query(tenant: &str, status: Option<Status>, offset: usize, limit: usize) -> ListQuery {
    ListQuery {
        tenant: Tenant::from_id(tenant),
        status,
        offset,
        limit,
    }
}

fn ids(records: &[SessionRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

/// Runs every check against stores opened by `open`, which must start empty the first time.
pub(crate) async fn run<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Box<dyn SessionStore>>,
{
    let store = open().await;
    // Five of tenant a (one terminated, one expired), one of tenant b.
    let a = [
        record("sess_a1", "a", 50, None),
        record("sess_a2", "a", 40, Some((Status::Terminated, 5))),
        record("sess_a3", "a", 30, None),
        record("sess_a4", "a", 20, Some((Status::Expired, 1))),
        record("sess_a5", "a", 10, None),
    ];
    for r in &a {
        store.put(r).await.unwrap();
    }
    store.put(&record("sess_b1", "b", 15, None)).await.unwrap();

    // Newest first; the total counts every match, the page only its slice.
    let all = store.list(&query("a", None, 0, 100)).await.unwrap();
    assert_eq!(
        ids(&all.records),
        ["sess_a5", "sess_a4", "sess_a3", "sess_a2", "sess_a1"]
    );
    assert_eq!(all.total, 5);
    let page = store.list(&query("a", None, 1, 2)).await.unwrap();
    assert_eq!((ids(&page.records), page.total), (vec!["sess_a4", "sess_a3"], 5));
    let past_end = store.list(&query("a", None, 10, 2)).await.unwrap();
    assert_eq!((past_end.records.len(), past_end.total), (0, 5));
    let unbounded = store.list(&query("a", None, 1, usize::MAX)).await.unwrap();
    assert_eq!(
        (unbounded.records.len(), unbounded.total),
        (4, 5),
        "no limit: everything after the offset"
    );

    // Filtered by status.
    let active = store.list(&query("a", Some(Status::Active), 0, 100)).await.unwrap();
    assert_eq!(
        (ids(&active.records), active.total),
        (vec!["sess_a5", "sess_a3", "sess_a1"], 3)
    );
    let expired = store.list(&query("a", Some(Status::Expired), 0, 100)).await.unwrap();
    assert_eq!(ids(&expired.records), ["sess_a4"]);

    // Ties in creation time are broken by id, so pages never overlap.
    let tie_a = SessionRecord {
        id: "sess_t1".into(),
        ..record("x", "t", 0, None)
    };
    let tie_b = SessionRecord {
        id: "sess_t2".into(),
        ..tie_a.clone()
    };
    store.put(&tie_a).await.unwrap();
    store.put(&tie_b).await.unwrap();
    let first = store.list(&query("t", None, 0, 1)).await.unwrap();
    let second = store.list(&query("t", None, 1, 1)).await.unwrap();
    assert_eq!(
        (ids(&first.records), ids(&second.records)),
        (vec!["sess_t2"], vec!["sess_t1"])
    );

    // Tenants see only their own.
    let b = store.list(&query("b", None, 0, 100)).await.unwrap();
    assert_eq!((ids(&b.records), b.total), (vec!["sess_b1"], 1));
    assert!(
        store
            .list(&query("nobody", None, 0, 100))
            .await
            .unwrap()
            .records
            .is_empty()
    );
    let (tenant_a, tenant_b) = (Tenant::from_id("a"), Tenant::from_id("b"));
    assert!(store.get_for(&tenant_a, "sess_a1").await.unwrap().is_some());
    assert!(store.get_for(&tenant_b, "sess_a1").await.unwrap().is_none());

    // A put replaces the record; a remove forgets it.
    let mut changed = a[0].clone();
    changed.metadata.insert("k".into(), "v".into());
    changed.updated_at += Duration::from_secs(1);
    store.put(&changed).await.unwrap();
    assert_eq!(store.get("sess_a1").await.unwrap(), Some(changed.clone()));
    store.remove("sess_b1").await.unwrap();
    assert_eq!(store.get("sess_b1").await.unwrap(), None);
    store.remove("sess_b1").await.expect("removing twice is no error");
    assert_eq!(store.get("sess_unknown").await.unwrap(), None);

    // Sessions using a profile are counted while active, on any node.
    let link = |id: &str| {
        Some(super::ProfileLink {
            id: id.into(),
            persist: false,
            saved: None,
        })
    };
    let mut reader = record("sess_p1", "a", 5, None);
    reader.profile = link("prof-1");
    let mut elsewhere = record("sess_p2", "a", 4, None);
    (elsewhere.profile, elsewhere.node) = (link("prof-1"), "node-b".into());
    let mut other = record("sess_p3", "a", 3, None);
    other.profile = link("prof-2");
    for r in [&reader, &elsewhere, &other] {
        store.put(r).await.unwrap();
    }
    assert_eq!(store.profile_users("prof-1").await.unwrap(), 2);
    store
        .put(&elsewhere.ended_elsewhere(EndReason::NodeLost, SystemTime::now()))
        .await
        .unwrap();
    store.remove("sess_p3").await.unwrap();
    assert_eq!(
        store.profile_users("prof-1").await.unwrap(),
        1,
        "an ended session lets go"
    );
    assert_eq!(store.profile_users("prof-2").await.unwrap(), 0, "a removed one too");
    for id in ["sess_p1", "sess_p2"] {
        store.remove(id).await.unwrap();
    }
    assert_eq!(store.profile_users("prof-1").await.unwrap(), 0);

    // Records survive a restart, exactly as they were when ended.
    drop(store);
    let store = open().await;
    assert_eq!(store.get("sess_a2").await.unwrap().as_ref(), Some(&a[1]));
    assert_eq!(store.get("sess_a4").await.unwrap().as_ref(), Some(&a[3]));
    assert_eq!(store.list(&query("a", None, 0, 100)).await.unwrap().total, 5);

    // Many at once: read in the order asked, unknown ids left out; written with their
    // indexes, as one by one.
    let many: Vec<SessionRecord> = (0..3)
        .map(|i| record(&format!("sess_m{i}"), "m", 9 - i, None))
        .collect();
    store.put_many(&many).await.unwrap();
    let ids = ["sess_m2", "sess_nope", "sess_m0"].map(String::from);
    assert_eq!(
        store.get_many(&ids).await.unwrap(),
        vec![many[2].clone(), many[0].clone()]
    );
    let active_m = query("m", Some(Status::Active), 0, 10);
    assert_eq!(store.list(&active_m).await.unwrap().total, 3);
    let ended: Vec<SessionRecord> = many
        .iter()
        .map(|r| r.clone().ended_elsewhere(EndReason::NodeLost, SystemTime::now()))
        .collect();
    store.put_many(&ended).await.unwrap();
    assert_eq!(store.list(&active_m).await.unwrap().total, 0);
    assert_eq!(store.get("sess_m1").await.unwrap().as_ref(), Some(&ended[1]));
    let on_node = store.active_on(&many[0].node).await.unwrap();
    assert!(!on_node.iter().any(|id| id.starts_with("sess_m")), "{on_node:?}");
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    store.put_many(&[]).await.unwrap();
    for r in &many {
        store.remove(&r.id).await.unwrap();
    }

    // Ended records are kept for the retention time, then swept; active ones never are.
    let retention = Duration::from_secs(3);
    let swept = store.sweep(SystemTime::now(), retention).await.unwrap();
    assert_eq!(swept, vec!["sess_a2".to_owned()], "only the one ended 5 s ago");
    assert_eq!(store.get("sess_a2").await.unwrap(), None);
    assert!(store.get("sess_a4").await.unwrap().is_some(), "ended 1 s ago: kept");
    let live = record("sess_live", "a", 0, None);
    store.put(&live).await.unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    let swept = store.sweep(later, retention).await.unwrap();
    assert!(swept.contains(&"sess_a4".to_owned()), "{swept:?}");
    assert!(
        !swept.contains(&"sess_live".to_owned()),
        "an active session is never swept"
    );
    assert!(store.get("sess_a4").await.unwrap().is_none());
    assert_eq!(store.get("sess_live").await.unwrap(), Some(live));
    drop(store);
    let store = open().await;
    assert_eq!(store.get("sess_a2").await.unwrap(), None, "a swept record stays gone");
    assert_eq!(store.get("sess_a4").await.unwrap(), None, "a swept record stays gone");
}
