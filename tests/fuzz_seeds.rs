//! The fuzz targets' oracles over their committed seeds, in the ordinary test build.
//!
//! Each target in `fuzz/fuzz_targets/` checks a property of arbitrary input (the
//! sanitizer never leaks a planted secret, a sink recovers from any damage, …). Here
//! every file in `fuzz/seeds/<target>/` goes through the same oracle, compiled from the
//! same source: a seed that once found a defect keeps guarding against it without the
//! nightly toolchain or an instrumented build. Exploring new inputs is `scripts/fuzz`'s
//! job (see the README).

// Each target is compiled exactly as cargo-fuzz compiles it, so the two that share
// `fuzz_targets/common` each declare it.
#![allow(clippy::duplicate_mod)]

/// Stands in for `libfuzzer_sys::fuzz_target!` (which the targets import only when
/// built by cargo-fuzz, under `cfg(fuzzing)`): the target's body becomes `run`.
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn run($data: &[u8]) $body
    };
}

#[path = "../fuzz/fuzz_targets/config_load.rs"]
mod config_load;
#[path = "../fuzz/fuzz_targets/export_encode.rs"]
mod export_encode;
#[path = "../fuzz/fuzz_targets/filters_parse.rs"]
mod filters_parse;
#[path = "../fuzz/fuzz_targets/sanitize.rs"]
mod sanitize;
#[path = "../fuzz/fuzz_targets/sink_recover.rs"]
mod sink_recover;

use std::path::PathBuf;

/// Runs every seed of `target` through `run`; a panic names the seed.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for seed in &seeds {
        let data = std::fs::read(seed)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", seed.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!(
                "the {target} oracle failed on seed {} (replay it with `cargo fuzz run {target} {}` in fuzz/)",
                seed.display(),
                seed.display()
            );
        }
    }
}

#[test]
fn config_load_seeds() {
    replay("config_load", config_load::run);
}

#[test]
fn export_encode_seeds() {
    replay("export_encode", export_encode::run);
}

#[test]
fn filters_parse_seeds() {
    replay("filters_parse", filters_parse::run);
}

#[test]
fn sanitize_seeds() {
    replay("sanitize", sanitize::run);
}

#[test]
fn sink_recover_seeds() {
    replay("sink_recover", sink_recover::run);
}
