//! clipfilter-triton against a real Triton Inference Server (tools/setup-triton.sh installs it;
//! without it these tests fail and say so) and Python onnxruntime references.

mod failover;
mod fold;
mod infer;
#[cfg(feature = "tls")]
mod tls;
mod util;
