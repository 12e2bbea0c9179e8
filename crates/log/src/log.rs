//! The log: a data directory of topics, each a fixed set of partitions.
//!
//! Layout under the data directory:
//! ```text
//! LOCK                               exclusive lock: one process per directory
//! topics/<name>/topic.json           the topic's TopicConfig (written to a temp file, fsynced,
//!                                    renamed into place, directory fsynced)
//! topics/<name>/<partition>/…        segments, see crate::segment
//! ```
//!
//! Invariant: a topic directory without `topic.json` is an interrupted creation and is removed on
//! open; a topic directory named `*.deleting` is an interrupted deletion and is finished on open.
//! A background thread flushes `interval_ms` topics and runs retention and compaction; a few
//! helper threads (`sync_pool.rs`) let [`Topic::wait_appended_all`] overlap partitions' fsyncs.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driftless_core::{Clock, SystemClock, TopicName};

use crate::config::TopicConfig;
use crate::error::{LogError, Result};
use crate::fs::{Fs, OpenMode, StdFs};
use crate::partition::{Appended, Partition};
use crate::sync_pool::SyncPool;

/// How to open a [`Log`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The data directory.
    pub dir: PathBuf,
    /// The filesystem; [`StdFs`] except in fault-injection tests.
    pub fs: Arc<dyn Fs>,
    /// The clock for append times and retention; [`SystemClock`] except in tests.
    pub clock: Arc<dyn Clock>,
    /// How often the background thread runs retention and compaction; `None` disables the
    /// thread's maintenance (tests call it directly). Interval flushes run regardless.
    pub maintenance_interval_ms: Option<u64>,
}

impl LogOptions {
    /// Defaults for a data directory: the real filesystem and clock, maintenance every 30 s.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fs: Arc::new(StdFs),
            clock: Arc::new(SystemClock),
            maintenance_interval_ms: Some(30_000),
        }
    }
}

/// One topic: its configuration and partitions.
#[derive(Debug)]
pub struct Topic {
    name: TopicName,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
    sync: Arc<SyncPool>,
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &TopicName {
        &self.name
    }

    /// The topic's configuration.
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// All partitions, in order.
    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    /// Waits until each batch in `batches` (partition id, result of
    /// [`Partition::append_unsynced`]) is as durable as its partition promises, and returns
    /// each one's outcome in order. In `always` mode the fsyncs of different partitions overlap
    /// (helper threads wait on all but the first), so a request that wrote several partitions
    /// waits about one fsync, not one per partition.
    pub fn wait_appended_all(&self, batches: &[(u32, Appended)]) -> Vec<Result<()>> {
        let found: Vec<Result<(&Arc<Partition>, Appended)>> =
            batches.iter().map(|&(id, a)| self.partition(id).map(|p| (p, a))).collect();
        if self.config.durability != crate::Durability::Always || batches.len() < 2 {
            return found.into_iter().map(|b| b.and_then(|(p, a)| p.wait_appended(&a))).collect();
        }
        let ok: Vec<(&Arc<Partition>, Appended)> =
            found.iter().filter_map(|b| b.as_ref().ok().copied()).collect();
        let mut outcomes = self.sync.wait_all(&ok).into_iter();
        found
            .into_iter()
            .map(|b| match b {
                Ok(_) => outcomes.next().unwrap_or_else(|| {
                    unreachable!("wait_all answers once per batch it was given")
                }),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Partition `id`, or an error naming the topic and its partition count.
    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions.get(id as usize).ok_or_else(|| LogError::UnknownPartition {
            topic: self.name.to_string(),
            partition: id,
            count: self.partitions.len() as u32,
        })
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    clock: Arc<dyn Clock>,
    topics: RwLock<BTreeMap<TopicName, Arc<Topic>>>,
    sync: Arc<SyncPool>,
}

/// The embedded log. Dropping it stops the background thread and flushes interval topics; the
/// fsync helper threads exit once the last [`Topic`] handle is gone too.
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    stop: Option<mpsc::SyncSender<()>>,
    background: Option<JoinHandle<()>>,
    _lock: File,
}

const TOPIC_FILE: &str = "topic.json";

impl Log {
    /// Opens the data directory, creating it if needed, and recovers every partition.
    pub fn open(options: LogOptions) -> Result<Self> {
        let LogOptions { dir, fs, clock, maintenance_interval_ms } = options;
        let topics_dir = dir.join("topics");
        fs.create_dir_all(&topics_dir)
            .map_err(|e| LogError::io("create data directory", &topics_dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| LogError::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked { path: lock_path })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(LogError::io("lock data directory", &lock_path, e))
            }
        }
        let sync = Arc::new(SyncPool::start(&dir)?);
        let shared =
            Arc::new(Shared { dir, fs, clock, topics: RwLock::new(BTreeMap::new()), sync });
        shared.load_topics()?;
        let (stop, stopped) = mpsc::sync_channel(1);
        let thread_shared = Arc::clone(&shared);
        let background = std::thread::Builder::new()
            .name("driftless-log-bg".into())
            .spawn(move || background_loop(&thread_shared, &stopped, maintenance_interval_ms))
            .map_err(|e| LogError::io("spawn background thread", &shared.dir, e))?;
        Ok(Self { shared, stop: Some(stop), background: Some(background), _lock: lock })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Creates a topic; fails if it exists.
    pub fn create_topic(&self, name: &TopicName, config: TopicConfig) -> Result<Arc<Topic>> {
        config.validate()?;
        let mut topics = self.shared.topics.write().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let fs = &*self.shared.fs;
        let topics_dir = self.shared.dir.join("topics");
        let dir = topics_dir.join(name.as_str());
        if fs.exists(&dir) {
            // Left by an interrupted creation that load_topics could not clean.
            fs.remove_dir_all(&dir).map_err(|e| LogError::io("remove partial topic", &dir, e))?;
        }
        fs.create_dir_all(&dir).map_err(|e| LogError::io("create topic directory", &dir, e))?;
        fs.sync_dir(&topics_dir)
            .map_err(|e| LogError::io("fsync topics directory", &topics_dir, e))?;
        let topic = self.shared.open_topic(name, &dir, config.clone())?;
        // topic.json last: its presence marks the creation complete.
        let json = serde_json::to_vec_pretty(&config).map_err(|e| LogError::BadMetadata {
            path: dir.join(TOPIC_FILE),
            reason: e.to_string(),
        })?;
        let tmp = dir.join("topic.json.tmp");
        let file = fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| LogError::io("create topic metadata", &tmp, e))?;
        file.write_all_at(&json, 0).map_err(|e| LogError::io("write topic metadata", &tmp, e))?;
        file.sync_data().map_err(|e| LogError::io("fdatasync topic metadata", &tmp, e))?;
        let path = dir.join(TOPIC_FILE);
        fs.rename(&tmp, &path).map_err(|e| LogError::io("install topic metadata", &path, e))?;
        fs.sync_dir(&dir).map_err(|e| LogError::io("fsync topic directory", &dir, e))?;
        let topic = Arc::new(topic);
        topics.insert(name.clone(), Arc::clone(&topic));
        Ok(topic)
    }

    /// The topic called `name`, if it exists.
    pub fn topic(&self, name: &TopicName) -> Option<Arc<Topic>> {
        self.shared.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.shared.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Deletes a topic and its data. Handles still held elsewhere refuse appends afterwards.
    pub fn delete_topic(&self, name: &TopicName) -> Result<()> {
        let topic = self
            .shared
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        for p in topic.partitions() {
            p.mark_deleted();
        }
        let fs = &*self.shared.fs;
        let topics_dir = self.shared.dir.join("topics");
        let dir = topics_dir.join(name.as_str());
        let doomed = topics_dir.join(format!("{name}.deleting"));
        fs.rename(&dir, &doomed).map_err(|e| LogError::io("rename topic for deletion", &dir, e))?;
        fs.sync_dir(&topics_dir)
            .map_err(|e| LogError::io("fsync topics directory", &topics_dir, e))?;
        fs.remove_dir_all(&doomed).map_err(|e| LogError::io("delete topic", &doomed, e))
    }

    /// Runs retention and compaction on every partition now.
    pub fn run_maintenance(&self) -> Result<()> {
        self.shared.maintain()
    }

    /// Flushes every partition now.
    pub fn flush(&self) -> Result<()> {
        for topic in self.topics() {
            for p in topic.partitions() {
                p.flush()?;
            }
        }
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.background.take() {
            let _ = handle.join();
        }
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Err(e) = p.close() {
                    tracing::error!(topic = %topic.name(), partition = p.id(), error = %e,
                        "flush on close failed");
                }
            }
        }
    }
}

fn background_loop(shared: &Shared, stopped: &mpsc::Receiver<()>, maintenance_ms: Option<u64>) {
    const TICK: Duration = Duration::from_millis(5);
    let mut last_maintenance = Instant::now();
    loop {
        match stopped.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let topics: Vec<Arc<Topic>> =
            shared.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for topic in &topics {
            for p in topic.partitions() {
                if let Err(e) = p.flush_if_due() {
                    tracing::error!(topic = %topic.name(), partition = p.id(), error = %e,
                        "interval flush failed");
                }
            }
        }
        if let Some(ms) = maintenance_ms {
            if last_maintenance.elapsed() >= Duration::from_millis(ms) {
                last_maintenance = Instant::now();
                if let Err(e) = shared.maintain() {
                    tracing::error!(error = %e, "log maintenance failed");
                }
            }
        }
    }
}

impl Shared {
    fn open_topic(&self, name: &TopicName, dir: &Path, config: TopicConfig) -> Result<Topic> {
        let partitions = (0..config.partitions)
            .map(|id| {
                Partition::open(
                    name.as_str(),
                    id,
                    &dir.join(id.to_string()),
                    Arc::clone(&self.fs),
                    Arc::clone(&self.clock),
                    config.clone(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Topic { name: name.clone(), config, partitions, sync: Arc::clone(&self.sync) })
    }

    fn load_topics(&self) -> Result<()> {
        let topics_dir = self.dir.join("topics");
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        for dir in self
            .fs
            .read_dir(&topics_dir)
            .map_err(|e| LogError::io("list topics", &topics_dir, e))?
        {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            if name.ends_with(".deleting") {
                self.fs
                    .remove_dir_all(&dir)
                    .map_err(|e| LogError::io("finish topic deletion", &dir, e))?;
                continue;
            }
            let meta = dir.join(TOPIC_FILE);
            if !self.fs.exists(&meta) {
                tracing::warn!(dir = %dir.display(), "removing a topic whose creation was interrupted");
                self.fs
                    .remove_dir_all(&dir)
                    .map_err(|e| LogError::io("remove partial topic", &dir, e))?;
                continue;
            }
            let topic_name = TopicName::new(name)?;
            let bytes =
                std::fs::read(&meta).map_err(|e| LogError::io("read topic metadata", &meta, e))?;
            let config: TopicConfig = serde_json::from_slice(&bytes)
                .map_err(|e| LogError::BadMetadata { path: meta.clone(), reason: e.to_string() })?;
            config
                .validate()
                .map_err(|e| LogError::BadMetadata { path: meta.clone(), reason: e.to_string() })?;
            let topic = self.open_topic(&topic_name, &dir, config)?;
            topics.insert(topic_name, Arc::new(topic));
        }
        Ok(())
    }

    fn maintain(&self) -> Result<()> {
        let topics: Vec<Arc<Topic>> =
            self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut first_error = None;
        for topic in &topics {
            for p in topic.partitions() {
                let result = p.enforce_retention().and_then(|_| p.compact());
                if let Err(e) = result {
                    tracing::error!(topic = %topic.name(), partition = p.id(), error = %e,
                        "retention or compaction failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
