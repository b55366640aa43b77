//! Writes: message records and final replies, and opens, each commit ONE transaction under the
//! writers' advisory lock, with the shared totals read and written back in it and the
//! journal position of this node when the commit comes from its journal.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Transaction;

use super::events_write::{NewEvents, click_stats, copy_opens, write_click_stats};
use super::{Inner, big, endpoint_key, lock, unbig};
use crate::store::shared::{MessageEvent, format_id, next_id, webhook_body};
use crate::store::types::*;
use crate::token::MessageId;
use crate::track::OpenEvent;

/// The lock every writer takes ("pixelrelay writes").
const WRITE_LOCK: i64 = 0x7069_7865_6c77_7269;

/// The final replies of one write, by message: the first (counted and announced) and the
/// last (stored).
struct Replies<'a> {
    first: HashMap<MessageId, &'a Delivery>,
    last: HashMap<MessageId, &'a Delivery>,
}

impl<'a> Replies<'a> {
    fn of(done: &'a [(MessageId, Delivery)]) -> Replies<'a> {
        let mut r = Replies {
            first: HashMap::with_capacity(done.len()),
            last: HashMap::with_capacity(done.len()),
        };
        for (id, d) in done {
            r.first.entry(*id).or_insert(d);
            r.last.insert(*id, d);
        }
        r
    }
}

/// Takes the writers' lock for the rest of transaction `tx`.
pub(super) async fn lock_writers(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await?;
    Ok(())
}

/// What a write changes of the shared state, read at its start under the lock.
pub(super) struct Shared {
    pub(super) counters: Counters,
    pub(super) last_open: u64,
    pub(super) last_event: u64,
    /// Outbox rows written.
    written: usize,
}

/// A message's open statistics: what a commit of opens adds to them, or their counts before it.
#[derive(Clone, Copy, Default)]
struct OpenStatsRow {
    opens: u64,
    human: u64,
    first: Option<u64>,
    last: Option<u64>,
    first_human: Option<u64>,
}

impl Inner {
    /// Begins a writing transaction: the lock, then the shared state.
    async fn begin<'c>(
        &self,
        c: &'c mut tokio_postgres::Client,
    ) -> Result<(Transaction<'c>, Shared), StoreError> {
        let tx = c.transaction().await?;
        lock_writers(&tx).await?;
        let (counters, last_open, last_event) = read_state(&tx).await?;
        Ok((
            tx,
            Shared {
                counters,
                last_open,
                last_event,
                written: 0,
            },
        ))
    }

    /// Ends a writing transaction: the shared state and this node's journal `mark`, commit,
    /// then the node's mirrors.
    async fn finish(
        &self,
        tx: Transaction<'_>,
        sh: &Shared,
        mark: Option<Position>,
    ) -> Result<(), StoreError> {
        let counters = serde_json::to_value(&sh.counters)?;
        tx.execute(
            "INSERT INTO state (name, value) VALUES ('counters', $1), ('last_open', $2), ('last_event', $3)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[
                &counters,
                &serde_json::Value::from(sh.last_open),
                &serde_json::Value::from(sh.last_event),
            ],
        )
        .await?;
        if let Some(m) = mark {
            tx.execute(
                "INSERT INTO journal_marks (node, generation, \"offset\") VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET generation = EXCLUDED.generation, \"offset\" = EXCLUDED.\"offset\"",
                &[&self.node, &big(m.generation), &big(m.offset)],
            )
            .await?;
        }
        tx.commit().await?;
        *lock(&self.counters) = sh.counters.clone();
        *lock(&self.last_open) = sh.last_open;
        if sh.written > 0 {
            let last = sh.last_event;
            self.outbox_watch.send_modify(|v| v.last_seq = last);
        }
        Ok(())
    }

    /// Rows for every endpoint subscribed to `kind`: the event's sequence advances when there
    /// is at least one.
    async fn write_event<T: serde::Serialize>(
        &self,
        tx: &Transaction<'_>,
        sh: &mut Shared,
        kind: &'static str,
        at_ms: u64,
        event: &T,
    ) -> Result<(), StoreError> {
        let targets: Vec<Vec<u8>> = self
            .hooks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|s| s.wants(kind))
            .map(|s| endpoint_key(s.endpoint))
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        sh.last_event = next_id(sh.last_event, at_ms);
        let body = webhook_body(kind, &format_id(sh.last_event), event)?;
        tx.execute(
            "INSERT INTO outbox (endpoint, seq, kind, created_ms, attempts, next_ms, body)
             SELECT e, $2, $3, $4, 0, $4, $5 FROM unnest($1::bytea[]) AS e",
            &[&targets, &big(sh.last_event), &kind, &big(at_ms), &body],
        )
        .await?;
        sh.written += targets.len();
        Ok(())
    }

    /// Message records, then final replies, in one transaction (see `Backend`).
    pub(super) async fn commit_messages(
        &self,
        recs: Vec<MessageRecord>,
        done: Vec<(MessageId, Delivery)>,
        mark: Option<Position>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let (tx, mut sh) = self.begin(&mut c).await?;
        // A reply journaled in the same run as its record (the usual case: the relay journals
        // both within milliseconds) is written with the new row: one insert, no update.
        let folded = if recs.is_empty() {
            HashSet::new()
        } else {
            self.record_new(&tx, &mut sh, recs, &done).await?
        };
        let rest: Vec<_> = done
            .into_iter()
            .filter(|(id, _)| !folded.contains(id))
            .collect();
        if !rest.is_empty() {
            self.record_replies(&tx, &mut sh, rest).await?;
        }
        self.finish(tx, &sh, mark).await
    }

    /// Message records, each new one with its reply in `done` if any (counted and announced
    /// here): the ids whose reply was written so.
    async fn record_new(
        &self,
        tx: &Transaction<'_>,
        sh: &mut Shared,
        recs: Vec<MessageRecord>,
        done: &[(MessageId, Delivery)],
    ) -> Result<HashSet<MessageId>, StoreError> {
        let replies = Replies::of(done);
        let new = self.upsert_records(tx, recs, &replies).await?;
        sh.counters.recorded += new.len() as u64;
        let mut folded = HashSet::new();
        for rec in &new {
            if let Some(first) = replies.first.get(&rec.id).copied() {
                sh.counters.count_delivery(rec, first);
                let ev = MessageEvent {
                    record: rec,
                    delivery: &Some(first.clone()),
                };
                self.write_event(tx, sh, "message", first.at_ms, &ev)
                    .await?;
                folded.insert(rec.id);
            }
        }
        Ok(folded)
    }

    /// Writes message records in one statement (an id seen again updates its record and keeps
    /// its reply and opens; a new one gets its reply from `replies`); the new ones.
    async fn upsert_records(
        &self,
        tx: &Transaction<'_>,
        recs: Vec<MessageRecord>,
        replies: &Replies<'_>,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        // One row per id (the last record of it), as writing them in turn would leave.
        let mut last: HashMap<MessageId, MessageRecord> = HashMap::with_capacity(recs.len());
        for mut r in recs {
            if !self.cfg.subjects {
                r.subject = None;
            }
            last.insert(r.id, r);
        }
        let recs: Vec<MessageRecord> = last.into_values().collect();
        let reply = |r: &MessageRecord| replies.last.get(&r.id).copied();
        let delivery: Vec<Option<serde_json::Value>> = recs
            .iter()
            .map(|r| reply(r).map(serde_json::to_value).transpose())
            .collect::<Result<_, _>>()?;
        let sent: Vec<i64> = recs
            .iter()
            .map(|r| big(reply(r).map_or(r.at_ms, |d| d.at_ms)))
            .collect();
        let col = |f: &dyn Fn(&MessageRecord) -> Option<String>| -> Vec<Option<String>> {
            recs.iter().map(f).collect()
        };
        let ids: Vec<&[u8]> = recs.iter().map(|r| r.id.as_bytes().as_slice()).collect();
        let at: Vec<i64> = recs.iter().map(|r| big(r.at_ms)).collect();
        let size: Vec<i64> = recs.iter().map(|r| big(r.size)).collect();
        let tracked: Vec<bool> = recs.iter().map(|r| r.tracked).collect();
        let rcpts: Vec<String> = recs
            .iter()
            .map(|r| serde_json::to_string(&r.recipients))
            .collect::<Result<_, _>>()?;
        let rows = tx
            .query(
                "INSERT INTO messages (id, queue_id, at_ms, sender, recipients, message_id, subject,
                                       size, tracked, skip_reason, delivery, sent_at_ms)
                 SELECT id, q, at, s, ARRAY(SELECT jsonb_array_elements_text(r::jsonb)), mid, subj,
                        sz, tr, sk, d, t
                 FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::bigint[], $9::boolean[], $10::text[],
                             $11::jsonb[], $12::bigint[])
                      AS u(id, q, at, s, r, mid, subj, sz, tr, sk, d, t)
                 ON CONFLICT (id) DO UPDATE SET
                    queue_id = EXCLUDED.queue_id, at_ms = EXCLUDED.at_ms, sender = EXCLUDED.sender,
                    recipients = EXCLUDED.recipients, message_id = EXCLUDED.message_id,
                    subject = EXCLUDED.subject, size = EXCLUDED.size, tracked = EXCLUDED.tracked,
                    skip_reason = EXCLUDED.skip_reason,
                    sent_at_ms = CASE WHEN messages.delivery IS NULL THEN EXCLUDED.at_ms
                                      ELSE messages.sent_at_ms END
                 RETURNING id, (xmax = 0)",
                &[
                    &ids,
                    &col(&|r| Some(r.queue_id.clone())),
                    &at,
                    &col(&|r| Some(r.sender.clone())),
                    &rcpts,
                    &col(&|r| r.message_id.clone()),
                    &col(&|r| r.subject.clone()),
                    &size,
                    &tracked,
                    &col(&|r| r.skip_reason.clone()),
                    &delivery,
                    &sent,
                ],
            )
            .await?;
        let new: HashSet<&[u8]> = rows
            .iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get::<_, &[u8]>(0))
            .collect();
        Ok(recs
            .into_iter()
            .filter(|r| new.contains(r.id.as_bytes().as_slice()))
            .collect())
    }

    /// Final replies, in one statement: each message's first reply is counted and announced;
    /// a reply for an unknown message fails the whole write.
    async fn record_replies(
        &self,
        tx: &Transaction<'_>,
        sh: &mut Shared,
        done: Vec<(MessageId, Delivery)>,
    ) -> Result<(), StoreError> {
        let ids: Vec<MessageId> = done.iter().map(|(i, _)| *i).collect();
        let mut messages = super::read::message_rows(tx, &ids).await?;
        let mut last: HashMap<MessageId, &Delivery> = HashMap::with_capacity(done.len());
        for (id, d) in &done {
            // Dropping the transaction rolls it back: all or nothing.
            let m = messages.get_mut(id).ok_or(StoreError::NotFound(*id))?;
            if m.delivery.is_none() {
                sh.counters.count_delivery(&m.record, d);
                m.delivery = Some(d.clone());
                let ev = MessageEvent {
                    record: &m.record,
                    delivery: &m.delivery,
                };
                self.write_event(tx, sh, "message", d.at_ms, &ev).await?;
            }
            last.insert(*id, d);
        }
        let keys: Vec<&[u8]> = last.keys().map(|i| i.as_bytes().as_slice()).collect();
        let replies: Vec<serde_json::Value> = last
            .values()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        let at: Vec<i64> = last.values().map(|d| big(d.at_ms)).collect();
        tx.execute(
            "UPDATE messages m SET delivery = u.d, sent_at_ms = u.t
             FROM unnest($1::bytea[], $2::jsonb[], $3::bigint[]) AS u(id, d, t)
             WHERE m.id = u.id",
            &[&keys, &replies, &at],
        )
        .await?;
        Ok(())
    }

    /// Prepared opens in one transaction, in order (see `Backend`); then the open log and
    /// the live feed.
    pub(super) async fn commit_opens(
        &self,
        opens: Vec<Option<PreparedOpen>>,
        mark: Option<Position>,
        holds: HoldChanges,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        let mut c = self.conn().await?;
        let (tx, mut sh) = self.begin(&mut c).await?;
        // The statistics updated first, in one statement that returns them: what each open's
        // `first` and `count` are then follows from the totals before this batch.
        let mut stats = update_stats(&tx, &opens).await?;
        let mut clicks = click_stats(&tx, &opens).await?;
        let mut out = Vec::with_capacity(opens.len());
        let mut new = NewEvents::default();
        for o in opens {
            let Some(PreparedOpen { id, event, .. }) = o else {
                out.push(None);
                continue;
            };
            if event.is_click() {
                // Purged since its context was read: no click.
                let Some((cs, changed)) = clicks.get_mut(&id) else {
                    out.push(None);
                    continue;
                };
                sh.last_open = next_id(sh.last_open, event.at_ms);
                let mut ev = event;
                ev.id = format_id(sh.last_open);
                cs.count(&mut ev, &mut sh.counters);
                *changed = true;
                self.write_event(&tx, &mut sh, "click", ev.at_ms, &ev)
                    .await?;
                new.push(sh.last_open, &id, &ev)?;
                out.push(Some(ev));
                continue;
            }
            // Purged since its context was read.
            let Some(st) = stats.get_mut(&id) else {
                out.push(None);
                continue;
            };
            let ev = count_open(&mut sh, st, event);
            self.write_event(&tx, &mut sh, "open", ev.at_ms, &ev)
                .await?;
            new.push(sh.last_open, &id, &ev)?;
            out.push(Some(ev));
        }
        if !new.ids.is_empty() {
            copy_opens(&tx, &new).await?;
        }
        write_click_stats(&tx, &clicks).await?;
        self.write_holds(&tx, &holds).await?;
        self.finish(tx, &sh, mark).await?;
        if let Some(log) = &self.open_log {
            for ev in out.iter().flatten() {
                // The opens are committed; a full disk here must not undo them.
                if let Err(e) = serde_json::to_vec(ev)
                    .map_err(std::io::Error::other)
                    .and_then(|json| log.append_raw(json))
                {
                    tracing::warn!(error = %e, "cannot append to store.open_log");
                }
            }
        }
        // Live followers: these opens now, with any another node committed before them.
        if self.feed.receiver_count() > 0 {
            self.feed_through(Some(sh.last_open)).await?;
        } else {
            let mut fed = self.fed.lock().await;
            *fed = (*fed).max(sh.last_open);
        }
        Ok(out)
    }
}

impl Inner {
    /// This node's held hits: the new ones in (again after a replay: kept as they were), the
    /// released ones out.
    async fn write_holds(&self, tx: &Transaction<'_>, h: &HoldChanges) -> Result<(), StoreError> {
        if !h.add.is_empty() {
            let g: Vec<i64> = h.add.iter().map(|(p, _)| big(p.generation)).collect();
            let o: Vec<i64> = h.add.iter().map(|(p, _)| big(p.offset)).collect();
            let hit: Vec<&[u8]> = h.add.iter().map(|(_, b)| b.as_slice()).collect();
            tx.execute(
                "INSERT INTO held_hits (node, generation, \"offset\", hit)
                 SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bytea[])
                 ON CONFLICT DO NOTHING",
                &[&self.node, &g, &o, &hit],
            )
            .await?;
        }
        if !h.release.is_empty() {
            let g: Vec<i64> = h.release.iter().map(|p| big(p.generation)).collect();
            let o: Vec<i64> = h.release.iter().map(|p| big(p.offset)).collect();
            tx.execute(
                "DELETE FROM held_hits h USING unnest($2::bigint[], $3::bigint[]) AS r(g, o)
                 WHERE h.node = $1 AND h.generation = r.g AND h.\"offset\" = r.o",
                &[&self.node, &g, &o],
            )
            .await?;
        }
        Ok(())
    }
}

/// Gives `event` its id, `first` and `count`, and counts it in the message's statistics and
/// the totals.
fn count_open(sh: &mut Shared, st: &mut OpenStatsRow, mut ev: OpenEvent) -> OpenEvent {
    sh.last_open = next_id(sh.last_open, ev.at_ms);
    let human = !ev.machine;
    let (first, first_human) = (st.opens == 0, human && st.human == 0);
    st.opens += 1;
    st.human += u64::from(human);
    ev.id = format_id(sh.last_open);
    ev.first = first;
    ev.count = st.opens;
    let c = &mut sh.counters;
    c.opens += 1;
    c.machine_opens += u64::from(!human);
    c.unique_opens += u64::from(first);
    c.unique_human_opens += u64::from(first_human);
    c.count_open(&ev);
    ev
}

/// Counts the opens of `opens` in their messages' statistics, in one statement; returns, for
/// each message that still exists, its counts as they were before (every writer holds the
/// writers' lock, so nothing changed them in between). A message purged since its open was
/// prepared is missing: its opens are not recorded.
async fn update_stats(
    tx: &Transaction<'_>,
    opens: &[Option<PreparedOpen>],
) -> Result<HashMap<MessageId, OpenStatsRow>, StoreError> {
    // Per message: opens, human opens, the first open's and the first human open's time (in
    // batch order, as counting them one by one would set them), the latest time.
    let mut delta: HashMap<MessageId, OpenStatsRow> = HashMap::new();
    for o in opens.iter().flatten().filter(|o| !o.event.is_click()) {
        let d = delta.entry(o.id).or_default();
        let (at, human) = (o.event.at_ms, !o.event.machine);
        d.opens += 1;
        d.human += u64::from(human);
        d.first = d.first.or(Some(at));
        if human {
            d.first_human = d.first_human.or(Some(at));
        }
        d.last = Some(d.last.map_or(at, |l| l.max(at)));
    }
    let mut ids = Vec::with_capacity(delta.len());
    let (mut n, mut h) = (Vec::new(), Vec::new());
    let (mut first, mut last, mut first_human) = (Vec::new(), Vec::new(), Vec::new());
    for (id, d) in &delta {
        ids.push(id.as_bytes().as_slice());
        n.push(big(d.opens));
        h.push(big(d.human));
        first.push(d.first.map(big));
        last.push(d.last.map(big));
        first_human.push(d.first_human.map(big));
    }
    let rows = tx
        .query(
            "UPDATE messages m SET opens = m.opens + u.n, human_opens = m.human_opens + u.h,
                                   first_open_ms = coalesce(m.first_open_ms, u.f),
                                   last_open_ms = greatest(m.last_open_ms, u.l),
                                   first_human_ms = coalesce(m.first_human_ms, u.fh)
             FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
                  AS u(id, n, h, f, l, fh)
             WHERE m.id = u.id
             RETURNING m.id, m.opens, m.human_opens",
            &[&ids, &n, &h, &first, &last, &first_human],
        )
        .await?;
    let mut before = HashMap::with_capacity(rows.len());
    for row in rows {
        let Some(id) = MessageId::from_slice(row.get::<_, &[u8]>(0)) else {
            continue;
        };
        let Some(d) = delta.get(&id) else {
            continue;
        };
        let row = OpenStatsRow {
            opens: unbig(row.get(1)).saturating_sub(d.opens),
            human: unbig(row.get(2)).saturating_sub(d.human),
            ..OpenStatsRow::default()
        };
        before.insert(id, row);
    }
    Ok(before)
}

/// The shared totals, the last open id and the last event sequence.
pub(super) async fn read_state(
    c: &impl tokio_postgres::GenericClient,
) -> Result<(Counters, u64, u64), StoreError> {
    let mut counters = Counters::default();
    let (mut last_open, mut last_event) = (0, 0);
    for row in c.query("SELECT name, value FROM state", &[]).await? {
        let value: serde_json::Value = row.get(1);
        match row.get::<_, &str>(0) {
            "counters" => counters = serde_json::from_value(value)?,
            "last_open" => last_open = value.as_u64().unwrap_or(0),
            "last_event" => last_event = value.as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Ok((counters, last_open, last_event))
}
