//! Replacing a file atomically: a temporary file in the same directory, fsynced, then renamed over the target, so
//! readers see the old content or the new one, never a torn write (the Go tool rewrote files in place).

use std::fs::Permissions;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically with `permissions`.
pub fn write_file(path: &Path, bytes: &[u8], permissions: Permissions) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".uplosi-").suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().set_permissions(permissions)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
