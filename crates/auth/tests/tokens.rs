//! The tokens file and the authenticator over it, on a real file system: what is stored, how
//! changes by another writer are seen, and what is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use driftless_auth::{
    Authenticator, Denied, Kind, Operation, OsRandom, StoreError, TokenStore, DAY_MS,
    RELOAD_CHECK_MS,
};

const NOW_MS: i64 = 1_800_000_000_000;

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_tokens_file_holds_no_plaintext_token_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path().join("tokens.json"));
    let a = store.create("alice", &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom).unwrap();
    let b = store.create("bob", &scopes(&["admin:*:*"]), Some(3), NOW_MS, &mut OsRandom).unwrap();
    let text = std::fs::read_to_string(store.path()).unwrap();
    for created in [&a, &b] {
        let secret = created.token.text.rsplit('_').next().unwrap();
        assert_eq!(secret.len(), 64);
        assert!(!text.contains(secret), "a secret is in the file:\n{text}");
        assert!(!text.contains(&created.token.text));
        assert!(text.contains(&created.record.secret_sha256));
    }
    assert_eq!(b.record.expires_at_ms, Some(NOW_MS + 3 * DAY_MS));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    let listed = store.list().unwrap();
    assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
    assert!(!dir.path().join("tokens.json.tmp").exists(), "the temporary file was left behind");
}

#[test]
fn a_token_authenticates_as_its_name_with_its_scopes_and_a_wrong_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path().join("tokens.json"));
    let c = store
        .create("billing", &scopes(&["produce:topic:billing.*"]), None, NOW_MS, &mut OsRandom)
        .unwrap();
    let auth = Authenticator::open(store.path()).unwrap();
    let who = auth.authenticate(&c.token.text, NOW_MS).unwrap();
    assert_eq!(&*who.name, "billing");
    assert!(who.grants.allows(Operation::Produce, Kind::Topic, "billing.x"));
    assert!(!who.grants.allows(Operation::Produce, Kind::Topic, "crm.x"));
    // Same id, another secret: refused like an unknown token.
    let mut forged = c.token.text.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert_eq!(auth.authenticate(&forged, NOW_MS).unwrap_err(), Denied::Unknown);
    assert_eq!(auth.authenticate("Bearer x", NOW_MS).unwrap_err(), Denied::Malformed);
    let other = TokenStore::new(dir.path().join("other.json"))
        .create("x", &scopes(&["admin:*:*"]), None, NOW_MS, &mut OsRandom)
        .unwrap();
    assert_eq!(auth.authenticate(&other.token.text, NOW_MS).unwrap_err(), Denied::Unknown);
}

#[test]
fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path().join("tokens.json"));
    let c = store.create("t", &scopes(&["read:topic:*"]), Some(1), NOW_MS, &mut OsRandom).unwrap();
    let auth = Authenticator::open(store.path()).unwrap();
    assert!(auth.authenticate(&c.token.text, NOW_MS + DAY_MS - 1).is_ok());
    assert_eq!(auth.authenticate(&c.token.text, NOW_MS + DAY_MS).unwrap_err(), Denied::Expired);
    assert_eq!(auth.by_id(&c.record.id, NOW_MS + DAY_MS).unwrap_err(), Denied::Expired);
}

#[test]
fn a_revocation_by_another_writer_is_seen_within_the_reload_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path().join("tokens.json"));
    let keep = store.create("keep", &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom);
    let gone = store.create("gone", &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom);
    let (keep, gone) = (keep.unwrap(), gone.unwrap());
    let auth = Authenticator::open(store.path()).unwrap();
    assert!(auth.authenticate(&gone.token.text, NOW_MS).is_ok());
    // A second store value over the same path stands for another process.
    let revoked = TokenStore::new(store.path()).revoke(&gone.record.id).unwrap();
    assert_eq!(revoked.len(), 1);
    let start = Instant::now();
    while auth.authenticate(&gone.token.text, NOW_MS).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(1), "still accepted after 1 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        start.elapsed() <= Duration::from_millis(RELOAD_CHECK_MS + 100),
        "{:?}",
        start.elapsed()
    );
    assert!(auth.authenticate(&keep.token.text, NOW_MS).is_ok());
    // A token created after the server started works without a restart.
    let late = store.create("late", &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom);
    let late = late.unwrap();
    let start = Instant::now();
    while auth.authenticate(&late.token.text, NOW_MS).is_err() {
        assert!(start.elapsed() < Duration::from_secs(1), "not accepted after 1 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn revoking_by_name_revokes_every_token_of_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path().join("tokens.json"));
    for name in ["svc", "svc", "other"] {
        store.create(name, &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom).unwrap();
    }
    assert_eq!(store.revoke("svc").unwrap().len(), 2);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(matches!(store.revoke("svc"), Err(StoreError::NoSuchToken(_))));
}

#[test]
fn a_broken_tokens_file_refuses_every_token_until_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let store = TokenStore::new(&path);
    let c = store.create("a", &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom).unwrap();
    let good = std::fs::read(&path).unwrap();
    let auth = Authenticator::open(&path).unwrap();
    assert!(auth.authenticate(&c.token.text, NOW_MS).is_ok());
    std::fs::write(&path, b"{\"version\": 1, \"tokens\": [").unwrap();
    let start = Instant::now();
    while auth.authenticate(&c.token.text, NOW_MS).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(auth.authenticate(&c.token.text, NOW_MS).unwrap_err(), Denied::Unavailable);
    std::fs::write(&path, good).unwrap();
    let start = Instant::now();
    while auth.authenticate(&c.token.text, NOW_MS).is_err() {
        assert!(start.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(10));
    }
    // At start, an invalid file is an error naming it (not a silently empty table).
    std::fs::write(&path, b"[]").unwrap();
    let err = Authenticator::open(&path).unwrap_err().to_string();
    assert!(err.contains("tokens.json") && err.contains("not a valid tokens file"), "{err}");
}

#[test]
fn bad_names_scopes_and_expiries_are_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path().join("tokens.json"));
    let r = |name: &str, s: &[&str], days| {
        store.create(name, &scopes(s), days, NOW_MS, &mut OsRandom).unwrap_err().to_string()
    };
    assert!(r("has space", &["read:topic:*"], None).contains("not valid"));
    assert!(r(&"n".repeat(129), &["read:topic:*"], None).contains("not valid"));
    assert!(r("n", &[], None).contains("between 1 and 64 scopes"));
    assert!(r("n", &["write:topic:*"], None).contains("unknown operation"));
    assert!(r("n", &["read:topic:*"], Some(0)).contains("1 to 3650 days"));
    assert!(r("n", &["read:topic:*"], Some(3651)).contains("1 to 3650 days"));
    let many: Vec<String> = (0..65).map(|i| format!("read:topic:t{i}")).collect();
    let err = store.create("n", &many, None, NOW_MS, &mut OsRandom).unwrap_err();
    assert!(matches!(err, StoreError::ScopeCount(65)));
    assert!(!store.path().exists(), "a refused creation wrote the file");
}

#[test]
fn concurrent_creations_keep_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = TokenStore::new(&path);
            std::thread::spawn(move || {
                for j in 0..5 {
                    let name = format!("t{i}-{j}");
                    store
                        .create(&name, &scopes(&["read:topic:*"]), None, NOW_MS, &mut OsRandom)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(TokenStore::new(&path).list().unwrap().len(), 40);
}
