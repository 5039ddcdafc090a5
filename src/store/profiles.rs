//! Browser profiles: the browser state a person wants back (cookies, logins, storage),
//! per tenant, copied into a session's browser at start, and saved back atomically when
//! a persisting session ends.
//!
//! The bytes live in a [`ProfileData`] (a directory or an object store). One session at
//! a time may persist into a profile: on one node a lock here says so; in a cluster a
//! lease in Redis ([`ProfileLocks`]) with a fencing number, so that a node that lost its
//! lease while paused cannot overwrite a later save.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::StoreError;
use super::profile_data::{ProfileData, Record};
use super::profile_locks::{Commit, ProfileLocks, WriterLease};
use super::record::SaveOutcome;
use crate::auth::{Tenant, unix_secs};
use crate::error::Origin;
use crate::values::Fingerprint;

/// Profiles one API key may keep.
const MAX_PROFILES_PER_KEY: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("Browser profile not found")]
    NotFound,
    #[error("A browser profile named {0:?} already exists")]
    Duplicate(String),
    #[error("Browser profile is in use by session {0}, which persists changes to it")]
    Busy(String),
    #[error("Browser profile is in use by {0} session(s)")]
    InUse(usize),
    #[error("This API key already has {0} browser profiles, the most one may keep: delete one first")]
    TooMany(usize),
    #[error("the profile store failed: {0}")]
    Io(#[from] io::Error),
    #[error("the profile writer lease could not be taken: {0}")]
    Unavailable(#[from] StoreError),
}

impl ProfileError {
    pub fn origin(&self) -> Origin {
        match self {
            ProfileError::Io(_) | ProfileError::Unavailable(_) => Origin::Internal,
            _ => Origin::Client,
        }
    }
}

pub struct Profile {
    pub id: String,
    pub name: String,
    pub tenant: Tenant,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// The fingerprint sessions started from it show (the first one it was used with).
    pub fingerprint: Option<Fingerprint>,
    local: Arc<Local>,
}

impl Profile {
    /// Sessions on this node using the profile now.
    pub fn users(&self) -> usize {
        self.local.users.load(Ordering::Relaxed)
    }

    /// Deleted through this node since this was read: a copy of it made before (a pool's
    /// ready browser) is not handed out.
    pub fn is_deleted(&self) -> bool {
        self.local.deleted.load(Ordering::SeqCst)
    }
}

/// What this node knows of a profile beyond its record: who uses it here.
#[derive(Default)]
struct Local {
    /// The session persisting into this profile from this node, until its save is done.
    writer: Mutex<Option<String>>,
    /// Sessions using the profile now, readers and writer.
    users: AtomicUsize,
    /// A save holds it for writing; a new session's copy holds it for reading, so a
    /// session created right after another ended on this node starts from the saved state.
    swap: tokio::sync::RwLock<()>,
    /// Deleted through this node.
    deleted: std::sync::atomic::AtomicBool,
}

/// A session's hold on a profile, released when its browser is done with it.
pub struct ProfileUse {
    pub profile: Arc<Profile>,
    pub persist: bool,
    session_id: String,
    /// The cluster's writer lease, renewed until the hold is released.
    lease: Option<(WriterLease, DropGuard)>,
}

pub struct Profiles {
    data: Arc<ProfileData>,
    locks: Option<Arc<ProfileLocks>>,
    local: DashMap<String, Arc<Local>>,
    /// Profiles one API key may keep (`MAX_PROFILES_PER_KEY`).
    max_per_key: usize,
    /// The most a saved profile may hold (`max_profile_bytes`).
    max_bytes: u64,
}

impl Profiles {
    /// Profiles in `data`; with `locks`, shared by a cluster. A store only this node
    /// writes is first cleared of what a crash left behind.
    pub fn open(data: ProfileData, locks: Option<ProfileLocks>) -> io::Result<Profiles> {
        if locks.is_none() {
            data.recover()?;
        }
        Ok(Profiles {
            data: Arc::new(data),
            locks: locks.map(Arc::new),
            local: DashMap::new(),
            max_per_key: MAX_PROFILES_PER_KEY,
            max_bytes: u64::MAX,
        })
    }

    /// Saves past `max_bytes` are refused.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Profiles {
        self.max_bytes = max_bytes;
        self
    }

    /// The store the profiles' bytes are in, which a cluster shares for other files too
    /// (extensions' zips).
    pub fn data(&self) -> Arc<ProfileData> {
        self.data.clone()
    }

    fn profile(&self, r: Record) -> Arc<Profile> {
        let local = self.local.entry(r.id.clone()).or_default().clone();
        Arc::new(Profile {
            id: r.id,
            name: r.name,
            tenant: Tenant::from_id(&r.tenant),
            created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(r.created_at),
            updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(r.updated_at),
            fingerprint: r.fingerprint,
            local,
        })
    }

    pub async fn create(&self, tenant: &Tenant, name: &str) -> Result<Arc<Profile>, ProfileError> {
        let own = self.list(tenant).await?;
        if own.iter().any(|p| p.name == name) {
            return Err(ProfileError::Duplicate(name.to_owned()));
        }
        // Each is a record and a directory on the store every tenant shares, and every
        // list reads them all.
        if own.len() >= self.max_per_key {
            return Err(ProfileError::TooMany(self.max_per_key));
        }
        let now = unix_secs(SystemTime::now());
        let record = Record {
            id: uuid_v4(),
            name: name.to_owned(),
            tenant: tenant.to_string(),
            created_at: now,
            updated_at: now,
            fingerprint: None,
        };
        self.data.create(&record).await?;
        Ok(self.profile(record))
    }

    /// The tenant's profiles, newest first.
    pub async fn list(&self, tenant: &Tenant) -> Result<Vec<Arc<Profile>>, ProfileError> {
        let tenant_id = tenant.to_string();
        let mut list: Vec<Arc<Profile>> = self
            .data
            .records()
            .await?
            .into_iter()
            .filter(|r| r.tenant == tenant_id)
            .map(|r| self.profile(r))
            .collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.name.cmp(&b.name)));
        Ok(list)
    }

    pub async fn get(&self, tenant: &Tenant, id: &str) -> Result<Arc<Profile>, ProfileError> {
        match self.data.record(id).await? {
            Some(r) if r.tenant == tenant.to_string() => Ok(self.profile(r)),
            _ => Err(ProfileError::NotFound),
        }
    }

    /// Remembers `fingerprint` as the profile's, unless it has one already.
    pub async fn remember_fingerprint(
        &self,
        tenant: &Tenant,
        id: &str,
        fingerprint: &Fingerprint,
    ) -> Result<(), ProfileError> {
        match self.data.record(id).await? {
            Some(mut r) if r.tenant == tenant.to_string() => {
                if r.fingerprint.is_none() {
                    r.fingerprint = Some(fingerprint.clone());
                    self.data.put_record(&r).await?;
                }
                Ok(())
            }
            _ => Err(ProfileError::NotFound),
        }
    }

    /// Deletes a profile no session uses on this node and none persists into anywhere.
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), ProfileError> {
        let profile = self.get(tenant, id).await?;
        if let Some(locks) = &self.locks
            && let Some(holder) = locks.writer(id).await?
        {
            return Err(ProfileError::Busy(holder));
        }
        // Marked first, then counted: a session taking the profile meanwhile counts itself
        // first, then looks at the mark (`begin_use`), so one of the two sees the other.
        // Only the delete that set the mark may clear it (another one under way is left
        // to finish: this one answers as if the profile were gone).
        if profile
            .local
            .deleted
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(ProfileError::NotFound);
        }
        let users = profile.local.users.load(Ordering::SeqCst);
        if users > 0 {
            profile.local.deleted.store(false, Ordering::SeqCst);
            return Err(ProfileError::InUse(users));
        }
        self.data.remove(id).await?;
        if let Some(locks) = &self.locks {
            locks.forget(id).await?;
        }
        self.local.remove(id);
        Ok(())
    }

    /// Takes the profile for a new session: any number of readers, one writer (in a
    /// cluster, the holder of the writer lease, renewed in the background).
    pub async fn begin_use(
        &self,
        profile: Arc<Profile>,
        session_id: &str,
        persist: bool,
    ) -> Result<ProfileUse, ProfileError> {
        let mut lease = None;
        if persist {
            {
                let mut writer = profile.local.writer.lock().expect("profile lock");
                if let Some(holder) = writer.as_ref() {
                    return Err(ProfileError::Busy(holder.clone()));
                }
                *writer = Some(session_id.to_owned());
            }
            if let Some(locks) = &self.locks {
                let taken = locks.acquire(&profile.id, session_id).await;
                let refusal = match taken {
                    Ok(Ok(writer)) => {
                        let renewal = CancellationToken::new();
                        tokio::spawn(renew(
                            locks.clone(),
                            profile.id.clone(),
                            writer.clone(),
                            renewal.clone(),
                        ));
                        lease = Some((writer, renewal.drop_guard()));
                        None
                    }
                    Ok(Err(holder)) => Some(ProfileError::Busy(holder)),
                    Err(e) => Some(ProfileError::Unavailable(e)),
                };
                if let Some(refusal) = refusal {
                    *profile.local.writer.lock().expect("profile lock") = None;
                    return Err(refusal);
                }
            }
        }
        profile.local.users.fetch_add(1, Ordering::SeqCst);
        let taken = ProfileUse {
            profile,
            persist,
            session_id: session_id.to_owned(),
            lease,
        };
        // Deleted since it was read: let go (its writer, its count), as if never found.
        if taken.profile.local.deleted.load(Ordering::SeqCst) {
            self.end_use(taken).await;
            return Err(ProfileError::NotFound);
        }
        Ok(taken)
    }

    pub async fn end_use(&self, hold: ProfileUse) {
        {
            let mut writer = hold.profile.local.writer.lock().expect("profile lock");
            if writer.as_deref() == Some(hold.session_id.as_str()) {
                *writer = None;
            }
        }
        hold.profile.local.users.fetch_sub(1, Ordering::SeqCst);
        if let (Some(locks), Some((lease, renewal))) = (&self.locks, hold.lease) {
            drop(renewal);
            if let Err(e) = locks.release(&hold.profile.id, &lease).await {
                // The lease lapses by itself.
                tracing::warn!(profile = %hold.profile.id, error = %e, "could not release the profile writer lease");
            }
        }
    }

    /// The generation in force: the cluster's last commit, else the store's pointer.
    async fn current(&self, id: &str) -> Result<String, ProfileError> {
        if let Some(locks) = &self.locks
            && let Some(generation) = locks.current(id).await?
        {
            return Ok(generation);
        }
        self.data.current(id).await?.ok_or(ProfileError::NotFound)
    }

    /// Copies the profile's current state into `dest` (a new browser's user-data
    /// directory) and answers its session cookies.
    pub async fn copy_into(&self, hold: &ProfileUse, dest: &Path) -> Result<Vec<Value>, ProfileError> {
        let _reading = hold.profile.local.swap.read().await;
        let generation = self.current(&hold.profile.id).await?;
        let cookies = self.data.read_generation(&hold.profile.id, &generation, dest).await?;
        Ok(serde_json::from_slice(&cookies).unwrap_or_default())
    }

    /// Writes a new generation from `user_data` and commits it: on one node by swapping
    /// the store's pointer, in a cluster by the fenced commit in Redis.
    pub async fn save(&self, hold: &ProfileUse, user_data: &Path, cookies: &[Value]) -> SaveOutcome {
        let id = &hold.profile.id;
        let _writing = hold.profile.local.swap.write().await;
        // A page can fill its storage with gigabytes; every session started from the
        // profile would copy them (and an object store holds a generation in memory).
        let measured = {
            let user_data = user_data.to_owned();
            tokio::task::spawn_blocking(move || super::profile_data::kept_bytes(&user_data)).await
        };
        match measured {
            Ok(Ok(bytes)) if bytes > self.max_bytes => {
                tracing::warn!(profile = %id, bytes, "profile save refused: past max_profile_bytes");
                return SaveOutcome::Failed(format!(
                    "the profile would hold {bytes} bytes, over max_profile_bytes ({})",
                    self.max_bytes
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return SaveOutcome::Failed(e.to_string()),
            Err(e) => return SaveOutcome::Failed(e.to_string()),
        }
        let cookies = serde_json::to_vec(cookies).unwrap_or_else(|_| b"[]".to_vec());
        let generation = match self.data.write_generation(id, Some(user_data), &cookies).await {
            Ok(generation) => generation,
            Err(e) => {
                tracing::warn!(profile = %id, error = %e, "profile save failed");
                return SaveOutcome::Failed(e.to_string());
            }
        };
        let committed = match (&self.locks, &hold.lease) {
            (Some(locks), Some((lease, _))) => match locks.commit(id, lease, &generation).await {
                Ok(Commit::Done { replaced }) => {
                    // The store's own pointer follows, for anyone reading it without Redis.
                    let keep: Vec<String> = [Some(generation.clone()), replaced].into_iter().flatten().collect();
                    self.data.set_current(id, &generation).await.map(|_| keep)
                }
                Ok(Commit::Fenced) => {
                    tracing::warn!(profile = %id, fence = lease.fence, "stale profile save refused: a later writer has the profile");
                    let _ = self.data.drop_generation(id, &generation).await;
                    return SaveOutcome::Superseded;
                }
                Err(e) => Err(io::Error::other(e)),
            },
            _ => self
                .data
                .set_current(id, &generation)
                .await
                .map(|_| vec![generation.clone()]),
        };
        let keep = match committed {
            Ok(keep) => keep,
            Err(e) => {
                tracing::warn!(profile = %id, error = %e, "profile save not committed");
                let _ = self.data.drop_generation(id, &generation).await;
                return SaveOutcome::Failed(e.to_string());
            }
        };
        if let Err(e) = self.data.keep_only(id, &keep).await {
            tracing::debug!(profile = %id, error = %e, "old profile generations not removed yet");
        }
        // The state is saved by now; a stale updated_at is not worth failing for.
        if let Ok(Some(mut record)) = self.data.record(id).await {
            record.updated_at = unix_secs(SystemTime::now());
            if let Err(e) = self.data.put_record(&record).await {
                tracing::warn!(profile = %id, error = %e, "could not update the profile's record");
            }
        }
        SaveOutcome::Saved
    }
}

/// Renews a writer lease every third of its length until `stop`; gives up once it has
/// been lost (the fence then keeps a late save out).
async fn renew(locks: Arc<ProfileLocks>, id: String, lease: WriterLease, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(locks.lease() / 3) => {}
        }
        match locks.renew(&id, &lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(profile = %id, fence = lease.fence, "profile writer lease lost; this session's save will be refused");
                return;
            }
            Err(e) => tracing::warn!(profile = %id, error = %e, "profile writer lease not renewed"),
        }
    }
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random generator failed");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::auth::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session taking a profile as it is deleted (read before, taken after): the take is
    /// refused as for an unknown profile and leaves no count or writer behind, so nothing
    /// can be saved into the deleted profile's place.
    #[tokio::test]
    async fn a_profile_deleted_between_its_read_and_its_take_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let profiles = local(dir.path());
        let a = Tenant::from_id("t_aa");
        let made = profiles.create(&a, "p").await.unwrap();
        let read = profiles.get(&a, &made.id).await.unwrap();
        profiles.delete(&a, &made.id).await.unwrap();
        let taken = profiles.begin_use(read.clone(), "sess_1", true).await;
        assert!(
            matches!(taken, Err(ProfileError::NotFound)),
            "a deleted profile was taken"
        );
        assert_eq!(read.local.users.load(Ordering::SeqCst), 0);
        assert!(read.local.writer.lock().unwrap().is_none());
        assert!(!dir.path().join(&made.id).exists());
        // A profile in use is not deleted, and stays takeable.
        let other = profiles.create(&a, "q").await.unwrap();
        let held = profiles.begin_use(other.clone(), "sess_2", false).await.unwrap();
        assert!(matches!(
            profiles.delete(&a, &other.id).await,
            Err(ProfileError::InUse(1))
        ));
        assert!(!other.is_deleted());
        profiles.end_use(held).await;
        profiles.begin_use(other, "sess_3", true).await.unwrap();
        // A second delete while one is under way leaves the first one's mark: cleared, a
        // take between the two would keep a profile being removed.
        let third = profiles.create(&a, "r").await.unwrap();
        third.local.deleted.store(true, Ordering::SeqCst);
        assert!(matches!(
            profiles.delete(&a, &third.id).await,
            Err(ProfileError::NotFound)
        ));
        assert!(third.is_deleted(), "the second delete cleared the first one's mark");
    }

    /// A key keeps a bounded number of profiles (each a record and a directory on the
    /// shared store, each read by every list); another key is not held back by it.
    #[tokio::test]
    async fn a_key_keeps_a_bounded_number_of_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let mut profiles = local(dir.path());
        profiles.max_per_key = 3;
        let (a, b) = (Tenant::from_id("t_aa"), Tenant::from_id("t_bb"));
        for name in ["one", "two", "three"] {
            profiles.create(&a, name).await.unwrap();
        }
        let refused = profiles.create(&a, "four").await.err().expect("a fourth profile");
        assert!(matches!(refused, ProfileError::TooMany(3)), "{refused}");
        assert_eq!(profiles.list(&a).await.unwrap().len(), 3);
        let dirs = std::fs::read_dir(dir.path()).unwrap().count();
        profiles.create(&b, "one").await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), dirs + 1);
        let first = profiles.list(&a).await.unwrap().pop().unwrap();
        profiles.delete(&a, &first.id).await.unwrap();
        profiles.create(&a, "four").await.unwrap();
    }

    fn local(root: &Path) -> Profiles {
        Profiles::open(ProfileData::Directory(root.to_owned()), None).unwrap()
    }

    #[tokio::test]
    async fn profiles_are_per_tenant_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        let tenant = Tenant::from_id("t_a");
        let other = Tenant::from_id("t_other");

        let p = store.create(&tenant, "work").await.unwrap();
        assert!(matches!(
            store.create(&tenant, "work").await,
            Err(ProfileError::Duplicate(_))
        ));
        store.create(&other, "work").await.unwrap();
        assert!(matches!(store.get(&other, &p.id).await, Err(ProfileError::NotFound)));
        assert_eq!(p.id.len(), 36);
        assert_eq!(&p.id[14..15], "4");

        let reloaded = local(dir.path());
        let again = reloaded.get(&tenant, &p.id).await.unwrap();
        assert_eq!(again.name, "work");
        assert_eq!(reloaded.list(&tenant).await.unwrap().len(), 1);
    }

    /// A generation directory holding `value` in a file of its user data and in its
    /// session cookies.
    fn generation(dir: &Path, name: &str, value: &str) {
        std::fs::create_dir_all(dir.join(name).join("user-data")).unwrap();
        std::fs::write(dir.join(name).join("user-data/Cookies"), value).unwrap();
        let cookies = serde_json::json!([{"name": "sid", "value": value}]).to_string();
        std::fs::write(dir.join(name).join("session-cookies.json"), cookies).unwrap();
    }

    /// Every state a broker killed during a save can leave on disk loads as one whole
    /// generation: the old one until the swap's rename, the new one after it.
    #[tokio::test]
    async fn every_state_a_killed_save_leaves_loads_as_one_whole_generation() {
        fn link(dir: &Path, from: &str, to: &str) {
            std::os::unix::fs::symlink(to, dir.join(from)).unwrap();
        }
        /// What a crash at one moment leaves beside the old generation.
        type Crash = fn(&Path);
        let crashes: [(&str, Crash, &str); 4] = [
            (
                "during the copy",
                |d| {
                    std::fs::create_dir_all(d.join("gen-new.tmp/user-data")).unwrap();
                    std::fs::write(d.join("gen-new.tmp/user-data/Cookies"), "ne").unwrap();
                },
                "old",
            ),
            ("before the swap", |d| generation(d, "gen-new", "new"), "old"),
            (
                "during the swap",
                |d| {
                    generation(d, "gen-new", "new");
                    link(d, "current.tmp", "gen-new");
                },
                "old",
            ),
            (
                "after the swap",
                |d| {
                    generation(d, "gen-new", "new");
                    link(d, "current.tmp", "gen-new");
                    std::fs::rename(d.join("current.tmp"), d.join("current")).unwrap();
                },
                "new",
            ),
        ];
        for (moment, crash, expected) in crashes {
            let root = tempfile::tempdir().unwrap();
            let store = local(root.path());
            let tenant = Tenant::from_id("t_a");
            let profile = store.create(&tenant, "p").await.unwrap();
            // A profile saved once before: "old" is its state.
            let dir = root.path().join(&profile.id);
            std::fs::remove_file(dir.join("current")).unwrap();
            generation(&dir, "gen-old", "old");
            link(&dir, "current", "gen-old");
            crash(&dir);

            let reloaded = local(root.path());
            let profile = reloaded.get(&tenant, &profile.id).await.unwrap();
            let copy = tempfile::tempdir().unwrap();
            let hold = reloaded.begin_use(profile, "sess_reader", false).await.unwrap();
            let cookies = reloaded.copy_into(&hold, copy.path()).await.unwrap();
            let content = std::fs::read_to_string(copy.path().join("Cookies")).unwrap();
            assert_eq!(content, expected, "killed {moment}");
            assert_eq!(cookies[0]["value"], expected, "killed {moment}");
            let mut left: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            let generation = format!("gen-{expected}");
            assert_eq!(
                left,
                ["current", generation.as_str(), "profile.json"],
                "killed {moment}"
            );
        }
    }

    #[tokio::test]
    async fn one_writer_many_readers_and_no_delete_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = local(dir.path());
        let t = Tenant::from_id("t_a");
        let p = store.create(&t, "p").await.unwrap();
        let w = store.begin_use(p.clone(), "sess_w", true).await.unwrap();
        assert!(
            matches!(store.begin_use(p.clone(), "sess_x", true).await, Err(ProfileError::Busy(s)) if s == "sess_w")
        );
        let r = store.begin_use(p.clone(), "sess_r", false).await.unwrap();
        assert!(matches!(store.delete(&t, &p.id).await, Err(ProfileError::InUse(2))));
        store.end_use(w).await;
        store.end_use(r).await;
        let y = store.begin_use(p.clone(), "sess_y", true).await.unwrap();
        store.end_use(y).await;
        store.delete(&t, &p.id).await.unwrap();
        assert!(matches!(store.get(&t, &p.id).await, Err(ProfileError::NotFound)));
    }
}
