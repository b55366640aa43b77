//! The SMTP command parser on arbitrary bytes: never panics, and MAIL/RCPT parameters survive a
//! round trip through their wire form (what the relay sends upstream).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelrelay::smtp::command::{Command, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = parse(data) else { return };
    if let Command::Mail(p) | Command::Rcpt(p) = &cmd {
        let verb = if matches!(cmd, Command::Mail(_)) { "MAIL FROM:" } else { "RCPT TO:" };
        let line = format!("{verb}<{}>{}", p.address, p.params_wire());
        match parse(line.as_bytes()) {
            Ok(Command::Mail(q)) | Ok(Command::Rcpt(q)) => assert_eq!(&q, p, "{line}"),
            other => panic!("{line} reparsed as {other:?}"),
        }
        assert!(!line.contains('\r') && !line.contains('\n'), "no line break can reach the upstream");
    }
});
