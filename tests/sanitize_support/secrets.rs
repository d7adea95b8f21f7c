//! Secret-shaped sample values shared by the sanitizer tests.
//!
//! Each sample is built with the exact lengths of its format and comes with the
//! fragment that must never reach the output (the part that is the credential).

/// A secret-shaped string and the part of it that is the credential.
#[derive(Debug, Clone)]
pub struct SecretSample {
    /// What the shape is, for failure messages.
    pub name: &'static str,
    /// The whole value as a producer might store it.
    pub value: String,
    /// The credential inside `value`; it must not appear in any output.
    pub fragment: String,
}

fn sample(name: &'static str, value: String, fragment: &str) -> SecretSample {
    assert!(value.contains(fragment), "{name}: fragment not in value");
    SecretSample {
        name,
        fragment: fragment.to_owned(),
        value,
    }
}

/// `len` characters cycled from `alphabet`, starting at `seed`.
pub fn chars_from(alphabet: &str, len: usize, seed: usize) -> String {
    let alphabet: Vec<char> = alphabet.chars().collect();
    (0..len)
        .map(|i| alphabet[(seed + i * 7) % alphabet.len()])
        .collect()
}

const BASE62: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_DIGITS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Every secret shape the sanitizer promises to redact, with `body` characters taken
/// from `seed` so that property tests can vary them.
pub fn secret_samples(seed: usize) -> Vec<SecretSample> {
    let b62 = |len| chars_from(BASE62, len, seed);
    let pem_body = format!("MIIEow{}", b62(64));
    let jwt_payload = format!("eyJzdWIiOi{}", b62(20));
    let aws = chars_from(UPPER_DIGITS, 16, seed);
    let password = format!("pw{}", b62(12));
    vec![
        sample(
            "PEM RSA private key",
            format!("-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----\n"),
            &pem_body,
        ),
        sample(
            "PEM PKCS#8 private key",
            format!("-----BEGIN PRIVATE KEY-----\r\n{pem_body}\r\n-----END PRIVATE KEY-----"),
            &pem_body,
        ),
        sample(
            "PEM OpenSSH private key",
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body}\n-----END OPENSSH PRIVATE KEY-----"),
            &pem_body,
        ),
        sample(
            "PEM encrypted private key without end line",
            format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{pem_body}"),
            &pem_body,
        ),
        sample(
            "JWT",
            format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{jwt_payload}.{}", b62(43)),
            &jwt_payload,
        ),
        sample("AWS access key id", format!("AKIA{aws}"), &aws),
        sample("AWS temporary access key id", format!("ASIA{aws}"), &aws),
        sample("GitHub personal token", format!("ghp_{}", b62(36)), &b62(36)),
        sample("GitHub OAuth token", format!("gho_{}", b62(36)), &b62(36)),
        sample("GitHub user token", format!("ghu_{}", b62(36)), &b62(36)),
        sample("GitHub app token", format!("ghs_{}", b62(36)), &b62(36)),
        sample("GitHub refresh token", format!("ghr_{}", b62(36)), &b62(36)),
        sample(
            "GitHub fine-grained token",
            format!("github_pat_11{}_{}", b62(20), b62(59)),
            &b62(59),
        ),
        sample("GitLab token", format!("glpat-{}", b62(20)), &b62(20)),
        sample(
            "Slack bot token",
            format!("xoxb-1234567890-{}", b62(24)),
            &b62(24),
        ),
        sample(
            "Slack user token",
            format!("xoxp-1234567890-{}", b62(24)),
            &b62(24),
        ),
        sample(
            "Slack webhook URL",
            format!("https://hooks.slack.com/services/T0000/B0000/{}", b62(24)),
            &b62(24),
        ),
        sample("Google API key", format!("AIza{}", b62(35)), &b62(35)),
        sample("Stripe live secret key", format!("sk_live_{}", b62(24)), &b62(24)),
        sample("Stripe restricted key", format!("rk_live_{}", b62(24)), &b62(24)),
        sample("Stripe test secret key", format!("sk_test_{}", b62(24)), &b62(24)),
        sample("Stripe webhook secret", format!("whsec_{}", b62(32)), &b62(32)),
        sample("npm token", format!("npm_{}", b62(36)), &b62(36)),
        sample("Bearer token", format!("Bearer {}", b62(32)), &b62(32)),
        sample(
            "Authorization header",
            format!("Authorization: Basic {}", b62(16)),
            &b62(16),
        ),
        sample(
            "URL with user and password",
            format!("postgres://app:{password}@db.internal:5432/app"),
            &password,
        ),
        sample(
            "Git URL with token user",
            format!("https://x-access-token:{password}@github.com/acme/api.git"),
            &password,
        ),
        sample(
            "URL with token as user name",
            format!("https://{}@github.com/acme/api.git", b62(40)),
            &b62(40),
        ),
        sample(
            "URL with token query parameter",
            format!("https://compartment.example.com/reset?token={}&lang=en", b62(32)),
            &b62(32),
        ),
        sample(
            "URL with signature query parameter",
            format!("https://acme.blob.core.windows.net/c/b?sv=2022-11-02&sig={}", b62(32)),
            &b62(32),
        ),
        sample(
            "URL with OAuth code",
            format!("https://app.example.com/callback?state=xyz&code={}", b62(20)),
            &b62(20),
        ),
        sample(
            "URL with key query parameter",
            format!("https://maps.example.com/api?key={}", b62(24)),
            &b62(24),
        ),
        sample(
            "URL with password query parameter",
            format!("https://h.example.com/login?user=bob&password={password}"),
            &password,
        ),
        sample(
            "URL with token in fragment",
            format!("https://app.example.com/#access_token={}", b62(24)),
            &b62(24),
        ),
        sample(
            "connection string with password",
            format!("Server=db;Database=app;User Id=sa;Password={password};"),
            &password,
        ),
        sample(
            "assignment of a secret",
            format!("client_secret={password}"),
            &password,
        ),
    ]
}

/// Whether `output` contains `fragment` as written or JSON-escaped.
pub fn leaks(output: &str, fragment: &str) -> bool {
    let escaped = serde_json::to_string(fragment).expect("a string encodes");
    output.contains(fragment) || output.contains(&escaped[1..escaped.len() - 1])
}
