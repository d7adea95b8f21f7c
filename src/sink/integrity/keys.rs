//! The signing key: Ed25519, stored as unencrypted PKCS#8 PEM (what
//! `openssl genpkey -algorithm ed25519` writes), the public half as SPKI PEM
//! (`openssl pkey -pubout`). `sink keygen` makes both; the daemon reads the private
//! key from `file_sink.integrity.key_file`, `sink verify` the public one.
//!
//! A key's id is the first 16 hex digits of the SHA-256 of its 32 raw public bytes.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::format::SIGNATURE_LEN;

/// Why a key could not be read or written. Never quotes the key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{what} {path}: {reason}")]
    Io {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Group or others may read the private key.
    #[error(
        "the integrity key file {path} has mode {mode:04o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions {
        /// Where.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Not the expected PEM.
    #[error("{what} {path} is not {expected}")]
    Content {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
    },
}

/// The id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    super::format::sha256_hex(key.as_bytes())[..16].to_owned()
}

/// Base64 of the 32 raw public bytes, as digests carry it.
pub fn public_key_b64(key: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// The public key a digest carries, or `None` when it is not one.
pub fn public_key_from_b64(text: &str) -> Option<VerifyingKey> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let raw: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&raw).ok()
}

/// A new random key.
pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The private key as PKCS#8 v1 PEM, without the optional public key: OpenSSL 3.0
/// refuses the v2 form that carries it.
pub fn private_pem(key: &SigningKey) -> String {
    ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .expect("PKCS#8 encoding of an Ed25519 key cannot fail")
    .to_string()
}

/// The public key as SPKI PEM.
pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default())
        .expect("SPKI encoding of an Ed25519 key cannot fail")
}

/// Reads the private key after the same permission check as libpq's for `sslkey`
/// ([`crate::secret_file`]).
pub fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    const WHAT: &str = "the integrity key file";
    let io = |e: std::io::Error| KeyError::Io {
        what: WHAT,
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if let Some(mode) = crate::secret_file::too_open(&metadata) {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = std::fs::read_to_string(path).map_err(io)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Content {
        what: WHAT,
        path: path.to_owned(),
        expected: "an unencrypted Ed25519 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)",
    })
}

/// Reads a public key: SPKI PEM, or a private key's file (its public half).
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    const WHAT: &str = "the public key file";
    let pem = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
        what: WHAT,
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Ok(key) = VerifyingKey::from_public_key_pem(&pem) {
        return Ok(key);
    }
    SigningKey::from_pkcs8_pem(&pem)
        .map(|k| k.verifying_key())
        .map_err(|_| KeyError::Content {
            what: WHAT,
            path: path.to_owned(),
            expected: "an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----)",
        })
}

/// Signs `message`; the 64 bytes of a `.sig` file.
pub fn sign(key: &SigningKey, message: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(message).to_bytes()
}

/// Whether `sig` (a `.sig` file's bytes) is `key`'s signature of `message`.
pub fn verify(key: &VerifyingKey, message: &[u8], sig: &[u8]) -> bool {
    let Ok(raw) = <[u8; SIGNATURE_LEN]>::try_from(sig) else {
        return false;
    };
    key.verify_strict(message, &Signature::from_bytes(&raw))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_signatures_verify() {
        let key = generate();
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k.pem");
        let public = dir.path().join("k.pub.pem");
        std::fs::write(&private, private_pem(&key)).unwrap();
        std::fs::write(&public, public_pem(&key.verifying_key())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = read_private(&private).unwrap();
        assert_eq!(read.to_bytes(), key.to_bytes());
        let pubkey = read_public(&public).unwrap();
        assert_eq!(pubkey, key.verifying_key());
        assert_eq!(read_public(&private).unwrap(), pubkey);
        let sig = sign(&key, b"hello");
        assert!(verify(&pubkey, b"hello", &sig));
        assert!(!verify(&pubkey, b"hellO", &sig));
        assert!(!verify(&pubkey, b"hello", &sig[..63]));
        assert_eq!(key_id(&pubkey).len(), 16);
        assert_eq!(public_key_from_b64(&public_key_b64(&pubkey)), Some(pubkey));

        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
        if rustix::process::geteuid().is_root() {
            // root-owned may be group-readable, as for libpq.
            assert!(read_private(&private).is_ok());
        } else {
            assert!(matches!(
                read_private(&private),
                Err(KeyError::Permissions { .. })
            ));
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(&private).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&public, "junk").unwrap();
        assert!(matches!(
            read_public(&public),
            Err(KeyError::Content { .. })
        ));
    }
}
