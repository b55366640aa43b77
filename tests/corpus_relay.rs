//! Every message of the shared MIME corpus (real messages from other projects' test suites,
//! malformed ones included) passes through the relay with tracking off and arrives byte for
//! byte as sent, after our Received header; with tracking and click tracking on, every one is
//! still relayed, and the untracked ones byte for byte.

mod common;

use common::*;

/// The corpus's messages (not its notes and sources).
fn corpus_files() -> Option<Vec<std::path::PathBuf>> {
    let dir = corpus_dir()?;
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
    Some(files)
}

#[tokio::test]
async fn corpus_passes_through_unmodified_with_tracking_off() {
    let Some(files) = corpus_files() else { return };
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

#[tokio::test]
async fn corpus_is_relayed_whole_with_clicks_on() {
    let Some(files) = corpus_files() else { return };
    let up = FakeUpstream::start().await;
    let cfg =
        config_text(&up.addr.to_string(), "").replace("[tracking]", "[tracking]\nclicks = true");
    let relay = start_relay(&cfg).await;
    let mut c = Client::hello(relay.smtp()).await;
    let mut changed = 0u64;
    for (n, path) in files.iter().enumerate() {
        let sent = canonical(&std::fs::read(path).unwrap());
        let (code, text) = c
            .send_mail("a@example.com", &["b@example.net"], &sent)
            .await;
        assert_eq!(code, 250, "{}: {text}", path.display());
        let got = up.messages();
        assert_eq!(got.len(), n + 1);
        if strip_received(&got[n].data) != &sent[..] {
            changed += 1;
        }
    }
    // A message changed in transit only when it was tracked (it got a pixel).
    let stats = admin_json(&relay, "/api/v1/stats").await;
    assert_eq!(stats["tracked"].as_u64(), Some(changed), "{stats}");
    assert_eq!(stats["relayed"].as_u64(), Some(files.len() as u64));
    assert!(changed > 0, "no corpus message was tracked");
    let tracked = changed;
    eprintln!(
        "corpus with clicks on: {} relayed, {tracked} tracked",
        files.len()
    );
    relay.stop().await;
}
