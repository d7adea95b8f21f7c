//! The `compartment-auditd` binary: parses the command line and hands over to [`compartment_auditd::cli`].
#![forbid(unsafe_code)]

/// jemalloc instead of glibc's malloc: the mirror allocates and frees a JSON tree per
/// event, and glibc spent about a quarter of the catch-up's CPU on that (see
/// `docs/performance-notes.md`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(compartment_auditd::cli::main());
}
