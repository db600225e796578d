//! clipfilter: CLIP zero-shot matching of video frames against text prompts.
//!
//! See `ARCHITECTURE.md` for the map of modules.

pub mod cli;
pub mod error;
pub mod model;
pub mod preprocess;
pub mod runtime;

pub use error::{Error, Result};
