//! The documented chain format (docs/ledger-format.md) is enough to verify an export without
//! custos: tools/verify_export.py recomputes a real chain, and notices a tampered export.

use custos_integration_tests::fresh_db;
use std::io::Write;
use std::process::{Command, Stdio};

const T: &str = "e1000000-0000-4000-8000-000000000001";

const EXPORT: &str = "SELECT row_to_json(e)::text FROM (SELECT tenant_id, seq, id,
      (extract(epoch FROM occurred_at - '2000-01-01 UTC') * 1000000)::bigint AS occurred_at_us,
      (extract(epoch FROM recorded_at - '2000-01-01 UTC') * 1000000)::bigint AS recorded_at_us,
      actor, db_role, txid, action, entity_type, entity_id, severity, details::text AS details,
      CASE WHEN ip_address IS NOT NULL THEN format('%s', ip_address) END AS ip_address,
      user_agent, encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
    FROM custos.events WHERE tenant_id = $1::text::uuid
      AND seq <= custos.settled_seq($1::text::uuid) ORDER BY seq) e";

fn run_tool(export: &str) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/verify_export.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the verifier");
    // The tool stops reading at the first broken link, so a closed pipe is not an error.
    let _ = child.stdin.take().unwrap().write_all(export.as_bytes());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn exported_chain_verifies_outside_the_database() {
    let (_db, mut c) = fresh_db("export_format");
    c.batch_execute(&format!(
        r#"SELECT custos.set_tenant('{T}');
           SELECT custos.set_actor('José Ñúñez');
           SELECT custos.record_events('[
             {{"action": "login", "entity_type": "user", "entity_id": "u1", "ip_address": "192.0.2.7", "user_agent": "curl/8"}},
             {{"action": "export", "entity_type": "report", "details": {{"b": [1.50, 1e3, null], "a": "x\"y\\z\n", "日本": {{"zz": true, "y": -0.001}}}}}},
             {{"action": "grant", "entity_type": "role", "ip_address": "10.0.0.0/8", "occurred_at": "2026-03-01T12:00:00.123456+05:30", "severity": "high"}}
           ]');
           INSERT INTO custos.events (tenant_id, action, entity_type, details)
           SELECT '{T}', 'bulk', 'row', jsonb_build_object('i', g, 'big', repeat('x', 3000)) FROM generate_series(1, 50) g;"#
    ))
    .unwrap();
    let lines: Vec<String> = c
        .query(EXPORT, &[&T])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lines.len(), 53);
    let export = lines.join("\n");
    let (ok, out) = run_tool(&export);
    assert!(ok, "{out}");
    assert!(out.contains("checked 53 events: ok"), "{out}");

    // Edit one value in the export: the tool names the row.
    let tampered = export.replacen("\"grant\"", "\"revoke\"", 1);
    let (ok, out) = run_tool(&tampered);
    assert!(!ok);
    assert!(out.contains("content changed at seq 3"), "{out}");
}
