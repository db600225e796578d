//! Times as users write them for `--since`, `--until` and `keep`: an age (`"24h"`, `"7d"`,
//! `"1h 30m"`, `"2w"`; days are 24 hours), an RFC 3339 instant (`2026-11-28T12:00:00Z`), a local
//! date and time (`2026-11-28 12:00`, `2026-11-28`), or `now`.

use std::time::Duration;

/// Parses an age such as `"7d"` or `"90m"` (jiff's friendly format, days of 24 hours).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let span: jiff::Span = t.parse().map_err(|e| {
        format!("`{t}` is not a duration (expected e.g. \"24h\", \"7d\" or \"90m\"): {e}")
    })?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("`{t}`: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("`{t}` must not be negative"))
}

/// Parses a point in time (see the module documentation) into ms since the Unix epoch; ages
/// count back from `now_ms`.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty time".into());
    }
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    let civil = t.parse::<jiff::civil::DateTime>().or_else(|_| {
        t.parse::<jiff::civil::Date>()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    });
    if let Ok(dt) = civil {
        return dt
            .to_zoned(jiff::tz::TimeZone::system())
            .map(|z| z.timestamp().as_millisecond())
            .map_err(|e| format!("`{t}`: {e}"));
    }
    match parse_age(t) {
        Ok(age) => Ok(now_ms - age.as_millis() as i64),
        Err(_) => Err(format!(
            "`{t}` is neither an age (\"24h\", \"7d\") nor a time (\"2026-11-28T12:00:00Z\", \"2026-11-28 12:00\")"
        )),
    }
}

/// RFC 3339 text of a time in ms since the Unix epoch.
pub fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_times() {
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_age("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(14 * 86400));
        assert!(parse_age("soon").is_err());
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("2026-11-28T12:00:00Z", now).unwrap(),
            1_795_867_200_000
        );
        assert!(parse_time("2026-11-28 12:00", now).is_ok());
        assert!(parse_time("2026-11-28", now).is_ok());
        let e = parse_time("yesterday-ish", now).unwrap_err();
        assert!(e.contains("neither an age"), "{e}");
        assert_eq!(format_ms(1_795_867_200_000), "2026-11-28T12:00:00Z");
    }
}
