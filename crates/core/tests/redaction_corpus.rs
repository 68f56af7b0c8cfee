//! Precision and recall of PII redaction per kind on a labelled corpus (tests/data/
//! redaction_corpus.tsv, half of it near-misses that must survive). Goals: recall >= 0.98 and
//! precision >= 0.95 on every kind. `cargo test -p custos-core --test redaction_corpus --
//! --nocapture` prints the table.

use custos_core::ai::redact::{redact, Kind, Rules};
use std::collections::BTreeMap;

fn kind_of(name: &str) -> Kind {
    match name {
        "email" => Kind::Email,
        "phone" => Kind::Phone,
        "ipv4" => Kind::Ipv4,
        "ipv6" => Kind::Ipv6,
        "card" => Kind::Card,
        "iban" => Kind::Iban,
        "ssn" => Kind::Ssn,
        "aws_access_key" => Kind::AwsAccessKey,
        "aws_secret_key" => Kind::AwsSecretKey,
        "jwt" => Kind::Jwt,
        "bearer" => Kind::Bearer,
        "api_key" => Kind::ApiKey,
        other => panic!("unknown kind {other}"),
    }
}

#[derive(Default)]
struct Tally {
    true_pos: u32,
    false_neg: u32,
    false_pos: u32,
    cases: u32,
}

#[test]
fn every_kind_meets_its_precision_and_recall_goal() {
    let corpus = include_str!("data/redaction_corpus.tsv");
    let mut tally: BTreeMap<Kind, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    for line in corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut fields = line.split('\t');
        let (kind, text, pii) = (
            kind_of(fields.next().unwrap()),
            fields.next().unwrap(),
            fields.next().unwrap_or(""),
        );
        tally.entry(kind).or_default().cases += 1;
        let found = redact(text, &Rules::default()).mapping;
        let mut hit = false;
        for (_, k, value) in &found {
            if !pii.is_empty() && *k == kind && value == pii {
                hit = true;
            } else {
                tally.entry(*k).or_default().false_pos += 1;
                misses.push(format!("false positive {k:?} {value:?} in {text:?}"));
            }
        }
        if !pii.is_empty() {
            let t = tally.entry(kind).or_default();
            if hit {
                t.true_pos += 1;
            } else {
                t.false_neg += 1;
                misses.push(format!("missed {kind:?} {pii:?} in {text:?}"));
            }
        }
    }
    println!(
        "{:<16} {:>6} {:>10} {:>8}",
        "kind", "cases", "precision", "recall"
    );
    let mut failing = Vec::new();
    for (kind, t) in &tally {
        let precision = f64::from(t.true_pos) / f64::from((t.true_pos + t.false_pos).max(1));
        let recall = f64::from(t.true_pos) / f64::from((t.true_pos + t.false_neg).max(1));
        println!(
            "{:<16} {:>6} {:>10.3} {:>8.3}",
            format!("{kind:?}"),
            t.cases,
            precision,
            recall
        );
        if precision < 0.95 || recall < 0.98 {
            failing.push(format!(
                "{kind:?}: precision {precision:.3}, recall {recall:.3}"
            ));
        }
    }
    assert!(
        failing.is_empty(),
        "{}\n{}",
        failing.join("\n"),
        misses.join("\n")
    );
}
