//! A test PKI and a private PostgreSQL server that speaks TLS only.
//!
//! [`Pki::generate`] makes, with rcgen, a CA and a second, unrelated CA; server
//! certificates for `localhost` and `127.0.0.1` (valid, and expired) signed by the
//! first; and client certificates for the role [`CERT_USER`] signed by each.
//! [`start_tls_postgres`] starts a [`PrivatePostgres`] with `ssl = on`, that CA as
//! `ssl_ca_file`, and `pg_hba.conf` lines `hostssl` only (plus `local` for the
//! harness's own socket connections): [`CERT_USER`] by client certificate,
//! [`PASSWORD_USER`] by SCRAM password, everyone else trusted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::PrivatePostgres;

/// The role that logs in with a client certificate (its CN).
pub const CERT_USER: &str = "certuser";
/// The role that logs in with a SCRAM password.
pub const PASSWORD_USER: &str = "rotated";

/// The files of the test PKI, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Generates every certificate and key; private keys are written `0600`.
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("auditd-pki-")
            .tempdir()
            .expect("creating the PKI directory");
        let pki = Pki { dir };
        let (ca, ca_key) = pki.ca("ca", "auditd test CA");
        let (other, other_key) = pki.ca("other-ca", "unrelated test CA");
        let ca = Issuer::new(ca, ca_key);
        let other = Issuer::new(other, other_key);
        let server = |name: &str, expired: bool| {
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .expect("valid names");
            params
                .distinguished_name
                .push(DnType::CommonName, "localhost");
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            pki.leaf(name, params, &ca);
        };
        server("server", false);
        server("server-expired", true);
        let client = |name: &str, issuer: &Issuer<'_, KeyPair>| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
            params
                .distinguished_name
                .push(DnType::CommonName, CERT_USER);
            pki.leaf(name, params, issuer);
        };
        client("client", &ca);
        client("client-other", &other);
        pki
    }

    fn ca(&self, name: &str, common_name: &str) -> (CertificateParams, KeyPair) {
        let key = KeyPair::generate().expect("generating a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).expect("self-signing the CA");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("writing the CA");
        (params, key)
    }

    fn leaf(&self, name: &str, params: CertificateParams, issuer: &Issuer<'_, KeyPair>) {
        let key = KeyPair::generate().expect("generating a key");
        let cert = params.signed_by(&key, issuer).expect("signing");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("writing a cert");
        let key_path = self.path(&format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).expect("writing a key");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 0600");
    }

    /// A file of the PKI: `ca.pem`, `other-ca.pem`, `server.crt`/`.key`,
    /// `server-expired.crt`/`.key`, `client.crt`/`.key`, `client-other.crt`/`.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A private server with TLS on, the PKI's `server` certificate, and `hostssl` lines
/// only (see the module documentation).
pub fn start_tls_postgres(pki: &Pki) -> PrivatePostgres {
    let pg = PrivatePostgres::start_with(|data| {
        install_server_cert(pki, data, "server");
        std::fs::copy(pki.path("ca.pem"), data.join("root.crt")).expect("copying the CA");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("opening postgresql.conf");
        use std::io::Write;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\npassword_encryption = 'scram-sha-256'"
        )
        .expect("writing postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 trust\n"
            ),
        )
        .expect("writing pg_hba.conf");
    });
    let roles = format!(
        "CREATE ROLE {CERT_USER} LOGIN SUPERUSER; CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD 'first-secret';"
    );
    let status = std::process::Command::new("psql")
        .arg(pg.socket_url("postgres"))
        .args(["-qAt", "-v", "ON_ERROR_STOP=1", "-c", &roles])
        .status()
        .expect("psql runs");
    assert!(status.success(), "creating the test roles");
    pg
}

/// Puts the PKI's `name.crt`/`name.key` in place as the server's certificate (call
/// [`PrivatePostgres::reload`] after the server has started).
pub fn install_server_cert(pki: &Pki, data: &Path, name: &str) {
    std::fs::copy(pki.path(&format!("{name}.crt")), data.join("server.crt"))
        .expect("copying the server certificate");
    let key = data.join("server.key");
    std::fs::copy(pki.path(&format!("{name}.key")), &key).expect("copying the server key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if rustix::process::geteuid().is_root() {
        let status = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(data.join("server.crt"))
            .arg(&key)
            .status()
            .expect("chown runs");
        assert!(status.success());
    }
}
