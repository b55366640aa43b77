//! The webhook endpoints in force, replaced by a config reload: the old workers stop (a request
//! in flight is abandoned and its row stays in the outbox, so the new worker for the same URL
//! sends it: at least once, as always), then the new endpoints' workers start.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::Notifier;
use crate::shutdown::{self, ShutdownTrigger};

/// The notifier of the moment and its running workers.
#[derive(Debug)]
pub struct Hooks {
    /// What the admin API and `/metrics` read.
    current: ArcSwap<Notifier>,
    /// Stops the workers of `current`, and their task.
    running: Mutex<Running>,
}

/// The workers' state.
#[derive(Debug, Default)]
struct Running {
    /// Stops the workers of the endpoints in force, and their task.
    workers: Option<(ShutdownTrigger, JoinHandle<()>)>,
    /// After [`Hooks::close`]: nothing starts again (a reload during shutdown).
    closed: bool,
}

impl Hooks {
    /// `notifier`, its workers not started yet.
    pub fn new(notifier: Notifier) -> Hooks {
        Hooks {
            current: ArcSwap::from_pointee(notifier),
            running: Mutex::new(Running::default()),
        }
    }

    /// The endpoints in force.
    pub fn current(&self) -> Arc<Notifier> {
        self.current.load_full()
    }

    /// Starts the workers of the endpoints in force, unless they run already (a reload came
    /// first) or the hooks are closed.
    pub async fn start(&self) {
        let mut running = self.running.lock().await;
        if running.workers.is_none() {
            self.spawn(&mut running);
        }
    }

    /// Stops the workers for good (shutdown) and waits until they are gone; undelivered
    /// events stay in the outbox for the next start.
    pub async fn close(&self) {
        let mut running = self.running.lock().await;
        running.closed = true;
        stop(&mut running).await;
    }

    /// Puts `notifier` in force: the old workers stop, the new ones start.
    pub async fn replace(&self, notifier: Notifier) {
        let mut running = self.running.lock().await;
        stop(&mut running).await;
        self.current.store(Arc::new(notifier));
        self.spawn(&mut running);
    }

    /// Starts the workers of the endpoints in force, unless the hooks are closed.
    fn spawn(&self, running: &mut Running) {
        if !running.closed {
            let (trigger, stop) = shutdown::channel();
            let task = self.current.load().start(stop);
            running.workers = Some((trigger, task));
        }
    }
}

/// Stops the running workers and waits until they are gone.
async fn stop(running: &mut Running) {
    if let Some((trigger, task)) = running.workers.take() {
        trigger.trigger();
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The task id of the running workers, if any.
    async fn workers(hooks: &Hooks) -> Option<tokio::task::Id> {
        let running = hooks.running.lock().await;
        running.workers.as_ref().map(|(_, t)| t.id())
    }

    #[tokio::test]
    async fn one_set_of_workers_at_a_time_and_none_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::store::contract::cfg(dir.path())).unwrap();
        let hooks = Hooks::new(Notifier::new(Vec::new(), store.clone()));
        // A reload before the server's own start: the start finds the workers running.
        hooks
            .replace(Notifier::new(Vec::new(), store.clone()))
            .await;
        let first = workers(&hooks).await;
        hooks.start().await;
        let again = workers(&hooks).await;
        assert!(first.is_some());
        assert_eq!(first, again, "no second set of workers");
        hooks.close().await;
        assert!(workers(&hooks).await.is_none());
        // A reload during shutdown starts nothing.
        hooks.replace(Notifier::new(Vec::new(), store)).await;
        hooks.start().await;
        assert!(workers(&hooks).await.is_none());
    }
}
