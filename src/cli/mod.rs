//! The operator's commands beyond `serve`, `api`, `secret`, `code` and `nitride`: one
//! file per command group (backup and restore, keys, export and import, migrate, status, ...).
//! Each parses its own clap arguments, talks to the daemon through `totpd::client` (or
//! works on the data directory when the daemon is stopped), and returns what to print.

pub mod backup;
pub mod export;
pub mod keys;
pub mod migrate;
pub mod status;
pub mod unlock;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use totpd::client::ClientError;

/// A file being written privately and atomically: a new 0600 file beside its
/// destination, removed unless [`PrivateFile::finish`] renamed it into place, so the
/// destination is the whole file or untouched (backups, exports).
pub struct PrivateFile {
    /// The temporary file's path, for writers that write by path.
    pub tmp: PathBuf,
    dest: PathBuf,
    /// The temporary file, open for writing.
    pub file: fs::File,
    done: bool,
}

impl PrivateFile {
    /// A new empty 0600 file beside `dest`. `dest` must not be a directory, and its
    /// directory must exist.
    pub fn create(dest: &Path) -> Result<PrivateFile, ClientError> {
        let usage = |m: String| ClientError::Usage(m);
        if dest.is_dir() {
            return Err(usage(format!(
                "{} is a directory: give the file to write",
                dest.display()
            )));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| usage(format!("{}: give a file name", dest.display())))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(usage(format!("no directory {}", dir.display())));
        }
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tmp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), &tag[..8]));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ClientError::Request(format!("{}: {e}", tmp.display())))?;
        Ok(PrivateFile {
            tmp,
            dest: dest.to_path_buf(),
            file,
            done: false,
        })
    }

    /// Syncs the file, runs `check` on it, renames it to its destination and syncs the
    /// directory. Returns what `check` found and the file's length.
    pub fn finish<T>(
        mut self,
        check: impl FnOnce(&Path) -> Result<T, String>,
    ) -> Result<(T, u64), String> {
        let io = |e: std::io::Error| e.to_string();
        self.file.flush().map_err(io)?;
        self.file.sync_all().map_err(io)?;
        let checked = check(&self.tmp)?;
        let bytes = self.file.metadata().map_err(io)?.len();
        fs::rename(&self.tmp, &self.dest).map_err(io)?;
        self.done = true;
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok((checked, bytes))
    }
}

impl Drop for PrivateFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
