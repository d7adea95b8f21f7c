//! Redaction of database connection strings for display.
//!
//! PostgreSQL accepts two forms, and both can carry a password: a URL
//! (`postgres://user:secret@host/db?password=secret`) and key/value pairs
//! (`host=db user=app password='secret'`). Redaction errs on the side of hiding too
//! much: a malformed string may lose more than its password, never less.

use std::sync::LazyLock;

use regex::Regex;

/// What a redacted secret is replaced with.
pub const MASK: &str = "****";

/// `password=…` (and libpq's `sslpassword=…`, the client key's passphrase) in
/// key/value form, quoted (with backslash escapes) or bare.
static KEY_VALUE_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")
        .expect("the pattern is a valid regular expression, fixed at compile time")
});

/// `password=…` or `sslpassword=…` as a URL query parameter.
static QUERY_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)([?&](?:ssl)?password=)[^&#]*")
        .expect("the pattern is a valid regular expression, fixed at compile time")
});

/// Returns `connection` with every password replaced by [`MASK`], in either form:
/// `postgres://user:****@host/db`, `host=db password=****`.
pub fn redact_database_url(connection: &str) -> String {
    let lower = connection.to_ascii_lowercase();
    let scheme_end = ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| lower.starts_with(*scheme))
        .map(|scheme| scheme.len());
    let Some(scheme_end) = scheme_end else {
        return KEY_VALUE_PASSWORD
            .replace_all(connection, |caps: &regex::Captures<'_>| {
                format!("{}{MASK}", &caps[1])
            })
            .into_owned();
    };
    // The user info ends at the last `@`: a password may contain an unescaped `@`, `/`
    // or `?` that would fool a stricter parser into showing part of it.
    let mut out = match connection[scheme_end..].rfind('@') {
        Some(at) => {
            let at = scheme_end + at;
            let userinfo = &connection[scheme_end..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:{MASK}{}",
                    &connection[..scheme_end],
                    &userinfo[..colon],
                    &connection[at..]
                ),
                None => connection.to_owned(),
            }
        }
        None => connection.to_owned(),
    };
    out = QUERY_PASSWORD
        .replace_all(&out, |caps: &regex::Captures<'_>| {
            format!("{}{MASK}", &caps[1])
        })
        .into_owned();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_the_password_of_a_url() {
        assert_eq!(
            redact_database_url("postgres://app:hunter2@db.internal:5432/compartment"),
            "postgres://app:****@db.internal:5432/compartment"
        );
        assert_eq!(
            redact_database_url("postgresql://app:p%40ss@h1,h2/db?sslmode=require"),
            "postgresql://app:****@h1,h2/db?sslmode=require"
        );
    }

    #[test]
    fn hides_a_password_with_unescaped_separators() {
        let redacted = redact_database_url("postgres://app:se/cr?et@host/db");
        assert!(!redacted.contains("se/cr?et"), "{redacted}");
        assert!(redacted.ends_with("@host/db"), "{redacted}");
    }

    #[test]
    fn hides_a_password_query_parameter() {
        assert_eq!(
            redact_database_url("postgres://host/db?user=app&password=hunter2&sslmode=disable"),
            "postgres://host/db?user=app&password=****&sslmode=disable"
        );
        assert_eq!(
            redact_database_url("postgres://host/db?sslpassword=keypass"),
            "postgres://host/db?sslpassword=****"
        );
    }

    #[test]
    fn hides_the_password_of_key_value_pairs() {
        assert_eq!(
            redact_database_url("host=db user=app password=hunter2 dbname=x"),
            "host=db user=app password=**** dbname=x"
        );
        assert_eq!(
            redact_database_url("host=db password = 'hun ter\\'2' dbname=x"),
            "host=db password = **** dbname=x"
        );
        assert_eq!(redact_database_url("PASSWORD=hunter2"), "PASSWORD=****");
        assert_eq!(
            redact_database_url("host=db sslpassword=keypass"),
            "host=db sslpassword=****"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_url_password_survives(pw in "Zq[A-Za-z0-9!$%^*()_+=/?#@:.~-]{6,24}") {
            let redacted = redact_database_url(&format!("postgres://app:{pw}@db.internal:5432/x"));
            proptest::prop_assert!(!redacted.contains(&pw), "{}", redacted);
        }

        #[test]
        fn no_key_value_password_survives(
            bare in "Zq[A-Za-z0-9!$%^*()_+=/?#@:.~-]{6,24}",
            quoted in "Zq[A-Za-z0-9 !$%^*()_+=/?#@:.~-]{6,24}",
        ) {
            let redacted = redact_database_url(&format!("host=db password={bare} dbname=x"));
            proptest::prop_assert!(!redacted.contains(&bare), "{}", redacted);
            let redacted = redact_database_url(&format!("host=db password='{quoted}' dbname=x"));
            proptest::prop_assert!(!redacted.contains(&quoted), "{}", redacted);
        }
    }

    #[test]
    fn leaves_strings_without_a_password_alone() {
        for s in [
            "postgres://app@host/db",
            "postgres://host/db",
            "host=/run/postgresql user=app",
        ] {
            assert_eq!(redact_database_url(s), s);
        }
    }
}
