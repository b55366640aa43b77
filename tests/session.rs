//! The SMTP session without sockets: bytes in through an in-memory pipe, replies out, with a
//! backend that records what it was asked. Commands are split across reads at every offset.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pixelrelay::budget::Budget;
use pixelrelay::config::BareNewline;
use pixelrelay::shutdown::Shutdown;
use pixelrelay::smtp::session::Session;
use pixelrelay::smtp::{Backend, Envelope, Reply, SessionConfig, Transaction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<String>>>);

struct Recorder {
    log: Log,
    /// The commands of each group the session handed over, e.g. "MAIL RCPT DATA".
    groups: Log,
    /// Working room asked for a single-recipient message, in multiples of its size (as the
    /// relay asks twice the size for a rewrite); 0 for none.
    room: usize,
}

impl Backend for Recorder {
    async fn envelope(&mut self, cmds: &[Envelope]) -> Vec<Reply> {
        let kinds: Vec<&str> = cmds
            .iter()
            .map(|c| match c {
                Envelope::Mail { .. } => "MAIL",
                Envelope::Rcpt(_) => "RCPT",
                Envelope::Data => "DATA",
            })
            .collect();
        self.groups.0.lock().unwrap().push(kinds.join(" "));
        let mut log = self.log.0.lock().unwrap();
        cmds.iter()
            .map(|c| match c {
                Envelope::Mail { path, .. } => {
                    log.push(format!("MAIL {}{}", path.address, path.params_wire()));
                    if path.address.starts_with("refused") {
                        Reply::new(550, "5.7.1 sender refused")
                    } else {
                        Reply::new(250, "2.1.0 Ok")
                    }
                }
                Envelope::Rcpt(r) => {
                    log.push(format!("RCPT {}", r.address));
                    if r.address.starts_with("bad") {
                        Reply::new(550, "5.1.1 no")
                    } else {
                        Reply::new(250, "2.1.5 Ok")
                    }
                }
                Envelope::Data => Reply::new(354, "go ahead"),
            })
            .collect()
    }
    async fn data(&mut self, t: Transaction) -> Reply {
        let body = String::from_utf8_lossy(&t.content).to_string();
        let body = body
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(body);
        let body = body
            .split_once("+0000\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(body);
        let mut log = self.log.0.lock().unwrap();
        log.push(format!("DATA {} {:?}", t.recipients.join(","), body));
        if self.room > 0 {
            log.push(format!("RESERVED {}", t.reserved.bytes()));
        }
        Reply::new(250, "2.0.0 Ok: queued")
    }
    async fn reset(&mut self) {
        self.log.0.lock().unwrap().push("RESET".into());
    }
    fn working_room(&self, recipients: usize, size: usize) -> usize {
        if recipients == 1 { size * self.room } else { 0 }
    }
}

fn cfg() -> Arc<SessionConfig> {
    cfg_with(Budget::unlimited())
}

fn cfg_with(budget: Arc<Budget>) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1 << 20,
        max_recipients: 10,
        rcptmax_one: false,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        max_errors: 10,
        bare_newline: BareNewline::Normalize,
        allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
        tls: false,
        tls_required: false,
        auth: None,
        auth_plaintext: false,
        metrics: None,
        budget,
    })
}

/// Feeds `input` in chunks of `step` bytes, then closes; returns the reply codes and the log.
async fn drive(input: &[u8], step: usize) -> (Vec<u16>, Vec<String>) {
    let (codes, log, _) = drive_groups(input, step).await;
    (codes, log)
}

/// Like `drive`, with the groups of commands the backend was asked to answer.
async fn drive_groups(input: &[u8], step: usize) -> (Vec<u16>, Vec<String>, Vec<String>) {
    drive_config(cfg(), input, step).await
}

/// Like `drive_groups`, with a session configuration of its own.
async fn drive_config(
    cfg: Arc<SessionConfig>,
    input: &[u8],
    step: usize,
) -> (Vec<u16>, Vec<String>, Vec<String>) {
    drive_backend(cfg, 0, input, step).await
}

/// Like `drive_config`, with a backend that asks `room` times a message's size to work on it.
async fn drive_backend(
    cfg: Arc<SessionConfig>,
    room: usize,
    input: &[u8],
    step: usize,
) -> (Vec<u16>, Vec<String>, Vec<String>) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let log = Log::default();
    let groups = Log::default();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let session = Session::new(
        server,
        peer,
        cfg,
        Recorder {
            log: log.clone(),
            groups: groups.clone(),
            room,
        },
        Shutdown::never(),
        Shutdown::never(),
    );
    let task = tokio::spawn(session.run());
    let (mut r, mut w) = tokio::io::split(client);
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        for chunk in input.chunks(step) {
            w.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        let _ = w.shutdown().await;
    });
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    writer.await.unwrap();
    task.await.unwrap();
    let codes = String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
        .map(|l| l[..3].parse().unwrap())
        .collect();
    let log = log.0.lock().unwrap().clone();
    let groups = groups.0.lock().unwrap().clone();
    (codes, log, groups)
}

#[tokio::test]
async fn the_in_flight_budget_refuses_with_452_and_takes_the_next_message_that_fits() {
    let budget = Budget::new(100 * 1024);
    let big = "x".repeat(76) + "\r\n";
    let mut input = String::from("EHLO c.test\r\n");
    // A declared size with no room: 452 at MAIL, and the transaction never opens.
    input += "MAIL FROM:<a@x.test> SIZE=200000\r\nRCPT TO:<b@y.test>\r\n";
    // Undeclared, and past the budget while it is read: 452 after the message, nothing sent.
    input += "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
    input += &big.repeat(2000);
    input += ".\r\n";
    // One that fits, declared: delivered.
    input += "MAIL FROM:<a@x.test> SIZE=40000\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
    input += &big.repeat(400);
    input += ".\r\nQUIT\r\n";
    let (codes, log, _) = drive_config(cfg_with(Arc::clone(&budget)), input.as_bytes(), 4096).await;
    assert_eq!(
        codes,
        vec![
            220, 250, 452, 503, 250, 250, 250, 354, 452, 250, 250, 354, 250, 221
        ]
    );
    let delivered: Vec<&String> = log.iter().filter(|l| l.starts_with("DATA")).collect();
    assert_eq!(delivered.len(), 1, "{log:?}");
    assert!(log.contains(&"RESET".to_string()), "{log:?}");
    assert_eq!(budget.in_use(), 0, "every reservation is given back");
    assert_eq!(budget.refused(), 2, "the MAIL and the message");
}

#[tokio::test]
async fn the_backends_working_room_is_reserved_with_the_message_or_the_message_waits() {
    let message = |rcpts: &str| {
        let mut m = format!("EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=60000\r\n{rcpts}DATA\r\n");
        m += &("y".repeat(76) + "\r\n").repeat(700);
        m + ".\r\nQUIT\r\n"
    };
    let one = message("RCPT TO:<b@y.test>\r\n");
    let two = message("RCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n");
    // 60 000 declared: ~63 KB for the message, twice that for the backend's copy.
    let budget = Budget::new(300 * 1024);
    let busy = budget.try_reserve(200 * 1024).expect("room");
    // The message alone would fit the 100 KiB left, the two together would not: 452 at DATA,
    // rather than a message taken and then handled in part.
    // (A client waits for 354 before it sends the message.)
    let refused =
        "EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=60000\r\nRCPT TO:<b@y.test>\r\nDATA\r\nQUIT\r\n";
    let (codes, log, _) =
        drive_backend(cfg_with(Arc::clone(&budget)), 2, refused.as_bytes(), 4096).await;
    assert_eq!(codes, vec![220, 250, 250, 250, 452, 221], "{log:?}");
    // Two recipients need no working room: it fits, and goes.
    let (codes, _, _) = drive_backend(cfg_with(Arc::clone(&budget)), 2, two.as_bytes(), 4096).await;
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 354, 250, 221]);
    // Once the budget has room, the single-recipient one goes with both reserved.
    drop(busy);
    let (codes, log, _) =
        drive_backend(cfg_with(Arc::clone(&budget)), 2, one.as_bytes(), 4096).await;
    assert_eq!(codes, vec![220, 250, 250, 250, 354, 250, 221]);
    let held: usize = log
        .iter()
        .find_map(|l| l.strip_prefix("RESERVED "))
        .and_then(|n| n.parse().ok())
        .expect("reserved");
    assert!(held >= 3 * 60_000, "message and working room: {held}");
    // A working room the budget could never hold is not asked for: the message goes with its
    // own room alone, and the backend decides what to do without the rest.
    let small = Budget::new(150 * 1024);
    let (codes, log, _) =
        drive_backend(cfg_with(Arc::clone(&small)), 2, one.as_bytes(), 4096).await;
    assert_eq!(codes, vec![220, 250, 250, 250, 354, 250, 221]);
    assert!(log.iter().any(|l| l.starts_with("RESERVED ")), "{log:?}");
    assert_eq!(budget.in_use(), 0);
    assert_eq!(small.in_use(), 0);
}

const SCRIPT: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<bad@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\nx\r\n.\r\nQUIT\r\n";

#[tokio::test]
async fn every_split_gives_the_same_replies_and_calls() {
    let (codes, log) = drive(SCRIPT, SCRIPT.len()).await;
    assert_eq!(codes, vec![220, 250, 250, 550, 250, 354, 250, 221]);
    assert_eq!(
        log,
        vec![
            "MAIL a@x.test BODY=8BITMIME",
            "RCPT bad@y.test",
            "RCPT b@y.test",
            "DATA b@y.test \".dot\\r\\nx\\r\\n\""
        ]
    );
    for step in 1..24 {
        let (c2, l2) = drive(SCRIPT, step).await;
        assert_eq!(c2, codes, "step {step}");
        assert_eq!(l2, log, "step {step}");
    }
}

#[tokio::test]
async fn a_pipelined_envelope_goes_to_the_backend_as_one_group() {
    let (codes, _, groups) = drive_groups(SCRIPT, SCRIPT.len()).await;
    assert_eq!(codes, vec![220, 250, 250, 550, 250, 354, 250, 221]);
    assert_eq!(groups, vec!["MAIL RCPT RCPT DATA"]);
    // One command per packet, waiting for nothing: the session answers each as it comes.
    let lockstep = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n";
    let (codes, _, groups) = drive_groups(lockstep, 1).await;
    assert_eq!(codes, vec![220, 250, 250]);
    assert_eq!(groups, vec!["MAIL"]);
}

#[tokio::test]
async fn a_refused_mail_takes_its_pipelined_commands_with_it() {
    let input = b"EHLO c\r\nMAIL FROM:<refused@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nQUIT\r\n";
    let (codes, log, groups) = drive_groups(input, input.len()).await;
    assert_eq!(codes, vec![220, 250, 550, 503, 503, 250, 250, 221]);
    assert_eq!(groups, vec!["MAIL RCPT DATA", "MAIL RCPT"]);
    assert!(!log.iter().any(|l| l.starts_with("DATA")), "{log:?}");
}

#[tokio::test]
async fn the_503s_behind_a_refused_mail_are_not_held_against_the_client() {
    // A pipelining client refused 12 times at MAIL for want of memory (more than
    // max_errors = 10) is still served: it sent its RCPT and DATA before it could hear.
    let budget = Budget::new(100 * 1024);
    let mut input = String::from("EHLO c\r\n");
    for _ in 0..12 {
        input += "MAIL FROM:<a@x.test> SIZE=200000\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";
    }
    input += "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let (codes, log, _) = drive_config(cfg_with(budget), input.as_bytes(), input.len()).await;
    let mut want = vec![220, 250];
    for _ in 0..12 {
        want.extend([452, 503, 503]);
    }
    want.extend([250, 250, 354, 250, 221]);
    assert_eq!(codes, want);
    assert!(log.iter().any(|l| l.starts_with("DATA")), "{log:?}");
    // RCPT with no MAIL ever sent is the client's own error: the 11th closes the session.
    let mut input = String::from("EHLO c\r\n");
    input += &"RCPT TO:<b@y.test>\r\n".repeat(12);
    let (codes, _, _) = drive_groups(input.as_bytes(), input.len()).await;
    assert_eq!(codes.last(), Some(&421), "{codes:?}");
    assert!(codes.len() < 14, "{codes:?}");
}

#[tokio::test]
async fn data_after_only_refused_recipients_gets_554_and_the_backend_is_reset() {
    let input =
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<bad@y.test>\r\nDATA\r\nRSET\r\nQUIT\r\n";
    let (codes, log, groups) = drive_groups(input, input.len()).await;
    assert_eq!(codes, vec![220, 250, 250, 550, 554, 250, 221]);
    assert_eq!(groups, vec!["MAIL RCPT DATA"]);
    // The backend said 354 to DATA: it is told that no message will follow.
    assert_eq!(log.last().map(String::as_str), Some("RESET"), "{log:?}");
}

#[tokio::test]
async fn refusals_given_here_keep_their_place_behind_the_groups_answers() {
    let input = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> FOO=1\r\nRCPT TO:<c@y.test>\r\nQUIT\r\n";
    let (codes, _, groups) = drive_groups(input, input.len()).await;
    assert_eq!(codes, vec![220, 250, 250, 555, 250, 221]);
    assert_eq!(groups, vec!["MAIL RCPT"]);
}

#[tokio::test]
async fn helo_is_accepted_and_extensions_are_not_offered() {
    let (codes, _) = drive(
        b"HELO old.client\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\nQUIT\r\n",
        7,
    )
    .await;
    assert_eq!(codes, vec![220, 250, 250, 250, 250, 221]);
}

#[tokio::test]
async fn starttls_and_auth_are_not_offered_yet() {
    let (codes, _) = drive(
        b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN AGEAYg==\r\nQUIT\r\n",
        100,
    )
    .await;
    assert_eq!(codes, vec![220, 250, 502, 502, 221]);
}

#[tokio::test]
async fn non_ascii_address_needs_smtputf8() {
    let input = "EHLO c\r\nMAIL FROM:<j\u{f6}rg@x.test>\r\nMAIL FROM:<j\u{f6}rg@x.test> SMTPUTF8\r\nRCPT TO:<\u{fc}@y.test>\r\nQUIT\r\n";
    let (codes, _) = drive(input.as_bytes(), 100).await;
    assert_eq!(codes, vec![220, 250, 553, 250, 250, 221]);
}

#[tokio::test]
async fn unknown_parameters_get_555() {
    let (codes, _) = drive(
        b"EHLO c\r\nMAIL FROM:<a@x.test> FOO=1\r\nMAIL FROM:<a@x.test> BODY=BINARYMIME\r\nQUIT\r\n",
        100,
    )
    .await;
    assert_eq!(codes, vec![220, 250, 555, 555, 221]);
}

#[tokio::test]
async fn client_that_vanishes_mid_data_resets_the_backend() {
    let (codes, log) = drive(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nSubject: half",
        5,
    )
    .await;
    assert_eq!(codes, vec![220, 250, 250, 250, 354]);
    assert_eq!(log.last().map(String::as_str), Some("RESET"), "{log:?}");
    assert!(!log.iter().any(|l| l.starts_with("DATA")));
}

#[tokio::test(start_paused = true)]
async fn idle_client_times_out_with_421() {
    let (client, server) = tokio::io::duplex(4096);
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let session = Session::new(
        server,
        peer,
        cfg(),
        Recorder {
            log: Log::default(),
            groups: Log::default(),
            room: 0,
        },
        Shutdown::never(),
        Shutdown::never(),
    );
    let task = tokio::spawn(session.run());
    let (mut r, _w) = tokio::io::split(client);
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("220 "), "{text}");
    assert!(text.contains("421 4.4.2"), "{text}");
    task.await.unwrap();
}
