//! Relays on threads of their own: one single-threaded runtime per core, each with its own
//! event loop, as nginx's workers have. A relay handed to one stays there with both of
//! its sockets, so a message's read, its write and the wake-ups between them happen on one
//! core (on the shared multi-threaded runtime the task that a socket's readiness wakes may
//! run on another core than the one that saw it). The API, the sessions and everything else
//! stay on the main runtime.
//!
//! Each thread also busy-polls for a short while after its relays pass bytes (`busy_poll`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The relay threads of this process (made on first use, shared by every broker in it).
pub struct Cores {
    threads: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

static CORES: OnceLock<Option<Cores>> = OnceLock::new();

impl Cores {
    /// The process's relay threads, one per core; `None` where threads cannot be made
    /// (relays then run on the main runtime).
    pub fn get() -> Option<&'static Cores> {
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
    /// that sockets it registers belong to that thread's event loop.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Relaxed) % self.threads.len();
        let job: Job = Box::new(move || Box::pin(make()));
        if let Err(e) = self.threads[i].send(job) {
            // The thread is gone (it cannot be, short of a panic there): run it here.
            tokio::spawn((e.0)());
        }
    }
}

fn start_thread(i: usize) -> Option<mpsc::UnboundedSender<Job>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
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
                while let Some(job) = rx.recv().await {
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
#[derive(Default)]
struct Poller {
    /// Set by the thread's relays when they pass bytes.
    active: AtomicBool,
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

/// Tells this thread's poller (if it is a relay thread) that a relay passed bytes, and the
/// longest window its broker allows.
pub fn active(max_window: Duration) {
    POLLER.with(|p| {
        if let Some(p) = p.borrow().as_ref() {
            p.max_us.store(max_window.as_micros() as u64, Relaxed);
            p.active.store(true, Relaxed);
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
        while last.elapsed() < window {
            // Let any other thread that wants this core have it, then poll the sockets.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            if p.active.swap(false, Relaxed) {
                last = Instant::now();
            }
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

    /// On a relay thread's runtime: the poller wakes when bytes pass, opens a window, and
    /// sleeps again once bytes stop (an idle broker spends no CPU).
    #[test]
    fn a_thread_polls_while_bytes_pass_and_sleeps_when_they_stop() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let p = Arc::new(Poller::default());
            POLLER.with(|slot| *slot.borrow_mut() = Some(p.clone()));
            tokio::spawn(busy_poll(p.clone()));
            tokio::task::yield_now().await;
            assert!(p.sleeping.load(Relaxed), "asleep before any bytes");
            active(Duration::from_millis(200));
            tokio::task::yield_now().await;
            assert_eq!(p.window_us.load(Relaxed), 25, "bytes soon after a sleep open a window");
            // No bytes now: the window runs out and the poller sleeps.
            let asleep = async {
                while !p.sleeping.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            assert!(
                tokio::time::timeout(Duration::from_secs(10), asleep).await.is_ok(),
                "asleep once bytes stop"
            );
            // Polling off: bytes wake the poller, which goes back to sleep at once.
            active(Duration::ZERO);
            tokio::task::yield_now().await;
            assert_eq!(p.window_us.load(Relaxed), 0);
            tokio::task::yield_now().await;
            assert!(p.sleeping.load(Relaxed), "no polling with a maximum of zero");
            POLLER.with(|slot| slot.borrow_mut().take());
        });
    }

    #[test]
    fn a_maximum_of_zero_turns_polling_off() {
        assert_eq!(next_window(100 * US, Duration::ZERO, Duration::ZERO), Duration::ZERO);
        assert_eq!(next_window(Duration::ZERO, 10 * US, Duration::ZERO), Duration::ZERO);
    }
}
