//! Several nodes over one PostgreSQL store: two `pixelrelay serve` processes on one database
//! (a throwaway cluster the test starts), each with its own journal. Mail relayed through
//! node A has its pixel loaded through B and through A: both nodes' APIs show both opens,
//! `tail -f` on A shows the open B served, and a webhook endpoint both nodes deliver to gets
//! each event once.

mod common;
mod hooks_receiver;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pg::Cluster;
use common::*;
use hooks_receiver::{Receiver, Reply};

const HOOK_SECRET: &[u8] = b"multinode-hook-secret";

/// Writes a 0600 file.
fn secret_file(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What the nodes of a test share: a cluster with one database, the token key, and a webhook
/// endpoint that acknowledges everything.
struct Deployment {
    pg: Cluster,
    db_url: String,
    key: PathBuf,
    secret: Vec<u8>,
    hooks: Receiver,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(db: &str) -> Option<Deployment> {
        let pg = Cluster::start()?;
        pg.create_db(db).await;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret.key");
        let secret = format!(
            "{}{}",
            pixelrelay::token::MessageId::random(),
            pixelrelay::token::MessageId::random()
        )
        .into_bytes();
        secret_file(&key, &secret);
        Some(Deployment {
            db_url: format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port),
            pg,
            key,
            secret,
            hooks: Receiver::start(HOOK_SECRET, |_, _| Reply::Status(200)).await,
            _dir: dir,
        })
    }

    /// Two nodes of the deployment relaying to `upstream`.
    fn pair(&self, upstream: &str) -> (Node, Node) {
        (self.node(upstream), self.node(upstream))
    }

    /// A node of the deployment relaying to `upstream`.
    fn node(&self, upstream: &str) -> Node {
        let hook = format!("{}/hook", self.hooks.url());
        Node::new(upstream, &self.db_url, &self.key, &hook)
    }
}

/// A node's folder and config: its own journal and admin token, the shared database and key.
struct Node {
    dir: tempfile::TempDir,
    http: u16,
}

impl Node {
    fn new(upstream: &str, db_url: &str, key: &Path, hook: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        // Nodes are killed and started again on their ports.
        let (http, admin) = (free_port_for_restarts(), free_port_for_restarts());
        secret_file(
            &dir.path().join("pg.password"),
            Cluster::PASSWORD.as_bytes(),
        );
        secret_file(&dir.path().join("hook.secret"), HOOK_SECRET);
        let config = format!(
            r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "node.test"
[upstream]
address = "{upstream}"
[tracking]
base_url = "http://127.0.0.1:{http}"
secret_file = "{key}"
[http]
listen = "127.0.0.1:{http}"
[admin]
listen = "127.0.0.1:{admin}"
[store]
backend = "postgres"
url = "{db_url}"
password_file = "pg.password"
[[webhooks]]
url = "{hook}"
secret_file = "hook.secret"
timeout = 2
"#,
            key = key.display()
        );
        std::fs::write(dir.path().join("relay.toml"), config).unwrap();
        Node { dir, http }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    /// Loads pixel `path` (`/o/TOKEN.gif`) through this node.
    async fn load(&self, path: &str) {
        let url = format!("http://127.0.0.1:{}{path}", self.http);
        assert_eq!(http_get(&url, "Mozilla/5.0 Thunderbird/128.0").await.0, 200);
    }
}

/// The opens a node's admin API lists (`pixelrelay tail --json`), oldest first, once there
/// are `want` of them (or what there is after 15 s): (id, message, count).
fn opens(config: &Path, want: usize) -> Vec<(String, String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = pixelrelay_cli(&["tail", "--json", "-n", "1000"], config);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<(String, String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["message"].as_str().unwrap().to_string(),
                    v["count"].as_u64().unwrap(),
                )
            })
            .collect();
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_messages_opens_the_live_tail_and_webhooks() {
    let Some(dep) = Deployment::start("nodes").await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let (a, b) = dep.pair(&up.addr.to_string());
    let node_a = Proc::serve(&a.config());
    let node_b = Proc::serve(&b.config());

    // Mail through A.
    let path = &mail_one(node_a.smtp, &up).await;

    // Its pixel through B, then through A: one message, two opens, on both nodes' APIs.
    b.load(path).await;
    let first = opens(&b.config(), 1);
    assert_eq!(
        first.len(),
        1,
        "B recorded the open of A's message: {first:?}"
    );
    a.load(path).await;
    for node in [&a, &b] {
        let got = opens(&node.config(), 2);
        let counts: Vec<u64> = got.iter().map(|o| o.2).collect();
        assert_eq!(counts, vec![1, 2], "{got:?}");
        assert_eq!(got[0].1, got[1].1, "the same message");
    }

    // `tail -f` on A sees an open B serves.
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_pixelrelay"))
        .arg("-c")
        .arg(a.config())
        .args(["tail", "-f", "--json", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tail -f");
    let stdout = tail.stdout.take().expect("stdout");
    let rx = lines_of(stdout);
    // Until the follower is connected, loads may land in its backlog (-n 0: not shown):
    // load again until one shows, then check it is the newest count.
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        b.load(path).await;
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "tail -f on A never showed B's open"
        );
    };
    let _ = tail.kill();
    let _ = tail.wait();
    let shown: serde_json::Value = serde_json::from_str(&line).unwrap();
    let all = opens(&a.config(), 3);
    assert_eq!(shown["message"], first[0].1.as_str());
    assert!(
        all.iter().any(
            |o| o.0 == shown["id"].as_str().unwrap() && o.2 == shown["count"].as_u64().unwrap()
        ),
        "{shown} in {all:?}"
    );

    // Every open reached the webhook once, whichever node sent it: wait until the outbox is
    // empty (a row is removed when delivered), then count.
    let db = dep.pg.connect("nodes").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 && dep.hooks.received().iter().filter(|r| r.acked()).count() >= all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} webhook rows still waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = dep.hooks.received();
    let mut ids: Vec<&str> = got.iter().map(|r| r.event_id()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "an event delivered twice: {ids:?}");
    assert_eq!(ids.len(), all.len(), "one event per open");
    assert!(got.iter().all(|r| r.sig_ok));

    assert_eq!(node_a.stop(), Some(0));
    assert_eq!(node_b.stop(), Some(0));
}

#[test]
fn a_shared_store_needs_the_token_key_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[upstream]\naddress = \"127.0.0.1:25\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://pixelrelay@127.0.0.1:1/db\"\n",
    )
    .unwrap();
    let out = pixelrelay_cli(&["check-config"], &config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tracking.secret_file") && err.contains("not generated"),
        "{err}"
    );
    assert!(
        !dir.path().join("data/secret.key").exists(),
        "no key made for this node alone"
    );
    // And a password in the URL is refused, naming the key.
    std::fs::write(
        &config,
        "[upstream]\naddress = \"127.0.0.1:25\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://u:secret@127.0.0.1/db\"\n",
    )
    .unwrap();
    let out = pixelrelay_cli(&["check-config"], &config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.url") && err.contains("password_file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_before_its_record_is_held_and_counted_when_the_record_comes() {
    let Some(dep) = Deployment::start("early").await else {
        return;
    };
    let b = dep.node("127.0.0.1:25");
    let node_b = Proc::serve(&b.config());

    // A pixel of a message whose record another node has not indexed yet.
    let id = pixelrelay::token::MessageId::random();
    let token = pixelrelay::token::TokenKey::from_secret(&dep.secret)
        .mint(pixelrelay::token::Purpose::Open, &id);
    b.load(&format!("/o/{token}.gif")).await;
    let metrics = || metrics_of(&b);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !metrics()
        .await
        .contains("pixelrelay_pixel_requests_total{result=\"held\"} 1")
    {
        assert!(Instant::now() < deadline, "the hit was never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opens(&b.config(), 0).is_empty());

    // The record arrives (as the relaying node's indexer would write it): the held hit counts.
    record_elsewhere(&dep, "early", id);
    let got = opens(&b.config(), 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].1.as_str(), got[0].2), (id.to_string().as_str(), 1));
    // Counted valid once its commit returns (a moment after the API can see the open).
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = metrics().await;
        if m.contains("pixelrelay_pixel_requests_total{result=\"valid\"} 1") {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        m.contains("pixelrelay_pixel_requests_total{result=\"invalid\"} 0"),
        "{m}"
    );
    assert_eq!(node_b.stop(), Some(0));
}

/// Records message `id` in database `db` as the indexer of a node that relayed it would.
fn record_elsewhere(dep: &Deployment, db: &str, id: pixelrelay::token::MessageId) {
    let other = tempfile::tempdir().unwrap();
    let store = pixelrelay::store::Store::open(&pixelrelay::config::StoreConfig {
        path: other.path().join("db"),
        subjects: false,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: Duration::from_millis(100),
        open_log: None,
        postgres: Some(pixelrelay::config::PostgresConfig {
            url: dep.pg.url(db),
            password_file: None,
            ca_file: None,
        }),
    })
    .expect("open the shared store");
    store
        .record_message(&pixelrelay::store::MessageRecord {
            id,
            queue_id: "Q".into(),
            at_ms: pixelrelay::store::now_ms(),
            sender: "news@example.com".into(),
            recipients: vec!["bob@example.net".into()],
            message_id: None,
            subject: None,
            size: 100,
            tracked: true,
            skip_reason: None,
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_hits_outlive_a_kill_of_their_node_and_count_once_when_the_record_comes() {
    let Some(dep) = Deployment::start("heldkill").await else {
        return;
    };
    let b = dep.node("127.0.0.1:25");
    let mut node_b = Proc::serve(&b.config());
    let id = pixelrelay::token::MessageId::random();
    let token = pixelrelay::token::TokenKey::from_secret(&dep.secret)
        .mint(pixelrelay::token::Purpose::Open, &id);
    for _ in 0..3 {
        b.load(&format!("/o/{token}.gif")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !metrics_of(&b)
        .await
        .contains("pixelrelay_pixel_requests_total{result=\"held\"} 3")
    {
        assert!(Instant::now() < deadline, "the hits were never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held, and the journal indexed past them: kill -9, then the record comes.
    node_b.child.kill().expect("kill -9");
    let _ = node_b.child.wait();
    record_elsewhere(&dep, "heldkill", id);
    let node_b = Proc::serve(&b.config());
    let loaded = |p: &Proc| {
        p.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("held hits loaded") && l.contains("held=3"))
    };
    assert!(loaded(&node_b), "the holds were loaded on start");
    let got = opens(&b.config(), 3);
    assert_eq!(
        got.len(),
        3,
        "every held hit recorded after the restart: {got:?}"
    );
    let counts: Vec<u64> = got.iter().map(|o| o.2).collect();
    assert_eq!(counts, [1, 2, 3], "each once");
    // Released with their opens: a further restart records nothing again.
    assert_eq!(node_b.stop(), Some(0));
    let node_b = Proc::serve(&b.config());
    assert!(!loaded(&node_b), "nothing held after they were recorded");
    assert_eq!(opens(&b.config(), 3).len(), 3);
    assert_eq!(node_b.stop(), Some(0));
}

/// A node's `/metrics`, with its admin token.
async fn metrics_of(node: &Node) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = std::fs::read_to_string(node.dir.path().join("data/admin.token")).unwrap();
    let mut s = tokio::net::TcpStream::connect(admin_addr(&node.config()))
        .await
        .unwrap();
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Relays one HTML message to bob through the node at `smtp`; the path (`/o/TOKEN.gif`) of
/// the pixel the upstream received in it.
async fn mail_one(smtp: std::net::SocketAddr, up: &FakeUpstream) -> String {
    let mut c = Client::hello(smtp).await;
    let html = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<html><body>hello</body></html>\r\n";
    let (code, text) = c
        .send_mail("news@example.com", &["bob@example.net"], html)
        .await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
    let url = pixel_urls(&up.messages().last().expect("relayed").data).remove(0);
    url[url.find("/o/").expect("pixel path")..].to_string()
}

/// The lines a child process writes to `out`, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The admin address in a node's config.
fn admin_addr(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let at = text.find("[admin]\nlisten = \"").unwrap() + "[admin]\nlisten = \"".len();
    text[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_away_stops_nothing_and_what_was_journaled_meanwhile_is_indexed_after() {
    let Some(dep) = Deployment::start("away").await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let a = dep.node(&up.addr.to_string());
    let node = Proc::serve(&a.config());
    let html = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<html><body>hello</body></html>\r\n";

    // The database goes away: mail is still relayed with its pixel, pixels still answer.
    dep.pg.kill();
    let mut c = Client::hello(node.smtp).await;
    for rcpt in ["one@example.net", "two@example.net"] {
        let (code, text) = c.send_mail("news@example.com", &[rcpt], html).await;
        assert_eq!(code, 250, "{text}");
    }
    c.cmd("QUIT").await;
    let urls: Vec<String> = up
        .messages()
        .iter()
        .map(|m| pixel_urls(&m.data).remove(0))
        .collect();
    assert_eq!(urls.len(), 2, "both relayed with a pixel");
    for url in &urls {
        a.load(&url[url.find("/o/").unwrap()..]).await;
    }

    // It comes back: the journal's records and hits reach it, each once.
    dep.pg.restart();
    let got = opens(&a.config(), 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_ne!(got[0].1, got[1].1);
    assert!(got.iter().all(|o| o.2 == 1));
    let db = dep.pg.connect("away").await;
    let messages: i64 = db
        .query_one(
            "SELECT count(*) FROM messages WHERE delivery IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        messages, 2,
        "records and replies journaled while it was away"
    );
    assert_eq!(node.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing_and_the_other_keeps_serving() {
    let Some(dep) = Deployment::start("killed").await else {
        return;
    };
    let up = FakeUpstream::start().await;
    let (a, b) = dep.pair(&up.addr.to_string());
    let node_a = Proc::serve(&a.config());
    let mut node_b = Proc::serve(&b.config());
    let path = mail_one(node_a.smtp, &up).await;

    // Loads through B, and kill -9 in the middle of them.
    let mut answered = 0u64;
    for i in 0..200 {
        if i == 100 {
            // The property is about hits older than the journal's linger (1 ms): let the
            // last one age past it, then kill -9.
            std::thread::sleep(Duration::from_millis(20));
            node_b.child.kill().expect("kill -9");
            let _ = node_b.child.wait();
        }
        let u = format!("http://127.0.0.1:{}{path}", b.http);
        if let Ok(Ok(200)) = tokio::time::timeout(Duration::from_secs(2), status_of(&u)).await {
            answered += 1;
        }
    }
    assert_eq!(answered, 100, "B answered until it died, and not after");
    // A kept serving.
    a.load(&path).await;
    // B back on its journal: every hit it answered before dying is indexed, each once.
    let node_b = Proc::serve(&b.config());
    let got = opens(&a.config(), 101);
    let mut ids: Vec<&str> = got.iter().map(|o| o.0.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "no open recorded twice");
    assert_eq!(
        got.len(),
        101,
        "100 answered by B before the kill, 1 by A: {got:?}"
    );
    let counts: Vec<u64> = got.iter().map(|o| o.2).collect();
    assert_eq!(counts, (1..=101).collect::<Vec<_>>(), "counts run 1..n");
    assert_eq!(node_a.stop(), Some(0));
    assert_eq!(node_b.stop(), Some(0));
}

/// The status of a GET of `url` (an error when nothing answers).
async fn status_of(url: &str) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 Thunderbird/128.0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out)
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_the_database_is_down_says_so_and_starts_when_it_is_back() {
    let Some(dep) = Deployment::start("late").await else {
        return;
    };
    let a = dep.node("127.0.0.1:25");
    dep.pg.kill();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pixelrelay"))
        .arg("-c")
        .arg(a.config())
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let stderr = child.stderr.take().expect("stderr");
    let rx = lines_of(stderr);
    let wait_for = |what: &str| loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains(what) => return l,
            Ok(_) => {}
            Err(e) => panic!("no log line with {what:?}: {e}"),
        }
    };
    // One line says why it waits, and it is still running.
    let line = wait_for("cannot be reached");
    assert!(line.contains("WARN"), "{line}");
    assert!(child.try_wait().unwrap().is_none(), "serve did not give up");
    // The database back: the node gets ready and serves.
    dep.pg.restart();
    wait_for("ready smtp=");
    a.load("/o/not-a-token.gif").await;
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_lease_of_a_node_killed_mid_delivery_runs_out_and_another_node_sends_it() {
    let Some(mut dep) = Deployment::start("lease").await else {
        return;
    };
    // The endpoint hangs on the first request (node A's), answers the rest.
    dep.hooks = Receiver::start(HOOK_SECRET, |n, _| {
        if n == 0 {
            Reply::Stall
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let up = FakeUpstream::start().await;
    let (a, b) = dep.pair(&up.addr.to_string());
    let mut node_a = Proc::serve(&a.config());
    a.load(&mail_one(node_a.smtp, &up).await).await;
    // A is delivering the open (the endpoint holds the request): kill -9 it there.
    let deadline = Instant::now() + Duration::from_secs(15);
    while dep.hooks.received().is_empty() {
        assert!(Instant::now() < deadline, "A never sent the event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leased = Instant::now();
    let event = dep.hooks.received()[0].event_id().to_string();
    node_a.child.kill().expect("kill -9");
    let _ = node_a.child.wait();
    // B finds the row, waits out A's lease (2 x 2 s timeout + 5 s), and sends the same event.
    let node_b = Proc::serve(&b.config());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = dep.hooks.received();
        if let Some(r) = got.iter().find(|r| r.acked()) {
            assert_eq!(r.event_id(), event, "the event A could not finish");
            // Not before A's lease ran out: nobody sent it while A might still have been.
            assert!(
                leased.elapsed() >= Duration::from_secs(8),
                "sent {:?} after A took it, inside its 9 s lease",
                leased.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node sent the event after A died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = dep.pg.connect("lease").await;
    let left: i64 = db
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(node_b.stop(), Some(0));
}
