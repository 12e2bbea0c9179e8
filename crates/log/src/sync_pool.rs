//! Helper threads that wait for several partitions' fsyncs at once.
//!
//! A producer that writes one batch to each of several partitions must wait until every batch is
//! durable. Waiting on them one after another costs the sum of the fsync latencies; a request that
//! touches four partitions paid up to four fsyncs in a row, with its client idle. The pool lets
//! the caller wait on the first batch itself while helpers wait on the others, so the fsyncs
//! overlap (the filesystem can also fold them into one journal commit).
//!
//! Invariants: a helper only calls [`Partition::wait_appended`], which leads or joins a group
//! fsync exactly as a caller would, so durability rules do not change; the job queue is bounded
//! ([`SYNC_QUEUE_JOBS_MAX`]) and a caller whose job does not fit waits inline instead of
//! blocking on the queue; helpers hold no lock between jobs and exit once every handle to the
//! pool is gone.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::error::{LogError, Result};
use crate::partition::{Appended, Partition};

/// Helper threads per log: enough for the partitions one request usually touches to sync in
/// parallel; more only adds idle threads.
pub const SYNC_THREADS: usize = 4;

/// Waits queued for the helpers at most; beyond it callers wait inline.
pub const SYNC_QUEUE_JOBS_MAX: usize = 1024;

struct Job {
    partition: Arc<Partition>,
    appended: Appended,
    reply: SyncSender<Result<()>>,
}

/// The helper threads and the sending side of their queue.
#[derive(Debug)]
pub(crate) struct SyncPool {
    jobs: Mutex<SyncSender<Job>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("appended", &self.appended).finish_non_exhaustive()
    }
}

impl SyncPool {
    /// Starts the helpers.
    pub(crate) fn start(dir: &std::path::Path) -> Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(SYNC_QUEUE_JOBS_MAX);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..SYNC_THREADS {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("driftless-sync-{i}"))
                .spawn(move || helper(&queue))
                .map_err(|e| LogError::io("spawn fsync helper thread", dir, e))?;
        }
        Ok(Self { jobs: Mutex::new(jobs) })
    }

    /// Waits until every batch in `batches` is durable, the first on this thread and the rest
    /// on helpers, and returns each batch's outcome in order.
    pub(crate) fn wait_all(&self, batches: &[(&Arc<Partition>, Appended)]) -> Vec<Result<()>> {
        let mut replies: Vec<Option<Receiver<Result<()>>>> = Vec::with_capacity(batches.len());
        for (i, (partition, appended)) in batches.iter().enumerate() {
            if i == 0 {
                replies.push(None);
                continue;
            }
            let (reply, answer) = mpsc::sync_channel(1);
            let job = Job { partition: Arc::clone(partition), appended: *appended, reply };
            let sent = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).try_send(job);
            match sent {
                Ok(()) => replies.push(Some(answer)),
                // Queue full or helpers gone: this caller waits for it itself, below.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => replies.push(None),
            }
        }
        batches
            .iter()
            .zip(replies)
            .map(|((partition, appended), reply)| match reply {
                Some(answer) => match answer.recv() {
                    Ok(outcome) => outcome,
                    // The helper died without answering (it cannot panic on its own code path):
                    // wait here rather than report a durability we did not see.
                    Err(_) => partition.wait_appended(appended),
                },
                None => partition.wait_appended(appended),
            })
            .collect()
    }
}

fn helper(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while taking one job; waiting on the fsync happens outside it.
        let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return, // every pool handle is gone
        };
        let outcome = job.partition.wait_appended(&job.appended);
        let _ = job.reply.send(outcome); // the caller may have given up; nothing to do then
    }
}
