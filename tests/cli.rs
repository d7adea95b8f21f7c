//! The command line itself: version, help for every subcommand, completions and the
//! man page generated from the CLI definition. None of these needs a database. Also
//! that the binary depends on nothing its source does not use.

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
        &["sink", "keygen", "--help"],
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

/// Every `[dependencies]` crate of Cargo.toml is named somewhere in `src/`: an unused
/// one is build time, supply chain and audit surface for nothing.
#[test]
fn every_dependency_is_used_by_the_source() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .expect("reading Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    let mut source = String::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path).expect("reading a source file"));
            }
        }
    }
    let dependencies = manifest["dependencies"]
        .as_table()
        .expect("a [dependencies] table");
    let unused: Vec<&String> = dependencies
        .keys()
        .filter(|name| {
            let name = name.replace('-', "_");
            !source.match_indices(&name).any(|(at, _)| {
                let before = source[..at].chars().next_back();
                let after = source[at + name.len()..].chars().next();
                let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !ident(before) && !ident(after)
            })
        })
        .collect();
    assert!(
        unused.is_empty(),
        "dependencies no source file uses: {unused:?}"
    );
}
