//! Where a pipeline's video comes from: the `source` (or `launch`) of a `[[pipeline]]` table and
//! the options that go with it, validated into a [`Source`].
//!
//! | `source` | read by |
//! |---|---|
//! | `rtsp://host/path` (also `rtsps`, `rtspt`, `rtspu`) | `rtspsrc` (transport, latency, credentials) |
//! | `file:///abs/path.mp4` or a plain path (relative to the config's folder) | `filesrc`; `loop = true` loops |
//! | `v4l2:///dev/video0` | `v4l2src` |
//! | `http(s)://...` (HLS playlists, progressive files) | `souphttpsrc` (+ `hlsdemux`) |
//! | any other URI a GStreamer source element handles (`srt://`, `udp://`, ...) | that element |
//! | `launch = "..."` | the gst-launch description |
//!
//! Credentials are taken out of URLs and kept apart ([`SourceOptions`]), so the location GStreamer
//! logs and puts in its error messages carries no password; everything shown to people goes
//! through [`Source::display`]. `crate::daemon::source` builds the GStreamer elements.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use super::raw::RawPipeline;
use super::{CONFIG_DIR, Ctx};
use crate::daemon::paths;
use crate::daemon::secret::{Secret, redact_url, userinfo_end};
use clipfilter::error::Result;

/// The family of a source, which decides its options and its supervision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Rtsp,
    File,
    V4l2,
    Http,
    /// Another URI scheme that a GStreamer source element handles.
    Uri,
    /// A gst-launch description.
    Launch,
}

impl SourceKind {
    /// A phrase for messages: "rtsp:// sources".
    pub fn describe(self) -> &'static str {
        match self {
            SourceKind::Rtsp => "rtsp:// sources",
            SourceKind::File => "file sources",
            SourceKind::V4l2 => "v4l2:// sources",
            SourceKind::Http => "http(s):// sources",
            SourceKind::Uri => "other URI sources",
            SourceKind::Launch => "launch descriptions",
        }
    }

    /// Whether the source produces video in real time by itself (cameras, streams): an end of
    /// stream from it is a failure.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SourceKind::Rtsp | SourceKind::V4l2 | SourceKind::Http | SourceKind::Uri
        )
    }
}

/// RTSP lower transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection (works through NAT and firewalls).
    Tcp,
    /// RTP over UDP.
    Udp,
    /// UDP, then TCP if UDP fails (rtspsrc's default).
    Auto,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "tcp" => Ok(Transport::Tcp),
            "udp" => Ok(Transport::Udp),
            "auto" => Ok(Transport::Auto),
            other => Err(format!("`{other}`: expected tcp, udp or auto")),
        }
    }
}

/// Per-source settings from the `[[pipeline]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOptions {
    /// RTSP transport (default TCP).
    pub transport: Option<Transport>,
    /// RTSP jitter-buffer latency (default: rtspsrc's).
    pub latency: Option<Duration>,
    /// User name for RTSP or HTTP (given as a field, or taken out of the URL).
    pub username: Option<String>,
    /// Password for RTSP or HTTP.
    pub password: Option<Secret>,
    /// Files: start again at the end.
    pub looping: bool,
    /// Files and launch descriptions: play at the media's speed (as a camera would).
    pub realtime: bool,
    /// Drop every frame that is not a key frame before the decoder.
    pub keyframes_only: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            transport: None,
            latency: None,
            username: None,
            password: None,
            looping: false,
            realtime: true,
            keyframes_only: false,
        }
    }
}

/// A pipeline's source, validated. `Debug` shows it as [`Source::display`] does.
#[derive(Clone, PartialEq)]
pub struct Source {
    kind: SourceKind,
    /// The URI without credentials, or the launch description.
    location: String,
    /// Whether the URL as written carried `user[:password]@`.
    userinfo: bool,
    pub options: SourceOptions,
}

/// Splits `user[:password]@` out of a URL: (URL without it, user, password).
fn split_userinfo(url: &str) -> (String, Option<(String, Option<String>)>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = userinfo_end(rest) else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (unescape(u), Some(unescape(p))),
        None => (unescape(userinfo), None),
    };
    (
        format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        Some((user, password)),
    )
}

/// Whether some GStreamer source element reads URIs of `scheme`.
pub fn scheme_supported(scheme: &str) -> bool {
    if gst::init().is_err() {
        return false;
    }
    gst::ElementFactory::factories_with_type(gst::ElementFactoryType::SRC, gst::Rank::NONE)
        .iter()
        .any(|f| {
            f.uri_type() == gst::URIType::Src
                && f.uri_protocols()
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(scheme))
        })
}

impl Source {
    /// Parses a `source` value: a URI, or a file path (relative to `base`). The message of the
    /// error never contains the credentials.
    pub fn parse(text: &str, base: &Path) -> std::result::Result<Source, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the source is empty".into());
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            // A path.
            let path = paths::resolve(base, Path::new(text));
            let uri = gst::glib::filename_to_uri(&path, None)
                .map_err(|e| format!("cannot make a file URI of {}: {e}", path.display()))?;
            return Ok(Source::new(SourceKind::File, uri.to_string(), false));
        };
        let scheme_lc = scheme.to_ascii_lowercase();
        if scheme_lc.is_empty()
            || !scheme_lc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(format!("`{scheme}` is not a URI scheme"));
        }
        let (location, userinfo) = split_userinfo(text);
        let kind = match scheme_lc.as_str() {
            "rtsp" | "rtsps" | "rtspt" | "rtspu" | "rtsph" => SourceKind::Rtsp,
            "http" | "https" => SourceKind::Http,
            "file" => {
                if userinfo.is_some() {
                    return Err("a file URI has no credentials".into());
                }
                if !rest.starts_with('/') {
                    return Err(
                        "a file URI needs an absolute path (file:///path); write a relative path without file://"
                            .into(),
                    );
                }
                gst::glib::filename_from_uri(text)
                    .map_err(|e| format!("not a usable file URI: {e}"))?;
                SourceKind::File
            }
            "v4l2" => {
                if !rest.starts_with("/dev/") {
                    return Err("expected a device such as v4l2:///dev/video0".into());
                }
                SourceKind::V4l2
            }
            other => {
                if !scheme_supported(other) {
                    return Err(format!(
                        "unknown source scheme `{other}://`: no GStreamer source element reads it (use rtsp://, file://, v4l2://, http(s)://, a file path, or `launch`)"
                    ));
                }
                SourceKind::Uri
            }
        };
        let mut source = Source::new(kind, location, userinfo.is_some());
        if let Some((user, password)) = userinfo {
            source.options.username = Some(user);
            source.options.password = password.map(Secret::new);
        }
        Ok(source)
    }

    /// A source from a gst-launch description.
    pub fn launch(description: &str) -> Source {
        Source::new(SourceKind::Launch, description.trim().to_owned(), false)
    }

    fn new(kind: SourceKind, location: String, userinfo: bool) -> Source {
        Source {
            kind,
            location,
            userinfo,
            options: SourceOptions::default(),
        }
    }

    /// The family of the source.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// The URI without credentials (or the launch description).
    pub fn uri(&self) -> &str {
        &self.location
    }

    /// Whether the URL as written carried credentials.
    pub fn has_userinfo(&self) -> bool {
        self.userinfo
    }

    /// What logs, events, metrics and `/status` show: the URI with `***@` where credentials
    /// are and secret query parameters hidden (`?token=***`), or the launch description.
    pub fn display(&self) -> String {
        match self.location.find("://") {
            Some(i) if self.options.username.is_some() => redact_url(&format!(
                "{}***@{}",
                &self.location[..i + 3],
                &self.location[i + 3..]
            )),
            _ => redact_url(&self.location),
        }
    }

    /// An end of stream is a failure (restart with backoff) rather than the end of the work.
    pub fn eos_is_failure(&self) -> bool {
        self.kind.is_live()
    }

    /// Whether the sink should synchronise on the clock (files and launch descriptions played
    /// as if live; live sources are paced by themselves).
    pub fn sync(&self) -> bool {
        match self.kind {
            SourceKind::File | SourceKind::Launch => self.options.realtime,
            SourceKind::Http => true,
            _ => false,
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("kind", &self.kind)
            .field("location", &self.display())
            .field("options", &self.options)
            .finish()
    }
}

/// The `source` (or `launch`) of a `[[pipeline]]` table with the options that go with it; `at`
/// names a field of that table (`pipeline[2].transport`). Records every problem in `cx`.
pub(super) fn source(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Option<Source> {
    let mut source = cx.keep(location(cx, p, at))?;
    options(cx, p, at, &mut source);
    source.options.keyframes_only = p.keyframes_only;
    Some(source)
}

/// `source` or `launch`: where the video comes from.
fn location(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String) -> Result<Source> {
    match (&p.source, &p.launch) {
        (Some(s), None) => Source::parse(s.get_ref(), cx.base()).map_err(|m| {
            cx.err(
                Some(s.span()),
                at("source"),
                format!("{}: {m}", redact_url(s.get_ref())),
            )
        }),
        (None, Some(l)) if l.get_ref().trim().is_empty() => {
            Err(cx.err(Some(l.span()), at("launch"), "must not be empty"))
        }
        (None, Some(l)) => Ok(Source::launch(
            &l.get_ref()
                .replace(CONFIG_DIR, &cx.base().display().to_string()),
        )),
        (Some(s), Some(_)) => Err(cx.err(
            Some(s.span()),
            at("source"),
            "give `source` or `launch`, not both",
        )),
        (None, None) => Err(cx.err(
            Some(p.name.span()),
            at("source"),
            "a pipeline needs a `source` (a URI or a file path) or a `launch` description",
        )),
    }
}

/// The options that apply to some kinds of source only, each checked on its own.
fn options(cx: &Ctx<'_>, p: &RawPipeline, at: &dyn Fn(&str) -> String, source: &mut Source) {
    let kind = source.kind();
    let applies = |field: &str, span: Range<usize>, kinds: &[SourceKind], what: &str| {
        let ok = kinds.contains(&kind);
        if !ok {
            cx.problem(
                Some(span),
                at(field),
                format!(
                    "`{field}` applies to {what} sources only, not to {}",
                    kind.describe()
                ),
            );
        }
        ok
    };
    const RTSP: &[SourceKind] = &[SourceKind::Rtsp];
    const WITH_CREDENTIALS: &[SourceKind] = &[SourceKind::Rtsp, SourceKind::Http];
    if let Some(t) = &p.transport
        && applies("transport", t.span(), RTSP, "rtsp://")
    {
        source.options.transport = cx.keep(
            t.get_ref()
                .parse::<Transport>()
                .map_err(|m| cx.err(Some(t.span()), at("transport"), m)),
        );
    }
    if let Some(l) = &p.latency
        && applies("latency", l.span(), RTSP, "rtsp://")
    {
        source.options.latency = cx.keep(cx.duration(l, &at("latency")));
    }
    if let Some(u) = &p.username
        && applies(
            "username",
            u.span(),
            WITH_CREDENTIALS,
            "rtsp:// and http(s)://",
        )
    {
        if source.has_userinfo() {
            cx.problem(
                Some(u.span()),
                at("username"),
                "the source URL already carries credentials: give them in one place",
            );
        }
        source.options.username = Some(u.get_ref().clone());
    }
    if let Some(pw) = &p.password
        && applies(
            "password",
            pw.span(),
            WITH_CREDENTIALS,
            "rtsp:// and http(s)://",
        )
    {
        if p.username.is_none() {
            cx.problem(
                Some(pw.span()),
                at("password"),
                "a password needs a username",
            );
        }
        source.options.password = Some(pw.get_ref().clone());
    }
    if let Some(l) = &p.looping
        && applies("loop", l.span(), &[SourceKind::File], "file")
    {
        source.options.looping = *l.get_ref();
    }
    if let Some(r) = &p.realtime
        && applies(
            "realtime",
            r.span(),
            &[SourceKind::File, SourceKind::Launch],
            "file and launch",
        )
    {
        source.options.realtime = *r.get_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        let base = Path::new("/etc/clipfilter");
        let s = Source::parse("rtsp://admin:p%40ss@cam:554/s?x=1", base).unwrap();
        assert_eq!(s.kind(), SourceKind::Rtsp);
        assert_eq!(s.uri(), "rtsp://cam:554/s?x=1");
        assert_eq!(s.options.username.as_deref(), Some("admin"));
        assert_eq!(s.options.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(s.display(), "rtsp://***@cam:554/s?x=1");
        assert!(s.has_userinfo());
        assert!(s.eos_is_failure());
        // A raw `/` in the password; a secret query parameter stays in the URI, hidden when shown.
        let s = Source::parse("rtsp://admin:SLASH/PASS@host/x?token=T", base).unwrap();
        assert_eq!(s.uri(), "rtsp://host/x?token=T");
        assert_eq!(s.options.password.as_ref().unwrap().expose(), "SLASH/PASS");
        assert_eq!(s.display(), "rtsp://***@host/x?token=***");
        assert!(!format!("{s:?}").contains("PASS") && !format!("{s:?}").contains("=T"));

        let f = Source::parse("../media/a b.mp4", base).unwrap();
        assert_eq!(f.kind(), SourceKind::File);
        assert_eq!(f.uri(), "file:///etc/media/a%20b.mp4");
        assert!(!f.eos_is_failure() && f.sync());

        let v = Source::parse("v4l2:///dev/video2", base).unwrap();
        assert_eq!(v.kind(), SourceKind::V4l2);
        assert!(Source::parse("v4l2://video2", base).is_err());
        assert_eq!(
            Source::parse("https://example.com/live.m3u8", base)
                .unwrap()
                .kind(),
            SourceKind::Http
        );
        assert!(Source::parse("file://relative.mp4", base).is_err());
        let e = Source::parse("gopher://u:hunter2@host/x", base).unwrap_err();
        assert!(e.contains("unknown source scheme `gopher://`"), "{e}");
        assert!(!e.contains("hunter2"));
        // udp:// is read by udpsrc.
        assert_eq!(
            Source::parse("udp://127.0.0.1:5000", base).unwrap().kind(),
            SourceKind::Uri
        );
    }

    #[test]
    fn userinfo_without_password() {
        let (url, info) = split_userinfo("rtsp://user@cam/s");
        assert_eq!(url, "rtsp://cam/s");
        assert_eq!(info, Some(("user".into(), None)));
        let (url, info) = split_userinfo("http://h/p@x");
        assert_eq!(url, "http://h/p@x");
        assert_eq!(info, None);
    }
}
