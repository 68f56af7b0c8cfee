//! Datum-level code: jsonb read and written in its binary form, numerics printed and made,
//! tuples deformed and formed, varlena bytes, relations checked before their datums are read.
//! Imports no capability: the capabilities build on it.

pub mod backend;
pub mod cache;
pub mod jsonb;
pub mod locks;
pub mod numeric;
pub mod spi;
pub mod tuple;
pub mod varlena;

pub use backend::recovery_in_progress;
