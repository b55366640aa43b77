//! Shutdown signalling: one `Shutdown` handle tells every task to stop, and a `TaskTracker`
//! tells the caller when all of them have finished (the mini-redis pattern: each task holds a
//! clone of an mpsc sender, so `recv() == None` means all are gone).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};

/// Tells tasks to stop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// `true` once shutdown has begun.
    rx: watch::Receiver<bool>,
    /// Set before `rx` changes: a check that reads memory nobody writes until shutdown (the
    /// watch channel's value sits behind a lock every receiver takes).
    begun: Arc<AtomicBool>,
}

/// The owner's side: triggers the shutdown. Dropping it triggers it too.
#[derive(Debug)]
pub struct ShutdownTrigger {
    /// Flipped to `true` once.
    tx: watch::Sender<bool>,
    /// Shared with every [`Shutdown`].
    begun: Arc<AtomicBool>,
}

/// A new shutdown pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let begun = Arc::new(AtomicBool::new(false));
    (
        ShutdownTrigger {
            tx,
            begun: begun.clone(),
        },
        Shutdown { rx, begun },
    )
}

impl ShutdownTrigger {
    /// Begins the shutdown; idempotent.
    pub fn trigger(&self) {
        self.begun.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }

    /// A receiver for tasks started later.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            begun: self.begun.clone(),
        }
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        // `wait` treats a dropped trigger as shutdown; so does `is_triggered`.
        self.begun.store(true, Ordering::Release);
    }
}

impl Shutdown {
    /// Whether shutdown has begun (one atomic load: cheap enough to ask on every request).
    pub fn is_triggered(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: treat that as shutdown too.
        let _ = self.rx.wait_for(|v| *v).await;
    }

    /// A shutdown that never fires (tests, one-off tools).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the program's life so `wait` stays pending.
        std::mem::forget(tx);
        Shutdown {
            rx,
            begun: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Counts live tasks; `wait` returns when every `TaskGuard` has been dropped.
#[derive(Debug)]
pub struct TaskTracker {
    /// Cloned into each guard.
    tx: mpsc::Sender<()>,
    /// Yields `None` once all senders are gone.
    rx: mpsc::Receiver<()>,
}

/// Held by a task for as long as it runs.
#[derive(Debug, Clone)]
pub struct TaskGuard {
    /// Never sent on; dropping it is the signal.
    _tx: mpsc::Sender<()>,
}

impl Default for TaskTracker {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        TaskTracker { tx, rx }
    }
}

impl TaskTracker {
    /// A guard for one more task.
    pub fn guard(&self) -> TaskGuard {
        TaskGuard {
            _tx: self.tx.clone(),
        }
    }

    /// Waits until every guard handed out has been dropped.
    pub async fn wait(self) {
        let TaskTracker { tx, mut rx } = self;
        drop(tx);
        let _ = rx.recv().await;
    }
}
