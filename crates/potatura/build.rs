//! Compiles the vendored `proto/onnx.proto` with protox (pure Rust, so no
//! `protoc` is needed) and generates prost types for `src/onnx/`.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("compile proto/onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate prost code for onnx.proto");
}
