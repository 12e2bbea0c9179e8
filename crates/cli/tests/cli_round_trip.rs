//! Issue 19 ("Every value arrives exactly"), through the CLI: `driftless produce` stores each
//! input line's text byte for byte and `driftless consume` prints each stored event byte for byte
//! (with `"partition":P,"offset":O` written in before its closing `}`), whatever its numbers,
//! member order or escapes; `produce` refuses what the HTTP API refuses (a member that occurs
//! twice), naming the input line, before anything from that line is stored.
//!
//! Invariants: each test starts its own `driftless serve` (the built binary) over a temporary
//! data directory on a free loopback port and kills it when done, also on panic; every wait is
//! bounded. Printed lines are compared as bytes, never after parsing them.

// Helpers, not #[test]s, so clippy's allow-unwrap-in-tests does not cover them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;

use support::TempServer as Server;

impl Server {
    /// `driftless ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "driftless {args:?}: exit {:?}\nstderr: {stderr}",
            out.status
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Everything group `group` has not consumed yet, as printed lines, sorted.
    fn consume_all(&self, topic: &str, group: &str) -> Vec<String> {
        let out = self.ok(&["consume", topic, "--group", group, "--wait-ms", "300"], "");
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    /// `POST /v1/topics/{topic}/events` with `body` as a structured-mode event.
    fn post_event(&self, topic: &str, body: &str) -> (u16, String) {
        let path = format!("/v1/topics/{topic}/events");
        support::http(&self.serve.addr, "POST", &path, "application/cloudevents+json", body)
            .unwrap()
    }
}

/// `event` as `consume` prints it: `,"partition":P,"offset":O` written in before the final `}`.
fn as_consumed(event: &str, partition: u64, offset: u64) -> String {
    let members = event.strip_suffix('}').unwrap();
    format!("{members},\"partition\":{partition},\"offset\":{offset}}}")
}

/// The (id, partition, offset) of each line `produce` printed.
fn produced(stdout: &str) -> Vec<(String, u64, u64)> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            let id = v["id"].as_str().unwrap().to_string();
            (id, v["partition"].as_u64().unwrap(), v["offset"].as_u64().unwrap())
        })
        .collect()
}

const HEAD: &str = r#""specversion":"1.0","source":"/test","type":"test.v1""#;

#[test]
fn produce_then_consume_carries_numbers_of_any_size_and_member_order_byte_for_byte() {
    let server = Server::start();
    server.ok(&["topic", "create", "exact", "--partitions", "2"], "");
    let events = [
        format!(r#"{{"id":"big",{HEAD},"data":{{"n":123456789012345678901234567890}}}}"#),
        format!(r#"{{"id":"u64p1",{HEAD},"data":[18446744073709551616,-18446744073709551617]}}"#),
        format!(r#"{{"id":"dec",{HEAD},"data":{{"x":0.1000000000000000055511151231257827}}}}"#),
        format!(r#"{{"id":"forms",{HEAD},"data":[-0,-0.0,1E+2,2.50e-3,1e-400,100.000]}}"#),
        r#"{"type":"t","z":1,"a":2,"id":"order","specversion":"1.0","source":"/s"}"#.to_string(),
        format!(
            r#"{{"id":"nested",{HEAD},"data":{{"z":{{"y":[{{"b":1,"a":2}}],"x":0}},"a":null}}}}"#
        ),
        format!(r#"{{"id":"esc",{HEAD},"data":"\u00e9\/\ud83d\ude00","subject":"caf\u00e9"}}"#),
        format!("{{ \"id\" : \"spaced\" ,\t{HEAD} , \"data\" : [ 1.0 , 2 ] }}"),
    ];
    let input: String = events.iter().map(|e| format!("{e}\n")).collect();
    let out = server.ok(&["produce", "exact", "--batch", "4"], &input);
    let results = produced(&out);
    assert_eq!(results.len(), events.len(), "{out}");
    let mut expected: Vec<String> = events
        .iter()
        .zip(&results)
        .map(|(event, (_, partition, offset))| as_consumed(event, *partition, *offset))
        .collect();
    expected.sort();

    let consumed = server.consume_all("exact", "g");
    assert_eq!(consumed, expected);
    // And once more with the two members taken out again: the stored text itself.
    for line in &consumed {
        let (event, _) = line.rsplit_once(",\"partition\":").unwrap();
        assert!(events.iter().any(|e| e.strip_suffix('}') == Some(event)), "{line}");
    }
}

#[test]
fn an_extension_with_a_number_of_any_size_round_trips_byte_for_byte() {
    let server = Server::start();
    server.ok(&["topic", "create", "ext"], "");
    let event = format!(r#"{{"id":"ext",{HEAD},"num":12345678901234567890123,"flag":true}}"#);
    let results = produced(&server.ok(&["produce", "ext"], &format!("{event}\n")));
    let (_, partition, offset) = &results[0];
    assert_eq!(server.consume_all("ext", "g"), [as_consumed(&event, *partition, *offset)]);
}

#[test]
fn produce_with_generate_ids_writes_a_missing_id_in_and_keeps_the_rest_of_the_line() {
    let server = Server::start();
    server.ok(&["topic", "create", "noid"], "");
    let event = format!(r#"{{"data":{{"b":1.10,"a":123456789012345678901234567890}},{HEAD}}}"#);
    let out = server.run(&["produce", "noid", "--generate-ids"], &format!("{event}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = produced(&String::from_utf8(out.stdout).unwrap());
    let (id, partition, offset) = &results[0];
    let stored = format!("{{\"id\":\"{id}\",{}", &event[1..]);
    assert_eq!(server.consume_all("noid", "g"), [as_consumed(&stored, *partition, *offset)]);
}

#[test]
fn consume_prints_an_event_sent_over_http_byte_for_byte() {
    let server = Server::start();
    server.ok(&["topic", "create", "http"], "");
    let exact = format!(
        r#"{{"id":"h1",{HEAD},"data":{{"z":123456789012345678901234567890,"a":0.1000000000000000055511151231257827,"m":18446744073709551616,"e":"\u00e9"}}}}"#
    );
    // Pretty-printed: its line breaks (whitespace between tokens) are printed as spaces, so the
    // event stays one line; everything else is as sent.
    let pretty =
        "{\n  \"id\": \"h2\",\r\n  \"specversion\": \"1.0\",\n  \"source\": \"/test\",\n  \
                  \"type\": \"t\",\n  \"data\": { \"b\": 1e-7, \"a\": -0 }\n}";
    let mut expected = Vec::new();
    for body in [exact.as_str(), pretty] {
        let (status, answer) = server.post_event("http", body);
        assert_eq!(status, 200, "{answer}");
        let result: Value = serde_json::from_str(&answer).unwrap();
        let result = &result["results"][0];
        let one_line = body.replace(['\r', '\n'], " ");
        expected.push(as_consumed(
            &one_line,
            result["partition"].as_u64().unwrap(),
            result["offset"].as_u64().unwrap(),
        ));
    }
    expected.sort();
    assert_eq!(server.consume_all("http", "g"), expected);
}

#[test]
fn produce_refuses_a_duplicate_member_naming_the_line_before_anything_from_it_is_stored() {
    let server = Server::start();
    server.ok(&["topic", "create", "dups"], "");
    let first = format!(r#"{{"id":"e1",{HEAD}}}"#);
    let duplicate = format!(r#"{{"id":"d1","id":"d2",{HEAD},"data":{{"n":1}}}}"#);
    let after = format!(r#"{{"id":"e3",{HEAD}}}"#);

    // The HTTP API refuses it, naming the member.
    let (status, answer) = server.post_event("dups", &duplicate);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("more than once") && answer.contains("\"field\":\"id\""), "{answer}");

    let out = server
        .run(&["produce", "dups", "--batch", "10"], &format!("{first}\n{duplicate}\n{after}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a duplicate member must fail the run; stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "error: input line 2: invalid CloudEvent attribute `id`: appears more than once in the \
         event object"
    );
    let results = produced(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(results.len(), 1, "only the line before it was sent: {results:?}");
    assert_eq!(results[0].0, "e1");
    let (_, partition, offset) = &results[0];

    // Only the first line was stored: neither d1, d2 nor anything after line 2.
    assert_eq!(server.consume_all("dups", "g"), [as_consumed(&first, *partition, *offset)]);
}
