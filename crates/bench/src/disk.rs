//! Raw-disk references: sequential writes with an `fdatasync` after each chunk.
//!
//! [`measure_sequential_write`] (large chunks) is the throughput a durable append-only log could
//! hope for on a given disk with a given sync granularity, so the log benchmark reports its own
//! throughput as a ratio of it. [`measure_sync_latency`] (one small write + `fdatasync` at a time)
//! is the latency floor of one durable append, so the log's latency percentiles can be read
//! against the disk's own.
//!
//! Invariants: the references write through plain `std::fs::File::write_all` + `sync_data` (no
//! preallocation, so, like a log segment, every sync also makes the new file length durable); its
//! file lives in the directory being measured and is removed afterwards, even on error; the
//! payload is random bytes generated before timing starts.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use crate::{BenchError, Histogram};

/// Name of the throughput reference file inside the measured directory.
pub const REFERENCE_FILE: &str = "disk-reference.bin";
/// Name of the latency probe file inside the measured directory.
pub const PROBE_FILE: &str = "disk-sync-probe.bin";

/// The result of one reference run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskReference {
    /// Bytes written and synced.
    pub bytes: u64,
    /// Bytes per `write_all` + `fdatasync`.
    pub chunk_bytes: usize,
    /// Number of `fdatasync` calls.
    pub syncs: u64,
    /// Time from the first write to the return of the last `fdatasync`.
    pub elapsed: Duration,
}

impl DiskReference {
    /// Throughput in MB/s (1 MB = 10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes `total_bytes` to a new file in `dir` in chunks of `chunk_bytes`, `fdatasync`ing after
/// each chunk, then deletes the file. A zero `total_bytes` or `chunk_bytes` is raised to one byte.
pub fn measure_sequential_write(
    dir: &Path,
    total_bytes: u64,
    chunk_bytes: usize,
) -> Result<DiskReference, BenchError> {
    let path = dir.join(REFERENCE_FILE);
    let chunk_bytes = chunk_bytes.max(1);
    let total_bytes = total_bytes.max(1);
    let mut chunk = vec![0u8; chunk_bytes];
    rand::rngs::SmallRng::seed_from_u64(0x0d15_c0de).fill_bytes(&mut chunk);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| BenchError::io("create disk reference file", &path, e))?;
    let result = (|| -> Result<DiskReference, BenchError> {
        let started = Instant::now();
        let mut written = 0u64;
        let mut syncs = 0u64;
        while written < total_bytes {
            let n =
                usize::try_from(total_bytes - written).map_or(chunk_bytes, |r| r.min(chunk_bytes));
            file.write_all(&chunk[..n])
                .map_err(|e| BenchError::io("write disk reference file", &path, e))?;
            file.sync_data()
                .map_err(|e| BenchError::io("fdatasync disk reference file", &path, e))?;
            written += n as u64;
            syncs += 1;
        }
        Ok(DiskReference { bytes: written, chunk_bytes, syncs, elapsed: started.elapsed() })
    })();
    drop(file);
    let removed = std::fs::remove_file(&path)
        .map_err(|e| BenchError::io("remove disk reference file", &path, e));
    let reference = result?;
    removed?;
    Ok(reference)
}

/// The result of one latency probe.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncLatency {
    /// Bytes per write.
    pub write_bytes: usize,
    /// Time of each write + `fdatasync`, in microseconds.
    pub latency: Histogram,
}

/// Appends `write_bytes` to a new file in `dir` and `fdatasync`s, one write at a time, recording
/// the time of each write + sync, until `max_syncs` syncs, `max_bytes` bytes or `max_time` passed
/// (at least one sync); then deletes the file. A zero `write_bytes` is raised to one byte.
pub fn measure_sync_latency(
    dir: &Path,
    write_bytes: usize,
    max_syncs: u64,
    max_bytes: u64,
    max_time: Duration,
) -> Result<SyncLatency, BenchError> {
    let max_syncs = max_syncs.min(max_bytes / write_bytes.max(1) as u64).max(1);
    let path = dir.join(PROBE_FILE);
    let write_bytes = write_bytes.max(1);
    let mut buf = vec![0u8; write_bytes];
    rand::rngs::SmallRng::seed_from_u64(0x5ca1_ab1e).fill_bytes(&mut buf);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| BenchError::io("create disk latency probe file", &path, e))?;
    let result = (|| -> Result<SyncLatency, BenchError> {
        let mut latency = Histogram::new();
        let started = Instant::now();
        while latency.count() < max_syncs && (latency.count() == 0 || started.elapsed() < max_time)
        {
            let sent = Instant::now();
            file.write_all(&buf)
                .map_err(|e| BenchError::io("write disk latency probe file", &path, e))?;
            file.sync_data()
                .map_err(|e| BenchError::io("fdatasync disk latency probe file", &path, e))?;
            latency.record_duration(sent.elapsed());
        }
        Ok(SyncLatency { write_bytes, latency })
    })();
    drop(file);
    let removed = std::fs::remove_file(&path)
        .map_err(|e| BenchError::io("remove disk latency probe file", &path, e));
    let probe = result?;
    removed?;
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_requested_bytes_in_chunks_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = measure_sequential_write(dir.path(), 2500, 1000).unwrap();
        assert_eq!((r.bytes, r.chunk_bytes, r.syncs), (2500, 1000, 3));
        assert!(r.mb_per_sec() > 0.0);
        assert!(!dir.path().join(REFERENCE_FILE).exists());
    }

    #[test]
    fn latency_probe_stops_at_its_sync_budget_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = measure_sync_latency(dir.path(), 100, 5, 1 << 20, Duration::from_secs(60)).unwrap();
        assert_eq!((p.write_bytes, p.latency.count()), (100, 5));
        assert!(!dir.path().join(PROBE_FILE).exists());
        let p = measure_sync_latency(dir.path(), 100, 5, 250, Duration::from_secs(60)).unwrap();
        assert_eq!(p.latency.count(), 2, "stops at the byte budget");
    }
}
