//! The dashboard as an investigation tool, in headless Chromium: the message list with its
//! sender column, filters (recipient, sender, date range, opened or not, people only), paging,
//! new messages appearing on their own, the CSV export of the filtered list, and the message
//! view with every open and click on one timeline (live too). A wait that fails saves a
//! screenshot in `target/test-artifacts/`; a passing run saves `dashboard-message.png`.

#[path = "admin_support/mod.rs"]
mod support;

#[path = "admin_support/cdp.rs"]
mod cdp;

mod common;

use std::time::Duration;

use cdp::Cdp;
use pixelrelay::clock::day;
use pixelrelay::store::now_ms;
use pixelrelay::track::Device;
use support::{Admin, Msg, Open, TOKEN, wait_followers};

const DAY: u64 = 86_400_000;

/// Number of message rows on the page.
const ROWS: &str = "document.querySelectorAll('#messages tbody tr.msg').length";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_filters_pages_exports_and_shows_one_message_on_a_timeline() {
    let Some(bin) = common::need("chromium") else {
        return;
    };
    let a = Admin::start().await;
    let now = now_ms();
    // 55 messages of a bulk sender, then three of the newsletter: one a person opened (and a
    // machine, and the person clicked), one only a machine opened, one ten days old.
    for i in 0..55u64 {
        a.message(&Msg {
            at_ms: now - 60_000 - i * 1000,
            sender: "bulk@lists.example".into(),
            ..Msg::new(&format!("r{i}@example.org"))
        });
    }
    let people = a.message(&Msg {
        at_ms: now - 30_000,
        subject: Some("Winter sale".into()),
        ..Msg::new("alice@example.net")
    });
    a.open(&people, &Open::machine("Gmail", Device::Webmail));
    a.open(&people, &Open::person("Outlook", Device::Desktop));
    a.click(&people, 2, "https://shop.example/sale", false);
    let machine = a.message(&Msg {
        at_ms: now - 20_000,
        ..Msg::new("bob@example.net")
    });
    a.open(&machine, &Open::machine("Gmail", Device::Webmail));
    a.message(&Msg {
        at_ms: now - 10 * DAY,
        ..Msg::new("carol@example.net")
    });

    let profile = tempfile::tempdir().unwrap();
    let browser = Cdp::launch(&bin, profile.path());
    let page = browser.open(&format!("http://{}/#token={TOKEN}", a.addr));
    tokio::time::timeout(Duration::from_secs(60), wait_followers(&a.store, 1))
        .await
        .expect("the page never opened its follow stream");
    let b = std::sync::Arc::new(browser);
    let (br, pg) = (b.clone(), page.clone());
    let wait = move |cond: &str| {
        let (br, pg, cond) = (br.clone(), pg.clone(), cond.to_string());
        async move {
            tokio::task::spawn_blocking(move || br.wait_for(&pg, &cond, Duration::from_secs(30)))
                .await
                .unwrap()
        }
    };
    let (br, pg) = (b.clone(), page.clone());
    let eval = move |expr: &str| br.eval(&pg, expr);

    // The first page: 50 of 58, newest first, with the sender column; older pages exist.
    wait(&format!(
        "document.body.dataset.loaded === '1' && {ROWS} === 50"
    ))
    .await;
    let sender = eval(&format!(
        "document.querySelector('tr.msg[data-id=\"{people}\"] td.sender').textContent"
    ));
    assert_eq!(sender, "news@example.com");
    assert_eq!(eval("document.getElementById('newer').disabled"), true);
    eval("document.getElementById('older').click()");
    wait(&format!(
        "{ROWS} === 8 && document.getElementById('page-info').textContent.startsWith('page 2')"
    ))
    .await;
    assert_eq!(eval("document.getElementById('older').disabled"), true);
    eval("document.getElementById('newer').click()");
    wait(&format!("{ROWS} === 50")).await;

    // Filters: sender, then opened (by anyone, by people), then a date range.
    let apply = |fields: &str| {
        format!(
            "(() => {{ const f = document.getElementById('filters'); f.reset(); {fields}; \
             f.requestSubmit(); return true; }})()"
        )
    };
    eval(&apply(
        "document.getElementById('f-sender').value = 'news@'",
    ));
    wait(&format!("{ROWS} === 3")).await;
    eval(&apply(
        "document.getElementById('f-sender').value = 'news@'; \
         document.getElementById('f-opened').value = 'true'",
    ));
    wait(&format!("{ROWS} === 2")).await;
    eval(&apply(
        "document.getElementById('f-opened').value = 'true'; \
         document.getElementById('f-people').checked = true",
    ));
    wait(&format!(
        "{ROWS} === 1 && document.querySelector('tr.msg').dataset.id === '{people}'"
    ))
    .await;
    let since = day(now - 2 * DAY);
    let until = day(now);
    eval(&apply(&format!(
        "document.getElementById('f-sender').value = 'news@'; \
         document.getElementById('f-since').value = '{since}'; \
         document.getElementById('f-until').value = '{until}'"
    )));
    wait(&format!("{ROWS} === 2")).await;
    eval(&apply("document.getElementById('f-rcpt').value = 'BOB@'"));
    wait(&format!(
        "{ROWS} === 1 && document.querySelector('tr.msg').dataset.id === '{machine}'"
    ))
    .await;

    // The export carries the filters in force.
    eval(&apply(
        "document.getElementById('f-sender').value = 'news@'; \
         document.getElementById('f-people').checked = true; \
         document.getElementById('f-opened').value = 'false'",
    ));
    wait(&format!("{ROWS} === 2")).await;
    let href = eval("document.getElementById('export').dataset.href");
    let href = href.as_str().unwrap().to_string();
    assert!(href.starts_with("/api/v1/messages?format=csv&"), "{href}");
    for part in ["sender=news%40", "opened=false", "people=true"] {
        assert!(href.contains(part), "{part} in {href}");
    }
    // The button downloads that file.
    let downloads = tempfile::tempdir().unwrap();
    b.call(
        None,
        "Browser.setDownloadBehavior",
        serde_json::json!({"behavior": "allow", "downloadPath": downloads.path()}),
    );
    eval("document.getElementById('export').click()");
    let file = downloads.path().join("pixelrelay-messages.csv");
    common::eventually(30, "the CSV download", || file.is_file()).await;
    let csv = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        csv,
        a.get(&href).await.text(),
        "the file is the filtered export"
    );
    assert_eq!(csv.lines().count(), 3, "header and two messages: {csv}");
    assert!(csv.contains("bob@example.net") && csv.contains("carol@example.net"));
    assert!(!csv.contains("alice@example.net"));

    // The message view: what was relayed, and its opens and click on one timeline.
    eval(&apply(""));
    wait(&format!("{ROWS} === 50")).await;
    eval(&format!(
        "document.querySelector('tr.msg[data-id=\"{people}\"]').click()"
    ));
    wait("!document.getElementById('detail').hidden && document.querySelectorAll('#timeline li').length === 3").await;
    let meta = eval("document.getElementById('detail-meta').textContent");
    let meta = meta.as_str().unwrap();
    for want in [
        "news@example.com",
        "alice@example.net",
        "Winter sale",
        "250 ok",
    ] {
        assert!(meta.contains(want), "{want} in {meta}");
    }
    let kinds = eval(
        "[...document.querySelectorAll('#timeline li')].map(li => \
         li.querySelector('.kind').textContent + ':' + li.classList.contains('is-machine')).join(' ')",
    );
    assert_eq!(kinds, "open:true open:false click:false");
    let click = eval("document.querySelector('#timeline li.t-click').textContent");
    assert!(
        click
            .as_str()
            .unwrap()
            .contains("link 2: https://shop.example/sale"),
        "{click}"
    );
    // An open arriving now lands on the timeline.
    let live = a.open(&people, &Open::person("Apple Mail", Device::Mobile));
    wait(&format!(
        "document.querySelector('#timeline li[data-id=\"{}\"]') !== null",
        live.id
    ))
    .await;
    // People only: the machine's open is hidden from the timeline.
    eval(&apply("document.getElementById('f-people').checked = true"));
    wait(
        "document.getElementById('timeline').classList.contains('people-only') && \
         getComputedStyle(document.querySelector('#timeline li.is-machine')).display === 'none'",
    )
    .await;

    // A message relayed now appears on the first page by itself.
    eval(&apply(""));
    wait(&format!("{ROWS} === 50")).await;
    let fresh = a.message(&Msg::new("dave@example.net"));
    wait(&format!(
        "document.querySelector('#messages tbody tr.msg').dataset.id === '{fresh}'"
    ))
    .await;

    let shot = b.screenshot(&page, "dashboard-message");
    eprintln!("dashboard message view: {}", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // (Last: a second tab puts this one in the background, where it polls nothing.)
    // The view is in the address (`#message=ID`), so a link opens it; the token never is.
    let here = eval("location.hash");
    assert_eq!(here, format!("#message={people}"));
    let linked = b.open(&format!(
        "http://{}/#token={TOKEN}&message={people}",
        a.addr
    ));
    let (br, pg) = (b.clone(), linked.clone());
    tokio::task::spawn_blocking(move || {
        br.wait_for(
            &pg,
            "document.getElementById('detail')?.hidden === false && \
             document.querySelectorAll('#timeline li').length === 4 && \
             location.hash.indexOf('token') < 0",
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();

    drop(b);
    a.stop().await;
}

#[tokio::test]
async fn the_csv_export_holds_every_filtered_message_and_defuses_formulas() {
    let a = Admin::start().await;
    let now = now_ms();
    // More than one store page (1 000) of matching messages, and some that do not match.
    for i in 0..1203u64 {
        a.message(&Msg {
            at_ms: now - 5000 - i,
            sender: "bulk@lists.example".into(),
            ..Msg::new(&format!("r{i}@example.org"))
        });
    }
    let evil = a.message(&Msg {
        at_ms: now,
        subject: Some("=HYPERLINK(\"https://evil.example\",\"win\"), \"quoted\"\r\nnext".into()),
        sender: "-attacker@example.com".into(),
        ..Msg::new("victim@example.net")
    });
    a.open(&evil, &Open::person("Outlook", Device::Desktop));

    let r = a.get("/api/v1/messages?format=csv&sender=bulk%40").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"pixelrelay-messages.csv\"")
    );
    let text = r.text();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1 + 1203, "header and every matching message");
    assert!(
        lines[0].starts_with("id,received,sender,recipients,subject,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(",r0@example.org,"),
        "newest first: {}",
        lines[1]
    );
    assert!(!text.contains("victim@"));

    // Attacker-chosen fields: quoted, quotes doubled, formulas prefixed with '.
    let r = a
        .get("/api/v1/messages?format=csv&opened=true&people=1")
        .await;
    let text = r.text();
    let row = text.split_once("\r\n").unwrap().1;
    assert!(row.starts_with(&format!("{evil},")), "{row}");
    assert!(row.contains(",\"'-attacker@example.com\","), "{row}");
    assert!(
        row.contains(
            ",\"'=HYPERLINK(\"\"https://evil.example\"\",\"\"win\"\"), \"\"quoted\"\"\r\nnext\","
        ),
        "{row}"
    );
    assert!(row.contains(",tracked,250 ok,1,1,0,"), "{row}");

    for bad in ["format=xml", "people=maybe"] {
        let r = a.get(&format!("/api/v1/messages?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    a.stop().await;
}
