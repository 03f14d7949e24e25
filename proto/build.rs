//! Compiles the .proto files with protox (pure Rust: no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "vitess/queryservice.proto",
        "vitess/vtgateservice.proto",
        "vitess/tableacl.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=vitess");
    let fds = protox::compile(protos, ["vitess"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=vtguard/admin.proto");
    let admin = protox::compile(["admin.proto"], ["vtguard"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(admin)?;
    Ok(())
}
