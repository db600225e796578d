//! Secrets in configuration: kept out of `Debug`, `Display`, logs, events and metrics; [`redact`]
//! hides credentials in any text that leaves the daemon.

use serde::{Deserialize, Serialize};

/// A secret string (password, header value): `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, to hand to the protocol that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `text` with every credential hidden, for logs, errors and `/status`: the userinfo of each URL
/// in it (`rtsp://user:pass@cam/s` becomes `rtsp://***@cam/s`) and each of `secrets` (a password
/// that may also appear on its own, as in GStreamer's debug text). Works on any text: an error
/// message quoting a URL, a URL alone, text without URLs.
pub fn redact<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, query, fragment, a quote or a space.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\''))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    for secret in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
        out = out.replace(secret, "***");
    }
    out
}

/// `url` with any `user:password@` replaced by `***@`: [`redact`] without other secrets.
pub fn redact_url(url: &str) -> String {
    redact::<&str>(url, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_only() {
        assert_eq!(redact_url("http://a:b@h:80/p?q=1"), "http://***@h:80/p?q=1");
        assert_eq!(redact_url("http://h/p@x"), "http://h/p@x");
        assert_eq!(redact_url("rtsp://u@cam/stream"), "rtsp://***@cam/stream");
        assert_eq!(redact_url("no scheme"), "no scheme");
    }

    #[test]
    fn redacts_credentials_in_gstreamer_text() {
        let t =
            "Could not open rtsp://admin:hunter2@cam:554/s (rtspsrc.c:123) user admin pass hunter2";
        let r = redact(t, &["hunter2"]);
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("rtsp://***@cam:554/s"), "{r}");
        assert_eq!(redact::<&str>("no urls here", &[]), "no urls here");
        assert_eq!(redact::<&str>("http://h/p@x", &[]), "http://h/p@x");
    }

    #[test]
    fn redacts_every_url_and_keeps_the_rest() {
        let t = "a http://u:p@h/x?y=1 and \"rtsp://v@cam\" then ftp://plain/";
        assert_eq!(
            redact::<&str>(t, &[]),
            "a http://***@h/x?y=1 and \"rtsp://***@cam\" then ftp://plain/"
        );
        assert_eq!(redact("pass=pw pw", &["pw", ""]), "pass=*** ***");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
