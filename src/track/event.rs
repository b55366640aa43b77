//! The open event: one pixel load, as stored, listed by the admin API, printed by `tail --json`
//! and posted to webhooks. Its JSON form is the SPEC's, field for field.
//!
//! Also owns the one timestamp format pixelrelay shows: RFC 3339, UTC, milliseconds, `Z`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::classify::{Device, OpenKind};
use super::networks::Proxy;

/// The `type` of an event on the follow stream and in webhooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A pixel load.
    #[default]
    Open,
    /// A tracked link followed.
    Click,
}

impl EventType {
    /// `open` or `click`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Open => "open",
            EventType::Click => "click",
        }
    }
}

/// One recorded open (SPEC "The open event"), or a click: the same fields with `type`
/// `click`, the link's position and its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenEvent {
    /// `open` or `click` (both share the follow stream, the open log and webhooks).
    #[serde(rename = "type", default)]
    pub event_type: EventType,
    /// Time-ordered unique id (16 hex digits); also the cursor for listing and following.
    #[serde(default)]
    pub id: String,
    /// The message's id (32 hex digits).
    #[serde(default)]
    pub message: String,
    /// When the pixel was loaded, ms since the Unix epoch; RFC 3339 in JSON.
    #[serde(rename = "at", with = "rfc3339_ms")]
    pub at_ms: u64,
    /// Client IP (anonymised to /24 or /48 when `store.anonymize_ip`).
    pub ip: String,
    /// The request's User-Agent, as sent.
    pub user_agent: String,
    /// Mail client or browser name.
    pub client: String,
    /// Kind of reader.
    pub device: Device,
    /// A machine most likely made this load.
    pub machine: bool,
    /// Why `machine` is true (README "Opens" lists the reasons).
    pub machine_reason: Option<String>,
    /// The mail provider whose image proxy or relay fetched the pixel (`google`, `yahoo`,
    /// `microsoft`, `apple`); with `machine: false`, a person reading through it.
    #[serde(default)]
    pub proxy: Option<Proxy>,
    /// The loader's country (ISO 3166-1 alpha-2), with `tracking.country_db`.
    #[serde(default)]
    pub country: Option<String>,
    /// The first open (of a click: the first click) of this message.
    pub first: bool,
    /// Running count of opens (of a click: of clicks) of this message, this one included.
    pub count: u64,
    /// A click's link: its position among the tracked links of the HTML part (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u16>,
    /// A click's destination, as it was in the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The message's (single) recipient.
    #[serde(default)]
    pub recipient: String,
    /// The envelope sender.
    #[serde(default)]
    pub sender: String,
    /// The message's Message-ID header, if it had one.
    pub message_id: Option<String>,
    /// The subject, only when `store.subjects` is on.
    pub subject: Option<String>,
}

/// Serde adapter: a `u64` of ms since the epoch as an RFC 3339 string (`#[serde(with = ...)]`).
pub mod rfc3339_ms {
    use super::*;

    /// Writes `ms` as RFC 3339.
    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339_ms(*ms))
    }

    /// Reads RFC 3339 back into ms.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339_ms(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
    }
}

/// Serde adapter: an `Option<u64>` of ms as an RFC 3339 string or `null`.
pub mod rfc3339_ms_opt {
    use super::*;

    /// Writes `ms` as RFC 3339 or `null`.
    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_some(&format_rfc3339_ms(*ms)),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse_rfc3339_ms(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}"))),
        }
    }
}

impl OpenEvent {
    /// Person, proxied or machine.
    pub fn kind(&self) -> OpenKind {
        OpenKind::of(self.machine, self.proxy)
    }

    /// A click rather than an open.
    pub fn is_click(&self) -> bool {
        self.event_type == EventType::Click
    }
}

pub use crate::clock::{parse_rfc3339_ms, rfc3339_ms as format_rfc3339_ms};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_and_parse() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-24T04:06:23.123Z, the SPEC's example (checked with `date -u -d @1795493183`).
        assert_eq!(
            format_rfc3339_ms(1_795_493_183_123),
            "2026-11-24T04:06:23.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        for ms in [
            0,
            1,
            999,
            951_782_400_000,
            1_795_493_183_123,
            4_102_444_799_999,
        ] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
        for bad in [
            "2026-02-30T00:00:00.000Z",
            "2026-11-24T04:06:23Z",
            "2026-11-24 04:06:23.123Z",
            "x",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_has_exactly_the_spec_fields() {
        let e = OpenEvent {
            event_type: EventType::Open,
            id: "0001f3a2b4c5d6e7".into(),
            message: "00112233445566778899aabbccddeeff".into(),
            at_ms: 1_795_493_183_123,
            ip: "203.0.113.5".into(),
            user_agent: "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)".into(),
            client: "Gmail".into(),
            device: Device::Webmail,
            machine: false,
            machine_reason: None,
            proxy: Some(Proxy::Google),
            country: Some("DE".into()),
            first: false,
            count: 3,
            recipient: "bob@example.net".into(),
            sender: "news@example.com".into(),
            message_id: Some("<abc@example.com>".into()),
            subject: None,
            link: None,
            url: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "type",
            "proxy",
            "country",
            "id",
            "message",
            "at",
            "ip",
            "user_agent",
            "client",
            "device",
            "machine",
            "machine_reason",
            "first",
            "count",
            "recipient",
            "sender",
            "message_id",
            "subject",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["at"], "2026-11-24T04:06:23.123Z");
        assert_eq!(v["device"], "webmail");
        assert_eq!(v["subject"], serde_json::Value::Null);
        assert_eq!(v["machine_reason"], serde_json::Value::Null);
        assert_eq!(v["type"], "open");
        assert_eq!(v["proxy"], "google");
        assert_eq!(v["country"], "DE");
        let back: OpenEvent = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind(), OpenKind::Proxied);
        // Events stored before `type`, `proxy` and `country` existed still read.
        let mut old = v;
        for k in ["type", "proxy", "country"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let back: OpenEvent = serde_json::from_value(old).unwrap();
        assert_eq!(
            (back.proxy, back.country, back.event_type),
            (None, None, EventType::Open)
        );
    }
}
