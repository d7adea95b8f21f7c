//! The list/export encoders over arbitrary sanitized events (SPEC §9): NDJSON gives
//! one line per event that parses back to the event; CSV (RFC 4180) parses back with
//! the `csv` crate to a header and one 13-cell record per event whose cells are the
//! event's fields — exactly, once the neutralising `'` is taken off by the documented
//! rule (one `'` when the first character after the leading `'`s is a formula
//! character) — and no cell
//! starts with a character that makes a spreadsheet run it as a formula.
#![cfg_attr(fuzzing, no_main)]

mod common;

use arbitrary::{Result, Unstructured};
use chrono::SecondsFormat;
use compartment_auditd::event::SanitizedEvent;
use compartment_auditd::export::{encode_csv_header, encode_events, ExportFormat, CSV_COLUMNS};
use compartment_auditd::sanitize::Sanitizer;
#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn sanitizer() -> &'static Sanitizer {
    static SANITIZER: OnceLock<Sanitizer> = OnceLock::new();
    SANITIZER.get_or_init(Sanitizer::new)
}

/// Characters that make a spreadsheet treat a cell as a formula.
const FORMULA_STARTS: &[char] = &['=', '+', '-', '@', '\t', '\r'];

/// The cells of an event as the CSV promises them, before neutralising.
fn cells(event: &SanitizedEvent) -> Vec<String> {
    vec![
        event.id.to_string(),
        event
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        event.organization_id.to_string(),
        event.organization.clone(),
        event.event_type.clone(),
        event.actor.kind.clone(),
        event.actor.id.clone(),
        event.actor.email.clone().unwrap_or_default(),
        event.target.kind.clone().unwrap_or_default(),
        event.target.id.clone().unwrap_or_default(),
        event.project_id.clone().unwrap_or_default(),
        event.status.clone(),
        serde_json::to_string(&event.metadata).expect("metadata encodes"),
    ]
}

/// Core fields that lead with a formula character, so that the neutralising path is
/// taken often.
fn formula_prefix(u: &mut Unstructured, field: &mut String) -> Result<()> {
    if u.ratio(1, 4)? {
        let prefix = *u.choose(&["=", "+", "-", "@", "\t", "\r", "'", "\"", "\n", " ="])?;
        field.insert_str(0, prefix);
    }
    Ok(())
}

fn check(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut events = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let mut event = common::event(&mut u)?;
        formula_prefix(&mut u, &mut event.organization)?;
        formula_prefix(&mut u, &mut event.actor_id)?;
        formula_prefix(&mut u, &mut event.status)?;
        if let Some(target) = event.target_id.as_mut() {
            formula_prefix(&mut u, target)?;
        }
        let (sanitized, _) = sanitizer().sanitize_event(&event);
        events.push(sanitized);
    }

    // NDJSON: one line per event, each the event's own JSON.
    let mut ndjson = Vec::new();
    encode_events(ExportFormat::Ndjson, &events, &mut ndjson).expect("NDJSON encodes");
    let text = std::str::from_utf8(&ndjson).expect("NDJSON is UTF-8");
    assert!(text.is_empty() || text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), events.len(), "one NDJSON line per event");
    for (line, event) in lines.iter().zip(&events) {
        let parsed: serde_json::Value = serde_json::from_str(line).expect("a line is JSON");
        assert_eq!(
            parsed,
            serde_json::to_value(event).expect("an event encodes")
        );
    }

    // CSV: header and records through a real CSV parser.
    let mut csv_bytes = Vec::new();
    encode_csv_header(&mut csv_bytes).expect("the header encodes");
    encode_events(ExportFormat::Csv, &events, &mut csv_bytes).expect("CSV encodes");
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(csv_bytes.as_slice());
    let header = reader.headers().expect("a header row").clone();
    assert_eq!(header.iter().collect::<Vec<_>>(), CSV_COLUMNS);
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<std::result::Result<_, _>>()
        .expect("the CSV parses");
    assert_eq!(records.len(), events.len(), "one CSV record per event");
    for (record, event) in records.iter().zip(&events) {
        assert_eq!(record.len(), CSV_COLUMNS.len());
        for ((cell, expected), column) in record.iter().zip(cells(event)).zip(CSV_COLUMNS) {
            assert!(
                !cell.starts_with(FORMULA_STARTS),
                "{column}: the cell {cell:?} would run as a formula"
            );
            // The documented reading rule: drop one leading `'` when the first
            // character after the leading `'`s is a formula character.
            let restored = match cell.strip_prefix('\'') {
                Some(rest) if rest.trim_start_matches('\'').starts_with(FORMULA_STARTS) => rest,
                _ => cell,
            };
            assert_eq!(restored, expected, "{column}: the cell does not round-trip");
        }
        let metadata: serde_json::Value = serde_json::from_str(&record[CSV_COLUMNS.len() - 1])
            .expect("the metadata cell is JSON");
        assert_eq!(
            metadata,
            serde_json::to_value(&event.metadata).expect("metadata encodes")
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
});
