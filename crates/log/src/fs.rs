//! The filesystem behind a trait, so tests can inject faults.
//!
//! The log performs every filesystem operation through [`Fs`] and [`FsFile`]. [`StdFs`] is the real
//! thing; [`FaultFs`] wraps it and fails chosen operations, which is how the tests prove that a
//! failed `fdatasync` poisons a partition instead of being retried.
//!
//! Invariant: the log writes with positional writes (`pwrite`) only, so a file never has a cursor
//! whose state could diverge from what the log believes its length to be.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing file, read only.
    Read,
    /// Existing file, read and write.
    ReadWrite,
    /// New file, read and write; fails if it exists.
    CreateNew,
}

/// An open file. All methods take `&self`: positional IO needs no cursor and no lock.
pub trait FsFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// `fdatasync`: makes written bytes and the file length durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// Directory-level operations.
pub trait Fs: Send + Sync + Debug {
    /// Opens `path`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// `fsync` on a directory, making creates, renames and deletes in it durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The entries of a directory, as full paths.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The operating system's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl FsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Fs for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(StdFile(options.open(path)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // IMPORTANT: a new, renamed or deleted directory entry is only durable once the directory
        // itself is fsynced (ALICE, OSDI'14).
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Which operation a [`FaultFs`] fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `fdatasync` of a file.
    SyncData,
    /// `fsync` of a directory.
    SyncDir,
    /// A positional write (also creating a file and changing its length).
    Write,
    /// A rename of a file or directory.
    Rename,
    /// Creating a directory.
    CreateDir,
    /// Removing a directory tree.
    RemoveDir,
}

#[derive(Debug)]
struct Fault {
    op: FaultOp,
    /// Only paths containing this string are affected; empty matches all.
    path_contains: String,
    /// Matching calls that still succeed before the fault fires.
    skip: u64,
    /// Once fired, every later matching call fails too (a dead disk), instead of just one.
    sticky: bool,
    /// When it fires, the filesystem freezes as well: the process "dies" at this step.
    crash: bool,
    fired: bool,
}

/// A point where matching operations wait until released (see [`FaultFs::pause`]).
#[derive(Debug, Default)]
pub struct Pause {
    op: Option<FaultOp>,
    path_contains: String,
    state: Mutex<PauseState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct PauseState {
    reached: u64,
    released: bool,
}

impl Pause {
    /// Blocks until some call reached the pause, or `timeout` passes; returns whether one did.
    pub fn wait_reached(&self, timeout: std::time::Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.reached == 0)
            .unwrap_or_else(|e| e.into_inner());
        state.reached > 0
    }

    /// Lets every waiting and later matching call through.
    pub fn release(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).released = true;
        self.changed.notify_all();
    }

    fn hold(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.released {
            return;
        }
        state.reached += 1;
        self.changed.notify_all();
        while !state.released {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What a [`FaultFs`] knows about a file for power-loss simulation.
#[derive(Debug, Clone)]
struct Durable {
    /// Bytes covered by the last successful `fdatasync`.
    synced_len: u64,
    /// Whether the directory entry was made durable by an fsync of the directory.
    entry_durable: bool,
    /// Writes since then, as (write number, position): an overwrite below `synced_len` (of a
    /// preallocated region) is as unsynced as an append.
    dirty: Vec<(u64, u64)>,
    /// Numbers the writes, so a sync clears only the writes that finished before it began.
    writes: u64,
}

impl Durable {
    fn new(synced_len: u64, entry_durable: bool) -> Self {
        Self { synced_len, entry_durable, dirty: Vec::new(), writes: 0 }
    }
}

/// A filesystem that fails chosen operations and can simulate power loss, for tests of error
/// handling and recovery.
///
/// Faults fire on the n-th matching call and return `EIO`, the error Linux reports after a failed
/// write-back. [`FaultFs::freeze`] makes every write and sync fail from then on (the machine is
/// going down); [`FaultFs::power_loss`] then rewinds the files on disk to what a power cut could
/// leave: files whose directory entry was never fsynced vanish, and every file keeps its synced
/// bytes plus a random prefix of the unsynced ones (a torn last write). Unsynced overwrites inside
/// the synced length are rewound to zeros: the log overwrites synced bytes only where it
/// preallocated zeros.
#[derive(Debug, Default)]
pub struct FaultFs {
    faults: Mutex<Vec<Fault>>,
    sync_data_calls: AtomicU64,
    opens: AtomicU64,
    bytes_read: AtomicU64,
    files: Mutex<std::collections::HashMap<PathBuf, Durable>>,
    frozen: std::sync::atomic::AtomicBool,
    pauses: Mutex<Vec<Arc<Pause>>>,
}

impl FaultFs {
    /// A filesystem with no faults armed; it behaves exactly like [`StdFs`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Arms a fault: after `skip` successful matching calls, `op` on paths containing
    /// `path_contains` fails with `EIO` — once, or forever if `sticky`.
    pub fn fail(&self, op: FaultOp, path_contains: &str, skip: u64, sticky: bool) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.push(Fault {
            op,
            path_contains: path_contains.to_string(),
            skip,
            sticky,
            crash: false,
            fired: false,
        });
    }

    /// Arms a crash: after `skip` successful matching calls, `op` on paths containing
    /// `path_contains` fails with `EIO` and the filesystem freezes ([`FaultFs::freeze`]), so
    /// nothing after that step reaches the disk — as if the process died right there.
    pub fn crash_at(&self, op: FaultOp, path_contains: &str, skip: u64) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.push(Fault {
            op,
            path_contains: path_contains.to_string(),
            skip,
            sticky: true,
            crash: true,
            fired: false,
        });
    }

    /// Makes every `op` on a path containing `path_contains` wait until the returned
    /// [`Pause`] is released: a deterministic way to catch another operation mid-way.
    pub fn pause(&self, op: FaultOp, path_contains: &str) -> Arc<Pause> {
        let pause = Arc::new(Pause {
            op: Some(op),
            path_contains: path_contains.to_string(),
            ..Pause::default()
        });
        self.pauses.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&pause));
        pause
    }

    /// Disarms every fault.
    pub fn heal(&self) {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many `fdatasync` calls reached this filesystem (failed ones included).
    pub fn sync_data_calls(&self) -> u64 {
        self.sync_data_calls.load(Ordering::SeqCst)
    }

    /// How many files were opened (or created) so far, for tests of the open-file cache.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::SeqCst)
    }

    /// Bytes read from files so far (what `read_at` returned), for tests of how much a read
    /// costs.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::SeqCst)
    }

    /// From now on every write, `fdatasync` and directory fsync fails with `EIO`.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Rewinds the files this filesystem opened to a state a power cut could leave behind. Call it
    /// after [`FaultFs::freeze`] and after dropping the log. `seed` picks how much of each file's
    /// unsynced tail survives.
    pub fn power_loss(&self, seed: u64) -> io::Result<()> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            // xorshift64: deterministic per seed, no dependency needed for a test helper.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (path, durable) in files.iter() {
            if !path.exists() {
                continue;
            }
            if !durable.entry_durable {
                std::fs::remove_file(path)?;
                continue;
            }
            let len = std::fs::metadata(path)?.len();
            let synced = durable.synced_len.min(len);
            let dirty_from = durable.dirty.iter().map(|&(_, pos)| pos).min().unwrap_or(u64::MAX);
            let from = dirty_from.min(synced);
            if len > from {
                let unsynced = len - from;
                let kept = next() % (unsynced + 1);
                let file = OpenOptions::new().write(true).open(path)?;
                let keep_to = from + kept;
                if keep_to < synced {
                    // Unsynced overwrites of preallocated zeros: the disk still has the zeros.
                    file.write_all_at(&vec![0; (synced - keep_to) as usize], keep_to)?;
                }
                file.set_len(keep_to.max(synced))?;
                if kept > 0 && next() % 2 == 0 {
                    // The last page of the torn write reached the disk as zeroes.
                    let zeroes = (next() % kept.min(4096)) + 1;
                    let at = keep_to - zeroes;
                    file.write_all_at(&vec![0; zeroes as usize], at)?;
                }
            }
        }
        Ok(())
    }

    fn track(&self, path: &Path, durable: Durable) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.entry(path.to_path_buf()).or_insert(durable);
    }

    fn check(&self, op: FaultOp, path: &Path) -> io::Result<()> {
        let path = path.to_string_lossy();
        let pauses: Vec<Arc<Pause>> = self
            .pauses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| p.op == Some(op) && path.contains(p.path_contains.as_str()))
            .cloned()
            .collect();
        for pause in pauses {
            pause.hold();
        }
        if self.frozen.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        for fault in faults.iter_mut() {
            if fault.op != op || !path.contains(fault.path_contains.as_str()) {
                continue;
            }
            if fault.fired && !fault.sticky {
                continue;
            }
            if fault.skip > 0 {
                fault.skip -= 1;
                continue;
            }
            fault.fired = true;
            if fault.crash {
                self.frozen.store(true, Ordering::SeqCst);
            }
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        Ok(())
    }
}

/// `EIO` on Linux.
const fn libc_eio() -> i32 {
    5
}

#[derive(Debug)]
struct FaultFile {
    fs: Arc<FaultFs>,
    path: PathBuf,
    inner: Arc<dyn FsFile>,
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, pos)?;
        self.fs.bytes_read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.fs.check(FaultOp::Write, &self.path)?;
        self.inner.write_all_at(buf, pos)?;
        // Recorded once the write has landed: a sync that starts after this covers it; one that
        // started before sees a lower write number and leaves it dirty.
        let mut files = self.fs.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = files.get_mut(&self.path) {
            d.writes += 1;
            let n = d.writes;
            d.dirty.push((n, pos));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.sync_data_calls.fetch_add(1, Ordering::SeqCst);
        self.fs.check(FaultOp::SyncData, &self.path)?;
        // Only bytes written before the call are known to be covered.
        let writes_before = {
            let files = self.fs.files.lock().unwrap_or_else(|e| e.into_inner());
            files.get(&self.path).map_or(0, |d| d.writes)
        };
        let len = self.inner.size()?;
        self.inner.sync_data()?;
        let mut files = self.fs.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = files.get_mut(&self.path) {
            // Concurrent syncs may finish out of order; durability only grows.
            d.synced_len = d.synced_len.max(len);
            d.dirty.retain(|&(n, _)| n > writes_before);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check(FaultOp::Write, &self.path)?;
        self.inner.set_len(len)?;
        let mut files = self.fs.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = files.get_mut(&self.path) {
            d.synced_len = d.synced_len.min(len);
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

/// [`FaultFs`] shared behind an `Arc`, the form the log takes.
impl Fs for Arc<FaultFs> {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        if mode == OpenMode::CreateNew {
            self.check(FaultOp::Write, path)?;
        }
        let inner = StdFs.open(path, mode)?;
        self.opens.fetch_add(1, Ordering::SeqCst);
        let durable = match mode {
            OpenMode::CreateNew => Durable::new(0, false),
            OpenMode::Read | OpenMode::ReadWrite => Durable::new(inner.size()?, true),
        };
        self.track(path, durable);
        Ok(Arc::new(FaultFile { fs: Arc::clone(self), path: path.to_path_buf(), inner }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(FaultOp::CreateDir, path)?;
        StdFs.create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(FaultOp::SyncDir, path)?;
        StdFs.sync_dir(path)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for (file, d) in files.iter_mut() {
            if file.parent() == Some(path) {
                d.entry_durable = true;
            }
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultOp::Rename, from)?;
        StdFs.rename(from, to)?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut d) = files.remove(from) {
            // The new name is durable only after the directory is fsynced. (Simplification: the
            // old name does not come back on power loss.)
            d.entry_durable = false;
            files.insert(to.to_path_buf(), d);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(FaultOp::RemoveDir, path)?;
        StdFs.remove_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        StdFs.read_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
}

/// Reads up to `len` bytes at `pos`, fewer only at end of file.
pub(crate) fn read_up_to(file: &dyn FsFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let filled = read_into(file, pos, &mut buf)?;
    buf.truncate(filled);
    Ok(buf)
}

/// Fills `buf` from `pos`; returns how many bytes were read, fewer than `buf.len()` only at end
/// of file.
pub(crate) fn read_into(file: &dyn FsFile, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
