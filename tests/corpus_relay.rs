//! Every message of the shared MIME corpus (real messages from other projects' test suites,
//! malformed ones included) passes through the relay with tracking off and arrives byte for
//! byte as sent, after our Received header.

mod common;

use common::*;

/// What an SMTP client puts on the wire for a file: every line end as CRLF.
fn canonical(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            (b'\r', _) | (b'\n', _) => out.extend_from_slice(b"\r\n"),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[tokio::test]
async fn corpus_passes_through_unmodified_with_tracking_off() {
    let Some(dir) = corpus_dir() else { return };
    let files: Vec<_> = files_below(&dir)
        .into_iter()
        .filter(|p| {
            !matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("txt" | "md" | "json" | "rs")
            )
        })
        .collect();
    assert!(
        files.len() >= 20,
        "corpus at {} holds only {} messages",
        dir.display(),
        files.len()
    );
    let up = FakeUpstream::start().await;
    let cfg =
        config_text(&up.addr.to_string(), "").replace("[tracking]", "[tracking]\nenabled = false");
    let relay = start_relay(&cfg).await;
    let mut c = Client::hello(relay.smtp()).await;
    for (n, path) in files.iter().enumerate() {
        let sent = canonical(&std::fs::read(path).unwrap());
        let (code, text) = c
            .send_mail("a@example.com", &["b@example.net"], &sent)
            .await;
        assert_eq!(code, 250, "{}: {text}", path.display());
        let got = up.messages();
        assert_eq!(got.len(), n + 1);
        assert!(
            strip_received(&got[n].data) == &sent[..],
            "{} changed in transit",
            path.display()
        );
    }
    eprintln!("corpus: {} messages relayed byte-exact", files.len());
    relay.stop().await;
}
