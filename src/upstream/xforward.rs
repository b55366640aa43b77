//! Postfix's `XFORWARD` (XFORWARD_README): before MAIL, a trusted client tells the server who
//! the original client was, so that the upstream's logs, `Received:` header and policies see
//! that client instead of pixelrelay. Sent only with `upstream.xforward` and only the
//! attributes the upstream lists after `XFORWARD` in its EHLO reply; the upstream accepts it
//! only from hosts in its `smtpd_authorized_xforward_hosts`.

use std::net::IpAddr;

/// Who the original client was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalClient<'a> {
    /// Its address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// What it said in HELO/EHLO, and whether that was EHLO.
    pub helo: Option<(&'a str, bool)>,
    /// pixelrelay's queue id of the transaction (the upstream logs it as the original one).
    pub queue_id: &'a str,
}

/// Longest command line sent (Postfix's limit for XFORWARD is the 512 of RFC 5321).
const MAX_LINE: usize = 500;

/// The `XFORWARD` command lines for `client`, with the attributes `offered` (upper case) only;
/// none when nothing offered applies. Attributes are split over several commands so that none
/// passes 512 octets.
pub fn commands(offered: &[String], client: &OriginalClient<'_>) -> Vec<String> {
    let has = |a: &str| offered.iter().any(|o| o == a);
    let addr = match client.addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPV6:{v6}"),
        },
    };
    let mut attrs: Vec<(&str, String)> = Vec::new();
    // No reverse lookup is made: the name is unknown, as Postfix says it.
    attrs.push(("NAME", "[UNAVAILABLE]".into()));
    attrs.push(("ADDR", addr));
    attrs.push(("PORT", client.port.to_string()));
    if let Some((helo, esmtp)) = client.helo {
        attrs.push(("PROTO", if esmtp { "ESMTP" } else { "SMTP" }.into()));
        attrs.push(("HELO", xtext(helo)));
    }
    attrs.push(("IDENT", xtext(client.queue_id)));
    attrs.push(("SOURCE", "REMOTE".into()));
    let mut out = Vec::new();
    let mut line = String::new();
    for (k, v) in attrs.into_iter().filter(|(k, _)| has(k)) {
        let attr = format!(" {k}={v}");
        if !line.is_empty() && line.len() + attr.len() > MAX_LINE {
            out.push(std::mem::take(&mut line));
        }
        if line.is_empty() {
            line.push_str("XFORWARD");
        }
        // A single attribute too long even alone (a 255-octet HELO xtext-encoded) is cut on
        // an encoded character's boundary.
        let room = MAX_LINE - line.len();
        let mut cut = attr.len().min(room);
        while attr[..cut].ends_with('+') || attr[..cut].len() >= 2 && attr[..cut - 1].ends_with('+')
        {
            cut -= 1;
        }
        line.push_str(&attr[..cut]);
    }
    if !line.is_empty() {
        out.push(line);
    }
    out
}

/// RFC 3461 xtext: `+XX` for `+`, `=`, and anything outside `!`..`~`.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<String> {
        ["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"]
            .map(str::to_string)
            .to_vec()
    }

    #[test]
    fn the_attributes_offered_in_one_command() {
        let c = OriginalClient {
            addr: "192.0.2.7".parse().unwrap(),
            port: 40123,
            helo: Some(("mail.example.com", true)),
            queue_id: "4AbC+1",
        };
        assert_eq!(
            commands(&all(), &c),
            vec![
                "XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40123 PROTO=ESMTP HELO=mail.example.com IDENT=4AbC+2B1 SOURCE=REMOTE"
            ]
        );
        let some = vec!["ADDR".to_string(), "HELO".to_string()];
        assert_eq!(
            commands(&some, &c),
            vec!["XFORWARD ADDR=192.0.2.7 HELO=mail.example.com"]
        );
        assert!(commands(&[], &c).is_empty());
    }

    #[test]
    fn ipv6_helo_less_and_hostile_values() {
        let c = OriginalClient {
            addr: "2001:db8::1".parse().unwrap(),
            port: 25,
            helo: None,
            queue_id: "Q",
        };
        let l = commands(&all(), &c);
        assert_eq!(l.len(), 1);
        assert!(l[0].contains(" ADDR=IPV6:2001:db8::1 "), "{l:?}");
        assert!(!l[0].contains("PROTO") && !l[0].contains("HELO"), "{l:?}");
        let mapped = OriginalClient {
            addr: "::ffff:192.0.2.9".parse().unwrap(),
            ..c.clone()
        };
        assert!(commands(&all(), &mapped)[0].contains(" ADDR=192.0.2.9 "));
        // A HELO with spaces, `=`, CR LF and 300 octets: encoded, never a new command line.
        let evil = format!("a b=c\r\nMAIL FROM:<x>{}", "z".repeat(600));
        let c = OriginalClient {
            helo: Some((&evil, false)),
            ..c
        };
        let l = commands(&all(), &c);
        assert!(l.len() >= 2, "{l:?}");
        for line in &l {
            assert!(line.starts_with("XFORWARD "), "{line}");
            assert!(line.len() <= MAX_LINE, "{}", line.len());
            assert!(!line.contains(['\r', '\n']), "{line}");
            assert_eq!(
                line.matches(' ').count(),
                line.matches('=').count(),
                "{line}"
            );
        }
        assert!(l.concat().contains("HELO=a+20b+3Dc+0D+0AMAIL"), "{l:?}");
    }
}
