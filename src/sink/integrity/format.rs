//! The integrity chain's on-disk format: what a digest and a checkpoint say, how
//! they are named, and how they are parsed. Writer (the sink) and verifier
//! (`sink verify`) share this module and nothing else, so the format has one
//! definition; docs/integrity.md describes it for people and for other tools.
//!
//! # Files
//!
//! | file | what |
//! |---|---|
//! | `audit-digest-<seq>.json` | chain entry number `<seq>` (10 digits), the signed bytes |
//! | `audit-digest-<seq>.json.sig` | its Ed25519 signature: 64 raw bytes over the whole `.json` file |
//! | `audit-checkpoint.json` (+ `.sig`) | the signed running hash of the active file, replaced at every checkpoint |
//!
//! The signed message is the file's bytes exactly as stored, so that
//! `openssl pkeyutl -verify -pubin -inkey key.pub.pem -rawin -in F -sigfile F.sig`
//! checks it without this binary, and `sha256sum F` is the hash the next entry's
//! `prev_sha256` names. Nothing is canonicalised: the verifier never re-encodes.
//!
//! # The chain
//!
//! Entries are numbered from 1 without gaps; each names the SHA-256 of the previous
//! entry's file (`prev_sha256`, absent only for entry 1). Every entry is signed by the
//! key it names (`key_id`, `public_key`); a new key is announced by an entry signed
//! with the old one ([`Body::KeyRotation`]). The newest entry (the head: its `seq` and
//! file hash) is published in PostgreSQL with the sink's position.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `format` of every digest and checkpoint written by this build.
pub const FORMAT: &str = "compartment-audit-digest/1";

/// Prefix of a chain entry's file name.
pub const DIGEST_PREFIX: &str = "audit-digest-";
/// Suffix of a chain entry's file name.
pub const DIGEST_SUFFIX: &str = ".json";
/// Suffix added to a signed file's name for its signature.
pub const SIG_SUFFIX: &str = ".sig";
/// The active file's checkpoint.
pub const CHECKPOINT: &str = "audit-checkpoint.json";
/// Digest and checkpoint files are small; anything larger is refused unparsed.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// Length of an Ed25519 signature file.
pub const SIGNATURE_LEN: usize = 64;

/// The file name of chain entry `seq`: `audit-digest-0000000042.json`.
pub fn digest_name(seq: u64) -> String {
    format!("{DIGEST_PREFIX}{seq:010}{DIGEST_SUFFIX}")
}

/// The sequence number in a chain entry's file name, or `None` for any other name.
pub fn parse_digest_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(DIGEST_PREFIX)?
        .strip_suffix(DIGEST_SUFFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The signature file of `name`.
pub fn sig_name(name: &str) -> String {
    format!("{name}{SIG_SUFFIX}")
}

/// A position in the event order: the row's transaction id (`xid8`) and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pos {
    /// Transaction id (`xid8`).
    pub tx: u64,
    /// Event id.
    pub id: i64,
}

/// What the lines of one file (or a prefix of the active file) cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    /// Number of lines.
    pub lines: u64,
    /// Number of bytes (uncompressed).
    pub bytes: u64,
    /// SHA-256 (hex) of those bytes, uncompressed.
    pub sha256: String,
    /// Position of the first line; absent when there is none (or for lines written
    /// before integrity was on, whose positions the sink never knew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<Pos>,
    /// Position of the last line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Pos>,
}

/// A compressed file and the hash of its `.gz` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compressed {
    /// The `.gz` file's name.
    pub file: String,
    /// SHA-256 (hex) of the `.gz` bytes.
    pub gz_sha256: String,
    /// Its length.
    pub gz_bytes: u64,
    /// SHA-256 (hex) of the uncompressed content, as in the file's own digest.
    pub sha256: String,
}

/// What a chain entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// The chain begins: a new directory, or integrity switched on for an existing one.
    Genesis {
        /// `new_directory`, `integrity_enabled`, or `chain_lost` (no entry was found
        /// in a directory that already held lines: every earlier file is unverifiable).
        reason: String,
    },
    /// A rotated file: `file` is its plain name (`audit-<stamp>.ndjson`); once
    /// compressed it is `file` + `.gz`, whose hash a later [`Body::Compressed`] records.
    File {
        /// The rotated file's plain name.
        file: String,
        /// Its content.
        content: Span,
        /// When it became the active file and when it was rotated.
        opened_at: DateTime<Utc>,
        /// When it was rotated.
        closed_at: DateTime<Utc>,
        /// `age`, `size`, `manual`, ...
        reason: String,
    },
    /// Rotated files were compressed.
    Compressed {
        /// One per file.
        files: Vec<Compressed>,
    },
    /// File retention deleted rotated files (oldest first) and the chain entries
    /// that covered nothing but them: every entry below `entries_before` may be gone.
    Retention {
        /// The deleted files' names as stored (`….ndjson.gz` or `….ndjson`).
        deleted: Vec<String>,
        /// Entries with a smaller `seq` may have been deleted with them.
        entries_before: u64,
    },
    /// At start-up the active file's tail was not what the last checkpoint or write
    /// left: a torn last line was cut (kept as `fragment`), or the file was shorter
    /// than the checkpoint (lost in a crash of the machine).
    TornTail {
        /// Length of the active file kept.
        kept_bytes: u64,
        /// Bytes cut off.
        cut_bytes: u64,
        /// Where the cut bytes were kept, if anywhere.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fragment: Option<String>,
    },
    /// At start-up the active file did not match its last checkpoint: the lines
    /// before `checkpoint_bytes` were changed while the daemon was not running.
    /// Recorded so that the rest of the chain does not vouch for them.
    CheckpointMismatch {
        /// Bytes the checkpoint covered.
        checkpoint_bytes: u64,
        /// Its hash.
        checkpoint_sha256: String,
        /// The hash of the same prefix as found.
        found_sha256: String,
    },
    /// The mirror re-baselined: events up to `after` are not in these files on
    /// purpose (an operator's `sink rebaseline`).
    Rebaseline {
        /// The new baseline.
        after: Pos,
        /// Why, as the operator or the mirror said.
        reason: String,
    },
    /// This directory's replica became the leader of its sink group and appends after
    /// `after` (the group's published position).
    LeadershipStart {
        /// The lease epoch.
        epoch: i64,
        /// Where this replica resumes.
        after: Pos,
    },
    /// This directory's replica stopped appending: `handover` (shutdown), `deposed`
    /// (another replica took over) or `lost` (its lease or lock connection went).
    LeadershipEnd {
        /// The lease epoch that ended.
        epoch: i64,
        /// The last position appended here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<Pos>,
        /// Why.
        reason: String,
    },
    /// The next entries are signed with another key, announced here by the current one.
    KeyRotation {
        /// The new key's id.
        next_key_id: String,
        /// The new public key (base64 of its 32 raw bytes).
        next_public_key: String,
    },
}

impl Body {
    /// The `kind` as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Genesis { .. } => "genesis",
            Body::File { .. } => "file",
            Body::Compressed { .. } => "compressed",
            Body::Retention { .. } => "retention",
            Body::TornTail { .. } => "torn_tail",
            Body::CheckpointMismatch { .. } => "checkpoint_mismatch",
            Body::Rebaseline { .. } => "rebaseline",
            Body::LeadershipStart { .. } => "leadership_start",
            Body::LeadershipEnd { .. } => "leadership_end",
            Body::KeyRotation { .. } => "key_rotation",
        }
    }
}

/// One chain entry (`audit-digest-<seq>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// [`FORMAT`].
    pub format: String,
    /// `file_sink.id` of the sink group.
    pub sink_id: String,
    /// The directory's identity (the mirror state's `instance`), which the database
    /// anchor is keyed by; absent until the mirror has established it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_instance: Option<uuid::Uuid>,
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// SHA-256 (hex) of entry `seq - 1`'s file; absent for entry 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_sha256: Option<String>,
    /// When it was written (sink clock).
    pub written_at: DateTime<Utc>,
    /// Id of the signing key ([`super::keys::key_id`]).
    pub key_id: String,
    /// The signing public key, base64 of its 32 raw bytes.
    pub public_key: String,
    /// What it records.
    pub record: Body,
}

/// The active file's checkpoint (`audit-checkpoint.json`): its first `content.bytes`
/// bytes hash to `content.sha256`. It follows chain entry `after_seq`, whose hash is
/// `after_sha256`, and is replaced at every checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// [`FORMAT`].
    pub format: String,
    /// Always `checkpoint`.
    pub kind: String,
    /// `file_sink.id`.
    pub sink_id: String,
    /// The chain head when it was written.
    pub after_seq: u64,
    /// That entry's file hash.
    pub after_sha256: String,
    /// Always `audit.ndjson`.
    pub file: String,
    /// When the active file was opened: tells one active file from the next.
    pub opened_at: DateTime<Utc>,
    /// The covered prefix.
    pub content: Span,
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// Signing key id.
    pub key_id: String,
    /// Signing public key (base64 of 32 bytes).
    pub public_key: String,
}

/// Why a digest or checkpoint file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Larger than [`MAX_ENTRY_BYTES`].
    #[error("larger than {MAX_ENTRY_BYTES} bytes")]
    TooLarge,
    /// Not the JSON this format defines (the reason names the field).
    #[error("not a valid digest: {0}")]
    Invalid(String),
    /// Another format version.
    #[error("unknown format {0:?} (this build reads {FORMAT:?})")]
    UnknownFormat(String),
}

fn check_size(bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(FormatError::TooLarge);
    }
    Ok(())
}

fn check_format(format: &str) -> Result<(), FormatError> {
    if format != FORMAT {
        return Err(FormatError::UnknownFormat(
            format.chars().take(64).collect(),
        ));
    }
    Ok(())
}

/// Parses a chain entry file.
pub fn parse_entry(bytes: &[u8]) -> Result<Entry, FormatError> {
    check_size(bytes)?;
    let entry: Entry =
        serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid(e.to_string()))?;
    check_format(&entry.format)?;
    if entry.seq == 0 {
        return Err(FormatError::Invalid("seq must be at least 1".into()));
    }
    if (entry.seq == 1) != entry.prev_sha256.is_none() {
        return Err(FormatError::Invalid(
            "prev_sha256 is required exactly when seq > 1".into(),
        ));
    }
    Ok(entry)
}

/// Parses a checkpoint file.
pub fn parse_checkpoint(bytes: &[u8]) -> Result<Checkpoint, FormatError> {
    check_size(bytes)?;
    let cp: Checkpoint =
        serde_json::from_slice(bytes).map_err(|e| FormatError::Invalid(e.to_string()))?;
    check_format(&cp.format)?;
    if cp.kind != "checkpoint" {
        return Err(FormatError::Invalid("kind must be \"checkpoint\"".into()));
    }
    Ok(cp)
}

/// Encodes an entry or checkpoint as it is stored and signed: pretty JSON (people
/// read these files) with a final newline.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value)
        .expect("digest types serialize to JSON infallibly: string keys, no fallible fields");
    out.push(b'\n');
    out
}

/// SHA-256 in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, body: Body) -> Entry {
        Entry {
            format: FORMAT.into(),
            sink_id: "default".into(),
            sink_instance: None,
            seq,
            prev_sha256: (seq > 1).then(|| "00".repeat(32)),
            written_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            key_id: "k".into(),
            public_key: "p".into(),
            record: body,
        }
    }

    #[test]
    fn names_round_trip_and_reject_others() {
        assert_eq!(digest_name(42), "audit-digest-0000000042.json");
        assert_eq!(parse_digest_name(&digest_name(42)), Some(42));
        for other in [
            "audit-digest-42.json",
            "audit-digest-00000000x2.json",
            "audit-digest-0000000042.json.sig",
            "audit.ndjson",
            CHECKPOINT,
        ] {
            assert_eq!(parse_digest_name(other), None, "{other}");
        }
    }

    #[test]
    fn every_body_round_trips() {
        let span = Span {
            lines: 2,
            bytes: 10,
            sha256: "ab".into(),
            first: Some(Pos { tx: 7, id: 1 }),
            last: Some(Pos { tx: 8, id: 2 }),
        };
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let bodies = vec![
            Body::Genesis {
                reason: "new_directory".into(),
            },
            Body::File {
                file: "audit-20261207T000000Z.ndjson".into(),
                content: span,
                opened_at: at,
                closed_at: at,
                reason: "size".into(),
            },
            Body::Retention {
                deleted: vec!["a.gz".into()],
                entries_before: 3,
            },
            Body::LeadershipEnd {
                epoch: 3,
                last: None,
                reason: "deposed".into(),
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let e = entry(i as u64 + 1, body);
            let bytes = encode(&e);
            assert_eq!(parse_entry(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn rejects_unknown_fields_formats_and_bad_chains() {
        let e = entry(2, Body::Genesis { reason: "x".into() });
        let mut v = serde_json::to_value(&e).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(matches!(
            parse_entry(&serde_json::to_vec(&v).unwrap()),
            Err(FormatError::Invalid(_))
        ));
        let mut v = serde_json::to_value(&e).unwrap();
        v["format"] = serde_json::json!("other/9");
        assert!(matches!(
            parse_entry(&serde_json::to_vec(&v).unwrap()),
            Err(FormatError::UnknownFormat(_))
        ));
        let mut v = serde_json::to_value(&e).unwrap();
        v.as_object_mut().unwrap().remove("prev_sha256");
        assert!(parse_entry(&serde_json::to_vec(&v).unwrap()).is_err());
        assert_eq!(
            parse_entry(&vec![b' '; MAX_ENTRY_BYTES + 1]),
            Err(FormatError::TooLarge)
        );
    }
}
