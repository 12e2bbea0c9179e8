//! `/metrics` with 1,000 groups was 77 MB and took 40 s (issue 20): per-group-partition series
//! are capped, beyond the cap each group is one aggregate series, and the work is linear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod support;

use driftless_broker::BrokerConfig;
use serde_json::json;
use support::{config, start};

#[test]
fn metrics_with_1000_groups_is_bounded_in_size_and_time() {
    let s = start(config(BrokerConfig::default()));
    let partitions = 64;
    s.create_topic("wide", partitions);
    let events: Vec<_> = (0..256)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("e-{i}"), "source": "/t", "type": "t",
                   "subject": format!("k{i}"), "data": i})
        })
        .collect();
    s.produce("wide", &events);
    let setup = Instant::now();
    for g in 0..1_000 {
        s.join(&format!("group-{g:04}"), &["wide"]);
    }
    eprintln!("1,000 groups joined in {:?}", setup.elapsed());
    let start = Instant::now();
    let r = s.get("/metrics");
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    eprintln!("/metrics: {} bytes in {took:?}", r.text.len());
    assert!(r.text.len() < 4 << 20, "/metrics is {} bytes", r.text.len());
    assert!(took < Duration::from_secs(5), "/metrics took {took:?}");
    // Every group is still there, as an aggregate.
    for g in [0, 999] {
        let name = format!("group=\"group-{g:04}\"");
        assert!(r.text.contains(&name), "{name} missing");
    }
    // The totals agree with the per-partition figures they replace: 256 events unread per group.
    let lag_line = r
        .text
        .lines()
        .find(|l| l.starts_with("driftless_consumer_lag_events{") && l.contains("group-0000"))
        .unwrap();
    assert!(lag_line.ends_with(" 256"), "{lag_line}");
}
