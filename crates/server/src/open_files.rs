//! The process's open-file limit (RLIMIT_NOFILE) and how its descriptors are shared.
//!
//! The usual soft limit is 1,024 while the hard limit is far higher; a broker with more
//! partitions than that could not even restart. At start the soft limit is raised to the hard
//! limit ([`raise_open_files_limit`]), and the result is split ([`open_file_budget`]) between:
//! - a fixed reserve for everything else ([`OTHER_FILES_RESERVE`]: stdio, the runtime's epoll and
//!   eventfds, the listener, sources' and sinks' database connections and files);
//! - the HTTP connections: `connections_max`, lowered (with a warning) to half of what the
//!   reserve leaves when the limit is too small for it;
//! - the log: the rest, its budget of open partition files (the log keeps at most that many
//!   open and reopens others on use).
//!
//! Invariants: the budget is a pure function of the limit and `connections_max`, so it is tested
//! without touching the process; a limit too small for the reserve and [`LOG_OPEN_FILES_MIN`]
//! each for the log and the connections is a start-up error naming the figures and the fix, never a
//! "Too many open files" later. Raising never lowers a limit.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::error::ServerError;

/// Descriptors kept for everything but the log's partition files and the connections.
pub const OTHER_FILES_RESERVE: u64 = 256;
/// The fewest open files the log may be given.
pub const LOG_OPEN_FILES_MIN: u64 = 64;
/// The soft limit asked for when the hard limit is "unlimited" (Linux's default `fs.nr_open`;
/// setting RLIM_INFINITY for NOFILE is refused).
pub const UNLIMITED_NOFILE: u64 = 1 << 20;

/// The open-file limit after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (`u64::MAX` when unlimited).
    pub hard: u64,
}

/// How the descriptors are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// Most files the log may keep open (its partitions' segment files).
    pub log_open_files_max: usize,
    /// Most connections the server accepts (at most the configured `connections_max`).
    pub connections_max: usize,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (or [`UNLIMITED_NOFILE`] when that is
/// unlimited). If the system refuses, the limit is left as it was and a warning says so: the
/// budget then works with what there is.
pub fn raise_open_files_limit() -> OpenFilesLimit {
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    let target = hard.min(UNLIMITED_NOFILE).max(before.min(UNLIMITED_NOFILE));
    if target <= before {
        return OpenFilesLimit { before, soft: before, hard };
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: current.maximum }) {
        Ok(()) => OpenFilesLimit { before, soft: target, hard },
        Err(e) => {
            tracing::warn!(
                soft = before,
                hard,
                "cannot raise the open-file limit to {target}: {e}; keeping {before}"
            );
            OpenFilesLimit { before, soft: before, hard }
        }
    }
}

/// Shares `limit` open files (the soft RLIMIT_NOFILE) between the reserve, up to
/// `connections_max` connections and the log. `hard` only names the hard limit in the error.
pub fn open_file_budget(
    limit: u64,
    hard: u64,
    connections_max: usize,
) -> Result<FileBudget, ServerError> {
    // Connections take at most half of what the reserve leaves, so the log always has at
    // least the other half: the minimum is the reserve and twice the log's minimum.
    let needed = OTHER_FILES_RESERVE + 2 * LOG_OPEN_FILES_MIN;
    if limit < needed {
        return Err(ServerError::TooFewOpenFiles {
            limit,
            hard,
            needed,
            reserve: OTHER_FILES_RESERVE,
            log_min: LOG_OPEN_FILES_MIN,
        });
    }
    let available = limit - OTHER_FILES_RESERVE;
    let wanted = u64::try_from(connections_max).unwrap_or(u64::MAX);
    // Connections may take at most half, so a configured `connections_max` larger than the
    // limit allows never starves the log; the log gets everything else.
    let connections = wanted.min(available / 2);
    let log = available - connections;
    Ok(FileBudget {
        log_open_files_max: usize::try_from(log).unwrap_or(usize::MAX),
        connections_max: usize::try_from(connections).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_budget_shares_the_limit_and_never_overspends_it() {
        // The usual soft limit: connections lowered to half of what the reserve leaves.
        let b = open_file_budget(1_024, 1_024, 4_096).unwrap();
        assert_eq!(b, FileBudget { connections_max: 384, log_open_files_max: 384 });
        // The acceptance machine's hard limit: connections as configured, the log the rest.
        let b = open_file_budget(20_000, 20_000, 4_096).unwrap();
        assert_eq!(b, FileBudget { connections_max: 4_096, log_open_files_max: 15_648 });
        // Too small: the error names the figures and the fix.
        let e = open_file_budget(300, 300, 4_096).unwrap_err().to_string();
        assert!(e.contains("300") && e.contains("384") && e.contains("ulimit -n"), "{e}");
        assert!(e.contains("LimitNOFILE"), "{e}");
        // Every limit from the minimum up: the parts add up to at most the limit, and neither
        // goes below its minimum.
        for limit in (384..5_000).chain([u64::MAX / 2, u64::MAX]) {
            for connections_max in [1, 16, 100, 4_096, usize::MAX] {
                let b = open_file_budget(limit, limit, connections_max).unwrap();
                let (log, conns) = (b.log_open_files_max as u64, b.connections_max as u64);
                assert!(log >= LOG_OPEN_FILES_MIN, "{limit}");
                assert!(conns >= LOG_OPEN_FILES_MIN.min(connections_max as u64), "{limit}");
                assert!(conns <= connections_max as u64, "{limit}");
                assert!(log + conns + OTHER_FILES_RESERVE <= limit, "{limit} {connections_max}");
            }
        }
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = getrlimit(Resource::Nofile);
        let raised = raise_open_files_limit();
        assert!(raised.soft >= raised.before);
        assert_eq!(Some(raised.before), before.current.or(Some(u64::MAX)));
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, Some(raised.soft).filter(|s| *s != u64::MAX).or(after.current));
        assert_eq!(after.maximum, before.maximum);
    }
}
