//! The value syntax of durations, sizes and booleans, shared by the TOML file and the
//! environment (SPEC §2).
//!
//! - **Durations**: one or more `<integer><unit>` parts, unit `ms`, `s`, `m`, `h`, `d`
//!   or `w` (`500ms`, `30s`, `15m`, `6h`, `1d`, `2w`, `1h30m`); a bare integer is
//!   seconds, because that is what a value like `3600` means in an environment file.
//! - **Sizes**: bytes as a bare integer, or an integer with a binary unit as in
//!   logrotate: `K`, `M`, `G` (`64M` = 64 MiB = 67108864 bytes), also written `KiB`,
//!   `MiB`, `GiB`, and `B` for bytes. Decimal-looking `KB`/`MB`/`GB` are refused
//!   because readers disagree on what they mean.
//! - **Booleans**: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, any case.
//!
//! Everything here is pure; the loader adds the key and the value's origin to errors.

use std::time::Duration;

/// What a duration may look like, for error messages and documentation.
pub const DURATION_SYNTAX: &str = "an integer with a unit ms, s, m, h, d or w (500ms, 30s, 15m, 6h, 1d, 2w; parts may be combined as in 1h30m), or a bare integer of seconds";

/// What a size may look like, for error messages and documentation.
pub const SIZE_SYNTAX: &str = "bytes as an integer, or an integer with a binary unit K, M or G as in logrotate (64M = 64 MiB), also written KiB, MiB, GiB";

/// What a boolean may look like, for error messages and documentation.
pub const BOOL_SYNTAX: &str = "true or false (also yes/no, on/off, 1/0)";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

const MS_PER_SECOND: u64 = 1000;
const MS_PER_MINUTE: u64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: u64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: u64 = 24 * MS_PER_HOUR;
const MS_PER_WEEK: u64 = 7 * MS_PER_DAY;

/// Parses a duration (see the module documentation). Returns the reason on failure.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the value is empty".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text
            .parse()
            .map_err(|_| "the number is too large".to_string())?;
        return Ok(Duration::from_secs(seconds));
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let per_unit = match unit {
            "ms" => 1,
            "s" => MS_PER_SECOND,
            "m" => MS_PER_MINUTE,
            "h" => MS_PER_HOUR,
            "d" => MS_PER_DAY,
            "w" => MS_PER_WEEK,
            "" if tail.is_empty() => return Err(format!("{number} has no unit")),
            "" => return Err(format!("unexpected {tail:?} after {number}")),
            other => return Err(format!("unknown unit {other:?}")),
        };
        let number: u64 = number
            .parse()
            .map_err(|_| "the number is too large".to_string())?;
        total_ms = number
            .checked_mul(per_unit)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "the duration is too long".to_string())?;
        rest = tail;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the syntax [`parse_duration`] reads, largest units first
/// (`1d`, `1m30s`, `100ms`). Sub-millisecond parts, which the syntax cannot express,
/// are left out.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, per_unit) in [
        ("d", MS_PER_DAY),
        ("h", MS_PER_HOUR),
        ("m", MS_PER_MINUTE),
        ("s", MS_PER_SECOND),
        ("ms", 1),
    ] {
        let count = ms / per_unit;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(unit);
            ms -= count * per_unit;
        }
    }
    out
}

/// Parses a size in bytes (see the module documentation). Returns the reason on failure.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the value is empty".into());
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("expected a number at {text:?}"));
    }
    let (number, unit) = text.split_at(digits);
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "kb" | "mb" | "gb" => {
            return Err(format!(
                "{unit} is ambiguous; write {number}{} (binary) or a number of bytes",
                &unit[..1].to_ascii_uppercase()
            ))
        }
        _ => return Err(format!("unknown unit {unit:?}")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| "the size is too large".to_string())
}

/// Formats a size in the syntax [`parse_size`] reads, with the largest binary unit
/// that divides it exactly (`64M`, `16K`, `4097`).
pub fn format_size(bytes: u64) -> String {
    for (unit, per_unit) in [("G", GIB), ("M", MIB), ("K", KIB)] {
        if bytes != 0 && bytes % per_unit == 0 {
            return format!("{}{unit}", bytes / per_unit);
        }
    }
    bytes.to_string()
}

/// Parses a boolean (see the module documentation). Returns the reason on failure.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("not a boolean".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_documented_unit() {
        for (text, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("15m", Duration::from_secs(15 * 60)),
            ("6h", Duration::from_secs(6 * 3600)),
            ("1d", Duration::from_secs(86_400)),
            ("2w", Duration::from_secs(14 * 86_400)),
            ("1h30m", Duration::from_secs(5400)),
            ("3600", Duration::from_secs(3600)),
            ("0", Duration::ZERO),
            (" 30s ", Duration::from_secs(30)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn durations_without_a_known_unit_are_refused() {
        for text in [
            "",
            "s",
            "-5s",
            "1.5h",
            "10x",
            "10 s",
            "1D",
            "1h30",
            "ms5",
            "99999999999999999999",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
        assert!(parse_duration(&format!("{}w", u64::MAX / 1000)).is_err());
    }

    #[test]
    fn durations_format_back_to_what_they_parse_from() {
        for text in ["1d", "1m30s", "100ms", "5s", "0s", "2d3h4m5s6ms"] {
            let parsed = parse_duration(text).expect("valid in this test");
            assert_eq!(format_duration(parsed), text);
        }
        assert_eq!(format_duration(Duration::from_secs(14 * 86_400)), "14d");
    }

    #[test]
    fn sizes_use_binary_units_like_logrotate() {
        for (text, expected) in [
            ("64M", 67_108_864),
            ("64MiB", 67_108_864),
            ("64m", 67_108_864),
            ("4K", 4096),
            ("4k", 4096),
            ("4KiB", 4096),
            ("1G", 1_073_741_824),
            ("1GiB", 1_073_741_824),
            ("4096", 4096),
            ("4096B", 4096),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn ambiguous_and_malformed_sizes_are_refused() {
        for text in ["", "M", "64MB", "64 M", "64T", "-1", "1.5G", "99999999999G"] {
            assert!(parse_size(text).is_err(), "{text:?} was accepted");
        }
        let reason = parse_size("64MB").expect_err("ambiguous");
        assert!(reason.contains("64M"), "{reason}");
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        assert_eq!(format_size(67_108_864), "64M");
        assert_eq!(format_size(16 * 1024), "16K");
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(2 * GIB), "2G");
    }

    #[test]
    fn booleans_in_every_documented_spelling() {
        for text in ["true", "TRUE", "yes", "On", "1"] {
            assert_eq!(parse_bool(text), Ok(true), "{text:?}");
        }
        for text in ["false", "False", "no", "off", "0"] {
            assert_eq!(parse_bool(text), Ok(false), "{text:?}");
        }
        for text in ["", "2", "enabled", "t"] {
            assert!(parse_bool(text).is_err(), "{text:?} was accepted");
        }
    }
}
