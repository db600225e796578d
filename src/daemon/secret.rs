//! Secrets in configuration: kept out of `Debug`, `Display`, logs, events and metrics; [`redact`]
//! hides credentials in any text that leaves the daemon.
//!
//! Every secret of the configuration (a source's `password`, a webhook's `url` and header
//! values, an MQTT or NATS `password` or `token`) is written in one of three ways, so that a
//! configuration holding none can be world-readable:
//!
//! ```toml
//! password = "hunter2"                                 # in the file itself
//! password = { file = "/etc/clipfilter/cam1.password" } # a file of its own (mode 0600)
//! password = { credential = "cam1-password" }          # systemd: LoadCredential=cam1-password:...
//! ```
//!
//! A `file` is an absolute path; a `credential` is a file of `$CREDENTIALS_DIRECTORY`, where
//! systemd puts what `LoadCredential=` names. Either is read (a regular file, see
//! [`clipfilter::input`]) each time the configuration is loaded, one trailing new line removed.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

/// A secret string (password, header value): `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

/// The environment variable systemd sets to the folder of a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Plain(String),
            Elsewhere(Elsewhere),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Elsewhere {
            file: Option<std::path::PathBuf>,
            credential: Option<String>,
        }
        let from = match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a string, { file = \"/absolute/path\" } or { credential = \"name\" }",
            )
        })? {
            Raw::Plain(s) => return Ok(Secret(s)),
            Raw::Elsewhere(from) => from,
        };
        let path = match (from.file, from.credential) {
            (Some(file), None) if file.is_absolute() => file,
            (Some(file), None) => {
                return Err(serde::de::Error::custom(format!(
                    "{}: a secret's file must be an absolute path",
                    file.display()
                )));
            }
            (None, Some(name)) => credential_path(&name).map_err(serde::de::Error::custom)?,
            _ => {
                return Err(serde::de::Error::custom(
                    "give either `file` or `credential`",
                ));
            }
        };
        read_secret(&path).map_err(serde::de::Error::custom)
    }
}

/// The file of systemd credential `name`.
fn credential_path(name: &str) -> Result<std::path::PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("credential {name:?}: not a credential name"));
    }
    let dir = std::env::var_os(CREDENTIALS_DIRECTORY).ok_or_else(|| {
        format!(
            "credential {name:?}: ${CREDENTIALS_DIRECTORY} is not set (systemd sets it for a unit with LoadCredential={name}:/path/to/file)"
        )
    })?;
    Ok(Path::new(&dir).join(name))
}

/// The secret in the file at `path`, without one trailing new line.
fn read_secret(path: &Path) -> Result<Secret, String> {
    let mut text = clipfilter::input::read_to_string(path).map_err(|e| e.to_string())?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{}: the secret's file is empty", path.display()));
    }
    Ok(Secret(text))
}

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

/// Query parameters whose values are secrets, compared without case, also as the last word of
/// a longer name (`access_token`, `api_key`, `X-Amz-Signature`, `client_secret`).
pub const SECRET_PARAMETERS: [&str; 10] = [
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "key",
    "apikey",
    "secret",
    "auth",
    "signature",
];

/// Whether the query parameter `name` holds a secret (see [`SECRET_PARAMETERS`]).
pub fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let last = name.rsplit(['_', '-', '.']).next().unwrap_or_default();
    SECRET_PARAMETERS.iter().any(|s| name == *s || last == *s)
}

/// Where the `user[:password]@` of a URL ends: the index of its `@` in `rest`, what follows
/// `scheme://` (up to the end of the URL or of the text). A password may hold a raw `/`
/// (`admin:pa/ss@cam/x`): when the part before the first `/` has a `:` that does not start a
/// port, the userinfo runs to the last `@` before the query.
pub fn userinfo_end(rest: &str) -> Option<usize> {
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '?' | '#' | '<' | '>'))
        .unwrap_or(rest.len());
    let url = &rest[..end];
    let authority_end = url.find('/').unwrap_or(url.len());
    let authority = &url[..authority_end];
    if let Some(at) = authority.rfind('@') {
        return Some(at);
    }
    // `[v6]:port` has colons of its own.
    let host_port = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, port)| port),
        None => authority,
    };
    let (_, port) = host_port.split_once(':')?;
    if port.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    url.rfind('@')
}

/// `text` with every credential hidden, for logs, errors, events and `/status`: in each URL in
/// it, the userinfo (`rtsp://user:pa/ss@cam/s` becomes `rtsp://***@cam/s`) and the values of
/// secret query parameters (`?channel=1&password=x` becomes `?channel=1&password=***`, see
/// [`SECRET_PARAMETERS`]); and each of `secrets` wherever it appears (a password that may also
/// appear on its own, as in GStreamer's debug text). Works on any text: an error message
/// quoting a URL, a URL alone, text without URLs.
pub fn redact<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The URL ends at a space or a quote.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .unwrap_or(tail.len());
        redact_one(&tail[..end], &mut out);
        rest = &tail[end..];
    }
    out.push_str(rest);
    for secret in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
        out = out.replace(secret, "***");
    }
    out
}

/// One URL after its `scheme://`, redacted into `out`.
fn redact_one(url: &str, out: &mut String) {
    let url = match userinfo_end(url) {
        Some(at) => {
            out.push_str("***");
            &url[at..]
        }
        None => url,
    };
    let Some(q) = url.find('?') else {
        out.push_str(url);
        return;
    };
    out.push_str(&url[..=q]);
    let query_end = url[q + 1..].find('#').map_or(url.len(), |e| q + 1 + e);
    for part in url[q + 1..query_end].split_inclusive(['&', ';']) {
        let (pair, sep) = match part.strip_suffix(['&', ';']) {
            Some(pair) => (pair, &part[pair.len()..]),
            None => (part, ""),
        };
        match pair.split_once('=') {
            Some((name, _)) if is_secret_parameter(name) => {
                out.push_str(name);
                out.push_str("=***");
                out.push_str(sep);
            }
            _ => out.push_str(part),
        }
    }
    out.push_str(&url[query_end..]);
}

/// A log writer that passes each record through [`redact`] on its way to `W`: the last line of
/// defence for what libraries log at debug and trace level (request URLs with tokens).
/// `tracing-subscriber` writes each record with one `write_all`, so a URL is never split.
#[derive(Debug)]
pub struct RedactingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) if text.contains("://") => {
                self.0.write_all(redact::<&str>(text, &[]).as_bytes())?
            }
            _ => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `url` with its credentials hidden: [`redact`] without other secrets.
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
    fn redacts_any_userinfo_and_secret_parameters() {
        assert_eq!(
            redact_url("rtsp://admin:SLASH/PASS@host/x"),
            "rtsp://***@host/x"
        );
        assert_eq!(
            redact_url("rtsp://cam/x?channel=1&user=admin&password=QUERYPASS"),
            "rtsp://cam/x?channel=1&user=admin&password=***"
        );
        assert_eq!(
            redact_url("http://h/x?token=T;Pass=P&PWD=W&api_key=K&X-Amz-Signature=S&monkey=1#f"),
            "http://h/x?token=***;Pass=***&PWD=***&api_key=***&X-Amz-Signature=***&monkey=1#f"
        );
        assert_eq!(
            redact::<&str>(
                "failed: \"http://u:p/q@h/a?auth=A\" and http://h:80/p@x?secret=",
                &[]
            ),
            "failed: \"http://***@h/a?auth=***\" and http://h:80/p@x?secret=***"
        );
        // Not credentials: a port, an IPv6 host, an `@` in the path, parameters without value.
        for plain in [
            "http://h:8080/p@x",
            "http://[::1]:80/a@b",
            "http://h/x?keyframes&tokens=1",
        ] {
            assert_eq!(redact_url(plain), plain);
        }
        assert!(is_secret_parameter("Access_Token") && is_secret_parameter("SIGNATURE"));
        assert!(!is_secret_parameter("user") && !is_secret_parameter("channel"));
    }

    #[test]
    fn secrets_come_from_files() {
        #[derive(Deserialize)]
        struct T {
            password: Secret,
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cam.password");
        std::fs::write(&file, "SLASH/PASS\n").unwrap();
        let parse = |v: &str| toml::from_str::<T>(&format!("password = {v}"));
        assert_eq!(parse("\"inline\"").unwrap().password.expose(), "inline");
        let t = parse(&format!("{{ file = {:?} }}", file.display().to_string())).unwrap();
        assert_eq!(t.password.expose(), "SLASH/PASS");
        let e = parse("{ file = \"cam.password\" }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("absolute path"), "{e}");
        let e = parse("{ file = \"/dev/zero\" }").err().unwrap().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = parse("{ credential = \"a/b\" }").err().unwrap().to_string();
        assert!(e.contains("not a credential name"), "{e}");
        let e = parse("{ files = \"/x\" }").err().unwrap().to_string();
        assert!(e.contains("expected a string"), "{e}");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
