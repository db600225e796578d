//! clipfilter: the engine. CLIP zero-shot matching of video frames against text prompts,
//! through ONNX Runtime.
//!
//! Frames reach the engine as planes ([`preprocess::FrameRef`]); it knows nothing of
//! GStreamer or of the daemon. The `clipfilter` element (`plugins/clipfilter`) and `clipfilterd`
//! (`src/`) are its front ends. See `ARCHITECTURE.md` for the map of modules.

pub mod calibrate;
pub mod crops;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod gate;
pub mod input;
pub mod labels;
pub mod limits;
pub mod matcher;
pub mod model;
pub mod preprocess;
pub mod probe;
pub mod remote;
pub mod runtime;
pub mod text;
pub mod tower;
pub mod watch;
pub mod worker;
pub mod zeroshot;

pub use error::{Error, Result};
