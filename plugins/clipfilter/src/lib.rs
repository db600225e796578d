//! `libgstclipfilter.so`: the GStreamer plugin that exports the `clipfilter` element.
//!
//! The crate is both the `cdylib` users install and an `rlib` that `clipfilterd` links to register
//! the very same element statically ([`plugin_register_static`]). The engine (model, inference,
//! labels, matching) is the `clipfilter` library; this crate holds only what GStreamer needs:
//! the element ([`clipfilter`]) and the mapping of raw video frames to engine input
//! ([`video_frame`]). Loading the plugin (a registry scan, `gst-inspect-1.0`) never loads ONNX
//! Runtime or a model: that happens when an element starts.
//!
//! Install: copy or link `libgstclipfilter.so` into a folder GStreamer scans, such as
//! `~/.local/share/gstreamer-1.0/plugins/` (per user) or the system plugin folder
//! (`/usr/lib/x86_64-linux-gnu/gstreamer-1.0/` on Debian), or point `GST_PLUGIN_PATH` at it.

use gst::glib;

pub mod clipfilter;
pub mod video_frame;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    crate::clipfilter::register(plugin)
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
