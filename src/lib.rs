//! clipfilter: CLIP zero-shot matching of video frames against text prompts.
//!
//! See `ARCHITECTURE.md` for the map of modules.

pub mod cli;
pub mod daemon;
pub mod element;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod gate;
pub mod labels;
pub mod matcher;
pub mod model;
pub mod preprocess;
pub mod runtime;
pub mod text;
pub mod video_frame;
pub mod worker;
pub mod zeroshot;

pub use error::{Error, Result};
