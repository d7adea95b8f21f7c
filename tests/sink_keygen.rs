//! `sink keygen`: the key it writes is owner-only, never replaces a file, and is the
//! standard Ed25519 PKCS#8 / SPKI PEM that OpenSSL reads: a signature made by this
//! crate verifies with `openssl pkeyutl -verify -rawin`, and one made by OpenSSL
//! verifies here (the check docs/integrity.md tells users to run on a digest).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use compartment_auditd::sink::integrity::keys;

fn keygen(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_compartment-auditd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("sink")
        .arg("keygen")
        .args(args)
        .output()
        .expect("the binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (scripts/test installs it)")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_an_owner_only_key_and_prints_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("integrity.pem");
    let out_s = out.to_str().unwrap();
    let (code, stdout, stderr) = keygen(&["--out", out_s]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(mode(&out), 0o600);
    let public_path = dir.path().join("integrity.pem.pub");
    let private = keys::read_private(&out).unwrap();
    let public = keys::read_public(&public_path).unwrap();
    assert_eq!(private.verifying_key(), public);
    let id = keys::key_id(&public);
    assert!(stdout.contains(&format!("key_id: {id}")), "{stdout}");
    assert!(stdout.contains("-----BEGIN PUBLIC KEY-----"), "{stdout}");
    let private_pem = std::fs::read_to_string(&out).unwrap();
    assert!(
        !stdout.contains(private_pem.lines().nth(1).unwrap()),
        "the private key is never printed"
    );

    // An existing file is never replaced, nor a symlink followed.
    let before = std::fs::read(&out).unwrap();
    let (code, _, stderr) = keygen(&["--out", out_s]);
    assert_eq!(code, 1);
    assert!(stderr.contains(out_s), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let (code, _, _) = keygen(&["--out", link.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}

#[test]
fn openssl_and_this_crate_verify_each_others_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.pem");
    let public_path = dir.path().join("k.pub");
    let (code, _, stderr) = keygen(&[
        "--out",
        out.to_str().unwrap(),
        "--public-out",
        public_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let message = dir.path().join("audit-digest-0000000001.json");
    std::fs::write(&message, b"{\"seq\": 1}\n").unwrap();
    let key = keys::read_private(&out).unwrap();

    // Ours, checked by OpenSSL.
    let sig = dir.path().join("ours.sig");
    std::fs::write(&sig, keys::sign(&key, &std::fs::read(&message).unwrap())).unwrap();
    let verify = |sig: &Path| {
        openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            public_path.to_str().unwrap(),
            "-rawin",
            "-in",
            message.to_str().unwrap(),
            "-sigfile",
            sig.to_str().unwrap(),
        ])
    };
    let checked = verify(&sig);
    assert!(
        checked.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // A changed byte fails it: the check can fail.
    let mut bad = std::fs::read(&sig).unwrap();
    bad[0] ^= 1;
    let bad_sig = dir.path().join("bad.sig");
    std::fs::write(&bad_sig, bad).unwrap();
    assert!(!verify(&bad_sig).status.success());

    // OpenSSL's, checked here.
    let theirs = dir.path().join("theirs.sig");
    let signed = openssl(&[
        "pkeyutl",
        "-sign",
        "-inkey",
        out.to_str().unwrap(),
        "-rawin",
        "-in",
        message.to_str().unwrap(),
        "-out",
        theirs.to_str().unwrap(),
    ]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let public = keys::read_public(&public_path).unwrap();
    let msg = std::fs::read(&message).unwrap();
    assert!(keys::verify(
        &public,
        &msg,
        &std::fs::read(&theirs).unwrap()
    ));
    assert!(!keys::verify(
        &public,
        b"other",
        &std::fs::read(&theirs).unwrap()
    ));

    // A key made by `openssl genpkey` is read as the daemon's key.
    let generated = dir.path().join("openssl.pem");
    let made = openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        generated.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    std::fs::set_permissions(&generated, std::fs::Permissions::from_mode(0o600)).unwrap();
    keys::read_private(&generated).expect("openssl's PKCS#8 Ed25519 key is accepted");
}
