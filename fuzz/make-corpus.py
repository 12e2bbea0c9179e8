#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/ (a handful of valid
inputs each, a few KiB in all). The fuzzers grow their own corpus from these while running
(scripts/fuzz.sh keeps that in fuzz/corpus-run/, not committed). Re-run after changing an input
format; the files are deterministic. Files named `found-*` are inputs that once found a bug,
copied from fuzz/artifacts/ by hand: this script leaves them alone."""

import json
import os
import struct
import urllib.parse

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(offset, ts, key, value, batch_end=True):
    """One record as crates/log/src/record.rs lays it out."""
    flags = (1 if value is None else 0) | (2 if key is not None else 0) | (4 if batch_end else 0)
    k, v = key or b"", value or b""
    body = struct.pack("<QqBI", offset, ts, flags, len(k)) + k + v
    rest = struct.pack("<I", len(body)) + body
    return struct.pack("<I", crc32c(rest)) + rest


def index_entry(base, offset, position, ts):
    raw = struct.pack("<IIq", offset - base, position, ts)
    return raw + struct.pack("<I", crc32c(raw))


def write(target, name, data: bytes):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def record_corpus():
    write("record", "keyed", record(42, 1_700_000_000_000, b"order-1", b'{"total":42}'))
    write("record", "unkeyed", record(0, 0, None, b"value", False))
    write("record", "tombstone", record(7, 1, b"gone", None))
    write("record", "empty", record(1, 2, None, b""))
    write("record", "torn", record(3, 4, b"k", b"v" * 40)[:30])


def segment_setup(from_=0, past_end=0, first_chunk=0, chunk_extra=0, read_max=0xFFFF, base=0):
    return struct.pack("<HHHHHQ", from_, past_end, first_chunk, chunk_extra, read_max, base)


def segment_corpus():
    base = 100
    recs = [record(base + i, 1000 + i, b"key-%d" % i, b"x" * (50 * i), i % 3 == 2) for i in range(6)]
    log = b"".join(recs)
    write("segment", "raw-records", segment_setup(base=base) + b"\x00" + log)
    write("segment", "raw-short-reads", segment_setup(read_max=7, past_end=64, base=base) + b"\x00" + log)
    positions = [0]
    for r in recs[:-1]:
        positions.append(positions[-1] + len(r))
    idx = b"".join(index_entry(base, base + i, p, 1000 + i) for i, p in enumerate(positions))
    write("segment", "raw-index", segment_setup(base=base) + b"\x02" + idx)
    # Records mode: large values (repeated) cross the 4 KiB chunk; then a cut and damage.
    spec = b""
    for i, (flags, key, value, repeat) in enumerate(
        [(1, b"a", b"0123456789", 250), (0, b"", b"v", 0), (3, b"t", b"", 0), (5, b"b", b"z" * 300, 20)]
    ):
        spec += struct.pack("<BBHB", flags, len(key), len(value), repeat) + key + value
    write("segment", "records", segment_setup(first_chunk=4096, chunk_extra=100) + b"\x01" + spec)
    damaged = spec + struct.pack("<BBHB", 0x80, 0, 0, 0) + struct.pack("<I", 5000) + struct.pack("<HB", 4100, 0x40)
    write("segment", "records-damaged", segment_setup() + b"\x01" + damaged)


def event(i, **extra):
    e = {"specversion": "1.0", "id": "ev-%d" % i, "source": "/orders", "type": "order.created"}
    e.update(extra)
    return e


def cloudevents_corpus():
    write("cloudevents", "structured", b"\x00" + json.dumps(event(1, data={"total": 42}, subject="o-1")).encode())
    batch = [event(1, data={"n": 1.5e3}), event(2, data_base64="aGVsbG8=", partitionkey="p"),
             event(3, time="2026-01-01T00:00:00Z", datacontenttype="text/plain", data="hi")]
    write("cloudevents", "batch", b"\x01" + json.dumps(batch).encode())
    headers = ("ce-specversion: 1.0\nce-id: b-1\nce-source: %%2Forders\nce-type: order.created\n"
               "ce-subject: %s\ncontent-type: application/json; charset=utf-8\n\n"
               % urllib.parse.quote("ü order"))
    write("cloudevents", "binary-json", b"\x02" + headers.encode() + b'{"total":42}')
    headers = "ce-specversion: 1.0\nce-id: b-2\nce-source: /s\nce-type: t\ncontent-type: application/octet-stream\n\n"
    write("cloudevents", "binary-bytes", b"\x02" + headers.encode() + bytes(range(40)))
    write("cloudevents", "value", b"\x03" + json.dumps(event(4, data=[1, "two", None], dataschema="https://x/s", ext1="v")).encode())


def cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def tuple_data(cols):
    out = struct.pack(">H", len(cols))
    for c in cols:
        if c is None:
            out += b"n"
        elif c == "<unchanged>":
            out += b"u"
        else:
            out += b"t" + struct.pack(">I", len(c.encode())) + c.encode()
    return out


def relation(relid, columns):
    out = b"R" + struct.pack(">I", relid) + cstr("public") + cstr("orders") + b"d" + struct.pack(">H", len(columns))
    for key, name, oid in columns:
        out += bytes([1 if key else 0]) + cstr(name) + struct.pack(">Ii", oid, -1)
    return out


def frames(*msgs):
    return b"".join(struct.pack(">H", len(m)) + m for m in msgs)


def pgoutput_corpus():
    # oids: int4 23, text 25, numeric 1700, float8 701, bool 16, timestamptz 1184, bytea 17,
    # jsonb 3802, int4[] 1007, text[] 1009.
    cols = [(True, "id", 23), (False, "note", 25), (False, "total", 1700), (False, "ratio", 701),
            (False, "paid", 16), (False, "at", 1184), (False, "blob", 17), (False, "doc", 3802),
            (False, "ints", 1007), (False, "tags", 1009)]
    rel = relation(16384, cols)
    begin = b"B" + struct.pack(">QqI", 0x16B3748, 700_000_000_000_000, 731)
    commit = b"C" + b"\x00" + struct.pack(">QQq", 0x16B3748, 0x16B3778, 700_000_000_000_000)
    row = ["1", "hello", "12.50", "0.25", "t", "2026-01-02 03:04:05.123456+00", "\\x0001ff",
           '{"a": [1, 2]}', "{1,2,NULL}", '{"a b",c,"d\\"e"}']
    insert = b"I" + struct.pack(">I", 16384) + b"N" + tuple_data(row)
    row2 = ["1", None, "NaN", "-Infinity", "f", "infinity", "<unchanged>", "null", "[0:1]={5,6}", "{}"]
    update = b"U" + struct.pack(">I", 16384) + b"O" + tuple_data(row) + b"N" + tuple_data(row2)
    delete = b"D" + struct.pack(">I", 16384) + b"K" + tuple_data(["1"] + [None] * 9)
    truncate = b"T" + struct.pack(">IB", 1, 0) + struct.pack(">I", 16384)
    write("pgoutput", "insert", frames(begin, rel, insert, commit))
    write("pgoutput", "update-delete", frames(begin, rel, update, delete, truncate, commit))
    write("pgoutput", "change-before-relation", frames(begin, insert, commit))
    message = b"M" + b"\x00" + struct.pack(">Q", 0x16B3748) + cstr("driftless.heartbeat") + struct.pack(">I", 2) + b"{}"
    write("pgoutput", "message", frames(message))


def field(text: bytes) -> bytes:
    return struct.pack(">H", len(text)) + text


def broker_keys_corpus():
    # Version-1 keys (driftless_broker::keys): prefix 00 01, length-prefixed fields, partition.
    write("broker_keys", "offset-v1", b"\x00\x01" + field(b"billing") + field(b"orders") + struct.pack(">I", 3))
    write("broker_keys", "dlq-v1", b"\x00\x01" + field(b"billing") + field(b"orders:0:17"))
    # Keys as the broker wrote them before names were validated (group \0 topic \0 partition),
    # and a group with a NUL in it: the decoders must answer either without panicking.
    write("broker_keys", "offset", b"billing\x00orders\x000")
    write("broker_keys", "offset-nul-group", b"billing\x00orders\x000\x00orders\x000")
    write("broker_keys", "dlq", b"billing\x00ev-1")
    write("broker_keys", "empty", b"")


if __name__ == "__main__":
    record_corpus()
    segment_corpus()
    cloudevents_corpus()
    pgoutput_corpus()
    broker_keys_corpus()
