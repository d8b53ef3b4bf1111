//! Compiles proto/v1alpha/api.proto with protox (a protobuf compiler in Rust: no `protoc` needed on
//! the build machine) and generates the prost messages and the tonic server and client into
//! OUT_DIR; generated code is never checked in.

fn main() {
    let proto = "proto/v1alpha/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = match protox::compile([proto], ["proto"]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rkt-api: compiling {proto}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)
    {
        eprintln!("rkt-api: generating code from {proto}: {e}");
        std::process::exit(1);
    }
}
