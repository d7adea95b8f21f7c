//! The libpq connection parameters tokio-postgres does not know, taken out of a
//! connection string before tokio-postgres parses the rest.
//!
//! tokio-postgres understands `sslmode` only as `disable`/`prefer`/`require` and
//! rejects `sslrootcert`, `sslcert`, `sslkey` and `passfile` as unknown options. libpq
//! accepts them in both forms of a connection string, so operators write them there:
//! [`split`] removes them (URL query parameters or key=value pairs) and hands back the
//! remaining string, byte for byte as written, together with their values.

/// The parameters [`split`] takes out.
pub const LIBPQ_PARAMS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

/// A connection string with the libpq-only parameters taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conninfo {
    /// What is left, for tokio-postgres.
    pub rest: String,
    /// `(name, value)` of each parameter in [`LIBPQ_PARAMS`], in the order written
    /// (a later one overrides an earlier one, as in libpq).
    pub params: Vec<(&'static str, String)>,
}

impl Conninfo {
    /// The last value given for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Splits `text` (a `postgres://` URL or key=value pairs). A string this cannot read
/// is returned whole as `rest`, so tokio-postgres reports what is wrong with it.
pub fn split(text: &str) -> Conninfo {
    let lower = text.to_ascii_lowercase();
    let url = ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme));
    let split = if url {
        split_url(text)
    } else {
        split_key_value(text)
    };
    split.unwrap_or_else(|| Conninfo {
        rest: text.to_owned(),
        params: Vec::new(),
    })
}

fn known(name: &str) -> Option<&'static str> {
    LIBPQ_PARAMS.iter().copied().find(|known| *known == name)
}

fn split_url(text: &str) -> Option<Conninfo> {
    // The user info ends at the last `@` (a password may hold a `?`); the query
    // starts at the first `?` after it.
    let after_credentials = text.rfind('@').map_or(0, |at| at + 1);
    let Some(question) = text[after_credentials..].find('?') else {
        return Some(Conninfo {
            rest: text.to_owned(),
            params: Vec::new(),
        });
    };
    let question = after_credentials + question;
    let (base, query) = (&text[..question], &text[question + 1..]);
    let mut kept = Vec::new();
    let mut params = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match known(&percent_decode(key)?) {
            Some(name) => params.push((name, percent_decode(value)?)),
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Some(Conninfo { rest, params })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// key=value pairs, with the syntax of libpq (and tokio-postgres): spaces around `=`
/// allowed, values bare or single-quoted, `\` escaping the next character.
fn split_key_value(text: &str) -> Option<Conninfo> {
    let mut kept: Vec<&str> = Vec::new();
    let mut params = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key_end = start;
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key_end = i + c.len_utf8();
        }
        let key = &text[start..key_end];
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = text.len();
        loop {
            let Some(&(i, c)) = chars.peek() else {
                if quoted {
                    return None;
                }
                break;
            };
            if (!quoted && c.is_whitespace()) || (quoted && c == '\'') {
                chars.next_if(|_| quoted);
                end = if quoted { i + 1 } else { i };
                break;
            }
            chars.next();
            if c == '\\' {
                let (_, escaped) = chars.next()?;
                value.push(escaped);
            } else {
                value.push(c);
            }
        }
        match known(key) {
            Some(name) => params.push((name, value)),
            None => kept.push(&text[start..end]),
        }
    }
    Some(Conninfo {
        rest: kept.join(" "),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_taken_out_and_the_rest_kept_as_written() {
        let info = split(
            "postgres://app:p%3Fss@db.example:5432/x?sslmode=verify-full&application_name=a%20b&sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(
            info.rest,
            "postgres://app:p%3Fss@db.example:5432/x?application_name=a%20b"
        );
        assert_eq!(info.get("sslmode"), Some("verify-full"));
        assert_eq!(info.get("sslrootcert"), Some("/etc/ca.pem"));
        assert_eq!(info.get("sslcert"), Some("/c.pem"));
        assert_eq!(info.get("sslkey"), Some("/k.pem"));
        let info = split("postgresql://db/x?sslmode=require");
        assert_eq!(info.rest, "postgresql://db/x");
        let info = split("postgres://u:pa?ss@db/x");
        assert_eq!(info.rest, "postgres://u:pa?ss@db/x");
        assert!(info.params.is_empty());
    }

    #[test]
    fn key_value_parameters_are_taken_out_with_quotes_and_escapes() {
        let info = split(
            "host=db sslmode = verify-ca password='a b\\'c' sslrootcert='/etc/my ca.pem' dbname=x sslkey=/k\\ ey",
        );
        assert_eq!(info.rest, "host=db password='a b\\'c' dbname=x");
        assert_eq!(info.get("sslmode"), Some("verify-ca"));
        assert_eq!(info.get("sslrootcert"), Some("/etc/my ca.pem"));
        assert_eq!(info.get("sslkey"), Some("/k ey"));
        let parsed: tokio_postgres::Config = info.rest.parse().expect("the rest parses");
        assert_eq!(parsed.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn the_last_value_wins_and_unreadable_strings_pass_through() {
        let info = split("host=db sslmode=require sslmode=disable");
        assert_eq!(info.get("sslmode"), Some("disable"));
        let broken = "host=db password='unterminated sslmode=require";
        assert_eq!(split(broken).rest, broken);
        assert!(split(broken).params.is_empty());
    }
}
