//! Compiles the committed .proto files (proto/) into Rust at build time: protox parses them (pure
//! Rust, no protoc, nothing downloaded), tonic-prost-build writes the prost messages and the tonic
//! client into OUT_DIR (`inference.rs`, `onnx.rs`), included by src/proto.rs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/kserve_v2.proto");
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["kserve_v2.proto", "onnx.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        // Tensor bytes stay `bytes::Bytes`: inputs are sent and outputs read without a copy.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        // ONNX weights: decoding a model read into `Bytes` does not copy them.
        .bytes(".onnx.TensorProto.raw_data")
        .compile_fds(fds)?;
    Ok(())
}
