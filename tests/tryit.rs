//! Try-it mode and the open log, with the shipped relay.toml: serve, send with swaks, find the
//! captured .eml and .html, load the .html in headless Chromium, and see the open in
//! `pixelrelay tail --json` and in the open log; then rotate the log both ways.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The shipped relay.toml, moved to free loopback ports, with the open log on.
fn shipped_config(dir: &Path) -> (std::path::PathBuf, u16) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml")).unwrap();
    assert!(
        text.contains("capture_dir = \"data/outbox\""),
        "the shipped config is in try-it mode"
    );
    let http = free_port();
    let text = text
        .replace(
            "listen = [\"127.0.0.1:2525\"]",
            "listen = [\"127.0.0.1:0\"]",
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{http}\""),
        )
        .replace(
            "base_url = \"http://127.0.0.1:8080\"",
            &format!("base_url = \"http://127.0.0.1:{http}\""),
        )
        // `tail` finds the admin listener through this file, so it needs a real port.
        .replace(
            "listen = \"127.0.0.1:8081\"",
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
        )
        .replace(
            "# open_log = \"data/opens.jsonl\"",
            "open_log = \"data/opens.jsonl\"",
        );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    (path, http)
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_it_with_swaks_chromium_tail_and_the_open_log() {
    let Some(swaks) = need("swaks") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = shipped_config(dir.path());
    let check = pixelrelay_cli(&["check-config"], &config);
    assert!(check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("CAPTURE mode"));
    let relay = Proc::serve(&config);

    let out = Command::new(swaks)
        .args([
            "--server",
            &relay.smtp.to_string(),
            "--from",
            "news@example.com",
            "--to",
            "bob@example.net",
        ])
        .args([
            "--header",
            "Subject: try it",
            "--add-header",
            "MIME-Version: 1.0",
        ])
        .args(["--add-header", "Content-Type: text/html; charset=utf-8"])
        .args(["--body", "<html><body><p>Hello Bob</p></body></html>"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("captured as"), "capture mode says so: {said}");

    let outbox = dir.path().join("data/outbox");
    let files = files_below(&outbox);
    let eml = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .expect(".eml captured");
    let html = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "html"))
        .expect(".html captured");
    assert_eq!(
        pixel_urls(&std::fs::read(eml).unwrap()).len(),
        1,
        "the captured message carries the pixel"
    );

    let Some(browser) = chromium(&[
        "--virtual-time-budget=5000",
        "--dump-dom",
        &format!("file://{}", html.display()),
    ]) else {
        return;
    };
    assert!(
        browser.status.success(),
        "{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    let log = dir.path().join("data/opens.jsonl");
    eventually(10, "the browser's open in the open log", || {
        log_lines(&log).len() == 1
    })
    .await;
    let tail = pixelrelay_cli(&["tail", "--json", "-n", "5"], &config);
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let opens: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(opens.len(), 1);
    assert_eq!(opens[0]["recipient"], "bob@example.net");
    assert!(opens[0]["user_agent"].as_str().unwrap().contains("Chrome"));
    assert_eq!(
        opens[0]["id"],
        log_lines(&log)[0]["id"],
        "the same event in both places"
    );
    assert_eq!(relay.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_log_survives_rotation_by_move_and_by_copytruncate() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = shipped_config(dir.path());
    let relay = Proc::serve(&config);
    let mut c = Client::hello(relay.smtp).await;
    let msg = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: rot\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<html><body>x</body></html>\r\n";
    assert_eq!(
        c.send_mail("a@example.com", &["b@example.net"], msg)
            .await
            .0,
        250
    );
    let eml = files_below(&dir.path().join("data/outbox"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .unwrap();
    let url = pixel_urls(&std::fs::read(eml).unwrap()).remove(0);
    let log = dir.path().join("data/opens.jsonl");
    let hit = |n: usize| {
        let url = url.clone();
        async move {
            for _ in 0..n {
                assert_eq!(http_get(&url, "Thunderbird/115.0").await.0, 200);
            }
        }
    };
    hit(5).await;
    eventually(10, "5 lines", || log_lines(&log).len() == 5).await;
    // logrotate `create`: move away, SIGHUP, keep going.
    let moved = dir.path().join("data/opens.jsonl.1");
    std::fs::rename(&log, &moved).unwrap();
    Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap();
    let l = relay.log.clone();
    eventually(10, "reopen", || {
        l.lock()
            .unwrap()
            .iter()
            .any(|x| x.contains("open log reopened"))
    })
    .await;
    hit(4).await;
    eventually(10, "4 lines in the new file", || log_lines(&log).len() == 4).await;
    // logrotate `copytruncate`: copy, truncate in place, no signal.
    let copied = dir.path().join("data/opens.jsonl.2");
    std::fs::copy(&log, &copied).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    hit(3).await;
    eventually(10, "3 lines after truncation", || {
        log_lines(&log).len() == 3
    })
    .await;
    let mut ids: Vec<String> = [&moved, &copied, &log]
        .iter()
        .flat_map(|p| log_lines(p))
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 12);
    let counts: Vec<u64> = [&moved, &copied, &log]
        .iter()
        .flat_map(|p| log_lines(p))
        .map(|v| v["count"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counts,
        (1..=12).collect::<Vec<_>>(),
        "no open lost or written twice across the files"
    );
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert_eq!(relay.stop(), Some(0));
}
