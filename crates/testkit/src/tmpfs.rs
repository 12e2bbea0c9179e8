//! A small tmpfs mounted for one test, so the test can fill a real filesystem to ENOSPC under a
//! running server without touching any other disk.
//!
//! Invariants:
//! - Mounting needs root (or `CAP_SYS_ADMIN`); when it fails, [`Tmpfs::mount`] returns
//!   [`TestkitError::Mount`] saying so. It never falls back to an ordinary directory: a test of
//!   a full disk that silently ran on a disk with room would prove nothing.
//! - Dropping a [`Tmpfs`] unmounts it (lazily if a process still holds a file there, so a
//!   failing test never leaves a mount behind) and removes its mount point.
//! - [`Tmpfs::fill`] writes until the filesystem answers ENOSPC and stops there; any other
//!   error is returned, never taken for "full".

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, TestkitError};
use crate::process::{output_of, run};

/// ENOSPC on Linux.
const ENOSPC: i32 = 28;
/// Chunks [`Tmpfs::fill`] writes: large ones first, then single pages for the last bytes.
const FILL_CHUNK_BYTES: [usize; 2] = [1 << 20, 4096];

/// A tmpfs of a fixed size mounted on a fresh temporary directory.
#[derive(Debug)]
pub struct Tmpfs {
    /// The mount point; `None` once unmounted and removed by [`Drop`].
    dir: Option<tempfile::TempDir>,
    size_bytes: u64,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` (rounded up to whole pages by the kernel) on a new
    /// temporary directory.
    pub fn mount(size_bytes: u64) -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("driftless-tmpfs-").tempdir().map_err(|source| {
                TestkitError::Io {
                    op: "create a mount point for a tmpfs",
                    path: std::env::temp_dir(),
                    source,
                }
            })?;
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o"]).arg(format!("size={size_bytes}")).arg("tmpfs");
        cmd.arg(dir.path());
        if let Err(e) = run(&mut cmd) {
            return Err(TestkitError::Mount {
                path: dir.path().to_path_buf(),
                size_bytes,
                detail: e.to_string(),
            });
        }
        Ok(Self { dir: Some(dir), size_bytes })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// The size it was mounted with.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Creates (or extends) the file `name` in the tmpfs until a write answers ENOSPC, and
    /// returns how many bytes the file holds then. The filesystem is full afterwards: delete
    /// the file to give the room back.
    pub fn fill(&self, name: &str) -> Result<u64> {
        let path = self.path().join(name);
        let io = |op, source| TestkitError::Io { op, path: path.clone(), source };
        let mut file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("open the filler file", e))?;
        for chunk_bytes in FILL_CHUNK_BYTES {
            let chunk = vec![0xa5u8; chunk_bytes];
            // Bounded: each chunk takes room, and the filesystem has `size_bytes` of it.
            let chunks_max = self.size_bytes / chunk_bytes as u64 + 2;
            let mut full = false;
            for _ in 0..chunks_max {
                match file.write_all(&chunk) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(ENOSPC) => {
                        full = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(io("write the filler file", e)),
                }
            }
            if !full {
                return Err(io(
                    "fill",
                    std::io::Error::other(format!(
                        "wrote {chunks_max} chunks of {chunk_bytes} bytes into a tmpfs of \
                         {} bytes without ENOSPC",
                        self.size_bytes
                    )),
                ));
            }
        }
        let len = file.metadata().map_err(|e| io("read the size of the filler file", e))?.len();
        Ok(len)
    }

    /// Bytes in use on the filesystem, from `statvfs` (via `df`, as the testkit uses no
    /// `unsafe`).
    pub fn used_bytes(&self) -> Result<u64> {
        let text = run(Command::new("df").args(["--output=used", "-B1"]).arg(self.path()))?;
        let figure = text.lines().nth(1).map(str::trim).unwrap_or_default();
        figure.parse().map_err(|_| TestkitError::CommandFailed {
            command: format!("df --output=used -B1 {}", self.path().display()),
            status: "exit status: 0".into(),
            output: format!("expected a byte count on the second line, got {text:?}"),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let path: PathBuf = dir.path().to_path_buf();
        let unmounted = output_of(Command::new("umount").arg(&path))
            .is_ok_and(|o| o.status.success())
            || output_of(Command::new("umount").arg("-l").arg(&path))
                .is_ok_and(|o| o.status.success());
        if unmounted {
            drop(dir); // removes the (now empty) mount point
        } else {
            // Removing files under a mount we could not unmount would only empty the tmpfs.
            eprintln!("could not unmount the tmpfs at {}; unmount it by hand", path.display());
            let _ = dir.keep();
        }
    }
}
