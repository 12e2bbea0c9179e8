//! The crash harness: re-run the current test binary as a child process that does work and
//! reports it line by line on stdout, so the parent test can SIGKILL it at a moment of its choosing
//! and then check what survived.
//!
//! The child runs the same `#[test]` function, which recognises the child role by the environment
//! variable the parent sets. Invariants: the child is SIGKILLed and reaped when the handle drops
//! (a failing assertion never leaks a process); every line the child wrote before dying is
//! delivered, whole lines only, because a pipe keeps what was written to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Result, TestkitError};

/// A child running one test of the current test binary, with its stdout as lines.
#[derive(Debug)]
pub struct CrashChild {
    child: Child,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl CrashChild {
    /// Re-runs the current test binary, restricted to `test_name`, with `env_var` set to `dir`.
    pub fn spawn(test_name: &str, env_var: &str, dir: &Path) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|source| TestkitError::CrashChild {
            reason: "find the test binary",
            source,
        })?;
        let mut child = Command::new(exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(env_var, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| TestkitError::CrashChild {
                reason: "spawn the test binary",
                source,
            })?;
        let stdout = child.stdout.take().ok_or_else(|| TestkitError::CrashChild {
            reason: "take the child's stdout",
            source: std::io::Error::other("stdout was not piped"),
        })?;
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines, reader: Some(reader) })
    }

    /// The next line the child printed, waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// SIGKILLs the child, waits for it, and returns every line it printed that was not read yet.
    pub fn kill(mut self) -> Vec<String> {
        self.stop();
        self.lines.try_iter().collect()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for CrashChild {
    fn drop(&mut self) {
        self.stop();
    }
}
