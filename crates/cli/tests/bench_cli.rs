//! Runs the built `driftless` binary's `bench log` on a tiny workload.
//!
//! Invariant: these tests check the shape of the output and parameter validation, never timing.

// A helper, not a #[test], so clippy's allow-unwrap-in-tests does not cover it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn driftless(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn bench_log_json_prints_one_object_with_the_required_fields() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "log",
        "--json",
        "--events",
        "2000",
        "--producers",
        "2",
        "--batch",
        "10",
        "--event-bytes",
        "64",
    ];
    let out = driftless(&args, dir.path());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstderr: {stderr}", out.status);
    assert_eq!(stdout.lines().count(), 1, "one line of stdout, got: {stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let object = json.as_object().unwrap();
    for field in [
        "bench",
        "events",
        "event_bytes",
        "producers",
        "batch",
        "rate",
        "durability",
        "durable",
        "events_per_sec",
        "mb_per_sec",
        "append_p50_us",
        "append_p99_us",
        "append_p999_us",
        "append_max_us",
        "disk_mb_per_sec",
        "disk_chunk_bytes",
        "mb_per_sec_vs_disk",
        "fsyncs",
        "events_per_fsync",
        "reopen_ms",
        "partition_bytes",
        "elapsed_s",
        "offered_events_per_sec",
    ] {
        assert!(object.contains_key(field), "missing {field} in {stdout}");
    }
    assert_eq!(json["bench"], "log");
    assert_eq!(json["events"], 2000);
    assert_eq!(json["event_bytes"], 64);
    assert_eq!(json["durability"], "always");
    assert_eq!(json["durable"], true);
    assert!(json["events_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(json["partition_bytes"], 2000 * (64 + 29));
    // The temporary data directory is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_log_rejects_a_zero_batch_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = driftless(&["bench", "log", "--json", "--batch", "0"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--batch"), "stderr should name --batch: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bench_log_rejects_an_unknown_durability() {
    let dir = tempfile::tempdir().unwrap();
    let out = driftless(&["bench", "log", "--durability", "sometimes"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--durability") && stderr.contains("interval:MS"), "{stderr}");
}

#[test]
fn bench_e2e_json_finds_every_inserted_row_in_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["bench", "e2e", "--json", "--rows", "2000", "--seconds", "1", "--rate", "200"];
    let out = driftless(&args, dir.path());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstderr: {stderr}", out.status);
    assert_eq!(stdout.lines().count(), 1, "one line of stdout, got: {stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for field in [
        "bench",
        "params",
        "cpus",
        "postgres_version",
        "postgres_fsync",
        "log_durability",
        "latency",
        "sustained",
        "reference",
        "sink_apply_only",
        "sustained_vs_raw_upsert",
        "targets",
        "targets_met",
        "elapsed_s",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {stdout}");
    }
    assert_eq!(json["bench"], "e2e");
    assert_eq!(json["params"]["rows"], 2000);
    assert_eq!(json["params"]["batch_events"], 500);
    let latency = &json["latency"];
    assert_eq!(latency["rows"], 200);
    let p50 = latency["commit_to_visible_p50_ms"].as_f64().unwrap();
    let p99 = latency["commit_to_visible_p99_ms"].as_f64().unwrap();
    let max = latency["commit_to_visible_max_ms"].as_f64().unwrap();
    assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{latency}");
    let sustained = &json["sustained"];
    assert_eq!(sustained["rows"], 2000);
    assert_eq!(sustained["rows_visible"], 2000, "every inserted row reached the projection");
    assert!(sustained["rows_per_sec"].as_f64().unwrap() > 0.0);
    assert!(sustained["log"]["app.public.items"]["records"].as_u64().unwrap() >= 2000);
    assert_eq!(json["reference"]["rows"], 2000);
    assert!(json["reference"]["rows_per_sec"].as_f64().unwrap() > 0.0);
    for target in ["latency_p99", "sustained_rows_per_sec", "sustained_vs_raw_upsert", "all"] {
        assert!(json["targets_met"][target].is_boolean(), "targets_met.{target}: {stdout}");
    }
    // The broker's temporary data directory is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
