//! Group commit for message records: one writer thread takes every record and final reply the
//! SMTP sessions have queued and commits them all in one transaction.
//!
//! Owns the thread, the queue and the fallback to one-by-one writes when a batch fails. Does
//! not own what a record holds (see [`Store::record_messages`] and [`Store::finish_messages`]).
//!
//! Why: a sled commit writes its IO buffer out (a `pwrite` and a `sync_file_range`), about
//! half a millisecond here, and the relay waits for the record before it hands the message
//! upstream. Under one connection a batch is one record, so latency is one commit; under ten,
//! the records that arrived during a commit share the next one, so the store stops being the
//! queue that every session waits in. Within a batch, records are written before replies, and a
//! session queues a reply only after its record was committed.

use tokio::sync::{mpsc, oneshot};

use super::{Delivery, MessageId, MessageRecord, Store};

/// Jobs taken into one batch at most.
const MAX_BATCH: usize = 256;

enum Job {
    Record(MessageRecord, oneshot::Sender<Result<(), String>>),
    Finish(MessageId, Delivery, oneshot::Sender<()>),
}

/// Handle to the writer thread; cheap to clone. The thread ends when every handle is gone and
/// the queue is drained.
#[derive(Clone)]
pub struct MessageWriter {
    jobs: mpsc::UnboundedSender<Job>,
}

impl MessageWriter {
    /// Starts the writer thread over `store`.
    pub fn start(store: Store) -> std::io::Result<MessageWriter> {
        // Unbounded, yet bounded in practice: a session waits for its record before it can
        // queue anything else, so the queue holds at most about one job per open session.
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("message-writer".into())
            .spawn(move || write_loop(&store, rx))?;
        Ok(MessageWriter { jobs: tx })
    }

    /// Queues `rec`; the receiver fires once it is committed, or with the error. A writer
    /// that is gone is an error too (the message is then forwarded untracked).
    pub fn record(&self, rec: MessageRecord) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Job::Record(_, done))) =
            self.jobs.send(Job::Record(rec, done))
        {
            let _ = done.send(Err("the message writer has stopped".into()));
        }
        rx
    }

    /// Queues the upstream's final reply; the receiver fires once it is written (or failed,
    /// which is logged here). Dropped at once if the writer is gone.
    pub fn finish(&self, id: MessageId, delivery: Delivery) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        if self.jobs.send(Job::Finish(id, delivery, done)).is_err() {
            tracing::warn!(message = %id, event = "store_error", "the message writer has stopped; reply not recorded");
        }
        rx
    }
}

fn write_loop(store: &Store, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = jobs.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut records = Vec::new();
        let mut finishes = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Record(rec, done) => records.push((rec, done)),
                Job::Finish(id, d, done) => finishes.push((id, d, done)),
            }
        }
        commit(store, records, finishes);
    }
}

/// One transaction for the batch's records and replies; if it fails, each one on its own, so
/// that one bad write does not cost the others theirs.
fn commit(
    store: &Store,
    records: Vec<(MessageRecord, oneshot::Sender<Result<(), String>>)>,
    finishes: Vec<(MessageId, Delivery, oneshot::Sender<()>)>,
) {
    let recs: Vec<&MessageRecord> = records.iter().map(|(r, _)| r).collect();
    let items: Vec<(&MessageId, &Delivery)> = finishes.iter().map(|(i, d, _)| (i, d)).collect();
    match store.commit_messages(&recs, &items) {
        Ok(()) => {
            drop((recs, items));
            for (_, done) in records {
                // A session that went away (client gone) does not matter.
                let _ = done.send(Ok(()));
            }
            for (_, _, done) in finishes {
                let _ = done.send(());
            }
        }
        Err(_) => {
            drop((recs, items));
            commit_records(store, records);
            commit_finishes(store, finishes);
        }
    }
}

fn commit_records(
    store: &Store,
    records: Vec<(MessageRecord, oneshot::Sender<Result<(), String>>)>,
) {
    for (rec, done) in records {
        let _ = done.send(store.record_message(&rec).map_err(|e| e.to_string()));
    }
}

fn commit_finishes(store: &Store, finishes: Vec<(MessageId, Delivery, oneshot::Sender<()>)>) {
    for (id, d, done) in finishes {
        if let Err(e) = store.finish_message(&id, &d) {
            tracing::warn!(message = %id, error = %e, event = "store_error", "cannot record the upstream reply");
        }
        let _ = done.send(());
    }
}
