//! Varlena values (text, bytea, jsonb, numeric) as bytes: read in place, headers written by hand.

use pgrx::pg_sys;

/// The bytes of a varlena datum (text, bytea), detoasted if it must be; valid in the current
/// memory context.
///
/// # Safety
/// `d` must be a non-null varlena datum.
pub unsafe fn bytes_of<'a>(d: pg_sys::Datum) -> &'a [u8] {
    use pgrx::varlena::{varatt_is_1b, varatt_is_1b_e, varatt_is_4b_u};
    unsafe {
        let p = d.cast_mut_ptr::<pg_sys::varlena>();
        // Most values sit inline and uncompressed: skip the detoast call (and its FFI guard).
        let plain = varatt_is_4b_u(p) || (varatt_is_1b(p) && !varatt_is_1b_e(p));
        let p = if plain {
            p
        } else {
            pg_sys::pg_detoast_datum_packed(p)
        };
        pgrx::varlena::varlena_to_byte_slice(p)
    }
}

/// The 4-byte varlena header of a value of `len` bytes (header included), as `SET_VARSIZE_4B`
/// writes it; as bytes, so it can go anywhere in a buffer.
pub fn varlena_header_4b(len: usize) -> [u8; 4] {
    #[cfg(target_endian = "little")]
    let header = (len as u32) << 2;
    #[cfg(target_endian = "big")]
    let header = (len as u32) & 0x3FFF_FFFF;
    header.to_ne_bytes()
}
