//! What the upstream offers in its EHLO reply, and which MAIL/RCPT parameters that lets
//! through.

use crate::smtp::reply::Reply;

/// What the upstream said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// SIZE.
    pub size: bool,
    /// 8BITMIME.
    pub eight_bit: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// DSN.
    pub dsn: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// AUTH mechanisms, upper case.
    pub auth: Vec<String>,
    /// XFORWARD attributes offered (Postfix), upper case.
    pub xforward: Vec<String>,
}

impl Extensions {
    pub(super) fn parse(r: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in r.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "SIZE" => e.size = true,
                "8BITMIME" => e.eight_bit = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "DSN" => e.dsn = true,
                "STARTTLS" => e.starttls = true,
                "PIPELINING" => e.pipelining = true,
                "AUTH" => e.auth = words.map(str::to_ascii_uppercase).collect(),
                "XFORWARD" => e.xforward = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        e
    }

    /// Whether the upstream understands MAIL/RCPT parameter `key`. SMTPUTF8 is always passed:
    /// dropping it would misrepresent the message, and the upstream's refusal is the right answer.
    pub fn allows_param(&self, key: &str) -> bool {
        match key {
            "SIZE" => self.size,
            "BODY" => self.eight_bit,
            "RET" | "ENVID" | "NOTIFY" | "ORCPT" => self.dsn,
            _ => true,
        }
    }
}
