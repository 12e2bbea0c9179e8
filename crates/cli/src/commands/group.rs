//! `driftless group list|describe|seek`: consumer group administration over the HTTP API.
//!
//! Invariants: `list` prints one group name per line (under a `GROUP` header, or "no consumer
//! groups", with `--output table`); `describe` prints the group's description as
//! pretty JSON; `seek` takes exactly one target (`--earliest`, `--latest`, `--offset N` or
//! `--time T`, T being RFC 3339 or milliseconds since the epoch) and prints one JSON line per
//! partition moved (`topic`, `partition`, `offset`).

use std::io::{self, Write};

use clap::{Args, Subcommand};
use driftless_broker::SeekTarget;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{check_topic_name, print_lines, print_pretty};
use crate::output::{Output, Table};

/// `driftless group ...`.
#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Print every consumer group's name, one per line.
    List,
    /// Print a group's members, assignments, committed offsets and lag.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move a group's position on a topic (replay or skip).
    Seek(SeekArgs),
    /// Delete a group that has no members, with its committed offsets and dead letters.
    Delete {
        /// Group name.
        group: String,
    },
}

/// Flags of `driftless group seek`.
#[derive(Debug, Args)]
struct SeekArgs {
    /// Group name.
    group: String,

    /// Topic whose position moves.
    #[arg(long, value_name = "TOPIC")]
    topic: String,

    /// Move only this partition (default: every partition of the topic).
    #[arg(long, value_name = "P")]
    partition: Option<u32>,

    #[command(flatten)]
    target: TargetArgs,
}

/// Where to seek: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// To the oldest stored event.
    #[arg(long)]
    earliest: bool,

    /// To after the newest event (skip everything stored).
    #[arg(long)]
    latest: bool,

    /// To this offset.
    #[arg(long, value_name = "N")]
    offset: Option<u64>,

    /// To the first event appended at or after this time: RFC 3339
    /// (`2024-05-01T12:30:00Z`) or milliseconds since the epoch.
    #[arg(long, value_name = "TIME", value_parser = parse_time_ms)]
    time: Option<i64>,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<SeekTarget> {
        Ok(match (self.earliest, self.latest, self.offset, self.time) {
            (true, false, None, None) => SeekTarget::Earliest,
            (false, true, None, None) => SeekTarget::Latest,
            (false, false, Some(o), None) => SeekTarget::Offset(o),
            (false, false, None, Some(t)) => SeekTarget::TimeMs(t),
            _ => anyhow::bail!("give exactly one of --earliest, --latest, --offset, --time"),
        })
    }
}

/// The body of `POST /v1/groups/{group}/seek`.
#[derive(Debug, Serialize)]
struct SeekBody<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<u32>,
    to: SeekTarget,
}

#[derive(Debug, Deserialize)]
struct SeekResponse {
    moved: Vec<(u32, u64)>,
}

/// One printed line of `seek`.
#[derive(Debug, Serialize)]
struct Moved<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `--time`: an integer is milliseconds since the epoch; otherwise an RFC 3339 timestamp
/// (fractions of a second below a millisecond are dropped).
pub fn parse_time_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = |why: &str| {
        format!(
            "{s:?} is not a time: {why}; use RFC 3339 (2024-05-01T12:30:00Z, \
             2024-05-01T14:30:00.5+02:00) or milliseconds since the epoch"
        )
    };
    if !driftless_core::is_rfc3339(s) {
        return Err(bad("not RFC 3339"));
    }
    // is_rfc3339 guarantees the ASCII shape `YYYY-MM-DDTHH:MM:SS[.f+](Z|±HH:MM)`.
    let field = |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (field(0..4), field(5..7), field(8..10), field(11..13), field(14..16), field(17..19))
    else {
        return Err(bad("not RFC 3339"));
    };
    let year = i64::from(year);
    if day > days_in_month(year, month) {
        return Err(bad("no such day in that month"));
    }
    let rest = &s[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(f) => {
            let end = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
            (&f[..end], &f[end..])
        }
        None => ("", rest),
    };
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    let offset_minutes = match zone.as_bytes().first() {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let (Some(h), Some(m)) = (
                zone.get(1..3).and_then(|d| d.parse::<i64>().ok()),
                zone.get(4..6).and_then(|d| d.parse::<i64>().ok()),
            ) else {
                return Err(bad("bad UTC offset"));
            };
            let minutes = h * 60 + m;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return Err(bad("missing UTC offset")),
    };
    let seconds = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Runs `driftless group ...`.
pub fn run(server: &str, output: Output, args: GroupArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    match args.command {
        GroupCommand::List => {
            let groups: Vec<String> = client.get("/v1/groups")?;
            if !output.is_json() {
                if groups.is_empty() {
                    writeln!(out, "no consumer groups")?;
                    return Ok(out.flush()?);
                }
                let mut table = Table::new(&["GROUP"]);
                for g in groups {
                    table.row(vec![g]);
                }
                return table.write(&mut out);
            }
            for g in &groups {
                writeln!(out, "{g}")?;
            }
            out.flush()?;
            Ok(())
        }
        GroupCommand::Describe { group } => {
            let description: Value = client.get(&format!("/v1/groups/{}", segment(&group)))?;
            print_pretty(&mut out, &description)
        }
        GroupCommand::Delete { group } => {
            client.delete(&format!("/v1/groups/{}", segment(&group)))?;
            let _ = writeln!(io::stderr(), "deleted group {group:?}");
            Ok(())
        }
        GroupCommand::Seek(seek) => {
            check_topic_name(&seek.topic)?;
            let body = SeekBody {
                topic: &seek.topic,
                partition: seek.partition,
                to: seek.target.target()?,
            };
            let response: SeekResponse =
                client.post_json(&format!("/v1/groups/{}/seek", segment(&seek.group)), &body)?;
            let moved: Vec<Moved<'_>> = response
                .moved
                .iter()
                .map(|&(partition, offset)| Moved { topic: &seek.topic, partition, offset })
                .collect();
            print_lines(&mut out, &moved)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_epoch_ms() {
        assert_eq!(parse_time_ms("1714566600000"), Ok(1_714_566_600_000));
        assert_eq!(parse_time_ms("0"), Ok(0));
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ms("2024-05-01T12:30:00Z"), Ok(1_714_566_600_000));
        assert_eq!(parse_time_ms("2024-05-01T14:30:00+02:00"), Ok(1_714_566_600_000));
        assert_eq!(parse_time_ms("2024-05-01T10:00:00-02:30"), Ok(1_714_566_600_000));
        assert_eq!(parse_time_ms("2024-05-01T12:30:00.5Z"), Ok(1_714_566_600_500));
        assert_eq!(parse_time_ms("2024-05-01t12:30:00.123456z"), Ok(1_714_566_600_123));
        assert_eq!(parse_time_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert_eq!(parse_time_ms("1969-12-31T23:59:59Z"), Ok(-1000));
    }

    #[test]
    fn bad_times_are_rejected_with_the_accepted_forms() {
        for bad in ["", "yesterday", "2024-05-01", "2024-05-01T12:30:00", "2023-02-29T00:00:00Z"] {
            let e = parse_time_ms(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn seek_targets_serialize_as_the_api_expects() {
        let t = |earliest, latest, offset, time| TargetArgs { earliest, latest, offset, time };
        let body =
            |to| serde_json::to_value(SeekBody { topic: "orders", partition: None, to }).unwrap();
        assert_eq!(
            body(t(true, false, None, None).target().unwrap()),
            serde_json::json!({"topic":"orders","to":"earliest"})
        );
        assert_eq!(body(t(false, true, None, None).target().unwrap())["to"], "latest");
        assert_eq!(
            body(t(false, false, Some(7), None).target().unwrap())["to"],
            serde_json::json!({"offset":7})
        );
        assert_eq!(
            body(t(false, false, None, Some(-5)).target().unwrap())["to"],
            serde_json::json!({"time_ms":-5})
        );
        assert!(t(true, true, None, None).target().is_err());
        let with_partition = SeekBody { topic: "t", partition: Some(2), to: SeekTarget::Latest };
        assert_eq!(
            serde_json::to_value(with_partition).unwrap(),
            serde_json::json!({"topic":"t","partition":2,"to":"latest"})
        );
    }
}
