//! The open journal: an append-only file of pixel hits, written before the pixel is answered
//! and indexed into sled behind it (see `indexer.rs`).
//!
//! A pixel hit costs an append to a buffer here, a fraction of a microsecond, where recording
//! it in sled costs about ten (its share of a batch's B-tree inserts). The journal lets the pixel
//! listener answer at the speed of its HTTP path whatever sled is doing, and absorbs bursts: the
//! indexer catches up behind it. A writer thread ([`Journal::run_writer`]) writes the buffer
//! with one `write(2)` within a millisecond of the first hit in it, so a `kill -9` loses at most
//! the hits of that millisecond; the journal is fsynced every `store.flush_interval` like sled,
//! so a power cut loses at most that much.
//!
//! Appends never wait for the disk: the writer swaps the full buffer for an empty one under the
//! append lock and writes it outside that lock, so a pixel thread that appends while a `write`
//! is under way (or stalls: dirty-page throttling, a slow disk) takes the lock at once instead
//! of sleeping until the write returns. Only a buffer that fills up ([`BUFFER_BYTES`]), or a
//! journal already closed, makes an append write, and wait, itself.
//!
//! # Format
//!
//! The journal is a directory of segments `{generation:020}.journal`, each a sequence of
//! records `len: u32 LE ‖ crc32(payload): u32 LE ‖ payload`. Appends go to the newest segment;
//! past [`SEGMENT_BYTES`] the writer starts the next generation. A [`Position`] (generation,
//! offset) names the end of a record; the indexer stores the position it has indexed up to in
//! the same atomic store write as the opens, so replay after a crash indexes every hit exactly
//! once. A segment is deleted once sled has durably indexed past it.
//!
//! On open, a torn record at the end of the newest segment (a crash mid-`write`) is cut off;
//! a record whose checksum fails anywhere else ends that segment's replay with an error logged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use crate::store::Position;

/// A segment is closed and the next one started past this size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes before each payload.
const HEADER: usize = 8;
/// Appended records are buffered up to this many bytes before an append writes them itself.
const BUFFER_BYTES: usize = 256 * 1024;
/// Largest payload accepted (a hit is about 100 bytes plus its user agent, capped at 1 KiB).
pub const MAX_RECORD: usize = 64 * 1024;

/// The append side: the records appended but not yet written. Its lock is held only to append
/// a record or to swap the buffer out.
struct Tail {
    buf: Vec<u8>,
    /// Records in `buf`.
    buffered: u64,
    closed: bool,
}

/// The write side: the newest segment and where its written part ends. Its lock is held across
/// each `write`, so writes stay in order; it is taken before the tail's, never while holding it.
struct Out {
    file: Arc<File>,
    at: Position,
    /// The buffer being written: swapped with the tail's (both keep their capacity).
    spare: Vec<u8>,
}

/// Buffered records lost to a failed write (disk full): how many, and why.
#[derive(Debug)]
pub struct Lost {
    /// The write's error.
    pub error: io::Error,
    /// Records that were in the buffer.
    pub records: u64,
}

/// An open journal directory.
pub struct Journal {
    dir: PathBuf,
    tail: Mutex<Tail>,
    out: Mutex<Out>,
    /// Signalled when the buffer stops being empty, and on close.
    filled: Condvar,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:020}.journal"))
}

/// Generations of the segments in `dir`, ascending.
fn generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_suffix(".journal")
            .filter(|g| g.len() == 20)
            .and_then(|g| g.parse::<u64>().ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn create_segment(dir: &Path, generation: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(segment_path(dir, generation))?;
    // The new name must survive a power cut along with what is written to it.
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// One record as read back.
pub enum Read {
    /// A whole record: its payload and where it ends.
    Record(Vec<u8>, Position),
    /// Nothing more in this segment up to the limit.
    End,
    /// A record that does not check out at this offset.
    Bad(u64, &'static str),
}

/// The error for a record over [`MAX_RECORD`] or over the length its caller announced.
fn too_large() -> Lost {
    Lost {
        error: io::Error::new(io::ErrorKind::InvalidInput, "journal record too large"),
        records: 1,
    }
}

/// Appends one record (header and the payload `encode` writes, at most `max_len` bytes) to the
/// buffer.
fn push(t: &mut Tail, max_len: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), Lost> {
    let start = t.buf.len();
    t.buf.extend_from_slice(&[0; HEADER]);
    encode(&mut t.buf);
    let payload = &t.buf[start + HEADER..];
    if payload.len() > max_len {
        t.buf.truncate(start);
        return Err(too_large());
    }
    let header = [
        (payload.len() as u32).to_le_bytes(),
        crc32fast::hash(payload).to_le_bytes(),
    ];
    t.buf[start..start + HEADER].copy_from_slice(header.as_flattened());
    t.buffered += 1;
    Ok(())
}

impl Journal {
    /// Opens (creating, mode 0700) the journal directory, cuts a torn record off the newest
    /// segment, and deletes segments older than `keep_from` (already indexed).
    pub fn open(dir: &Path, keep_from: u64) -> io::Result<Journal> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut gens = generations(dir)?;
        for g in gens.iter().filter(|g| **g < keep_from) {
            std::fs::remove_file(segment_path(dir, *g))?;
        }
        gens.retain(|g| *g >= keep_from);
        let generation = gens.last().copied().unwrap_or(keep_from.max(1));
        let file = create_segment(dir, generation)?;
        let len = file.metadata()?.len();
        let valid = valid_prefix(&file, len)?;
        if valid < len {
            tracing::warn!(
                segment = %segment_path(dir, generation).display(),
                kept = valid,
                cut = len - valid,
                "open journal: cutting off a torn record at the end"
            );
            file.set_len(valid)?;
            file.sync_all()?;
        }
        Ok(Journal {
            dir: dir.to_path_buf(),
            tail: Mutex::new(Tail {
                buf: Vec::with_capacity(BUFFER_BYTES),
                buffered: 0,
                closed: false,
            }),
            out: Mutex::new(Out {
                file: Arc::new(file),
                at: Position {
                    generation,
                    offset: valid,
                },
                spare: Vec::with_capacity(BUFFER_BYTES),
            }),
            filled: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record to the buffer, which [`Journal::run_writer`] writes within its
    /// linger time (or this call, when the buffer is full). On error this record is not in
    /// the journal, nor are the others counted in [`Lost::records`] with it.
    #[cfg(test)]
    pub fn append(&self, payload: &[u8]) -> Result<(), Lost> {
        self.append_with(payload.len(), |b| b.extend_from_slice(payload))
    }

    /// [`Journal::append`] of the payload that `encode` appends to the buffer it is given
    /// (at most `max_len` bytes): no copy of its own.
    pub fn append_with(
        &self,
        max_len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Lost> {
        self.append_inner(max_len, encode, true)
    }

    /// Appends one record and writes the buffer out at once, with everything appended before
    /// it (one `write`): once this returns `Ok` the record is in the kernel. The write lock is
    /// taken before the append, so the record is written by this call and no other: a failed
    /// write is reported to the caller whose record it lost (a record appended behind another
    /// caller's write could otherwise be lost with that write while its own caller saw `Ok`).
    /// The writer thread is not woken for it.
    pub fn append_now(
        &self,
        max_len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Lost> {
        if max_len > MAX_RECORD {
            return Err(too_large());
        }
        self.push_now(HEADER + max_len, |t| push(t, max_len, encode))
    }

    /// [`Journal::append_now`] for two records known at once (a message's record and its final
    /// reply), in one `write`: both are appended or neither.
    pub fn append_now_pair(
        &self,
        (len_a, encode_a): (usize, impl FnOnce(&mut Vec<u8>)),
        (len_b, encode_b): (usize, impl FnOnce(&mut Vec<u8>)),
    ) -> Result<(), Lost> {
        if len_a.max(len_b) > MAX_RECORD {
            return Err(too_large());
        }
        self.push_now(2 * HEADER + len_a + len_b, |t| {
            let (len, buffered) = (t.buf.len(), t.buffered);
            push(t, len_a, encode_a)?;
            push(t, len_b, encode_b).inspect_err(|_| {
                t.buf.truncate(len);
                t.buffered = buffered;
            })
        })
    }

    /// Takes the write lock, appends with `push_all` (at most `max_bytes` framed) and writes
    /// the buffer out.
    fn push_now(
        &self,
        max_bytes: usize,
        push_all: impl FnOnce(&mut Tail) -> Result<(), Lost>,
    ) -> Result<(), Lost> {
        let mut o = self.lock_out();
        let full = self.lock().buf.len() + max_bytes > BUFFER_BYTES;
        if full {
            // Others' records go out first; their loss, if any, is theirs (counted by the
            // journal's writer report), and this record goes into the next write.
            if let Err(l) = self.write_out(&mut o) {
                tracing::error!(error = %l.error, lost = l.records, "journal: buffered records lost");
            }
        }
        push_all(&mut self.lock())?;
        self.write_out(&mut o)
    }

    fn append_inner(
        &self,
        max_len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
        wake_writer: bool,
    ) -> Result<(), Lost> {
        if max_len > MAX_RECORD {
            return Err(too_large());
        }
        let mut t = self.lock();
        while t.buf.len() + HEADER + max_len > BUFFER_BYTES {
            // The writer is behind (or gone): write here rather than grow without bound. On
            // failure this record is lost with the buffer.
            drop(t);
            self.write_buffered().map_err(|l| Lost {
                records: l.records + 1,
                ..l
            })?;
            t = self.lock();
        }
        let was_empty = t.buf.is_empty();
        push(&mut t, max_len, encode)?;
        let write_now = t.closed;
        drop(t);
        if write_now {
            self.write_buffered()?;
        } else if was_empty && wake_writer {
            self.filled.notify_one();
        }
        Ok(())
    }

    /// Takes the buffer from the tail (appends go on into an empty one) and writes it with
    /// one `write`, starting a new segment first when the current one is full (fsyncing the
    /// full one). On failure the records taken are dropped and counted, and the segment is
    /// cut back to its last whole record.
    fn write_out(&self, o: &mut Out) -> Result<(), Lost> {
        let records = {
            let mut t = self.lock();
            if t.buf.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut t.buf, &mut o.spare);
            std::mem::take(&mut t.buffered)
        };
        let result = (|| {
            if o.at.offset >= SEGMENT_BYTES {
                o.file.sync_data()?;
                let generation = o.at.generation + 1;
                o.file = Arc::new(create_segment(&self.dir, generation)?);
                o.at = Position {
                    generation,
                    offset: 0,
                };
            }
            if let Err(e) = (&*o.file).write_all(&o.spare) {
                // A short write (disk full) must not leave half a record for the next one to
                // follow.
                let _ = o.file.set_len(o.at.offset);
                return Err(e);
            }
            o.at.offset += o.spare.len() as u64;
            Ok(())
        })();
        o.spare.clear();
        result.map_err(|error| Lost { error, records })
    }

    /// Writes what is buffered now.
    pub fn write_buffered(&self) -> Result<(), Lost> {
        self.write_out(&mut self.lock_out())
    }

    /// The journal's writer loop (run it on a thread of its own): once records are buffered,
    /// waits `linger` for more, writes them all with one `write`, and reports. Returns after
    /// [`Journal::close`].
    pub fn run_writer(&self, linger: Duration, report: impl Fn(Result<(), Lost>)) {
        loop {
            let mut t = self.lock();
            while t.buf.is_empty() && !t.closed {
                t = self.filled.wait(t).unwrap_or_else(|p| p.into_inner());
            }
            if t.closed {
                return;
            }
            drop(t);
            std::thread::sleep(linger);
            let written = self.write_buffered();
            report(written);
        }
    }

    /// Writes what is buffered and stops the writer loop; later appends are written at once.
    pub fn close(&self) -> Result<(), Lost> {
        let mut o = self.lock_out();
        self.lock().closed = true;
        let written = self.write_out(&mut o);
        drop(o);
        self.filled.notify_all();
        written
    }

    /// Where the last written record ends (buffered ones are not readable yet).
    pub fn end(&self) -> Position {
        self.lock_out().at
    }

    /// Bytes appended but not yet written.
    pub fn buffered_bytes(&self) -> usize {
        self.lock().buf.len()
    }

    /// Writes what is buffered and fsyncs the newest segment (older ones were fsynced when
    /// closed).
    pub fn sync(&self) -> io::Result<()> {
        let file = {
            let mut o = self.lock_out();
            self.write_out(&mut o).map_err(|l| l.error)?;
            o.file.clone()
        };
        file.sync_data()
    }

    /// Deletes the segments before generation `g`.
    pub fn remove_before(&self, g: u64) -> io::Result<()> {
        for old in generations(&self.dir)?.into_iter().filter(|x| *x < g) {
            std::fs::remove_file(segment_path(&self.dir, old))?;
        }
        Ok(())
    }

    /// A reader from `from`.
    pub fn reader(&self, from: Position) -> Reader {
        Reader {
            dir: self.dir.clone(),
            file: None,
            at: from,
            window: Window::default(),
        }
    }
}

/// Reads records in order, across segments, never past a given end.
pub struct Reader {
    dir: PathBuf,
    file: Option<(u64, File)>,
    at: Position,
    /// Bytes read ahead from the current segment.
    window: Window,
}

/// Bytes `at..at + bytes.len()` of a segment, read ahead so that the records of a busy
/// journal (one per `write`, often a few hundred bytes) cost one `pread` per window rather
/// than two each.
#[derive(Default)]
struct Window {
    at: u64,
    bytes: Vec<u8>,
}

/// How far ahead a reader reads.
const READ_AHEAD: usize = 256 * 1024;

impl Window {
    /// Bytes `offset..offset + len` of `file`, none of them at or past `limit` (the caller
    /// checked), from the window or read into it.
    fn get(&mut self, file: &File, offset: u64, len: usize, limit: u64) -> io::Result<&[u8]> {
        let end = offset + len as u64;
        let covered = offset >= self.at && end <= self.at + self.bytes.len() as u64;
        if !covered {
            let want = (limit - offset).min(len.max(READ_AHEAD) as u64) as usize;
            self.bytes.resize(want, 0);
            file.read_exact_at(&mut self.bytes, offset)?;
            self.at = offset;
        }
        let from = (offset - self.at) as usize;
        Ok(&self.bytes[from..from + len])
    }
}

impl Reader {
    /// Where the next record starts.
    pub fn position(&self) -> Position {
        self.at
    }

    /// The next record before `end`, moving to the next segment when this one is done.
    pub fn next(&mut self, end: Position) -> io::Result<Read> {
        loop {
            if self.at >= end {
                return Ok(Read::End);
            }
            let g = self.at.generation;
            if self.file.as_ref().is_none_or(|(fg, _)| *fg != g) {
                match File::open(segment_path(&self.dir, g)) {
                    Ok(f) => {
                        self.file = Some((g, f));
                        self.window = Window::default();
                    }
                    // Never written (a generation skipped) or already removed: go on.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && g < end.generation => {
                        self.at = Position {
                            generation: g + 1,
                            offset: 0,
                        };
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((_, file)) = &self.file else {
                return Ok(Read::End);
            };
            let limit = if g < end.generation {
                file.metadata()?.len()
            } else {
                end.offset
            };
            match read_record(file, self.at.offset, limit, &mut self.window)? {
                Some(Ok((payload, next))) => {
                    self.at.offset = next;
                    return Ok(Read::Record(payload, self.at));
                }
                Some(Err(why)) => return Ok(Read::Bad(self.at.offset, why)),
                None if g < end.generation => {
                    self.at = Position {
                        generation: g + 1,
                        offset: 0,
                    };
                    self.file = None;
                }
                None => return Ok(Read::End),
            }
        }
    }

    /// Skips the rest of the current segment (after a bad record).
    pub fn skip_segment(&mut self) {
        self.at = Position {
            generation: self.at.generation + 1,
            offset: 0,
        };
        self.file = None;
    }
}

/// A record's payload and where the next starts, or why it does not check out.
type Checked = Result<(Vec<u8>, u64), &'static str>;

/// The record at `offset` if one starts there before `limit`: `None` at the limit, `Err` for
/// a record that is cut short or fails its checksum.
fn read_record(
    file: &File,
    offset: u64,
    limit: u64,
    window: &mut Window,
) -> io::Result<Option<Checked>> {
    if offset >= limit {
        return Ok(None);
    }
    if limit - offset < HEADER as u64 {
        return Ok(Some(Err("record header cut short")));
    }
    let h = window.get(file, offset, HEADER, limit)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_RECORD {
        return Ok(Some(Err("record length out of range")));
    }
    let next = offset + (HEADER + len) as u64;
    if next > limit {
        return Ok(Some(Err("record cut short")));
    }
    let payload = window.get(file, offset + HEADER as u64, len, limit)?;
    if crc32fast::hash(payload) != crc {
        return Ok(Some(Err("record checksum mismatch")));
    }
    Ok(Some(Ok((payload.to_vec(), next))))
}

/// Bytes of `file` (of length `len`) that are whole, checked records.
fn valid_prefix(file: &File, len: u64) -> io::Result<u64> {
    let mut at = 0;
    let mut window = Window::default();
    while let Some(Ok((_, next))) = read_record(file, at, len, &mut window)? {
        at = next;
    }
    Ok(at)
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(l) = self.close() {
            tracing::error!(error = %l.error, lost = l.records, "open journal: final write failed");
        }
    }
}

#[cfg(test)]
mod tests;
