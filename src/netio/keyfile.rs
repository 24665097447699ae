//! The node's static X25519 secret on disk: 32 raw bytes, mode 0600, created once.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Size of a key file; anything else is not ours.
pub const KEY_FILE_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("key file {path}: expected {KEY_FILE_LEN} bytes, found {len}")]
    Length { path: PathBuf, len: u64 },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run chmod 600 on it")]
    Permissions { path: PathBuf, mode: u32 },
}

/// Reads the key at `path`, creating it from `fresh` if no file exists there.
pub fn load_or_create(path: &Path, fresh: [u8; 32]) -> Result<[u8; 32], KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new().read(true).open(path) {
        Ok(mut f) => {
            let meta = f.metadata().map_err(io_err)?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            if meta.len() != KEY_FILE_LEN as u64 {
                return Err(KeyFileError::Length {
                    path: path.to_path_buf(),
                    len: meta.len(),
                });
            }
            let mut key = [0u8; 32];
            f.read_exact(&mut key).map_err(io_err)?;
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(io_err)?;
            }
            // create_new: if another process raced us here, fail rather than overwrite.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err)?;
            f.write_all(&fresh).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
            Ok(fresh)
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("swarmlet-keyfile-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir.join("sub").join("node.key")
    }

    #[test]
    fn creates_then_reads_back() {
        let p = tmp("create");
        assert_eq!(load_or_create(&p, [7; 32]).unwrap(), [7; 32]);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            load_or_create(&p, [8; 32]).unwrap(),
            [7; 32],
            "existing key kept"
        );
        fs::remove_dir_all(p.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_wrong_length_and_loose_mode() {
        let p = tmp("bad");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"short").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_or_create(&p, [0; 32]).unwrap_err().to_string();
        assert!(
            e.contains("expected 32 bytes, found 5") && e.contains("node.key"),
            "{e}"
        );
        fs::write(&p, [1u8; 32]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&p, [0; 32]).unwrap_err().to_string();
        assert!(e.contains("mode 644"), "{e}");
        fs::remove_dir_all(p.parent().unwrap().parent().unwrap()).unwrap();
    }
}
