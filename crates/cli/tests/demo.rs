//! `driftless demo`, the README's main job, end to end with the real binary: it must finish with
//! exit status 0 and the PASS verdict, having gone through the poison event, the outage and the
//! drift repair it promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_passes_its_verdict_and_tells_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["demo", "--customers", "120", "--changes", "300", "--dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{stdout}\n{stderr}", output.status);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("VERDICT: PASS"), "{stdout}");
    for step in [
        "in Shipping's dead-letter queue",
        "retried the dead letter: applied",
        "billing sink: retrying",
        "events blamed for the outage: 0",
        "1 missing, 0 extra, 1 stale",
        "crm-contacts: 0 drifted rows",
        "CRM: 120 rows, identical",
        "every one verified",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    // The data and the config stay in --dir, for a second look.
    assert!(dir.path().join("driftless.toml").exists());
    assert!(stderr.trim().is_empty(), "the demo's stderr should be quiet:\n{stderr}");
}
