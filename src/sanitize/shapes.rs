//! The secret shapes and secret names the sanitizer looks for: kept apart from the
//! catalog walk in `mod.rs` so that the list can be read and extended on its own.

/// Secret formats, each found anywhere in a string. Kept as a list so that each one is
/// tested on its own; compiled as one alternation.
pub(super) const SECRET_SHAPES: &[&str] = &[
    // PEM private keys of any kind (RSA, EC, OPENSSH, ENCRYPTED, PGP … BLOCK); the
    // header alone is enough, so a cut-off block is still caught.
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY",
    r"PuTTY-User-Key-File-[0-9]",
    // JWT/JWS/JWE: base64url JSON header `{"…` then at least the start of a second
    // segment. The word boundary keeps `keyJohn…` from matching.
    r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}",
    r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
    r"gh[pousr]_[A-Za-z0-9]{30,}",
    r"github_pat_[A-Za-z0-9_]{30,}",
    r"gl(?:pat|dt|rt|ptt|cbt|soat|oas|ft|imt|agent|wt|ffct)-[A-Za-z0-9_.-]{20,}",
    r"ATBB[A-Za-z0-9_=.-]{24,}",
    // Bot, user, app, refresh, session and rotating config tokens.
    r"xox[abeprs]-[A-Za-z0-9-]{10,}",
    r"xapp-[0-9]+-[A-Za-z0-9-]{10,}",
    r"hooks\.slack\.com/(?:services|workflows|triggers)/",
    r"discord(?:app)?\.com/api/webhooks/",
    r"AIza[0-9A-Za-z_-]{35}",
    // The short, generic-looking prefixes below need a word boundary, or they would
    // match inside ordinary names (`desk_test_…`, `task-runner-…`, `MSG.…`).
    r"(?-u:\b)(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}",
    r"whsec_[A-Za-z0-9+/=]{16,}",
    r"npm_[A-Za-z0-9]{36}",
    r"(?-u:\b)SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
    r"dckr_pat_[A-Za-z0-9_-]{20,}",
    r"(?-u:\b)sk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{32,}",
    r"(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}",
];

/// `scheme://` followed by userinfo that has a password, or a user name long enough to
/// be a token (`https://<token>@github.com`); `ssh://git@host` stays.
pub(super) const URL_CREDENTIALS: &str =
    r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#\s@]*:[^/?#\s]*|[^/?#\s@:]{20,})@";

/// Whole words that make a key secret-named (too short or too common as substrings).
pub(super) const SECRET_NAME_WORDS: &[&str] = &[
    "header", "headers", "payload", "payloads", "env", "pwd", "otp", "jwt", "archive",
];

/// Substrings of a key's words written together that make it secret-named.
pub(super) const SECRET_NAME_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "cookie",
    "authorization",
    "ciphertext",
    "plaintext",
    "privatekey",
    "apikey",
    "accesskey",
    "signingkey",
    "encryptionkey",
    "masterkey",
    "accountkey",
    "session",
    "dotenv",
    "envfile",
    "envvar",
    "environmentvariable",
    "composefile",
];

/// Extra words that make a query-string parameter secret-named (`?sig=…`, `&code=…`).
pub(super) const SECRET_QUERY_WORDS: &[&str] = &[
    "sig",
    "signature",
    "code",
    "key",
    "otp",
    "auth",
    "pass",
    "pwd",
    "ticket",
    "hmac",
];

/// Words in a diff field name that mean its values are environment values.
pub(super) const ENVIRONMENT_VALUE_WORDS: &[&str] = &[
    "env",
    "envs",
    "dotenv",
    "variable",
    "variables",
    "var",
    "vars",
    "value",
    "values",
];
