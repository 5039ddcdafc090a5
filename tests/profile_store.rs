//! Profile stores as a cluster uses them: a shared directory and an S3-compatible object
//! store (moto's local server), each holding generations whole, and writer leases with
//! fencing in a real `redis-server` so that a node that lost its lease cannot overwrite a
//! later save. (The same with Chromium and a paused node: `tests/cluster.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cdpgate::auth::Tenant;
use cdpgate::store::SaveOutcome;
use cdpgate::store::profile_data::{ProfileData, Record};
use cdpgate::store::profile_locks::ProfileLocks;
use cdpgate::store::profiles::{ProfileError, Profiles};
use cdpgate::store::redis::RedisStore;
use common::*;

/// An S3 profile store on `s3`, as `s3://bucket/prefix` with the `AWS_*` variables makes.
fn objects(s3: &TestS3, prefix: &str) -> ProfileData {
    let env = s3.env().into_iter().map(|(k, v)| (k.to_owned(), v));
    ProfileData::open_s3(&format!("{}/{prefix}", s3.bucket), env).unwrap()
}

/// A Chrome user-data directory in small: state, a cache and a lock.
fn user_data(dir: &Path, cookie: &str) {
    std::fs::create_dir_all(dir.join("Default/Cache/x")).unwrap();
    std::fs::create_dir_all(dir.join("Default/Local Storage/leveldb")).unwrap();
    std::fs::write(dir.join("Default/Local Storage/leveldb/000003.log"), "ls").unwrap();
    std::fs::write(dir.join("Default/Cache/x/blob"), "cached").unwrap();
    std::fs::write(dir.join("Default/Cookies"), cookie).unwrap();
    std::os::unix::fs::symlink("/nonexistent", dir.join("SingletonLock")).unwrap();
}

fn record(id: &str, tenant: &str) -> Record {
    Record {
        id: id.into(),
        name: "p".into(),
        tenant: tenant.into(),
        created_at: 1,
        updated_at: 1,
        fingerprint: None,
    }
}

const ID: &str = "0b7c1f5e-9d2a-4c3b-8e1f-2a3b4c5d6e7f";

async fn generations_are_whole_and_pointed_to(data: &ProfileData) {
    data.create(&record(ID, "t_a")).await.unwrap();
    let listed = data.records().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tenant, "t_a");
    let first = data.current(ID).await.unwrap().expect("a first generation");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(data.read_generation(ID, &first, empty.path()).await.unwrap(), b"[]");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);

    let source = tempfile::tempdir().unwrap();
    user_data(source.path(), "c1");
    let second = data
        .write_generation(ID, Some(source.path()), b"[{\"name\":\"sid\"}]")
        .await
        .unwrap();
    assert_eq!(
        data.current(ID).await.unwrap().as_deref(),
        Some(first.as_str()),
        "not yet"
    );
    data.set_current(ID, &second).await.unwrap();
    data.keep_only(ID, std::slice::from_ref(&second)).await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    let cookies = data.read_generation(ID, &second, copy.path()).await.unwrap();
    assert_eq!(cookies, b"[{\"name\":\"sid\"}]");
    let to = copy.path();
    assert_eq!(std::fs::read_to_string(to.join("Default/Cookies")).unwrap(), "c1");
    assert!(to.join("Default/Local Storage/leveldb/000003.log").exists());
    assert!(!to.join("Default/Cache").exists(), "caches are not kept");
    assert!(std::fs::symlink_metadata(to.join("SingletonLock")).is_err());
    assert!(
        data.read_generation(ID, &first, copy.path()).await.is_err(),
        "old one removed"
    );

    let third = data.write_generation(ID, Some(source.path()), b"[]").await.unwrap();
    data.drop_generation(ID, &third).await.unwrap();
    assert!(data.read_generation(ID, &third, copy.path()).await.is_err());
    assert!(data.read_generation(ID, "../../etc", copy.path()).await.is_err());
    assert!(data.record("../etc/passwd").await.unwrap().is_none());

    data.remove(ID).await.unwrap();
    assert!(data.record(ID).await.unwrap().is_none());
    assert!(data.records().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_directory_keeps_generations_whole() {
    let root = tempfile::tempdir().unwrap();
    let data = ProfileData::open(root.path().to_str().unwrap(), PathBuf::new()).unwrap();
    generations_are_whole_and_pointed_to(&data).await;
}

#[tokio::test]
async fn an_object_store_keeps_generations_whole() {
    let s3 = start_s3("profiles").await;
    generations_are_whole_and_pointed_to(&objects(&s3, "")).await;
    generations_are_whole_and_pointed_to(&objects(&s3, "cluster-a/profiles")).await;
}

/// Two nodes sharing a profile store and a Redis: one writer at a time across both,
/// and a writer that lost its lease cannot overwrite what the next one saved.
async fn a_stale_writer_is_fenced_off(data: impl Fn() -> ProfileData) {
    let redis = start_redis().await;
    let node = async || {
        let (conn, prefix) = RedisStore::connect(&redis.url, "f:").await.unwrap().connection();
        Profiles::open(data(), Some(ProfileLocks::new(conn, prefix, Duration::from_secs(5)))).unwrap()
    };
    let (a, b) = (node().await, node().await);
    let t = Tenant::from_id("t_a");
    let created = a.create(&t, "shared").await.unwrap();
    let on_a = a
        .begin_use(a.get(&t, &created.id).await.unwrap(), "sess_a", true)
        .await
        .unwrap();
    let profile_b = b.get(&t, &created.id).await.unwrap();
    assert!(
        matches!(b.begin_use(profile_b.clone(), "sess_b", true).await, Err(ProfileError::Busy(h)) if h == "sess_a"),
        "the other node cannot write while A holds the lease"
    );
    assert!(matches!(b.delete(&t, &created.id).await, Err(ProfileError::Busy(_))));
    // A stalls and its lease lapses (its renewals stopped): what expiry does to the key.
    let mut redis_conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("f:profile:{}:writer", created.id))
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    let on_b = b.begin_use(profile_b, "sess_b", true).await.unwrap();
    let state = |value: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Cookies"), value).unwrap();
        dir
    };
    let newer = state("newer");
    assert_eq!(b.save(&on_b, newer.path(), &[]).await, SaveOutcome::Saved);
    let stale = state("stale");
    assert_eq!(a.save(&on_a, stale.path(), &[]).await, SaveOutcome::Superseded);
    b.end_use(on_b).await;
    assert_eq!(
        a.save(&on_a, stale.path(), &[]).await,
        SaveOutcome::Superseded,
        "still, once B let go"
    );
    a.end_use(on_a).await;
    for node in [&a, &b] {
        let reader = node
            .begin_use(node.get(&t, &created.id).await.unwrap(), "sess_r", false)
            .await
            .unwrap();
        let copy = tempfile::tempdir().unwrap();
        node.copy_into(&reader, copy.path()).await.unwrap();
        assert_eq!(std::fs::read_to_string(copy.path().join("Cookies")).unwrap(), "newer");
        node.end_use(reader).await;
    }
    // Free again: a new writer saves over B's state, on either node.
    let again = a
        .begin_use(a.get(&t, &created.id).await.unwrap(), "sess_c", true)
        .await
        .unwrap();
    let latest = state("latest");
    assert_eq!(a.save(&again, latest.path(), &[]).await, SaveOutcome::Saved);
    a.end_use(again).await;
    b.delete(&t, &created.id).await.unwrap();
    assert!(matches!(a.get(&t, &created.id).await, Err(ProfileError::NotFound)));
}

#[tokio::test]
async fn a_stale_writer_is_fenced_off_in_a_shared_directory() {
    let root = tempfile::tempdir().unwrap();
    let path: PathBuf = root.path().to_owned();
    a_stale_writer_is_fenced_off(|| ProfileData::Directory(path.clone())).await;
}

#[tokio::test]
async fn a_stale_writer_is_fenced_off_in_an_object_store() {
    let s3 = start_s3("fenced").await;
    a_stale_writer_is_fenced_off(|| objects(&s3, "p")).await;
}
