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
        // File data as `bytes::Bytes`: decoded as a slice of the receive buffer and
        // handed to FUSE (reads), the chunk buffer (writes) or the mount's cache of small
        // files (lookups) without another copy.
        .bytes(".berth.volume.v1.ReadResponse.data")
        .bytes(".berth.volume.v1.WriteRequest.data")
        .bytes(".berth.volume.v1.Entry.data")
        .bytes(".berth.volume.v1.Sibling.data")
        .compile_fds(fds)?;
    Ok(())
}
