//! The command line: exit codes and messages a newcomer sees.

use std::process::Command;

fn pixelrelay(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelrelay"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
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
    assert!(out.starts_with("ok: "), "{out}");
    assert!(out.contains("CAPTURE mode"), "{out}");
    assert_eq!(out.lines().count(), 1);
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
