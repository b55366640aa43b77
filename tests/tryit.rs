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
    let url = pixel_urls(&captured(&dir.path().join("data/outbox"))).remove(0);
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

/// `Type=notify`: with `NOTIFY_SOCKET` set, `serve` sends `READY=1` once every listener is
/// bound (each one answers at that moment) and `STOPPING=1` when it stops. And the log joins:
/// the `relayed` line and the `open` line of one message carry the same queue id, message id
/// and Message-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_readiness_and_log_lines_that_join() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let (config, http) = shipped_config(dir.path());
    let smtp = free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{smtp}\"]"),
        )
        .replace("format = \"human\"", "format = \"json\"");
    std::fs::write(&config, text).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pixelrelay"))
        .arg("-c")
        .arg(&config)
        .arg("serve")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).expect("READY=1 from serve");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means bound: both listeners answer now, without a retry.
    for port in [smtp, http] {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} not listening at READY=1: {e}"));
    }
    // One message through, its pixel loaded.
    let mut c = Client::hello(format!("127.0.0.1:{smtp}").parse().unwrap()).await;
    let m = b"Message-ID: <join.1@example.com>\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n<html><body>hi</body></html>\r\n";
    let (code, text) = c
        .send_mail("news@example.com", &["bob@example.net"], m)
        .await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
    let url = pixel_urls(&captured(&dir.path().join("data/outbox"))).remove(0);
    let (status, _, _) = http_get(
        &url,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/128.0",
    )
    .await;
    assert_eq!(status, 200);
    let pid = child.id();
    // The open line comes from the indexer: read the log until it is there.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut lines: Vec<serde_json::Value> = Vec::new();
    while lines.iter().all(|l| l["message"] != "open") {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no open line ({e}): {lines:?}"));
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    let find = |m: &str| lines.iter().find(|l| l["message"] == m).cloned().unwrap();
    let (relayed, open) = (find("relayed"), find("open"));
    assert_eq!(relayed["message_id"], "<join.1@example.com>", "{relayed}");
    assert_eq!(open["message_id"], relayed["message_id"], "{open}");
    assert!(
        relayed["queue_id"].as_str().is_some_and(|q| !q.is_empty()),
        "{relayed}"
    );
    assert_eq!(open["msg"], relayed["msg"], "{open} / {relayed}");
    assert_eq!(open["queue_id"], relayed["queue_id"], "{open} / {relayed}");
    assert!(open["msg"].as_str().is_some_and(|m| m.len() > 10), "{open}");
    // SIGTERM: STOPPING=1, then a clean exit.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let n = sock.recv(&mut buf).expect("STOPPING=1 from serve");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `serve` says what `check-config` says: the shipped config turned to a real upstream, its
/// loopback `base_url` left as it was, logs one warning naming `tracking.base_url` at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_warns_about_loopback_pixels_on_a_real_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = shipped_config(dir.path());
    let up = FakeUpstream::start().await;
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "capture_dir = \"data/outbox\"",
        &format!("address = \"{}\"", up.addr),
    );
    std::fs::write(&config, text).unwrap();
    let relay = Proc::serve(&config);
    let warnings: Vec<String> = relay
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("config_warning"))
        .cloned()
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("tracking.base_url: http://127.0.0.1:"),
        "{warnings:?}"
    );
    assert_eq!(relay.stop(), Some(0));
}
