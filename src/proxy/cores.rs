//! Relays on threads of their own: one single-threaded runtime per core, each with its own
//! event loop, as nginx's workers have. A relay handed to one stays there with both of
//! its sockets, so a message's read, its write and the wake-ups between them happen on one
//! core (on the shared multi-threaded runtime the task that a socket's readiness wakes may
//! run on another core than the one that saw it). The API, the sessions and everything else
//! stay on the main runtime.
//!
//! Each thread also busy-polls for a short while after its relays pass bytes (`busy_poll`),
//! and runs under `SCHED_BATCH` when the broker asks for it (`relay_sched_batch`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A relay to run, and whether its thread should run under `SCHED_BATCH`.
struct Handoff {
    sched_batch: bool,
    job: Job,
}

/// The relay threads of this process (made on first use, shared by every broker in it).
pub(crate) struct Cores {
    threads: Vec<mpsc::UnboundedSender<Handoff>>,
    next: AtomicUsize,
}

static CORES: OnceLock<Option<Cores>> = OnceLock::new();

impl Cores {
    /// The process's relay threads, one per core; `None` where threads cannot be made
    /// (relays then run on the main runtime).
    pub(crate) fn get() -> Option<&'static Cores> {
        CORES
            .get_or_init(|| {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                let threads: Option<Vec<_>> = (0..n).map(start_thread).collect();
                threads.map(|threads| Cores {
                    threads,
                    next: AtomicUsize::new(0),
                })
            })
            .as_ref()
    }

    /// Runs the future `make` builds on one of the threads, in turn. `make` runs there, so
    /// that sockets it registers belong to that thread's event loop. `sched_batch`: the
    /// thread runs under `SCHED_BATCH` from then on (the broker's `relay_sched_batch`).
    pub(crate) fn spawn<F, Fut>(&self, sched_batch: bool, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Relaxed) % self.threads.len();
        let job: Job = Box::new(move || Box::pin(make()));
        if let Err(e) = self.threads[i].send(Handoff { sched_batch, job }) {
            // The thread is gone (it cannot be, short of a panic there): run it here.
            tokio::spawn((e.0.job)());
        }
    }
}

fn start_thread(i: usize) -> Option<mpsc::UnboundedSender<Handoff>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Handoff>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    std::thread::Builder::new()
        .name(format!("cdpgate-relay-{i}"))
        .spawn(move || {
            runtime.block_on(async move {
                let poller = Arc::new(Poller::default());
                POLLER.with(|p| *p.borrow_mut() = Some(poller.clone()));
                tokio::spawn(busy_poll(poller));
                // The policy last asked for (a refused change is not tried again).
                let mut sched_batch = false;
                while let Some(Handoff {
                    sched_batch: wanted,
                    job,
                }) = rx.recv().await
                {
                    if wanted != sched_batch {
                        if let Err(e) = sys::set_sched_batch(wanted) {
                            tracing::debug!("relay thread's scheduling policy unchanged: {e}");
                        }
                        sched_batch = wanted;
                    }
                    tokio::spawn(job());
                }
            })
        })
        .ok()?;
    Some(tx)
}

/// Busy polling. After a relay on this thread passes bytes, the thread goes on polling its
/// sockets for a short window (a zero-timeout `epoll_wait` between yields of its core)
/// before it sleeps. The next message of a CDP exchange (the browser's answer, the
/// client's next command) usually comes within a few hundred µs, and a thread woken from
/// sleep, on a core that went idle, adds tens of µs per hop (docs/benchmarks.md, "Busy
/// polling"). While polling the thread yields its core to any other thread that wants it,
/// so it spends time the core would otherwise idle.
///
/// The window adapts as the kernel's halt polling does (cpuidle-haltpoll): it grows when
/// the next bytes came soon after a window ended, and shrinks, down to none, when they
/// came long after; a connection whose messages are far apart costs no polling.
///
/// A thread that is crowded (bytes passed more than once between two polls: several
/// connections at once, or one streaming) stops polling for a while: each of its wake-ups
/// serves several messages already, and polling would only split them into smaller
/// batches and take the core from the threads sending them (docs/benchmarks.md).
#[derive(Default)]
struct Poller {
    /// Times the thread's relays passed bytes since the poller last looked.
    active: AtomicU64,
    /// Set while the poller pauses after a crowded poll.
    crowded: AtomicBool,
    /// The poller sleeps until bytes pass.
    sleeping: AtomicBool,
    wake: Notify,
    /// Longest window, in µs (the relays' setting; 0 turns polling off).
    max_us: AtomicU64,
    /// The window as it has adapted, in µs.
    window_us: AtomicU64,
}

thread_local! {
    static POLLER: RefCell<Option<Arc<Poller>>> = const { RefCell::new(None) };
}

/// The first window after activity resumes, and the smallest one kept.
const WINDOW_START: Duration = Duration::from_micros(25);
/// Bytes passing this many times between two polls make a thread crowded.
const CROWDED_PASSES: u64 = 2;
/// How long a crowded thread goes without polling.
const CROWDED_PAUSE: Duration = Duration::from_millis(10);

/// Tells this thread's poller (if it is a relay thread) that a relay passed bytes, and the
/// longest window its broker allows.
pub(crate) fn active(max_window: Duration) {
    POLLER.with(|p| {
        if let Some(p) = p.borrow().as_ref() {
            p.max_us.store(max_window.as_micros() as u64, Relaxed);
            p.active.fetch_add(1, Relaxed);
            if p.sleeping.load(Relaxed) {
                p.wake.notify_one();
            }
        }
    });
}

async fn busy_poll(p: Arc<Poller>) {
    let mut window = Duration::ZERO;
    loop {
        p.sleeping.store(true, Relaxed);
        let slept = Instant::now();
        p.wake.notified().await;
        p.sleeping.store(false, Relaxed);
        let max = Duration::from_micros(p.max_us.load(Relaxed));
        window = next_window(window, slept.elapsed(), max);
        p.window_us.store(window.as_micros() as u64, Relaxed);
        let mut last = Instant::now();
        let mut crowded = false;
        while last.elapsed() < window {
            // Let any other thread that wants this core have it, then poll the sockets.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            match p.active.swap(0, Relaxed) {
                0 => {}
                passes if passes >= CROWDED_PASSES => {
                    crowded = true;
                    break;
                }
                _ => last = Instant::now(),
            }
        }
        if crowded {
            p.crowded.store(true, Relaxed);
            tokio::time::sleep(CROWDED_PAUSE).await;
            p.active.store(0, Relaxed);
            p.crowded.store(false, Relaxed);
        }
    }
}

/// The window after one that ended `gap` before the next bytes: doubled if a window up to
/// `max` would have caught them, halved (and dropped below the start) if not.
fn next_window(window: Duration, gap: Duration, max: Duration) -> Duration {
    if gap <= max {
        (window * 2).max(WINDOW_START).min(max)
    } else if window / 2 < WINDOW_START {
        Duration::ZERO
    } else {
        window / 2
    }
}

/// The crate's scheduling calls (libc, hence unsafe).
#[allow(unsafe_code)]
mod sys {
    /// Puts the calling thread under `SCHED_BATCH` (or back under `SCHED_OTHER`). Needs no
    /// privilege: both are normal, non-real-time policies.
    pub(super) fn set_sched_batch(on: bool) -> std::io::Result<()> {
        let policy = if on { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_window_grows_to_the_gaps_it_can_catch_and_stops_at_the_maximum() {
        let max = 200 * US;
        let mut w = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..6 {
            w = next_window(w, 120 * US, max);
            seen.push(w.as_micros());
        }
        assert_eq!(seen, [25, 50, 100, 200, 200, 200]);
    }

    #[test]
    fn the_window_shrinks_to_none_when_bytes_come_far_apart() {
        let max = 200 * US;
        let mut w = max;
        let mut seen = Vec::new();
        for _ in 0..5 {
            w = next_window(w, 5_000 * US, max);
            seen.push(w.as_micros());
        }
        assert_eq!(seen, [100, 50, 25, 0, 0]);
    }

    /// Runs `test` on a runtime like a relay thread's, with its poller started and asleep.
    fn with_poller<F: Future<Output = ()>>(test: impl FnOnce(Arc<Poller>) -> F) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let p = Arc::new(Poller::default());
            POLLER.with(|slot| *slot.borrow_mut() = Some(p.clone()));
            tokio::spawn(busy_poll(p.clone()));
            tokio::task::yield_now().await;
            test(p).await;
            POLLER.with(|slot| slot.borrow_mut().take());
        });
    }

    /// Whether the poller goes to sleep within 10 s.
    async fn falls_asleep(p: &Poller) -> bool {
        let asleep = async {
            while !p.sleeping.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), asleep).await.is_ok()
    }

    /// On a relay thread's runtime: the poller wakes when bytes pass, opens a window, and
    /// sleeps again once bytes stop (an idle broker spends no CPU).
    #[test]
    fn a_thread_polls_while_bytes_pass_and_sleeps_when_they_stop() {
        with_poller(async |p| {
            assert!(p.sleeping.load(Relaxed), "asleep before any bytes");
            active(Duration::from_millis(200));
            tokio::task::yield_now().await;
            assert_eq!(p.window_us.load(Relaxed), 25, "bytes soon after a sleep open a window");
            // No bytes now: the window runs out and the poller sleeps.
            assert!(falls_asleep(&p).await, "asleep once bytes stop");
            // Polling off: bytes wake the poller, which goes back to sleep at once.
            active(Duration::ZERO);
            tokio::task::yield_now().await;
            assert_eq!(p.window_us.load(Relaxed), 0);
            tokio::task::yield_now().await;
            assert!(p.sleeping.load(Relaxed), "no polling with a maximum of zero");
        });
    }

    /// Bytes passing twice between two polls (several connections at once) make the
    /// poller stop for a pause; then it sleeps until bytes pass again.
    #[test]
    fn a_crowded_thread_pauses_its_polling() {
        with_poller(async |p| {
            active(Duration::from_millis(200));
            tokio::task::yield_now().await;
            assert!(!p.sleeping.load(Relaxed), "polling a window");
            assert!(!p.crowded.load(Relaxed));
            // Two relays pass bytes before the poller looks again.
            active(Duration::from_millis(200));
            active(Duration::from_millis(200));
            tokio::task::yield_now().await;
            assert!(p.crowded.load(Relaxed), "two passes between polls: crowded");
            let paused = Instant::now();
            assert!(falls_asleep(&p).await);
            // (The pause began a moment before `paused`.)
            assert!(
                paused.elapsed() >= CROWDED_PAUSE / 2,
                "no sleep before the pause is over"
            );
            assert!(!p.crowded.load(Relaxed));
        });
    }

    /// The scheduling policy of the calling thread, from /proc (0 normal, 3 batch).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        // Fields from the third (state) on; the policy is the 41st.
        after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn a_relay_thread_takes_the_policy_its_broker_asks_for() {
        let cores = Cores::get().expect("relay threads");
        for wanted in [true, false, true] {
            let (tx, rx) = std::sync::mpsc::channel();
            // One handoff per thread, so that each thread gets the setting.
            for _ in 0..cores.threads.len() {
                let tx = tx.clone();
                cores.spawn(wanted, move || {
                    tx.send(policy()).unwrap();
                    async {}
                });
            }
            let policies: Vec<u32> = (0..cores.threads.len()).map(|_| rx.recv().unwrap()).collect();
            let expected = if wanted { libc::SCHED_BATCH } else { libc::SCHED_OTHER } as u32;
            assert!(policies.iter().all(|&p| p == expected), "{wanted}: {policies:?}");
        }
    }

    #[test]
    fn a_maximum_of_zero_turns_polling_off() {
        assert_eq!(next_window(100 * US, Duration::ZERO, Duration::ZERO), Duration::ZERO);
        assert_eq!(next_window(Duration::ZERO, 10 * US, Duration::ZERO), Duration::ZERO);
    }
}
