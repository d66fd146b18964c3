//! Compiles the public contract without a system `protoc`: `protox` parses the
//! protos, the descriptor set is kept for gRPC reflection, and
//! `tonic-prost-build` generates the messages, client and server.

use prost::Message;

const PROTOS: &[&str] = &["proto/hailuo/v1/video_generation.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Nothing on the compile_fds path emits this; without it edits to the
    // protos would not rebuild.
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("hailuo_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Image bytes as `Bytes`: handed on to the upload without a copy.
        .bytes(".hailuo.v1")
        .compile_fds(fds)?;
    Ok(())
}
