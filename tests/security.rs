//! Who may relay, inbound TLS (STARTTLS and implicit), AUTH, and the STARTTLS injection
//! defence. Certificates are made in the test (rcgen); swaks is a real client.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

struct Pki {
    dir: tempfile::TempDir,
    pem: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    Pki {
        dir,
        pem: ck.cert.pem(),
    }
}

/// Relay config with TLS and one AUTH user (alice / "wonderland").
fn secure_config(
    up: &FakeUpstream,
    p: &Pki,
    smtp_extra: &str,
    tls_extra: &str,
    auth_extra: &str,
) -> String {
    let hash = pixelrelay::smtp::auth::hash_password("wonderland").unwrap();
    let base = config_text(&up.addr.to_string(), smtp_extra);
    format!(
        "{base}\n[smtp.tls]\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n[smtp.auth]\n{auth_extra}\n[[smtp.auth.users]]\nname = \"alice\"\nhash = \"{hash}\"\n",
        p.dir.path().join("cert.pem").display(),
        p.dir.path().join("key.pem").display()
    )
}

fn connector(pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    pixelrelay::server::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (u16, String) {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return (0, all);
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return (line[..3].parse().unwrap_or(0), all);
        }
    }
}

async fn cmd<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
) -> (u16, String) {
    s.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    read_reply(s).await
}

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

#[tokio::test]
async fn unknown_network_cannot_relay_without_auth_but_can_with_it() {
    let up = FakeUpstream::start().await;
    let p = pki();
    let relay = start_relay(&secure_config(
        &up,
        &p,
        "allow_networks = [\"127.0.0.1/32\"]",
        "",
        "allow_plaintext = true",
    ))
    .await;
    // A client on 127.0.0.2: not in the allow list.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = sock.connect(relay.smtp()).await.unwrap();
    let mut s = BufReader::new(stream);
    assert_eq!(read_reply(&mut s).await.0, 220);
    assert_eq!(cmd(&mut s, "EHLO outsider.test").await.0, 250);
    assert_eq!(cmd(&mut s, "MAIL FROM:<a@example.com>").await.0, 250);
    let (code, text) = cmd(&mut s, "RCPT TO:<victim@example.net>").await;
    assert_eq!((code, text.trim()), (554, "554 5.7.1 Relay access denied"));
    assert_eq!(cmd(&mut s, "RSET").await.0, 250);
    assert_eq!(
        up.connection_count(),
        0,
        "never contacted the upstream for an outsider"
    );
    let metrics = admin_text(&relay, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pixelrelay_smtp_refusals_total{reason=\"relay_denied\"} 1")),
        "relay denials are counted: {metrics}"
    );
    // Wrong password: refused (slowly), still no relay.
    assert_eq!(
        cmd(&mut s, &format!("AUTH PLAIN {}", plain("alice", "nope")))
            .await
            .0,
        535
    );
    assert_eq!(
        cmd(
            &mut s,
            &format!("AUTH PLAIN {}", plain("alice", "wonderland"))
        )
        .await
        .0,
        235
    );
    assert_eq!(cmd(&mut s, "MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(
        cmd(&mut s, "RCPT TO:<b@example.net>").await.0,
        250,
        "authenticated clients may relay"
    );
    relay.stop().await;
}

#[tokio::test]
async fn auth_needs_tls_unless_allowed_and_tls_required_blocks_mail() {
    let up = FakeUpstream::start().await;
    let p = pki();
    let relay = start_relay(&secure_config(&up, &p, "", "required = true", "")).await;
    let mut c = Client::connect(relay.smtp()).await;
    assert_eq!(c.reply().await.0, 220);
    let (code, ehlo) = c.cmd("EHLO c.test").await;
    assert_eq!(code, 250);
    assert!(ehlo.lines().any(|l| l == "STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH is not offered in clear: {ehlo}"
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
            .await
            .0,
        538
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 530);
    relay.stop().await;
}

#[tokio::test]
async fn starttls_discards_pipelined_commands_and_resets_state() {
    let up = FakeUpstream::start().await;
    let p = pki();
    let relay = start_relay(&secure_config(&up, &p, "", "", "")).await;
    let stream = TcpStream::connect(relay.smtp()).await.unwrap();
    let mut s = BufReader::new(stream);
    assert_eq!(read_reply(&mut s).await.0, 220);
    assert_eq!(cmd(&mut s, "EHLO c.test").await.0, 250);
    // The injection: commands in the same packet as STARTTLS.
    s.get_mut()
        .write_all(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\nRCPT TO:<b@example.net>\r\n")
        .await
        .unwrap();
    let (code, _) = read_reply(&mut s).await;
    assert_eq!(code, 220);
    assert!(
        s.buffer().is_empty(),
        "no plaintext reply may follow the 220"
    );
    let tls = connector(&p.pem)
        .connect("localhost".try_into().unwrap(), s.into_inner())
        .await
        .unwrap();
    let mut t = BufReader::new(tls);
    // The first thing said over TLS must be the answer to *our* command.
    let (code, text) = cmd(&mut t, "MAIL FROM:<a@example.com>").await;
    assert_eq!(
        code, 503,
        "state is reset after STARTTLS (EHLO first): {text}"
    );
    let (code, ehlo) = cmd(&mut t, "EHLO c.test").await;
    assert_eq!(code, 250);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "AUTH offered once encrypted: {ehlo}"
    );
    assert_eq!(
        cmd(&mut t, "RCPT TO:<b@example.net>").await.0,
        503,
        "the injected MAIL never ran"
    );
    assert_eq!(cmd(&mut t, "STARTTLS").await.0, 503);
    // AUTH LOGIN over TLS, then a message.
    assert_eq!(cmd(&mut t, "AUTH LOGIN").await.0, 334);
    assert_eq!(
        cmd(
            &mut t,
            &base64::engine::general_purpose::STANDARD.encode("alice")
        )
        .await
        .0,
        334
    );
    assert_eq!(
        cmd(
            &mut t,
            &base64::engine::general_purpose::STANDARD.encode("wonderland")
        )
        .await
        .0,
        235
    );
    assert_eq!(cmd(&mut t, "MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(cmd(&mut t, "RCPT TO:<b@example.net>").await.0, 250);
    assert_eq!(cmd(&mut t, "DATA").await.0, 354);
    t.get_mut()
        .write_all(b"Subject: over tls\r\n\r\nhi\r\n.\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut t).await.0, 250);
    let got = up.messages();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("with ESMTPSA id"),
        "Received says TLS + AUTH: {text}"
    );
    assert!(!up.messages().iter().any(|g| g.from.contains("injected")));
    relay.stop().await;
}

fn swaks_base(relay: SocketAddr) -> Command {
    let mut c = Command::new(need("swaks").expect("swaks"));
    c.args([
        "--server",
        &relay.ip().to_string(),
        "--port",
        &relay.port().to_string(),
    ])
    .args([
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--helo",
        "swaks.test",
    ])
    .args(["--header", "Subject: swaks tls", "--body", "hello over tls"]);
    c
}

// swaks runs as a blocking child process while the relay runs in this process: two threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_starttls_auth_and_implicit_tls() {
    if need("swaks").is_none() {
        return;
    }
    let up = FakeUpstream::start().await;
    let p = pki();
    let relay = start_relay(&secure_config(
        &up,
        &p,
        "",
        "implicit_listen = [\"127.0.0.1:0\"]",
        "",
    ))
    .await;
    let out = swaks_base(relay.smtp())
        .args([
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "wonderland",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks --tls --auth: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = swaks_base(relay.addrs.smtps[0])
        .args([
            "--tlsc",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "wonderland",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks --tlsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = swaks_base(relay.smtp())
        .args([
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "guess",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong password must fail");
    assert_eq!(up.messages().len(), 2);
    relay.stop().await;
}

/// The binary: hash-password makes a hash that works, and SIGHUP swaps the certificate.
#[tokio::test]
async fn hash_password_and_certificate_reload_on_sighup() {
    let up = FakeUpstream::start().await;
    let p = pki();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pixelrelay"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"s3cret pass\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let cfg = secure_config(&up, &p, "", "", "").replace(
        "name = \"alice\"\nhash = ",
        &format!(
            "name = \"bob\"\nhash = \"{hash}\"\n[[smtp.auth.users]]\nname = \"alice\"\nhash = "
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.toml"), &cfg).unwrap();
    let relay = Proc::serve(&dir.path().join("relay.toml"));

    // An open TLS session with the first certificate.
    let stream = TcpStream::connect(relay.smtp).await.unwrap();
    let mut s = BufReader::new(stream);
    read_reply(&mut s).await;
    cmd(&mut s, "EHLO c.test").await;
    assert_eq!(cmd(&mut s, "STARTTLS").await.0, 220);
    let old = connector(&p.pem)
        .connect("localhost".try_into().unwrap(), s.into_inner())
        .await
        .unwrap();
    let mut old = BufReader::new(old);

    // New certificate files, then SIGHUP.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(p.dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(p.dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap();
    let log = relay.log.clone();
    eventually(10, "certificate reloaded", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("certificate reloaded"))
    })
    .await;

    // New sessions get the new certificate (the old CA no longer verifies it)...
    let new_session = |pem: String, addr: SocketAddr| async move {
        let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
        read_reply(&mut s).await;
        cmd(&mut s, "EHLO c.test").await;
        cmd(&mut s, "STARTTLS").await;
        connector(&pem)
            .connect("localhost".try_into().unwrap(), s.into_inner())
            .await
            .is_ok()
    };
    assert!(
        new_session(ck.cert.pem(), relay.smtp).await,
        "new certificate served"
    );
    assert!(
        !new_session(p.pem.clone(), relay.smtp).await,
        "old certificate gone"
    );
    // ... while the session opened before goes on, and bob's password from hash-password works.
    assert_eq!(cmd(&mut old, "EHLO c.test").await.0, 250);
    assert_eq!(
        cmd(
            &mut old,
            &format!("AUTH PLAIN {}", plain("bob", "s3cret pass"))
        )
        .await
        .0,
        235
    );
    let mut rest = Vec::new();
    assert_eq!(cmd(&mut old, "QUIT").await.0, 221);
    let _ = old.read_to_end(&mut rest).await;
    assert_eq!(relay.stop(), Some(0));
}

#[tokio::test]
async fn pixel_listener_serves_https_with_its_own_certificate() {
    let up = FakeUpstream::start().await;
    let p = pki();
    let cfg = config_text(&up.addr.to_string(), "").replace(
        "[http]\n",
        &format!(
            "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.dir.path().join("cert.pem").display(),
            p.dir.path().join("key.pem").display()
        ),
    );
    let relay = start_relay(&cfg).await;
    let tcp = TcpStream::connect(relay.http()).await.unwrap();
    let mut tls = connector(&p.pem)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET /o/forged.gif HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: image/gif"),
        "{text}"
    );
    // Plain HTTP on the same port is not served.
    let (status, _, _) = http_get(&format!("http://{}/healthz", relay.http()), "curl").await;
    assert_ne!(status, 200);
    relay.stop().await;
}
