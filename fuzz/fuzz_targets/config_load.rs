//! Configuration loading over arbitrary TOML text and environment pairs (SPEC §2):
//! `Settings::load_from` never panics; an error has a message and never shows the
//! database password; accepted settings render (`config check`) without the
//! password, and the rendered file loads back to the same settings — it is documented
//! as a valid configuration file of its own.
#![cfg_attr(fuzzing, no_main)]

use arbitrary::{Result, Unstructured};
use compartment_auditd::config::{Settings, ENV_FALLBACK_NAMES, ENV_NAMES, SECTIONS};
#[cfg(fuzzing)]
use libfuzzer_sys::fuzz_target;

/// The password planted in database URLs; it must never be shown.
const PASSWORD: &str = "Pl4ntedDbPassw0rd";

/// Values in the syntaxes the settings accept, and near misses.
const VALUES: &[&str] = &[
    "1d",
    "15m",
    "6h",
    "500ms",
    "0s",
    "3600",
    "-1",
    "0",
    "1",
    "64M",
    "64MiB",
    "1G",
    "10K",
    "64m",
    "1.5M",
    "18446744073709551615",
    "18446744073709551616",
    "true",
    "false",
    "yes",
    "off",
    "",
    " ",
    "0 3 * * *",
    "*/5 * * * *",
    "0 0 3 * * *",
    "61 * * * *",
    "@daily",
    "now",
    "beginning",
    "always",
    "interval",
    "never",
    "json",
    "text",
    "info",
    "debug,hyper=warn",
    "127.0.0.1:9464",
    "[::1]:0",
    "localhost:80",
    "/var/lib/compartment/audit-logs",
    "relative/dir",
    "default",
    "1e3",
    "NaN",
    "inf",
    "\u{0}",
];

/// Fuzzer text that does not contain [`PASSWORD`]: comparison tracing can teach it
/// the constant, and a value the fuzzer wrote under another key is not the password.
fn text(u: &mut Unstructured) -> Result<String> {
    Ok(u.arbitrary::<String>()?.replace(PASSWORD, "x"))
}

/// A database connection string; only the `database.url` setting gets the planted
/// password, other settings get a URL with a different one.
fn database_url(u: &mut Unstructured, password: &str) -> Result<String> {
    Ok(match u.int_in_range(0..=4)? {
        0 => format!("postgres://app:{password}@db.internal:5432/app"),
        1 => format!("postgresql://app:{password}@db/app?sslmode=require"),
        2 => format!("host=db user=app password={password} dbname=app"),
        3 => format!("postgres://db/app?password={password}&user=app"),
        _ => text(u)?,
    })
}

fn value_text(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=3)? {
        0 | 1 => (*u.choose(VALUES)?).to_owned(),
        2 => database_url(u, "other-setting-pw")?,
        _ => text(u)?,
    })
}

/// A TOML value literal: quoted text, a bare number or boolean, an array, a table, or
/// raw fuzzer text (possibly not TOML at all).
fn toml_value(u: &mut Unstructured, is_url: bool) -> Result<String> {
    Ok(match u.int_in_range(0..=6)? {
        0 if is_url => toml::Value::String(database_url(u, PASSWORD)?).to_string(),
        0..=2 => toml::Value::String(value_text(u)?).to_string(),
        3 => u.arbitrary::<i64>()?.to_string(),
        4 => u.arbitrary::<f64>()?.to_string(),
        5 => (*u.choose(&[
            "true",
            "false",
            "[]",
            "[1, \"a\"]",
            "{}",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
        ])?)
        .to_owned(),
        _ => text(u)?,
    })
}

fn toml_text(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 6)? {
        return text(u);
    }
    let mut out = String::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let section = match u.int_in_range(0..=5)? {
            0 => text(u)?,
            _ => (*u.choose(SECTIONS)?).to_owned(),
        };
        out.push_str(&format!("[{section}]\n"));
        for _ in 0..u.int_in_range(0..=5)? {
            let key = match u.int_in_range(0..=5)? {
                0 => text(u)?,
                _ => {
                    let name = u.choose(ENV_NAMES)?;
                    name.key
                        .split_once('.')
                        .map_or(name.key, |(_, k)| k)
                        .to_owned()
                }
            };
            let is_url = section == "database" && key == "url";
            out.push_str(&format!("{key} = {}\n", toml_value(u, is_url)?));
        }
    }
    Ok(out)
}

fn env_pairs(u: &mut Unstructured) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    if u.ratio(3, 4)? {
        pairs.push((
            "COMPARTMENT_DATABASE_URL".to_owned(),
            database_url(u, PASSWORD)?,
        ));
    }
    for _ in 0..u.int_in_range(0..=8)? {
        let name = match u.int_in_range(0..=7)? {
            0 => text(u)?,
            1 => format!("COMPARTMENT_AUDIT_{}", text(u)?),
            2 => u.choose(ENV_FALLBACK_NAMES)?.var.to_owned(),
            _ => u.choose(ENV_NAMES)?.var.to_owned(),
        };
        let value = if key_is_url(&name) && u.ratio(1, 2)? {
            database_url(u, PASSWORD)?
        } else {
            value_text(u)?
        };
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn key_is_url(var: &str) -> bool {
    compartment_auditd::config::key_for_env(var) == Some("database.url")
}

fn shows_password(text: &str) -> bool {
    text.contains(PASSWORD)
}

fn check(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let with_file = u.ratio(3, 4)?;
    let toml = toml_text(&mut u)?;
    let env = env_pairs(&mut u)?;

    let dir = tempfile::Builder::new()
        .prefix("fuzz-config-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    let path = dir.path().join("auditd.toml");
    std::fs::write(&path, &toml).expect("writing the config file");
    let file = with_file.then_some(path.as_path());

    match Settings::load_from(file, env.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Err(err) => {
            let message = err.to_string();
            assert!(!message.is_empty(), "an error without a message");
            assert!(
                !shows_password(&message),
                "an error shows the database password: {message}"
            );
        }
        Ok(mut settings) => {
            let rendered = settings.to_toml_redacted();
            assert!(
                !shows_password(&rendered),
                "config check shows the database password"
            );
            // The rendered file is a configuration of its own: loading it (with the
            // real URL from the environment, since the file's is masked) gives the
            // same settings back.
            std::fs::write(&path, &rendered).expect("writing the rendered config");
            let url = settings.database.url.expose().to_owned();
            let again =
                Settings::load_from(Some(&path), [("COMPARTMENT_DATABASE_URL", url.as_str())]);
            let mut again = match again {
                Ok(again) => again,
                Err(err) => panic!("the rendered configuration does not load: {err}\n{rendered}"),
            };
            settings.warnings.clear();
            again.warnings.clear();
            assert_eq!(
                settings, again,
                "the rendered configuration loads differently:\n{rendered}"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
});
