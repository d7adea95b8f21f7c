//! The audit API's query-string parsing (SPEC §9): `ListParams::from_query` and
//! `ExportParams::from_query` never panic on any text; a refusal names a parameter
//! that the query really holds (as decoded, or as written when it cannot be decoded)
//! and says what is wrong; and a cursor survives its own encoding.
#![cfg_attr(fuzzing, no_main)]

use std::collections::HashSet;

use arbitrary::{Result, Unstructured};
use compartment_auditd::filters::{decode_query, Cursor, ExportParams, ListParams, ParamError};
#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;

/// Parameter names and values that reach every branch of the parser.
const NAMES: &[&str] = &[
    "from",
    "to",
    "event",
    "actor",
    "target_type",
    "project_id",
    "limit",
    "cursor",
    "format",
    "evnet",
    "",
    "%66rom",
    "fr%6Fm",
    "%ZZ",
    "%FF",
    "+",
    "limit%00",
];
const VALUES: &[&str] = &[
    "2026-05-01T00:00:00Z",
    "2026-05-01T00:00:00.123456789Z",
    "2026-05-01T00:00:00+02:00",
    "2026-13-01T00:00:00Z",
    "yesterday",
    "organization.user.invited",
    "organization.user.*",
    "organization.*.invited",
    "*",
    "ops@example.com",
    "usr_1",
    "user",
    "1",
    "500",
    "501",
    "0",
    "-1",
    "4294967296",
    "csv",
    "ndjson",
    "xml",
    "AQAAAAAAAAAAAAAAAAAAAAA",
    "%ZZ",
    "%FF%FE",
    "%E2%82",
    "%C3%A9",
    "%00",
    "%0A",
    "+",
    "..%2F..%2Fetc",
    "",
];

fn piece(u: &mut Unstructured, choices: &[&str]) -> Result<String> {
    Ok(if u.ratio(3, 4)? {
        (*u.choose(choices)?).to_owned()
    } else {
        u.arbitrary()?
    })
}

fn query(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 5)? {
        return u.arbitrary();
    }
    let mut out = String::new();
    for i in 0..u.int_in_range(0..=7)? {
        if i > 0 {
            out.push_str(if u.ratio(9, 10)? { "&" } else { "&&" });
        }
        out.push_str(&piece(u, NAMES)?);
        if u.ratio(7, 8)? {
            out.push('=');
            out.push_str(&piece(u, VALUES)?);
        }
    }
    Ok(out)
}

/// The names a query holds: decoded where possible, and as written.
fn names_in(query: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for segment in query.split('&') {
        let raw = segment.split_once('=').map_or(segment, |(name, _)| name);
        names.insert(raw.to_owned());
    }
    if let Ok(pairs) = decode_query(query) {
        names.extend(pairs.into_iter().map(|(name, _)| name));
    } else {
        // A query that does not decode as a whole: decode what can be, name by name.
        for segment in query.split('&').filter(|s| !s.is_empty()) {
            let raw = segment.split_once('=').map_or(segment, |(name, _)| name);
            if let Ok(pairs) = decode_query(raw) {
                names.extend(pairs.into_iter().map(|(name, _)| name));
            }
        }
    }
    names
}

fn check_refusal(query: &str, err: &ParamError) {
    assert!(
        !err.message.is_empty(),
        "a refusal without a message: {err:?}"
    );
    assert!(
        names_in(query).contains(&err.parameter),
        "the refusal names {:?}, which {query:?} does not hold",
        err.parameter
    );
}

fn check(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let query = query(&mut u)?;
    if let Err(err) = ListParams::from_query(&query) {
        check_refusal(&query, &err);
    }
    if let Err(err) = ExportParams::from_query(&query) {
        check_refusal(&query, &err);
    }

    let cursor = Cursor {
        occurred_at_micros: u.arbitrary()?,
        id: u.arbitrary()?,
    };
    match Cursor::decode(&cursor.encode()) {
        Ok(decoded) => assert_eq!(decoded, cursor),
        Err(err) => {
            assert!(
                cursor.occurred_at().is_none(),
                "a valid cursor was refused: {err}"
            );
            assert_eq!(err.parameter, "cursor");
        }
    }
    // Arbitrary text as a cursor: refused (naming `cursor`) or a cursor that encodes
    // back to exactly that text.
    let text: &str = u.arbitrary()?;
    if let Ok(decoded) = Cursor::decode(text) {
        assert_eq!(decoded.encode(), text, "two texts decode to one cursor");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
});
