//! Code generated at build time from `proto/` (see build.rs).

/// KServe v2 messages and the `GRPCInferenceService` client (proto/kserve_v2.proto).
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// ONNX's model format (proto/onnx.proto, from the onnx 1.23.2 wheel).
#[allow(clippy::all, missing_docs)]
pub mod onnx {
    tonic::include_proto!("onnx");
}
