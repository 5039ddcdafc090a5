//! Relays on threads of their own: one single-threaded runtime per core, each with its own
//! event loop, as nginx's workers have. A relay handed to one stays there with both of
//! its sockets, so a message's read, its write and the wake-ups between them happen on one
//! core (on the shared multi-threaded runtime the task that a socket's readiness wakes may
//! run on another core than the one that saw it). The API, the sessions and everything else
//! stay on the main runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::mpsc;

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
                while let Some(job) = rx.recv().await {
                    tokio::spawn(job());
                }
            })
        })
        .ok()?;
    Some(tx)
}
