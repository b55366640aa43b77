//! The upstream client's TLS and AUTH: STARTTLS and implicit TLS against a certificate made in
//! the test, AUTH PLAIN and LOGIN with the password from a 0600 file or an environment
//! variable, and the failures that must become 4xx.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

fn tls_config(up: &FakeUpstream, dir: &std::path::Path, pem: &str, extra: &str) -> String {
    std::fs::write(dir.join("ca.pem"), pem).unwrap();
    config_text(&up.addr.to_string(), "").replace(
        "[upstream]\n",
        &format!(
            "[upstream]\nca_file = \"{}\"\nserver_name = \"localhost\"\n{extra}\n",
            dir.join("ca.pem").display()
        ),
    )
}

async fn one_message(relay: &Relay) -> (u16, String) {
    let mut c = Client::hello(relay.smtp()).await;
    c.send_mail(
        "a@example.com",
        &["b@example.net"],
        b"Subject: tls\r\n\r\nsecret body\r\n",
    )
    .await
}

#[tokio::test]
async fn starttls_with_auth_plain_from_a_file() {
    let (acc, pem) = test_tls();
    let sec = Security {
        tls: Some(acc),
        auth: Some(("relay".into(), "s3cret".into())),
        ..Default::default()
    };
    let up = FakeUpstream::start_secure(Script::default(), sec).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = tls_config(
        &up,
        dir.path(),
        &pem,
        &format!(
            "tls = \"starttls\"\nauth_user = \"relay\"\npassword_file = \"{}\"",
            pw.display()
        ),
    );
    let relay = start_relay(&cfg).await;
    let (code, text) = one_message(&relay).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(up.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn implicit_tls_with_auth_login_from_the_environment() {
    let (acc, pem) = test_tls();
    let sec = Security {
        tls: Some(acc),
        implicit: true,
        auth: Some(("relay".into(), "pa ss".into())),
        login_only: true,
    };
    let up = FakeUpstream::start_secure(Script::default(), sec).await;
    let dir = tempfile::tempdir().unwrap();
    // The variable name is unique to this test, so setting it cannot race another test.
    unsafe { std::env::set_var("PIXELRELAY_TEST_UPSTREAM_PW", "pa ss") };
    let cfg = tls_config(
        &up,
        dir.path(),
        &pem,
        "tls = \"implicit\"\nauth_user = \"relay\"\npassword_env = \"PIXELRELAY_TEST_UPSTREAM_PW\"",
    );
    let relay = start_relay(&cfg).await;
    let (code, text) = one_message(&relay).await;
    assert_eq!(code, 250, "{text}");
    relay.stop().await;
}

#[tokio::test]
async fn untrusted_certificate_and_missing_starttls_are_temporary_failures() {
    let (acc, _pem) = test_tls();
    let (_, other_pem) = test_tls();
    let up = FakeUpstream::start_secure(
        Script::default(),
        Security {
            tls: Some(acc),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(&tls_config(
        &up,
        dir.path(),
        &other_pem,
        "tls = \"starttls\"",
    ))
    .await;
    let (code, text) = one_message(&relay).await;
    assert_eq!(code, 451, "wrong CA: {text}");
    assert!(up.messages().is_empty());
    relay.stop().await;

    // tls_verify = false accepts it (lab mode).
    let relay = start_relay(&tls_config(
        &up,
        dir.path(),
        &other_pem,
        "tls = \"starttls\"\ntls_verify = false",
    ))
    .await;
    assert_eq!(one_message(&relay).await.0, 250);
    relay.stop().await;

    let plain = FakeUpstream::start().await;
    let relay = start_relay(&tls_config(
        &plain,
        dir.path(),
        &other_pem,
        "tls = \"starttls\"",
    ))
    .await;
    let (code, _) = one_message(&relay).await;
    assert_eq!(
        code, 451,
        "an upstream without STARTTLS is never used in clear when starttls is required"
    );
    assert!(plain.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn wrong_password_is_a_temporary_failure() {
    let sec = Security {
        auth: Some(("relay".into(), "right".into())),
        ..Default::default()
    };
    let up = FakeUpstream::start_secure(Script::default(), sec).await;
    unsafe { std::env::set_var("PIXELRELAY_TEST_WRONG_PW", "wrong") };
    let cfg = config_text(&up.addr.to_string(), "").replace(
        "[upstream]\n",
        "[upstream]\nauth_user = \"relay\"\npassword_env = \"PIXELRELAY_TEST_WRONG_PW\"\n",
    );
    let relay = start_relay(&cfg).await;
    assert_eq!(one_message(&relay).await.0, 451);
    assert!(up.messages().is_empty());
    relay.stop().await;
}
