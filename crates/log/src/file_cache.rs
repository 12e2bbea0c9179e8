//! A bounded cache of open files, so the log holds descriptors for busy partitions only.
//!
//! Every segment and index file of the log is a [`CachedFile`]: a path that is opened on demand
//! and kept open while it is used. When more than `open_files_max` files are open, opening one
//! more closes the least recently used *clean* ones (down to 7/8 of the budget, so the scan of
//! the open set is paid once per many opens). A thread that is using a file holds its own
//! `Arc` to it, so an eviction never pulls a descriptor from under a read or a write: the
//! descriptor closes when the last user lets go.
//!
//! Invariants:
//! - **A file with writes not yet fsynced is never closed by the cache.** A write-back error is
//!   reported (once) to the descriptors open when it happens; a descriptor opened later may never
//!   see it, so closing a dirty file and fsyncing a fresh descriptor could report success for
//!   bytes the kernel dropped ("fsyncgate", Rebello et al., ATC '20). Writers therefore call
//!   [`CachedFile::for_write`] *before* writing (the file counts as dirty from then on, under the
//!   same lock the evictor checks), and the file is clean again only after an fsync through that
//!   same, never-closed descriptor ([`CachedFile::begin_sync`] / [`CachedFile::end_sync`]). A
//!   file whose write or fsync failed stays dirty, and open, for good.
//! - The budget is soft: dirty files and files in use are not evicted, so the count of open
//!   descriptors can exceed `open_files_max` by the partitions with unsynced writes (in `always`
//!   mode only those with an append in flight) plus the reads in progress.
//! - A file that was replaced (compaction renames a new file over it) or deleted is *retired*:
//!   it is never reopened by path, since the path now names another file or nothing. A reader of
//!   a retired file that was already closed gets `NotFound` and starts over from the partition's
//!   current segments.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Fs, FsFile, OpenMode};

/// The default budget of open files ([`crate::LogOptions::open_files_max`]): well under the
/// usual soft limit of 1,024, leaving room for sockets and everything else a process opens.
pub const OPEN_FILES_MAX_DEFAULT: usize = 512;

/// Smallest budget accepted: below it, eviction would churn on every append of a few partitions.
pub const OPEN_FILES_MIN: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The set of files open through the cache.
#[derive(Debug)]
pub(crate) struct FileCache {
    fs: Arc<dyn Fs>,
    open_files_max: usize,
    open: Mutex<HashMap<u64, Arc<Slot>>>,
    tick: AtomicU64,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    path: PathBuf,
    mode: OpenMode,
    last_used: AtomicU64,
    inner: Mutex<SlotInner>,
}

#[derive(Debug, Default)]
struct SlotInner {
    file: Option<Arc<dyn FsFile>>,
    /// Writes begun through [`CachedFile::for_write`].
    writes: u64,
    /// Of those, how many an fsync through the open descriptor covered.
    synced_writes: u64,
    retired: bool,
}

impl SlotInner {
    fn is_clean(&self) -> bool {
        self.writes == self.synced_writes
    }
}

impl FileCache {
    pub fn new(fs: Arc<dyn Fs>, open_files_max: usize) -> Arc<Self> {
        Arc::new(Self {
            fs,
            open_files_max: open_files_max.max(OPEN_FILES_MIN),
            open: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        })
    }

    /// A handle for `path`; nothing is opened until it is used.
    pub fn file(self: &Arc<Self>, path: &Path, mode: OpenMode) -> CachedFile {
        let slot = Slot {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            path: path.to_path_buf(),
            mode,
            last_used: AtomicU64::new(0),
            inner: Mutex::new(SlotInner::default()),
        };
        CachedFile { cache: Arc::clone(self), slot: Arc::new(slot) }
    }

    /// A handle for a file that `open` has just opened (a new file, or one being recovered).
    pub fn adopt(
        self: &Arc<Self>,
        path: &Path,
        mode: OpenMode,
        file: Arc<dyn FsFile>,
    ) -> CachedFile {
        let handle = self.file(path, mode);
        lock(&handle.slot.inner).file = Some(file);
        handle.touch();
        self.register(&handle.slot);
        handle
    }

    /// Files the cache holds open now.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        lock(&self.open).len()
    }

    fn register(&self, slot: &Arc<Slot>) {
        let mut open = lock(&self.open);
        open.insert(slot.id, Arc::clone(slot));
        self.evict(&mut open, slot.id);
    }

    /// Closes the least recently used clean files (never `keep`) while over budget.
    fn evict(&self, open: &mut HashMap<u64, Arc<Slot>>, keep: u64) {
        if open.len() <= self.open_files_max {
            return;
        }
        let target = self.open_files_max - self.open_files_max / 8;
        let mut candidates: Vec<(u64, u64)> = open
            .values()
            .filter(|s| s.id != keep)
            .map(|s| (s.last_used.load(Ordering::Relaxed), s.id))
            .collect();
        candidates.sort_unstable();
        for (_, id) in candidates {
            if open.len() <= target {
                break;
            }
            let Some(victim) = open.get(&id) else { continue };
            // try_lock: a slot locked right now is in use (and its holder may be waiting for
            // this very map), so it is not a candidate.
            let Ok(mut inner) = victim.inner.try_lock() else { continue };
            if !inner.is_clean() {
                continue;
            }
            inner.file = None;
            drop(inner);
            open.remove(&id);
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.open).remove(&id);
    }
}

/// One file of the log, opened on demand through the [`FileCache`]. Dropping the handle closes
/// the file (once nobody is using it).
#[derive(Debug)]
pub(crate) struct CachedFile {
    cache: Arc<FileCache>,
    slot: Arc<Slot>,
}

impl CachedFile {
    fn touch(&self) {
        let now = self.cache.tick.fetch_add(1, Ordering::Relaxed);
        self.slot.last_used.store(now, Ordering::Relaxed);
    }

    fn open_locked(&self, inner: &mut SlotInner) -> io::Result<(Arc<dyn FsFile>, bool)> {
        if let Some(file) = &inner.file {
            return Ok((Arc::clone(file), false));
        }
        if inner.retired {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the segment file was replaced or deleted since this read began",
            ));
        }
        let file = self.cache.fs.open(&self.slot.path, self.slot.mode)?;
        inner.file = Some(Arc::clone(&file));
        Ok((file, true))
    }

    /// The open file, for reading (or for writes whose loss a later fsync need not detect).
    pub fn get(&self) -> io::Result<Arc<dyn FsFile>> {
        let (file, opened) = {
            let mut inner = lock(&self.slot.inner);
            self.open_locked(&mut inner)?
        };
        self.touch();
        if opened {
            self.cache.register(&self.slot);
        }
        Ok(file)
    }

    /// The open file, for a write that a later fsync must cover: from now until that fsync
    /// ([`end_sync`](Self::end_sync)) the cache does not close it.
    pub fn for_write(&self) -> io::Result<Arc<dyn FsFile>> {
        let (file, opened) = {
            let mut inner = lock(&self.slot.inner);
            let opened = self.open_locked(&mut inner)?;
            inner.writes += 1;
            opened
        };
        self.touch();
        if opened {
            self.cache.register(&self.slot);
        }
        Ok(file)
    }

    /// Before an fsync: the descriptor every unsynced write went through and the number of
    /// writes begun so far, or `None` if there is nothing to sync (no unsynced write; the file
    /// may even be closed). Call it while no write is in progress (the writer lock).
    pub fn begin_sync(&self) -> io::Result<Option<(Arc<dyn FsFile>, u64)>> {
        let inner = lock(&self.slot.inner);
        if inner.is_clean() {
            return Ok(None);
        }
        // A dirty file is never closed, so `file` is the descriptor the writes went through.
        match &inner.file {
            Some(file) => Ok(Some((Arc::clone(file), inner.writes))),
            // Only if the invariant broke: an fsync of a new descriptor could report success
            // for writes the kernel dropped, so there is no honest way to make them durable.
            None => Err(io::Error::other(
                "a file with unsynced writes lost its descriptor; their durability cannot be \
                 verified",
            )),
        }
    }

    /// `begin_sync`, `sync` on the descriptor if there is anything to sync, then `end_sync`.
    pub fn sync_now(&self, sync: impl FnOnce(&dyn FsFile) -> io::Result<()>) -> io::Result<()> {
        if let Some((file, writes)) = self.begin_sync()? {
            sync(&*file)?;
            self.end_sync(writes);
        }
        Ok(())
    }

    /// After a successful fsync that began at `writes` (from [`begin_sync`](Self::begin_sync)).
    pub fn end_sync(&self, writes: u64) {
        {
            let mut inner = lock(&self.slot.inner);
            inner.synced_writes = inner.synced_writes.max(writes);
        }
        // Files left over budget while dirty (many partitions written at once) go as soon as
        // they are clean, not only when some other file is opened.
        let mut open = lock(&self.cache.open);
        self.cache.evict(&mut open, u64::MAX);
    }

    /// Never reopen this path again (it was replaced or deleted); an open descriptor stays
    /// until the handle is dropped or the cache evicts it.
    pub fn retire(&self) {
        lock(&self.slot.inner).retired = true;
    }

    /// Undoes [`retire`](Self::retire) when the replacement did not happen after all.
    pub fn unretire(&self) {
        lock(&self.slot.inner).retired = false;
    }

    /// Retires the file and closes it now, dirty or not: for files being deleted, whose unsynced
    /// writes no longer matter.
    pub fn close_deleted(&self) {
        {
            let mut inner = lock(&self.slot.inner);
            inner.retired = true;
            inner.file = None;
        }
        self.cache.forget(self.slot.id);
    }

    /// Whether the file has writes no fsync has covered yet.
    #[cfg(test)]
    pub fn is_dirty(&self) -> bool {
        !lock(&self.slot.inner).is_clean()
    }

    /// Whether the cache holds the file open now.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        lock(&self.slot.inner).file.is_some()
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        self.cache.forget(self.slot.id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fs::StdFs;

    fn files(n: usize) -> (tempfile::TempDir, Arc<FileCache>, Vec<CachedFile>) {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(Arc::new(StdFs), OPEN_FILES_MIN);
        let handles = (0..n)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, b"x").unwrap();
                cache.file(&path, OpenMode::ReadWrite)
            })
            .collect();
        (dir, cache, handles)
    }

    #[test]
    fn the_cache_keeps_at_most_its_budget_of_clean_files_open() {
        let (_dir, cache, handles) = files(100);
        for h in &handles {
            let file = h.get().unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(file.read_at(&mut buf, 0).unwrap(), 1);
            assert!(cache.open_count() <= OPEN_FILES_MIN);
        }
        // The most recently used file is still open; the first was closed and reopens on use.
        assert!(handles[99].is_open());
        assert!(!handles[0].is_open());
        handles[0].get().unwrap();
        assert!(handles[0].is_open());
    }

    #[test]
    fn eviction_never_closes_a_file_with_unsynced_writes() {
        let (_dir, cache, handles) = files(100);
        // Ten files written and not synced, then enough other files used to evict everything
        // clean many times over.
        for h in &handles[..10] {
            h.for_write().unwrap().write_all_at(b"y", 0).unwrap();
        }
        for _ in 0..3 {
            for h in &handles[10..] {
                h.get().unwrap();
            }
        }
        for h in &handles[..10] {
            assert!(h.is_dirty() && h.is_open(), "a dirty file was closed");
        }
        // Synced through the same descriptor, they become ordinary candidates.
        for h in &handles[..10] {
            h.sync_now(|file| file.sync_data()).unwrap();
            assert!(!h.is_dirty());
        }
        for h in &handles[10..] {
            h.get().unwrap();
        }
        assert!(handles[..10].iter().all(|h| !h.is_open()));
        assert!(cache.open_count() <= OPEN_FILES_MIN);
    }

    #[test]
    fn a_write_begun_during_a_sync_keeps_the_file_dirty_after_it() {
        let (_dir, _cache, handles) = files(1);
        let h = &handles[0];
        h.for_write().unwrap().write_all_at(b"a", 0).unwrap();
        let (file, writes) = h.begin_sync().unwrap().unwrap();
        h.for_write().unwrap().write_all_at(b"b", 0).unwrap();
        file.sync_data().unwrap();
        h.end_sync(writes);
        assert!(h.is_dirty());
    }

    #[test]
    fn a_retired_file_is_never_reopened_by_path() {
        let (_dir, _cache, handles) = files(1);
        let h = &handles[0];
        h.get().unwrap();
        h.close_deleted();
        let err = h.get().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
