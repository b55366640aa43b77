//! The layouts of earlier versions, moved into the current one when the store is opened.
//!
//! Layout 1 (pixelrelay before the one-tree layout) kept eight trees: `messages` (id → the
//! record and delivery as JSON, without the id), `message_opens` (id → 48-byte statistics),
//! `messages_by_time`, `opens` (open id → event JSON), `opens_by_message` (id ‖ open id → ()),
//! `meta`, `outbox` and `dead_letters` (the binary rows this layout keeps as they were).
//!
//! The move copies everything into the one tree in batches, then writes the layout version,
//! then drops the old trees. A crash before the version is written leaves the old trees whole:
//! the next start clears the new tree and moves again. A crash after it leaves old trees that
//! the next start drops. A layout newer than this binary knows is refused.

use super::messages::{CHUNK, MsgStats, chunk_key, encode_message, message_key, stats_key};
use super::opens::{SEGMENT, encode_segment, segment_key, segments};
use super::outbox::LAST_EVENT;
use super::*;

/// The trees of layout 1.
const OLD_TREES: [&str; 8] = [
    "messages",
    "message_opens",
    "messages_by_time",
    "opens",
    "opens_by_message",
    "meta",
    "outbox",
    "dead_letters",
];
/// Keys written per batch while moving.
const BATCH: usize = 1024;

/// Brings the store in `db` to the current layout (see the module docs).
pub(super) fn to_current(db: &sled::Db, data: &Tree) -> Result<(), StoreError> {
    let names = db.tree_names();
    let old: Vec<&str> = OLD_TREES
        .iter()
        .copied()
        .filter(|n| names.iter().any(|x| x.as_ref() == n.as_bytes()))
        .collect();
    match data.get(LAYOUT_KEY)? {
        Some(v) => {
            let [version] = get_u64s(&v, "layout version")?;
            if version > LAYOUT {
                return Err(StoreError::Engine(format!(
                    "the store at this path has layout {version}, newer than this pixelrelay \
                     knows ({LAYOUT}): run the newer pixelrelay, or point store.path elsewhere"
                )));
            }
        }
        None if old.is_empty() => {
            data.insert(LAYOUT_KEY, put_u64s(&[LAYOUT]))?;
            return Ok(());
        }
        None => {
            tracing::info!("store: moving the store into the one-tree layout");
            data.clear()?;
            let moved = move_layout_1(db, data)?;
            data.insert(LAYOUT_KEY, put_u64s(&[LAYOUT]))?;
            db.flush()?;
            tracing::info!(
                messages = moved.messages,
                opens = moved.opens,
                "store: moved into the one-tree layout"
            );
        }
    }
    for name in old {
        db.drop_tree(name)?;
    }
    Ok(())
}

/// Batches of at most [`BATCH`] keys, applied as they fill.
struct Writer<'a> {
    /// The tree.
    data: &'a Tree,
    /// The batch being filled.
    batch: sled::Batch,
    /// Keys in it.
    n: usize,
}

impl Writer<'_> {
    fn insert(&mut self, k: Vec<u8>, v: Vec<u8>) -> Result<(), StoreError> {
        self.batch.insert(k, v);
        self.n += 1;
        if self.n == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.data.apply_batch(std::mem::take(&mut self.batch))?;
        self.n = 0;
        Ok(())
    }
}

/// Copies layout 1's trees into `data`.
fn move_layout_1(db: &sled::Db, data: &Tree) -> Result<PurgeReport, StoreError> {
    let mut w = Writer {
        data,
        batch: sled::Batch::default(),
        n: 0,
    };
    let moved = PurgeReport {
        messages: move_messages(db, &mut w)?,
        opens: move_opens(db, &mut w)?,
    };
    // Every moved open is counted in its message's statistics.
    if let Some((k, _)) = db.open_tree("opens")?.last()? {
        w.insert(CHECKPOINT_KEY.to_vec(), k.to_vec())?;
    }
    let meta = db.open_tree("meta")?;
    for (old, new) in [
        (&b"counters"[..], COUNTERS),
        (b"open_counters", OPEN_COUNTERS),
        (b"journal_indexed", JOURNAL_MARK),
        (b"last_event", LAST_EVENT),
    ] {
        if let Some(v) = meta.get(old)? {
            w.insert(new.to_vec(), v.to_vec())?;
        }
    }
    for (tree, prefix) in [("outbox", P_OUTBOX), ("dead_letters", P_DEAD)] {
        for kv in db.open_tree(tree)?.iter() {
            let (k, v) = kv?;
            w.insert(key(prefix, &[&k]), v.to_vec())?;
        }
    }
    for kv in db.open_tree("messages_by_time")?.iter() {
        let (k, _) = kv?;
        w.insert(key(P_TIME, &[&k]), Vec::new())?;
    }
    w.flush()?;
    Ok(moved)
}

/// Records, statistics and open indexes of layout 1's messages; how many.
fn move_messages(db: &sled::Db, w: &mut Writer<'_>) -> Result<u64, StoreError> {
    let by_message = db.open_tree("opens_by_message")?;
    let stats = db.open_tree("message_opens")?;
    let mut n = 0;
    for kv in db.open_tree("messages")?.iter() {
        let (k, v) = kv?;
        let id = MessageId::from_slice(&k).ok_or(StoreError::Corrupt("layout 1 message key"))?;
        // The record as layout 1 stored it is this layout's, without its id.
        let mut json: serde_json::Value = serde_json::from_slice(&v)?;
        if let Some(o) = json.as_object_mut() {
            o.insert("id".into(), id.to_string().into());
        }
        let m: Message = serde_json::from_value(json)?;
        w.insert(message_key(&id), encode_message(&m)?)?;
        let mut ms = MsgStats::default();
        if let Some(v) = stats.get(id.as_bytes())? {
            // Layout 1: the six u64s alone.
            [
                ms.count,
                ms.human,
                ms.first,
                ms.last,
                ms.first_human,
                ms.sent_at,
            ] = get_u64s(&v, "layout 1 message statistics")?;
        }
        ms.set_record(&m.record);
        let mut ids = Vec::new();
        for kv in by_message.scan_prefix(id.as_bytes()) {
            ids.extend(super::messages::u64s(&kv?.0[16..]));
        }
        let full = ids.len() / CHUNK;
        for (c, chunk) in ids.chunks(CHUNK).take(full).enumerate() {
            w.insert(chunk_key(&id, c as u32), put_u64s(chunk))?;
        }
        ms.recent = ids[full * CHUNK..].to_vec();
        ms.last_id = ids.last().copied().unwrap_or(0);
        w.insert(stats_key(&id), ms.encode())?;
        n += 1;
    }
    Ok(n)
}

/// Layout 1's opens, in segments; how many.
fn move_opens(db: &sled::Db, w: &mut Writer<'_>) -> Result<u64, StoreError> {
    let mut n = 0;
    let mut opens: Vec<(u64, sled::IVec)> = Vec::with_capacity(SEGMENT);
    let mut all = db.open_tree("opens")?.iter();
    loop {
        let next = all.next().transpose()?;
        let done = next.is_none();
        if let Some((k, v)) = next {
            let id: [u8; 8] = k[..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("layout 1 open key"))?;
            opens.push((u64::from_be_bytes(id), v));
            n += 1;
        }
        if opens.len() == SEGMENT || (done && !opens.is_empty()) {
            for seg in segments(&opens) {
                w.insert(segment_key(seg[0].0), encode_segment(seg))?;
            }
            opens.clear();
        }
        if done {
            return Ok(n);
        }
    }
}
