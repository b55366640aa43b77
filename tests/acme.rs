//! `[http.acme]` end to end against Debian's `pebble` (the ACME test CA) with
//! `pebble-challtestsrv` as its DNS: the pixel listener obtains a certificate for its tracking
//! domain by TLS-ALPN-01 on its own HTTPS port, serves it, keeps it 0600 in its cache, renews
//! it (pebble issues 20-second certificates here) without dropping a connection, and serves
//! the cached one at once after a restart.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DOMAIN: &str = "track.pixelrelay.test";
/// Seconds a pebble certificate is valid: renewal comes two thirds of the way through.
const VALIDITY: u64 = 20;

/// A peer process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` and waits until a line of its output contains `ready`.
fn start_peer(mut cmd: Command, ready: &str) -> Peer {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn peer");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[peer] {line}");
            if line.contains(&ready) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("peer did not become ready");
    Peer(child)
}

/// A free loopback UDP port (pebble's DNS server cannot report the one it bound).
fn free_udp_port() -> u16 {
    common::unclaimed(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// pebble and its DNS, and the certificate authority the test trusts for pebble's own HTTPS.
struct Ca {
    _dns: Peer,
    _pebble: Peer,
    /// The ACME directory URL.
    directory: String,
    /// pebble's management API (`/roots/0`: the root that issues).
    management: SocketAddr,
    /// PEM of the CA behind pebble's HTTPS certificate.
    https_ca: PathBuf,
}

/// Starts pebble with `tls_port` as the port its validator connects to for TLS-ALPN-01, and
/// pebble-challtestsrv answering every name with 127.0.0.1.
fn start_ca(dir: &Path, tls_port: u16) -> Option<Ca> {
    start_ca_on(dir, tls_port, free_port())
}

/// [`start_ca`] with its directory on port `listen` (a CA started again at the same URL).
fn start_ca_on(dir: &Path, tls_port: u16, listen: u16) -> Option<Ca> {
    let pebble = need("pebble")?;
    let challtestsrv = need("pebble-challtestsrv")?;
    // pebble's HTTPS certificate, from a CA of the test's own.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let https_ca = dir.join("pebble-ca.pem");
    std::fs::write(&https_ca, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).unwrap();

    let dns_port = free_udp_port();
    let mut cmd = Command::new(challtestsrv);
    cmd.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{}", free_port())]);
    let dns = start_peer(cmd, "Starting management server");

    let management = free_port();
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.join("pebble.pem"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": free_port(),
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": VALIDITY,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let mut cmd = Command::new(pebble);
    cmd.arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        // No random validation delays; every authorization validated afresh (a renewal too);
        // no nonces refused at random (instant-acme retries those three times, and a run of
        // bad luck would make an order fail and the test's timing with it).
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_AUTHZREUSE", "0")
        .env("PEBBLE_WFE_NONCEREJECT", "0");
    let pebble = start_peer(cmd, "ACME directory available at");
    Some(Ca {
        _dns: dns,
        _pebble: pebble,
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management: SocketAddr::from(([127, 0, 0, 1], management)),
        https_ca,
    })
}

/// A TLS client connection speaking HTTP/1.1 keep-alive.
struct Conn {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Conn {
    /// Connects to `addr` naming `sni`, trusting only `roots`.
    async fn open(addr: SocketAddr, sni: &str, roots: &[CertificateDer<'static>]) -> Conn {
        pixelrelay::server::install_crypto();
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(store)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS to {addr} as {sni}: {e}"));
        Conn { tls }
    }

    /// The leaf certificate the server presented.
    fn leaf(&self) -> Vec<u8> {
        self.tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// GET `path`: status and body (read by Content-Length).
    async fn get(&mut self, host: &str, path: &str) -> (u16, Vec<u8>) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: acme-test\r\n\r\n");
        self.tls.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = self.tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = self.tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        (status, buf[head_end..head_end + len].to_vec())
    }
}

/// The root pebble issues under, from its management API.
async fn pebble_root(ca: &Ca) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    let https_ca = CertificateDer::from_pem_file(&ca.https_ca).unwrap();
    let mut conn = Conn::open(ca.management, "localhost", &[https_ca]).await;
    let (status, body) = conn.get("localhost", "/roots/0").await;
    assert_eq!(status, 200);
    CertificateDer::from_pem_slice(&body).unwrap()
}

/// Where the forwarder sends connections (the pixel listener of the process running now).
type Target = Arc<Mutex<Option<SocketAddr>>>;

/// A TCP forwarder from a port of the test's own to wherever `target` is set later: pebble
/// must be told its validation port before pixelrelay has bound its listener (port 0), as a
/// firewall forwards 443 to a listener on another port.
async fn forwarder(target: Target) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let Some(to) = *target.lock().unwrap() else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

fn write_config(dir: &Path, directory: &str) -> PathBuf {
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[smtp]
listen = ["127.0.0.1:0"]
[upstream]
capture_dir = "data/outbox"
[tracking]
base_url = "https://{DOMAIN}"
[admin]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[http.acme]
domains = ["{DOMAIN}"]
contact = "mailto:postmaster@pixelrelay.test"
directory = "{directory}"
cache = "data/acme"
ca_file = "pebble-ca.pem"
"#
        ),
    )
    .unwrap();
    config
}

/// How many `acme_certificate` lines with `source` the process has logged.
fn deployed(log: &Arc<Mutex<Vec<String>>>, source: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("event=\"acme_certificate\"") || l.contains("acme_certificate"))
        .filter(|l| {
            l.contains(&format!("source=\"{source}\"")) || l.contains(&format!("source={source}"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracking_domain_gets_its_certificate_from_pebble_and_renews_it() {
    let dir = tempfile::tempdir().unwrap();
    let target: Target = Arc::default();
    let tls_port = forwarder(Arc::clone(&target)).await;
    let Some(ca) = start_ca(dir.path(), tls_port) else {
        return;
    };
    let config = write_config(dir.path(), &ca.directory);
    let relay = Proc::serve(&config);
    let pixel = relay.http_addr();
    *target.lock().unwrap() = Some(pixel);

    // The first certificate: ordered, validated over TLS-ALPN-01 on the pixel port, served.
    eventually(60, "the first certificate", || {
        deployed(&relay.log, "issued") >= 1
    })
    .await;
    let root = pebble_root(&ca).await;
    let mut kept = Conn::open(pixel, DOMAIN, std::slice::from_ref(&root)).await;
    let first = kept.leaf();
    let (status, body) = kept.get(DOMAIN, "/o/not-a-token.gif").await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"GIF89a"));
    // A relayed message's pixel is https://track.pixelrelay.test/o/…: loaded over this
    // certificate, it records the open.
    let mut smtp = Client::hello(relay.smtp).await;
    let html = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<html><body>hello</body></html>\r\n";
    assert_eq!(
        smtp.send_mail("a@example.com", &["b@example.net"], html)
            .await
            .0,
        250
    );
    let url = pixel_urls(&captured(&dir.path().join("data/outbox"))).remove(0);
    let path = url
        .strip_prefix(&format!("https://{DOMAIN}"))
        .unwrap_or_else(|| panic!("{url}"));
    let (status, body) = kept.get(DOMAIN, path).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(b"GIF89a"));
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let admin = relay.admin_addr();
    eventually(10, "the open over HTTPS", || {
        admin_get_blocking(admin, token.trim(), "/api/v1/stats").contains("\"opens\":1")
    })
    .await;
    // pebble's validity period (its notAfter is the period's last second, inclusive).
    let (not_before, not_after) = pixelrelay::acme::validity(&first).expect("validity");
    let period = not_after - not_before;
    assert!(
        (VALIDITY as i64 - 1..=VALIDITY as i64).contains(&period),
        "{period}"
    );

    // The cache: key and chain 0600 in a 0700 directory, the account beside them.
    let cache = dir.path().join("data/acme");
    assert_eq!(mode(&cache), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.iter().any(|f| name(f).starts_with("account-")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| name(f).starts_with("cert-")),
        "{files:?}"
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }

    // Renewal two thirds of the way through: a new certificate for new handshakes, while the
    // connection opened before it goes on being served.
    // (The kept connection makes a request every second: the listener closes connections
    // idle for longer than its header timeout.)
    let deadline = std::time::Instant::now() + Duration::from_secs(VALIDITY + 30);
    while deployed(&relay.log, "issued") < 2 {
        assert!(std::time::Instant::now() < deadline, "no renewal");
        let (status, _) = kept.get(DOMAIN, "/o/not-a-token.gif").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fresh = Conn::open(pixel, DOMAIN, std::slice::from_ref(&root)).await;
    let second = fresh.leaf();
    assert_ne!(first, second, "a renewed certificate");
    let (status, _) = kept.get(DOMAIN, "/o/not-a-token.gif").await;
    assert_eq!(
        status, 200,
        "the connection from before the renewal still served"
    );
    assert!(
        !relay
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("acme_error")),
        "no failed attempt"
    );
    // /metrics: the served certificate's end, and the two orders.
    let metrics = admin_get_blocking(admin, token.trim(), "/metrics");
    let (_, second_end) = pixelrelay::acme::validity(&second).unwrap();
    for want in [
        format!("pixelrelay_tls_certificate_not_after_seconds {second_end}"),
        "pixelrelay_acme_orders_total{result=\"issued\"} 2".to_string(),
    ] {
        assert!(metrics.contains(&want), "{want} in\n{metrics}");
    }
    drop((kept, fresh));
    assert_eq!(relay.stop(), Some(0));

    // A restart serves the cached certificate from its first handshake, ordering nothing.
    let relay = Proc::serve(&config);
    let pixel = relay.http_addr();
    *target.lock().unwrap() = Some(pixel);
    let conn = Conn::open(pixel, DOMAIN, std::slice::from_ref(&root)).await;
    let served = conn.leaf();
    let issued_now = deployed(&relay.log, "issued");
    assert_eq!(deployed(&relay.log, "cache"), 1);
    if issued_now == 0 {
        assert_eq!(served, second, "the cached certificate");
    }
    drop(conn);
    relay.stop();
}

#[tokio::test]
async fn an_unreachable_ca_is_logged_and_retried_while_the_listener_serves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pebble-ca.pem"), {
        let k = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&k)
            .unwrap()
            .pem()
    })
    .unwrap();
    let closed = format!("https://127.0.0.1:{}/dir", free_port());
    let config = write_config(dir.path(), &closed);
    let relay = Proc::serve(&config);
    let log = Arc::clone(&relay.log);
    eventually(30, "the failed attempt", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("acme_error") && l.contains("retry_in_s=10"))
    })
    .await;
    // No certificate yet: a handshake fails, the process stays up and plain SMTP works.
    let mut c = Client::hello(relay.smtp).await;
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(relay.stop(), Some(0));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_is_logged_with_the_cas_reason() {
    let dir = tempfile::tempdir().unwrap();
    // pebble validates on a port where nothing listens (DNS or a firewall pointing elsewhere).
    let Some(ca) = start_ca(dir.path(), free_port()) else {
        return;
    };
    let config = write_config(dir.path(), &ca.directory);
    let relay = Proc::serve(&config);
    let log = Arc::clone(&relay.log);
    eventually(60, "the refused order", || {
        log.lock().unwrap().iter().any(|l| {
            l.contains("acme_error") && l.contains(&format!("validation failed: {DOMAIN}: "))
        })
    })
    .await;
    let line = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("validation failed"))
        .cloned()
        .unwrap();
    assert!(line.contains("retry_in_s=10"), "{line}");
    assert!(
        line.to_ascii_lowercase().contains("connection refused")
            || line.to_ascii_lowercase().contains("connect"),
        "the CA's reason: {line}"
    );
    assert_eq!(deployed(&relay.log, "issued"), 0);
    assert_eq!(relay.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_no_longer_knows_is_registered_again() {
    let dir = tempfile::tempdir().unwrap();
    let target: Target = Arc::default();
    let tls_port = forwarder(Arc::clone(&target)).await;
    let listen = free_port();
    let Some(ca) = start_ca_on(dir.path(), tls_port, listen) else {
        return;
    };
    let config = write_config(dir.path(), &ca.directory);
    let relay = Proc::serve(&config);
    *target.lock().unwrap() = Some(relay.http_addr());
    eventually(60, "the first certificate", || {
        deployed(&relay.log, "issued") >= 1
    })
    .await;
    assert_eq!(relay.stop(), Some(0));

    // The CA is reset (pebble keeps nothing across a restart) at the same directory URL, and
    // the cached certificate is gone: the order made with the cached account is refused.
    drop(ca);
    let cache = dir.path().join("data/acme");
    for f in std::fs::read_dir(&cache).unwrap() {
        let f = f.unwrap().path();
        if name(&f).starts_with("cert-") {
            std::fs::remove_file(f).unwrap();
        }
    }
    let Some(_ca) = start_ca_on(dir.path(), tls_port, listen) else {
        return;
    };
    let relay = Proc::serve(&config);
    *target.lock().unwrap() = Some(relay.http_addr());
    eventually(60, "the refusal", || {
        relay
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("acme_error") && l.contains("the cached account is dropped"))
    })
    .await;
    // The next attempt registers a new account with the reset CA and gets a certificate.
    eventually(60, "a certificate from the reset CA", || {
        deployed(&relay.log, "issued") >= 1
    })
    .await;
    assert_eq!(lines_with(&relay.log, "ACME account registered"), 1);
    assert_eq!(relay.stop(), Some(0));
}

fn lines_with(log: &Arc<Mutex<Vec<String>>>, needle: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}
