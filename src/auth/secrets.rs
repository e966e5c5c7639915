//! Server secrets: files created on first start with random bytes (hex
//! text, mode 0600) beside the embedded database, read back on the next
//! start and refused when group or others could read them.
//!
//! May depend on: std, getrandom, hex, thiserror; [`crate::secret`].

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// Largest secret file read; a secret is a few dozen bytes of hex.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A secret file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {file}")]
    Create {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but cannot be used; `problem` says why and what to do.
    #[error("{file}: {problem}")]
    Bad { file: PathBuf, problem: String },
    #[error("the OS gave no random bytes: {0}")]
    Random(getrandom::Error),
}

/// Reads the hex secret in `path`, or, when there is no such file, creates
/// it (and its directory, mode 0700) holding `bytes` random bytes as hex,
/// mode 0600. Returns the secret and whether it was created.
///
/// # Errors
/// [`SecretError`] when the file cannot be read or created, is not hex,
/// holds fewer than `bytes` bytes, or (unix) has a mode that lets group or
/// others at it (the message says `chmod 600 <file>`).
pub fn load_or_create_secret(path: &Path, bytes: usize) -> Result<(Secret, bool), SecretError> {
    if bytes == 0 {
        return Err(bad(path, "a secret needs at least 1 byte".into()));
    }
    if let Some(secret) = read_secret(path, bytes)? {
        return Ok((Secret::new(secret), false));
    }
    match create_secret(path, bytes)? {
        Some(secret) => Ok((Secret::new(secret), true)),
        // Another process created it between our read and create.
        None => match read_secret(path, bytes)? {
            Some(secret) => Ok((Secret::new(secret), false)),
            None => Err(bad(path, "was removed while being created".into())),
        },
    }
}

fn bad(path: &Path, problem: String) -> SecretError {
    SecretError::Bad {
        file: path.to_path_buf(),
        problem,
    }
}

/// The secret in `path`, `None` when there is no such file.
fn read_secret(path: &Path, min: usize) -> Result<Option<Vec<u8>>, SecretError> {
    let read_err = |source| SecretError::Read {
        file: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    // The mode of the file opened, not of whatever the path names later.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(bad(path, "is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(
                path,
                format!(
                    "mode {mode:03o} lets group or others read this secret; run `chmod 600 {}`",
                    path.display()
                ),
            ));
        }
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(bad(path, "is too large for a secret file".into()));
    }
    let mut text = String::new();
    match file.take(MAX_SECRET_FILE_BYTES).read_to_string(&mut text) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::InvalidData => {
            return Err(bad(path, "must hold the secret as hex text".into()));
        }
        Err(e) => return Err(read_err(e)),
    }
    let secret = hex::decode(text.trim())
        .map_err(|_| bad(path, "must hold the secret as hex text".into()))?;
    if secret.len() < min {
        return Err(bad(
            path,
            format!(
                "holds a {}-byte secret; at least {min} bytes are required",
                secret.len()
            ),
        ));
    }
    Ok(Some(secret))
}

/// Creates `path` with a new secret; `None` when the file already exists.
fn create_secret(path: &Path, bytes: usize) -> Result<Option<Vec<u8>>, SecretError> {
    let create_err = |source| SecretError::Create {
        file: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(create_err)?;
    }
    let mut secret = vec![0u8; bytes];
    getrandom::fill(&mut secret).map_err(SecretError::Random)?;
    // Written whole under a name of its own, then linked into place: a
    // replica starting at the same moment sees no file or the whole
    // secret, never an empty one.
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut text = hex::encode(&secret);
    text.push('\n');
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(create_err(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(create_err(e)),
    }
    Ok(Some(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    fn write_with_mode(p: &Path, body: &str, mode: u32) {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .unwrap();
        f.write_all(body.as_bytes()).unwrap();
        // The umask may have cleared bits the test asks for.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn created_once_with_mode_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data/sub/secret");
        let (a, created) = load_or_create_secret(&p, 32).unwrap();
        assert!(created);
        assert_eq!(a.len(), 32);
        assert_ne!(a.expose(), [0u8; 32]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(hex::decode(text.trim()).unwrap(), a.expose());
        #[cfg(unix)]
        {
            assert_eq!(mode(&p), 0o600);
            assert_eq!(mode(&dir.path().join("data")), 0o700);
        }
        let (b, created) = load_or_create_secret(&p, 32).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        // Two files never share a secret.
        let (c, _) = load_or_create_secret(&dir.path().join("other"), 32).unwrap();
        assert_ne!(a, c);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_group_or_world_readable_secret() {
        let dir = tempfile::tempdir().unwrap();
        for m in [0o644, 0o640, 0o604, 0o660] {
            let p = dir.path().join(format!("secret-{m:o}"));
            write_with_mode(&p, &"ab".repeat(32), m);
            let e = load_or_create_secret(&p, 32).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", p.display())), "{e}");
            assert!(e.contains(&format!("{m:03o}")), "{e}");
        }
        // 0400 is fine: only the owner reads it.
        let p = dir.path().join("readonly");
        write_with_mode(&p, &"ab".repeat(32), 0o400);
        assert_eq!(
            load_or_create_secret(&p, 32).unwrap().0.expose(),
            [0xab; 32]
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_short_or_garbled_secrets() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body, expect) in [
            ("short", "abcd\n", "2-byte secret"),
            ("garbled", "not hex!", "hex"),
            ("odd", "abc", "hex"),
            ("empty", "", "0-byte secret"),
            ("binary", "\u{0}\u{1}", "hex"),
        ] {
            let p = dir.path().join(name);
            write_with_mode(&p, body, 0o600);
            let e = load_or_create_secret(&p, 32).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(expect), "{name}: {e}");
        }
        let p = dir.path().join("not-utf8");
        write_with_mode(&p, "", 0o600);
        std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
        let e = load_or_create_secret(&p, 32).unwrap_err().to_string();
        assert!(e.contains("hex"), "{e}");
    }

    #[test]
    fn hex_with_surrounding_whitespace_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        load_or_create_secret(&p, 32).unwrap();
        let body = format!("  {}\n\n", "0f".repeat(40));
        std::fs::write(&p, body).unwrap();
        let (secret, created) = load_or_create_secret(&p, 32).unwrap();
        assert_eq!((secret.expose(), created), (&[0x0f; 40][..], false));
    }

    #[test]
    fn a_directory_or_zero_bytes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_or_create_secret(dir.path(), 32).unwrap_err();
        assert!(e.to_string().contains("regular file"), "{e}");
        let e = load_or_create_secret(&dir.path().join("s"), 0).unwrap_err();
        assert!(matches!(e, SecretError::Bad { .. }), "{e}");
        assert!(!dir.path().join("s").exists());
    }
}
