//! Creating and deleting topics: names that look like markers, crashes and failures at every
//! step, and creations and deletions that must not stall the other topics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use driftless_core::ManualClock;
use driftless_log::fs::{FaultFs, FaultOp, Fs};
use driftless_log::{Log, LogError, NewRecord, TopicConfig};
use proptest::prelude::*;
use support::*;

fn open(dir: &Path) -> Log {
    Log::open(options(dir, &Arc::new(ManualClock::new(T0)))).unwrap()
}

fn open_with(dir: &Path, fs: &Arc<FaultFs>) -> Log {
    let fs: Arc<dyn Fs> = Arc::new(Arc::clone(fs));
    Log::open(options_with_fs(dir, &Arc::new(ManualClock::new(T0)), fs)).unwrap()
}

/// Creates `topic` with `partitions` partitions and appends `value` to each.
fn create_written(log: &Log, topic: &str, partitions: u32, value: &[u8]) {
    let config = TopicConfig { partitions, ..TopicConfig::default() };
    let t = log.create_topic(&name(topic), config).unwrap();
    for p in t.partitions() {
        p.append(&[NewRecord::unkeyed(value)]).unwrap();
    }
}

/// The values of partition 0 of `topic`, or `None` if the topic does not exist.
fn values(log: &Log, topic: &str) -> Option<Vec<Vec<u8>>> {
    let t = log.topic(&name(topic))?;
    Some(read_all(t.partition(0).unwrap()).into_iter().map(|r| r.2.unwrap()).collect())
}

fn listed(log: &Log) -> Vec<String> {
    log.topics().iter().map(|t| t.name().to_string()).collect()
}

fn trash_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("trash")).unwrap().next().is_none()
}

#[test]
fn a_topic_named_x_deleting_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        create_written(&log, "x.deleting", 1, b"kept");
    }
    let log = open(dir.path());
    assert_eq!(values(&log, "x.deleting"), Some(vec![b"kept".to_vec()]));
}

#[test]
fn deleting_a_topic_while_a_topic_named_after_it_dot_deleting_exists_works() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        create_written(&log, "orders", 1, b"doomed");
        create_written(&log, "orders.deleting", 1, b"kept");
        log.delete_topic(&name("orders")).unwrap();
        assert_eq!(listed(&log), ["orders.deleting"]);
    }
    let log = open(dir.path());
    assert_eq!(listed(&log), ["orders.deleting"]);
    assert_eq!(values(&log, "orders.deleting"), Some(vec![b"kept".to_vec()]));
}

#[test]
fn topics_with_names_of_247_to_249_characters_are_deleted_and_recreated_empty() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (247..=249).map(|n| "l".repeat(n)).collect();
    {
        let log = open(dir.path());
        for n in &names {
            create_written(&log, n, 2, b"old");
            log.delete_topic(&name(n)).unwrap();
            assert!(log.topic(&name(n)).is_none());
        }
        assert!(listed(&log).is_empty());
    }
    let log = open(dir.path());
    assert!(listed(&log).is_empty(), "a deleted topic came back: {:?}", listed(&log));
    for n in &names {
        log.create_topic(&name(n), TopicConfig::default()).unwrap();
        assert_eq!(values(&log, n), Some(vec![]), "a re-created topic holds old events");
    }
}

#[test]
fn a_failed_deletion_leaves_the_topic_listed_and_writable() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let log = open_with(dir.path(), &fs);
    create_written(&log, "doomed", 1, b"a");
    // Each step of the deletion before the topic is gone, failing once.
    let steps = [
        (FaultOp::Rename, "topics/doomed"),
        (FaultOp::SyncDir, "trash"),
        (FaultOp::SyncDir, "topics"),
    ];
    for (i, (op, path)) in steps.into_iter().enumerate() {
        fs.fail(op, path, 0, false);
        let err = log.delete_topic(&name("doomed")).unwrap_err();
        fs.heal();
        assert!(matches!(err, LogError::Io { .. }), "{err}");
        assert_eq!(listed(&log), ["doomed"], "step {i}: {err}");
        let p = Arc::clone(log.topic(&name("doomed")).unwrap().partition(0).unwrap());
        p.append(&[NewRecord::unkeyed(format!("after {i}").as_bytes())]).unwrap();
    }
    drop(log);
    let log = open(dir.path());
    let expected: Vec<Vec<u8>> =
        ["a", "after 0", "after 1", "after 2"].iter().map(|v| v.as_bytes().to_vec()).collect();
    assert_eq!(values(&log, "doomed"), Some(expected));
    assert!(trash_is_empty(dir.path()));
}

/// The process dies at each step of a deletion in turn (every filesystem call from that step on
/// fails); after a restart the topic is either intact or wholly gone, never partly there, and a
/// new topic of the same name starts empty.
#[test]
fn a_crash_at_any_step_of_a_deletion_leaves_the_topic_intact_or_gone() {
    let steps = [
        (FaultOp::Rename, "topics/doomed"),
        (FaultOp::SyncDir, "trash"),
        (FaultOp::SyncDir, "topics"),
        (FaultOp::RemoveDir, "trash/"),
    ];
    for (op, path) in steps {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultFs::new();
        {
            let log = open_with(dir.path(), &fs);
            create_written(&log, "doomed", 3, b"v");
            create_written(&log, "bystander", 1, b"b");
            fs.crash_at(op, path, 0);
            let _ = log.delete_topic(&name("doomed"));
        }
        let log = open(dir.path());
        let step = format!("{op:?} {path}");
        match log.topic(&name("doomed")) {
            Some(t) => {
                for p in t.partitions() {
                    assert_eq!(read_all(p).len(), 1, "{step}: a partition lost its events");
                }
            }
            None => assert!(!dir.path().join("topics/doomed").exists(), "{step}"),
        }
        assert!(trash_is_empty(dir.path()), "{step}: the trash was not emptied on open");
        assert_eq!(values(&log, "bystander"), Some(vec![b"b".to_vec()]), "{step}");
        if log.topic(&name("doomed")).is_none() {
            log.create_topic(&name("doomed"), TopicConfig::default()).unwrap();
            assert_eq!(values(&log, "doomed"), Some(vec![]), "{step}: the old events came back");
        }
    }
}

#[test]
fn creating_a_topic_never_wipes_a_directory_that_holds_a_complete_topic() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    create_written(&log, "orig", 1, b"precious");
    // A complete topic the running log does not know about (put there behind its back).
    let copy = dir.path().join("topics/copy");
    std::fs::create_dir_all(copy.join("0")).unwrap();
    for entry in std::fs::read_dir(dir.path().join("topics/orig/0")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("0").join(entry.file_name())).unwrap();
    }
    std::fs::copy(dir.path().join("topics/orig/topic.json"), copy.join("topic.json")).unwrap();
    let err = log.create_topic(&name("copy"), TopicConfig::default()).unwrap_err();
    assert!(err.to_string().contains("complete topic"), "{err}");
    drop(log);
    let log = open(dir.path());
    assert_eq!(values(&log, "copy"), Some(vec![b"precious".to_vec()]));
}

#[test]
fn an_interrupted_creation_is_removed_and_the_name_can_be_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    {
        let log = open_with(dir.path(), &fs);
        fs.crash_at(FaultOp::Rename, "topic.json.tmp", 0);
        assert!(log.create_topic(&name("half"), TopicConfig::default()).is_err());
        assert!(log.topic(&name("half")).is_none());
    }
    let log = open(dir.path());
    assert!(listed(&log).is_empty());
    assert!(!dir.path().join("topics/half").exists());
    create_written(&log, "half", 1, b"new");
    assert_eq!(values(&log, "half"), Some(vec![b"new".to_vec()]));
}

/// Runs `f` on another thread and returns its result, or `None` if it did not finish within
/// `timeout` (it is then left running: the test fails anyway).
fn within<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).ok()
}

#[test]
fn creating_a_large_topic_does_not_stall_lookups_and_appends_to_other_topics() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let log = Arc::new(open_with(dir.path(), &fs));
    create_written(&log, "busy", 1, b"0");
    // The creation stops inside the filesystem, after it started and before it finished.
    let pause = fs.pause(FaultOp::CreateDir, "topics/big");
    let creator = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let config = TopicConfig { partitions: 64, ..TopicConfig::default() };
            log.create_topic(&name("big"), config).map(|_| ())
        })
    };
    assert!(pause.wait_reached(Duration::from_secs(30)));
    let other = {
        let log = Arc::clone(&log);
        within(Duration::from_secs(20), move || {
            let t = log.topic(&name("busy")).unwrap();
            t.partition(0).unwrap().append(&[NewRecord::unkeyed(b"1")]).unwrap();
            (listed(&log), log.create_topic(&name("big"), TopicConfig::default()).map(|_| ()))
        })
    };
    pause.release();
    let (names, second) = other.expect("lookups and appends waited for another topic's creation");
    assert_eq!(names, ["busy"], "a topic being created is not listed yet");
    assert!(matches!(second, Err(LogError::TopicExists(_))), "{second:?}");
    creator.join().unwrap().unwrap();
    assert_eq!(log.topic(&name("big")).unwrap().partitions().len(), 64);
    assert_eq!(values(&log, "busy").unwrap().len(), 2);
}

#[test]
fn deleting_a_topic_does_not_stall_other_topics_and_a_second_deletion_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let log = Arc::new(open_with(dir.path(), &fs));
    create_written(&log, "busy", 1, b"0");
    create_written(&log, "doomed", 4, b"x");
    let pause = fs.pause(FaultOp::Rename, "topics/doomed");
    let deleter = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || log.delete_topic(&name("doomed")))
    };
    assert!(pause.wait_reached(Duration::from_secs(30)));
    let other = {
        let log = Arc::clone(&log);
        within(Duration::from_secs(20), move || {
            let t = log.topic(&name("busy")).unwrap();
            t.partition(0).unwrap().append(&[NewRecord::unkeyed(b"1")]).unwrap();
            (
                log.delete_topic(&name("doomed")),
                log.create_topic(&name("doomed"), TopicConfig::default()).map(|_| ()),
            )
        })
    };
    pause.release();
    let (second_delete, create) = other.expect("other topics waited for a deletion");
    assert!(matches!(second_delete, Err(LogError::TopicBusy(_))), "{second_delete:?}");
    assert!(matches!(create, Err(LogError::TopicExists(_))), "{create:?}");
    deleter.join().unwrap().unwrap();
    assert_eq!(listed(&log), ["busy"]);
}

#[test]
fn a_handle_to_a_deleted_topic_says_the_topic_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    create_written(&log, "doomed", 1, b"x");
    let p = Arc::clone(log.topic(&name("doomed")).unwrap().partition(0).unwrap());
    log.delete_topic(&name("doomed")).unwrap();
    assert!(matches!(p.read(0, 10, 1 << 20), Err(LogError::TopicDeleted(_))));
    assert!(matches!(p.append(&[NewRecord::unkeyed(b"y")]), Err(LogError::TopicDeleted(_))));
}

fn topic_name() -> impl Strategy<Value = String> {
    let suffix = prop::sample::select(vec![
        "",
        ".deleting",
        ".tmp",
        ".json",
        ".cleaned",
        ".log",
        ".idx",
        "-",
        "_",
        ".",
        "..",
    ]);
    ("[A-Za-z0-9._-]{1,249}", suffix, any::<bool>()).prop_filter_map(
        "a valid topic name",
        |(stem, suffix, longest)| {
            let mut n = format!("{stem}{suffix}");
            if longest {
                // Names of the maximum length are the ones whose markers overflowed.
                while n.len() < 249 {
                    n.insert(0, 'm');
                }
            }
            n.truncate(249);
            driftless_core::TopicName::new(n.clone()).ok().map(|_| n)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever two valid names are, deleting one never touches the other, even across a
    /// restart, and the deleted one never comes back.
    #[test]
    fn deleting_one_topic_never_touches_another_whatever_their_names(
        keep in topic_name(),
        gone in topic_name(),
    ) {
        prop_assume!(keep != gone);
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            create_written(&log, &keep, 1, b"keep");
            create_written(&log, &gone, 1, b"gone");
            log.delete_topic(&name(&gone)).unwrap();
            prop_assert_eq!(listed(&log), vec![keep.clone()]);
        }
        let log = open(dir.path());
        prop_assert_eq!(listed(&log), vec![keep.clone()]);
        prop_assert_eq!(values(&log, &keep), Some(vec![b"keep".to_vec()]));
        log.create_topic(&name(&gone), TopicConfig::default()).unwrap();
        prop_assert_eq!(values(&log, &gone), Some(vec![]));
    }
}
