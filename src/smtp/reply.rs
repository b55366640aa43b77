//! Every SMTP reply pixelrelay makes up itself, in one place, plus the type that carries
//! replies relayed from the upstream.
//!
//! Errors *are* replies (the go-smtp model): code paths return a `Reply` and the session writes
//! it. Upstream replies pass through `Reply::from_upstream`, which replaces non-printable
//! characters (Postfix's `smtpd_proxy` does the same) so a hostile upstream cannot inject
//! control bytes or extra lines into the client's stream.

use std::fmt::Write as _;

/// One SMTP reply: a code and one or more text lines (the enhanced status code, when there is
/// one, is the start of the first line's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Text lines, without code or CRLF. Never empty.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// "2xx", "4xx", "5xx" or "other": the class used in logs and metrics.
    pub fn class(&self) -> &'static str {
        match self.code / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        }
    }

    /// Wire form: `code-line` for all lines but the last, `code line` for the last, CRLF each.
    pub fn to_wire(&self) -> String {
        let mut out = String::with_capacity(self.lines.iter().map(|l| l.len() + 6).sum());
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let _ = write!(out, "{}{}{}\r\n", self.code, sep, line);
        }
        out
    }

    /// The reply on one line for logs: `250 2.0.0 Ok: queued as X`.
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }

    /// A reply received from the upstream, made safe to pass to the client: control and
    /// non-ASCII bytes become `?`, overlong lines are cut, and a code outside 200..=599 (or a
    /// malformed one) becomes a temporary failure of our own.
    pub fn from_upstream(code: u16, lines: &[Vec<u8>]) -> Reply {
        if !(200..=599).contains(&code) {
            return upstream_protocol_error();
        }
        let lines: Vec<String> = lines
            .iter()
            .take(32)
            .map(|l| {
                l.iter()
                    .take(510)
                    .map(|&b| {
                        if (0x20..0x7f).contains(&b) {
                            b as char
                        } else {
                            '?'
                        }
                    })
                    .collect()
            })
            .collect();
        if lines.is_empty() {
            return Reply::new(code, "");
        }
        Reply { code, lines }
    }
}

macro_rules! replies {
    ($($(#[$doc:meta])* $name:ident => $code:expr, $text:expr;)*) => {
        $($(#[$doc])* pub fn $name() -> Reply { Reply::new($code, $text) })*
    };
}

replies! {
    /// QUIT.
    bye => 221, "2.0.0 Bye";
    /// NOOP, RSET and other plain successes.
    ok => 250, "2.0.0 Ok";
    /// MAIL accepted locally (capture mode, or a client that will be refused at RCPT).
    sender_ok => 250, "2.1.0 Ok";
    /// RCPT accepted locally (capture mode).
    rcpt_ok => 250, "2.1.5 Ok";
    /// DATA go-ahead.
    start_data => 354, "End data with <CR><LF>.<CR><LF>";
    /// VRFY: never confirms or denies an address.
    vrfy => 252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery";
    /// EXPN is not offered.
    expn_disabled => 502, "5.5.1 EXPN not available";
    /// Command we recognise but do not implement (BDAT, TURN, ...).
    not_implemented => 502, "5.5.1 Command not implemented";
    /// Unknown verb.
    unknown_command => 500, "5.5.2 Error: command not recognized";
    /// Command line longer than the limit.
    line_too_long => 500, "5.5.2 Error: line too long";
    /// Commands out of order.
    need_helo => 503, "5.5.1 Error: send HELO/EHLO first";
    /// MAIL inside a transaction.
    nested_mail => 503, "5.5.1 Error: nested MAIL command";
    /// RCPT before MAIL.
    need_mail => 503, "5.5.1 Error: need MAIL command";
    /// DATA before any RCPT.
    need_rcpt => 503, "5.5.1 Error: need RCPT command";
    /// DATA when the upstream accepted no RCPT.
    no_valid_recipients => 554, "5.5.1 Error: no valid recipients";
    /// Bad address or parameter syntax.
    bad_mail_syntax => 501, "5.5.4 Syntax: MAIL FROM:<address>";
    /// Bad RCPT syntax.
    bad_rcpt_syntax => 501, "5.5.4 Syntax: RCPT TO:<address>";
    /// HELO/EHLO without a name.
    bad_helo_syntax => 501, "5.5.4 Syntax: EHLO hostname";
    /// An ESMTP parameter we do not support.
    bad_parameter => 555, "5.5.4 Unsupported option";
    /// A non-ASCII address without SMTPUTF8.
    need_smtputf8 => 553, "5.6.7 Must declare SMTPUTF8 to send non-ASCII addresses";
    /// Too many recipients in one transaction.
    too_many_recipients => 452, "4.5.3 Error: too many recipients";
    /// SIZE or actual size over the limit.
    message_too_big => 552, "5.3.4 Error: message file too big";
    /// The memory budget for messages in flight (`smtp.max_inflight_bytes`) has no room now.
    insufficient_storage => 452, "4.3.1 Insufficient system storage";
    /// Bare LF or CR in DATA with `smtp.bare_newline = "reject"`.
    bare_newline => 550, "5.5.2 Error: bare <CR> or <LF> received";
    /// A client outside `smtp.allow_networks` that has not authenticated.
    relay_denied => 554, "5.7.1 Relay access denied";
    /// Too many protocol errors.
    too_many_errors => 421, "4.7.0 Error: too many errors";
    /// Global or per-IP connection limit.
    too_many_connections => 421, "4.7.0 Error: too many connections";
    /// The client was silent for too long.
    timeout => 421, "4.4.2 Error: timeout exceeded";
    /// Shutting down.
    shutting_down => 421, "4.3.2 Service shutting down, try again later";
    /// The upstream could not be reached or failed mid-transaction.
    upstream_unavailable => 451, "4.4.1 Upstream server unavailable, try again later";
    /// The upstream did not answer in time.
    upstream_timeout => 451, "4.4.2 Upstream server timed out, try again later";
    /// The upstream's answer made no sense.
    upstream_protocol_error => 451, "4.5.0 Upstream protocol error, try again later";
    /// MAIL before STARTTLS with `smtp.tls.required`.
    need_starttls => 530, "5.7.0 Must issue a STARTTLS command first";
    /// STARTTLS go-ahead.
    ready_for_tls => 220, "2.0.0 Ready to start TLS";
    /// STARTTLS twice.
    already_tls => 503, "5.5.1 Error: TLS already active";
    /// STARTTLS or AUTH inside a transaction.
    not_in_transaction => 503, "5.5.1 Error: not allowed during a mail transaction";
    /// AUTH without TLS.
    encryption_required => 538, "5.7.11 Encryption required for requested authentication mechanism";
    /// AUTH twice.
    already_authenticated => 503, "5.5.1 Error: already authenticated";
    /// Unknown AUTH mechanism.
    auth_mechanism => 504, "5.5.4 Unrecognized authentication type";
    /// AUTH answer that is not base64.
    auth_bad_base64 => 501, "5.5.2 Cannot decode response";
    /// Client cancelled AUTH with `*`.
    auth_cancelled => 501, "5.7.0 Authentication cancelled";
    /// AUTH accepted.
    auth_ok => 235, "2.7.0 Authentication successful";
    /// AUTH refused.
    auth_failed => 535, "5.7.8 Authentication credentials invalid";
    /// Local failure (capture folder unwritable, a bug caught at run time).
    local_error => 451, "4.3.0 Local error in processing, try again later";
}

/// The greeting: `220 host ESMTP pixelrelay`.
pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, format!("{hostname} ESMTP pixelrelay"))
}

/// HELO reply.
pub fn helo(hostname: &str) -> Reply {
    Reply::new(250, hostname.to_string())
}

/// HELP reply.
pub fn help() -> Reply {
    Reply {
        code: 214,
        lines: vec![
            "2.0.0 pixelrelay: SMTP relay with open tracking".into(),
            "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP".into(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_single_and_multi_line() {
        assert_eq!(ok().to_wire(), "250 2.0.0 Ok\r\n");
        assert_eq!(
            help().to_wire(),
            format!("214-{}\r\n214 {}\r\n", help().lines[0], help().lines[1])
        );
    }

    #[test]
    fn upstream_text_is_sanitised() {
        let r = Reply::from_upstream(550, &[b"5.1.1 no\r\x1b[31m such \xffuser".to_vec()]);
        assert_eq!(r.lines, vec!["5.1.1 no??[31m such ?user".to_string()]);
        assert_eq!(Reply::from_upstream(354, &[b"go".to_vec()]).code, 354);
        assert_eq!(Reply::from_upstream(199, &[b"x".to_vec()]).code, 451);
        assert_eq!(Reply::from_upstream(600, &[]).code, 451);
    }
}
