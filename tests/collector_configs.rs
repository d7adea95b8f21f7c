//! The collector configurations in `docs/collectors.md` that the suite cannot run
//! (Vector, Fluent Bit, Filebeat, Grafana Alloy: none installable here, and none
//! publishes a configuration schema in the registries the project uses) are checked
//! mechanically: parsed where a parser is at hand (TOML, YAML; Fluent Bit's classic
//! format line by line) and held to the page's rules — follow `audit.ndjson` only
//! (or, for Alloy, the `.gz` files only), start from the beginning, keep a renamed
//! file at least as long as the default compression delay, and poll for a new file
//! at most half as long as the sink keeps it ([`ROTATE_MIN_AGE`]). The tested
//! followers (rsyslog, syslog-ng) run in `tests/sink_follower.rs`.

mod sink_support;

use std::time::Duration;

use compartment_auditd::config::Settings;
use compartment_auditd::sink::ROTATE_MIN_AGE;
use sink_support::documented_block;

const DIR: &str = "/var/lib/compartment/audit-logs";
const ACTIVE: &str = "/var/lib/compartment/audit-logs/audit.ndjson";
const PLAIN_ROTATED: &str = "/var/lib/compartment/audit-logs/audit-20260512T091403Z.ndjson";
const GZ_ROTATED: &str = "/var/lib/compartment/audit-logs/audit-20260512T091403Z_001.ndjson.gz";

/// The default compression delay: how long a renamed file stays readable by name.
fn compress_delay() -> Duration {
    Settings::with_defaults("postgres://localhost/unused")
        .file_sink
        .compress_delay
}

/// Shell-style glob with `*` (no `/` crossing), enough for the patterns on the page.
fn glob_matches(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[test]
fn the_glob_helper_matches_like_a_shell() {
    assert!(glob_matches("/a/audit-*.ndjson", "/a/audit-1.ndjson"));
    assert!(!glob_matches("/a/audit-*.ndjson", "/a/audit-1.ndjson.gz"));
    assert!(!glob_matches("/a/*.ndjson", "/a/b/c.ndjson"));
    assert!(glob_matches("/a/audit.ndjson", "/a/audit.ndjson"));
}

fn secs(v: &toml::Value, what: &str) -> u64 {
    v.as_integer()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or_else(|| panic!("{what} is a non-negative integer: {v}"))
}

#[test]
fn vector_follows_the_active_file_from_the_beginning_and_keeps_renamed_files() {
    let text = documented_block("<!-- checked: vector -->");
    let doc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the Vector snippet is not TOML: {e}"));
    let source = &doc["sources"]["compartment_audit"];
    assert_eq!(source["type"].as_str(), Some("file"));
    let include: Vec<&str> = source["include"]
        .as_array()
        .expect("include is a list")
        .iter()
        .map(|v| v.as_str().expect("include holds paths"))
        .collect();
    assert!(include.iter().any(|p| glob_matches(p, ACTIVE)));
    for rotated in [PLAIN_ROTATED, GZ_ROTATED] {
        assert!(
            !include.iter().any(|p| glob_matches(p, rotated)),
            "{include:?} would read {rotated} again as a new file"
        );
    }
    assert_eq!(source["read_from"].as_str(), Some("beginning"));
    let rotate_wait = secs(&source["rotate_wait_secs"], "rotate_wait_secs");
    assert!(
        Duration::from_secs(rotate_wait) >= compress_delay(),
        "rotate_wait_secs {rotate_wait} is shorter than the compression delay"
    );
    let cooldown = Duration::from_millis(secs(
        &source["glob_minimum_cooldown_ms"],
        "glob_minimum_cooldown_ms",
    ));
    assert!(
        cooldown * 2 <= ROTATE_MIN_AGE,
        "Vector looks for a new file every {cooldown:?}; the sink keeps one {ROTATE_MIN_AGE:?}"
    );
    assert!(secs(&source["max_line_bytes"], "max_line_bytes") >= 1 << 20);
    assert_eq!(
        source["fingerprint"]["strategy"].as_str(),
        Some("checksum"),
        "a renamed file is known by its first line"
    );
    let transform = &doc["transforms"]["compartment_audit_json"];
    assert_eq!(transform["type"].as_str(), Some("remap"));
    assert_eq!(
        transform["inputs"].as_array().map(Vec::as_slice),
        Some(&[toml::Value::String("compartment_audit".into())][..])
    );
}

/// Fluent Bit's classic format: `[SECTION]` headers, then `key value` lines;
/// `#` starts a comment line. Returns the sections in order with their pairs.
fn fluent_bit_sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_owned(), Vec::new()));
            continue;
        }
        assert!(
            raw.starts_with("    "),
            "line {}: a key outside a section or not indented: {raw}",
            n + 1
        );
        let (key, value) = line
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("line {}: a key without a value: {raw}", n + 1));
        let section = sections
            .last_mut()
            .unwrap_or_else(|| panic!("line {}: before any section", n + 1));
        section.1.push((key.to_owned(), value.trim().to_owned()));
    }
    sections
}

#[test]
fn fluent_bit_tails_only_the_active_file_from_its_head() {
    let text = documented_block("<!-- checked: fluent-bit -->");
    let sections = fluent_bit_sections(&text);
    let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["SERVICE", "INPUT"]);
    let input = &sections[1].1;
    let get = |key: &str| -> &str {
        let found: Vec<&str> = input
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(found.len(), 1, "[INPUT] sets {key} once: {found:?}");
        found[0]
    };
    assert_eq!(get("name"), "tail");
    let path = get("path");
    assert!(glob_matches(path, ACTIVE));
    for rotated in [PLAIN_ROTATED, GZ_ROTATED] {
        assert!(
            !glob_matches(path, rotated),
            "{path} would read {rotated} again"
        );
    }
    assert_eq!(get("read_from_head"), "true");
    assert!(get("db").starts_with('/'), "positions survive restarts");
    let rotate_wait: u64 = get("rotate_wait").parse().expect("rotate_wait is seconds");
    assert!(
        Duration::from_secs(rotate_wait) >= compress_delay(),
        "rotate_wait {rotate_wait} is shorter than the compression delay"
    );
    assert_eq!(get("buffer_max_size"), "1M");
    assert_eq!(get("parser"), "json");
}

#[test]
fn filebeat_reads_the_active_and_renamed_files_but_never_the_gz() {
    let text = documented_block("<!-- checked: filebeat -->");
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("the Filebeat snippet is not YAML: {e}"));
    let inputs = doc["filebeat.inputs"]
        .as_array()
        .expect("filebeat.inputs is a list");
    assert_eq!(inputs.len(), 1);
    let input = &inputs[0];
    assert_eq!(input["type"], "filestream");
    assert_eq!(input["id"], "compartment-audit");
    let paths: Vec<&str> = input["paths"]
        .as_array()
        .expect("paths is a list")
        .iter()
        .map(|p| p.as_str().expect("paths holds strings"))
        .collect();
    for wanted in [ACTIVE, PLAIN_ROTATED] {
        assert!(
            paths.iter().any(|p| glob_matches(p, wanted)),
            "{paths:?} miss {wanted}"
        );
    }
    assert!(
        !paths.iter().any(|p| glob_matches(p, GZ_ROTATED)),
        "{paths:?} would read the archive"
    );
    assert!(paths.iter().all(|p| p.starts_with(DIR)));
    let fingerprint = &input["prospector.scanner.fingerprint"];
    assert_eq!(fingerprint["enabled"], true);
    let length = fingerprint["length"]
        .as_u64()
        .expect("the fingerprint length is a number");
    // The first line of every file is longer than that and holds an id no other
    // file's first line has.
    assert!(length <= 64, "fingerprint length {length}");
    assert!(
        input
            .as_object()
            .expect("the input is a mapping")
            .contains_key("file_identity.fingerprint"),
        "files are known by fingerprint, so a renamed file is not read again"
    );
    assert_eq!(input["close.on_state_change.removed"], false);
    let parsers = input["parsers"].as_array().expect("parsers is a list");
    assert_eq!(parsers[0]["ndjson"]["target"], "");
}

#[test]
fn alloy_ships_only_the_compressed_files() {
    let text = documented_block("<!-- checked: alloy -->");
    let paths: Vec<&str> = text
        .match_indices("__path__ = \"")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            &rest[..rest.find('"').expect("the path is quoted")]
        })
        .collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(glob_matches(paths[0], GZ_ROTATED));
    for followed in [ACTIVE, PLAIN_ROTATED] {
        assert!(
            !glob_matches(paths[0], followed),
            "{} would read {followed}",
            paths[0]
        );
    }
    assert!(text.contains("format  = \"gz\""), "decompression is on");
}

#[test]
fn the_tested_syslog_ng_polls_at_most_half_as_long_as_a_new_file_lives() {
    let text = documented_block("<!-- tested: syslog-ng-file -->");
    let freq: f64 = text
        .split_once("follow-freq(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(v, _)| v.parse().expect("follow-freq is a number"))
        .expect("the syslog-ng snippet sets follow-freq");
    assert!(
        Duration::from_secs_f64(freq * 2.0) <= ROTATE_MIN_AGE,
        "syslog-ng polls every {freq} s; the sink keeps a new file {ROTATE_MIN_AGE:?}"
    );
    assert!(
        !text.contains("wildcard-file"),
        "file(), not wildcard-file()"
    );
}
