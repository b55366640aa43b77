//! Secret files: the token key, the admin token, the upstream password.
//!
//! A missing secret is generated on first start and written with mode 0600 (created with that
//! mode, never widened afterwards). An existing secret that the group or others can read is
//! refused with a clear error: a leaked token key lets anyone forge opens.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a secret could not be had.
#[derive(Debug)]
pub enum SecretError {
    /// Mode allows group or world access.
    Permissions { path: String, mode: u32 },
    /// Reading or creating failed.
    Io { path: String, err: io::Error },
    /// The file exists but holds nothing usable.
    Empty { path: String },
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::Permissions { path, mode } => write!(
                f,
                "{path}: mode {mode:04o} lets others read this secret; run `chmod 600 {path}`"
            ),
            SecretError::Io { path, err } => write!(f, "{path}: {err}"),
            SecretError::Empty { path } => write!(f, "{path}: file is empty"),
        }
    }
}

impl std::error::Error for SecretError {}

/// Reads a secret file, refusing one readable by group or others. Surrounding whitespace is trimmed.
pub fn read(path: &Path) -> Result<Vec<u8>, SecretError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|err| SecretError::Io {
        path: p.clone(),
        err,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions { path: p, mode });
    }
    let bytes = std::fs::read(path).map_err(|err| SecretError::Io {
        path: p.clone(),
        err,
    })?;
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Err(SecretError::Empty { path: p });
    }
    Ok(trimmed.to_vec())
}

/// Reads the secret at `path`, or creates it (0600, parent directories 0700) from `generate`.
pub fn read_or_create(
    path: &Path,
    generate: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, SecretError> {
    match std::fs::metadata(path) {
        Ok(_) => read(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let p = path.display().to_string();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|err| SecretError::Io {
                        path: dir.display().to_string(),
                        err,
                    })?;
            }
            let value = generate();
            let mut f = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(f) => f,
                // Another process created it first: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read(path),
                Err(err) => return Err(SecretError::Io { path: p, err }),
            };
            f.write_all(&value)
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .map_err(|err| SecretError::Io { path: p, err })?;
            Ok(value)
        }
        Err(err) => Err(SecretError::Io {
            path: path.display().to_string(),
            err,
        }),
    }
}

/// `n` random bytes as lowercase hex (what generated secrets contain).
pub fn random_hex(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    let mut out = Vec::with_capacity(n * 2);
    for b in bytes {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0600_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let a = read_or_create(&path, || random_hex(32)).unwrap();
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = read_or_create(&path, || b"other".to_vec()).unwrap();
        assert_eq!(a, b, "an existing secret is kept");
    }

    #[test]
    fn refuses_group_or_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
    }
}
