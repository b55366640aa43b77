//! The dashboard in a real browser: Debian's headless Chromium loads `GET /` with the token in
//! the URL fragment (`#token=…`, read into sessionStorage and removed from the address bar by
//! the page), fetches the API, follows the live stream, and the test asserts on the DOM it
//! dumps: message rows and counts, machine opens apart, a subject holding `<script>` shown as
//! text, and an open written after the page connected arriving live. A screenshot is saved as
//! `target/test-artifacts/dashboard.png`.
//!
//! Without Chromium the test is skipped loudly, or fails when `PIXELRELAY_REQUIRE_PEERS` is set.

#[path = "admin_support/mod.rs"]
mod support;

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pixelrelay::track::Device;
use support::{Admin, Msg, Open, TOKEN, wait_followers};
use tokio::process::Command;

const XSS: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

fn chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    c
}

/// Runs Chromium to completion (60 s at most); returns stdout.
async fn run(mut c: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("chromium timed out")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<tr class="msg…" data-id="ID">…</tr>` of a message.
fn row<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("data-id=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id} in\n{dom}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    &dom[start..end]
}

/// The text of `<td class="CLASS">…</td>` inside `html`.
fn cell<'a>(html: &'a str, class: &str) -> &'a str {
    let open = format!("<td class=\"{class}\"");
    let at = html
        .find(&open)
        .unwrap_or_else(|| panic!("no {class} cell in {html}"));
    let rest = &html[at..];
    let gt = rest.find('>').unwrap() + 1;
    let end = rest.find("</td>").unwrap();
    &rest[gt..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some(bin) = common::need("chromium") else {
        return;
    };
    let a = Admin::start().await;
    let xss = a.message(&Msg {
        subject: Some(XSS.into()),
        ..Msg::new("alice@example.net")
    });
    a.open(&xss, &Open::machine("Gmail", Device::Webmail));
    a.open(&xss, &Open::machine("Gmail", Device::Webmail));
    a.open(&xss, &Open::person("Apple Mail", Device::Mobile));
    let news = a.message(&Msg {
        subject: Some("Plain news".into()),
        ..Msg::new("bob@example.net")
    });
    a.open(&news, &Open::person("Outlook", Device::Desktop));
    let skipped = a.message(&Msg {
        skip: Some("no_html".into()),
        subject: Some("Text only".into()),
        ..Msg::new("carol@example.net")
    });
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/#token={TOKEN}", a.addr);

    // The page connects its live stream; an open written then must show up on the page.
    let browser = tokio::spawn(run(chromium(
        &bin,
        profile.path(),
        &["--dump-dom".to_string()],
        &url,
    )));
    let store = a.store.clone();
    tokio::time::timeout(Duration::from_secs(60), wait_followers(&store, 1))
        .await
        .expect("the page never opened its follow stream");
    let live = a.open(&news, &Open::person("Thunderbird", Device::Desktop));
    let dom = browser.await.unwrap();

    // Escaping: the attacker's subject is text, the page title untouched, no injected element.
    assert!(dom.contains("<title>pixelrelay</title>"), "title changed");
    assert!(!dom.contains("pwned</title>"));
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x"),
        "subject not shown as text"
    );
    assert!(!dom.contains("<img src=\"x\""), "markup injected");
    assert_eq!(
        dom.matches("<script>").count(),
        1,
        "only the page's own script"
    );

    // Authenticated via the fragment: the app is shown, the form hidden.
    assert!(
        dom.contains("<body data-loaded=\"1\">"),
        "page did not load its data"
    );
    assert!(
        dom.contains("<section id=\"login\" hidden=\"\">"),
        "login still shown"
    );

    // Rows and counts.
    assert_eq!(dom.matches("<tr class=\"msg").count(), 3);
    let r = row(&dom, &xss.to_string());
    assert_eq!(cell(r, "opens num"), "3");
    assert_eq!(cell(r, "people num"), "1");
    assert_eq!(cell(r, "machine num"), "2");
    assert_eq!(cell(r, "rcpt"), "alice@example.net");
    assert!(r.contains("device-webmail is-machine"), "machine icon: {r}");
    assert!(r.contains("device-mobile"), "{r}");
    assert!(cell(r, "first").starts_with("20"), "{r}");
    let r = row(&dom, &skipped.to_string());
    assert!(r.contains("class=\"msg untracked\""), "{r}");
    assert_eq!(cell(r, "tracking"), "skipped: no_html");
    assert_eq!(cell(r, "opens num"), "0");

    // The live open arrived over the stream and updated the row and the live list.
    let r = row(&dom, &news.to_string());
    assert_eq!(cell(r, "opens num"), "2", "live open not applied: {r}");
    assert_eq!(cell(r, "people num"), "2");
    assert!(
        dom.contains(&format!("<li class=\"live-open\" data-id=\"{}\"", live.id)),
        "live open not listed"
    );
    let status = &dom[dom.find("id=\"status\"").expect("status")..];
    assert!(
        status.starts_with("id=\"status\" class=\"status on\">live<"),
        "{}",
        &status[..80]
    );

    // Stats: cards, clients, devices, the chart.
    assert!(dom.contains("id=\"stat-opens\">5<"), "opens card");
    assert!(dom.contains("id=\"stat-machine\">2<"), "machine card");
    assert!(dom.contains("id=\"stat-tracked\">2<"), "tracked card");
    for client in ["Gmail", "Apple Mail", "Outlook", "Thunderbird"] {
        assert!(dom.contains(&format!("{client}</td>")), "{client} row");
    }
    let chart = &dom[dom.find("<div id=\"chart\">").expect("chart")..];
    assert!(
        chart.starts_with("<div id=\"chart\"><svg"),
        "inline SVG chart"
    );
    let today = pixelrelay::clock::day(pixelrelay::store::now_ms());
    assert!(
        chart.contains(&format!("data-day=\"{today}\" data-count=\"3\"")),
        "today's people bar"
    );

    // Without a token: the login form, no data.
    let plain = run(chromium(
        &bin,
        tempfile::tempdir().unwrap().path(),
        &["--dump-dom".to_string()],
        &format!("http://{}/", a.addr),
    ))
    .await;
    assert!(
        plain.contains("<main id=\"app\" hidden=\"\">"),
        "app shown without token"
    );
    assert!(!plain.contains("alice@example.net"));
    // A wrong token: refused, the form asks again.
    let wrong = run(chromium(
        &bin,
        tempfile::tempdir().unwrap().path(),
        &["--dump-dom".to_string()],
        &format!("http://{}/#token=nope", a.addr),
    ))
    .await;
    assert!(wrong.contains("The relay refused this token."), "{wrong}");
    assert!(!wrong.contains("alice@example.net"));

    // Screenshot artifact.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    run(chromium(
        &bin,
        tempfile::tempdir().unwrap().path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1400".to_string(),
            "--hide-scrollbars".to_string(),
        ],
        &url,
    ))
    .await;
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    eprintln!("dashboard screenshot: {}", png.display());
    a.stop().await;
}
