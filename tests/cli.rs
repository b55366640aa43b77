//! The command line: exit codes and messages a newcomer sees.

use std::process::Command;

fn pixelrelay(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    pixelrelay_env(args, dir, None)
}

/// [`pixelrelay`] with `PIXELRELAY_CONFIG` set to `config` (or removed).
fn pixelrelay_env(
    args: &[&str],
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixelrelay"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("PIXELRELAY_CONFIG");
    if let Some(c) = config {
        cmd.env("PIXELRELAY_CONFIG", c);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn shipped_config_passes_check_config_and_says_capture_mode() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = pixelrelay(
        &["-c", &format!("{root}/relay.toml"), "check-config"],
        std::path::Path::new(root),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("ok: config {root}/relay.toml; ")),
        "{out}"
    );
    assert!(out.contains("CAPTURE mode"), "{out}");
    assert_eq!(out.lines().count(), 1);
    // Try-it mode points pixels at this machine on purpose: nothing to warn about.
    assert!(err.is_empty(), "{err}");
}

/// A config that relays for real, with `tracking` and `http` lines given.
fn real(tracking: &str, http: &str) -> String {
    format!(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\naddress = \"127.0.0.1:10025\"\n[tracking]\n{tracking}\n[http]\n{http}\n"
    )
}

#[test]
fn loopback_pixels_on_a_real_relay_get_one_warning_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // The shipped base_url left as it was, with a real upstream.
        (
            real(
                "base_url = \"http://127.0.0.1:8080\"",
                "listen = \"127.0.0.1:0\"",
            ),
            Some("tracking.base_url: http://127.0.0.1:8080"),
        ),
        (
            real(
                "base_url = \"http://192.168.1.5\"",
                "listen = \"0.0.0.0:0\"",
            ),
            Some("tracking.base_url: http://192.168.1.5"),
        ),
        // A public tracking domain, yet the pixel listens on loopback with no proxy named.
        (
            real(
                "base_url = \"https://t.example.com\"",
                "listen = \"127.0.0.1:0\"",
            ),
            Some("http.listen: 127.0.0.1:0 is loopback"),
        ),
        // Behind a configured proxy: fine.
        (
            real(
                "base_url = \"https://t.example.com\"",
                "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
            ),
            None,
        ),
        // Listening publicly for the tracking domain: fine.
        (
            real(
                "base_url = \"https://t.example.com\"",
                "listen = \"0.0.0.0:0\"",
            ),
            None,
        ),
        // A certificate from the CA for a name the pixels do not use.
        (
            real(
                "base_url = \"https://t.example.com\"",
                "listen = \"0.0.0.0:0\"\n[http.acme]\ndomains = [\"track.example.com\"]",
            ),
            Some("http.acme.domains: track.example.com does not include t.example.com"),
        ),
        (
            real(
                "base_url = \"https://t.example.com\"",
                "listen = \"0.0.0.0:0\"\n[http.acme]\ndomains = [\"t.example.com\"]",
            ),
            None,
        ),
    ];
    for (config, warning) in cases {
        std::fs::write(dir.path().join("relay.toml"), &config).unwrap();
        let (code, _, err) = pixelrelay(&["check-config"], dir.path());
        assert_eq!(code, 0, "{config}\n{err}");
        match warning {
            Some(w) => {
                assert_eq!(err.lines().count(), 1, "{config}\n{err}");
                assert!(
                    err.starts_with(&format!("pixelrelay: warning: {w}")),
                    "{config}\n{err}"
                );
            }
            None => assert!(err.is_empty(), "{config}\n{err}"),
        }
    }
}

#[test]
fn the_production_config_passes_check_config_without_a_warning() {
    let root = env!("CARGO_MANIFEST_DIR");
    let path = format!("{root}/contrib/relay.production.toml");
    let (code, out, err) = pixelrelay(&["-c", &path, "check-config"], std::path::Path::new(root));
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    for want in [
        "relay to 127.0.0.1:10025",
        "store /var/lib/pixelrelay/pixelrelay.db",
        "pixel https://0.0.0.0:443 (ACME certificate for track.example.com from https://acme-v02.api.letsencrypt.org/directory)",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    for want in [
        "base_url = \"https://",
        "anonymize_ip = true",
        "retention_days = 180",
        "\"/var/lib/pixelrelay/",
    ] {
        assert!(text.contains(want), "{want}");
    }
}

#[test]
fn the_config_is_found_by_flag_then_environment_then_cwd_then_etc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, hostname: &str| {
        std::fs::write(
            d.join(name),
            format!("[smtp]\nhostname = \"{hostname}\"\nlisten = [\"127.0.0.1:0\"]\n[upstream]\ncapture_dir = \"out\"\n"),
        )
        .unwrap();
    };
    write("flag.toml", "flag.test");
    write("env.toml", "env.test");
    write("relay.toml", "cwd.test");
    let read = |args: &[&str], env: Option<&str>| {
        let (code, out, err) = pixelrelay_env(args, d, env.map(|e| d.join(e)).as_deref());
        assert_eq!(code, 0, "{err}");
        out.split("; ").next().unwrap_or("").to_string()
    };
    let at = |name: &str| format!("ok: config {}", d.join(name).display());
    assert_eq!(
        read(&["-c", "flag.toml", "check-config"], Some("env.toml")),
        at("flag.toml")
    );
    assert_eq!(read(&["check-config"], Some("env.toml")), at("env.toml"));
    assert_eq!(read(&["check-config"], None), at("relay.toml"));
    // Nothing here: the message names every place it looked, /etc last.
    std::fs::remove_file(d.join("relay.toml")).unwrap();
    if !std::path::Path::new("/etc/pixelrelay/relay.toml").exists() {
        let (code, _, err) = pixelrelay_env(&["check-config"], d, None);
        assert_eq!(code, 2);
        assert_eq!(err.lines().count(), 1, "{err}");
        for place in [
            "-c",
            "PIXELRELAY_CONFIG",
            "./relay.toml",
            "/etc/pixelrelay/relay.toml",
        ] {
            assert!(err.contains(place), "{place} in {err}");
        }
    }
}

#[test]
fn check_config_catches_what_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A TOML syntax error names its line and column.
        (
            "[smtp]\nlisten = [\"127.0.0.1:25\"\nhostname = \"x\"\n",
            "syntax error at line 3, column 1",
        ),
        (
            "[smtp]\nlisten = []\n[upstream]\naddress = \"mx:25\"\nauth_user = \"u\"\npassword_file = \"missing.password\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            "upstream.password_file",
        ),
        (
            "[smtp]\nlisten = []\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"verbose\"\n",
            "log.level",
        ),
        (
            "[smtp]\nlisten = [\"127.0.0.1:2525\"]\n[upstream]\ncapture_dir = \"o\"\n[http]\nlisten = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n",
            "admin.listen: 127.0.0.1:8080 is also http.listen",
        ),
        (
            "[smtp]\nlisten = [\"0.0.0.0:2525\"]\n[upstream]\ncapture_dir = \"o\"\n[milter]\nlisten = \"127.0.0.1:2525\"\n",
            "milter.listen: 127.0.0.1:2525 is also smtp.listen[0]",
        ),
    ];
    for (config, want) in cases {
        std::fs::write(dir.path().join("relay.toml"), config).unwrap();
        let (code, _, err) = pixelrelay(&["check-config"], dir.path());
        assert_eq!(code, 2, "{config}");
        assert!(err.contains(want), "{want} in:\n{err}");
    }
}

#[test]
fn bad_config_lists_every_error_with_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("relay.toml"),
        "[smtp]\nlisten = [\"nowhere\"]\nmax_recipients = 0\n[upstream]\naddress = \"mx\"\ntls = \"maybe\"\n",
    )
    .unwrap();
    let (code, _, err) = pixelrelay(&["check-config"], dir.path());
    assert_eq!(code, 2);
    for key in [
        "smtp.listen[0]:",
        "smtp.max_recipients:",
        "upstream.address:",
        "upstream.tls:",
    ] {
        assert!(
            err.lines().any(|l| l.contains(key)),
            "{key} missing in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), 4, "{err}");
}

#[test]
fn missing_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = pixelrelay(&["-c", "nope.toml", "serve"], dir.path());
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("nope.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn unusable_listen_address_fails_at_start_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("relay.toml"),
        format!(
            "[smtp]\nlisten = [\"{}\"]\n[upstream]\naddress = \"127.0.0.1:25\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (code, _, err) = pixelrelay(&["serve"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("smtp.listen: cannot listen on"), "{err}");
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = pixelrelay(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert!(out.starts_with("pixelrelay "), "{out}");
    let (code, out, _) = pixelrelay(&["--help"], dir.path());
    assert_eq!(code, 0);
    for word in ["serve", "check-config", "smarthost"] {
        assert!(out.contains(word), "{word} missing from help:\n{out}");
    }
}

/// On a terminal `hash-password` asks twice with echo off: the password never shows, the
/// hash does. Run under a pseudo-terminal (Python's `pty`).
#[test]
fn hash_password_on_a_terminal_does_not_echo() {
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "hash-password"])
out = b""
def until(tok):
    global out
    while tok not in out:
        out += os.read(fd, 1024)
until(b"Password: ")
os.write(fd, b"s3cret-pw\n")
until(b"Again: ")
os.write(fd, b"s3cret-pw\n")
while True:
    try:
        d = os.read(fd, 1024)
    except OSError:
        break
    if not d:
        break
    out += d
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_pixelrelay"))
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{seen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen.contains("$argon2id$"), "{seen}");
    assert!(
        !seen.contains("s3cret-pw"),
        "the password was echoed: {seen}"
    );
}
