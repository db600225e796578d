//! The GStreamer elements that read a pipeline's [`Source`] (validated by
//! `crate::daemon::config::source`, which says which sources there are):
//!
//! | source | elements |
//! |---|---|
//! | `rtsp://` | `uridecodebin` -> `rtspsrc` (transport, latency, credentials set on it) |
//! | files | `uridecodebin` -> `filesrc`; `loop = true` loops with a seek at the end |
//! | `v4l2://` | `uridecodebin` -> `v4l2src` |
//! | `http(s)://` | `uridecodebin` -> `souphttpsrc` (+ `hlsdemux`) |
//! | other URIs | `uridecodebin` |
//! | `launch = "..."` | the gst-launch description as a bin; its free src pad feeds clipfilter |
//!
//! Credentials are set on the source element (`user-id`, `user-pw`), never in its location.

use gst::prelude::*;

use crate::daemon::config::source::{Source, SourceKind, SourceOptions, Transport};
use clipfilter::error::{Error, Result};

/// The elements `uridecodebin` needs to read a source of `kind` (a launch description names its
/// own).
pub fn required_elements(kind: SourceKind) -> &'static [&'static str] {
    match kind {
        SourceKind::Rtsp => &["uridecodebin", "rtspsrc"],
        SourceKind::Http => &["uridecodebin", "souphttpsrc"],
        SourceKind::V4l2 => &["uridecodebin", "v4l2src"],
        SourceKind::File | SourceKind::Uri => &["uridecodebin"],
        SourceKind::Launch => &[],
    }
}

/// Adds the elements that read and decode `source` to `bin`; returns the element whose video src
/// pad (possibly added later, see `crate::daemon::pipeline`) feeds the rest of the pipeline.
pub fn build(source: &Source, bin: &gst::Pipeline) -> Result<gst::Element> {
    match source.kind() {
        SourceKind::Launch => {
            let part = launch_bin(source.uri()).map_err(|m| {
                Error::invalid("launch description", format!("{}: {m}", source.uri()))
            })?;
            part.set_property("name", "source");
            bin.add(&part)
                .map_err(|e| gst_err("add the source bin", e))?;
            Ok(part.upcast())
        }
        _ => {
            let decode = make("uridecodebin", "source")?;
            decode.set_property("uri", source.uri());
            // Audio and other streams are neither decoded nor exposed.
            decode.set_property(
                "caps",
                gst::Caps::builder("video/x-raw").any_features().build(),
            );
            decode.set_property("expose-all-streams", false);
            let options = source.options.clone();
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

/// The bin of a launch description, ending in a `videoconvert` (so that the description may end
/// in caps, as in `videotestsrc ! video/x-raw,width=320,height=240`), with the free src pad that
/// feeds clipfilter. The error says what is wrong with the description.
pub fn launch_bin(description: &str) -> std::result::Result<gst::Bin, String> {
    let bin = gst::parse::bin_from_description(&format!("{description} ! videoconvert"), true)
        .map_err(|e| e.to_string())?;
    if bin.static_pad("src").is_none() {
        return Err("its last element has no free src pad to feed clipfilter".into());
    }
    Ok(bin)
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

/// The value of rtspsrc's `protocols` flags property.
fn protocols(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp-mcast+udp",
        Transport::Auto => "udp-mcast+udp+tcp",
    }
}

/// Configures the element `uridecodebin` made to read the URI.
fn setup_source(src: &gst::Element, options: &SourceOptions) {
    let factory = src
        .factory()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    if factory == "rtspsrc" {
        let transport = options.transport.unwrap_or(Transport::Tcp);
        src.set_property_from_str("protocols", protocols(transport));
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
