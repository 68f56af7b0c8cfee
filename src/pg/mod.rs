//! Datum-level code: jsonb read and written in its binary form, numerics printed and made,
//! user queries read as rows of numbers, set-returning functions filled in materialize mode,
//! compute threads that stay clear of signals,
//! tuples deformed and formed, varlena bytes, relations checked before their datums are read.
//! Imports no capability: the capabilities build on it.

pub mod backend;
pub mod cache;
pub mod jsonb;
pub mod locks;
pub mod numeric;
pub mod query;
pub mod spi;
pub mod srf;
pub mod subxact;
pub mod threads;
pub mod tuple;
pub mod varlena;

pub use backend::recovery_in_progress;
