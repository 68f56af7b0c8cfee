//! Change documents of captured rows (`custos.track_table`): a row as a JSON object, the key that
//! names it, and the `details` of the events that record its change. Pure string building, tested
//! without a database; `capture.rs` feeds it the columns' values.
//!
//! Formats (documented in the README):
//! - one row per event: `{"table": T, "new": {...}}` (insert), `{"table": T, "old": {...},
//!   "new": {...}, "changed": [columns]}` (update), `{"table": T, "old": {...}}` (delete); an update
//!   that changes the row's key or tenant is recorded as two events, the old row under its old key
//!   and tenant and the new row under the new ones, each with `"key_changed": true` (or
//!   `"tenant_changed": true`), so no tenant sees another's values.
//! - grouped: `{"table": T, "rows": [{"key": K, "old": {...}, "new": {...}, "key_changed": b}, ...]}`,
//!   a moved row again as two items.

use crate::pg::jsonb::{self, Child, ContainerWriter, ObjectLayout};
pub(crate) use custos_core::ledger::chain::push_json_string;
use pgrx::pg_sys;
use std::ops::Range;

/// A column's value as it goes into JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JsonValue<'a> {
    Null,
    /// Already JSON text: a finite number, `true`/`false`, a json or jsonb document.
    Raw(&'a str),
    /// Anything else, as a JSON string.
    Text(&'a str),
    /// A JSON string whose characters need no escaping (a uuid's text, as custos prints it).
    Plain(&'a str),
}

/// Numbers go into JSON as they print, except NaN and the infinities, which JSON cannot hold.
pub fn number(text: &str) -> JsonValue<'_> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.starts_with(|c: char| c.is_ascii_digit()) {
        JsonValue::Raw(text)
    } else {
        JsonValue::Text(text)
    }
}

pub fn push_value(value: JsonValue<'_>, out: &mut String) {
    match value {
        JsonValue::Null => out.push_str("null"),
        JsonValue::Raw(text) => out.push_str(text),
        JsonValue::Text(text) => push_json_string(text, out),
        JsonValue::Plain(text) => {
            out.push('"');
            out.push_str(text);
            out.push('"');
        }
    }
}

/// `"name": `, as a row writes a column's key (`, "name": ` after the first): escaped once per
/// statement, not once per row.
pub fn json_key(name: &str, first: bool) -> String {
    let mut key = String::with_capacity(name.len() + 6);
    if !first {
        key.push_str(", ");
    }
    push_json_string(name, &mut key);
    key.push_str(": ");
    key
}

/// One captured row as a JSON object, with where each column's value sits in the text so two
/// versions of a row can be compared column by column without parsing. Beside the text, the
/// values as jsonb stores them, so that the event's jsonb is assembled rather than parsed.
/// Its buffers are reused from row to row.
#[derive(Debug, Default, Clone)]
pub struct RowJson {
    pub text: String,
    values: Vec<Range<usize>>,
    /// Each value's JEntry type and where its bytes sit in `stored`.
    stored_values: Vec<(u32, Range<usize>)>,
    stored: Vec<u8>,
    /// False once a value came without its stored form (then the text is parsed instead).
    has_stored: bool,
}

impl RowJson {
    /// Starts a row; `push` each column in order (with `push_stored`, `push_stored_numeric`,
    /// `push_stored_integer` or `no_stored` for its stored form), then `finish`.
    pub fn begin(&mut self) {
        self.text.clear();
        self.values.clear();
        self.stored_values.clear();
        self.stored.clear();
        self.has_stored = true;
        self.text.push('{');
    }

    /// The value just pushed as jsonb stores it: a JEntry type and its bytes (nothing for null
    /// and booleans).
    pub fn push_stored(&mut self, kind: u32, data: &[u8]) {
        let start = self.stored.len();
        self.stored.extend_from_slice(data);
        self.stored_values.push((kind, start..self.stored.len()));
    }

    /// A numeric value, from the numeric's bytes after its varlena header (jsonb stores it with
    /// a 4-byte header, whatever header it had in the row).
    pub fn push_stored_numeric(&mut self, body: &[u8]) {
        let start = self.stored.len();
        let len = pg_sys::VARHDRSZ + body.len();
        self.stored
            .extend_from_slice(&jsonb::varlena_header_4b(len));
        self.stored.extend_from_slice(body);
        self.stored_values
            .push((pg_sys::JENTRY_ISNUMERIC, start..self.stored.len()));
    }

    /// An integer value, stored as the numeric of the same value.
    pub fn push_stored_integer(&mut self, value: i64) {
        let start = self.stored.len();
        crate::pg::numeric::push_integer(value, &mut self.stored);
        self.stored_values
            .push((pg_sys::JENTRY_ISNUMERIC, start..self.stored.len()));
    }

    pub fn no_stored(&mut self) {
        self.has_stored = false;
    }

    /// The values as jsonb stores them, in order; None when some value had no stored form.
    pub fn stored_values(&self) -> Option<impl Iterator<Item = Child<'_>> + Clone> {
        let complete = self.has_stored && self.stored_values.len() == self.values.len();
        complete.then(|| {
            self.stored_values.iter().map(|(kind, range)| Child {
                kind: *kind,
                data: &self.stored[range.clone()],
            })
        })
    }

    pub fn push(&mut self, column: &str, value: JsonValue<'_>) {
        self.push_keyed(&json_key(column, self.values.is_empty()), value);
    }

    /// [`RowJson::push`] with the column's key as [`json_key`] writes it, separator included.
    pub fn push_keyed(&mut self, key: &str, value: JsonValue<'_>) {
        self.text.push_str(key);
        let start = self.text.len();
        push_value(value, &mut self.text);
        self.values.push(start..self.text.len());
    }

    pub fn finish(&mut self) {
        self.text.push('}');
    }

    pub fn value(&self, column: usize) -> &str {
        self.values
            .get(column)
            .map_or("null", |r| &self.text[r.clone()])
    }
}

/// The columns whose values differ between two versions of a row, in the order given; each
/// column comes with the position of its value in the rows.
pub fn changed_columns<'a>(
    columns: impl Iterator<Item = (&'a str, usize)>,
    old: &RowJson,
    new: &RowJson,
) -> Vec<&'a str> {
    columns
        .filter(|(_, i)| old.value(*i) != new.value(*i))
        .map(|(name, _)| name)
        .collect()
}

/// The `entity_id` of a row with a composite key: a JSON array of the key columns' values, in
/// key order (`key` indexes the row's columns). A single-column key is that column's text.
pub fn composite_key(row: &RowJson, key: &[usize]) -> String {
    let mut out = String::from("[");
    for (i, column) in key.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(row.value(*column));
    }
    out.push(']');
    out
}

fn push_member(out: &mut String, name: &str, json: &str) {
    out.push_str(", \"");
    out.push_str(name);
    out.push_str("\": ");
    out.push_str(json);
}

// Members are written in jsonb's key order (shorter names first, then bytewise), with jsonb's
// spacing: a document whose values are printed as jsonb prints them is then exactly the text the
// chain hashes, and need not be printed again (see `jsonb::from_json_text_printed`).

/// `details` of a one-row event. `changed` only for an update of a row that kept its key.
pub fn row_details(
    table: &str,
    old: Option<&RowJson>,
    new: Option<&RowJson>,
    changed: Option<&[&str]>,
    flag: Option<(&str, bool)>,
) -> String {
    let mut table_json = String::new();
    push_json_string(table, &mut table_json);
    let mut out = String::new();
    row_details_into(&mut out, &table_json, old, new, changed, flag);
    out
}

/// [`row_details`] appended to `out`, the table's name given as a JSON string (escaped once per
/// statement).
pub fn row_details_into(
    out: &mut String,
    table_json: &str,
    old: Option<&RowJson>,
    new: Option<&RowJson>,
    changed: Option<&[&str]>,
    flag: Option<(&str, bool)>,
) {
    out.reserve(
        32 + table_json.len()
            + old.map_or(0, |r| r.text.len() + 9)
            + new.map_or(0, |r| r.text.len() + 9),
    );
    out.push('{');
    for (name, row) in [("new", new), ("old", old)] {
        if let Some(row) = row {
            out.push('"');
            out.push_str(name);
            out.push_str("\": ");
            out.push_str(&row.text);
            out.push_str(", ");
        }
    }
    out.push_str("\"table\": ");
    out.push_str(table_json);
    if let Some(changed) = changed {
        out.push_str(", \"changed\": [");
        for (i, column) in changed.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_json_string(column, out);
        }
        out.push(']');
    }
    if let Some((name, value)) = flag {
        push_member(out, name, if value { "true" } else { "false" });
    }
    out.push('}');
}

/// [`row_details`] as a jsonb value (varlena header included), appended to `out` at the next
/// multiple of 4, each row's object written in place as `layout` (their columns' names) lays it
/// out; returns where it starts. None, with `out` left as it was, when a row's values have no
/// stored form or the document would be larger than jsonb allows.
pub fn row_details_stored_into(
    out: &mut Vec<u8>,
    layout: &ObjectLayout,
    table: &str,
    old: Option<&RowJson>,
    new: Option<&RowJson>,
    changed: Option<&[&str]>,
    flag: Option<(&str, bool)>,
) -> Option<usize> {
    fn string(s: &str) -> Child<'_> {
        Child {
            kind: pg_sys::JENTRY_ISSTRING,
            data: s.as_bytes(),
        }
    }
    let old_values = old.map(RowJson::stored_values);
    let new_values = new.map(RowJson::stored_values);
    if matches!(old_values, Some(None)) || matches!(new_values, Some(None)) {
        return None;
    }
    // jsonb's key order, as row_details writes them.
    let names = [
        new.map(|_| "new"),
        old.map(|_| "old"),
        Some("table"),
        changed.map(|_| "changed"),
        flag.map(|(name, _)| name),
    ];
    let count = names.iter().flatten().count();
    jsonb::jsonb_varlena_into(out, |out| {
        let mut writer = ContainerWriter::begin(out, pg_sys::JB_FOBJECT, count, 2 * count);
        for name in names.iter().flatten() {
            writer.push(out, string(name))?;
        }
        for values in [new_values, old_values].into_iter().flatten().flatten() {
            writer.push_written(out, pg_sys::JENTRY_ISCONTAINER, |out| {
                layout.write(out, values)
            })?;
        }
        writer.push(out, string(table))?;
        if let Some(columns) = changed {
            writer.push_written(out, pg_sys::JENTRY_ISCONTAINER, |out| {
                let n = columns.len();
                let elements = columns.iter().map(|c| string(c));
                jsonb::container_into(out, pg_sys::JB_FARRAY, n, n, elements)
            })?;
        }
        if let Some((_, value)) = flag {
            let kind = if value {
                pg_sys::JENTRY_ISBOOL_TRUE
            } else {
                pg_sys::JENTRY_ISBOOL_FALSE
            };
            writer.push(out, Child { kind, data: &[] })?;
        }
        writer.finish(out)
    })
    .ok()
}

/// `details` of an event holding several rows of one statement and tenant, built a row at a time.
#[derive(Debug)]
pub struct GroupDetails {
    text: String,
    /// `"table": ...}`, which follows "rows" in jsonb's key order.
    tail: String,
    rows: usize,
}

impl GroupDetails {
    pub fn new(table: &str) -> Self {
        let mut text = String::with_capacity(4096);
        text.push_str("{\"rows\": [");
        let mut tail = String::from("], \"table\": ");
        push_json_string(table, &mut tail);
        tail.push('}');
        GroupDetails {
            text,
            tail,
            rows: 0,
        }
    }

    /// Adds one changed row; updates carry a flag (`key_changed` or `tenant_changed`).
    pub fn push(
        &mut self,
        key: &str,
        old: Option<&RowJson>,
        new: Option<&RowJson>,
        flag: Option<(&str, bool)>,
    ) {
        if self.rows > 0 {
            self.text.push_str(", ");
        }
        self.text.push_str("{\"key\": ");
        push_json_string(key, &mut self.text);
        if let Some(new) = new {
            push_member(&mut self.text, "new", &new.text);
        }
        if let Some(old) = old {
            push_member(&mut self.text, "old", &old.text);
        }
        if let Some((name, value)) = flag {
            push_member(&mut self.text, name, if value { "true" } else { "false" });
        }
        self.text.push('}');
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn len(&self) -> usize {
        self.text.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn finish(mut self) -> String {
        self.text.push_str(&self.tail);
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn row(columns: &[(&str, JsonValue<'_>)]) -> RowJson {
        let mut r = RowJson::default();
        r.begin();
        for (name, value) in columns {
            r.push(name, *value);
        }
        r.finish();
        r
    }

    #[test]
    fn a_row_is_a_json_object_in_column_order() {
        let r = row(&[
            ("id", JsonValue::Raw("7")),
            ("name", JsonValue::Text("O\"Brien\n")),
            ("gone", JsonValue::Null),
            ("ok", JsonValue::Raw("true")),
        ]);
        assert_eq!(
            r.text,
            r#"{"id": 7, "name": "O\"Brien\n", "gone": null, "ok": true}"#
        );
        assert_eq!(r.value(1), r#""O\"Brien\n""#);
        assert_eq!(r.value(9), "null");
    }

    #[test]
    fn numbers_json_cannot_hold_become_strings() {
        assert_eq!(number("-12.50"), JsonValue::Raw("-12.50"));
        assert_eq!(number("1e+30"), JsonValue::Raw("1e+30"));
        assert_eq!(number("NaN"), JsonValue::Text("NaN"));
        assert_eq!(number("-Infinity"), JsonValue::Text("-Infinity"));
        assert_eq!(number("Infinity"), JsonValue::Text("Infinity"));
    }

    #[test]
    fn changed_columns_compare_values_not_text_around_them() {
        let columns = ["id", "qty", "note"];
        let old = row(&[
            ("id", JsonValue::Raw("1")),
            ("qty", JsonValue::Raw("3")),
            ("note", JsonValue::Null),
        ]);
        let new = row(&[
            ("id", JsonValue::Raw("1")),
            ("qty", JsonValue::Raw("4")),
            ("note", JsonValue::Text("null")),
        ]);
        let positions = || columns.into_iter().zip(0..);
        assert_eq!(changed_columns(positions(), &old, &new), ["qty", "note"]);
        assert!(changed_columns(positions(), &old, &old).is_empty());
    }

    #[test]
    fn composite_keys_follow_key_order() {
        let r = row(&[
            ("line", JsonValue::Raw("2")),
            ("sku", JsonValue::Text("a\"b")),
            ("order_id", JsonValue::Raw("10")),
        ]);
        assert_eq!(composite_key(&r, &[2, 0]), "[10, 2]");
        assert_eq!(composite_key(&r, &[1, 2]), r#"["a\"b", 10]"#);
    }

    #[test]
    fn event_details_shapes() {
        let old = row(&[("qty", JsonValue::Raw("3"))]);
        let new = row(&[("qty", JsonValue::Raw("4"))]);
        let update: Value = serde_json::from_str(&row_details(
            "public.orders",
            Some(&old),
            Some(&new),
            Some(&["qty"]),
            None,
        ))
        .unwrap();
        assert_eq!(
            update,
            json!({"table": "public.orders", "old": {"qty": 3}, "new": {"qty": 4}, "changed": ["qty"]})
        );
        let moved: Value = serde_json::from_str(&row_details(
            "t",
            Some(&old),
            None,
            None,
            Some(("key_changed", true)),
        ))
        .unwrap();
        assert_eq!(
            moved,
            json!({"table": "t", "old": {"qty": 3}, "key_changed": true})
        );

        // Written as jsonb prints them, so the chain can hash them as written.
        for details in [
            row_details(
                "public.orders",
                Some(&old),
                Some(&new),
                Some(&["qty"]),
                None,
            ),
            row_details("t", Some(&old), None, None, Some(("key_changed", true))),
            row_details("t", None, Some(&new), None, Some(("tenant_changed", true))),
        ] {
            let parsed: Value = serde_json::from_str(&details).unwrap();
            assert_eq!(
                custos_core::ledger::chain::canonical_json_string(&parsed),
                details
            );
        }
        let mut group = GroupDetails::new("t");
        assert!(group.is_empty());
        group.push("1", None, Some(&new), None);
        group.push("2", Some(&old), Some(&new), Some(("key_changed", false)));
        assert_eq!(group.rows(), 2);
        let grouped = group.finish();
        assert_eq!(
            custos_core::ledger::chain::canonical_json_string(
                &serde_json::from_str(&grouped).unwrap()
            ),
            grouped
        );
        let grouped: Value = serde_json::from_str(&grouped).unwrap();
        assert_eq!(
            grouped,
            json!({"table": "t", "rows": [
                {"key": "1", "new": {"qty": 4}},
                {"key": "2", "old": {"qty": 3}, "new": {"qty": 4}, "key_changed": false}
            ]})
        );
    }

    proptest! {
        /// Whatever the column names and text values, a row is valid JSON holding exactly them.
        #[test]
        fn rows_are_always_valid_json(columns in proptest::collection::vec(("\\PC{0,12}", proptest::option::of("\\PC{0,40}")), 0..8)) {
            let mut r = RowJson::default();
            r.begin();
            for (name, value) in &columns {
                r.push(name, value.as_deref().map_or(JsonValue::Null, JsonValue::Text));
            }
            r.finish();
            let parsed: Value = serde_json::from_str(&r.text).unwrap();
            let object = parsed.as_object().unwrap();
            for (name, _) in &columns {
                // Later columns of the same name win, as in jsonb.
                let last = columns.iter().rev().find(|(n, _)| n == name).unwrap();
                prop_assert_eq!(object.get(name).unwrap(), &last.1.as_deref().map_or(Value::Null, |v| Value::String(v.to_string())));
            }
        }
    }
}
