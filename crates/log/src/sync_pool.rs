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
//! blocking on the queue; after its own wait a caller takes back every job no helper has started
//! and waits on it itself, so a caller never waits longer than waiting on its partitions one
//! after another would take, however busy or stuck the helpers are (a stalled partition holds up
//! at most the helpers waiting on it, not other topics' produces); helpers hold no lock between
//! jobs and exit once every handle to the pool is gone (they are not joined: an idle helper
//! holds nothing but the queue).

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set by whoever waits on the batch: the helper that dequeues the job, or the caller taking
    /// it back. Exactly one of them waits.
    taken: Arc<AtomicBool>,
    reply: SyncSender<Result<()>>,
}

/// The helper threads and the sending side of their queue.
#[derive(Debug)]
pub(crate) struct SyncPool {
    jobs: Mutex<SyncSender<Job>>,
    /// The helpers' side of the queue, kept here too so a pool without helpers (tests) still
    /// queues jobs instead of refusing them.
    _queue: Arc<Mutex<Receiver<Job>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("appended", &self.appended).finish_non_exhaustive()
    }
}

impl SyncPool {
    /// Starts the helpers.
    pub(crate) fn start(dir: &std::path::Path) -> Result<Self> {
        Self::with_threads(dir, SYNC_THREADS)
    }

    fn with_threads(dir: &std::path::Path, threads: usize) -> Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(SYNC_QUEUE_JOBS_MAX);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("driftless-sync-{i}"))
                .spawn(move || helper(&queue))
                .map_err(|e| LogError::io("spawn fsync helper thread", dir, e))?;
        }
        Ok(Self { jobs: Mutex::new(jobs), _queue: queue })
    }

    /// Waits until every batch in `batches` is durable, the first on this thread and the rest
    /// on helpers, and returns each batch's outcome in order.
    pub(crate) fn wait_all(&self, batches: &[(&Arc<Partition>, Appended)]) -> Vec<Result<()>> {
        type Handed = (Arc<AtomicBool>, Receiver<Result<()>>);
        let mut handed: Vec<Option<Handed>> = Vec::with_capacity(batches.len());
        for (i, (partition, appended)) in batches.iter().enumerate() {
            if i == 0 {
                handed.push(None);
                continue;
            }
            let (reply, answer) = mpsc::sync_channel(1);
            let taken = Arc::new(AtomicBool::new(false));
            let job = Job {
                partition: Arc::clone(partition),
                appended: *appended,
                taken: Arc::clone(&taken),
                reply,
            };
            let sent = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).try_send(job);
            match sent {
                Ok(()) => handed.push(Some((taken, answer))),
                // Queue full or helpers gone: this caller waits for it itself, below.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => handed.push(None),
            }
        }
        batches
            .iter()
            .zip(handed)
            .map(|((partition, appended), handed)| match handed {
                // Not started by a helper yet (busy, or stuck on another partition): take it back.
                Some((taken, _)) if !taken.swap(true, Ordering::AcqRel) => {
                    partition.wait_appended(appended)
                }
                Some((_, answer)) => match answer.recv() {
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
        if job.taken.swap(true, Ordering::AcqRel) {
            continue; // the caller took it back and waits on it itself
        }
        let outcome = job.partition.wait_appended(&job.appended);
        let _ = job.reply.send(outcome); // the caller may have given up; nothing to do then
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use driftless_core::TopicName;

    use super::*;
    use crate::{Log, LogOptions, NewRecord, TopicConfig};

    /// With no helper free to start them, the queued waits must come back to the caller: it
    /// takes them back after its own wait instead of waiting for a helper forever.
    #[test]
    fn a_caller_takes_back_the_waits_no_helper_started() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(LogOptions::new(dir.path())).unwrap();
        let config = TopicConfig { partitions: 3, ..TopicConfig::default() };
        let topic = log.create_topic(&TopicName::new("t").unwrap(), config).unwrap();
        let appended: Vec<Appended> = topic
            .partitions()
            .iter()
            .map(|p| p.append_unsynced(&[NewRecord::unkeyed(b"x")]).unwrap())
            .collect();
        let idle = SyncPool::with_threads(dir.path(), 0).unwrap();
        let (done, finished) = mpsc::channel();
        let waiter = Arc::clone(&topic);
        // A detached thread: if the caller did wait forever, the test fails instead of hanging.
        std::thread::spawn(move || {
            let batches: Vec<(&Arc<Partition>, Appended)> =
                waiter.partitions().iter().zip(appended).collect();
            let _ = done.send(idle.wait_all(&batches));
        });
        let outcomes = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the caller waited on a helper that never came");
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        for p in topic.partitions() {
            assert_eq!(p.read(0, 10, 1 << 20).unwrap().records.len(), 1, "durable and visible");
        }
    }
}
