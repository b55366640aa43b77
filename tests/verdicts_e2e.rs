//! Verdicts end to end: a message relayed through pixelrelay to a fake upstream, its pixel
//! loaded through a trusted reverse proxy (the reader's address in `X-Forwarded-For`), and the
//! opens read back from the admin API with their kind, reason, proxy and country; and the
//! binary reloading a changed catalogue on SIGHUP, which changes the verdict of the next hit
//! and not of the stored ones.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const IPHONE_MAIL: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
const GMAIL: &str =
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";

/// Loads `path` (`/o/….gif`) from `addr` as a trusted proxy forwarding for `client`.
async fn load(addr: std::net::SocketAddr, path: &str, client: &str, ua: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: track.example\r\nConnection: close\r\nX-Forwarded-For: {client}\r\nUser-Agent: {ua}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// The path of the one pixel in a relayed message.
fn pixel_path(data: &[u8]) -> String {
    let urls = pixel_urls(data);
    assert_eq!(urls.len(), 1, "one pixel");
    let i = urls[0].find("/o/").unwrap();
    urls[0][i..].to_string()
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/verdicts")
}

/// What a forwarded load must be stored as: (kind, reason, proxy, stored address, country).
type Want = (&'static str, Value, Value, &'static str, Value);

const HTML: &[u8] = b"From: news@example.com\r\nTo: bob@example.net\r\nSubject: verdicts\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello</p></body></html>\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_hits_through_the_relay_land_with_the_right_kind() {
    if !have_mmdb_writer() {
        return;
    }
    let up = FakeUpstream::start().await;
    let dbs = tempfile::tempdir().unwrap();
    let asn = dbs.path().join("asn.mmdb");
    let country = dbs.path().join("country.mmdb");
    write_mmdb(&asn, "asn", &["198.51.100.0/24=22843:Proofpoint"]);
    write_mmdb(&country, "country", &["203.0.113.0/24=DE"]);
    // Timing off, so that only the evidence decides; addresses anonymised, so that a /27 of
    // Apple's list is only found if the lookup happens before the address is cut to its /24.
    let config = format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "relay.test"
[upstream]
address = "{up}"
[tracking]
base_url = "http://127.0.0.1:8080"
machine_window = 0
probable_window = 0
networks = ["builtin:scanners.csv", "{egress}"]
asn_db = "{asn}"
country_db = "{country}"
[http]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1/32"]
[admin]
listen = "127.0.0.1:0"
[store]
anonymize_ip = true
"#,
        up = up.addr,
        egress = fixtures().join("egress-sample.csv").display(),
        asn = asn.display(),
        country = country.display(),
    );
    let relay = start_relay(&config).await;
    let mut c = Client::hello(relay.smtp()).await;
    let (code, _) = c
        .send_mail("news@example.com", &["bob@example.net"], HTML)
        .await;
    assert_eq!(code, 250);
    let path = pixel_path(&up.messages()[0].data);

    let cases: &[(&str, &str, Want)] = &[
        (
            "203.0.113.5",
            CHROME,
            (
                "person",
                Value::Null,
                Value::Null,
                "203.0.113.0",
                "DE".into(),
            ),
        ),
        (
            "66.249.93.202",
            GMAIL,
            (
                "proxied",
                Value::Null,
                "google".into(),
                "66.249.93.0",
                Value::Null,
            ),
        ),
        (
            "172.224.225.70",
            IPHONE_MAIL,
            (
                "proxied",
                Value::Null,
                "apple".into(),
                "172.224.225.0",
                Value::Null,
            ),
        ),
        (
            "40.92.18.10",
            CHROME,
            (
                "proxied",
                Value::Null,
                "microsoft".into(),
                "40.92.18.0",
                Value::Null,
            ),
        ),
        (
            "64.235.150.20",
            CHROME,
            (
                "machine",
                "scanner-network".into(),
                Value::Null,
                "64.235.150.0",
                Value::Null,
            ),
        ),
        (
            "198.51.100.7",
            CHROME,
            (
                "machine",
                "scanner-asn".into(),
                Value::Null,
                "198.51.100.0",
                Value::Null,
            ),
        ),
    ];
    for (client, ua, _) in cases {
        load(relay.http(), &path, client, ua).await;
    }
    let messages = admin_json(&relay, "/api/v1/messages?limit=1").await;
    let mid = messages["items"][0]["id"].as_str().unwrap().to_string();
    let m = admin_json(&relay, &format!("/api/v1/messages/{mid}")).await;
    let events = m["open_events"].as_array().unwrap();
    assert_eq!(events.len(), cases.len());
    for (e, (client, _, (kind, reason, proxy, ip, country))) in events.iter().zip(cases) {
        let machine = *kind == "machine";
        assert_eq!(e["type"], "open");
        assert_eq!(e["machine"], machine, "{client}: {e}");
        assert_eq!(&e["machine_reason"], reason, "{client}: {e}");
        assert_eq!(&e["proxy"], proxy, "{client}: {e}");
        assert_eq!(e["ip"], *ip, "{client}: {e}");
        assert_eq!(&e["country"], country, "{client}: {e}");
    }
    // The first person open is the first load; stats split people into direct and proxied.
    assert_eq!(m["opens"]["first_human_at"], events[0]["at"]);
    let st = admin_json(&relay, "/api/v1/stats").await;
    assert_eq!(
        (
            st["human_opens"].as_u64(),
            st["direct_opens"].as_u64(),
            st["proxied_opens"].as_u64(),
            st["machine_opens"].as_u64()
        ),
        (Some(4), Some(1), Some(3), Some(2))
    );
    assert_eq!(st["by_reason"]["scanner-asn"], 1);
    assert_eq!(st["machine_share_by_reason"]["scanner-network"], 1.0 / 6.0);
    assert_eq!(st["human_open_rate"], 1.0);
    relay.stop().await;
}

/// `pixelrelay tail --json`: the stored opens, oldest first.
fn stored_opens(config: &Path) -> Vec<Value> {
    let out = pixelrelay_cli(&["tail", "--json", "-n", "10"], config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_catalogue_for_the_next_hit_not_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let nets = dir.path().join("nets.csv");
    let header = "prefix,kind,label,certainty,source\n";
    std::fs::write(
        &nets,
        format!("{header}192.0.2.0/24,scanner,Lab scanner,certain,test\n"),
    )
    .unwrap();
    let http = free_port();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[smtp]
listen = ["127.0.0.1:0"]
[upstream]
capture_dir = "outbox"
[tracking]
base_url = "http://127.0.0.1:{http}"
machine_window = 0
networks = ["nets.csv"]
[http]
listen = "127.0.0.1:{http}"
trusted_proxies = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:{admin}"
"#,
            admin = free_port()
        ),
    )
    .unwrap();
    let check = pixelrelay_cli(&["check-config"], &config);
    assert!(check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("1 network prefixes from 1 catalogue"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let relay = Proc::serve(&config);
    let mut c = Client::hello(relay.smtp).await;
    assert_eq!(
        c.send_mail("news@example.com", &["bob@example.net"], HTML)
            .await
            .0,
        250
    );
    let path = pixel_path(&captured(&dir.path().join("outbox")));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();

    load(addr, &path, "198.51.100.20", CHROME).await;
    let before = stored_opens(&config);
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["machine"], false);

    // The scanner's network is added, then SIGHUP.
    std::fs::write(
        &nets,
        format!(
            "{header}192.0.2.0/24,scanner,Lab scanner,certain,test\n198.51.100.0/24,scanner,Lab scanner,certain,test\n"
        ),
    )
    .unwrap();
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &relay.child.id().to_string()])
            .status()
            .unwrap()
    };
    hup();
    let log = relay.log.clone();
    let count = |what: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    eventually(10, "catalogue reloaded", || {
        count("network catalogue reloaded") == 1
    })
    .await;
    load(addr, &path, "198.51.100.20", CHROME).await;
    let after = stored_opens(&config);
    assert_eq!(after.len(), 2);
    assert_eq!(
        after[0]["machine"], false,
        "the stored open keeps its verdict"
    );
    assert_eq!(
        (&after[1]["machine_reason"], &after[1]["client"]),
        (&Value::from("scanner-network"), &Value::from("Lab scanner"))
    );

    // A broken file: the reload fails, says why, and the catalogue in force stays.
    std::fs::write(
        &nets,
        format!("{header}198.51.100.0/33,scanner,X,certain,test\n"),
    )
    .unwrap();
    hup();
    eventually(10, "reload failure logged", || {
        count("network catalogue reload failed") == 1
    })
    .await;
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("nets.csv: line 2")),
        "the error names the file and line"
    );
    load(addr, &path, "198.51.100.21", CHROME).await;
    let last = stored_opens(&config);
    assert_eq!(last.len(), 3);
    assert_eq!(last[2]["machine_reason"], "scanner-network");
    assert_eq!(relay.stop(), Some(0));
}
