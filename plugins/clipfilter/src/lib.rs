//! `libgstclipfilter.so`: the GStreamer plugin that exports the `clipfilter` element.
//!
//! The element lives in the `clipfilter` library (so that `clipfilterd` registers the very same
//! element statically); this crate only registers it. Loading the plugin (a registry scan,
//! `gst-inspect-1.0`) never loads ONNX Runtime or a model: that happens when an element starts.
//!
//! Install: copy or link `libgstclipfilter.so` into a folder GStreamer scans, such as
//! `~/.local/share/gstreamer-1.0/plugins/` (per user) or the system plugin folder
//! (`/usr/lib/x86_64-linux-gnu/gstreamer-1.0/` on Debian), or point `GST_PLUGIN_PATH` at it.

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    clipfilter::element::register(Some(plugin))
}

gst::plugin_define!(
    clipfilter,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
