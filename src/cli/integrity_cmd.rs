//! `sink keygen`: the Ed25519 key that will sign the sink's integrity digests
//! (docs/integrity.md). It needs no settings and no database.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Args;

use crate::sink::integrity::keys;

/// Arguments of `sink keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600). Refused if it exists.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Also write the public key (SPKI PEM) here; by default `<out>.pub`.
    #[arg(long, value_name = "PATH")]
    pub public_out: Option<PathBuf>,
}

/// Writes a new key pair and prints the public key and its id. Exit 0, or 1 with a
/// message naming the file that could not be written.
pub fn keygen(args: &KeygenArgs) -> i32 {
    let key = keys::generate();
    let public = key.verifying_key();
    let public_out = args.public_out.clone().unwrap_or_else(|| {
        let mut p = args.out.clone().into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    });
    if let Err(err) = write_new(&args.out, keys::private_pem(&key).as_bytes(), 0o600) {
        eprintln!(
            "compartment-auditd: cannot write the private key {}: {err}",
            args.out.display()
        );
        return 1;
    }
    let public_pem = keys::public_pem(&public);
    if let Err(err) = write_new(&public_out, public_pem.as_bytes(), 0o644) {
        eprintln!(
            "compartment-auditd: wrote the private key {}, but cannot write the public key {}: {err}",
            args.out.display(),
            public_out.display()
        );
        return 1;
    }
    println!("key_id: {}", keys::key_id(&public));
    println!("private_key: {}", args.out.display());
    println!("public_key_file: {}", public_out.display());
    print!("{public_pem}");
    0
}

/// Creates `path` (never replaces or follows a symlink there), writes and fsyncs it.
fn write_new(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
