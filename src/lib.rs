//! clipfilterd: the daemon and the command line, on the clipfilter engine and element.
//!
//! See `ARCHITECTURE.md` for which crate holds what.

pub mod cli;
pub mod daemon;
pub mod error;
pub mod fetch;
pub mod gstreamer;
pub mod history;
