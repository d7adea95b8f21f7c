//! Allowlists and the secret scrubber (SPEC §4).
//!
//! Pure: no I/O, no clock, no globals. The same sanitizer serves the file sink,
//! the list API and exports.
