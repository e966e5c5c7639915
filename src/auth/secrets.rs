//! Server secrets kept in files: created on first start with random
//! bytes (hex, mode 0600) beside the embedded database, read back on the
//! next, and refused when others could read them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A secret file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{file}: {error}")]
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: {problem}")]
    Bad { file: PathBuf, problem: String },
}

/// Reads the hex secret in `path`, or creates it with `bytes` random
/// bytes. Returns the secret and whether it was created.
///
/// # Errors
/// [`SecretError`] when the file cannot be read or written, holds no
/// usable secret, or is readable by group or others.
pub fn load_or_create_secret(path: &Path, bytes: usize) -> Result<(Vec<u8>, bool), SecretError> {
    let io = |error| SecretError::Io {
        file: path.to_path_buf(),
        error,
    };
    let bad = |problem: String| SecretError::Bad {
        file: path.to_path_buf(),
        problem,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = meta.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(bad(format!(
                        "mode {:o} lets others read this secret; run `chmod 600 {}`",
                        mode & 0o777,
                        path.display()
                    )));
                }
            }
            #[cfg(not(unix))]
            let _ = meta;
            let text = std::fs::read_to_string(path).map_err(io)?;
            let secret = hex::decode(text.trim())
                .map_err(|_| bad("must hold the secret in hex".to_string()))?;
            if secret.len() < bytes {
                return Err(bad(format!(
                    "holds {} bytes; at least {bytes} are required",
                    secret.len()
                )));
            }
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut secret = vec![0u8; bytes];
            getrandom::fill(&mut secret).map_err(|e| bad(format!("no randomness: {e}")))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut f = options.open(path).map_err(io)?;
            f.write_all(hex::encode(&secret).as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok((secret, true))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/secret");
        let (a, created) = load_or_create_secret(&p, 32).unwrap();
        assert!(created);
        assert_eq!(a.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (b, created) = load_or_create_secret(&p, 32).unwrap();
        assert!(!created);
        assert_eq!(a, b);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_world_readable_secret() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        load_or_create_secret(&p, 32).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_secret(&p, 32).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn refuses_short_or_garbled_secrets() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [("short", "abcd"), ("garbled", "not hex!")] {
            let p = dir.path().join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .unwrap();
            f.write_all(body.as_bytes()).unwrap();
            assert!(load_or_create_secret(&p, 32).is_err(), "{name}");
        }
    }
}
