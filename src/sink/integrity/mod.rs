//! Tamper evidence for the file sink (issue 17, docs/integrity.md): a chain of signed
//! digests over the rotated files, a signed running-hash checkpoint of the active
//! file, and the chain head anchored in PostgreSQL with the sink's position.
//!
//! `format` is the on-disk format shared by the writer and `sink verify`; `keys` is
//! the Ed25519 key.

pub mod format;
pub mod keys;
