//! What a test does when the machine lacks something it needs (root, a tmpfs mount,
//! a package): on a developer's machine it says so and is skipped; under `CI=true` it
//! fails, naming what is missing, so that a CI run can never pass by skipping.
//!
//! `scripts/test` installs every package the suite needs and runs as root, so a
//! missing capability there is a broken setup, not a reason to test less.

/// Whether this run must have every capability: `CI` set to `true` (or `1`).
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        value.eq_ignore_ascii_case("true") || value == "1"
    })
}

/// `what` cannot run here because of `why`: under `CI=true` this panics (the test
/// fails); otherwise it prints `SKIPPED: …` and the caller skips `what`.
pub fn missing(what: &str, why: &str) {
    assert!(
        !required(),
        "CI=true and {what} cannot run: {why}. CI must provide it (see scripts/test)"
    );
    println!("SKIPPED: {what}: {why} (under CI=true this fails)");
}
