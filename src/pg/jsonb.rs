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
        is_aligned_kind(self.kind)
    }
}

/// Whether children of this JEntry type start 4-aligned (numerics and containers).
fn is_aligned_kind(kind: u32) -> bool {
    kind == pg_sys::JENTRY_ISNUMERIC || kind == pg_sys::JENTRY_ISCONTAINER
}

#[derive(Debug, PartialEq)]
pub struct Malformed;

/// The document is not a JSON object.
#[derive(Debug, PartialEq)]
pub struct NotAnObject;

pub use custos_core::ledger::chain::key_order;

pub use super::varlena::varlena_header_4b;

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
    match entries(container, kind)? {
        Some(entries) => entries.collect::<Result<Vec<_>, _>>().map(Some),
        None => Ok(None),
    }
}

/// [`children`] one at a time, without collecting them.
pub fn entries(container: &[u8], kind: u32) -> Result<Option<Entries<'_>>, Malformed> {
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
    Ok(Some(Entries {
        container,
        data,
        next: 0,
        count: entries,
        end: 0,
    }))
}

/// The children of a container in order, read from its JEntries.
pub struct Entries<'a> {
    container: &'a [u8],
    data: &'a [u8],
    next: usize,
    count: usize,
    /// Where the previous child's data ended.
    end: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Child<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.count {
            return None;
        }
        let entry = match u32_at(self.container, HEADER_LEN + self.next * ENTRY_LEN) {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        self.next += 1;
        let start = self.end;
        let field = (entry & pg_sys::JENTRY_OFFLENMASK) as usize;
        self.end = if entry & pg_sys::JENTRY_HAS_OFF != 0 {
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
        match self.data.get(from..self.end) {
            Some(data) => child.data = data,
            None => return Some(Err(Malformed)),
        }
        Some(Ok(child))
    }
}

/// An object container with these keys and values, laid out as PostgreSQL lays it out. Keys
/// must be jsonb's order (as read from a valid object).
pub fn object(keys: &[Child<'_>], values: &[Child<'_>]) -> Result<Vec<u8>, Malformed> {
    let entries = keys.iter().chain(values).copied();
    container(pg_sys::JB_FOBJECT, keys.len(), 2 * keys.len(), entries)
}

/// A container of `count` members under the header flags `kind`, from its `entries` JEntries'
/// children (an object's keys then values, or an array's elements).
pub fn container<'c>(
    kind: u32,
    count: usize,
    entries: usize,
    children: impl Iterator<Item = Child<'c>> + Clone,
) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::new();
    container_into(&mut out, kind, count, entries, children)?;
    Ok(out)
}

/// A whole jsonb value (varlena header, then the container `write_container` appends), to be
/// used as a datum in place, appended to `out` at the next multiple of 4 (a jsonb datum is
/// 4-aligned when `out`'s buffer is); returns where it starts. On error `out` is left as it was.
pub fn jsonb_varlena_into(
    out: &mut Vec<u8>,
    write_container: impl FnOnce(&mut Vec<u8>) -> Result<(), Malformed>,
) -> Result<usize, Malformed> {
    let before = out.len();
    let start = int_align(before);
    out.resize(start + pg_sys::VARHDRSZ, 0);
    if let Err(e) = write_container(out) {
        out.truncate(before);
        return Err(e);
    }
    let size = out.len() - start;
    out[start..start + pg_sys::VARHDRSZ].copy_from_slice(&varlena_header_4b(size));
    Ok(start)
}

/// [`container`] appended to `out`. Numerics and containers are aligned relative to the data
/// start, as PostgreSQL aligns them (their absolute alignment follows when the container does).
/// On error `out` is left as it was.
pub fn container_into<'c>(
    out: &mut Vec<u8>,
    kind: u32,
    count: usize,
    entries: usize,
    children: impl Iterator<Item = Child<'c>>,
) -> Result<(), Malformed> {
    let mut writer = ContainerWriter::begin(out, kind, count, entries);
    for child in children {
        writer.push(out, child)?;
    }
    writer.finish(out)
}

/// A container being appended to a buffer, one child after another: its header and JEntries
/// are filled in as the children's data is written after them.
pub struct ContainerWriter {
    base: usize,
    data_start: usize,
    entries: usize,
    next: usize,
    /// The end of the data written so far, from the data start.
    end: usize,
}

impl ContainerWriter {
    /// Starts a container of `count` members and `entries` JEntries at the end of `out`.
    pub fn begin(out: &mut Vec<u8>, kind: u32, count: usize, entries: usize) -> Self {
        let base = out.len();
        let data_start = base + HEADER_LEN + entries * ENTRY_LEN;
        out.resize(data_start, 0);
        out[base..base + HEADER_LEN].copy_from_slice(&(count as u32 | kind).to_ne_bytes());
        ContainerWriter {
            base,
            data_start,
            entries,
            next: 0,
            end: 0,
        }
    }

    /// The next child, copied.
    pub fn push(&mut self, out: &mut Vec<u8>, child: Child<'_>) -> Result<(), Malformed> {
        self.push_written(out, child.kind, |out| {
            out.extend_from_slice(child.data);
            Ok(())
        })
    }

    /// The next child, of JEntry type `kind`, its data appended to `out` by `write`.
    pub fn push_written(
        &mut self,
        out: &mut Vec<u8>,
        kind: u32,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), Malformed>,
    ) -> Result<(), Malformed> {
        let written = (|| {
            if self.next == self.entries {
                return Err(Malformed);
            }
            let start = self.end;
            if is_aligned_kind(kind) {
                out.resize(self.data_start + int_align(start), 0);
            }
            write(out)?;
            let end = out.len() - self.data_start;
            if end > pg_sys::JENTRY_OFFLENMASK as usize {
                return Err(Malformed);
            }
            let entry = if self.next.is_multiple_of(pg_sys::JB_OFFSET_STRIDE as usize) {
                kind | end as u32 | pg_sys::JENTRY_HAS_OFF
            } else {
                kind | (end - start) as u32
            };
            let at = self.base + HEADER_LEN + self.next * ENTRY_LEN;
            out[at..at + ENTRY_LEN].copy_from_slice(&entry.to_ne_bytes());
            self.next += 1;
            self.end = end;
            Ok(())
        })();
        if written.is_err() {
            out.truncate(self.base);
        }
        written
    }

    /// Ends the container; every JEntry must have been written.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        if self.next != self.entries {
            out.truncate(self.base);
            return Err(Malformed);
        }
        Ok(())
    }
}

/// The keys of objects that share them, laid out once (header, key JEntries, key bytes): each
/// object is then written with its values only. Capture writes one per changed row.
pub struct ObjectLayout {
    count: usize,
    /// The container as it starts: header, key JEntries, zeroed value JEntries, key bytes.
    start: Vec<u8>,
}

impl ObjectLayout {
    /// `keys` in jsonb's order (shorter first, then bytewise), without duplicates.
    pub fn new<'k>(keys: impl ExactSizeIterator<Item = &'k [u8]>) -> Result<Self, Malformed> {
        let count = keys.len();
        let mut start = Vec::new();
        let mut writer = ContainerWriter::begin(&mut start, pg_sys::JB_FOBJECT, count, 2 * count);
        for key in keys {
            writer.push(
                &mut start,
                Child {
                    kind: pg_sys::JENTRY_ISSTRING,
                    data: key,
                },
            )?;
        }
        Ok(ObjectLayout { count, start })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends the object with `values`, one per key in the keys' order. On error `out` is left
    /// as it was.
    pub fn write<'v>(
        &self,
        out: &mut Vec<u8>,
        values: impl Iterator<Item = Child<'v>>,
    ) -> Result<(), Malformed> {
        let base = out.len();
        out.extend_from_slice(&self.start);
        let data_start = base + HEADER_LEN + 2 * self.count * ENTRY_LEN;
        let mut writer = ContainerWriter {
            base,
            data_start,
            entries: 2 * self.count,
            next: self.count,
            end: out.len() - data_start,
        };
        for value in values {
            writer.push(out, value)?;
        }
        writer.finish(out)
    }
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
            custos_core::ledger::chain::push_json_bytes(key.data, out);
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
        pg_sys::JENTRY_ISSTRING => custos_core::ledger::chain::push_json_bytes(value.data, out),
        pg_sys::JENTRY_ISNUMERIC => push_numeric_text(value.data, out),
        pg_sys::JENTRY_ISCONTAINER => print_container(value.data, out)?,
        _ => return Err(Malformed),
    }
    Ok(())
}

/// A stored numeric as `numeric_out` prints it: in Rust, unless it is NaN or an infinity.
fn push_numeric_text(numeric: &[u8], out: &mut Vec<u8>) {
    if !super::numeric::print_varlena(numeric, out) {
        out.extend_from_slice(&numeric_text(numeric));
    }
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
        let p = d.cast_mut_ptr::<pg_sys::varlena>();
        // SAFETY: as promised by the caller. A jsonb with a plain 4-byte header (as made in
        // memory) is used as it is, without the FFI call; pg_detoast_datum expands the others
        // (short headers included), so the container starts 4-aligned after a 4-byte header.
        unsafe {
            if pgrx::varlena::varatt_is_4b_u(p) {
                Doc(p.cast())
            } else {
                Doc(pg_sys::pg_detoast_datum(p).cast())
            }
        }
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

    /// For an object, the key of its first top-level string value that passes `test` (None when
    /// there is none); Err for any other document. Read in place, nothing collected: the chain
    /// asks this of every event.
    pub fn find_top_level_string<'a>(
        self,
        test: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<&'a [u8]>, NotAnObject> {
        let container = self.container::<'a>();
        let read = |entries: Option<Entries<'a>>| entries.ok_or(NotAnObject);
        let pairs =
            (u32_at(container, 0).unwrap_or_else(|_| malformed()) & pg_sys::JB_CMASK) as usize;
        let all = || entries(container, pg_sys::JB_FOBJECT).unwrap_or_else(|_| malformed());
        let found = read(all())?
            .skip(pairs)
            .map(|value| value.unwrap_or_else(|_| malformed()))
            .position(|value| value.kind == pg_sys::JENTRY_ISSTRING && test(value.data));
        Ok(found.map(|i| {
            // The key of value i is child i.
            let key = read(all()).ok().and_then(|mut keys| keys.nth(i));
            key.and_then(Result::ok).map_or(&[][..], |key| key.data)
        }))
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

    /// Top-level `(key, JSON text)` pairs whose value is an object or an array.
    pub fn container_fields(&self) -> Vec<(String, String)> {
        self.keys()
            .iter()
            .zip(self.values())
            .filter(|(_, v)| v.kind == pg_sys::JENTRY_ISCONTAINER)
            .map(|(k, v)| {
                let mut text = Vec::with_capacity(v.data.len() + 2);
                print_value(*v, &mut text).unwrap_or_else(|_| malformed());
                (
                    String::from_utf8_lossy(k.data).into_owned(),
                    String::from_utf8_lossy(&text).into_owned(),
                )
            })
            .collect()
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
        jsonb_datum(&container)
    }
}

/// The value JSON text stands for (bad JSON raises jsonb's error).
fn parsed_value<'a>(json: &str) -> Child<'a> {
    let parsed = from_json_text(json);
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

/// JSON text as a jsonb datum, byte for byte what `jsonb_in` makes of it, without its cost: the
/// capture trigger makes a document per changed row, and `jsonb_in` builds strings a character
/// at a time and sorts keys through a generic comparator. Numbers still go through
/// `numeric_in`. Anything this parser does not take (bad JSON, deep nesting, `\u0000`, a server
/// encoding other than UTF-8) goes to `jsonb_in`, which accepts it or raises its usual error.
pub fn from_json_text(json: &str) -> pg_sys::Datum {
    from_json_text_printed(json).0
}

/// Like [`from_json_text`], and whether `json` is exactly the text jsonb prints for the result
/// (keys in jsonb's order, jsonb's spacing and escapes, numbers as `numeric_out` writes them), so
/// that a caller who needs that text can use `json` instead of printing the datum.
pub fn from_json_text_printed(json: &str) -> (pg_sys::Datum, bool) {
    // SAFETY: reads the database encoding, fixed for the session.
    let utf8 = unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32;
    let parsed = utf8
        .then(|| {
            let mut parser = Parser {
                text: json.as_bytes(),
                at: 0,
                depth: 0,
                printed: true,
            };
            let value = parser.value().ok()?;
            parser.skip_space();
            let printed = parser.printed;
            (parser.at == json.len()).then_some((value, printed))
        })
        .flatten()
        .and_then(|(value, printed)| Some((value.into_root().ok()?, printed)));
    match parsed {
        Some((container, printed)) => (jsonb_datum(&container), printed),
        None => (jsonb_in(json), false),
    }
}

fn jsonb_in(json: &str) -> pg_sys::Datum {
    let Ok(text) = std::ffi::CString::new(json) else {
        crate::error::raise(
            pgrx::PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            "JSON text contains a NUL byte",
            None,
        )
    };
    // SAFETY: jsonb_in takes a NUL-terminated string and returns a jsonb, or raises.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(text.as_ptr()))],
        )
    }
    .unwrap_or_else(|| malformed())
}

/// A container as a fresh jsonb datum in the current memory context.
pub fn jsonb_datum(container: &[u8]) -> pg_sys::Datum {
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

/// Deeper documents go to jsonb_in, which checks the stack as it recurses.
const MAX_DEPTH: usize = 64;

/// A parsed value: its JEntry type bits and its bytes as stored.
struct Built {
    kind: u32,
    data: Vec<u8>,
}

impl Built {
    fn child(&self) -> Child<'_> {
        Child {
            kind: self.kind,
            data: &self.data,
        }
    }

    /// The value as a document's root: a scalar is stored as a one-element array flagged scalar.
    fn into_root(self) -> Result<Vec<u8>, Malformed> {
        if self.kind == pg_sys::JENTRY_ISCONTAINER {
            return Ok(self.data);
        }
        container(
            pg_sys::JB_FARRAY | pg_sys::JB_FSCALAR,
            1,
            1,
            [self.child()].into_iter(),
        )
    }
}

struct Parser<'t> {
    text: &'t [u8],
    at: usize,
    depth: usize,
    /// Whether the text read so far is exactly as jsonb prints it (see `from_json_text_printed`).
    printed: bool,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        let start = self.at;
        let is_space = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t' | b'\n' | b'\r'));
        // jsonb prints one space after each ',' and ':' between tokens, and no other.
        let after_separator = start > 0 && matches!(self.text[start - 1], b',' | b':');
        if after_separator && self.text.get(start) == Some(&b' ') {
            self.at += 1;
            if !is_space(self.text.get(self.at)) {
                return;
            }
        } else if !is_space(self.text.get(start)) {
            self.printed &= !after_separator;
            return;
        }
        while is_space(self.text.get(self.at)) {
            self.at += 1;
        }
        self.printed = false;
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.text.get(self.at) == Some(&byte);
        self.at += usize::from(found);
        found
    }

    fn literal(&mut self, word: &[u8], kind: u32) -> Result<Built, Malformed> {
        if !self.text[self.at..].starts_with(word) {
            return Err(Malformed);
        }
        self.at += word.len();
        Ok(Built {
            kind,
            data: Vec::new(),
        })
    }

    fn value(&mut self) -> Result<Built, Malformed> {
        self.skip_space();
        match self.text.get(self.at) {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Built {
                kind: pg_sys::JENTRY_ISSTRING,
                data: self.string()?,
            }),
            Some(b't') => self.literal(b"true", pg_sys::JENTRY_ISBOOL_TRUE),
            Some(b'f') => self.literal(b"false", pg_sys::JENTRY_ISBOOL_FALSE),
            Some(b'n') => self.literal(b"null", pg_sys::JENTRY_ISNULL),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Malformed),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Vec<u8>, Malformed>,
    ) -> Result<Built, Malformed> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Malformed);
        }
        self.at += 1;
        let data = parse(self)?;
        self.depth -= 1;
        Ok(Built {
            kind: pg_sys::JENTRY_ISCONTAINER,
            data,
        })
    }

    fn array(&mut self) -> Result<Vec<u8>, Malformed> {
        let mut elements = Vec::new();
        if !self.eat(b']') {
            loop {
                elements.push(self.value()?);
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(Malformed);
                }
            }
        }
        let children: Vec<Child<'_>> = elements.iter().map(Built::child).collect();
        container(
            pg_sys::JB_FARRAY,
            children.len(),
            children.len(),
            children.iter().copied(),
        )
    }

    fn object(&mut self) -> Result<Vec<u8>, Malformed> {
        let mut pairs: Vec<(Vec<u8>, Built)> = Vec::new();
        if !self.eat(b'}') {
            loop {
                self.skip_space();
                if self.text.get(self.at) != Some(&b'"') {
                    return Err(Malformed);
                }
                let key = self.string()?;
                if !self.eat(b':') {
                    return Err(Malformed);
                }
                pairs.push((key, self.value()?));
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(Malformed);
                }
            }
        }
        // jsonb's key order: shorter keys first, then bytewise; of equal keys the last one stays.
        // The sort is stable, so the last of a run of equal keys is the one written last.
        if pairs
            .windows(2)
            .any(|w| key_order(&w[0].0, &w[1].0).is_ge())
        {
            self.printed = false;
        }
        pairs.sort_by(|(a, _), (b, _)| key_order(a, b));
        let mut kept: Vec<&(Vec<u8>, Built)> = Vec::with_capacity(pairs.len());
        for pair in &pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        let keys = kept.iter().map(|(k, _)| Child {
            kind: pg_sys::JENTRY_ISSTRING,
            data: k,
        });
        let values = kept.iter().map(|(_, v)| v.child());
        let children: Vec<Child<'_>> = keys.chain(values).collect();
        container(
            pg_sys::JB_FOBJECT,
            kept.len(),
            children.len(),
            children.iter().copied(),
        )
    }

    /// A string's bytes, unescaped; the parser stands at its opening quote.
    fn string(&mut self) -> Result<Vec<u8>, Malformed> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let start = self.at;
            while let Some(&b) = self.text.get(self.at) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.extend_from_slice(&self.text[start..self.at]);
            match self.text.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let escape = *self.text.get(self.at + 1).ok_or(Malformed)?;
                    self.at += 2;
                    match escape {
                        b'/' => {
                            self.printed = false;
                            out.push(escape);
                        }
                        b'"' | b'\\' => out.push(escape),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0C),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            // jsonb writes \u only for the control characters that have no
                            // short escape, as four lowercase hex digits.
                            let written = self.text.get(self.at..self.at + 4);
                            let c = self.unicode_escape()?;
                            let mut expected = [0u8; 4];
                            let short = matches!(c, '\u{08}' | '\t' | '\n' | '\u{0C}' | '\r');
                            if (c as u32) < 0x20 && !short {
                                let hex = format!("{:04x}", c as u32);
                                expected.copy_from_slice(hex.as_bytes());
                            }
                            if (c as u32) >= 0x20 || short || written != Some(&expected[..]) {
                                self.printed = false;
                            }
                            let mut buf = [0; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(Malformed),
                    }
                }
                // Control characters must be escaped; the end of the text ends no string.
                _ => return Err(Malformed),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let digits = self.text.get(self.at..self.at + 4).ok_or(Malformed)?;
        let text = std::str::from_utf8(digits).map_err(|_| Malformed)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Malformed);
        }
        self.at += 4;
        u32::from_str_radix(text, 16).map_err(|_| Malformed)
    }

    /// `\uXXXX` (the parser stands after the `u`), with a following low surrogate when it is a
    /// high one. `\u0000` and lone surrogates go to jsonb_in, which refuses them.
    fn unicode_escape(&mut self) -> Result<char, Malformed> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.text[self.at..].starts_with(b"\\u") {
                    return Err(Malformed);
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(Malformed);
                }
                0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
            }
            0 | 0xDC00..=0xDFFF => return Err(Malformed),
            _ => first,
        };
        char::from_u32(code).ok_or(Malformed)
    }

    /// A number as JSON writes it, stored as `numeric_in` makes it.
    fn number(&mut self) -> Result<Built, Malformed> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while p.text.get(p.at).is_some_and(u8::is_ascii_digit) {
                p.at += 1;
            }
            p.at - from
        };
        self.at += usize::from(self.text[self.at] == b'-');
        let integer = digits(self);
        if integer == 0 || (integer > 1 && self.text[self.at - integer] == b'0') {
            return Err(Malformed);
        }
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(Malformed);
            }
        }
        // numeric_out writes no exponent, and no sign on zero.
        let mantissa = &self.text[start..self.at];
        if mantissa[0] == b'-' && mantissa[1..].iter().all(|&b| b == b'0' || b == b'.') {
            self.printed = false;
        }
        if matches!(self.text.get(self.at), Some(b'e' | b'E')) {
            self.printed = false;
            self.at += 1;
            if matches!(self.text.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(Malformed);
            }
        }
        let text = std::ffi::CString::new(&self.text[start..self.at]).map_err(|_| Malformed)?;
        // SAFETY: numeric_in takes a NUL-terminated string, a type OID and a typmod; it returns a
        // numeric with a 4-byte header, as jsonb stores it.
        let data = unsafe {
            let numeric = pgrx::direct_function_call_as_datum(
                pg_sys::numeric_in,
                &[
                    Some(pg_sys::Datum::from(text.as_ptr())),
                    Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                    Some(pg_sys::Datum::from(-1i32)),
                ],
            )
            .ok_or(Malformed)?;
            let ptr = numeric.cast_mut_ptr::<pg_sys::varlena>();
            std::slice::from_raw_parts(ptr.cast::<u8>(), pgrx::varlena::varsize_any(ptr)).to_vec()
        };
        Ok(Built {
            kind: pg_sys::JENTRY_ISNUMERIC,
            data,
        })
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
    fn varlena_headers_are_what_set_varsize_4b_writes() {
        for len in [4usize, 5, 123, 65_536, 0x3FFF_FFFF] {
            let mut aligned = [0u32; 1];
            // SAFETY: a 4-aligned, 4-byte buffer.
            unsafe { pgrx::varlena::set_varsize_4b(aligned.as_mut_ptr().cast(), len as i32) };
            assert_eq!(aligned[0].to_ne_bytes(), varlena_header_4b(len), "{len}");
        }
    }

    #[test]
    fn laid_out_objects_are_the_objects_object_makes() {
        let numeric = [9u8, 0, 0, 0, 1, 2];
        for n in [0usize, 1, 5, 31, 32, 33, 40] {
            let names: Vec<String> = (0..n).map(|i| format!("k{i:02}")).collect();
            let keys: Vec<_> = names.iter().map(|k| string(k)).collect();
            let values: Vec<_> = (0..n)
                .map(|i| match i % 3 {
                    0 => string(&names[i][..1 + i % 3]),
                    1 => Child {
                        kind: pg_sys::JENTRY_ISNUMERIC,
                        data: &numeric,
                    },
                    _ => Child {
                        kind: pg_sys::JENTRY_ISNULL,
                        data: &[],
                    },
                })
                .collect();
            let layout = ObjectLayout::new(names.iter().map(String::as_bytes)).unwrap();
            assert_eq!(layout.len(), n);
            // Written after other bytes, as in a buffer of several documents.
            let mut out = vec![7u8; 4];
            layout.write(&mut out, values.iter().copied()).unwrap();
            assert_eq!(out[4..], object(&keys, &values).unwrap()[..], "{n} keys");
            // One value too few or too many leaves the buffer as it was.
            if n > 0 {
                let mut out = vec![7u8; 4];
                assert!(layout.write(&mut out, values[1..].iter().copied()).is_err());
                assert_eq!(out, [7u8; 4]);
            }
            let mut out = vec![7u8; 4];
            let extra = values.iter().copied().chain([string("x")]);
            assert!(layout.write(&mut out, extra).is_err());
            assert_eq!(out, [7u8; 4]);
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

    /// The stored bytes of what custos' parser makes of JSON text.
    #[pg_extern]
    fn jsonb_test_parsed_bytes(json: &str) -> Vec<u8> {
        // SAFETY: from_json_text returns a jsonb datum.
        unsafe { Doc::of(super::from_json_text(json)) }
            .container()
            .to_vec()
    }

    /// Whether custos' parser takes JSON text to be exactly what jsonb prints for it.
    #[pg_extern]
    fn jsonb_test_parsed_is_printed(json: &str) -> bool {
        super::from_json_text_printed(json).1
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

    /// Edge cases of JSON text: whitespace, escapes (surrogate pairs included), duplicate keys,
    /// key order by length, numbers of every form, nesting, top-level scalars.
    const TEXTS: &str = "SELECT unnest(ARRAY[
        '{}', '[]', ' { } ', '\"\"', 'null', 'true', 'false', '0', '-0', '-0.0', '1e-20', '1E+3', '2.50',
        '12345678901234567890.1234567890', '[[], {}, [[]], {\"a\": {}}]', '[1, [2, [3, [4]]]]',
        '\"tab\\f\\tnul\\u0001 \\u001f \\u00e9 \\ud83d\\ude00 \\/ é ☃ 😀\"',
        '{\"b\": 1, \"a\": 2, \"b\": 3, \"aa\": [true, null], \"\": \"empty\", \"a\": {\"z\": 1, \"z\": 2}}',
        '{\"table\": \"public.orders\", \"new\": {\"id\": 7, \"amount\": 42.50, \"status\": \"open\"}}',
        ' \n\t[ 1 , \"x\" ,\r{ \"k\" : false } ] ']) AS t";

    #[pg_test]
    fn parsed_text_is_stored_exactly_as_jsonb_in_stores_it() {
        let mismatches = Spi::get_one::<i64>(&format!(
            "WITH texts AS ({TEXTS} UNION ALL SELECT doc::text FROM ({DOCS}) d)
             SELECT count(*) FROM texts WHERE tests.jsonb_test_parsed_bytes(t) IS DISTINCT FROM tests.jsonb_test_bytes(t::jsonb)"
        ));
        assert_eq!(mismatches, Ok(Some(0)));
    }

    /// The chain hashes capture's text as written when the parser says jsonb prints it so: the
    /// claim must hold exactly, and hold for whatever jsonb itself printed.
    #[pg_test]
    fn the_parser_knows_when_text_is_as_jsonb_prints_it() {
        let wrong = Spi::get_one::<i64>(&format!(
            "WITH texts AS ({TEXTS} UNION ALL SELECT doc::text FROM ({DOCS}) d
                 UNION ALL SELECT unnest(ARRAY['[1,2]', '[1, 2]', '[1,  2]', '{{\"a\":1}}', '{{\"a\": 1}}', '{{\"b\": 1, \"a\": 2}}',
                     '{{\"a\": 1, \"a\": 2}}', '{{\"b\": 1, \"aa\": 2}}', '{{\"aa\": 1, \"b\": 2}}', '1.0', '-1.50', '-0.5', '1e2', '-0.00',
                     '\"\\u00e9\"', '\"\\u001F\"', '\"\\u001f\"', '\"\\u0008\"', '\"\\b\\f\\n\\r\\t\\\"\\\\\"', '\"a\\/b\"',
                     ' 1', '1 ', '{{\"new\": {{\"id\": 1, \"amount\": 2.50}}, \"table\": \"public.t\"}}'])
                 UNION ALL SELECT jsonb_build_object('new', jsonb_build_object('id', g, 'qty', g * 1.5, 'note', E'a\tb'),
                                                     'table', 'public.t', 'changed', jsonb_build_array('qty'))::text
                   FROM generate_series(-5, 5) g)
             SELECT count(*) FROM texts WHERE tests.jsonb_test_parsed_is_printed(t) IS DISTINCT FROM (t = t::jsonb::text)"
        ));
        assert_eq!(wrong, Ok(Some(0)));
    }

    #[pg_test]
    fn text_the_parser_does_not_take_gets_jsonb_in_s_answer() {
        // Deep nesting and what jsonb accepts that the fast path leaves to it.
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let same = Spi::get_one::<bool>(&format!(
            "SELECT tests.jsonb_test_parsed_bytes('{deep}') = tests.jsonb_test_bytes('{deep}'::jsonb)"
        ));
        assert_eq!(same, Ok(Some(true)));
        for bad in [
            "{\"a\": }",
            "[1,]",
            "01",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "tru",
            "{\"a\" 1}",
            "[1] x",
        ] {
            let ours = PgTryBuilder::new(|| Some(tests_parse_error(bad)))
                .catch_others(|e| match e {
                    pg_sys::panic::CaughtError::PostgresError(r) => Some(r.message().to_string()),
                    _ => None,
                })
                .execute();
            let theirs =
                Spi::get_one::<String>(&format!("SELECT tests.jsonb_in_error($j${bad}$j$)"));
            assert_eq!(ours, theirs.ok().flatten(), "{bad}");
        }
    }

    fn tests_parse_error(json: &str) -> String {
        super::from_json_text(json);
        String::from("accepted")
    }

    /// The message jsonb_in raises for `json`, or "accepted".
    #[pg_extern]
    fn jsonb_in_error(json: &str) -> String {
        PgTryBuilder::new(|| {
            super::jsonb_in(json);
            String::from("accepted")
        })
        .catch_others(|e| match e {
            pg_sys::panic::CaughtError::PostgresError(r) => r.message().to_string(),
            _ => String::from("other"),
        })
        .execute()
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
