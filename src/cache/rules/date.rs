//! HTTP-date (RFC 9110 §5.6.7): parsing the three historic forms, formatting IMF-fixdate.
//!
//! Parsing is tolerant in what does not change the meaning (surrounding whitespace, letter case
//! of day and month names, single-digit days) and strict in what does: every field is checked
//! against its range and anything else is `None`. Callers treat `None` by the rule of the header
//! it came from (an invalid Expires means "already expired", an invalid If-Modified-Since is
//! ignored).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const LONG_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses an HTTP-date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) or asctime (`Sun Nov  6 08:49:37 1994`).
///
/// RFC 850 two-digit years are read as 1970–2069. RFC 9110 asks for "not more than 50 years in
/// the future", which needs the clock; this module never reads it, and the fixed window gives
/// the same answer until 2020 + 50.
pub fn parse_http_date(value: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let secs = match s.split_once(',') {
        Some((day, rest)) => {
            if !is_day_name(day) {
                return None;
            }
            parse_imf_or_rfc850(rest.trim_start_matches([' ', '\t']))?
        }
        None => parse_asctime(s)?,
    };
    unix_to_system(secs)
}

/// Formats as IMF-fixdate, the only form a sender may generate. Times outside years 0–9999 are
/// clamped to that range so the output always has the fixed length.
pub fn fmt_http_date(t: SystemTime) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = system_to_unix(t).clamp(MIN, MAX);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[weekday],
        d,
        MONTHS[(m - 1) as usize],
        y,
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// The IMF-fixdate of `t` as a header value.
pub fn http_date_value(t: SystemTime) -> HeaderValue {
    // Always ASCII letters, digits, spaces, ':' and ','; the fallback is unreachable in practice
    // but keeps this free of unwrap.
    HeaderValue::from_str(&fmt_http_date(t)).unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// Adds `Date: <response_time>` when the response has no valid Date, as RFC 9110 §6.6.1 asks of
/// a recipient with a clock that caches a message. Age and Expires arithmetic in this module
/// rely on a stored response carrying a Date; call this before storing and before
/// [`merge_304`](super::merge_304).
pub fn ensure_date(headers: &mut HeaderMap, response_time: SystemTime) {
    let valid = headers
        .get(header::DATE)
        .and_then(|v| parse_http_date(v.as_bytes()))
        .is_some();
    if !valid {
        headers.insert(header::DATE, http_date_value(response_time));
    }
}

/// The first Date field, when it is a valid HTTP-date.
pub(super) fn date_of(headers: &HeaderMap) -> Option<SystemTime> {
    headers.get(header::DATE).and_then(|v| parse_http_date(v.as_bytes()))
}

fn is_day_name(s: &str) -> bool {
    DAYS.iter().chain(LONG_DAYS.iter()).any(|d| d.eq_ignore_ascii_case(s))
}

fn month(s: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as u32 + 1)
}

/// `06 Nov 1994 08:49:37 GMT` or `06-Nov-94 08:49:37 GMT`.
fn parse_imf_or_rfc850(s: &str) -> Option<i64> {
    let mut parts = s.split_ascii_whitespace();
    let first = parts.next()?;
    let (day, mon, year) = if first.contains('-') {
        let mut dmy = first.split('-');
        let (d, m, y) = (dmy.next()?, dmy.next()?, dmy.next()?);
        if dmy.next().is_some() {
            return None;
        }
        (d, m, y)
    } else {
        (first, parts.next()?, parts.next()?)
    };
    let time = parts.next()?;
    let zone = parts.next()?;
    if !zone.eq_ignore_ascii_case("GMT") || parts.next().is_some() {
        return None;
    }
    let year = match year.len() {
        2 => {
            let yy = digits(year, 2)?;
            if yy >= 70 {
                1900 + yy
            } else {
                2000 + yy
            }
        }
        4 => digits(year, 4)?,
        _ => return None,
    };
    to_unix(year, month(mon)?, digits(day, 2)?, time)
}

/// `Nov  6 08:49:37 1994` after the day name.
fn parse_asctime(s: &str) -> Option<i64> {
    let mut parts = s.split_ascii_whitespace();
    if !is_day_name(parts.next()?) {
        return None;
    }
    let mon = month(parts.next()?)?;
    let day = digits(parts.next()?, 2)?;
    let time = parts.next()?;
    let year = parts.next()?;
    if year.len() != 4 || parts.next().is_some() {
        return None;
    }
    to_unix(digits(year, 4)?, mon, day, time)
}

fn to_unix(year: i64, month: u32, day: i64, time: &str) -> Option<i64> {
    let mut hms = time.split(':');
    let (h, m, s) = (
        digits(hms.next()?, 2)?,
        digits(hms.next()?, 2)?,
        digits(hms.next()?, 2)?,
    );
    // Second 60 is a leap second, which HTTP-date allows.
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day as u32) * 86_400 + h * 3600 + m * 60 + s)
}

/// 1 to `max` ASCII digits.
fn digits(s: &str, max: usize) -> Option<i64> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(year: i64, month: u32) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm: exact for
/// every year, no tables).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn unix_to_system(secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// Whole seconds since the epoch, rounded down (also before 1970).
fn system_to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -(whole.saturating_add(i64::from(d.subsec_nanos() > 0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> SystemTime {
        unix_to_system(secs).unwrap()
    }

    #[test]
    fn the_three_forms_parse_to_the_same_instant() {
        let want = Some(at(784_111_777));
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  sun, 06 nov 1994 08:49:37 gmt\t",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(s.as_bytes()), want, "{s}");
        }
    }

    #[test]
    fn invalid_dates_are_none() {
        for s in [
            "",
            "0",
            "-1",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 19945 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94-1 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov  6 08:49 1994",
        ] {
            assert_eq!(parse_http_date(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(parse_http_date(&[0xff, 0xfe]), None);
    }

    #[test]
    fn two_digit_years_fall_in_1970_to_2069() {
        let y69 = parse_http_date(b"Monday, 01-Jan-69 00:00:00 GMT").unwrap();
        let y70 = parse_http_date(b"Thursday, 01-Jan-70 00:00:00 GMT").unwrap();
        assert_eq!(fmt_http_date(y69), "Tue, 01 Jan 2069 00:00:00 GMT");
        assert_eq!(y70, UNIX_EPOCH);
    }

    #[test]
    fn formatting_is_imf_fixdate_and_round_trips() {
        let table: &[(i64, &str)] = &[
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
            (-1, "Wed, 31 Dec 1969 23:59:59 GMT"),
            (-2_208_988_800, "Mon, 01 Jan 1900 00:00:00 GMT"),
        ];
        for &(secs, s) in table {
            assert_eq!(fmt_http_date(at(secs)), s);
            assert_eq!(parse_http_date(s.as_bytes()), Some(at(secs)), "{s}");
        }
        // Sub-second parts are dropped, rounding down.
        assert_eq!(
            fmt_http_date(at(10) + Duration::from_millis(999)),
            "Thu, 01 Jan 1970 00:00:10 GMT"
        );
    }

    #[test]
    fn every_day_for_four_centuries_round_trips() {
        let mut days = days_from_civil(1800, 1, 1);
        while days < days_from_civil(2200, 1, 1) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            days += 1;
        }
    }

    #[test]
    fn ensure_date_adds_a_missing_or_invalid_date_only() {
        let mut h = HeaderMap::new();
        ensure_date(&mut h, at(784_111_777));
        assert_eq!(h[header::DATE], "Sun, 06 Nov 1994 08:49:37 GMT");
        ensure_date(&mut h, at(0));
        assert_eq!(h[header::DATE], "Sun, 06 Nov 1994 08:49:37 GMT", "a valid Date is kept");
        h.insert(header::DATE, HeaderValue::from_static("yesterday"));
        ensure_date(&mut h, at(0));
        assert_eq!(h[header::DATE], "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
