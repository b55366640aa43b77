//! `GET /api/v1/messages?format=csv`: the filtered message list as one CSV file (RFC 4180), for
//! a spreadsheet. Every matching message, newest first, up to [`MAX_ROWS`]; the last line says
//! when the list was cut there. Subjects, addresses and replies are chosen by whoever sends
//! mail: a field a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first) gets
//! a leading `'`, as OWASP recommends.

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use super::respond::{ApiResult, text};
use crate::clock::rfc3339_ms;
use crate::store::{Message, MessageFilter, Store};

/// Most rows in one export.
pub(super) const MAX_ROWS: usize = 100_000;

/// The columns, in order.
const HEADER: [&str; 20] = [
    "id",
    "received",
    "sender",
    "recipients",
    "subject",
    "message_id",
    "queue_id",
    "size",
    "tracking",
    "delivery",
    "opens",
    "people_opens",
    "machine_opens",
    "first_open",
    "first_person_open",
    "last_open",
    "clicks",
    "people_clicks",
    "links_clicked",
    "first_person_click",
];

/// The export of every message `filter` passes.
pub(super) fn export(store: &Store, filter: &MessageFilter) -> ApiResult {
    let mut out = String::new();
    line(&mut out, HEADER.iter().map(|h| h.to_string()));
    let (mut cursor, mut rows) = (None::<String>, 0usize);
    let truncated = loop {
        let page = store.list_messages(filter, cursor.as_deref(), 1000)?;
        for m in &page.items {
            if rows == MAX_ROWS {
                break;
            }
            line(&mut out, fields(m));
            rows += 1;
        }
        match page.next_cursor {
            Some(_) if rows == MAX_ROWS => break true,
            Some(c) => cursor = Some(c),
            None => break false,
        }
    };
    if truncated {
        out.push_str(&format!(
            "# cut at {MAX_ROWS} rows: narrow the dates to export the rest\r\n"
        ));
    }
    let mut r = text(StatusCode::OK, "text/csv; charset=utf-8", out);
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"pixelrelay-messages.csv\""),
    );
    Ok(r)
}

/// One message's fields, in [`HEADER`] order.
fn fields(m: &Message) -> impl Iterator<Item = String> {
    let r = &m.record;
    let time = |t: Option<u64>| t.map(rfc3339_ms).unwrap_or_default();
    let tracking = if r.tracked {
        "tracked".to_string()
    } else {
        format!("skipped: {}", r.skip_reason.as_deref().unwrap_or("unknown"))
    };
    let delivery = match &m.delivery {
        Some(d) => d.reply.clone(),
        None => String::new(),
    };
    [
        r.id.to_string(),
        rfc3339_ms(r.at_ms),
        r.sender.clone(),
        r.recipients.join(" "),
        r.subject.clone().unwrap_or_default(),
        r.message_id.clone().unwrap_or_default(),
        r.queue_id.clone(),
        r.size.to_string(),
        tracking,
        delivery,
        m.opens.count.to_string(),
        m.opens.human.to_string(),
        (m.opens.count - m.opens.human.min(m.opens.count)).to_string(),
        time(m.opens.first_at),
        time(m.opens.first_human_at),
        time(m.opens.last_at),
        m.clicks.count.to_string(),
        m.clicks.human.to_string(),
        m.clicks.links.len().to_string(),
        time(m.clicks.first_human_at),
    ]
    .into_iter()
}

/// Appends one CSV record, CRLF-ended.
fn line(out: &mut String, fields: impl Iterator<Item = String>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, &f);
    }
    out.push_str("\r\n");
}

/// One field: defused if a spreadsheet would take it for a formula, quoted if it holds a comma,
/// a quote or a line break (quotes doubled).
fn field(out: &mut String, f: &str) {
    let formula = f.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || f.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in f.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: &str) -> String {
        let mut s = String::new();
        field(&mut s, f);
        s
    }

    #[test]
    fn fields_are_quoted_and_formulas_defused() {
        assert_eq!(one("plain"), "plain");
        assert_eq!(one("a,b"), "\"a,b\"");
        assert_eq!(one("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(one("two\r\nlines"), "\"two\r\nlines\"");
        assert_eq!(one("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(one("+1"), "\"'+1\"");
        assert_eq!(one("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(one("-2"), "\"'-2\"");
        assert_eq!(one(""), "");
    }
}
