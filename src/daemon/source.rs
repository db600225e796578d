//! Where a pipeline's video comes from, and the GStreamer elements that read it.
//!
//! | `source` | elements |
//! |---|---|
//! | `rtsp://host/path` (also `rtsps`, `rtspt`, `rtspu`) | `uridecodebin` -> `rtspsrc` (transport, latency, credentials set on it) |
//! | `file:///abs/path.mp4` or a plain path (relative to the config's folder) | `uridecodebin` -> `filesrc`; `loop = true` loops with segment seeks |
//! | `v4l2:///dev/video0` | `uridecodebin` -> `v4l2src` |
//! | `http(s)://...` (HLS playlists, progressive files) | `uridecodebin` -> `souphttpsrc` (+ `hlsdemux`) |
//! | any other URI a GStreamer source element handles (`srt://`, `udp://`, ...) | `uridecodebin` |
//! | `launch = "..."` | the gst-launch description as a bin; its free src pad feeds clipfilter |
//!
//! Credentials are taken out of URLs and set on the source element (`user-id`, `user-pw`), so the
//! location GStreamer logs and puts in its error messages carries no password; everything shown
//! to people goes through [`Source::display`].

use std::path::Path;
use std::time::Duration;

use gst::prelude::*;

use crate::daemon::config::Config;
use crate::daemon::secret::{Secret, redact_url};
use clipfilter::error::{Error, Location, Result};

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

impl Transport {
    /// The value of rtspsrc's `protocols` flags property.
    fn protocols(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp-mcast+udp",
            Transport::Auto => "udp-mcast+udp+tcp",
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

/// A pipeline's source, validated.
#[derive(Debug, Clone, PartialEq)]
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
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
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
            let path = crate::daemon::config::normalize(&base.join(text));
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
    /// are, or the launch description.
    pub fn display(&self) -> String {
        if self.options.username.is_some() {
            match self.location.find("://") {
                Some(i) => format!("{}***@{}", &self.location[..i + 3], &self.location[i + 3..]),
                None => self.location.clone(),
            }
        } else {
            redact_url(&self.location)
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

    /// Adds the elements that read and decode this source to `bin`; returns the element whose
    /// video src pad (possibly added later, see `link_video`) feeds the rest of the pipeline.
    pub fn build(&self, bin: &gst::Pipeline) -> Result<gst::Element> {
        match self.kind {
            SourceKind::Launch => {
                let part = launch_bin(&self.location).map_err(|e| {
                    Error::invalid("launch description", format!("{}: {e}", self.location))
                })?;
                if part.static_pad("src").is_none() {
                    return Err(Error::invalid(
                        "launch description",
                        format!(
                            "{}: its last element has no free src pad to feed clipfilter",
                            self.location
                        ),
                    ));
                }
                part.set_property("name", "source");
                bin.add(&part)
                    .map_err(|e| gst_err("add the source bin", e))?;
                Ok(part.upcast())
            }
            _ => {
                let decode = make("uridecodebin", "source")?;
                decode.set_property("uri", &self.location);
                // Audio and other streams are neither decoded nor exposed.
                decode.set_property(
                    "caps",
                    gst::Caps::builder("video/x-raw").any_features().build(),
                );
                decode.set_property("expose-all-streams", false);
                let options = self.options.clone();
                decode.connect("source-setup", false, move |args| {
                    if let Some(src) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
                        setup_source(&src, &options);
                    }
                    None
                });
                bin.add(&decode)
                    .map_err(|e| gst_err("add uridecodebin", e))?;
                Ok(decode)
            }
        }
    }
}

/// The bin of a launch description, ending in a `videoconvert` (so that the description may end
/// in caps, as in `videotestsrc ! video/x-raw,width=320,height=240`).
fn launch_bin(description: &str) -> std::result::Result<gst::Bin, gst::glib::Error> {
    gst::parse::bin_from_description(&format!("{description} ! videoconvert"), true)
}

fn gst_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid("pipeline", format!("cannot {what}: {e}"))
}

/// Makes an element, naming the plugin that lacks when it cannot.
pub fn make(factory: &str, name: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|_| {
            Error::invalid(
                "pipeline",
                format!("the GStreamer element `{factory}` is not installed"),
            )
        })
}

fn has_property(e: &gst::Element, name: &str) -> bool {
    e.find_property(name).is_some()
}

/// Configures the element `uridecodebin` made to read the URI.
fn setup_source(src: &gst::Element, options: &SourceOptions) {
    let factory = src
        .factory()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    if factory == "rtspsrc" {
        let transport = options.transport.unwrap_or(Transport::Tcp);
        src.set_property_from_str("protocols", transport.protocols());
        if let Some(latency) = options.latency {
            src.set_property("latency", latency.as_millis().min(u32::MAX as u128) as u32);
        }
        // Fail fast when a server does not answer, so that the supervisor retries.
        if has_property(src, "tcp-timeout") {
            src.set_property("tcp-timeout", 10_000_000u64);
        }
        if has_property(src, "teardown-timeout") {
            src.set_property("teardown-timeout", 1_000_000_000u64);
        }
    }
    if let Some(user) = &options.username
        && has_property(src, "user-id")
    {
        src.set_property("user-id", user);
        if let Some(pw) = &options.password
            && has_property(src, "user-pw")
        {
            src.set_property("user-pw", pw.expose());
        }
    }
    if factory == "souphttpsrc" && has_property(src, "timeout") {
        src.set_property("timeout", 15u32);
    }
}

/// Checks what needs GStreamer: launch and sink descriptions parse and their elements exist, the
/// elements each source needs are installed. Errors name the pipeline's field.
pub fn check_machine(config: &Config) -> Result<()> {
    crate::gstreamer::init()?;
    let err = |i: usize, field: &str, message: String| {
        Error::config(
            &config.path,
            Location::field(format!("pipeline[{i}].{field}")),
            message,
        )
    };
    for (i, p) in config.pipelines.iter().enumerate() {
        let needs: &[&str] = match p.source.kind() {
            SourceKind::Rtsp => &["uridecodebin", "rtspsrc"],
            SourceKind::Http => &["uridecodebin", "souphttpsrc"],
            SourceKind::V4l2 => &["uridecodebin", "v4l2src"],
            SourceKind::File | SourceKind::Uri => &["uridecodebin"],
            SourceKind::Launch => &[],
        };
        for factory in needs {
            if gst::ElementFactory::find(factory).is_none() {
                return Err(err(
                    i,
                    "source",
                    format!("the GStreamer element `{factory}` is not installed"),
                ));
            }
        }
        if p.source.kind() == SourceKind::Launch {
            let bin = launch_bin(p.source.uri()).map_err(|e| err(i, "launch", e.to_string()))?;
            if bin.static_pad("src").is_none() {
                return Err(err(
                    i,
                    "launch",
                    "the last element has no free src pad to feed clipfilter".into(),
                ));
            }
        }
        if let Some(sink) = &p.sink {
            let bin = gst::parse::bin_from_description(sink, true)
                .map_err(|e| err(i, "sink", e.to_string()))?;
            if bin.static_pad("sink").is_none() {
                return Err(err(
                    i,
                    "sink",
                    "the first element has no free sink pad for clipfilter to feed".into(),
                ));
            }
        }
    }
    Ok(())
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
