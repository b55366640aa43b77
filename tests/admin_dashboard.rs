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

#[path = "admin_support/cdp.rs"]
mod cdp;

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cdp::{Cdp, chromium, run};
use pixelrelay::track::Device;
use support::{Admin, Msg, Open, TOKEN, wait_followers};

const XSS: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

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
    a.open(
        &xss,
        &Open::proxied(
            "Apple Mail",
            Device::Mobile,
            pixelrelay::track::Proxy::Apple,
        ),
    );
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
    // Clicks: a person's and a link scanner's; the URL is shown as text, never as markup.
    let story = "https://example.com/story?q=<b>x</b>";
    a.click(&news, 0, story, false);
    a.click(&news, 1, "https://example.com/other", true);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/#token={TOKEN}", a.addr);

    // The page connects its live stream; an open written then must show up on the page. The
    // browser is driven over the DevTools protocol so the DOM is read once the open has arrived,
    // not when a time budget runs out.
    let browser = Cdp::launch(&bin, profile.path());
    let page = browser.open(&url);
    let store = a.store.clone();
    tokio::time::timeout(Duration::from_secs(60), wait_followers(&store, 1))
        .await
        .expect("the page never opened its follow stream");
    let live = a.open(&news, &Open::person("Thunderbird", Device::Desktop));
    let live_click = a.click(&xss, 0, story, false);
    let selector = format!("li.live-open[data-id=\"{}\"]", live.id);
    let click_selector = format!("li.live-click[data-id=\"{}\"]", live_click.id);
    let dom = tokio::task::spawn_blocking(move || {
        // The row and the live list change on arrival; the stats cards are re-fetched after.
        let arrived = format!(
            "document.querySelector({selector:?}) !== null \
             && document.querySelector({click_selector:?}) !== null \
             && document.getElementById('stat-opens').textContent === '5' \
             && document.getElementById('stat-clicks').textContent === '3'"
        );
        browser.wait_for(&page, &arrived, Duration::from_secs(60));
        browser.eval(&page, "document.documentElement.outerHTML")
    })
    .await
    .unwrap();
    let dom = dom.as_str().expect("outerHTML is a string").to_owned();

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
    assert_eq!(
        cell(r, "clicks num"),
        "1 (1 people)",
        "live click applied: {r}"
    );
    let r = row(&dom, &skipped.to_string());
    assert!(r.contains("class=\"msg untracked\""), "{r}");
    assert_eq!(cell(r, "tracking"), "skipped: no_html");
    assert_eq!(cell(r, "opens num"), "0");

    // The live open arrived over the stream and updated the row and the live list.
    let r = row(&dom, &news.to_string());
    assert_eq!(cell(r, "opens num"), "2", "live open not applied: {r}");
    assert_eq!(cell(r, "people num"), "2");
    assert_eq!(cell(r, "clicks num"), "2 (1 people)", "{r}");
    assert_eq!(cell(r, "links num"), "2", "{r}");
    assert!(cell(r, "first-click").starts_with("20"), "{r}");
    assert!(
        dom.contains(&format!("<li class=\"live-open\" data-id=\"{}\"", live.id)),
        "live open not listed"
    );
    // Clicks beside opens: cards, top links (escaped), the live list.
    assert!(dom.contains("id=\"stat-clicks\">3<"), "clicks card");
    assert!(
        dom.contains("id=\"stat-human-clicks\">2<"),
        "people's clicks"
    );
    assert!(
        dom.contains("id=\"stat-machine-clicks\">1<"),
        "link scanners"
    );
    let links = &dom[dom.find("<table id=\"links\">").expect("links table")..];
    assert!(
        links.contains(
            "story?q=&lt;b&gt;x&lt;/b&gt;</td><td class=\"clicks num\">2</td><td class=\"people num\">2</td><td class=\"messages num\">2</td>"
        ),
        "top links: {}",
        &links[..links.len().min(800)]
    );
    assert!(!dom.contains("<b>x</b>"), "a URL injected markup");
    assert!(
        dom.contains(&format!(
            "<li class=\"live-click\" data-id=\"{}\"",
            live_click.id
        )),
        "live click not listed"
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
    assert!(dom.contains("id=\"stat-direct\">2<"), "people, directly");
    assert!(
        dom.contains("id=\"stat-proxied\">1<"),
        "people through a proxy"
    );
    assert!(
        dom.contains("id=\"stat-raw-rate\">100.0%<"),
        "raw open rate"
    );
    let reasons = &dom[dom.find("<table id=\"reasons\">").expect("reasons table")..];
    assert!(
        reasons.contains(
            "scanner-network</td><td class=\"opens num\">2</td><td class=\"share num\">40.0%</td>"
        ),
        "machine share by reason: {}",
        &reasons[..reasons.len().min(600)]
    );
    let proxies = &dom[dom.find("<table id=\"proxies\">").expect("proxies table")..];
    assert!(proxies.contains("apple</td>"), "by proxy");
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
