//! Compiles `proto/*.proto` with `protox` (pure Rust), so building Berth needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/control.proto",
        "proto/sandbox.proto",
        "proto/volume.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds: prost_types::FileDescriptorSet = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
