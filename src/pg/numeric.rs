//! PostgreSQL's `numeric` in its stored form (src/backend/utils/adt/numeric.c), read and written
//! in plain Rust. Capture prints every numeric column of every changed row and stores every
//! integer column as a jsonb number; the ledger prints the numbers of `details` on every insert
//! and every verification. Through `numeric_out` and `int8_numeric` each value costs a guarded
//! FFI call and a palloc, more than the arithmetic itself. Pure functions, checked against
//! PostgreSQL's own in pg_tests.

use super::varlena::varlena_header_4b;
use pgrx::pg_sys;

const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SPECIAL: u16 = 0xC000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_DSCALE_MASK: u16 = 0x1F80;
const NUMERIC_SHORT_DSCALE_SHIFT: u16 = 7;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;

/// Appends `value` as the numeric `int8_numeric` makes of it, with a 4-byte varlena header, as
/// jsonb stores a number: the short format (scale 0), base-10000 digits most significant first,
/// leading and trailing zero digits dropped (the weight keeps the magnitude), zero with no digits.
pub fn push_integer(value: i64, out: &mut Vec<u8>) {
    // Least significant first; |i64::MIN| has 19 decimal digits, so 5 base-10000 digits.
    let mut digits = [0u16; 5];
    let mut count = 0;
    let mut rest = value.unsigned_abs();
    while rest > 0 {
        digits[count] = (rest % 10_000) as u16;
        rest /= 10_000;
        count += 1;
    }
    let weight = count.saturating_sub(1) as u16;
    let trailing_zeros = digits[..count].iter().take_while(|&&d| d == 0).count();
    let kept = &digits[trailing_zeros..count];
    let sign = if value < 0 {
        NUMERIC_SHORT_SIGN_MASK
    } else {
        0
    };
    let header = NUMERIC_SHORT | sign | (weight & NUMERIC_SHORT_WEIGHT_MASK);
    out.extend_from_slice(&varlena_header_4b(pg_sys::VARHDRSZ + 2 + 2 * kept.len()));
    out.extend_from_slice(&header.to_ne_bytes());
    for digit in kept.iter().rev() {
        out.extend_from_slice(&digit.to_ne_bytes());
    }
}

/// Appends a numeric as `numeric_out` prints it, from its bytes after the varlena header; false
/// (nothing appended) for NaN and the infinities, which have no digits, or bytes that are not a
/// numeric.
pub fn print(body: &[u8], out: &mut Vec<u8>) -> bool {
    let word = |i: usize| -> Option<u16> {
        body.get(2 * i..2 * i + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let Some(header) = word(0) else {
        return false;
    };
    let (negative, scale, weight, first_digit) = match header & NUMERIC_SIGN_MASK {
        NUMERIC_SPECIAL => return false,
        NUMERIC_SHORT => {
            let magnitude = i32::from(header & NUMERIC_SHORT_WEIGHT_MASK);
            let weight = if header & NUMERIC_SHORT_WEIGHT_SIGN_MASK != 0 {
                magnitude - 64
            } else {
                magnitude
            };
            let scale = (header & NUMERIC_SHORT_DSCALE_MASK) >> NUMERIC_SHORT_DSCALE_SHIFT;
            (header & NUMERIC_SHORT_SIGN_MASK != 0, scale, weight, 1)
        }
        sign => {
            let Some(weight) = word(1) else {
                return false;
            };
            (
                sign == NUMERIC_NEG,
                header & NUMERIC_DSCALE_MASK,
                i32::from(weight as i16),
                2,
            )
        }
    };
    if !body.len().is_multiple_of(2) {
        return false;
    }
    let count = body.len() / 2 - first_digit;
    // Digit `d` stands at base-10000 position `weight - d`; past the stored ones, zeros.
    let digit = |d: i32| -> u16 {
        if d < 0 || d as usize >= count {
            0
        } else {
            word(first_digit + d as usize).unwrap_or(0)
        }
    };
    if (0..count as i32).any(|d| digit(d) > 9999) {
        return false;
    }
    if negative {
        out.push(b'-');
    }
    let mut d = 0;
    if weight < 0 {
        out.push(b'0');
        d = weight + 1;
    } else {
        while d <= weight {
            let value = digit(d);
            if d == 0 {
                // The first group without its leading zeros.
                let mut buffer = itoa::Buffer::new();
                out.extend_from_slice(buffer.format(value).as_bytes());
            } else {
                push_group(value, out);
            }
            d += 1;
        }
    }
    if scale > 0 {
        out.push(b'.');
        let end = out.len() + usize::from(scale);
        while out.len() < end {
            push_group(digit(d), out);
            d += 1;
        }
        out.truncate(end);
    }
    true
}

/// A base-10000 digit as four decimal digits.
fn push_group(value: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[
        b'0' + (value / 1000) as u8,
        b'0' + (value / 100 % 10) as u8,
        b'0' + (value / 10 % 10) as u8,
        b'0' + (value % 10) as u8,
    ]);
}

/// A stored numeric varlena (either header) as `numeric_out` prints it, or None when it is
/// special, compressed or external (then ask `numeric_out`).
pub fn print_varlena(numeric: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(&first) = numeric.first() else {
        return false;
    };
    #[cfg(target_endian = "little")]
    let (one_byte, four_byte_plain) = (first & 0x01 == 0x01 && first != 0x01, first & 0x03 == 0);
    #[cfg(target_endian = "big")]
    let (one_byte, four_byte_plain) = (first & 0x80 == 0x80 && first != 0x80, first & 0xC0 == 0);
    let body = if one_byte {
        &numeric[1..]
    } else if four_byte_plain && numeric.len() >= pg_sys::VARHDRSZ {
        &numeric[pg_sys::VARHDRSZ..]
    } else {
        return false;
    };
    print(body, out)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn integer(value: i64) -> (u16, Vec<u16>) {
        let mut out = Vec::new();
        push_integer(value, &mut out);
        assert_eq!(out[..4], varlena_header_4b(out.len()));
        let words: Vec<u16> = out[4..]
            .chunks(2)
            .map(|w| u16::from_ne_bytes([w[0], w[1]]))
            .collect();
        (words[0], words[1..].to_vec())
    }

    fn printed(words: &[u16]) -> Option<String> {
        let body: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        print(&body, &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn integers_are_laid_out_as_short_numerics() {
        // header: short flag, sign, weight (the scale is 0); digits base 10000, zeros trimmed.
        assert_eq!(integer(0), (0x8000, vec![]));
        assert_eq!(integer(7), (0x8000, vec![7]));
        assert_eq!(integer(-7), (0xA000, vec![7]));
        assert_eq!(integer(10_000), (0x8001, vec![1]));
        assert_eq!(integer(123_456_789), (0x8002, vec![1, 2345, 6789]));
        assert_eq!(integer(100_000_001), (0x8002, vec![1, 0, 1]));
        assert_eq!(
            integer(i64::MIN),
            (0xA004, vec![922, 3372, 368, 5477, 5808])
        );
        assert_eq!(
            integer(i64::MAX),
            (0x8004, vec![922, 3372, 368, 5477, 5807])
        );
    }

    #[test]
    fn integers_print_back_as_themselves() {
        for value in [0, 1, -1, 9999, 10_000, -100_000_001, i64::MIN, i64::MAX] {
            let mut stored = Vec::new();
            push_integer(value, &mut stored);
            let mut out = Vec::new();
            assert!(print_varlena(&stored, &mut out));
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn scales_and_weights_print_as_numeric_out_does() {
        // 12.50: short, scale 2, weight 0, digits [12, 5000]
        assert_eq!(
            printed(&[0x8000 | (2 << 7), 12, 5000]).as_deref(),
            Some("12.50")
        );
        // -0.0012: short, negative, scale 4, weight -1, digits [12]
        assert_eq!(
            printed(&[0x8000 | 0x2000 | (4 << 7) | 0x40 | 0x3F, 12]).as_deref(),
            Some("-0.0012")
        );
        // 1e-9 at scale 10: weight -3, digits [1000]
        assert_eq!(
            printed(&[0x8000 | (10 << 7) | 0x40 | 0x3D, 1000]).as_deref(),
            Some("0.0000000010")
        );
        // 20000 (weight 1, digits [2]) and 0 at scale 3
        assert_eq!(printed(&[0x8001, 2]).as_deref(), Some("20000"));
        assert_eq!(printed(&[0x8000 | (3 << 7)]).as_deref(), Some("0.000"));
        // long format: sign/scale word, weight word, digits
        assert_eq!(printed(&[0x4000 | 1, 0, 3, 1400]).as_deref(), Some("-3.1"));
        // NaN, the infinities and garbage are left to numeric_out.
        assert_eq!(printed(&[0xC000]), None);
        assert_eq!(printed(&[0xD000]), None);
        assert_eq!(printed(&[0x8000, 10_000]), None);
        assert_eq!(printed(&[]), None);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The bytes after the header of a numeric datum.
    unsafe fn body<'a>(numeric: pg_sys::Datum) -> &'a [u8] {
        unsafe { crate::pg::varlena::bytes_of(numeric) }
    }

    /// Byte for byte what int8_numeric makes: the extremes, around every power of 10,000 and
    /// 20,000 generated values.
    #[pg_test]
    fn integers_are_stored_as_int8_numeric_makes_them() {
        let mut values = vec![0, 1, -1, i64::MIN, i64::MIN + 1, i64::MAX];
        for power in 0..5 {
            let p = 10_000i64.pow(power);
            values.extend([p - 1, p, p + 1, -p, 7 * p, p.saturating_mul(9999)]);
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.push((state as i64) >> (state % 64));
        }
        for value in values {
            let mut ours = Vec::new();
            super::push_integer(value, &mut ours);
            // SAFETY: int8_numeric of an int8 returns a numeric varlena.
            let theirs = unsafe {
                let numeric = pgrx::direct_function_call_as_datum(
                    pg_sys::int8_numeric,
                    &[Some(value.into())],
                )
                .unwrap();
                body(numeric)
            };
            assert_eq!(&ours[pg_sys::VARHDRSZ..], theirs, "{value}");
        }
    }

    /// Printed exactly as numeric_out prints them: 30,000 numerics of every sign, magnitude
    /// (weights far below and above zero) and scale, in both stored formats, as a table stores
    /// them (short varlena headers included).
    #[pg_test]
    fn numerics_print_as_numeric_out_prints_them() {
        Spi::run(
            "CREATE TEMP TABLE numbers AS
             SELECT round((random() - 0.5)::numeric * power(10::numeric, (random() * 60 - 30)::int),
                          (random() * 40)::int) AS n FROM generate_series(1, 20000)
             UNION ALL SELECT power(10::numeric, g) FROM generate_series(-40, 40) g
             UNION ALL SELECT -power(10::numeric, g) * 7 FROM generate_series(-40, 40) g
             UNION ALL SELECT round(g::numeric / 7, g % 30) FROM generate_series(-5000, 5000) g
             UNION ALL VALUES (0), (0.000), (-0.5), (1e300), (-1e-300), (99999999.99999999),
                              (numeric '1e1000' / 3)",
        )
        .unwrap();
        let mismatches = Spi::get_one::<String>(
            "SELECT string_agg(n::text, ', ') FROM (SELECT n FROM numbers
              WHERE tests.numeric_test_print(n) IS DISTINCT FROM n::text LIMIT 5) m",
        );
        assert_eq!(mismatches, Ok(None), "printed differently");
    }

    /// custos' print of a numeric as a table stores it (either header); NULL when it defers to
    /// numeric_out.
    #[pg_extern]
    fn numeric_test_print(n: pgrx::AnyElement) -> Option<String> {
        let mut out = Vec::new();
        // SAFETY: called with numeric arguments only (above).
        let stored = unsafe {
            let p = n.datum().cast_mut_ptr::<pg_sys::varlena>();
            std::slice::from_raw_parts(p.cast::<u8>(), pgrx::varlena::varsize_any(p))
        };
        super::print_varlena(stored, &mut out).then(|| String::from_utf8_lossy(&out).into_owned())
    }
}
