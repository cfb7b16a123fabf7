//! Compiles etcd's v3 API (`proto/etcd/`, etcd's own `.proto` files) into a
//! gRPC client with `protox` (pure Rust, no system `protoc`), for the kv
//! benchmark's etcd peer. Client code only: the benchmark drives etcd, it
//! serves nothing.

const PROTOS: &[&str] = &[
    "proto/etcd/rpc.proto",
    "proto/etcd/kv.proto",
    "proto/etcd/auth.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
