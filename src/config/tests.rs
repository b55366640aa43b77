//! Tests of reading `relay.toml`.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("/etc/pixelrelay"))
}

#[test]
fn minimal_config_gets_defaults_and_resolves_paths() {
    let c = parse("[upstream]\naddress = \"127.0.0.1:25\"\n").expect("valid");
    assert_eq!(
        c.smtp.listen,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.smtp.max_message_size, 52_428_800);
    assert_eq!(
        c.store.path,
        Path::new("/etc/pixelrelay/data/pixelrelay.db")
    );
    assert_eq!(c.tracking.on_dkim_signed, OnDkimSigned::Skip);
}

#[test]
fn a_node_runs_only_the_faces_its_config_names() {
    // No [http], no [admin]: a relay-only node.
    let c = parse("[upstream]\naddress = \"127.0.0.1:25\"\n").expect("valid");
    assert!(c.http.is_none() && c.admin.is_none());
    assert!(
        c.summary().contains("pixel off; admin off"),
        "{}",
        c.summary()
    );
    // An empty smtp.listen: a pixel-only node.
    let c = parse(
        "[smtp]\nlisten = []\n[upstream]\naddress = \"127.0.0.1:25\"\n[http]\nlisten = \"127.0.0.1:8080\"\n",
    )
    .expect("valid");
    assert!(c.smtp.listen.is_empty());
    assert_eq!(c.http.as_ref().map(|h| h.listen.port()), Some(8080));
    assert!(
        c.summary()
            .starts_with("ok: smtp off; pixel http://127.0.0.1:8080; admin off"),
        "{}",
        c.summary()
    );
    // An [admin] with no keys gets the default address.
    let c = parse("[smtp]\nlisten = []\n[upstream]\naddress = \"127.0.0.1:25\"\n[admin]\n")
        .expect("valid");
    assert_eq!(c.admin.map(|a| a.listen.port()), Some(8081));
    // Nothing at all to serve is an error that says so.
    let e = parse("[smtp]\nlisten = []\n[upstream]\naddress = \"127.0.0.1:25\"\n").unwrap_err();
    assert!(e.to_string().contains("nothing to serve"), "{e}");
}

#[test]
fn every_error_is_reported_with_its_key() {
    let text = r#"
        [smtp]
        listen = ["127.0.0.1:2525", "nonsense"]
        max_recipents = 5
        max_recipients = -1
        [upstream]
        address = "127.0.0.1:25"
        tls = "sometimes"
        [http]
        listen = "localhost"
        workers = -2
        [bogus]
    "#;
    let errs = parse(text).expect_err("invalid").0;
    let joined = errs.join("\n");
    for needle in [
        "smtp.listen[1]: invalid socket address \"nonsense\"",
        "smtp.max_recipents: unknown key",
        "smtp.max_recipients: must be a positive number",
        "upstream.tls: \"sometimes\" is not one of none | starttls | implicit",
        "http.listen: invalid socket address \"localhost\"",
        "http.workers: must be a number from 0 to 1024, not -2",
        "bogus: unknown section",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
    assert_eq!(errs.len(), 7, "{joined}");
}

#[test]
fn address_and_capture_are_exclusive_and_one_is_required() {
    let e =
        parse("[upstream]\naddress = \"127.0.0.1:25\"\ncapture_dir = \"out\"\n").expect_err("both");
    assert!(e.0[0].starts_with("upstream.capture_dir:"), "{e}");
    let e = parse("").expect_err("neither");
    assert!(e.0[0].starts_with("upstream.address: missing"), "{e}");
    let c = parse("[upstream]\ncapture_dir = \"data/outbox\"\n").expect("capture");
    assert!(
        matches!(c.upstream.target, UpstreamTarget::Capture { ref dir } if dir.ends_with("data/outbox"))
    );
}

#[test]
fn password_in_toml_is_refused() {
    let e = parse("[upstream]\naddress = \"h:25\"\nauth_user = \"u\"\npassword = \"x\"\n")
        .expect_err("refused");
    let j = e.to_string();
    assert!(j.contains("upstream.password:"), "{j}");
    assert!(j.contains("upstream.auth_user: needs"), "{j}");
}

#[test]
fn tls_and_auth_subsections() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), "x").unwrap();
    let text = r#"
        [smtp.tls]
        cert = "c.pem"
        key = "missing.pem"
        implicit_listen = ["127.0.0.1:4650", "bad"]
        colour = "blue"
        [smtp.auth]
        allow_plaintext = true
        [[smtp.auth.users]]
        name = "alice"
        hash = "plaintext"
        [upstream]
        address = "127.0.0.1:25"
    "#;
    let errs = Config::parse(text, dir.path())
        .expect_err("invalid")
        .to_string();
    for needle in [
        "smtp.tls.key: cannot read",
        "smtp.tls.implicit_listen[1]: invalid socket address",
        "smtp.tls.colour: unknown key",
        "smtp.auth.users[0].hash: not an argon2id hash",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
    }
    assert!(!errs.contains("smtp.tls.cert"), "{errs}");
    assert!(!errs.contains("smtp.tls: unknown"), "{errs}");
}

#[test]
fn webhooks_are_read_and_checked_with_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("hook.secret");
    std::fs::write(&good, "s3cret\n").unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open = dir.path().join("open.secret");
    std::fs::write(&open, "s3cret\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = r#"
        [upstream]
        address = "127.0.0.1:25"
        [[webhooks]]
        url = "https://hooks.example.com/pixel?x=1"
        secret_file = "hook.secret"
        events = ["open", "message", "click"]
        timeout = 3
        max_age = 600
        concurrency = 2
        headers = { Authorization = "Bearer abc" }
        [[webhooks]]
        url = "http://127.0.0.1:9000/"
        secret_env = "HOOK_SECRET"
    "#;
    let c = Config::parse(text, dir.path()).expect("valid");
    assert_eq!(c.webhooks.len(), 2);
    let w = &c.webhooks[0];
    assert_eq!(w.secret, WebhookSecret::File(good.clone()));
    assert!(w.open && w.message && w.click);
    assert!(
        c.webhooks[1].open && !c.webhooks[1].click,
        "open events only by default"
    );
    assert_eq!(w.timeout, Duration::from_secs(3));
    assert_eq!(w.max_age, Duration::from_secs(600));
    assert_eq!(w.concurrency, 2);
    assert_eq!(
        w.headers,
        vec![("Authorization".into(), "Bearer abc".into())]
    );
    let d = &c.webhooks[1];
    assert!(d.open && !d.message);
    assert_eq!(d.timeout, Duration::from_secs(10));
    assert_eq!(d.max_age, Duration::from_secs(86_400));
    assert_eq!(d.concurrency, 4);

    let bad = r#"
        [upstream]
        address = "127.0.0.1:25"
        [[webhooks]]
        url = "ftp://example.com/"
        secret_file = "open.secret"
        events = ["clicks"]
        headers = { "X-A" = "a\r\nInjected: yes", Host = "evil", "bad name" = "v" }
        concurrency = 0
        colour = "blue"
        [[webhooks]]
        secret = "inline"
    "#;
    let errs = Config::parse(bad, dir.path())
        .expect_err("invalid")
        .to_string();
    for needle in [
        "webhooks[0].url: \"ftp://example.com/\" is not an http:// or https:// URL",
        "webhooks[0].secret_file:",
        "chmod 600",
        "webhooks[0].events[0]: \"clicks\" is not one of open | click | message",
        "webhooks[0].headers.X-A: must not contain CR, LF or NUL",
        "webhooks[0].headers.Host: is set by pixelrelay itself",
        "webhooks[0].headers.bad name: is not a header name",
        "webhooks[0].concurrency: must be a positive number",
        "webhooks[0].colour: unknown key",
        "webhooks[1].url: missing",
        "webhooks[1].secret_file: missing",
        "webhooks[1].secret: secrets are not read from relay.toml",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
    }
    let e = parse("[upstream]\naddress = \"h:25\"\n[webhooks]\nurl = \"http://x/\"\n")
        .expect_err("not an array");
    assert!(
        e.to_string()
            .contains("webhooks: must be an array of tables"),
        "{e}"
    );
}

#[test]
fn host_port_split() {
    assert_eq!(
        split_host_port("mx.example.net:25").unwrap(),
        ("mx.example.net".into(), 25)
    );
    assert_eq!(split_host_port("[::1]:2525").unwrap(), ("::1".into(), 2525));
    assert!(split_host_port("::1:25").is_err());
    assert!(split_host_port("host").is_err());
    assert!(split_host_port("host:0").is_err());
}

#[test]
fn milter_listens_on_tcp_or_a_unix_socket_and_bad_values_name_the_key() {
    let base = "[upstream]\naddress = \"127.0.0.1:25\"\n";
    let c = Config::parse(
        &format!("{base}[milter]\nlisten = \"127.0.0.1:8891\"\n"),
        Path::new("/etc/pr"),
    )
    .unwrap();
    let m = c.milter.expect("[milter]");
    assert_eq!(
        m.listen,
        MilterListen::Tcp("127.0.0.1:8891".parse().unwrap())
    );
    assert_eq!(m.max_connections, 1000);
    let c = Config::parse(
        &format!("{base}[milter]\nlisten = \"inet:127.0.0.1:9\"\n"),
        Path::new("/etc/pr"),
    )
    .unwrap();
    assert_eq!(
        c.milter.unwrap().listen,
        MilterListen::Tcp("127.0.0.1:9".parse().unwrap())
    );
    let c = Config::parse(
        &format!("{base}[milter]\nlisten = \"unix:run/milter.sock\"\nmax_connections = 5\n"),
        Path::new("/etc/pr"),
    )
    .unwrap();
    let m = c.milter.unwrap();
    assert_eq!(
        m.listen,
        MilterListen::Unix("/etc/pr/run/milter.sock".into())
    );
    assert_eq!(m.max_connections, 5);
    assert!(
        Config::parse(base, Path::new("/"))
            .unwrap()
            .milter
            .is_none()
    );
    // A milter-only node: no SMTP listener, nothing else to serve.
    let only = format!("[smtp]\nlisten = []\n{base}[milter]\n");
    assert!(Config::parse(&only, Path::new("/")).is_ok());
    for (bad, key) in [
        ("listen = \"localhost:8891\"", "milter.listen"),
        ("listen = \"unix:\"", "milter.listen"),
        ("max_connections = 0", "milter.max_connections"),
        ("colour = 1", "milter.colour"),
    ] {
        let e = Config::parse(&format!("{base}[milter]\n{bad}\n"), Path::new("/")).unwrap_err();
        assert!(e.to_string().contains(key), "{bad}: {e}");
    }
}

#[test]
fn acme_section_is_read_and_checked_with_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"
        [upstream]
        address = "127.0.0.1:25"
        [http]
        listen = "0.0.0.0:443"
        [http.acme]
        domains = ["Track.Example.com."]
        contact = "mailto:admin@example.com"
    "#;
    let cfg = Config::parse(good, dir.path()).expect("valid");
    let acme = cfg.http.unwrap().acme.expect("acme");
    assert_eq!(acme.domains, ["track.example.com"]);
    assert_eq!(acme.contact, ["mailto:admin@example.com"]);
    assert_eq!(acme.directory, super::LETS_ENCRYPT);
    assert_eq!(acme.cache, dir.path().join("data/acme"));

    let bad = r#"
        [upstream]
        address = "127.0.0.1:25"
        [http]
        tls_cert = "c.pem"
        tls_key = "c.pem"
        [http.acme]
        domains = ["*.example.com", "192.0.2.1", "ok.example.com", "bad_name.example"]
        contact = ["admin@example.com"]
        directory = "http://ca.example/dir"
        ca_file = "missing.pem"
        colour = "blue"
    "#;
    std::fs::write(dir.path().join("c.pem"), "x").unwrap();
    let errs = Config::parse(bad, dir.path())
        .expect_err("invalid")
        .to_string();
    for needle in [
        "http.acme: cannot be used with http.tls_cert",
        "http.acme.domains[0]: \"*.example.com\" is a wildcard",
        "http.acme.domains[1]: \"192.0.2.1\" is an address",
        "http.acme.domains[3]: \"bad_name.example\" is not a domain name",
        "http.acme.contact[0]: \"admin@example.com\" is not a mailto: URL",
        "http.acme.directory: \"http://ca.example/dir\" is not an https URL",
        "http.acme.ca_file: cannot read",
        "http.acme.colour: unknown key",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
    }
    assert!(!errs.contains("domains[2]"), "{errs}");
    let empty = "[upstream]\naddress = \"h:25\"\n[http]\n[http.acme]\n";
    let errs = Config::parse(empty, dir.path())
        .expect_err("no domains")
        .to_string();
    assert!(errs.contains("http.acme.domains: missing"), "{errs}");
}
