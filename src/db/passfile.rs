//! Passwords that live in files, read again for every new connection, so that a
//! rotated Kubernetes Secret or systemd credential takes effect without a restart.
//!
//! - `database.password_file` (`COMPARTMENT_DATABASE_PASSWORD_FILE`): the whole file
//!   is the password, less one trailing newline.
//! - `.pgpass` as libpq reads it, when no password is given otherwise: `passfile` in
//!   the connection string, else `PGPASSFILE`, else `~/.pgpass`; lines
//!   `host:port:database:user:password` with `*` wildcards and `\` escapes. A file that
//!   group or others can read is ignored, with a warning, as libpq does.

use std::path::{Path, PathBuf};

/// A password file that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot read the password file {} (database.password_file): {reason}", path.display())]
pub struct PasswordFileError {
    /// The file.
    pub path: PathBuf,
    /// Why (never its content).
    pub reason: String,
}

/// The content of `database.password_file`, less one trailing newline.
pub fn read_password_file(path: &Path) -> Result<String, PasswordFileError> {
    let error = |reason: String| PasswordFileError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|err| error(err.to_string()))?;
    let mut text = String::from_utf8(bytes).map_err(|_| error("it is not UTF-8".into()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(error("it is empty".into()));
    }
    Ok(text)
}

/// What a `.pgpass` line is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgpassKey {
    /// Host name, or `localhost` for a Unix socket (libpq's rule).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name.
    pub dbname: String,
    /// User name.
    pub user: String,
}

/// The password `.pgpass`-style `file` holds for `key`, if any. A missing file is no
/// password; a file others can read is ignored with a warning.
pub fn lookup_pgpass(file: &Path, key: &PgpassKey) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(file).ok()?;
    if !metadata.is_file() {
        return None;
    }
    if metadata.mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "Ignoring the password file: it has group or world access; permissions should be u=rw (0600) or less"
        );
        return None;
    }
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => {
            tracing::warn!(file = %file.display(), error = %err, "Cannot read the password file");
            return None;
        }
    };
    let port = key.port.to_string();
    let wanted = [
        key.host.as_str(),
        port.as_str(),
        key.dbname.as_str(),
        key.user.as_str(),
    ];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = fields(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = wanted
                .iter()
                .zip(&fields)
                .all(|(want, field)| field == "*" || field == want);
            matches.then(|| fields[4..].join(":"))
        })
}

/// `a:b\:c:d` → `["a", "b:c", "d"]`.
fn fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(field) = fields.last_mut() {
                        field.push(next);
                    }
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

/// libpq's default `.pgpass`: `$HOME/.pgpass`.
pub fn default_pgpass() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(".pgpass"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key() -> PgpassKey {
        PgpassKey {
            host: "db.example".into(),
            port: 5432,
            dbname: "compartment".into(),
            user: "auditd".into(),
        }
    }

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:5432:compartment:auditd:nope\n*:5432:*:auditd:s\\:ec\\\\ret:x\n",
        )
        .expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(lookup_pgpass(&file, &key()).as_deref(), Some("s:ec\\ret:x"));
        let mut other = key();
        other.user = "someone".into();
        assert_eq!(lookup_pgpass(&file, &other), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(
            lookup_pgpass(&file, &key()),
            None,
            "group-readable is ignored"
        );
        assert_eq!(lookup_pgpass(&dir.path().join("missing"), &key()), None);
    }

    #[test]
    fn a_password_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret \n").expect("write");
        assert_eq!(read_password_file(&file).expect("read"), "s3cret ");
        std::fs::write(&file, "s3cret\r\n").expect("write");
        assert_eq!(read_password_file(&file).expect("read"), "s3cret");
        std::fs::write(&file, "\n").expect("write");
        let err = read_password_file(&file).expect_err("empty");
        assert!(err.to_string().contains("empty"));
        let err = read_password_file(&dir.path().join("gone")).expect_err("missing");
        assert!(err.to_string().contains("database.password_file"));
    }
}
