#!/usr/bin/env python3
"""Verify a custos ledger chain from an export, without custos or PostgreSQL.

Input: JSON Lines, one event per line, ordered by seq, as produced by
  psql -At -c "SELECT row_to_json(e) FROM (SELECT tenant_id, seq, id,
      (extract(epoch FROM occurred_at - '2000-01-01 UTC') * 1000000)::bigint AS occurred_at_us,
      (extract(epoch FROM recorded_at - '2000-01-01 UTC') * 1000000)::bigint AS recorded_at_us,
      actor, db_role, txid, action, entity_type, entity_id, severity, details::text AS details,
      CASE WHEN ip_address IS NOT NULL THEN format('%s', ip_address) END AS ip_address,
      user_agent, encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
    FROM custos.events WHERE tenant_id = '...' ORDER BY seq) e"
Format: docs/ledger-format.md. Exit status 0 when the chain verifies, 1 otherwise.
"""
import hashlib
import json
import struct
import sys
import uuid


def field(tag, value):
    if value is None:
        return bytes([tag]) + b"\xff\xff\xff\xff"
    return bytes([tag]) + struct.pack(">I", len(value)) + value


def text(v):
    return None if v is None else v.encode("utf-8")


def event_hash(prev, e):
    i8 = lambda n: struct.pack(">q", n)
    body = (
        b"custos/ledger/event/v1\0" + prev
        + field(0x01, uuid.UUID(e["tenant_id"]).bytes) + field(0x02, i8(e["seq"]))
        + field(0x03, uuid.UUID(e["id"]).bytes) + field(0x04, i8(e["occurred_at_us"]))
        + field(0x05, i8(e["recorded_at_us"])) + field(0x06, text(e["actor"]))
        + field(0x07, text(e["db_role"])) + field(0x08, i8(e["txid"]))
        + field(0x09, text(e["action"])) + field(0x0A, text(e["entity_type"]))
        + field(0x0B, text(e["entity_id"])) + field(0x0C, text(e["severity"]))
        + field(0x0D, text(e["details"])) + field(0x0E, text(e["ip_address"]))
        + field(0x0F, text(e["user_agent"]))
    )
    return hashlib.sha256(body).digest()


def main(lines):
    expected_seq, running, checked = 1, None, 0
    for line in lines:
        if not line.strip():
            continue
        e = json.loads(line)
        if running is None:
            running = hashlib.sha256(b"custos/ledger/genesis/v1\0" + uuid.UUID(e["tenant_id"]).bytes).digest()
        prev, stored = bytes.fromhex(e["prev_hash"]), bytes.fromhex(e["hash"])
        if e["seq"] != expected_seq:
            return f"gap: seq {expected_seq} is missing", checked
        if prev != running:
            return f"link broken at seq {e['seq']}", checked
        if event_hash(prev, e) != stored:
            return f"content changed at seq {e['seq']}", checked
        running, expected_seq, checked = stored, expected_seq + 1, checked + 1
    return None, checked


if __name__ == "__main__":
    problem, checked = main(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
    print(f"checked {checked} events: " + ("ok" if problem is None else problem))
    sys.exit(0 if problem is None else 1)
