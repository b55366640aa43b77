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
    running: Mutex<Option<(ShutdownTrigger, JoinHandle<()>)>>,
}

impl Hooks {
    /// `notifier`, its workers not started yet.
    pub fn new(notifier: Notifier) -> Hooks {
        Hooks {
            current: ArcSwap::from_pointee(notifier),
            running: Mutex::new(None),
        }
    }

    /// The endpoints in force.
    pub fn current(&self) -> Arc<Notifier> {
        self.current.load_full()
    }

    /// Starts the workers of the endpoints in force.
    pub async fn start(&self) {
        let (trigger, stop) = shutdown::channel();
        let task = self.current.load().start(stop);
        *self.running.lock().await = Some((trigger, task));
    }

    /// Stops the workers and waits until they are gone.
    pub async fn stop(&self) {
        if let Some((trigger, task)) = self.running.lock().await.take() {
            trigger.trigger();
            let _ = task.await;
        }
    }

    /// Puts `notifier` in force: the old workers stop, the new ones start.
    pub async fn replace(&self, notifier: Notifier) {
        self.stop().await;
        self.current.store(Arc::new(notifier));
        self.start().await;
    }
}
