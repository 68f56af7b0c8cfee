//! Chain verification as a pure state machine: rows are fed in `seq` order and the first break is
//! named. The SQL wrapper supplies the rows and refines what needs another query (reordering,
//! truncation).

use super::chain::Hash;

/// Why a chain does not verify. `seq` is the first sequence number that is not as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// A sequence number is missing (a row was deleted, or the chain was renumbered).
    Gap { seq: i64, found: i64 },
    /// The row's `prev_hash` is not its predecessor's hash.
    LinkBroken { seq: i64, prev_hash: Vec<u8> },
    /// The row's content no longer hashes to its stored `hash`.
    ContentChanged { seq: i64 },
    /// The row's content is intact but its stored `hash` was replaced (its successor still links
    /// to the true hash).
    HashAltered { seq: i64 },
    /// The row links to the hash of a later row: rows were swapped or moved.
    Reordered { seq: i64, links_to: i64 },
    /// The chain ends before a point it is known to have reached.
    Truncated { last: i64, expected: i64 },
    /// The chain ends before the `to_seq` a caller asked for: reported as truncated, but only the
    /// caller's question, not evidence (custos raises no alert for it).
    EndsBeforeAsked { last: i64, asked: i64 },
    /// The row at a signed checkpoint no longer has the hash the checkpoint recorded: the chain was
    /// rewritten and its hashes recomputed.
    Rewritten { seq: i64 },
    /// The retention anchor the chain now starts from disagrees with the retention event that
    /// recorded it (at `seq`).
    AnchorAltered { seq: i64 },
}

impl Break {
    pub fn seq(&self) -> i64 {
        match self {
            Break::Gap { seq, .. }
            | Break::LinkBroken { seq, .. }
            | Break::ContentChanged { seq }
            | Break::HashAltered { seq }
            | Break::Reordered { seq, .. }
            | Break::Rewritten { seq }
            | Break::AnchorAltered { seq } => *seq,
            Break::Truncated { last, .. } | Break::EndsBeforeAsked { last, .. } => last + 1,
        }
    }

    /// A short keyword, stable for scripts: gap, link broken, content changed, hash altered,
    /// reordered, truncated.
    pub fn kind(&self) -> &'static str {
        match self {
            Break::Gap { .. } => "gap",
            Break::LinkBroken { .. } => "link broken",
            Break::ContentChanged { .. } => "content changed",
            Break::HashAltered { .. } => "hash altered",
            Break::Reordered { .. } => "reordered",
            Break::Truncated { .. } | Break::EndsBeforeAsked { .. } => "truncated",
            Break::Rewritten { .. } => "rewritten",
            Break::AnchorAltered { .. } => "anchor altered",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Break::Gap { seq, found } => {
                format!("gap: seq {seq} is missing (next row found is seq {found})")
            }
            Break::LinkBroken { seq, .. } => {
                format!(
                    "link broken: prev_hash of seq {seq} is not the hash of seq {}",
                    seq - 1
                )
            }
            Break::ContentChanged { seq } => {
                format!("content changed: seq {seq} no longer matches its hash")
            }
            Break::HashAltered { seq } => {
                format!("hash altered: the stored hash of seq {seq} was replaced; its content and successor still agree")
            }
            Break::Reordered { seq, links_to } => {
                format!("reordered: seq {seq} links to seq {links_to}, rows were moved or swapped")
            }
            Break::AnchorAltered { seq } => {
                format!("anchor altered: the retention anchor no longer matches the retention event at seq {seq}")
            }
            Break::Truncated { last, expected } => {
                format!("truncated: seq {} onwards is missing; the chain ends at seq {last} but had reached seq {expected}", last + 1)
            }
            Break::EndsBeforeAsked { last, asked } => {
                format!(
                    "truncated: the chain ends at seq {last}, before the to_seq {asked} asked for"
                )
            }
            Break::Rewritten { seq } => {
                format!("rewritten: seq {seq} no longer has the hash a signed checkpoint recorded")
            }
        }
    }
}

/// One stored row, with its content hash recomputed from the stored `prev_hash`.
pub struct Row<'a> {
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    pub recomputed: Hash,
}

pub struct Verifier {
    expected_seq: i64,
    running: Hash,
    checked: i64,
    /// A row whose stored hash is wrong; the next row tells whether its content or its hash changed.
    suspect: Option<(i64, Hash)>,
}

impl Verifier {
    /// `first_seq` is the first row expected; `prev` the hash it must link to (genesis, or the
    /// stored hash of the row before the verified range).
    pub fn new(first_seq: i64, prev: Hash) -> Self {
        Verifier {
            expected_seq: first_seq,
            running: prev,
            checked: 0,
            suspect: None,
        }
    }

    pub fn checked(&self) -> i64 {
        self.checked
    }

    /// Feeds the next row in `seq` order; the first break ends verification.
    pub fn push(&mut self, row: &Row<'_>) -> Result<(), Break> {
        if let Some((seq, true_hash)) = self.suspect.take() {
            return Err(if row.prev_hash == true_hash && row.seq == seq + 1 {
                Break::HashAltered { seq }
            } else {
                Break::ContentChanged { seq }
            });
        }
        if row.seq != self.expected_seq {
            return Err(Break::Gap {
                seq: self.expected_seq,
                found: row.seq,
            });
        }
        if row.prev_hash != self.running {
            return Err(Break::LinkBroken {
                seq: row.seq,
                prev_hash: row.prev_hash.to_vec(),
            });
        }
        self.checked += 1;
        if row.hash != row.recomputed {
            self.suspect = Some((row.seq, row.recomputed));
            self.expected_seq += 1;
            return Ok(());
        }
        self.running = row.recomputed;
        self.expected_seq += 1;
        Ok(())
    }

    /// Ends verification: a row still under suspicion with no successor counts as changed content.
    pub fn finish(&mut self) -> Result<(), Break> {
        match self.suspect.take() {
            Some((seq, _)) => Err(Break::ContentChanged { seq }),
            None => Ok(()),
        }
    }

    /// The hash the next row must link to.
    pub fn head(&self) -> Hash {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A toy chain: hash = SHA-256(prev || content).
    fn chain(contents: &[&str]) -> Vec<(i64, Hash, Hash, String)> {
        let mut prev = [0u8; 32];
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let h = toy(&prev, c);
                let row = (i as i64 + 1, prev, h, c.to_string());
                prev = h;
                row
            })
            .collect()
    }
    fn toy(prev: &Hash, content: &str) -> Hash {
        Sha256::new()
            .chain_update(prev)
            .chain_update(content)
            .finalize()
            .into()
    }
    fn run(rows: &[(i64, Hash, Hash, String)]) -> Result<i64, Break> {
        let mut v = Verifier::new(1, [0; 32]);
        for (seq, prev, hash, content) in rows {
            v.push(&Row {
                seq: *seq,
                prev_hash: prev,
                hash,
                recomputed: toy(prev, content),
            })?;
        }
        v.finish()?;
        Ok(v.checked())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(run(&chain(&["a", "b", "c"])), Ok(3));
        assert_eq!(run(&[]), Ok(0));
    }

    #[test]
    fn changed_content_is_named() {
        let mut rows = chain(&["a", "b", "c"]);
        rows[1].3 = "B".into();
        assert_eq!(run(&rows), Err(Break::ContentChanged { seq: 2 }));
        let mut last = chain(&["a", "b", "c"]);
        last[2].3 = "C".into();
        assert_eq!(run(&last), Err(Break::ContentChanged { seq: 3 }));
    }

    #[test]
    fn altered_hash_is_told_apart_from_changed_content() {
        let mut rows = chain(&["a", "b", "c"]);
        rows[1].2 = [7; 32];
        assert_eq!(run(&rows), Err(Break::HashAltered { seq: 2 }));
    }

    #[test]
    fn deleted_middle_row_is_a_gap() {
        let mut rows = chain(&["a", "b", "c", "d"]);
        rows.remove(1);
        assert_eq!(run(&rows), Err(Break::Gap { seq: 2, found: 3 }));
    }

    #[test]
    fn renumbered_after_delete_breaks_the_link() {
        let mut rows = chain(&["a", "b", "c"]);
        rows.remove(1);
        rows[1].0 = 2;
        assert!(matches!(run(&rows), Err(Break::LinkBroken { seq: 2, .. })));
    }

    #[test]
    fn recomputed_from_the_middle_is_caught_at_the_link() {
        let mut rows = chain(&["a", "b", "c"]);
        // Rewrite row 2 and recompute its own hash, but not row 3's link.
        rows[1].3 = "B".into();
        rows[1].2 = toy(&rows[1].1, "B");
        assert!(matches!(run(&rows), Err(Break::LinkBroken { seq: 3, .. })));
    }

    #[test]
    fn verification_of_a_range_starts_from_its_predecessor() {
        let rows = chain(&["a", "b", "c"]);
        let mut v = Verifier::new(2, rows[0].2);
        for (seq, prev, hash, content) in &rows[1..] {
            v.push(&Row {
                seq: *seq,
                prev_hash: prev,
                hash,
                recomputed: toy(prev, content),
            })
            .unwrap();
        }
        assert_eq!(v.finish(), Ok(()));
        assert_eq!(v.checked(), 2);
        assert_eq!(v.head(), rows[2].2);
    }

    #[test]
    fn descriptions_name_the_seq() {
        for b in [
            Break::Gap { seq: 5, found: 7 },
            Break::LinkBroken {
                seq: 5,
                prev_hash: vec![],
            },
            Break::ContentChanged { seq: 5 },
            Break::HashAltered { seq: 5 },
            Break::Reordered {
                seq: 5,
                links_to: 9,
            },
            Break::Truncated {
                last: 4,
                expected: 9,
            },
        ] {
            assert_eq!(b.seq(), 5);
            assert!(b.describe().starts_with(b.kind()), "{}", b.describe());
            assert!(b.describe().contains('5'));
        }
    }
}
