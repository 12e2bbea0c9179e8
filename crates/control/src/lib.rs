//! Pause, shutdown and restart backoff for the server's long-running tasks: the sources
//! (`driftless-connect`) and the sinks (`driftless-sink`) are both supervised loops that a
//! pause switch holds, a shutdown stops and a transient failure restarts after a backoff.
//!
//! Invariants: a [`Control`] never blocks past a shutdown — every wait returns `false` (or
//! resolves) once the shutdown switch is set, and a dropped shutdown sender means no shutdown can
//! come (waits then run their full time); [`Backoff`] delays stay within `[min/2, max]`;
//! [`Tasks::shutdown`] returns only after every spawned task has finished.
//! This crate knows nothing about the log, the broker or what a task does.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A task's view of its pause switch and of the server's shutdown.
#[derive(Debug, Clone)]
pub struct Control {
    paused: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
}

impl Control {
    /// A control over the switches `paused` and `shutdown` (`true` = paused / shutting down).
    pub fn new(paused: watch::Receiver<bool>, shutdown: watch::Receiver<bool>) -> Self {
        Self { paused, shutdown }
    }

    /// Whether the server is shutting down (the task should return promptly).
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Whether the task is paused now.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits until the task is not paused; `false` if the server is shutting down. Returns at
    /// once when it is not paused.
    pub async fn wait_resumed(&mut self) -> bool {
        loop {
            if self.is_shutting_down() {
                return false;
            }
            if !*self.paused.borrow_and_update() {
                return true;
            }
            tokio::select! {
                _ = self.paused.changed() => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// Sleeps up to `d`; `false` (early) on shutdown.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            () = async { wait_for_shutdown(&mut shutdown).await } => false,
        }
    }

    /// Resolves when the server starts shutting down.
    pub async fn shutdown_signal(&mut self) {
        wait_for_shutdown(&mut self.shutdown).await;
    }
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        // The sender is gone, so no shutdown can come.
        std::future::pending::<()>().await;
    }
}

/// Capped exponential backoff with jitter, so many tasks failing together do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    step_ms: u64,
}

impl Backoff {
    /// Starts at `min_ms`, doubles per failure up to `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        assert!(min_ms <= max_ms, "backoff minimum {min_ms} ms above its maximum {max_ms} ms");
        Self { min_ms, max_ms, step_ms: min_ms }
    }

    /// Back to the first step (after a success, or a long healthy run).
    pub fn reset(&mut self) {
        self.step_ms = self.min_ms;
    }

    /// The next delay — between half and all of the current step — and doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        let ms = self.step_ms;
        self.step_ms = (ms * 2).min(self.max_ms);
        Duration::from_millis(ms - rand::rng().random_range(0..=ms / 2))
    }
}

/// Spawned tasks sharing one shutdown switch.
#[derive(Debug)]
pub struct Tasks {
    shutdown: watch::Sender<bool>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self { shutdown: watch::channel(false).0, handles: Mutex::new(Vec::new()) }
    }
}

impl Tasks {
    /// A receiver of the shutdown switch, for a task's [`Control`].
    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Spawns `task` on the current tokio runtime; [`Tasks::shutdown`] waits for it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
    }

    /// Sets the shutdown switch and waits for every spawned task to finish.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_below_each_step_and_resets() {
        let mut b = Backoff::new(100, 400);
        for step in [100u64, 200, 400, 400] {
            let d = b.next_delay().as_millis() as u64;
            assert!((step / 2..=step).contains(&d), "step {step} ms gave {d} ms");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn waits_end_on_resume_and_on_shutdown() {
        let (pause, paused) = watch::channel(true);
        let tasks = Tasks::default();
        let mut c = Control::new(paused, tasks.shutdown_receiver());
        let resumer = tokio::spawn(async move {
            pause.send_replace(false);
            pause
        });
        assert!(c.wait_resumed().await, "resuming ends the wait");
        let _pause = resumer.await.unwrap_or_else(|e| panic!("{e}"));
        let mut sleeper = c.clone();
        tasks.spawn(async move {
            assert!(!sleeper.sleep(Duration::from_secs(3600)).await, "shutdown cuts a sleep short");
        });
        tasks.shutdown().await;
        assert!(c.is_shutting_down());
        assert!(!c.wait_resumed().await, "no wait after shutdown");
    }
}
