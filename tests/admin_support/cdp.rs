//! Headless Chromium for the dashboard tests: one-shot runs (`--dump-dom`, `--screenshot`) and
//! a browser driven over the DevTools protocol. A wait that fails saves a screenshot of the page
//! in `target/test-artifacts/` and names it in the failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

#[allow(dead_code)] // One-shot runs: not every test binary makes them.
pub fn chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> Command {
    let mut c = Command::new(bin);
    c.args(crate::common::CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=5000")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
    c
}

/// Headless Chromium driven over the DevTools protocol on `--remote-debugging-pipe`: commands
/// are written to the browser's fd 3 and replies read from its fd 4, each a JSON text ended by
/// NUL. Killed when dropped.
pub struct Cdp {
    child: std::process::Child,
    io: std::sync::Mutex<CdpIo>,
}

pub struct CdpIo {
    tx: std::io::PipeWriter,
    rx: std::io::BufReader<std::io::PipeReader>,
    next: u64,
}

impl Cdp {
    pub fn launch(bin: &Path, profile: &Path) -> Cdp {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (cmd_r, cmd_w) = std::io::pipe().expect("pipe");
        let (reply_r, reply_w) = std::io::pipe().expect("pipe");
        let (r, w) = (cmd_r.as_raw_fd(), reply_w.as_raw_fd());
        let mut c = std::process::Command::new(bin);
        c.args(crate::common::CHROMIUM_FLAGS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec. Both ends are first moved
        // above fd 10 so that placing one on 3 or 4 cannot overwrite the other; dup2 clears
        // close-on-exec on the copies, and the originals close at exec.
        unsafe {
            c.pre_exec(move || {
                let r = libc::fcntl(r, libc::F_DUPFD, 10);
                let w = libc::fcntl(w, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("chromium runs");
        drop((cmd_r, reply_w));
        Cdp {
            child,
            io: std::sync::Mutex::new(CdpIo {
                tx: cmd_w,
                rx: std::io::BufReader::new(reply_r),
                next: 0,
            }),
        }
    }

    /// Sends one command (to a page session if given) and returns its result; events are skipped.
    pub fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut io = self.io.lock().unwrap();
        io.next += 1;
        let id = io.next;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        io.tx.write_all(&bytes).expect("write to chromium");
        loop {
            let mut buf = Vec::new();
            let n = io.rx.read_until(0, &mut buf).expect("read from chromium");
            assert!(n > 0, "chromium closed its DevTools pipe during {method}");
            buf.pop_if(|b| *b == 0);
            let reply: serde_json::Value = serde_json::from_slice(&buf).expect("DevTools JSON");
            if reply["id"].as_u64() != Some(id) {
                continue;
            }
            assert!(reply.get("error").is_none(), "{method}: {reply}");
            return reply["result"].clone();
        }
    }

    /// Opens `url` in a new page; returns the page's session id.
    pub fn open(&self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", serde_json::json!({"url": url}));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            serde_json::json!({"targetId": target["targetId"], "flatten": true}),
        );
        attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned()
    }

    /// Evaluates `expr` in the page; returns its value.
    pub fn eval(&self, page: &str, expr: &str) -> serde_json::Value {
        let r = self.call(
            Some(page),
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `cond` in the page until it is true; fails after `limit` with the page's DOM and
    /// a screenshot.
    pub fn wait_for(&self, page: &str, cond: &str, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.eval(page, cond) != serde_json::Value::Bool(true) {
            if std::time::Instant::now() >= deadline {
                let shot = self.screenshot(page, "failure");
                panic!(
                    "page never reached `{cond}` (screenshot: {}): {}",
                    shot.display(),
                    self.eval(page, "document.documentElement.outerHTML")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Saves the page as `target/test-artifacts/{name}.png`; returns the path.
    pub fn screenshot(&self, page: &str, name: &str) -> PathBuf {
        use base64::Engine as _;
        let shot = self.call(
            Some(page),
            "Page.captureScreenshot",
            serde_json::json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .unwrap_or_default();
        let path = artifacts().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

/// `target/test-artifacts/`, created.
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Drop for Cdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Chromium to completion (60 s at most); returns stdout.
#[allow(dead_code)] // As above.
pub async fn run(mut c: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("chromium timed out")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
