//! Memory bound of the rewrite core: for a ~100 KB HTML message in each transfer encoding (and
//! with an opt-out header to strip), the input plus everything `rewrite` holds at its peak stays
//! within 3× the message size; with click tracking (its links add half the message at most)
//! within 5×, what the relay reserves then. Counted with a global allocator that tracks live
//! bytes, so this file holds a single test (other tests would allocate concurrently).
#![allow(unsafe_code)] // a counting GlobalAlloc needs `unsafe impl`; the library forbids unsafe

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use pixelrelay::config::OnDkimSigned;
use pixelrelay::rewrite::{Decision, Envelope, Links, Policy, rewrite, rewrite_with_links};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn page(size: usize) -> String {
    let mut s = String::from("<html><body>\r\n");
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!("<p><a href=\"https://example.com/{i}?a=1&amp;b=2\">Caf\u{e9} story {i}</a> = news</p>\r\n"));
        i += 1;
    }
    s + "</body></html>\r\n"
}

fn message(cte: &str, opt_out: bool) -> Vec<u8> {
    let html = page(100_000);
    let body = match cte {
        "base64" => {
            let flat = base64::engine::general_purpose::STANDARD.encode(&html);
            flat.as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
                .collect()
        }
        "quoted-printable" => html.replace('=', "=3D").replace('\u{e9}', "=C3=A9"),
        _ => html,
    };
    let opt = if opt_out {
        "X-Track-Opens: yes\r\n"
    } else {
        ""
    };
    format!(
        "From: a@example.com\r\n{opt}Subject: mem\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}"
    )
    .into_bytes()
}

#[test]
fn peak_memory_within_three_times_the_message() {
    let policy = Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: OnDkimSigned::Skip,
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size: 64 << 20,
    };
    let rcpts = vec!["bob@example.net".to_string()];
    let env = Envelope {
        sender: "a@example.com",
        recipients: &rcpts,
    };
    for cte in ["8bit", "quoted-printable", "base64"] {
        for opt_out in [false, true] {
            let msg = message(cte, opt_out);
            let base = LIVE.load(Ordering::SeqCst);
            PEAK.store(base, Ordering::SeqCst);
            let r = rewrite(&env, &msg, "http://127.0.0.1:8080/o/TOKEN.gif", &policy);
            let peak = PEAK.load(Ordering::SeqCst) - base;
            assert_eq!(r.decision, Decision::Tracked, "{cte}");
            drop(r);
            let ratio = (msg.len() + peak) as f64 / msg.len() as f64;
            println!(
                "{cte:>16} opt_out={opt_out:<5} {} bytes: peak extra {peak} bytes, {ratio:.2}x with the input",
                msg.len()
            );
            assert!(ratio <= 3.0, "{cte} opt_out={opt_out}: {ratio:.2}x");
        }
        // With click tracking: every one of the page's ~1 000 links a tracked URL about 130
        // bytes long, as the relay mints them, until the links have added half the message.
        let msg = message(cte, false);
        let url = |i: u16, u: &str| {
            Some(format!(
                "https://track.example.com/c/{i:05}{}",
                "A".repeat(100 + u.len() * 4 / 3)
            ))
        };
        let links = Links {
            exclude: &[],
            own_prefix: "https://track.example.com/c/",
            url: &url,
        };
        let base = LIVE.load(Ordering::SeqCst);
        PEAK.store(base, Ordering::SeqCst);
        let r = rewrite_with_links(
            &env,
            &msg,
            "http://127.0.0.1:8080/o/TOKEN.gif",
            Some(&links),
            &policy,
        );
        let peak = PEAK.load(Ordering::SeqCst) - base;
        assert_eq!(r.decision, Decision::Tracked, "{cte}");
        let out = r.message.expect("rewritten");
        let tracked = mail_parser::MessageParser::default()
            .parse(&out[..])
            .and_then(|m| {
                m.body_html(0)
                    .map(|h| h.matches("track.example.com/c/").count())
            })
            .unwrap_or(0);
        drop(out);
        let ratio = (msg.len() + peak) as f64 / msg.len() as f64;
        println!(
            "{cte:>16} with clicks: {tracked} links tracked, peak extra {peak} bytes, {ratio:.2}x with the input"
        );
        assert!(tracked > 100, "{cte}: links tracked {tracked}");
        assert!(ratio <= 5.0, "{cte} with clicks: {ratio:.2}x");
    }
}
