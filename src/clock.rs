//! Wall-clock helpers: milliseconds since the epoch and the two date formats pixelrelay writes
//! (RFC 5322 in `Received:` headers, RFC 3339 in JSON). No time-zone database: always UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since 1970-01-01 UTC.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (year, month 1-12, day 1-31) of a day count since the epoch (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Splits epoch milliseconds into date and time parts.
fn parts(ms: u64) -> (i64, u32, u32, u64, u64, u64, u64, i64) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (y, mo, d) = civil(days);
    let rem = secs % 86_400;
    (
        y,
        mo,
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000,
        days,
    )
}

/// `2026-11-24T04:06:23.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let (y, mo, d, h, mi, s, frac, _) = parts(ms);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z");
    }
    // Digit by digit: every stored event and API answer prints several of these.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, u64::from(mo));
    put(8, 2, u64::from(d));
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 3, frac);
    String::from_utf8_lossy(&b).into_owned()
}

/// `Tue, 24 Nov 2026 04:06:23 +0000`.
pub fn rfc5322(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _, days) = parts(ms);
    let wd = DAYS[days.rem_euclid(7) as usize];
    let mon = MONTHS[(mo - 1) as usize];
    format!("{wd}, {d} {mon} {y} {h:02}:{mi:02}:{s:02} +0000")
}

/// `2026-11-24` (the day an event falls on, for per-day statistics).
pub fn day(ms: u64) -> String {
    let (y, mo, d, ..) = parts(ms);
    format!("{y:04}-{mo:02}-{d:02}")
}

/// Parses exactly the format [`rfc3339_ms`] writes.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 || y < 1970
    {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let out = (days as u64 * 86_400 + h * 3600 + mi * 60 + se) * 1000 + ms;
    // Reject dates like Feb 30 that do not round-trip.
    (rfc3339_ms(out) == s).then_some(out)
}

/// Howard Hinnant's `days_from_civil`: the inverse of `civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        // 2026-11-24T04:06:23.123Z, checked with `date -u -d @1795493183`.
        let ms = 1_795_493_183_123;
        assert_eq!(rfc3339_ms(ms), "2026-11-24T04:06:23.123Z");
        assert_eq!(rfc5322(ms), "Tue, 24 Nov 2026 04:06:23 +0000");
        assert_eq!(day(ms), "2026-11-24");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc5322(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn the_digit_by_digit_format_parses_back_across_four_centuries() {
        let mut ms = 0u64;
        while ms < 253_402_300_799_999 {
            assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms), "{ms}");
            ms += 86_399_999 * 7 + 1_234;
        }
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }
}
