//! The NDJSON file sink (SPEC §6): writer, rotation, compression, recovery, state.
//!
//! Knows bytes, lines and files — never the database or HTTP.
