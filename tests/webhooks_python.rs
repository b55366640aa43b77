//! A real peer not written here: Python's `http.server` as the webhook receiver, verifying
//! each signature with the README's own recipe (extracted from README.md, so the two cannot
//! drift apart). End to end: SMTP in, pixel inserted, pixel loaded over HTTP, open and message
//! events posted by `pixelrelay serve`'s wiring.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{Client, FakeUpstream, config_text, eventually, need};
use pixelrelay::config::Config;
use pixelrelay::server::Server;
use pixelrelay::store::MessageFilter;
use pixelrelay::token::{MessageId, Purpose, TokenKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Python code block of the README's "Webhooks" section.
fn readme_recipe() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Webhooks")
        .nth(1)
        .expect("README has a Webhooks section");
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let len = section[start..].find("```").expect("closed block");
    let code = section[start..start + len].to_string();
    assert!(code.lines().count() <= 10, "the README promises ≤10 lines");
    assert!(code.contains("hmac.compare_digest"));
    code
}

const RECEIVER: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = open(sys.argv[1], "rb").read().strip()
OUT = sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = verify(SECRET, self.headers, body)
        with open(OUT, "a") as f:
            f.write(json.dumps({"ok": ok, "content_type": self.headers.get("Content-Type"),
                                "event": json.loads(body)}) + "\n")
        self.send_response(204 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn python_receiver_verifies_every_event_with_the_readme_recipe() {
    let Some(python) = need("python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "py-webhook-secret-42\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, format!("{}\n{RECEIVER}", readme_recipe())).unwrap();
    let out = dir.path().join("received.jsonl");
    let mut child = Child(
        Command::new(python)
            .arg(&script)
            .arg(&secret)
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The receiver prints its port once it listens: that is the readiness signal.
    let stdout = child.0.stdout.take().unwrap();
    let port: u16 = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().unwrap()
    })
    .await
    .unwrap();

    let up = FakeUpstream::start().await;
    let cfg = format!(
        "{}\n[[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\nevents = [\"open\", \"message\"]\ntimeout = 5\n",
        config_text(&up.addr.to_string(), ""),
        secret.display()
    );
    let rdir = tempfile::tempdir().unwrap();
    std::fs::write(rdir.path().join("relay.toml"), cfg).unwrap();
    let cfg = Config::load(&rdir.path().join("relay.toml")).unwrap();
    assert_eq!(cfg.webhooks.len(), 1);
    let server = Server::bind(cfg).await.unwrap();
    let store = server.store().clone();
    let addrs = server.addresses();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let msg = "From: news@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\nMessage-ID: <py1@example.com>\r\n\
               MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello</p></body></html>\r\n";
    let mut c = Client::hello(addrs.smtp[0]).await;
    let (code, text) = c
        .send_mail("news@example.com", &["bob@example.net"], msg.as_bytes())
        .await;
    assert_eq!(code, 250, "{text}");
    let data = String::from_utf8_lossy(&up.messages()[0].data).to_string();
    let token = match data.find("/o/") {
        // The pixel the rewriter inserted.
        Some(at) => {
            let end = at + data[at..].find(".gif").expect(".gif");
            data[at + 3..end].to_string()
        }
        // The rewriter is not in yet: mint the token the pixel would carry.
        None => {
            let page = store
                .list_messages(&MessageFilter::default(), None, 10)
                .unwrap();
            assert_eq!(page.items.len(), 1);
            let id: MessageId = page.items[0].record.id;
            let key = std::fs::read(rdir.path().join("data/secret.key")).unwrap();
            TokenKey::from_secret(key.trim_ascii()).mint(Purpose::Open, &id)
        }
    };

    for ua in ["Mozilla/5.0 Thunderbird/115.0", "Microsoft Outlook 16.0"] {
        let mut s = tokio::net::TcpStream::connect(addrs.http.expect("pixel listener"))
            .await
            .unwrap();
        s.write_all(
            format!("GET /o/{token}.gif HTTP/1.1\r\nHost: t\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        assert!(
            resp.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }

    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    eventually(
        20,
        "1 message and 2 open events at the Python receiver",
        || read().len() >= 3,
    )
    .await;
    let got = read();
    assert_eq!(got.len(), 3, "{got:#?}");
    for g in &got {
        assert_eq!(g["ok"], true, "Python's hmac rejected {g}");
        assert_eq!(g["content_type"], "application/json");
    }
    let events: Vec<&serde_json::Value> = got.iter().map(|g| &g["event"]).collect();
    let messages: Vec<_> = events.iter().filter(|e| e["type"] == "message").collect();
    let opens: Vec<_> = events.iter().filter(|e| e["type"] == "open").collect();
    assert_eq!((messages.len(), opens.len()), (1, 2));
    let m = messages[0];
    assert!(m["tracked"].is_boolean());
    assert_eq!(m["delivery"]["accepted"], true);
    assert!(
        m["delivery"]["reply"]
            .as_str()
            .unwrap()
            .contains("queued as FAKE")
    );
    let mut counts: Vec<u64> = opens.iter().map(|e| e["count"].as_u64().unwrap()).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![1, 2]);
    for o in &opens {
        assert_eq!(o["message"], m["id"]);
        assert_eq!(o["recipient"], "bob@example.net");
        assert_eq!(o["message_id"], m["message_id"]);
        assert_eq!(o["sender"], "news@example.com");
        assert_eq!(o["event_id"].as_str().unwrap().len(), 16);
    }
    assert_ne!(opens[0]["event_id"], opens[1]["event_id"]);
    // The recipe does reject: a body signed with another secret gets 401.
    let body = r#"{"type":"open","event_id":"x"}"#;
    let ts = pixelrelay::store::now_ms() / 1000;
    let forged = pixelrelay::notify::sign(b"not-the-secret", ts, body.as_bytes());
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /hook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Pixelrelay-Timestamp: {ts}\r\nX-Pixelrelay-Signature: {forged}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    assert!(
        resp.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(read().last().unwrap()["ok"], false);

    let _ = stop.send(());
    task.await.unwrap();
    drop(child);
}
