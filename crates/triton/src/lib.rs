//! Remote CLIP inference for clipfilter: a KServe v2 (Triton Inference Server) gRPC client.
//!
//! - [`Pool`]: endpoints behind a blocking API (the crate owns a small tokio runtime), round-robin
//!   over the ready ones, failing ones taken out and probed back with backoff, typed errors
//!   ([`Error`]) that return within the configured timeout, never hanging.
//! - [`Tensor`] / [`DataType`] / [`WireFormat`]: named tensors as raw little-endian bytes; image
//!   batches as float32, float16 or uint8 RGB (normalisation folded into the server's model).
//! - [`ModelMetadata`], [`ImageModelSpec`], [`TextModelSpec`]: the server's model checked against the
//!   local model folder (input shape and type, embedding size).
//! - [`onnx_io`]: an ONNX model's inputs and outputs, read without its weights.
//! - [`fold`]: rewrites an image-tower ONNX model to take uint8 RGB (or float16) input.
//! - [`bench`]: loopback round-trip per wire format and batch size.
//!
//! ```no_run
//! use clipfilter_triton::{Pool, PoolConfig, Tensor};
//! let pool = Pool::connect(PoolConfig::new(["grpc://gpu1:8001", "grpc://gpu2:8001"]))?;
//! let pixels = vec![0u8; 3 * 224 * 224];
//! let input = Tensor::from_u8("pixel_values", vec![1, 3, 224, 224], pixels)?;
//! let outputs = pool.infer("clip_image_uint8", vec![input])?;
//! let embeds = outputs[0].to_f32()?;
//! # Ok::<(), clipfilter_triton::Error>(())
//! ```

mod address;
pub mod bench;
mod client;
pub mod config;
pub mod error;
pub mod fold;
pub mod metadata;
pub mod onnx_io;
pub mod pool;
pub mod proto;
pub mod tensor;

pub use address::{DEFAULT_PORT, check_endpoint};
pub use error::{Error, Result};
pub use metadata::{ImageModelSpec, ModelMetadata, ModelSpec, TensorSpec, TextModelSpec};
pub use onnx_io::{GraphIo, TensorInfo, read_graph_io};
pub use pool::{Backoff, EndpointStatus, Health, ModelCheck, Pool, PoolConfig, TlsConfig};
pub use tensor::{DataType, Tensor, WireFormat};
/// The gRPC status code in [`Error::Status`] (tonic's).
pub use tonic::Code;
