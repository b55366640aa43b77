//! `pixelrelay tail -f --json` and `pixelrelay stats` as real processes against a real relay
//! process: opens made by loading pixels over HTTP arrive on tail's stdout; the relay is
//! restarted and tail resumes from its cursor without gap or duplicate; a relay that is not
//! running and a wrong token are one clear line and exit 1.
//!
//! The pixel URL is taken from the message the fake upstream received. Where the rewriter does
//! not insert a pixel (it is skipped for this message, or not built yet), the test mints the
//! same token the relay would have, from the relay's own secret file and the message id the
//! admin API lists, and loads that URL: the pixel listener cannot tell the difference.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Client, FakeUpstream, Proc, free_port};
use pixelrelay::token::{MessageId, Purpose, TokenKey};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_pixelrelay");

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin: SocketAddr,
}

fn setup(upstream: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "relay.test"
[upstream]
address = "{upstream}"
command_timeout = 5
data_timeout = 5
connect_timeout = 5
[tracking]
base_url = "http://127.0.0.1:8080"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "{admin}"
[store]
subjects = true
flush_interval_ms = 50
"#
        ),
    )
    .unwrap();
    Setup { dir, config, admin }
}

/// The pixel address, on a relay whose ready line names its admin API on loopback too.
fn pixel_addr(p: &Proc) -> SocketAddr {
    assert!(p.admin_addr().ip().is_loopback());
    p.http_addr()
}

fn token(s: &Setup) -> String {
    std::fs::read_to_string(s.dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// GET with the admin token, body as JSON.
async fn admin_get(s: &Setup, path: &str) -> Value {
    let mut io = TcpStream::connect(s.admin).await.unwrap();
    io.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token(s)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    io.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

/// Relays one HTML message and returns the pixel path (`/o/TOKEN.gif`) for it.
async fn send_tracked(s: &Setup, relay: &Proc, up: &FakeUpstream, n: usize) -> String {
    let before = up.messages().len();
    let mut c = Client::hello(relay.smtp).await;
    let body = format!(
        "From: news@example.com\r\nTo: reader{n}@example.net\r\nSubject: Issue {n}\r\nMessage-ID: <m{n}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>News {n}</p></body></html>\r\n"
    );
    let (code, text) = c
        .send_mail(
            "news@example.com",
            &[&format!("reader{n}@example.net")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
    let got = up.messages();
    assert_eq!(got.len(), before + 1);
    let data = String::from_utf8_lossy(&got[before].data).into_owned();
    if let Some(i) = data.find("/o/") {
        let path = &data[i..];
        if let Some(end) = path.find(".gif") {
            return path[..end + 4].to_string();
        }
    }
    eprintln!("no pixel in the relayed message: minting the token from the relay's secret");
    let list = admin_get(s, "/api/v1/messages?limit=1").await;
    let m = &list["items"][0];
    assert_eq!(m["recipients"][0], format!("reader{n}@example.net"));
    let id: MessageId = m["id"].as_str().unwrap().parse().unwrap();
    let secret = std::fs::read(s.dir.path().join("data/secret.key")).unwrap();
    let key = TokenKey::from_secret(secret.trim_ascii());
    format!("/o/{}.gif", key.mint(Purpose::Open, &id))
}

/// Loads the pixel like a mail client.
async fn load_pixel(http: SocketAddr, path: &str, ua: &str) {
    let mut io = TcpStream::connect(http).await.unwrap();
    io.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    io.read_to_end(&mut buf).await.unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"), "pixel not served");
}

/// A `pixelrelay` CLI process whose stdout lines arrive on a channel.
struct Cli {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Cli {
    fn start(config: &Path, args: &[&str]) -> Cli {
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Cli { child, lines }
    }

    /// The next `n` lines, each within 30 s.
    fn take(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("tail printed only {i} of {n} lines"))
            })
            .collect()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const UAS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.4.2",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_across_a_relay_restart_without_gap_or_duplicate() {
    let up = FakeUpstream::start().await;
    let s = setup(up.addr);

    // Not running yet: one clear line, exit 1.
    std::fs::create_dir_all(s.dir.path().join("data")).unwrap();
    let relay = Proc::serve(&s.config);
    drop(relay); // creates the token, then is killed
    let (code, out, err) = run(&s.config, &["tail", "-n", "5"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the admin API") && err.contains("running"),
        "{err}"
    );

    let relay = Proc::serve(&s.config);
    let http = pixel_addr(&relay);
    let first = send_tracked(&s, &relay, &up, 0).await;
    load_pixel(http, &first, UAS[0]).await;

    // tail -n 1 prints that open first: from then on it follows from its id.
    let tail = Cli::start(&s.config, &["tail", "-f", "--json", "-n", "1"]);
    let mut printed = tail.take(1);
    let e0: Value = serde_json::from_str(&printed[0]).unwrap();
    assert_eq!(e0["recipient"], "reader0@example.net");
    // The subject comes from the rewriter's header parse (null where it is not built yet).
    let with_subject = !e0["subject"].is_null();
    if with_subject {
        assert_eq!(e0["subject"], "Issue 0");
    }

    let mut paths = vec![first];
    for n in 1..4 {
        paths.push(send_tracked(&s, &relay, &up, n).await);
    }
    for (i, p) in paths.iter().enumerate() {
        load_pixel(http, p, UAS[i % UAS.len()]).await;
    }
    printed.extend(tail.take(4));

    // Restart: tail sees its stream end, retries, and resumes from its cursor.
    assert_eq!(relay.stop(), Some(0));
    let relay = Proc::serve(&s.config);
    let http = pixel_addr(&relay);
    // These land while tail is still reconnecting: they must come from the backlog.
    for (i, p) in paths.iter().enumerate() {
        load_pixel(http, p, UAS[(i + 1) % UAS.len()]).await;
    }
    printed.extend(tail.take(4));
    // And live ones after it is back.
    let p = send_tracked(&s, &relay, &up, 9).await;
    load_pixel(http, &p, UAS[2]).await;
    printed.extend(tail.take(1));

    let stored = admin_get(&s, "/api/v1/opens?limit=100").await;
    let mut want: Vec<String> = stored["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    want.reverse();
    let got: Vec<String> = printed
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("tail --json prints JSON lines");
            assert!(
                v.get("heartbeat").is_none() && v.get("end").is_none(),
                "{l}"
            );
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(want.len(), 10);
    assert_eq!(got, want, "gap or duplicate across the restart");
    assert!(
        tail.lines.recv_timeout(Duration::from_millis(300)).is_err(),
        "tail printed more than there was"
    );

    // The human format: one aligned line per open.
    let (code, out, err) = run(&s.config, &["tail", "-n", "3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[2].contains("reader9@example.net"), "{out}");
    assert_eq!(lines[2].contains("Issue 9"), with_subject, "{out}");
    let col = |l: &str| l.find("example.net").unwrap();
    assert!(lines.iter().all(|l| col(l) == col(lines[0])), "{out}");

    // stats agrees with the opens made.
    let (code, out, err) = run(&s.config, &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["opens"], 10);
    assert_eq!(st["relayed"], 5);
    assert_eq!(st["unique_opens"], 5);
    let (code, out, _) = run(&s.config, &["stats"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("opens") && l.contains("10")),
        "{out}"
    );

    // A wrong token: one clear line, exit 1.
    let wrong = s.dir.path().join("wrong.toml");
    let bad_token = s.dir.path().join("data/wrong.token");
    std::fs::write(&bad_token, "not-the-token\n").unwrap();
    std::fs::set_permissions(
        &bad_token,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("[store]", "token_file = \"data/wrong.token\"\n[store]");
    std::fs::write(&wrong, text).unwrap();
    for args in [&["tail", "-f"][..], &["stats"][..]] {
        let (code, _, err) = run(&wrong, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("refused the token"), "{err}");
    }
    assert_eq!(relay.stop(), Some(0));
}
