//! The file names the sink owns, and how rotated names encode their order.
//!
//! Everything else in the directory is foreign and left alone.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime};

/// The active file collectors follow.
pub const ACTIVE: &str = "audit.ndjson";
/// Held with `flock` while a sink has the directory open.
pub const LOCK: &str = ".audit.lock";
/// The sink's own bookkeeping: when the active file was opened (age rotation).
pub const ACTIVE_META: &str = ".audit-active.json";
/// The caller's durable state ([`FileSink::write_state`](super::FileSink::write_state)).
pub const STATE: &str = ".audit-state.json";

const ROTATED_PREFIX: &str = "audit-";
const PLAIN_SUFFIX: &str = ".ndjson";
const GZ_SUFFIX: &str = ".ndjson.gz";
const TMP_SUFFIX: &str = ".tmp";
const FRAGMENT_PREFIX: &str = "torn-";
const FRAGMENT_SUFFIX: &str = ".fragment";
/// `yyyymmddThhmmssZ`, always UTC.
const STAMP_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const STAMP_LEN: usize = 16;
/// Collisions within one second get `_001` … `_999`; past that the next second is used.
pub const MAX_SEQ: u16 = 999;

/// Orders rotated files: the UTC second in the name, then the collision sequence.
///
/// The sequence is written as `_NNN` (not `-N`) so that the plain byte order of the
/// names — what `ls` and collectors' globs see — is also their time order: `-`
/// sorts before the `.` of an unsuffixed name, `_` after it, and the fixed width
/// keeps `_010` after `_009`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RotatedKey {
    /// Seconds since the Unix epoch (UTC).
    pub secs: i64,
    /// 0 for the first file of that second.
    pub seq: u16,
}

impl RotatedKey {
    /// The key for a rotation at `at`, before any collision handling.
    pub fn at(at: SystemTime) -> RotatedKey {
        RotatedKey {
            secs: unix_secs(at),
            seq: 0,
        }
    }

    /// The smallest key after this one.
    pub fn next(self) -> RotatedKey {
        if self.seq < MAX_SEQ {
            RotatedKey {
                secs: self.secs,
                seq: self.seq + 1,
            }
        } else {
            RotatedKey {
                secs: self.secs + 1,
                seq: 0,
            }
        }
    }

    /// The moment in the name.
    pub fn time(self) -> SystemTime {
        match u64::try_from(self.secs) {
            Ok(secs) => UNIX_EPOCH + std::time::Duration::from_secs(secs),
            Err(_) => UNIX_EPOCH,
        }
    }

    fn base(self) -> String {
        let stamp = stamp(self.secs);
        if self.seq == 0 {
            format!("{ROTATED_PREFIX}{stamp}")
        } else {
            format!("{ROTATED_PREFIX}{stamp}_{:03}", self.seq)
        }
    }

    /// `audit-<stamp>.ndjson`
    pub fn plain_name(self) -> String {
        format!("{}{PLAIN_SUFFIX}", self.base())
    }

    /// `audit-<stamp>.ndjson.gz`
    pub fn gz_name(self) -> String {
        format!("{}{GZ_SUFFIX}", self.base())
    }

    /// `.audit-<stamp>.ndjson.gz.tmp`: where a compression is written until complete.
    pub fn gz_temp_name(self) -> String {
        format!(".{}{GZ_SUFFIX}{TMP_SUFFIX}", self.base())
    }
}

/// Which form a rotated file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotatedForm {
    /// Just rotated, waiting for compression.
    Plain,
    /// Compressed; counted by retention.
    Gz,
}

/// What a directory entry is to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    /// `audit.ndjson`
    Active,
    /// `audit-<stamp>[_NNN].ndjson[.gz]`
    Rotated(RotatedKey, RotatedForm),
    /// A temp file of ours, which only exists while something is being written.
    Temp,
    /// `.audit-active.json`, `.audit-state.json`, `.audit.lock`
    Bookkeeping,
    /// A torn tail kept aside for inspection.
    Fragment,
}

/// Classifies a directory entry; `None` means foreign (left alone).
pub fn classify(name: &str) -> Option<Owned> {
    match name {
        ACTIVE => return Some(Owned::Active),
        ACTIVE_META | STATE | LOCK => return Some(Owned::Bookkeeping),
        _ => {}
    }
    if let Some(inner) = name
        .strip_suffix(TMP_SUFFIX)
        .filter(|_| name.starts_with('.'))
    {
        let ours = matches!(inner, ACTIVE_META | STATE)
            || matches!(
                inner.strip_prefix('.').and_then(parse_rotated),
                Some((_, RotatedForm::Gz))
            );
        return ours.then_some(Owned::Temp);
    }
    if let Some((key, form)) = parse_rotated(name) {
        return Some(Owned::Rotated(key, form));
    }
    if parse_fragment(name) {
        return Some(Owned::Fragment);
    }
    None
}

/// Dot-prefixed temp name for a file written atomically.
pub fn temp_name(final_name: &str) -> String {
    if final_name.starts_with('.') {
        format!("{final_name}{TMP_SUFFIX}")
    } else {
        format!(".{final_name}{TMP_SUFFIX}")
    }
}

/// `torn-<stamp>[_NNN].fragment`: deliberately not `audit*`, so no collector glob
/// picks a fragment up.
pub fn fragment_name(at: SystemTime, seq: u16) -> String {
    let stamp = stamp(unix_secs(at));
    if seq == 0 {
        format!("{FRAGMENT_PREFIX}{stamp}{FRAGMENT_SUFFIX}")
    } else {
        format!("{FRAGMENT_PREFIX}{stamp}_{seq:03}{FRAGMENT_SUFFIX}")
    }
}

fn parse_fragment(name: &str) -> bool {
    name.strip_prefix(FRAGMENT_PREFIX)
        .and_then(|n| n.strip_suffix(FRAGMENT_SUFFIX))
        .and_then(parse_stamp_and_seq)
        .is_some()
}

/// Parses `audit-<stamp>[_NNN].ndjson[.gz]`, exactly: anything else is foreign.
pub fn parse_rotated(name: &str) -> Option<(RotatedKey, RotatedForm)> {
    let rest = name.strip_prefix(ROTATED_PREFIX)?;
    let (rest, form) = if let Some(r) = rest.strip_suffix(GZ_SUFFIX) {
        (r, RotatedForm::Gz)
    } else {
        (rest.strip_suffix(PLAIN_SUFFIX)?, RotatedForm::Plain)
    };
    parse_stamp_and_seq(rest).map(|key| (key, form))
}

fn parse_stamp_and_seq(s: &str) -> Option<RotatedKey> {
    let stamp_part = s.get(..STAMP_LEN)?;
    let secs = parse_stamp(stamp_part)?;
    let seq = match &s[STAMP_LEN..] {
        "" => 0,
        tail => {
            let digits = tail.strip_prefix('_')?;
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let seq: u16 = digits.parse().ok()?;
            if seq == 0 {
                return None;
            }
            seq
        }
    };
    Some(RotatedKey { secs, seq })
}

fn parse_stamp(s: &str) -> Option<i64> {
    if s.len() != STAMP_LEN || !s.is_ascii() {
        return None;
    }
    let parsed = NaiveDateTime::parse_from_str(s, STAMP_FORMAT).ok()?;
    let secs = parsed.and_utc().timestamp();
    // chrono accepts some non-canonical spellings; only the one we write is ours.
    (stamp(secs) == s).then_some(secs)
}

fn stamp(secs: i64) -> String {
    match DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format(STAMP_FORMAT).to_string(),
        None => "19700101T000000Z".to_owned(),
    }
}

/// Whole seconds since the Unix epoch; clocks before 1970 count as 1970.
pub fn unix_secs(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rotated_names_round_trip() {
        let key = RotatedKey::at(t(1_778_577_243));
        assert_eq!(key.plain_name(), "audit-20260512T091403Z.ndjson");
        assert_eq!(key.gz_name(), "audit-20260512T091403Z.ndjson.gz");
        assert_eq!(key.gz_temp_name(), ".audit-20260512T091403Z.ndjson.gz.tmp");
        let next = key.next();
        assert_eq!(next.plain_name(), "audit-20260512T091403Z_001.ndjson");
        for k in [key, next] {
            assert_eq!(
                parse_rotated(&k.plain_name()),
                Some((k, RotatedForm::Plain))
            );
            assert_eq!(parse_rotated(&k.gz_name()), Some((k, RotatedForm::Gz)));
            assert_eq!(classify(&k.gz_temp_name()), Some(Owned::Temp));
        }
    }

    #[test]
    fn byte_order_of_names_is_time_order() {
        let mut key = RotatedKey::at(t(1_778_577_243));
        let mut names = Vec::new();
        for _ in 0..1_200 {
            names.push(key.gz_name());
            key = key.next();
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names[1_000], "audit-20260512T091404Z.ndjson.gz");
    }

    #[test]
    fn near_misses_are_foreign() {
        for name in [
            "audit-20260512T091403Z.ndjson.bak",
            "audit-20260512T091403.ndjson",
            "audit-20260512T091403Z-1.ndjson",
            "audit-20260512T091403Z_1.ndjson",
            "audit-20260512T091403Z_000.ndjson",
            "audit-20261312T091403Z.ndjson",
            "audit-2026051zT091403Z.ndjson",
            "audit.ndjson.1",
            ".audit.ndjson.swp",
            ".notes.tmp",
            "audit-20260512T091403Z.ndjson.tmp",
            "torn-x.fragment",
        ] {
            assert_eq!(classify(name), None, "{name}");
        }
        assert_eq!(classify("audit.ndjson"), Some(Owned::Active));
        assert_eq!(
            classify(&fragment_name(t(1_778_577_243), 2)),
            Some(Owned::Fragment)
        );
        assert_eq!(classify(".audit-state.json.tmp"), Some(Owned::Temp));
        assert_eq!(temp_name(STATE), ".audit-state.json.tmp");
        assert_eq!(classify(".audit-active.json.tmp"), Some(Owned::Temp));
    }
}
