//! Human-readable durations in configuration files: `"5s"`, `"500ms"`, `"1m 30s"`, `"1.5s"`
//! (jiff's "friendly" format; ISO 8601 such as `"PT5S"` is accepted too).
//!
//! Use with serde: `#[serde(with = "crate::daemon::duration")]` on a `Duration` field, or
//! [`option`] on an `Option<Duration>` field.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a non-negative duration such as `"5s"` or `"250ms"`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text.trim().parse().map_err(|e| {
        format!("invalid duration {text:?} (expected e.g. \"5s\" or \"500ms\"): {e}")
    })?;
    Duration::try_from(signed).map_err(|_| format!("duration {text:?} must not be negative"))
}

/// Formats a duration the way [`parse`] reads it (`"1m 30s"`, `"500ms"`).
pub fn format(duration: Duration) -> String {
    match jiff::SignedDuration::try_from(duration) {
        Ok(d) => format!("{d:#}"),
        Err(_) => format!("{}s", duration.as_secs()),
    }
}

/// serde `deserialize_with` for a `Duration` written as a string.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// serde `serialize_with` for a `Duration` written as a string.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// serde helpers for an `Option<Duration>` written as a string (use with `#[serde(default)]`).
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// serde `deserialize_with` for an optional duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// serde `serialize_with` for an optional duration.
    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => serializer.serialize_str(&super::format(*d)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_friendly_durations() {
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("PT2S").unwrap(), Duration::from_secs(2));
    }

    #[test]
    fn refuses_bare_numbers_and_negatives() {
        assert!(parse("5").unwrap_err().contains("\"5\""));
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("soon").is_err());
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_millis(500),
            Duration::from_secs(90),
            Duration::ZERO,
        ] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
