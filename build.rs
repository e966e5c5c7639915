//! Compiles proto/ into Rust with a pure-Rust protobuf compiler (protox), so a
//! fresh machine needs no `protoc`. Emits the file descriptor set that gRPC
//! reflection serves and the protojson (serde) impls used by `POST /json`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "envoy/service/ratelimit/v3/rls.proto",
    "envoy/service/auth/v3/external_auth.proto",
    "sluice/v1/keys.proto",
    "sluice/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for entry in walk("proto")? {
        println!("cargo:rerun-if-changed={}", entry.display());
    }
    // sqlx::migrate! embeds migrations/ at compile time: a new migration
    // must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("sluice_descriptor.bin");

    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    // ext_authz's CheckRequest is decoded into sluice's own view of it
    // (src/grpc/check_request.rs: the same field numbers, headers kept as
    // slices of the received bytes, the fields sluice never reads skipped);
    // the descriptor reflection serves is still the proto's.
    tonic_prost_build::configure()
        .extern_path(
            ".envoy.service.auth.v3.CheckRequest",
            "crate::grpc::check_request::CheckRequest",
        )
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .exclude([".envoy.service.auth.v3.CheckRequest"])
        .build(&[".envoy", ".google.rpc", ".sluice"])?;
    Ok(())
}

fn walk(dir: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Ok(files)
}
