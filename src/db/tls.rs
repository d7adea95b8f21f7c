//! TLS to PostgreSQL with libpq's meaning of `sslmode`, on rustls.
//!
//! Why rustls (with the `ring` provider, and only that one): it is Rust all the way
//! down but for ring's small, vendored assembly, so the binary needs no system OpenSSL,
//! builds statically and runs in the distroless image unchanged; and it verifies
//! certificates with webpki, which has no legacy modes to switch off. The glue to
//! tokio-postgres, including SCRAM channel binding (`tls-server-end-point`), is
//! `tokio-postgres-rustls` 0.14, the first release that binds channels correctly.
//!
//! The modes, as libpq defines them:
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow` | only if plaintext is refused | no |
//! | `prefer` (default) | if the server offers it | no (chain, if `sslrootcert` is set) |
//! | `require` | always | no (chain, if `sslrootcert` is set: as `verify-ca`) |
//! | `verify-ca` | always | chain against `sslrootcert` |
//! | `verify-full` | always | chain and host name |
//!
//! `sslrootcert=system` (the operating system's trust store) implies `verify-full` and
//! refuses a weaker mode, as libpq 16 does. Unlike libpq, the files under
//! `~/.postgresql/` are never read implicitly: what is checked is what is configured.
//!
//! [`named_cause`] turns a failed handshake into one sentence naming the cause; the
//! texts never contain key or certificate contents.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first; TLS if the server refuses plaintext.
    Allow,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// TLS always, the certificate unchecked (unless `sslrootcert` is set).
    Require,
    /// TLS always, the chain checked against `sslrootcert`.
    VerifyCa,
    /// TLS always, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in the order of the table above.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The word libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses libpq's word (any case).
    pub fn parse(text: &str) -> Result<SslMode, String> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!(
                    "expected one of {}",
                    SslMode::ALL.map(SslMode::as_str).join(", ")
                )
            })
    }

    /// Whether the connection fails rather than go without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sslrootcert`: a PEM file of CA certificates, or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The operating system's trust store.
    System,
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
}

impl RootCert {
    /// `system` or a path.
    pub fn parse(text: &str) -> RootCert {
        if text == "system" {
            RootCert::System
        } else {
            RootCert::File(PathBuf::from(text))
        }
    }

    /// How it is written.
    pub fn display(&self) -> String {
        match self {
            RootCert::System => "system".into(),
            RootCert::File(path) => path.display().to_string(),
        }
    }
}

/// The TLS parameters of a connection, once URL, settings and environment are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: Option<RootCert>,
    /// `sslcert`: the client certificate (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM, unencrypted).
    pub key: Option<PathBuf>,
}

/// What the server's certificate is checked against, after libpq's implications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing (`prefer`, `require`, `allow` without `sslrootcert`).
    None,
    /// The chain, not the name (`verify-ca`, or `require`/`prefer` with `sslrootcert`).
    Chain,
    /// The chain and the host name.
    Full,
}

/// A TLS setting that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A mode that checks the chain without a CA to check it against.
    #[error(
        "sslmode={0} checks the server's certificate, but no root certificate is configured: set sslrootcert (database.tls.sslrootcert) to the CA's PEM file or to system, or use sslmode=require"
    )]
    NoRootCert(SslMode),
    /// `sslrootcert=system` with a mode weaker than `verify-full`.
    #[error("sslmode={0} may not be used with sslrootcert=system (use sslmode=verify-full)")]
    WeakModeWithSystemRoots(SslMode),
    /// Only one of the client certificate and its key.
    #[error(
        "sslcert and sslkey must be set together (client certificate authentication needs both)"
    )]
    HalfClientCert,
    /// A file cannot be read.
    #[error("cannot read {what} {}: {reason}", path.display())]
    Read {
        /// Which file (`the root certificate file sslrootcert`, …).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{what} {} holds no {expected}", path.display())]
    Content {
        /// Which file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
    /// The client key may be read by others (libpq refuses it too).
    #[error(
        "the private key file sslkey {} has group or world access (mode {mode:04o}); it must be u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) or less if owned by root",
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system's trust store is empty or unreadable.
    #[error(
        "sslrootcert=system: no certificates found in the operating system's trust store ({0})"
    )]
    SystemRoots(String),
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("the TLS configuration is not usable: {0}")]
    Config(String),
}

/// Where a verification level comes from, for the mode and root certificate given.
pub fn verification(options: &TlsOptions) -> Result<Verification, TlsError> {
    if options.root_cert == Some(RootCert::System) && options.mode != SslMode::VerifyFull {
        return Err(TlsError::WeakModeWithSystemRoots(options.mode));
    }
    if options.cert.is_some() != options.key.is_some() {
        return Err(TlsError::HalfClientCert);
    }
    Ok(match (options.mode, options.root_cert.is_some()) {
        (SslMode::VerifyFull, true) => Verification::Full,
        (SslMode::VerifyFull | SslMode::VerifyCa, false) => {
            return Err(TlsError::NoRootCert(options.mode))
        }
        (SslMode::Disable, _) => Verification::None,
        (_, true) => Verification::Chain,
        (_, false) => Verification::None,
    })
}

/// The one crypto provider of the process: ring. rustls 0.23.48 deprecates it for
/// lacking post-quantum key exchange (X25519MLKEM768), which only aws-lc-rs offers;
/// aws-lc-rs needs a C/CMake toolchain for every target and doubles the build, and
/// PostgreSQL servers negotiate it only from OpenSSL 3.5. Switching is this one line
/// and the `ring` feature in Cargo.toml.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `options`, reading the files.
pub fn client_config(options: &TlsOptions) -> Result<ClientConfig, TlsError> {
    let verification = verification(options)?;
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (&options.root_cert, verification) {
        (_, Verification::None) | (None, _) => Arc::new(NoVerification(provider)),
        (Some(root), verification) => {
            let roots = Arc::new(root_store(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|err| TlsError::Config(err.to_string()))?;
            if verification == Verification::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "the client certificate file sslcert")?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| TlsError::Config(format!("sslcert and sslkey: {err}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn root_store(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = read_certs(path, "the root certificate file sslrootcert")?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::Content {
                    what: "the root certificate file sslrootcert",
                    path: path.clone(),
                    expected: "usable CA certificate",
                });
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_string(), ToString::to_string);
                return Err(TlsError::SystemRoots(reason));
            }
        }
    }
    Ok(store)
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::Read {
        what,
        path: path.to_path_buf(),
        reason: err.to_string(),
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Content {
            what,
            path: path.to_path_buf(),
            expected: "PEM certificate (-----BEGIN CERTIFICATE-----)",
        });
    }
    Ok(certs)
}

/// The client key, after libpq's permission check ([`crate::secret_file`]).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "the private key file sslkey";
    let metadata = std::fs::metadata(path).map_err(|err| TlsError::Read {
        what: WHAT,
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    if let Some(mode) = crate::secret_file::too_open(&metadata) {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = read_file(path, WHAT)?;
    // The parser's errors are not shown: they could quote the key's bytes.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Content {
        what: WHAT,
        path: path.to_path_buf(),
        expected: "unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
    })
}

/// `require` and `prefer` without a root certificate: encryption without
/// authentication of the server, as in libpq. The handshake signatures are still
/// checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: webpki's full check, forgiving only a name that does not match.
/// webpki checks the chain (issuer, validity, usage) before the name, so a name error
/// means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What tokio-postgres says when the server answers `N` to the TLS request.
const SERVER_WITHOUT_TLS: &str = "server does not support TLS";

/// One sentence naming why a connection failed in TLS, if it did: found anywhere in
/// `err`'s chain of sources (tokio-postgres wraps rustls' error in an I/O error).
pub fn named_cause(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(describe_rustls(tls));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(describe_rustls(tls));
            }
        }
        if err.to_string() == SERVER_WITHOUT_TLS {
            return Some(
                "the server does not accept TLS connections, and sslmode requires TLS (require, verify-ca or verify-full); enable ssl on the server or lower sslmode"
                    .into(),
            );
        }
        current = err.source();
    }
    None
}

fn describe_rustls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "TLS: the server's certificate is not signed by a trusted CA (wrong CA: check sslrootcert)".into()
            }
            CertificateError::NotValidForName => {
                "TLS: the server's certificate does not match the host name (hostname mismatch; sslmode=verify-full checks it)".into()
            }
            CertificateError::NotValidForNameContext { expected, .. } => format!(
                "TLS: the server's certificate is not valid for host {} (hostname mismatch; sslmode=verify-full checks it)",
                server_name(expected)
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet (check the clocks)".into()
            }
            CertificateError::Revoked => "TLS: the server's certificate is revoked".into(),
            other => format!("TLS: the server's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) if rejects_client_cert(*alert) => format!(
            "TLS: the server rejected the client certificate (alert {alert:?}); check sslcert and sslkey, and that the server's ssl_ca_file trusts their CA"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("TLS: the server ended the handshake (alert {alert:?})")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

fn rejects_client_cert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied
    )
}

fn server_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "(unnamed)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(mode: SslMode, root: Option<RootCert>) -> TlsOptions {
        TlsOptions {
            mode,
            root_cert: root,
            cert: None,
            key: None,
        }
    }

    #[test]
    fn verification_follows_libpq() {
        let file = Some(RootCert::File("/ca.pem".into()));
        let cases = [
            (SslMode::Disable, None, Ok(Verification::None)),
            (SslMode::Prefer, None, Ok(Verification::None)),
            (SslMode::Require, None, Ok(Verification::None)),
            (SslMode::Require, file.clone(), Ok(Verification::Chain)),
            (SslMode::Prefer, file.clone(), Ok(Verification::Chain)),
            (SslMode::VerifyCa, file.clone(), Ok(Verification::Chain)),
            (SslMode::VerifyFull, file.clone(), Ok(Verification::Full)),
            (
                SslMode::VerifyFull,
                Some(RootCert::System),
                Ok(Verification::Full),
            ),
        ];
        for (mode, root, expected) in cases {
            assert_eq!(
                verification(&options(mode, root.clone())).map_err(|e| e.to_string()),
                expected,
                "{mode} {root:?}"
            );
        }
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            assert!(matches!(
                verification(&options(mode, None)),
                Err(TlsError::NoRootCert(_))
            ));
        }
        assert!(matches!(
            verification(&options(SslMode::Require, Some(RootCert::System))),
            Err(TlsError::WeakModeWithSystemRoots(SslMode::Require))
        ));
    }

    #[test]
    fn modes_parse_as_libpq_writes_them() {
        for mode in SslMode::ALL {
            assert_eq!(SslMode::parse(mode.as_str()), Ok(mode));
        }
        assert_eq!(SslMode::parse("VERIFY-FULL"), Ok(SslMode::VerifyFull));
        assert!(SslMode::parse("verify_full")
            .unwrap_err()
            .contains("verify-full"));
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "not a key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_key(&key).expect_err("0644 is refused");
        assert!(
            matches!(err, TlsError::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = read_key(&key).expect_err("not PEM");
        assert!(matches!(err, TlsError::Content { .. }), "{err}");
        assert!(!err.to_string().contains("not a key"));
    }
}
