//! The open log (`[store] open_log`): one JSON open event per line, appended as opens are
//! stored, for admins who tail files (`tail -F opens.jsonl | jq`).
//!
//! Safe under logrotate: the file is opened with `O_APPEND`, so after `copytruncate` the next
//! line lands at the (new) end rather than past a hole; after a move plus `create`, `reopen`
//! (on SIGHUP) switches to the new file. Each event is one `write(2)` of a whole line, so a
//! reader never sees half a line, and no line is written twice. The file is not fsynced per
//! line: the store is the record, the log a view of it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// An append-only JSON-lines file that can be reopened.
pub struct OpenLog {
    /// Where it lives.
    path: PathBuf,
    /// The open file; `None` after a failed reopen (lines are then dropped and counted).
    file: Mutex<Option<File>>,
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl OpenLog {
    /// Opens (creating, 0600) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<OpenLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(OpenLog {
            path: path.to_path_buf(),
            file: Mutex::new(Some(open(path)?)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a line.
    pub fn append<T: Serialize>(&self, event: &T) -> std::io::Result<()> {
        self.append_raw(serde_json::to_vec(event).map_err(std::io::Error::other)?)
    }

    /// Appends one already-serialised JSON object (without newline) as a line.
    pub fn append_raw(&self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(f) => f.write_all(&line),
            None => Err(std::io::Error::other(
                "open log is not open (reopen failed)",
            )),
        }
    }

    /// Writes the file's data to disk (shutdown).
    pub fn sync(&self) -> std::io::Result<()> {
        match self.file.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Closes and reopens the file by name (after logrotate moved it away).
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        match open(&self.path) {
            Ok(f) => {
                *guard = Some(f);
                Ok(())
            }
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct E {
        n: u32,
    }

    #[test]
    fn survives_move_and_copytruncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opens.jsonl");
        let log = OpenLog::open(&path).unwrap();
        log.append(&E { n: 1 }).unwrap();
        // logrotate `create`: move away, reopen.
        std::fs::rename(&path, dir.path().join("opens.jsonl.1")).unwrap();
        log.append(&E { n: 2 }).unwrap();
        log.reopen().unwrap();
        log.append(&E { n: 3 }).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("opens.jsonl.1")).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        // logrotate `copytruncate`: copy, truncate in place; appends continue at the new end.
        std::fs::copy(&path, dir.path().join("opens.jsonl.2")).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.append(&E { n: 4 }).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":4}\n",
            "no hole of NULs"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
