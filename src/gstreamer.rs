//! GStreamer for the daemon and the command line: initialised once per process, with the
//! `clipfilter` element registered statically (no plugin folder needed).

use std::sync::OnceLock;

use clipfilter::error::{Error, Result};

/// Initialises GStreamer and registers the element; later calls return the first outcome.
pub fn init() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        gst::init().map_err(|e| e.to_string())?;
        gstclipfilter::plugin_register_static()
            .map_err(|e| format!("cannot register the clipfilter element: {e}"))
    })
    .clone()
    .map_err(|message| Error::invalid("GStreamer", message))
}
