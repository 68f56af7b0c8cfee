//! jsonb read and rewritten in its binary form. Going through serde would print the whole
//! document and parse it back (twice, to store it again); going through PostgreSQL's iterator
//! costs a guarded FFI call per token. The ledger seals and opens top-level values of `details`
//! on every insert and read, so the top level of an object is handled here in plain Rust over
//! the stored bytes, following PostgreSQL's on-disk format (src/include/utils/jsonb.h): a
//! header, one JEntry per key then per value, then their data. Nested containers and numerics are
//! copied as they are.

use pgrx::pg_sys;
use std::ffi::CStr;

const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 4;

/// One child of a container as stored: its JEntry type bits and its bytes (alignment padding
/// before numerics and containers removed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Child<'a> {
    pub kind: u32,
    pub data: &'a [u8],
}

impl Child<'_> {
    fn is_aligned_kind(&self) -> bool {
        self.kind == pg_sys::JENTRY_ISNUMERIC || self.kind == pg_sys::JENTRY_ISCONTAINER
    }
}

#[derive(Debug, PartialEq)]
pub struct Malformed;

fn int_align(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, Malformed> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(Malformed)
}

/// The children of a container (for an object: keys, then values), or None when the
/// container's header says it is not of the wanted kind (`JB_FOBJECT`, `JB_FARRAY`).
pub fn children(container: &[u8], kind: u32) -> Result<Option<Vec<Child<'_>>>, Malformed> {
    let header = u32_at(container, 0)?;
    if header & kind == 0 {
        return Ok(None);
    }
    let count = (header & pg_sys::JB_CMASK) as usize;
    let entries = if kind == pg_sys::JB_FOBJECT {
        count * 2
    } else {
        count
    };
    let data_start = HEADER_LEN + entries * ENTRY_LEN;
    let data = container.get(data_start..).ok_or(Malformed)?;
    let mut out = Vec::with_capacity(entries);
    let mut end = 0usize;
    for i in 0..entries {
        let entry = u32_at(container, HEADER_LEN + i * ENTRY_LEN)?;
        let start = end;
        let field = (entry & pg_sys::JENTRY_OFFLENMASK) as usize;
        end = if entry & pg_sys::JENTRY_HAS_OFF != 0 {
            field
        } else {
            start + field
        };
        let mut child = Child {
            kind: entry & pg_sys::JENTRY_TYPEMASK,
            data: &[],
        };
        let from = if child.is_aligned_kind() {
            int_align(start)
        } else {
            start
        };
        child.data = data.get(from..end).ok_or(Malformed)?;
        out.push(child);
    }
    Ok(Some(out))
}

/// An object container with these keys and values, laid out as PostgreSQL lays it out. Keys
/// must be jsonb's order (as read from a valid object).
pub fn object(keys: &[Child<'_>], values: &[Child<'_>]) -> Result<Vec<u8>, Malformed> {
    let n = keys.len();
    let data_start = HEADER_LEN + 2 * n * ENTRY_LEN;
    let data_len: usize = keys.iter().chain(values).map(|c| c.data.len() + 3).sum();
    let mut out = Vec::with_capacity(data_start + data_len);
    out.resize(data_start, 0);
    out[..4].copy_from_slice(&(n as u32 | pg_sys::JB_FOBJECT).to_ne_bytes());
    let mut end = 0usize;
    for (i, child) in keys.iter().chain(values).enumerate() {
        let start = end;
        if child.is_aligned_kind() {
            // Aligned relative to the data start, which sits at a multiple of 4 in the datum.
            out.resize(data_start + int_align(start), 0);
        }
        out.extend_from_slice(child.data);
        end = out.len() - data_start;
        if end > pg_sys::JENTRY_OFFLENMASK as usize {
            return Err(Malformed);
        }
        let entry = if i % pg_sys::JB_OFFSET_STRIDE as usize == 0 {
            child.kind | end as u32 | pg_sys::JENTRY_HAS_OFF
        } else {
            child.kind | (end - start) as u32
        };
        let at = HEADER_LEN + i * ENTRY_LEN;
        out[at..at + ENTRY_LEN].copy_from_slice(&entry.to_ne_bytes());
    }
    Ok(out)
}

fn malformed() -> ! {
    crate::error::raise(
        pgrx::PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        "a jsonb value is not laid out as PostgreSQL stores jsonb",
        None,
    )
}

/// Appends a container as `jsonb_out` prints it: `", "` between members and elements, `": "`
/// after keys, a top-level scalar bare.
pub fn print_container(container: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let header = u32_at(container, 0)?;
    if header & pg_sys::JB_FOBJECT != 0 {
        let children = children(container, pg_sys::JB_FOBJECT)?.ok_or(Malformed)?;
        let (keys, values) = children.split_at(children.len() / 2);
        out.push(b'{');
        for (i, (key, value)) in keys.iter().zip(values).enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            escape_json(key.data, out);
            out.extend_from_slice(b": ");
            print_value(*value, out)?;
        }
        out.push(b'}');
    } else {
        let elements = children(container, pg_sys::JB_FARRAY)?.ok_or(Malformed)?;
        if header & pg_sys::JB_FSCALAR != 0 {
            return print_value(*elements.first().ok_or(Malformed)?, out);
        }
        out.push(b'[');
        for (i, element) in elements.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            print_value(*element, out)?;
        }
        out.push(b']');
    }
    Ok(())
}

fn print_value(value: Child<'_>, out: &mut Vec<u8>) -> Result<(), Malformed> {
    match value.kind {
        pg_sys::JENTRY_ISNULL => out.extend_from_slice(b"null"),
        pg_sys::JENTRY_ISBOOL_TRUE => out.extend_from_slice(b"true"),
        pg_sys::JENTRY_ISBOOL_FALSE => out.extend_from_slice(b"false"),
        pg_sys::JENTRY_ISSTRING => escape_json(value.data, out),
        pg_sys::JENTRY_ISNUMERIC => out.extend_from_slice(&numeric_text(value.data)),
        pg_sys::JENTRY_ISCONTAINER => print_container(value.data, out)?,
        _ => return Err(Malformed),
    }
    Ok(())
}

/// A string as PostgreSQL's `escape_json` writes it: quoted, `\"`, `\\`, `\b \f \n \r \t`,
/// other bytes below 0x20 as `\u00xx`, everything else (UTF-8 included) as is. Runs that need no
/// escaping are copied whole.
pub fn escape_json(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut plain_from = 0;
    for (i, &b) in text.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&text[plain_from..i]);
        plain_from = i + 1;
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.extend_from_slice(escaped);
        }
    }
    out.extend_from_slice(&text[plain_from..]);
    out.push(b'"');
}

/// A stored numeric as `numeric_out` prints it.
fn numeric_text(numeric: &[u8]) -> Vec<u8> {
    // SAFETY: `numeric` is a numeric varlena inside a jsonb container, 4-aligned as jsonb stores
    // numerics; numeric_out reads it (detoasting a short header itself) and returns a palloc'd
    // C string.
    unsafe {
        pgrx::direct_function_call::<&CStr>(
            pg_sys::numeric_out,
            &[Some(pg_sys::Datum::from(numeric.as_ptr()))],
        )
        .map(|text| text.to_bytes().to_vec())
        .unwrap_or_default()
    }
}

/// A detoasted jsonb value, valid in the current memory context.
#[derive(Clone, Copy)]
pub struct Doc(*mut pg_sys::Jsonb);

/// What [`Doc::with_values`] puts under a top-level key.
pub enum NewValue<'a> {
    /// A JSON string with this text.
    Text(&'a str),
    /// The value a piece of JSON text (parsed by jsonb's input function) stands for.
    Json(&'a str),
    Null,
}

impl Doc {
    /// # Safety
    /// `d` must be a non-null jsonb datum.
    pub unsafe fn of(d: pg_sys::Datum) -> Doc {
        // SAFETY: as promised by the caller; pg_detoast_datum also expands short headers, so the
        // container starts 4-aligned right after a 4-byte header.
        Doc(unsafe { pg_sys::pg_detoast_datum(d.cast_mut_ptr()) }.cast())
    }

    fn root(self) -> *mut pg_sys::JsonbContainer {
        // SAFETY: self.0 points at a detoasted Jsonb; root is its first field after the header.
        unsafe { std::ptr::addr_of_mut!((*self.0).root) }
    }

    fn container<'a>(self) -> &'a [u8] {
        // SAFETY: a detoasted Jsonb of VARSIZE bytes, living in the current memory context.
        unsafe {
            let len = pgrx::varlena::varsize_any(self.0.cast()) - pg_sys::VARHDRSZ;
            std::slice::from_raw_parts(self.root().cast::<u8>(), len)
        }
    }

    /// The top level of the document when it is an object, read once for several lookups.
    pub fn object<'a>(self) -> Option<Object<'a>> {
        let children =
            children(self.container(), pg_sys::JB_FOBJECT).unwrap_or_else(|_| malformed())?;
        Some(Object {
            doc: self,
            pairs: children.len() / 2,
            children,
        })
    }

    /// The document exactly as jsonb's output function prints it (the ledger hashes this text),
    /// in the current memory context. Printed here rather than by `JsonbToCString`, which
    /// appends escaped strings a character at a time; numbers still go through `numeric_out`.
    pub fn text<'a>(self) -> &'a [u8] {
        let container = self.container();
        let mut out = Vec::with_capacity(container.len() + container.len() / 4 + 16);
        print_container(container, &mut out).unwrap_or_else(|_| malformed());
        // SAFETY: a fresh palloc of out.len() bytes (at least one), filled from out.
        unsafe {
            let copy = pg_sys::palloc(out.len().max(1)).cast::<u8>();
            std::ptr::copy_nonoverlapping(out.as_ptr(), copy, out.len());
            std::slice::from_raw_parts(copy, out.len())
        }
    }
}

/// The top level of a jsonb object: its keys and values as stored.
pub struct Object<'a> {
    doc: Doc,
    /// Keys, then values.
    children: Vec<Child<'a>>,
    pairs: usize,
}

impl<'a> Object<'a> {
    fn keys(&self) -> &[Child<'a>] {
        &self.children[..self.pairs]
    }

    fn values(&self) -> &[Child<'a>] {
        &self.children[self.pairs..]
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.keys().iter().position(|k| k.data == key.as_bytes())
    }

    /// The JSON text of the value under top-level `key`; None when the document is not an object,
    /// has no such key, or holds JSON null there.
    pub fn field_text(&self, key: &str) -> Option<String> {
        let value = self.values()[self.position(key)?];
        if value.kind == pg_sys::JENTRY_ISNULL {
            return None;
        }
        let mut text = Vec::with_capacity(value.data.len() + 2);
        print_value(value, &mut text).unwrap_or_else(|_| malformed());
        Some(String::from_utf8_lossy(&text).into_owned())
    }

    /// Top-level `(key, string value)` pairs of an object whose string value passes `keep`.
    pub fn top_level_strings(&self, keep: impl Fn(&[u8]) -> bool) -> Vec<(String, String)> {
        self.keys()
            .iter()
            .zip(self.values())
            .filter(|(_, v)| v.kind == pg_sys::JENTRY_ISSTRING && keep(v.data))
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k.data).into_owned(),
                    String::from_utf8_lossy(v.data).into_owned(),
                )
            })
            .collect()
    }

    /// The object with the values of existing top-level keys replaced (absent keys are not
    /// added), as a new jsonb datum.
    pub fn with_values(&self, replace: &[(&str, NewValue<'_>)]) -> pg_sys::Datum {
        let mut values = self.values().to_vec();
        let mut replaced = false;
        for (key, new) in replace {
            if let Some(at) = self.position(key) {
                replaced = true;
                values[at] = match new {
                    NewValue::Null => Child {
                        kind: pg_sys::JENTRY_ISNULL,
                        data: &[],
                    },
                    NewValue::Text(text) => Child {
                        kind: pg_sys::JENTRY_ISSTRING,
                        data: text.as_bytes(),
                    },
                    NewValue::Json(json) => parsed_value(json),
                };
            }
        }
        if !replaced {
            return pg_sys::Datum::from(self.doc.0);
        }
        let container = object(self.keys(), &values).unwrap_or_else(|_| {
            crate::error::raise(
                pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "the jsonb document would exceed jsonb's size limit",
                None,
            )
        });
        // SAFETY: a fresh palloc of header + container, the varlena header set to its size.
        unsafe {
            let size = pg_sys::VARHDRSZ + container.len();
            let out = pg_sys::palloc(size).cast::<u8>();
            pgrx::varlena::set_varsize_4b(out.cast(), size as i32);
            std::ptr::copy_nonoverlapping(
                container.as_ptr(),
                out.add(pg_sys::VARHDRSZ),
                container.len(),
            );
            pg_sys::Datum::from(out)
        }
    }
}

/// The value JSON text stands for, parsed by jsonb's input function (which raises on bad JSON).
fn parsed_value<'a>(json: &str) -> Child<'a> {
    let text = std::ffi::CString::new(json).unwrap_or_default();
    // SAFETY: jsonb_in takes a NUL-terminated string and returns a fresh jsonb (never NULL for a
    // non-NULL input).
    let Some(parsed) = (unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(text.as_ptr()))],
        )
    }) else {
        return Child {
            kind: pg_sys::JENTRY_ISNULL,
            data: &[],
        };
    };
    // SAFETY: a jsonb datum just made.
    let container = unsafe { Doc::of(parsed) }.container();
    let header = u32_at(container, 0).unwrap_or_else(|_| malformed());
    if header & pg_sys::JB_FSCALAR != 0 {
        // A scalar is stored as a one-element array flagged as scalar.
        let only = children(container, pg_sys::JB_FARRAY).unwrap_or_else(|_| malformed());
        return only
            .and_then(|c| c.first().copied())
            .unwrap_or_else(|| malformed());
    }
    Child {
        kind: pg_sys::JENTRY_ISCONTAINER,
        data: container,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn string(s: &str) -> Child<'_> {
        Child {
            kind: pg_sys::JENTRY_ISSTRING,
            data: s.as_bytes(),
        }
    }

    #[test]
    fn objects_read_back_as_written() {
        let numeric = Child {
            kind: pg_sys::JENTRY_ISNUMERIC,
            data: &[9, 0, 0, 0, 1, 2],
        };
        let keys = [string("a"), string("bb"), string("ccc")];
        let values = [string("x"), numeric, string("yz")];
        let bytes = object(&keys, &values).unwrap();
        let read = children(&bytes, pg_sys::JB_FOBJECT).unwrap().unwrap();
        assert_eq!(read[..3], keys);
        assert_eq!(read[3..], values);
        assert_eq!(children(&bytes, pg_sys::JB_FARRAY).unwrap(), None);
    }

    #[test]
    fn every_32nd_entry_holds_an_offset() {
        let names: Vec<String> = (0..40).map(|i| format!("key{i:02}")).collect();
        let keys: Vec<_> = names.iter().map(|n| string(n)).collect();
        let values: Vec<_> = names.iter().map(|n| string(n)).collect();
        let bytes = object(&keys, &values).unwrap();
        let entry = |i: usize| u32::from_ne_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap());
        for i in 0..80 {
            assert_eq!(
                entry(i) & pg_sys::JENTRY_HAS_OFF != 0,
                i % 32 == 0,
                "entry {i}"
            );
        }
        let read = children(&bytes, pg_sys::JB_FOBJECT).unwrap().unwrap();
        assert_eq!(read[..40], keys[..]);
        assert_eq!(read[40..], values[..]);
    }

    #[test]
    fn truncated_containers_are_malformed() {
        let bytes = object(&[string("a")], &[string("value")]).unwrap();
        assert_eq!(
            children(&bytes[..bytes.len() - 1], pg_sys::JB_FOBJECT),
            Err(Malformed)
        );
        assert_eq!(children(&bytes[..3], pg_sys::JB_FOBJECT), Err(Malformed));
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{Doc, NewValue};
    use pgrx::prelude::*;
    use pgrx::AnyElement;

    fn stored(doc: &AnyElement) -> Vec<u8> {
        // SAFETY: called with jsonb arguments only (the tests below).
        unsafe { Doc::of(doc.datum()) }.container().to_vec()
    }

    /// The stored bytes of a jsonb value.
    #[pg_extern]
    fn jsonb_test_bytes(doc: AnyElement) -> Vec<u8> {
        stored(&doc)
    }

    /// The stored bytes of `doc` with top-level `key` set as custos sets it: `json` is JSON
    /// text unless `as_text`.
    #[pg_extern]
    fn jsonb_test_with_value(
        doc: AnyElement,
        key: &str,
        value: Option<&str>,
        as_text: bool,
    ) -> Vec<u8> {
        let new = match value {
            None => NewValue::Null,
            Some(v) if as_text => NewValue::Text(v),
            Some(v) => NewValue::Json(v),
        };
        // SAFETY: a jsonb argument.
        let doc = unsafe { Doc::of(doc.datum()) };
        let out = match doc.object() {
            Some(object) => object.with_values(&[(key, new)]),
            None => pg_sys::Datum::from(doc.0),
        };
        // SAFETY: with_values returns a jsonb datum.
        unsafe { Doc::of(out) }.container().to_vec()
    }

    #[pg_extern]
    fn jsonb_test_text(doc: AnyElement) -> String {
        // SAFETY: a jsonb argument.
        String::from_utf8_lossy(unsafe { Doc::of(doc.datum()) }.text()).into_owned()
    }

    #[pg_extern]
    fn jsonb_test_field_text(doc: AnyElement, key: &str) -> Option<String> {
        // SAFETY: a jsonb argument.
        unsafe { Doc::of(doc.datum()) }
            .object()
            .and_then(|o| o.field_text(key))
    }

    /// Documents of 1 to 70 keys (past the 32-entry offset stride) mixing every kind of value,
    /// numerics of every length (alignment), nested containers, unicode and escapes.
    const DOCS: &str = "
        SELECT n, jsonb_object_agg('k' || lpad(i::text, 2, '0'),
            CASE i % 8 WHEN 0 THEN to_jsonb(i * 1.5) WHEN 1 THEN to_jsonb('s' || repeat('x', i) || E'\"\\n\\u00e9')
                       WHEN 2 THEN jsonb_build_object('n', i, 'a', jsonb_build_array(i, 'y', true, 2.25))
                       WHEN 3 THEN 'null'::jsonb WHEN 4 THEN to_jsonb(i % 2 = 0) WHEN 5 THEN to_jsonb(i % 3 = 0)
                       WHEN 6 THEN to_jsonb(repeat('9', i)::numeric / 7) ELSE jsonb_build_array() END) AS doc
          FROM generate_series(1, 70) n, generate_series(1, n) i GROUP BY n";

    #[pg_test]
    fn replaced_values_are_laid_out_as_jsonb_concatenation_does() {
        let mismatches = Spi::get_one::<i64>(&format!(
            "WITH docs AS ({DOCS}), cases AS (
               SELECT d.n, d.doc, 'k' || lpad(r::text, 2, '0') AS key, v.value, v.as_text
                 FROM docs d, generate_series(1, d.n, 3) r,
                      (VALUES ('enc1.abc', true), (E'a \"quoted\" \\u00e9 value', true),
                              ('{{\"x\": [1, 2.5, {{\"y\": null}}]}}', false), ('12345678901234567890.5', false),
                              ('\"text\"', false), ('true', false), (NULL, false)) v(value, as_text))
             SELECT count(*) FROM cases
              WHERE tests.jsonb_test_with_value(doc, key, value, as_text)
                    IS DISTINCT FROM tests.jsonb_test_bytes(doc || jsonb_build_object(key,
                        CASE WHEN as_text THEN to_jsonb(value) ELSE value::jsonb END))"
        ));
        assert_eq!(mismatches, Ok(Some(0)));
    }

    #[pg_test]
    fn absent_keys_and_non_objects_are_left_as_they_are() {
        let same = Spi::get_one::<bool>(
            "SELECT tests.jsonb_test_with_value('{\"a\": 1}'::jsonb, 'b', 'x', true) = tests.jsonb_test_bytes('{\"a\": 1}'::jsonb)
                AND tests.jsonb_test_with_value('[1, 2]'::jsonb, 'a', 'x', true) = tests.jsonb_test_bytes('[1, 2]'::jsonb)
                AND tests.jsonb_test_with_value('\"s\"'::jsonb, 'a', 'x', true) = tests.jsonb_test_bytes('\"s\"'::jsonb)",
        );
        assert_eq!(same, Ok(Some(true)));
    }

    #[pg_test]
    fn documents_print_exactly_as_jsonb_out_prints_them() {
        let mismatches = Spi::get_one::<i64>(&format!(
            "WITH docs AS ({DOCS}
                          UNION ALL SELECT 0, d FROM unnest(ARRAY['{{}}', '[]', '\"\"', 'null', 'true', '0', '-0.0', '1e-20',
                              '12345678901234567890.1234567890', '[[], {{}}, [[]], {{\"a\": {{}}}}]', '\"tab\\f\\tnul\\u0001 \\u001f é ☃ 😀\"',
                              '{{\"\": 1, \"a\\\"b\": [null, false, -1.5e3]}}']::jsonb[]) d)
             SELECT count(*) FROM docs WHERE tests.jsonb_test_text(doc) IS DISTINCT FROM doc::text"
        ));
        assert_eq!(mismatches, Ok(Some(0)));
    }

    #[pg_test]
    fn field_text_is_the_value_as_jsonb_prints_it() {
        let mismatches = Spi::get_one::<i64>(&format!(
            "WITH docs AS ({DOCS})
             SELECT count(*) FROM docs d, generate_series(0, d.n + 1) r, LATERAL (SELECT 'k' || lpad(r::text, 2, '0') AS key) k
              WHERE tests.jsonb_test_field_text(d.doc, k.key) IS DISTINCT FROM nullif((d.doc -> k.key)::text, 'null')"
        ));
        assert_eq!(mismatches, Ok(Some(0)));
    }
}
