//! The permission rule for private key files, as libpq applies it to `sslkey`: no
//! access for others, and group read only when root owns the file (a secret mounted
//! by the system). The TLS client key and the sink's integrity key both obey it.

use std::os::unix::fs::MetadataExt;

/// The file's mode when it is too open to hold a private key, `None` when it passes.
pub fn too_open(metadata: &std::fs::Metadata) -> Option<u32> {
    let mode = metadata.mode() & 0o7777;
    let allowed = if metadata.uid() == 0 { 0o640 } else { 0o600 };
    (mode & 0o777 & !allowed != 0).then_some(mode)
}
