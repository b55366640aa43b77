//! Try-it mode (`upstream.capture_dir`): instead of relaying, each accepted message is written
//! into a folder as `QUEUEID.eml`, plus its first HTML part as `QUEUEID.html` that a browser can
//! open (so the pixel loads and an open is recorded).
//!
//! Files are written to a temporary name, fsynced and renamed, so a reader never sees half a
//! message, and the 250 is given only after the `.eml` is on disk. The reply says "captured",
//! never "queued": capture mode does not pretend to relay.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::smtp::reply::{self, Reply};

/// The capture folder.
pub struct Capture {
    /// Where files go.
    dir: PathBuf,
}

impl Capture {
    /// Uses (and creates) `dir`.
    pub fn new(dir: &Path) -> std::io::Result<Capture> {
        std::fs::create_dir_all(dir)?;
        Ok(Capture {
            dir: dir.to_path_buf(),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the message (and its HTML part) and answers as an upstream would.
    pub async fn deliver(&self, queue_id: &str, content: &[u8]) -> Reply {
        let dir = self.dir.clone();
        let id = queue_id.to_string();
        let bytes = content.to_vec();
        let res = tokio::task::spawn_blocking(move || write_files(&dir, &id, &bytes)).await;
        match res {
            Ok(Ok(name)) => Reply::new(
                250,
                format!("2.0.0 Ok: captured as {name} (capture mode, not relayed)"),
            ),
            Ok(Err(e)) => {
                warn!(queue_id, error = %e, event = "capture_error", "cannot write capture file");
                reply::local_error()
            }
            Err(e) => {
                warn!(queue_id, error = %e, event = "capture_error", "capture task failed");
                reply::local_error()
            }
        }
    }
}

fn write_files(dir: &Path, id: &str, content: &[u8]) -> std::io::Result<String> {
    let name = format!("{id}.eml");
    write_atomic(&dir.join(&name), content)?;
    if let Some(html) = first_html(content) {
        let mut page = b"<!-- pixelrelay capture: the first HTML part, decoded -->\n<meta charset=\"utf-8\">\n".to_vec();
        page.extend_from_slice(html.as_bytes());
        write_atomic(&dir.join(format!("{id}.html")), &page)?;
    }
    Ok(name)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The decoded text of the first `text/html` part that is not an attachment.
fn first_html(content: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::default().parse(content)?;
    let part = msg.html_part(0)?;
    if !part.is_text_html() {
        return None;
    }
    part.text_contents().map(str::to_string)
}
