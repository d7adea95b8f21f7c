//! The `compartment-auditd` binary: parses the command line and hands over to [`compartment_auditd::cli`].
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(compartment_auditd::cli::main());
}
