//! Compiles every `.proto` under `proto/` with `protox`, a pure-Rust protobuf
//! compiler, so building mlstack needs no system `protoc`. The resulting
//! `FileDescriptorSet` feeds both `tonic-prost-build` (message and service code) and
//! gRPC server reflection (written to `$OUT_DIR/mlstack_descriptor.bin`).

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/mlstack/diag/v1/diag.proto",
    "proto/mlstack/kv/v1/kv.proto",
    "proto/mlstack/raft/v1/raft.proto",
    "proto/mlstack/infer/v1/infer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("mlstack_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
