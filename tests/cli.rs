//! The command line itself: version, help for every subcommand, completions and the
//! man page generated from the CLI definition. None of these needs a database.

use std::process::Command;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_compartment-auditd"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn run(args: &[&str]) -> (i32, String, String) {
    let output = bin().args(args).output().expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_crate_version() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("compartment-auditd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["run", "--help"][..],
        &["migrate", "--help"],
        &["config", "check", "--help"],
        &["list", "--help"],
        &["export", "--help"],
        &["org", "create", "--help"],
        &["org", "settings", "get", "--help"],
        &["org", "settings", "set", "--help"],
        &["user", "add", "--help"],
        &["role", "create", "--help"],
        &["token", "create", "--help"],
        &["token", "revoke", "--help"],
        &["retention", "--help"],
        &["sink", "status", "--help"],
        &["sink", "rebaseline", "--help"],
        &["completions", "--help"],
        &["man-page", "--help"],
    ] {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(stdout.contains("Usage:"), "{args:?} prints usage");
    }
}

#[test]
fn completions_are_valid_shell() {
    let (code, bash, _) = run(&["completions", "bash"]);
    assert_eq!(code, 0);
    let checked = Command::new("bash")
        .args(["-n", "-c", &bash])
        .status()
        .expect("bash runs");
    assert!(checked.success(), "bash completion has a syntax error");
    assert!(
        bash.contains("rebaseline"),
        "completions know the subcommands"
    );
    for shell in ["zsh", "fish"] {
        let (code, script, _) = run(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(script.contains("compartment-auditd"), "{shell}");
    }
    let (code, _, stderr) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error");
    assert!(stderr.contains("tcsh"));
}

#[test]
fn the_man_page_is_roff_listing_the_commands() {
    let (code, page, _) = run(&["man-page"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH compartment-auditd 1"));
    for command in ["run", "migrate", "export", "retention", "sink"] {
        assert!(page.contains(command), "the man page lists {command}");
    }
}
