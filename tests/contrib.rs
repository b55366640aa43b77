//! The service files in contrib/ are valid for the tools that read them.

mod common;

use common::need;
use std::process::Command;

#[test]
fn systemd_unit_verifies() {
    let Some(sa) = need("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/pixelrelay.service"
    ))
    .unwrap();
    for needle in [
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=pixelrelay",
        "Type=notify",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "/etc/pixelrelay/relay.toml",
    ] {
        assert!(unit.contains(needle), "{needle} missing from the unit");
    }
    // Point it at the binary under test so that verify can check ExecStart.
    let unit = unit.replace(
        "/usr/local/bin/pixelrelay",
        env!("CARGO_BIN_EXE_pixelrelay"),
    );
    let path = dir.path().join("pixelrelay.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(sa).arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("pixelrelay.service:"),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn postfix_snippet_uses_only_known_parameters() {
    let Some(postconf) = need("postconf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/postfix-main.cf"
    ))
    .unwrap();
    let active: String = snippet
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(active.contains("smtp_destination_recipient_limit = 1"));
    assert!(active.contains("disable_mime_output_conversion = yes"));
    std::fs::write(dir.path().join("main.cf"), &active).unwrap();
    // Per-transport parameters (smtp_destination_...) are known through master.cf's services.
    std::fs::copy(
        "/usr/share/postfix/master.cf.dist",
        dir.path().join("master.cf"),
    )
    .unwrap();
    let out = Command::new(postconf)
        .arg("-c")
        .arg(dir.path())
        .arg("-n")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("unused parameter"), "{err}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("relayhost = [127.0.0.1]:2525"), "{shown}");
}
