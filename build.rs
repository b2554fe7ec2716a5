//! Compiles pleg's own gRPC API (`proto/pleg/v1/pleg.proto`) into Rust: the
//! messages, the `Pleg` server trait and its client. The code is included by
//! `src/server/grpc/mod.rs`; protobuf types never leave that module.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/pleg/v1/pleg.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Labels as ordered maps: deterministic on the wire and in output.
        .btree_map(".pleg.v1")
        .compile_protos(&[PROTO], &["proto"])
        .map_err(|e| format!("compiling {PROTO} with protoc: {e}"))?;
    Ok(())
}
