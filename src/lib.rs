//! clipfilter: CLIP zero-shot matching of video frames against text prompts.
//!
//! See `ARCHITECTURE.md` for the map of modules.

pub mod daemon;
pub mod error;
pub mod preprocess;
pub mod runtime;

pub use error::{Error, Result};
