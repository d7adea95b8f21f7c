//! Sink start-up recovery over arbitrary directory contents (SPEC §6 "Restart after a
//! crash"): a temporary sink directory gets fuzzer-chosen bytes for `audit.ndjson`
//! (or a symlink, directory or FIFO in its place), rotated files plain and gzip
//! (valid, truncated, bit-flipped or not gzip at all), the state and bookkeeping
//! files, leftover temp files, fragments and foreign entries, and a loosened mode.
//!
//! `FileSink::open` must never panic, never hang, never write through a symlink, and
//! when it succeeds: the active file holds exactly the whole lines it held before
//! (the torn tail is cut and kept byte for byte in the fragment file), the
//! directory is owner-only, `Recovery::last_line` is a whole line (the active file's
//! last one, or else one of a rotated file's), and the sink accepts a write that
//! then ends the file on a line boundary.
#![cfg_attr(fuzzing, no_main)]

use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Result, Unstructured};
use compartment_auditd::config::FsyncPolicy;
use compartment_auditd::sink::{FileSink, ManualClock, SinkOptions, ACTIVE, ACTIVE_META, STATE};
use flate2::write::GzEncoder;
use flate2::Compression;
#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;

/// What sits under a name in the directory.
#[derive(Debug)]
enum Entry {
    /// A regular file with these bytes and permission bits.
    File(Vec<u8>, u32),
    /// A symlink to a file outside the directory (which must stay untouched).
    Symlink,
    /// A directory.
    Directory,
    /// A named pipe: opening it for reading without `O_NONBLOCK` would hang.
    Fifo,
}

/// File bytes: fuzzer bytes, optionally padded past the 64 KiB backward-scan chunk.
fn bytes(u: &mut Unstructured) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = u.arbitrary()?;
    if u.ratio(1, 8)? {
        let fill: u8 = u.arbitrary()?;
        let len = u.int_in_range(60_000..=140_000usize)?;
        let at = u.int_in_range(0..=out.len())?;
        out.splice(at..at, std::iter::repeat_n(fill, len));
    }
    Ok(out)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder
        .write_all(data)
        .expect("compressing into a Vec cannot fail");
    encoder
        .finish()
        .expect("compressing into a Vec cannot fail")
}

/// Bytes for a `.gz` name: valid gzip of fuzzer bytes, truncated, bit-flipped, or
/// not gzip at all (which may still happen to be gzip).
fn gz_bytes(u: &mut Unstructured) -> Result<Vec<u8>> {
    let text = bytes(u)?;
    let mut packed = gzip(&text);
    Ok(match u.int_in_range(0..=4)? {
        0 | 1 => packed,
        2 => {
            let keep = u.int_in_range(0..=packed.len().saturating_sub(1))?;
            packed.truncate(keep);
            packed
        }
        3 => {
            if !packed.is_empty() {
                let at = u.int_in_range(0..=packed.len() - 1)?;
                packed[at] ^= u.int_in_range(1..=255u8)?;
            }
            packed
        }
        _ => text,
    })
}

/// What `packed` decompresses to, if it is valid (multi-member) gzip: the oracle
/// decides by decoding, since a flipped header byte or fuzzer bytes may still be
/// valid gzip.
fn gunzip(packed: &[u8]) -> Option<Vec<u8>> {
    let mut text = Vec::new();
    flate2::read::MultiGzDecoder::new(packed)
        .read_to_end(&mut text)
        .ok()?;
    Some(text)
}

fn mode(u: &mut Unstructured) -> Result<u32> {
    Ok(*u.choose(&[
        0o600, 0o600, 0o644, 0o666, 0o640, 0o660, 0o400, 0o4755, 0o777,
    ])?)
}

fn entry(u: &mut Unstructured, data: Vec<u8>) -> Result<Entry> {
    Ok(match u.int_in_range(0..=15)? {
        0 => Entry::Symlink,
        1 => Entry::Directory,
        2 => Entry::Fifo,
        _ => Entry::File(data, mode(u)?),
    })
}

/// A rotated name: a valid stamp (with or without a collision suffix) or a near miss.
fn rotated_name(u: &mut Unstructured, gz: bool) -> Result<String> {
    let secs = u.int_in_range(0i64..=4_102_444_800)?;
    let stamp = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let seq = match u.int_in_range(0..=5)? {
        0 => format!("_{:03}", u.int_in_range(0..=999u16)?),
        1 => format!("_{}", u.arbitrary::<u8>()?),
        _ => String::new(),
    };
    let suffix = if gz { ".ndjson.gz" } else { ".ndjson" };
    Ok(format!("audit-{stamp}{seq}{suffix}"))
}

/// Any other name: the sink's temp and fragment names, bookkeeping, or arbitrary.
fn other_name(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=7)? {
        0 => format!(".{}.tmp", rotated_name(u, true)?),
        1 => format!("{STATE}.tmp"),
        2 => format!("{ACTIVE_META}.tmp"),
        3 => "torn-20260512T091403Z.fragment".to_owned(),
        4 => ".audit.lock".to_owned(),
        _ => {
            let name: String = u.arbitrary()?;
            // Only names the filesystem can hold: NAME_MAX is 255 bytes.
            if name.is_empty()
                || name.len() > 255
                || name == "."
                || name == ".."
                || name.contains(['/', '\0'])
            {
                "foreign.txt".to_owned()
            } else {
                name
            }
        }
    })
}

/// Files planted in the directory: name → entry. Also what each valid rotated file
/// decompresses to, for the `last_line` check.
struct Plan {
    entries: Vec<(String, Entry)>,
    rotated_texts: Vec<Vec<u8>>,
    dir_mode: u32,
    allow_group_bits: bool,
    now: SystemTime,
    retention_files: usize,
    compress_delay: Duration,
}

fn plan(u: &mut Unstructured) -> Result<Plan> {
    let mut entries = Vec::new();
    let mut rotated_texts = Vec::new();
    if u.ratio(7, 8)? {
        let data = bytes(u)?;
        entries.push((ACTIVE.to_owned(), entry(u, data)?));
    }
    for _ in 0..u.int_in_range(0..=4)? {
        if u.arbitrary()? {
            let packed = gz_bytes(u)?;
            rotated_texts.extend(gunzip(&packed));
            let name = rotated_name(u, true)?;
            entries.push((name, entry(u, packed)?));
        } else {
            let text = bytes(u)?;
            rotated_texts.push(text.clone());
            let name = rotated_name(u, false)?;
            entries.push((name, entry(u, text)?));
        }
    }
    for name in [STATE, ACTIVE_META] {
        if u.ratio(1, 3)? {
            let data = if u.arbitrary()? {
                bytes(u)?
            } else if name == STATE {
                br#"{"version":1,"sink_id":"default","system_identifier":"7","baseline":{"tx":"5","id":3}}"#
                    .to_vec()
            } else {
                format!(
                    r#"{{"inode":{},"opened_at_unix_ms":{}}}"#,
                    u.arbitrary::<u64>()?,
                    u.arbitrary::<u64>()?
                )
                .into_bytes()
            };
            entries.push((name.to_owned(), entry(u, data)?));
        }
    }
    for _ in 0..u.int_in_range(0..=3)? {
        let name = other_name(u)?;
        let data = bytes(u)?;
        entries.push((name, entry(u, data)?));
    }
    Ok(Plan {
        entries,
        rotated_texts,
        dir_mode: *u.choose(&[0o700, 0o700, 0o750, 0o755, 0o770, 0o2770, 0o777, 0o500])?,
        allow_group_bits: u.arbitrary()?,
        now: UNIX_EPOCH + Duration::from_secs(u.int_in_range(0..=4_102_444_800u64)?),
        retention_files: u.int_in_range(0..=4)?,
        compress_delay: if u.arbitrary()? {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        },
    })
}

/// Creates `plan` under `dir`; symlinks point at `victim`. Names that collide are
/// skipped (the first one wins), like a real directory.
fn build(dir: &Path, victim: &Path, plan: &Plan) {
    std::fs::create_dir(dir).expect("creating the sink directory");
    for (name, entry) in &plan.entries {
        let path = dir.join(name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        match entry {
            Entry::File(data, mode) => {
                std::fs::write(&path, data).expect("writing a planted file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                    .expect("chmod of a planted file");
            }
            Entry::Symlink => symlink(victim, &path).expect("planting a symlink"),
            Entry::Directory => std::fs::create_dir(&path).expect("planting a directory"),
            Entry::Fifo => rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .expect("planting a FIFO"),
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(plan.dir_mode))
        .expect("chmod of the sink directory");
}

fn last_line_of(text: &[u8]) -> Option<&[u8]> {
    let body = text.strip_suffix(b"\n")?;
    Some(match body.iter().rposition(|b| *b == b'\n') {
        Some(at) => &body[at + 1..],
        None => body,
    })
}

fn is_whole_line_of(line: &[u8], text: &[u8]) -> bool {
    let end = text
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    text[..end]
        .split_inclusive(|b| *b == b'\n')
        .any(|l| l.strip_suffix(b"\n") == Some(line))
}

fn check(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let plan = plan(&mut u)?;

    // tmpfs: fsync is free there, so the fuzzer spends its time on recovery logic.
    let base = tempfile::Builder::new()
        .prefix("fuzz-sink-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    let dir = base.path().join("sink");
    let victim = base.path().join("victim");
    std::fs::write(&victim, b"not the sink's\n").expect("writing the victim file");
    build(&dir, &victim, &plan);
    let active_before = match plan.entries.iter().find(|(n, _)| n == ACTIVE) {
        Some((_, Entry::File(data, _))) => Some(data.clone()),
        _ => None,
    };

    let options = SinkOptions {
        dir: dir.clone(),
        rotate_interval: Duration::from_secs(86_400),
        rotate_size: 64 << 20,
        rotate_min_age: Duration::ZERO,
        retention_files: plan.retention_files,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_secs(1),
        compress_delay: plan.compress_delay,
        allow_group_bits: plan.allow_group_bits,
    };
    let opened = FileSink::open(options, Arc::new(ManualClock::new(plan.now)));
    let victim_after = std::fs::read(&victim).expect("the victim file is still there");
    assert_eq!(
        victim_after, b"not the sink's\n",
        "the sink wrote through a symlink"
    );

    let (mut sink, recovery) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            assert!(!err.to_string().is_empty(), "an error without a message");
            // Leave the directory removable for the TempDir drop.
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            return Ok(());
        }
    };

    let dir_mode = std::fs::symlink_metadata(&dir)
        .expect("the sink directory exists")
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o007,
        0,
        "the directory is open to others: {dir_mode:o}"
    );
    if !plan.allow_group_bits {
        assert_eq!(dir_mode & 0o777, 0o700, "the directory is not owner-only");
    }

    let active = std::fs::read(dir.join(ACTIVE)).expect("the active file exists");
    assert!(
        active.is_empty() || active.ends_with(b"\n"),
        "the active file ends in a torn line"
    );
    match &active_before {
        Some(before) => {
            let cut = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1);
            assert_eq!(active, before[..cut], "recovery changed whole lines");
            assert_eq!(recovery.torn_bytes, (before.len() - cut) as u64);
            match &recovery.fragment {
                Some(name) => {
                    let kept = std::fs::read(dir.join(name)).expect("the fragment file exists");
                    assert_eq!(kept, before[cut..], "the fragment is not the torn tail");
                }
                None => assert_eq!(cut, before.len(), "a torn tail was cut but not kept"),
            }
        }
        None => assert!(active.is_empty(), "a created active file is not empty"),
    }

    match &recovery.last_line {
        Some(line) => {
            assert!(!line.contains(&b'\n'), "last_line holds a newline");
            match last_line_of(&active) {
                Some(expected) => assert_eq!(
                    line.as_slice(),
                    expected,
                    "last_line is not the active file's last line"
                ),
                None => assert!(
                    plan.rotated_texts
                        .iter()
                        .any(|text| is_whole_line_of(line, text)),
                    "last_line is not a whole line of any rotated file"
                ),
            }
        }
        None => assert!(
            active.is_empty(),
            "no last_line although the active file has lines"
        ),
    }

    let appended = sink.append(b"{\"id\":1}\n");
    let active = std::fs::read(dir.join(ACTIVE)).expect("the active file exists");
    if appended.is_ok() {
        assert!(
            active.ends_with(b"{\"id\":1}\n"),
            "the appended line is not at the end"
        );
        assert_eq!(sink.last_line(), Some(&b"{\"id\":1}"[..]));
    }
    assert!(
        active.is_empty() || active.ends_with(b"\n"),
        "a write left a torn line"
    );
    let _ = sink.close();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
});
